"""Benchmark and check: each heavy step on every device this machine has, the CPU's figures in the same run,
and whether a GPU's outputs match the CPU's.

    GTSRB_DIR=../shared/data/gtsrb python bench/device.py [--batches 20] [--images 2463] [--attack-images 256]
    python bench/device.py --synthetic --six-epochs     # a GPU machine without the data set: tensors of its shape

Steps: one training epoch of ThesisNet and Inception v3 (the default recipe's batch of 256 and the thesis's
of 32, timed over --batches steps and scaled to the 34,799 training images), LRP of a class (composite
rule), predictions, and PGD-L∞ on --attack-images images. The outputs compared are those of one model on
every device: LRP's largest difference relative to the largest relevance, the share of equal predictions,
and the adversarial accuracy. --six-epochs trains Inception v3 for six full epochs on each GPU (and on the
CPU with --six-epochs-on-cpu, about an hour on two cores). GW k-means runs on the CPU (its numba kernel).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.arithmetic import describe_machine  # noqa: E402
from core.device import describe, model_on, using  # noqa: E402
from core.evasion import AttackConfig, attack  # noqa: E402
from core.lrp import LRPConfig, explain  # noqa: E402
from core.models import build_model, predict  # noqa: E402
from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.train import TrainConfig, fit  # noqa: E402

TRAIN_IMAGES = 34_799


def devices() -> list:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_images(synthetic: bool, count: int):
    """The poisoned training split of the default experiment, or random images of its shape."""
    if synthetic:
        generator = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
                torch.randint(0, 43, (count,), generator=generator))
    from core.data import load_gtsrb
    from core.experiment import ExperimentConfig, poisoned_data

    train = poisoned_data(load_gtsrb(), ExperimentConfig()).train
    return train.images[:count], train.labels[:count]


def epoch_seconds(architecture: str, batch: int, images: torch.Tensor, labels: torch.Tensor, batches: int, device) -> float:
    """One epoch's seconds, from `batches` timed steps (after 3 untimed ones) on `device`."""
    torch.manual_seed(0)
    model = build_model(architecture).to(device)
    layout = torch.channels_last if getattr(model, "channels_last", False) else torch.contiguous_format
    model.to(memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    floats = images.float().div_(255.0).to(device)
    targets = labels.to(device)
    elapsed = 0.0
    for step in range(batches + 3):
        start = (step * batch) % max(1, len(floats) - batch)
        x, y = floats[start:start + batch].contiguous(memory_format=layout), targets[start:start + batch]
        synchronise(device)
        began = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronise(device)
        if step >= 3:
            elapsed += time.perf_counter() - began
    return elapsed / (batches * batch) * TRAIN_IMAGES


def timed(function, device):
    synchronise(device)
    began = time.perf_counter()
    result = function()
    synchronise(device)
    return result, time.perf_counter() - began


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=whole(1, 10_000), default=20, help="timed training steps per network and batch size (default 20)")
    parser.add_argument("--images", type=whole(1, 50_000), default=2463, help="images explained and predicted (default 2463, class 5's count)")
    parser.add_argument("--attack-images", type=whole(1, 10_000), default=256, help="images attacked by PGD-L∞ (default 256)")
    parser.add_argument("--synthetic", action="store_true", help="random images of GTSRB's shape instead of the data set")
    parser.add_argument("--six-epochs", action="store_true", help="also train Inception v3 for six full epochs on each GPU")
    parser.add_argument("--six-epochs-on-cpu", action="store_true", help="with --six-epochs: on the CPU too (about an hour on two cores)")
    args = parser.parse_args(argv)

    images, labels = training_images(args.synthetic, TRAIN_IMAGES)
    print(f"machine: {describe_machine()}; data: {'synthetic' if args.synthetic else 'GTSRB'}, {len(images)} training images")
    found = devices()
    print(f"devices: {', '.join(describe(torch.device(d)) for d in found)}")

    # one model for the comparisons: ThesisNet after 300 steps on the CPU (its relevance is then not a random network's)
    torch.manual_seed(0)
    model = build_model("thesis_net")
    with using("cpu"):
        fit(model, _split(images[:9600], labels[:9600]), _split(images[-512:], labels[-512:]),
            TrainConfig(max_epochs=1, batch_size=32, augment=False, schedule="constant", learning_rate=1e-3))
    sample, sample_labels = images[: args.images], labels[: args.images]
    attacked, attacked_labels = images[: args.attack_images].float().div(255.0), labels[: args.attack_images]

    reference = {}
    for name in found:
        device = torch.device(name)
        rows = []
        for architecture in ("thesis_net", "inception_v3"):
            for batch in (256, 32):
                seconds = epoch_seconds(architecture, batch, images, labels, args.batches, device)
                rows.append((f"epoch {architecture} batch {batch}", seconds))
        with using(name):
            (heatmaps, _), lrp_seconds = timed(lambda: explain(model, sample, sample_labels, LRPConfig()), device)
            predicted, predict_seconds = timed(lambda: predict(model, sample), device)
            adversarial, attack_seconds = timed(lambda: attack(model, attacked, attacked_labels, AttackConfig("pgd-linf")), device)
        accuracy = float((predict(model_on(model, torch.device("cpu")), adversarial) == attacked_labels).float().mean())
        rows += [(f"LRP of {len(sample)} images", lrp_seconds), (f"predict {len(sample)} images", predict_seconds),
                 (f"PGD-L∞ on {len(attacked)} images", attack_seconds)]
        if name == "cpu":
            reference = {"rows": dict(rows), "heatmaps": heatmaps, "predicted": predicted, "accuracy": accuracy}
        print(f"\n{describe(device)}")
        for label, seconds in rows:
            cpu = reference["rows"][label]
            print(f"  {label:<34} {seconds:9.3f} s   CPU/this {cpu / seconds:7.1f}x")
        if name != "cpu":
            gap = float((heatmaps - reference["heatmaps"]).abs().max() / reference["heatmaps"].abs().max().clamp(min=1e-30))
            same = float((predicted == reference["predicted"]).float().mean())
            print(f"  LRP largest difference / largest relevance: {gap:.2e}")
            print(f"  equal predictions: {same:.4%}; adversarial accuracy {accuracy:.4f} (CPU {reference['accuracy']:.4f})")
        print(f"  adversarial accuracy under PGD-L∞ 8/255: {accuracy:.4f}")
        if args.six_epochs and (name != "cpu" or args.six_epochs_on_cpu):
            with using(name):
                network = build_model("inception_v3")
                _, seconds = timed(lambda: fit(network, _split(images, labels), _split(images[-2000:], labels[-2000:]),
                                               TrainConfig(architecture="inception_v3", max_epochs=6, augment=True)), device)
            print(f"  Inception v3, six epochs of {len(images)} images (default recipe): {seconds:.1f} s")
    print("\nGW k-means: on the CPU on every machine (numba kernel); see bench/gromov.py")
    return 0


def _split(images: torch.Tensor, labels: torch.Tensor):
    from core.data import Split

    return Split(images, labels)


if __name__ == "__main__":
    sys.exit(run_script(main))
