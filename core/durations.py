"""How long the slow steps took on this CPU, so that a page states how long a step will take before
it starts from what was measured here, never from a number written into the page.

Each finished step adds its seconds per unit (per image, per cloud, per pair …) to a small store
in the cache, one per CPU (the key of `core.arithmetic.cpu_key`), shared by every process; the
estimate is the median of the latest measurements times the units asked for.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .progress import approximate_duration

KEEP = 5  # latest measurements per step
_LOCK = threading.Lock()


def _store_path() -> Path:
    from .arithmetic import cpu_key
    from .cache import cache_dir, config_hash

    return cache_dir() / f"durations-{config_hash(cpu_key())}.safetensors"


def _read(path: Path) -> Dict[str, List[float]]:
    from .cache import load_cached

    def rates(tensors, meta) -> Dict[str, List[float]]:
        value = meta.get("seconds_per_unit")
        if not isinstance(value, dict):
            return {}
        return {str(k): [float(r) for r in v if isinstance(r, (int, float)) and r >= 0][-KEEP:]
                for k, v in value.items() if isinstance(v, list)}

    return load_cached(path, rates) or {}


def record(step: str, seconds: float, units: float = 1.0) -> None:
    """Remember that `step` took `seconds` for `units` units on this CPU."""
    from .cache import artifact_lock, save_artifact

    if units <= 0 or seconds < 0:
        return
    path = _store_path()
    with _LOCK, artifact_lock(path.name):
        store = _read(path)
        store[step] = (store.get(step, []) + [seconds / units])[-KEEP:]
        save_artifact(path, {}, {"seconds_per_unit": store})


def estimate(step: str, units: float = 1.0) -> Optional[float]:
    """Seconds `step` should take for `units` units here, or None if it never ran on this CPU."""
    rates = _read(_store_path()).get(step)
    return statistics.median(rates) * units if rates else None


def estimate_text(step: str, units: float = 1.0, unmeasured: str = "not yet measured on this CPU") -> str:
    """"about 40 s on this CPU (as measured here)", or `unmeasured`."""
    seconds = estimate(step, units)
    return unmeasured if seconds is None else f"{approximate_duration(seconds)} on this CPU (as measured here)"


@contextmanager
def measured(step: str, units: float = 1.0) -> Iterator[None]:
    """Record the block's duration under `step` if it finishes without an error."""
    started = time.perf_counter()
    yield
    try:
        record(step, time.perf_counter() - started, units)
    except OSError:  # a read-only cache: the measurement is lost, the result is not
        pass
