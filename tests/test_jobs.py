import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.jobs import JobRunner
from core.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.cli
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


TWO_SERVERS = """
import os, sys, time
from pathlib import Path
from core.jobs import RUNNER
artifact = Path(sys.argv[1])

def compute_or_load(progress):
    if artifact.exists():
        return "loaded"
    time.sleep(1.5)  # long enough for the other process to ask for the same artifact meanwhile
    with open(artifact.with_suffix(".log"), "a") as log:
        log.write(f"{os.getpid()}\\n")
    artifact.write_text("done")
    return "computed"

RUNNER.submit(artifact.name, "compute", compute_or_load)
print(RUNNER.wait(artifact.name, timeout=60).result, flush=True)
"""


@pytest.mark.cli
def test_two_processes_sharing_the_cache_compute_an_artifact_once(tmp_path):
    """Two server processes (or a server and the CLI) ask for the same artifact at once."""
    artifact = tmp_path / "model-x-0123456789abcdef.safetensors"
    env = {**os.environ, "POISONLAB_CACHE": str(tmp_path)}
    processes = [subprocess.Popen([sys.executable, "-c", TWO_SERVERS, str(artifact)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted(process.communicate(timeout=90)[0].strip() for process in processes)
    assert results == ["computed", "loaded"]
    assert len(artifact.with_suffix(".log").read_text().split()) == 1


@pytest.mark.cli
def test_a_job_waiting_for_another_process_can_be_cancelled(tmp_path, monkeypatch):
    from core.cache import artifact_lock, locked_elsewhere

    monkeypatch.setenv("POISONLAB_CACHE", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.cache import artifact_lock; "
                               "lock = artifact_lock('held'); lock.acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, env={**os.environ, "POISONLAB_CACHE": str(tmp_path)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert locked_elsewhere("held") and not locked_elsewhere("free")
        runner, ran = JobRunner(), []
        runner.submit("held", "blocked work", lambda progress: ran.append(1))
        deadline = time.time() + 10
        while (runner.get("held").progress is None) and time.time() < deadline:
            time.sleep(0.05)
        assert "another process" in runner.get("held").progress.message
        runner.cancel("held")
        assert runner.wait("held", timeout=10).state == "cancelled"
        assert ran == []
    finally:
        holder.kill()
        holder.wait()
    assert not locked_elsewhere("held")  # the kernel drops a killed holder's lock
    artifact_lock("held")  # and it can be taken again
