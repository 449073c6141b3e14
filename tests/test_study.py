"""Studies: grid files refused clearly, cells as ordinary experiments, a small grid through a
local Ray runtime, and a study killed mid-way that resumes without recomputing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.errors import ConfigError
from core.experiment import load_trained
from core.study import MAX_CELLS, load_study, run_study, study_from_dict, study_results, study_status, study_table

ROOT = Path(__file__).resolve().parent.parent
TINY = {"subset": "3000", "epochs": "1", "patience": "1"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


GOOD = """
name = "sticker size against share"
detectors = ["spectral", "activation"]

[base]
epochs = 6
subset = 8000

[grid]
size = [1, 3]
pp = [0.01, 0.33]
seed = [0, 1]
"""


def test_a_grid_file_declares_every_combination_as_an_experiment(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    assert study.name == "sticker size against share" and study.detectors == ("spectral", "activation")
    assert study.axes == ("size", "pp", "seed") and len(study.cells) == 8
    combos = {(c.poison.size, c.poison.fraction, c.train.seed) for c in study.cells}
    assert combos == {(s, p, seed) for s in (1, 3) for p in (0.01, 0.33) for seed in (0, 1)}
    assert all(c.train.max_epochs == 6 and c.train.subset == 8000 for c in study.cells)
    assert all(c.poison.source == 2 and c.poison.target == 5 for c in study.cells), "the defaults fill the rest"


@pytest.mark.parametrize("text, message", [
    ("[grid]\npp = [0.1]\ncolour = ['red']\n", r"\[grid\] colour: not an experiment parameter"),
    ("[grid]\n", r"\[grid\] is empty"),
    ("name = 'x'\n", r"\[grid\] is empty"),
    ("[grid]\npp = [0.1, 'lots']\n", r"cell pp = lots: .*pp"),
    ("[grid]\npp = [0.1, 7]\n", r"cell pp = 7: "),
    ("[grid]\nsize = [1.5]\n", r"cell size = 1.5: "),
    ("[grid]\npp = []\n", r"\[grid\] pp: give at least one value"),
    ("[grid]\npp = [[0.1]]\n", r"\[grid\] pp: \[0.1\] is not a number or a word"),
    ("detectors = ['magic']\n[grid]\npp = [0.1]\n", r"detectors: 'magic' is not one of spectral, gw, activation, signatures"),
    ("detectors = 'spectral'\n[grid]\npp = [0.1]\n", r"detectors must be a list"),
    ("[base]\nepoch = 3\n[grid]\npp = [0.1]\n", r"\[base\] epoch: not an experiment parameter"),
    ("[grid]\npp = [0.1\n", r"not valid TOML"),
    ("seeds = [1]\n[grid]\npp = [0.1]\n", r"unknown entries seeds"),
    ("cleanse = 'yes'\ndetectors = ['gw']\n[grid]\npp = [0.1]\n", r"cleanse must be true or false, got 'yes'"),
    ("cleanse = true\n[grid]\npp = [0.1]\n", r"cleanse = true needs detectors"),
    ("[base]\nkind = 'clean-label'\n[grid]\npp = [0.1]\n", r"cell pp = 0.1: attack kind must be one of sticker, label-consistent"),
    (f"[grid]\npseed = {list(range(MAX_CELLS + 1))}\n", r"1,001 cells; at most 1,000"),
])
def test_bad_grid_files_are_refused_in_one_line_naming_the_file(tmp_path, tmp_cache, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as refused:
        load_study(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)
    assert list(tmp_cache.iterdir()) == [], "nothing is written for a refused study"


def test_a_missing_grid_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_study(tmp_path / "absent.toml")


def test_the_command_line_refuses_a_bad_grid_with_one_line_and_status_2(tmp_path, tmp_cache, capsys):
    path = write(tmp_path, "[grid]\npp = [0.1, 'lots']\n")
    assert main(["study", "run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "pp" in err
    assert list(tmp_cache.iterdir()) == []


def test_flags_declare_the_same_study_as_a_file(tmp_path):
    from core.cli import _study_from_args, build_parser

    args = build_parser().parse_args(["study", "status", "--grid", "size=1,3", "pp=0.01,0.33", "seed=0,1", "--base", "epochs=6",
                                      "subset=8000", "--detectors", "spectral", "activation", "--name", "sticker size against share"])
    assert _study_from_args(args) == load_study(write(tmp_path, GOOD))


# ------------------------------------------------------------------ on Ray, with real data

@pytest.fixture(scope="module")
def ray_runtime():
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_a_small_grid_runs_on_ray_and_its_cells_are_the_views_artifacts(gtsrb, seeded_cache, ray_runtime):
    study = study_from_dict({"name": "tiny", "detectors": ["spectral", "activation"], "base": TINY, "grid": {"pp": [0.1, 0.33]}})
    assert [row["train"] for row in study_status(study, gtsrb)] == ["waiting", "waiting"]
    run = run_study(study, gtsrb)
    assert run.failed == {} and run.workers >= 1
    assert sorted(run.computed) == sorted(f"{step} [pp={pp}]" for step in ("train", "spectral", "activation") for pp in ("0.1", "0.33"))
    assert all(state == "cached" for row in study_status(study, gtsrb) for key, state in row.items() if key != "pp")
    for cell, row in zip(study.cells, study_results(study, gtsrb)):
        trained = load_trained(gtsrb, cell)  # the model any view of this experiment loads
        assert trained is not None
        assert row["clean_accuracy"] == trained.metrics["clean_accuracy"]
        assert row["attack_success_rate"] == trained.metrics["attack_success_rate"]
        assert 0 <= row["spectral accuracy"] <= 1 and 0 <= row["activation tpr"] <= 1
    table = study_table(study, gtsrb)
    assert [line["pp"] for line in table] == ["0.1", "0.33"] and all(line["cells"] == 1 for line in table)
    again = run_study(study, gtsrb)
    assert again.computed == [] and len(again.cached) == 6, "a finished study computes nothing"


def kill_session(session: int) -> None:
    """SIGKILL every process of a session, as closing its terminal would: the driver, the Ray
    runtime it started and Ray's workers (which run in process groups of their own)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # the session id, after state, ppid and pgrp
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.cli
def test_a_killed_study_resumes_computing_only_its_unfinished_cells(gtsrb, seeded_cache, tmp_path):
    """Two cells train side by side; one epoch finishes long before eight. The study is killed
    when the first model is stored; the rerun loads it and trains only the other."""
    grid = write(tmp_path, "name = 'resume'\n[base]\nsubset = 3000\npatience = 8\n[grid]\nepochs = [1, 8]\n")
    env = {**os.environ, "POISONLAB_CACHE": str(seeded_cache)}
    driver = subprocess.Popen([sys.executable, "-m", "core", "study", "run", str(grid), "--quiet"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while not list(seeded_cache.glob("model-*.safetensors")):
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no cell finished in 10 minutes"
        time.sleep(0.2)
    kill_session(driver.pid)
    driver.wait()
    time.sleep(3)
    study = load_study(grid)
    assert [row["train"] for row in study_status(study, gtsrb)] == ["cached", "waiting"]
    assert not list(seeded_cache.glob(".*.tmp")), "no partial artifact is left behind"
    resumed = subprocess.run([sys.executable, "-m", "core", "study", "run", str(grid), "--quiet"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    outcome = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert outcome["cached"] == ["train [epochs=1]"] and outcome["computed"] == ["train [epochs=8]"] and outcome["failed"] == {}
    assert [row["train"] for row in study_status(study, gtsrb)] == ["cached", "cached"]


def test_an_unreachable_or_malformed_cluster_address_is_refused_at_once(tmp_path, tmp_cache, capsys):
    """Ray itself retries an absent cluster for minutes; the study says so in one line instead."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write(tmp_path, "[base]\nsubset = 3000\n[grid]\npp = [0.1]\n")
    started = time.perf_counter()
    for address, message, code in [(f"127.0.0.1:{port}", f"cannot reach the Ray cluster at 127.0.0.1:{port}: ", 1),  # the run failed
                                   ("head-node", "Ray address 'head-node': give HOST:PORT", 2)]:  # a usage error
        assert main(["study", "run", str(path), "--quiet", "--address", address]) == code
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {message}") and "\n" not in err
    assert time.perf_counter() - started < 60, "refused at once, not after Ray's retries"


@pytest.mark.slow
@pytest.mark.cli
def test_a_study_joins_a_running_ray_cluster_and_a_failing_cell_lets_the_others_finish(gtsrb, seeded_cache, tmp_path):
    """A one-CPU head started with `ray start` (token authentication on, as Ray starts it by
    default) runs the study; source class 0 has too few images for pp = 0.33, so its cell fails
    with that reason and its detector is not run, while class 2's cell trains and is scored."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    sessions = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    head = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats", "--block", f"--temp-dir={sessions}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        grid = write(tmp_path, "name = 'cluster'\ndetectors = ['activation']\n[base]\nsubset = 3000\nepochs = 1\npatience = 1\n"
                               "pp = 0.33\n[grid]\nsource = [2, 0]\n")
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env["POISONLAB_CACHE"] = str(seeded_cache)
        deadline = time.time() + 120
        while True:  # the head is up when its GCS port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, head.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        ran = subprocess.run([sys.executable, "-m", "core", "study", "run", str(grid), "--quiet", "--address", f"127.0.0.1:{port}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        kill_session(head.pid)
        head.wait()
        shutil.rmtree(sessions, ignore_errors=True)
    assert ran.returncode == 1, ran.stderr[-2000:]
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert outcome["workers"] == 1, "the cluster's one CPU, not a local runtime's"
    assert sorted(outcome["computed"]) == ["activation [source=2]", "train [source=2]"]
    assert set(outcome["failed"]) == {"train [source=0]", "activation [source=0]"}
    assert "the source class has only" in outcome["failed"]["train [source=0]"]
    assert outcome["failed"]["activation [source=0]"] == "not run: train [source=0] failed"
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {step}: {outcome['failed'][step]}" for step in outcome["failed"]]
    study = load_study(grid)
    assert study_status(study, gtsrb) == [{"source": "2", "train": "cached", "activation": "cached"},
                                          {"source": "0", "train": "failed", "activation": "failed"}]


def test_training_left_counts_one_thread_workers_and_says_when_it_is_a_bound(gtsrb, tmp_cache):
    from core.durations import record
    from core.experiment import training_step
    from core.study import training_left

    study = study_from_dict({"base": {"subset": "3000", "epochs": "2"}, "grid": {"pp": [0.1, 0.33], "seed": [0, 1]}})
    cell = study.cells[0]
    images = 3000 * 2
    assert training_left(study, gtsrb, workers=2) is None, "nothing measured yet"
    threads = torch.get_num_threads()
    record(training_step(cell, threads), 10.0, images)  # the app's speed, with all its threads
    seconds, bound = training_left(study, gtsrb, workers=2)
    assert seconds == pytest.approx(4 * 10.0 * threads / 2) and bound == (threads > 1)
    record(training_step(cell, 1), 16.0, images)  # a study worker's speed, measured
    seconds, bound = training_left(study, gtsrb, workers=2)
    assert seconds == pytest.approx(4 * 16.0 / 2) and not bound
    assert training_left(study, gtsrb, workers=4)[0] == pytest.approx(4 * 16.0 / 4)


def test_attack_kind_and_amplitude_are_grid_axes_and_cleansing_adds_a_step_per_detector(tmp_path):
    study = load_study(write(tmp_path, "detectors = ['spectral', 'gw']\ncleanse = true\n[base]\nkind = 'label-consistent'\n"
                                       "[grid]\namp = [255, 64, 32]\npp = [0.33, 0.1]\n"))
    assert {(c.poison.kind, c.poison.amplitude, c.poison.fraction) for c in study.cells} == {
        ("label-consistent", a, p) for a in (255, 64, 32) for p in (0.33, 0.1)}
    assert study.steps == ("train", "spectral", "gw", "cleanse spectral", "cleanse gw")
    assert study.key() != load_study(write(tmp_path, "detectors = ['spectral', 'gw']\n[base]\nkind = 'label-consistent'\n"
                                                     "[grid]\namp = [255, 64, 32]\npp = [0.33, 0.1]\n")).key()
    from core.study import to_toml

    assert load_study(write(tmp_path, to_toml(study))) == study


@pytest.mark.slow
def test_a_study_cleanses_and_retrains_as_the_cleanse_command_does(gtsrb, seeded_cache, ray_runtime):
    from core.cleanse import cleanse

    study = study_from_dict({"name": "cleansing", "detectors": ["activation"], "cleanse": True, "base": TINY, "grid": {"pp": [0.33]}})
    run = run_study(study, gtsrb)
    assert run.failed == {} and sorted(run.computed) == ["activation [pp=0.33]", "cleanse activation [pp=0.33]", "train [pp=0.33]"]
    assert study_status(study, gtsrb) == [{"pp": "0.33", "train": "cached", "activation": "cached", "cleanse activation": "cached"}]
    row = study_results(study, gtsrb)[0]
    direct = cleanse(study.cells[0], "activation", gtsrb)  # the same retrained model, from the cache
    assert row["activation ASR after cleansing"] == direct["attack_success_rate"]
    assert row["activation clean accuracy after cleansing"] == direct["clean_accuracy"]
    assert study_table(study, gtsrb)[0]["activation ASR after cleansing n"] == 1


def test_every_study_that_comes_with_the_project_loads():
    """The presets in studies/ (the Studies view lists them) are valid studies with known detectors."""
    from core.detectors import DETECTORS
    from core.study import preset_studies

    presets = preset_studies()
    assert len(presets) >= 9
    for name, path in presets.items():
        study = load_study(path)
        assert study.name == name and study.cells and set(study.detectors) <= set(DETECTORS), path
