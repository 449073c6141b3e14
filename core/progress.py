"""Progress reporting shared by long computations, the CLI progress bar and the pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional


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


def report(callback: Optional[ProgressCallback], *args, **kwargs) -> None:
    """Call `callback` with a Progress if one was given (so callers need no None checks)."""
    if callback is not None:
        callback(Progress(*args, **kwargs))
