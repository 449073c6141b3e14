"""Which arithmetic is fast on this CPU: measured once per CPU, never assumed.

A bfloat16 matrix product runs several times faster than float32 on a CPU with native
bfloat16 (AVX-512 BF16, AMX) and some seventy times slower on one without (most AVX2 laptops
and servers). So wherever a kernel exists in more than one arithmetic, `choose` times the
candidates on a small problem of the real shape the first time it is asked, and remembers
the winner in the cache under a key of the CPU's model, torch's dispatch capability, torch's
version and the thread count. `POISONLAB_ARITHMETIC=float32` (or `bfloat16`) forces a path
for tests and benchmarks; `auto`, the default, measures.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

from .errors import ConfigError

OVERRIDE_ENV = "POISONLAB_ARITHMETIC"
PATHS = ("float32", "bfloat16")
_ARTIFACT_VERSION = 1
_LOCK = threading.Lock()
_REMEMBERED: Dict[str, Dict[str, object]] = {}  # this process's view of the cache file, per CPU key


def forced_path() -> Optional[str]:
    """The path named by POISONLAB_ARITHMETIC, or None for `auto` (measure)."""
    value = os.environ.get(OVERRIDE_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in PATHS:
        raise ConfigError(f"{OVERRIDE_ENV} must be auto, {' or '.join(PATHS)}, got {value!r}")
    return value


def cpu_model() -> str:
    """The processor's model name as the kernel reports it (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_key() -> Dict[str, object]:
    """What a measurement depends on: the same key means the same kernels at the same speed."""
    return {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _store_path() -> Path:
    from .cache import cache_dir, config_hash

    return cache_dir() / f"arithmetic-{config_hash(_ARTIFACT_VERSION, cpu_key())}.safetensors"


def _read_store(path: Path) -> Dict[str, object]:
    from .cache import load_cached

    def decisions(tensors, meta) -> Dict[str, object]:
        value = meta.get("decisions")
        return dict(value) if isinstance(value, dict) else {}

    return load_cached(path, decisions) or {}


def _time(candidate: Callable[[], object], repeats: int, give_up: float = float("inf")) -> float:
    """Best of `repeats` timed calls after a first call (which pays for allocation and dispatch);
    a first call slower than `give_up` seconds is the answer (a clear loser is not timed again)."""
    started = time.perf_counter()
    candidate()
    first = time.perf_counter() - started
    if first > give_up:
        return first
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        candidate()
        best = min(best, time.perf_counter() - started)
    return best


def measure(candidates: Mapping[str, Callable[[], object]], repeats: int = 3) -> Dict[str, float]:
    """Seconds per call of each candidate (best of `repeats`); one 20 times slower than the best
    so far is timed once only, so that measuring a slow path costs little."""
    seconds: Dict[str, float] = {}
    for name, run in candidates.items():
        seconds[name] = _time(run, repeats, give_up=20 * min(seconds.values(), default=float("inf")))
    return seconds


def choose(decision: str, candidates: Mapping[str, Callable[[], object]], repeats: int = 3) -> str:
    """The fastest of `candidates` (names from PATHS) for `decision` on this CPU.

    The override wins when set; otherwise the first call per CPU times every candidate and
    stores the seconds with the choice in the cache, and later calls (in any process) read it.
    """
    unknown = set(candidates) - set(PATHS)
    if unknown or not candidates:
        raise ConfigError(f"arithmetic paths must be among {', '.join(PATHS)}, got {sorted(candidates)!r}")
    forced = forced_path()
    if forced is not None:
        if forced not in candidates:
            raise ConfigError(f"{OVERRIDE_ENV}={forced} is not a path of {decision} ({', '.join(candidates)})")
        return forced
    from .cache import save_artifact

    with _LOCK:
        path = _store_path()
        known = _REMEMBERED.setdefault(path.name, {})
        if decision not in known:
            known.update(_read_store(path))
        entry = known.get(decision)
        if isinstance(entry, dict) and entry.get("choice") in candidates:
            return str(entry["choice"])
        seconds = measure(candidates, repeats)
        choice = min(seconds, key=seconds.get)
        known[decision] = {"choice": choice, "seconds": seconds}
        known.update({k: v for k, v in _read_store(path).items() if k not in known})  # another process's decisions
        save_artifact(path, {}, {"key": cpu_key(), "decisions": known})
        return choice


def decisions() -> Dict[str, object]:
    """Every choice stored for this CPU so far, with the seconds measured for each candidate."""
    return _read_store(_store_path())


def matmul_throughput(dtype: torch.dtype, size: int = 512, budget: float = 0.5) -> float:
    """GFLOP/s of a size×size matrix product in `dtype`, timed for about `budget` seconds at most."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    started = time.perf_counter()
    a @ b
    first = time.perf_counter() - started
    repeats = max(1, min(20, int(budget / max(first, 1e-6))))
    best = first
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def machine_summary() -> Dict[str, object]:
    """Where a benchmark ran: the CPU, its capability, threads and the two matrix-product throughputs."""
    return {**cpu_key(), "float32_gflops": round(matmul_throughput(torch.float32), 1),
            "bfloat16_gflops": round(matmul_throughput(torch.bfloat16), 1),
            "override": os.environ.get(OVERRIDE_ENV, "auto") or "auto"}


def describe_machine() -> str:
    """One line for the top of a benchmark's output."""
    s = machine_summary()
    return (f"CPU {s['cpu']} | torch {s['torch']}, capability {s['capability']}, {s['threads']} threads | "
            f"512×512 matrix product: float32 {s['float32_gflops']} GFLOP/s, bfloat16 {s['bfloat16_gflops']} GFLOP/s "
            f"(bfloat16/float32 = {s['bfloat16_gflops'] / max(s['float32_gflops'], 1e-9):.2f}) | {OVERRIDE_ENV}={s['override']}")
