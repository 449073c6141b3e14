"""Progress reporting shared by long computations, the CLI progress bar and the pages."""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Progress:
    """One progress report: `done` of `total` units of `task`, with optional live figures."""

    task: str
    done: int
    total: int
    message: str = ""
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))


ProgressCallback = Callable[[Progress], None]


_LISTENERS: contextvars.ContextVar[Tuple[ProgressCallback, ...]] = contextvars.ContextVar("progress_listeners", default=())


def report(callback: Optional[ProgressCallback], *args, **kwargs) -> None:
    """Call `callback` with a Progress if one was given (so callers need no None checks), and the
    listeners of the computation this thread is in (see `listening`)."""
    listeners = _LISTENERS.get()
    if callback is None and not listeners:
        return
    event = Progress(*args, **kwargs)
    for listener in listeners:
        listener(event)
    if callback is not None:
        callback(event)


@contextmanager
def listening(listener: ProgressCallback) -> Iterator[None]:
    """Within the block, every report in this thread also goes to `listener` (whatever callback the
    computation was given), e.g. to show another process how far a cached computation is."""
    token = _LISTENERS.set(_LISTENERS.get() + (listener,))
    try:
        yield
    finally:
        _LISTENERS.reset(token)


@dataclass
class _TaskRate:
    """The smoothed rate of one task since it (re)started."""

    total: int
    done: int
    time: float
    started: float
    events: int = 1
    weighted_done: float = 0.0
    weighted_seconds: float = 0.0


class Estimator:
    """Seconds left of the task of the latest Progress, from its recent rate of progress.

    The rate is units done over seconds taken, both summed with weights that halve every
    `half_life` seconds, so a task that speeds up or slows down (warm-up, a validation pass
    per epoch, a second phase) is followed within about a half-life, while the pauses between
    reports still count. Each task keeps its own rate, so an outer task whose reports are
    interleaved with an inner one's keeps its history; a task restarts when its `done` goes
    backwards or its `total` changes. Nothing is estimated before two reports of the task
    `min_span` seconds apart, nor for a task without a known total.

    One thread may feed it while another asks for `seconds_left`: the latest estimate is
    replaced in one assignment.
    """

    def __init__(self, half_life: float = 30.0, min_span: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.half_life = half_life
        self.min_span = min_span
        self.clock = clock
        self._tasks: Dict[str, _TaskRate] = {}
        self._latest: Optional[Tuple[float, Optional[float]]] = None  # (clock at the report, seconds left then)

    def update(self, event: Progress) -> Optional[float]:
        """Take in a report; the seconds left of its task as of now, or None if not known yet."""
        now = self.clock()
        rate = self._tasks.get(event.task)
        if rate is None or event.total != rate.total or event.done < rate.done:
            rate = self._tasks[event.task] = _TaskRate(event.total, event.done, now, now)
        else:
            elapsed = max(0.0, now - rate.time)
            decay = 0.5 ** (elapsed / self.half_life) if self.half_life > 0 else 0.0
            rate.weighted_done = rate.weighted_done * decay + (event.done - rate.done)
            rate.weighted_seconds = rate.weighted_seconds * decay + elapsed
            rate.done, rate.time, rate.events = event.done, now, rate.events + 1
        seconds = self._seconds_left(rate)
        self._latest = (now, seconds)
        return seconds

    def seconds_left(self) -> Optional[float]:
        """The latest estimate, counted down by the time since its report (never below zero)."""
        latest = self._latest
        if latest is None or latest[1] is None:
            return None
        reported, seconds = latest
        return max(0.0, seconds - (self.clock() - reported))

    def _seconds_left(self, rate: _TaskRate) -> Optional[float]:
        if rate.total <= 0:
            return None
        remaining = max(0, rate.total - rate.done)
        if remaining == 0:
            return 0.0
        if rate.events < 2 or rate.time - rate.started < self.min_span or rate.weighted_done <= 0:
            return None
        return remaining * rate.weighted_seconds / rate.weighted_done


def _nearest(value: float, step: int) -> int:
    """`value` rounded half up to a multiple of `step` (round() rounds half to even)."""
    return step * int(value / step + 0.5)


def approximate_duration(seconds: float) -> str:
    """A duration as people say it: "less than 5 s", "about 40 s", "about 2 min 10 s", "about 1 h 20 min".

    Coarser the longer it is, since an estimate is no more precise than that.
    """
    if seconds < 5:
        return "less than 5 s"
    if _nearest(seconds, 5) < 60:
        return f"about {_nearest(seconds, 5)} s"
    if _nearest(seconds, 10) < 600:
        minutes, rest = divmod(_nearest(seconds, 10), 60)
        return f"about {minutes} min" + (f" {rest} s" if rest else "")
    if _nearest(seconds, 60) < 3600:
        return f"about {_nearest(seconds, 60) // 60} min"
    if _nearest(seconds, 300) < 10 * 3600:
        hours, minutes = divmod(_nearest(seconds, 300) // 60, 60)
        return f"about {hours} h" + (f" {minutes} min" if minutes else "")
    return f"about {_nearest(seconds, 3600) // 3600} h"


def time_left_text(seconds: Optional[float]) -> str:
    """The words for an estimate, e.g. "about 3 min left", or "" without one: the same on the CLI and the pages."""
    return "" if seconds is None else f"{approximate_duration(seconds)} left"
