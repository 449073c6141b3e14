import subprocess
import sys
import textwrap
import threading

from core.jobs import JobRunner
from core.progress import Progress


def test_a_second_request_for_the_same_artifact_joins_the_running_job():
    runner, release, calls = JobRunner(), threading.Event(), []

    def work(progress):
        calls.append(1)
        release.wait(10)
        return 42

    first = runner.submit("artifact", "work", work)
    second = runner.submit("artifact", "work", work)
    release.set()
    assert second is first
    assert runner.wait("artifact", timeout=10).result == 42
    assert calls == [1]


def test_cancel_stops_a_running_job_at_its_next_progress_report():
    runner, started, reports = JobRunner(), threading.Event(), []

    def work(progress):
        for step in range(10_000):
            progress(Progress("steps", step, 10_000))
            reports.append(step)
            started.set()
            threading.Event().wait(0.001)
        return "finished"

    runner.submit("slow", "slow work", work)
    assert started.wait(10)
    assert runner.cancel("slow")
    job = runner.wait("slow", timeout=10)
    assert job.state == "cancelled" and job.result is None
    assert len(reports) < 10_000
    assert not runner.cancel("slow")  # nothing left to cancel
    runner.forget("slow")
    assert runner.get("slow") is None


def test_a_failing_job_reports_its_error_and_the_worker_goes_on():
    runner = JobRunner()
    runner.submit("bad", "bad", lambda progress: 1 / 0)
    assert runner.wait("bad", timeout=10).error.startswith("ZeroDivisionError")
    runner.submit("good", "good", lambda progress: "ok")
    assert runner.wait("good", timeout=10).result == "ok"


def test_a_running_job_does_not_keep_the_process_alive():
    script = textwrap.dedent(
        """
        import threading
        from core.jobs import RUNNER
        started = threading.Event()
        def forever(progress):
            started.set()
            threading.Event().wait()
        RUNNER.submit("forever", "never ends", forever)
        started.wait(10)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
