"""Long computations off the caller's thread, one at a time per process.

A page script is rerun (and its thread stopped) whenever the user touches a widget, so
training must not run on it. A job runs on the single worker thread of this process,
is keyed by the artifact it produces (asking twice for the same key joins the running
job instead of starting another), and keeps its latest progress for anyone to poll.

Across processes (two servers, or a server and the CLI's `python -m core`, sharing one
cache) a job holds a file lock named after its key while it runs; a second process asking
for the same artifact waits for the lock and then finds the artifact in the cache.

The worker is a daemon thread: a server that is told to stop must not wait for a
half-done training run (whatever it had written is either complete or in a temporary
file). Cancelling is cooperative: every long computation reports progress, and the
next report after `cancel` raises `Cancelled` inside the job.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from filelock import Timeout

from .cache import WAITING, artifact_lock
from .errors import PoisonLabError
from .progress import Estimator, Progress


class Cancelled(PoisonLabError):
    """Raised inside a job whose cancellation was asked for."""


@dataclass
class Job:
    key: str
    title: str
    state: str = "queued"  # queued, running, done, failed, cancelled
    progress: Optional[Progress] = None
    estimator: Estimator = field(default_factory=Estimator, repr=False, compare=False)
    result: Any = None
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def seconds_left(self) -> Optional[float]:
        """The estimated seconds left of the task now reporting, or None before there is an estimate."""
        return self.estimator.seconds_left() if self.active else None


Work = Callable[[Callable[[Progress], None]], Any]


class JobRunner:
    def __init__(self) -> None:
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: "queue.Queue[Tuple[Job, Work]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None

    def submit(self, key: str, title: str, work: Work) -> Job:
        """Run `work(progress_callback)` unless a job with `key` is already queued or running."""
        with self._lock:
            existing = self._jobs.get(key)
            if existing is not None and existing.active:
                return existing
            job = self._jobs[key] = Job(key, title)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="poisonlab-job", daemon=True)
                self._worker.start()
        self._queue.put((job, work))
        return job

    def get(self, key: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> List[Job]:
        """A snapshot of every job this process knows, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, key: str) -> bool:
        """Ask a queued or running job to stop; True if there was one to ask."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or not job.active:
                return False
            job.cancel_requested = True
            return True

    def forget(self, key: str) -> None:
        """Drop a finished job so that its key can be computed afresh."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.active:
                del self._jobs[key]

    def wait(self, key: str, timeout: Optional[float] = None) -> Optional[Job]:
        """Block until the job with `key` has ended (for scripts and tests, never for pages)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            job = self.get(key)
            if job is None or not job.active:
                return job
            if deadline is not None and time.time() > deadline:
                return job
            time.sleep(0.05)

    def _serve(self) -> None:
        while True:
            job, work = self._queue.get()
            self._run(job, work)

    @staticmethod
    def _run(job: Job, work: Work) -> None:
        if job.cancel_requested:
            job.state, job.error, job.finished = "cancelled", "cancelled before it started", time.time()
            return
        job.state = "running"
        sys.stderr.write(f"[poisonlab] job started: {job.title} ({job.key})\n")  # the server's log: one line per computation
        sys.stderr.flush()

        def on_progress(event: Progress) -> None:
            if job.cancel_requested:
                raise Cancelled(f"{job.title} was cancelled")
            job.estimator.update(event)
            job.progress = event

        lock = artifact_lock(job.key)
        try:
            try:
                lock.acquire(blocking=False)
            except Timeout:
                on_progress(Progress(job.title, 0, 0, WAITING))
                try:
                    lock.acquire(cancel_check=lambda: job.cancel_requested)
                except Timeout:
                    raise Cancelled(f"{job.title} was cancelled") from None
            try:
                job.result = work(on_progress)
            finally:
                lock.release()
            job.state = "done"
        except Cancelled as exc:
            job.error, job.state = str(exc), "cancelled"
        except PoisonLabError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # shown to the analyst as a type and message, logged in full
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
            traceback.print_exc()
        finally:
            job.finished = time.time()


RUNNER = JobRunner()
"""The process-wide runner: every session of a server shares it, so no artifact is computed twice."""
