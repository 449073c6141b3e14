"""Choosing an arithmetic path per CPU: the override, the stored measurement, and its key."""

from __future__ import annotations

import pytest
import torch

import core.arithmetic as arithmetic
from core.cache import list_artifacts
from core.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    monkeypatch.setattr(arithmetic, "_REMEMBERED", {})
    monkeypatch.delenv(arithmetic.OVERRIDE_ENV, raising=False)


def counting_measure(monkeypatch, seconds):
    """Replace the timing by fixed seconds per candidate, counting how often it is asked."""
    calls = []

    def measure(candidates, repeats=3):
        calls.append(sorted(candidates))
        return {name: seconds[name] for name in candidates}

    monkeypatch.setattr(arithmetic, "measure", measure)
    return calls


CANDIDATES = {"float32": lambda: None, "bfloat16": lambda: None}


@pytest.mark.parametrize("value, expected", [("", None), ("auto", None), ("AUTO", None), ("float32", "float32"),
                                             (" bfloat16 ", "bfloat16")])
def test_override_is_parsed(monkeypatch, value, expected):
    monkeypatch.setenv(arithmetic.OVERRIDE_ENV, value)
    assert arithmetic.forced_path() == expected


def test_a_bad_override_is_refused_with_its_name(monkeypatch):
    monkeypatch.setenv(arithmetic.OVERRIDE_ENV, "float16")
    with pytest.raises(ConfigError, match="POISONLAB_ARITHMETIC"):
        arithmetic.forced_path()


def test_the_faster_path_is_chosen_measured_once_and_stored_per_cpu(tmp_cache, monkeypatch):
    calls = counting_measure(monkeypatch, {"float32": 0.01, "bfloat16": 0.5})
    assert arithmetic.choose("product", CANDIDATES) == "float32"
    assert arithmetic.choose("product", CANDIDATES) == "float32"
    assert len(calls) == 1
    stored = arithmetic.decisions()
    assert stored["product"]["choice"] == "float32" and stored["product"]["seconds"] == {"float32": 0.01, "bfloat16": 0.5}
    assert [row.kind for row in list_artifacts(tmp_cache)] == ["arithmetic"]

    # Another process (nothing in memory) reads the stored choice instead of measuring again.
    monkeypatch.setattr(arithmetic, "_REMEMBERED", {})
    assert arithmetic.choose("product", CANDIDATES) == "float32"
    assert len(calls) == 1

    # Another CPU (here: another thread count) measures for itself, and may choose otherwise.
    calls_other = counting_measure(monkeypatch, {"float32": 0.5, "bfloat16": 0.01})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert arithmetic.choose("product", CANDIDATES) == "bfloat16"
    finally:
        torch.set_num_threads(threads)
    assert len(calls_other) == 1
    assert len(list_artifacts(tmp_cache)) == 2


def test_decisions_accumulate_in_one_file(tmp_cache, monkeypatch):
    counting_measure(monkeypatch, {"float32": 0.01, "bfloat16": 0.5})
    arithmetic.choose("first", CANDIDATES)
    arithmetic.choose("second", {"bfloat16": lambda: None})
    assert set(arithmetic.decisions()) == {"first", "second"}


def test_the_override_wins_without_measuring(tmp_cache, monkeypatch):
    calls = counting_measure(monkeypatch, {"float32": 0.01, "bfloat16": 0.5})
    monkeypatch.setenv(arithmetic.OVERRIDE_ENV, "bfloat16")
    assert arithmetic.choose("product", CANDIDATES) == "bfloat16"
    assert calls == [] and list_artifacts(tmp_cache) == []
    with pytest.raises(ConfigError, match="not a path"):
        arithmetic.choose("product", {"float32": lambda: None})


def test_a_damaged_store_is_measured_again(tmp_cache, monkeypatch):
    calls = counting_measure(monkeypatch, {"float32": 0.01, "bfloat16": 0.5})
    arithmetic.choose("product", CANDIDATES)
    (path,) = tmp_cache.glob("arithmetic-*.safetensors")
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    monkeypatch.setattr(arithmetic, "_REMEMBERED", {})
    assert arithmetic.choose("product", CANDIDATES) == "float32"
    assert len(calls) == 2


def test_unknown_paths_are_refused():
    with pytest.raises(ConfigError):
        arithmetic.choose("product", {"float8": lambda: None})
    with pytest.raises(ConfigError):
        arithmetic.choose("product", {})


def test_measure_times_every_candidate_and_gives_up_on_a_clear_loser():
    runs = {"float32": 0, "bfloat16": 0}

    def quick():
        runs["float32"] += 1

    def slow():
        runs["bfloat16"] += 1
        torch.randn(300, 300) @ torch.randn(300, 300)  # far more work than `quick`

    seconds = arithmetic.measure({"float32": quick, "bfloat16": slow}, repeats=3)
    assert set(seconds) == {"float32", "bfloat16"} and all(s > 0 for s in seconds.values())
    assert runs["float32"] == 4  # a first call and three timed ones
    assert runs["bfloat16"] in (1, 4)  # timed once when it lost by 20 times on its first call


def test_machine_summary_names_the_cpu_and_both_throughputs():
    summary = arithmetic.machine_summary()
    assert summary["capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["float32_gflops"] > 0 and summary["bfloat16_gflops"] > 0
    line = arithmetic.describe_machine()
    assert "float32" in line and "bfloat16" in line and summary["cpu"] in line
