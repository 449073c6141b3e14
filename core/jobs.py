"""Long computations off the caller's thread, one at a time per process.

A page script is rerun (and its thread stopped) whenever the user touches a widget, so
training must not run on it. A job runs on the single worker thread of this process,
is keyed by the artifact it produces (asking twice for the same key joins the running
job instead of starting another), and keeps its latest progress for anyone to poll.
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .errors import PoisonLabError
from .progress import Progress


@dataclass
class Job:
    key: str
    title: str
    state: str = "queued"  # queued, running, done, failed
    progress: Optional[Progress] = None
    result: Any = None
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class JobRunner:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poisonlab-job")
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, title: str, work: Callable[[Callable[[Progress], None]], Any]) -> Job:
        """Run `work(progress_callback)` unless a job with `key` is already queued or running."""
        with self._lock:
            existing = self._jobs.get(key)
            if existing is not None and existing.active:
                return existing
            job = self._jobs[key] = Job(key, title)
        self._executor.submit(self._run, job, work)
        return job

    def get(self, key: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> List[Job]:
        """A snapshot of every job this process knows, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def forget(self, key: str) -> None:
        """Drop a finished job so that its key can be computed afresh."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.active:
                del self._jobs[key]

    @staticmethod
    def _run(job: Job, work: Callable[[Callable[[Progress], None]], Any]) -> None:
        job.state = "running"

        def on_progress(event: Progress) -> None:
            job.progress = event

        try:
            job.result = work(on_progress)
            job.state = "done"
        except PoisonLabError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # shown to the analyst as a type and message, logged in full
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
            traceback.print_exc()
        finally:
            job.finished = time.time()


RUNNER = JobRunner()
"""The process-wide runner: every session of a server shares it, so no artifact is computed twice."""
