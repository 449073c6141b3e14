"""The time-left estimate: synthetic reports on a clock the test moves, and its wording."""

from __future__ import annotations

import threading

import pytest

from core.jobs import JobRunner
from core.progress import Estimator, Progress, approximate_duration, time_left_text


class Clock:
    """A clock that only moves when told, so no test sleeps or depends on the machine's speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed(estimator: Estimator, clock: Clock, task: str, steps, total: int, every: float = 1.0):
    """Report `done` values at `every` seconds apart; the last estimate."""
    seconds = None
    for done in steps:
        clock.now += every
        seconds = estimator.update(Progress(task, done, total))
    return seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_steady_rate_gives_the_remaining_work_over_the_rate(clock):
    estimator = Estimator(clock=clock)
    assert feed(estimator, clock, "train", range(0, 50, 10), total=100, every=2.0) == pytest.approx(60 / 5)
    assert estimator.seconds_left() == pytest.approx(12.0)


def test_nothing_is_said_before_two_reports_a_while_apart(clock):
    estimator = Estimator(half_life=1e9, min_span=1.0, clock=clock)
    assert estimator.update(Progress("train", 0, 100)) is None
    assert estimator.seconds_left() is None
    clock.now += 0.2
    assert estimator.update(Progress("train", 10, 100)) is None  # too soon to know the rate
    clock.now += 0.9
    assert estimator.update(Progress("train", 20, 100)) == pytest.approx(80 / (20 / 1.1), rel=1e-6)


def test_no_estimate_without_a_total_or_before_any_progress(clock):
    estimator = Estimator(clock=clock)
    assert feed(estimator, clock, "waiting", range(0, 50, 10), total=0) is None
    assert feed(estimator, clock, "stuck", [5, 5, 5], total=10) is None
    assert estimator.seconds_left() is None


def test_a_finished_task_has_nothing_left(clock):
    assert Estimator(clock=clock).update(Progress("robustness", 1, 1)) == 0.0


def test_the_estimate_follows_a_change_of_rate(clock):
    estimator = Estimator(half_life=10.0, clock=clock)
    feed(estimator, clock, "attack", range(0, 100, 1), total=10_000)  # 1 unit per second for 100 s
    faster = feed(estimator, clock, "attack", range(100, 1100, 20), total=10_000)  # then 20 per second for 50 s
    assert faster == pytest.approx((10_000 - 1080) / 20, rel=0.05)
    slower = feed(estimator, clock, "attack", range(1080, 1180, 1), total=10_000)  # then 1 per second again
    assert slower == pytest.approx(10_000 - 1179, rel=0.1)


def test_pauses_between_reports_count_against_the_rate(clock):
    estimator = Estimator(half_life=1000.0, clock=clock)
    feed(estimator, clock, "train", range(0, 100, 10), total=200)  # 10 per second for 9 s
    clock.now += 9.0  # then 10 more after a validation pass as long
    assert estimator.update(Progress("train", 100, 200)) == pytest.approx(100 / (100 / 18), rel=0.01)


def test_the_estimate_counts_down_between_reports_and_stops_at_zero(clock):
    estimator = Estimator(clock=clock)
    feed(estimator, clock, "LRP", range(0, 60, 10), total=100)  # 10 per second, 5 s left
    clock.now += 1.5
    assert estimator.seconds_left() == pytest.approx(3.5)
    clock.now += 10
    assert estimator.seconds_left() == 0.0


def test_going_backwards_or_a_new_total_restarts_the_task(clock):
    estimator = Estimator(clock=clock)
    assert feed(estimator, clock, "LRP", range(0, 500, 100), total=1000) is not None
    assert estimator.update(Progress("LRP", 50, 1000)) is None  # the next class: done went backwards
    assert feed(estimator, clock, "LRP", [60], total=1000, every=2.0) == pytest.approx(940 / 5)
    assert estimator.update(Progress("LRP", 70, 2000)) is None  # another image set: a new total
    assert feed(estimator, clock, "LRP", [170], total=2000) == pytest.approx(1830 / 100)


def test_the_estimate_is_of_the_task_now_reporting(clock):
    estimator = Estimator(clock=clock)
    feed(estimator, clock, "decode GTSRB", range(0, 1000, 100), total=1000)
    assert estimator.update(Progress("train", 0, 500)) is None  # a new task: nothing known yet
    assert estimator.seconds_left() is None
    assert feed(estimator, clock, "train", [10, 20], total=500, every=2.0) == pytest.approx(480 / 5)


def test_an_outer_task_keeps_its_rate_across_the_inner_task_reports(clock):
    estimator = Estimator(half_life=1000.0, clock=clock)
    for step in range(3):
        clock.now += 1
        outer = estimator.update(Progress("export", step, 10))
        feed(estimator, clock, "LRP", range(0, 100, 25), total=100)  # 4 s per class
    clock.now += 1
    assert estimator.update(Progress("export", 3, 10)) == pytest.approx(7 * 5.0)
    assert outer == pytest.approx(8 * 5.0)


@pytest.mark.parametrize("seconds, words", [
    (0, "less than 5 s"), (4.9, "less than 5 s"), (5, "about 5 s"), (41, "about 40 s"), (57.4, "about 55 s"),
    (57.5, "about 1 min"), (60, "about 1 min"), (129, "about 2 min 10 s"), (180, "about 3 min"),
    (594, "about 9 min 50 s"), (596, "about 10 min"), (3569, "about 59 min"), (3570, "about 1 h"),
    (4800, "about 1 h 20 min"), (35_850, "about 10 h"), (90_000, "about 25 h"),
])
def test_durations_read_as_people_say_them(seconds, words):
    assert approximate_duration(seconds) == words


def test_time_left_text_is_empty_without_an_estimate():
    assert time_left_text(None) == ""
    assert time_left_text(130) == "about 2 min 10 s left"


def test_a_job_keeps_the_estimate_of_its_running_task(tmp_cache, clock):
    runner, reported, release = JobRunner(), threading.Event(), threading.Event()

    def work(progress):
        runner.get("estimated").estimator.clock = clock
        for done in range(0, 50, 10):
            clock.now += 2.0
            progress(Progress("train", done, 100))
        reported.set()
        release.wait(10)
        return "trained"

    job = runner.submit("estimated", "Training", work)
    try:
        assert reported.wait(10)
        assert job.seconds_left() == pytest.approx(12.0)
        assert time_left_text(job.seconds_left()) == "about 10 s left"
    finally:
        release.set()
    assert runner.wait("estimated", timeout=10).result == "trained"
    assert job.seconds_left() is None  # a finished job has nothing left


def test_the_cli_bar_shows_the_estimate_and_copes_with_an_unknown_total(clock, capsys):
    from core.cli import _Bar

    bar = _Bar()
    bar.estimator.clock = clock
    for done in range(0, 50, 10):
        clock.now += 2.0
        bar(Progress("train", done, 100, f"batch {done}", {"loss": 0.25, "epoch": 1}))
    for done in (0, 10, 20):
        clock.now += 2.0
        bar(Progress("download", done, 0, f"{done} MB"))
    bar(Progress("train", 5, 50, "the next run"))  # backwards with a new total: the bar starts again
    bar.close()
    err = capsys.readouterr().err
    assert "about 10 s left, loss=0.2500" in err
    assert "<" not in err  # tqdm's own remaining time, from another rate, is not shown
    assert "20 MB" in err and "5/50" in err
