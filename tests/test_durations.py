"""Durations measured on this CPU: what pages estimate a step's time from."""

from __future__ import annotations

import torch

from core import durations
from core.cache import cached, list_artifacts
from core.durations import estimate, estimate_text, measured, record


def test_nothing_is_estimated_before_a_step_ran_here(tmp_cache):
    assert estimate("train thesis_net", 1000) is None
    assert estimate_text("train thesis_net", 1000, unmeasured="no measurement yet") == "no measurement yet"


def test_the_estimate_is_the_median_rate_of_the_latest_runs_times_the_units(tmp_cache):
    for seconds in (10.0, 30.0, 20.0):
        record("lrp ThesisNet composite", seconds, units=100)
    assert estimate("lrp ThesisNet composite", 1000) == 200.0  # median 0.2 s per image
    assert estimate_text("lrp ThesisNet composite", 1000).startswith("about 3 min 20 s on this CPU")
    for _ in range(durations.KEEP):  # older runs age out
        record("lrp ThesisNet composite", 1.0, units=100)
    assert estimate("lrp ThesisNet composite", 100) == 1.0
    assert estimate("another step", 100) is None


def test_a_block_that_fails_is_not_measured(tmp_cache):
    try:
        with measured("gw k-means entropic barycenters", 10):
            raise RuntimeError("stopped")
    except RuntimeError:
        pass
    assert estimate("gw k-means entropic barycenters") is None
    with measured("gw k-means entropic barycenters", 10):
        pass
    assert estimate("gw k-means entropic barycenters", 10) is not None


def test_a_computed_artifact_is_measured_and_a_loaded_one_is_not(tmp_cache):
    encode = lambda value: ({"x": value}, {})  # noqa: E731
    decode = lambda tensors, meta: tensors["x"]  # noqa: E731
    cached(tmp_cache / "thing-0123456789abcdef.safetensors", lambda: torch.ones(3), encode, decode, measure=("thing", 3))
    first = estimate("thing", 3)
    assert first is not None and first >= 0
    cached(tmp_cache / "thing-0123456789abcdef.safetensors", lambda: torch.ones(3), encode, decode, measure=("thing", 3))
    assert len(durations._read(durations._store_path())["thing"]) == 1
    assert "durations" in {a.kind for a in list_artifacts(tmp_cache)}  # one store per CPU, listed with the cache


def test_a_damaged_store_is_started_again(tmp_cache):
    record("decode gtsrb", 12.0)
    durations._store_path().write_bytes(b"not an artifact")
    assert estimate("decode gtsrb") is None
    record("decode gtsrb", 8.0)
    assert estimate("decode gtsrb") == 8.0
