"""Benchmark: one Inception v3 training step on the CPU, as FLOP/s against the same run's matrix-product peak,
for each way of running it: float32 in the channels-last layout (what training does), float32 contiguous,
bfloat16 autocast, and torch.compile (--compile).

    python bench/inception_cpu.py [--batch 256] [--steps 5] [--compile]
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/inception_cpu.py

The step's FLOPs (forward, backward and Adam's update left out: it is memory-bound and small) come from
torch's FlopCounterMode; the peak is a 2048×2048 float32 matrix product (the largest GEMMs of the step are
of that order). The epoch time is the step time scaled to the 34,799 training images. Random images of
GTSRB's shape: the step's cost does not depend on their content.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.arithmetic import describe_machine, matmul_throughput  # noqa: E402
from core.models import build_model  # noqa: E402
from core.options import OneLineParser, run_script, whole  # noqa: E402

TRAIN_IMAGES = 34_799


def step_function(model, optimizer, autocast: bool):
    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def measure(name: str, layout, autocast: bool, compiled: bool, batch: int, steps: int):
    torch.manual_seed(0)
    model = build_model("inception_v3").to(memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 43, (batch,))
    step = step_function(model, optimizer, autocast)
    began = time.perf_counter()
    if compiled:
        step = torch.compile(step)
    step(x, y)  # warm-up (and compilation)
    first = time.perf_counter() - began
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    flops = counter.get_total_flops()
    best = float("inf")
    for _ in range(steps):
        began = time.perf_counter()
        step(x, y)
        best = min(best, time.perf_counter() - began)
    return {"name": name, "seconds": best, "flops": flops, "first": first}


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=whole(1, 4096), default=256, help="images per step (default 256, the default recipe's)")
    parser.add_argument("--steps", type=whole(1, 1000), default=5, help="timed steps per variant, the best counts (default 5)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the step (compiles for a minute or more)")
    args = parser.parse_args(argv)
    print(describe_machine())
    peak = matmul_throughput(torch.float32, size=2048, budget=2.0)
    peak_bf16 = matmul_throughput(torch.bfloat16, size=2048, budget=2.0)
    print(f"2048×2048 matrix product: float32 {peak:.1f} GFLOP/s, bfloat16 {peak_bf16:.1f} GFLOP/s")
    variants = [("float32, channels last (training's layout)", torch.channels_last, False, False),
                ("float32, contiguous", torch.contiguous_format, False, False),
                ("bfloat16 autocast, channels last", torch.channels_last, True, False)]
    if args.compile:
        variants.append(("float32, channels last, torch.compile", torch.channels_last, False, True))
    results = []
    for variant in variants:
        try:
            results.append(measure(*variant, args.batch, args.steps))
        except Exception as error:  # torch.compile's generated code can fail where the eager step does not
            print(f"  {variant[0]}: failed, {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    base = results[0]["seconds"]
    print(f"Inception v3 training step, batch {args.batch}: {results[0]['flops'] / args.batch / 1e6:.1f} MFLOP per image "
          f"(forward and backward)")
    for r in results:
        achieved = r["flops"] / r["seconds"] / 1e9
        epoch = r["seconds"] / args.batch * TRAIN_IMAGES
        print(f"  {r['name']:<44} {r['seconds']:7.3f} s a step, epoch {epoch:7.0f} s, {achieved:6.1f} GFLOP/s = "
              f"{achieved / peak:5.1%} of the float32 peak; first step {r['first']:.1f} s; speed-up {base / r['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
