"""`python -m core`, run as the user runs it: a subprocess with its own environment."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from core.cli import build_parser, main
from core.detectors import baseline_scores, heatmap_spectral
from core.experiment import ExperimentConfig, poisoned_data, train_or_load
from core.heatmaps import experiment_heatmaps
from core.lrp import LRPConfig
from core.poison import PoisonConfig, poison_split, sticker_window
from core.spectral import SpectralConfig
from core.train import TrainConfig

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parent.parent
TRAIN_KEYS = {"clean_accuracy", "source_accuracy", "attack_success_rate", "epochs", "train_seconds", "n_poisoned"}

# Every config field must be settable from the command line, or the app could show numbers
# the CLI cannot reproduce.
OPTION_OF_FIELD = {
    "poison": {
        "source": "--source", "target": "--target", "size": "--size", "color": "--color", "x_range": "--x-range",
        "y_range": "--y-range", "fraction": "--fraction", "seed": "--poison-seed", "kind": "--kind", "amplitude": "--amplitude",
        "perturbation": "--perturbation",
    },
    "train": {
        "architecture": "--architecture", "max_epochs": "--epochs", "patience": "--patience",
        "batch_size": "--batch-size", "learning_rate": "--lr", "weight_decay": "--weight-decay",
        "augment": "--no-augment", "subset": "--subset", "seed": "--seed", "schedule": "--schedule", "augmentation": "--augmentation",
    },
}


def run_core(*args: str, cache: Optional[Path], **env_overrides: Optional[str]) -> subprocess.CompletedProcess:
    """`python -m core ARGS`; an override of None removes that environment variable."""
    env = dict(os.environ)
    env.pop("POISONLAB_CACHE", None)
    env["COLUMNS"] = "100"
    if cache is not None:
        env["POISONLAB_CACHE"] = str(cache)
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_subparser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def test_train_help_documents_every_option():
    result = run_core("train", "--help", cache=None)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    squeezed = "".join(text.split())
    options = [a for a in train_subparser()._actions if a.option_strings]
    assert len(options) > 15
    for action in options:
        for option in action.option_strings:
            assert option in text, option
        if "--help" in action.option_strings:
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{action.option_strings} is undocumented"
        assert "".join(action.help.split()) in squeezed, action.option_strings


def test_every_config_field_has_an_option():
    assert set(OPTION_OF_FIELD["poison"]) == {f.name for f in dataclasses.fields(PoisonConfig)}
    assert set(OPTION_OF_FIELD["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    options = {o for a in train_subparser()._actions for o in a.option_strings}
    for section in OPTION_OF_FIELD.values():
        for option in section.values():
            assert option in options, option


def test_train_prints_one_json_line(gtsrb, seeded_cache, gtsrb_cache_file):
    data_file = seeded_cache / gtsrb_cache_file.name
    result = run_core("train", "--subset", "2000", "--epochs", "2", "--quiet", cache=seeded_cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    metrics = json.loads(lines[0])
    assert TRAIN_KEYS <= set(metrics)
    assert "Traceback" not in result.stderr

    config = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=2))
    assert ExperimentConfig.from_dict(metrics["config"]) == config
    assert metrics["epochs"] == 2 and metrics["n_train"] == 2000
    for key in ("clean_accuracy", "source_accuracy", "attack_success_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["train_seconds"] > 0
    # With --subset the model sees only the poisoned images that fall into its subset.
    data = poisoned_data(gtsrb, config)
    full = poison_split(gtsrb.train, config.poison)
    assert metrics["n_poisoned"] == int(full.poison_mask[data.train_index].sum()) == int(data.train.poison_mask.sum())
    assert 0 < metrics["n_poisoned"] < 813

    # The data were read from the seeded cache, not decoded and written again.
    assert os.stat(data_file).st_ino == os.stat(gtsrb_cache_file).st_ino
    models = list(seeded_cache.glob("model-*.safetensors"))
    assert [str(p) for p in models] == [metrics["model"]]

    # The app and the CLI share the cache: the same experiment in-process is the stored one.
    shared = train_or_load(config, gtsrb)
    assert shared.from_cache
    assert {k: shared.metrics[k] for k in TRAIN_KEYS} == {k: metrics[k] for k in TRAIN_KEYS}

    again = run_core("train", "--subset", "2000", "--epochs", "2", "--quiet", cache=seeded_cache)
    assert again.returncode == 0, again.stderr
    cached = json.loads(again.stdout)
    assert cached["from_cache"] is True
    assert {k: cached[k] for k in TRAIN_KEYS} == {k: metrics[k] for k in TRAIN_KEYS}


def test_data_command_reports_the_real_split(gtsrb, seeded_cache):
    result = run_core("data", "--quiet", cache=seeded_cache)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["sizes"] == {"train": 34_799, "val": 4_440, "test": 12_630}
    assert report["layout"] == "class-folders" and report["content_id"] == gtsrb.content_id
    assert report["train_class_counts"] == gtsrb.train.class_counts()
    assert report["train_class_counts"][2] == 2010 and report["train_class_counts"][5] == 1650


def test_defaults_poison_813_images(gtsrb):
    """What the CLI reports as n_poisoned without --subset (no training needed to know it)."""
    data = poisoned_data(gtsrb, ExperimentConfig())
    assert int(data.train.poison_mask.sum()) == 813 and len(data.train) == 34_799


BAD_INPUTS = {
    "fraction above one": (["--fraction", "1.5"], {}, "--fraction: '1.5' is out of range: allowed is a number in [0, 1)"),
    "source out of range": (["--source", "99"], {}, "--source: '99' is out of range: allowed is a whole number in 0 … 42"),
    "size zero": (["--size", "0"], {}, "--size: '0' is out of range"),
    "negative poison seed": (["--poison-seed", "-1"], {}, "--poison-seed: '-1' is out of range"),
    "zero epochs": (["--epochs", "0"], {}, "--epochs: '0' is out of range: allowed is a whole number in 1 … 1000"),
    "colour out of range": (["--color", "300", "0", "0"], {}, "--color: '300' is out of range"),
    "missing GTSRB_DIR folder": ([], {"GTSRB_DIR": "{tmp}/no-such-gtsrb"}, "{tmp}/no-such-gtsrb"),
    "GTSRB_DIR unset": ([], {"GTSRB_DIR": None}, "GTSRB_DIR is not set"),
    "missing --gtsrb-dir folder": (["--gtsrb-dir", "{tmp}/elsewhere"], {}, "{tmp}/elsewhere"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(tmp_path, case):
    args, env, expected = BAD_INPUTS[case]

    def fill(text):
        return text.replace("{tmp}", str(tmp_path)) if text else text

    cache = tmp_path / "cache"
    result = run_core("train", "--subset", "100", "--epochs", "1", "--quiet", *map(fill, args), cache=cache,
                      **{k: fill(v) for k, v in env.items()})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert fill(expected) in lines[0]
    assert not cache.exists() or not any(cache.iterdir()), "nothing is written to the cache"


# --- heatmaps -----------------------------------------------------------------------------------

HEATMAP_KEYS = {
    "count", "seconds", "conservation_gap_median", "mean_points", "window_mass_share_poisoned",
    "window_mass_share_clean", "window_positive_share_poisoned", "window_positive_share_clean",
}


def test_heatmaps_prints_one_json_line(gtsrb, seeded_cache):
    args = ("heatmaps", "--subset", "2000", "--epochs", "2", "--quiet")
    result = run_core(*args, cache=seeded_cache)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert HEATMAP_KEYS <= set(report)

    config = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=2))
    train = poisoned_data(gtsrb, config).train
    five = train.labels == 5
    assert report["count"] == int(five.sum()) and report["count"] > 50
    assert report["poisoned"] == int(train.poison_mask[five].sum()) > 0
    assert report["clean"] == report["count"] - report["poisoned"]
    assert report["class"] == 5 and report["lrp"]["rule"] == "composite" and report["threshold"] == 0.99
    assert report["seconds"] > 0 and 1 <= report["mean_points"] <= 32 * 32
    for key in HEATMAP_KEYS:
        if key.startswith("window_"):
            assert 0.0 <= report[key] <= 1.0, key
    assert len(list(seeded_cache.glob("model-*.safetensors"))) == 1
    assert len(list(seeded_cache.glob("heatmaps-05-composite-*.safetensors"))) == 1

    # The app reads the same artifact: in-process, nothing is recomputed and the numbers agree.
    heatmaps = experiment_heatmaps(config, 5, LRPConfig(), gtsrb)
    summary = heatmaps.summary(sticker_window(config.poison), 0.99)
    assert {k: summary[k] for k in HEATMAP_KEYS} == {k: report[k] for k in HEATMAP_KEYS}

    again = run_core(*args, "--threshold", "0.5", cache=seeded_cache)
    assert again.returncode == 0, again.stderr
    cached = json.loads(again.stdout)
    assert cached["seconds"] == report["seconds"], "the heatmaps came from the cache"
    assert cached["mean_points"] < report["mean_points"]


HEATMAP_BAD_INPUTS = {
    "threshold zero": (["--threshold", "0"], "--threshold: '0' is out of range: allowed is a number in (0, 1]"),
    "threshold above one": (["--threshold", "1.5"], "--threshold: '1.5'"),
    "unknown rule": (["--rule", "nonsense"], "invalid choice"),
    "class 43": (["--class", "43"], "--class: '43' is out of range: allowed is a whole number in 0 … 42"),
    "negative epsilon": (["--epsilon", "-1"], "--epsilon: '-1'"),
}


@pytest.mark.parametrize("case", list(HEATMAP_BAD_INPUTS))
def test_heatmaps_bad_input_is_a_one_line_error(tmp_path, case):
    args, expected = HEATMAP_BAD_INPUTS[case]
    cache = tmp_path / "cache"
    result = run_core("heatmaps", "--subset", "100", "--epochs", "1", "--quiet", *args, cache=cache)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert not cache.exists() or not any(cache.iterdir()), "rejected before any data is loaded or model trained"


# --- spectral and baselines ---------------------------------------------------------------------

SMALL = ("--subset", "2000", "--epochs", "2", "--quiet")
SCORE_KEYS = {"tn", "fp", "fn", "tp", "accuracy", "tpr", "tnr", "f1", "auc"}
LRP_METHOD = "LRP heatmaps, Euclidean spectral (composite)"
BASELINES = ["activation clustering", "spectral signatures", "raw images"]


def one_json_line(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_spectral_and_baselines_print_one_json_line(gtsrb, seeded_cache):
    """Both commands on the same small experiment and cache: one model, one set of heatmaps."""
    config = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=2))
    train = poisoned_data(gtsrb, config).train
    five = train.labels == 5
    n, n_poisoned = int(five.sum()), int(train.poison_mask[five].sum())
    assert n > 50 and 0 < n_poisoned < n

    report = one_json_line(run_core("spectral", "--class", "5", *SMALL, cache=seeded_cache))
    assert report["class"] == 5 and report["samples"] == n and report["poisoned"] == n_poisoned
    values = report["eigenvalues"]
    assert len(values) == 30 and values == sorted(values)
    assert abs(values[0]) <= 1e-6 and 0.0 <= min(values) and max(values) <= 2.0
    assert values[-1] > 0, "not all zero"
    assert 1 <= report["eigengap_clusters"] < 30
    assert report["tn"] + report["fp"] + report["fn"] + report["tp"] == n
    assert report["fn"] + report["tp"] == n_poisoned and report["tn"] + report["fp"] == n - n_poisoned
    sizes = report["cluster_sizes"]
    assert len(sizes) == 2 and sum(sizes) == n and min(sizes) == report["fp"] + report["tp"], "the smaller cluster is flagged"
    assert SCORE_KEYS <= set(report) and 0.0 <= report["auc"] <= 1.0
    assert report["spectral"] == {"k_neighbors": 10, "n_eigenvalues": 30, "n_clusters": 2, "seed": 0}
    assert "thesis_euclidean_spectral" not in report, "the thesis's figures belong to the default experiment only"
    assert len(list(seeded_cache.glob("model-*.safetensors"))) == 1
    assert len(list(seeded_cache.glob("heatmaps-05-composite-*.safetensors"))) == 1

    # The app computes the same numbers in-process from the same cached heatmaps.
    heatmaps, result, flagged, score = heatmap_spectral(config, 5, LRPConfig(), SpectralConfig(), gtsrb)
    assert len(heatmaps) == n
    assert (score.tn, score.fp, score.fn, score.tp) == (report["tn"], report["fp"], report["fn"], report["tp"])
    assert np.allclose(result.eigenvalues, values, atol=2e-6)

    other = one_json_line(run_core("spectral", "--rule", "epsilon", "--k", "5", "--eigenvalues", "12", "--clusters", "3",
                                   "--cluster-seed", "1", *SMALL, cache=seeded_cache))
    assert len(other["eigenvalues"]) == 12 and other["eigenvalues"] == sorted(other["eigenvalues"])
    assert len(other["cluster_sizes"]) == 3 and sum(other["cluster_sizes"]) == n
    assert other["tn"] + other["fp"] + other["fn"] + other["tp"] == n
    assert other["spectral"] == {"k_neighbors": 5, "n_eigenvalues": 12, "n_clusters": 3, "seed": 1}
    assert other["rule"].startswith("LRP-eps")
    assert len(list(seeded_cache.glob("model-*.safetensors"))) == 1, "the model was reused"

    methods = one_json_line(run_core("baselines", "--class", "5", *SMALL, cache=seeded_cache))
    assert methods["class"] == 5
    table = methods["methods"]
    assert list(table) == [LRP_METHOD, *BASELINES]
    for name, scores in table.items():
        assert SCORE_KEYS <= set(scores), name
        assert scores["tn"] + scores["fp"] + scores["fn"] + scores["tp"] == n, name
        assert scores["fn"] + scores["tp"] == n_poisoned, name
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["auc"] <= 1.0, name
    for name in BASELINES:
        assert table[name]["seconds"] >= 0
    lrp = table[LRP_METHOD]
    assert {k: lrp[k] for k in SCORE_KEYS} == {k: report[k] for k in SCORE_KEYS}, "the same clustering as `spectral`"
    assert len(list(seeded_cache.glob("model-*.safetensors"))) == 1

    # The page's baselines come from the same call; it is deterministic across processes.
    in_process = baseline_scores(config, 5, gtsrb)
    for name in BASELINES:
        assert {k: in_process[name][k] for k in ("tn", "fp", "fn", "tp")} == {k: table[name][k] for k in ("tn", "fp", "fn", "tp")}, name
        assert in_process[name]["auc"] == pytest.approx(table[name]["auc"], abs=1e-9), name


SPECTRAL_BAD_INPUTS = {
    "spectral k 0": (["spectral", "--k", "0"], "--k: '0'"),
    "spectral one cluster": (["spectral", "--clusters", "1"], "--clusters: '1'"),
    "spectral one eigenvalue": (["spectral", "--eigenvalues", "1"], "--eigenvalues: '1'"),
    "spectral class 43": (["spectral", "--class", "43"], "--class: '43'"),
    "spectral negative seed": (["spectral", "--cluster-seed", "-1"], "--cluster-seed: '-1'"),
    "baselines class 43": (["baselines", "--class", "43"], "--class: '43'"),
    "baselines class -1": (["baselines", "--class", "-1"], "--class: '-1'"),
    "baselines negative seed": (["baselines", "--cluster-seed", "-1"], "--cluster-seed: '-1'"),
    "spectral gw two samples": (["spectral", "--distance", "gw", "--gw-samples", "2"], "--gw-samples: '2'"),
    "spectral gw pool 3": (["spectral", "--distance", "gw", "--gw-pool", "3"], "pool must be"),
    "spectral gw eps 0": (["spectral", "--distance", "gw", "--gw-eps", "0"], "--gw-eps: '0'"),
    "spectral gw threshold 0": (["spectral", "--distance", "gw", "--threshold", "0"], "--threshold: '0'"),
    "detect eps 0": (["detect", "--eps", "0"], "--eps: '0'"),
    "detect eps nan": (["detect", "--eps", "nan"], "--eps: 'nan'"),
    "detect eps-init negative": (["detect", "--eps-init", "-1"], "--eps-init: '-1'"),
    "detect threshold 1.5": (["detect", "--threshold", "1.5"], "--threshold: '1.5'"),
    "detect one-point barycenters": (["detect", "--barycenter-size", "1"], "--barycenter-size: '1'"),
    "detect no iterations": (["detect", "--max-iter", "0"], "--max-iter: '0'"),
    "detect class 43": (["detect", "--class", "43"], "--class: '43'"),
    "detect negative seed": (["detect", "--cluster-seed", "-1"], "--cluster-seed: '-1'"),
    "detect negative seed among several": (["detect", "--cluster-seeds", "0", "1", "-2"], "--cluster-seeds: '-2'"),
    "heatmaps unknown layer": (["heatmaps", "--relevance-layer", "inception"], "no layer 'inception'"),
    "heatmaps malformed layer": (["heatmaps", "--relevance-layer", "fc1;x"], "relevance layer must be"),
}


@pytest.mark.parametrize("case", list(SPECTRAL_BAD_INPUTS))
def test_spectral_and_baselines_bad_input_is_a_one_line_error(tmp_cache, capsys, case):
    """In-process through `main` (the subprocess wiring is checked below): exit status 2, one
    `error:` line, and nothing loaded or trained."""
    args, expected = SPECTRAL_BAD_INPUTS[case]
    status = main([*args, "--subset", "100", "--epochs", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not any(tmp_cache.iterdir()), "rejected before any data is loaded or model trained"


@pytest.mark.parametrize("args", [["spectral", "--k", "0"], ["baselines", "--cluster-seed", "-1"], ["detect", "--eps", "0"]],
                         ids=["spectral", "baselines", "detect"])
def test_spectral_and_baselines_bad_input_exit_2_from_the_command_line(tmp_path, args):
    cache = tmp_path / "cache"
    result = run_core(*args, "--subset", "100", "--epochs", "1", "--quiet", cache=cache)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not cache.exists() or not any(cache.iterdir())


def test_inspect_prints_the_defense_pages_numbers(gtsrb, seeded_cache):
    """The CLI and the page (which calls core in-process) agree on every prediction and confidence."""
    from core.defense import DefenseConfig
    from core.evasion import AttackConfig
    from core.inspection import inspect, sensitivity_grid

    report = one_json_line(run_core("inspect", "--test-index", "3", "40", "--attack", "fgsm", "--iterations", "40",
                                    "--sensitivity", "attacked", *SMALL, cache=seeded_cache))
    config = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=2))
    model = train_or_load(config, gtsrb).model
    index = torch.tensor([3, 40])
    defense = DefenseConfig(iterations=40)
    result = inspect(model, gtsrb.test.images[index].float() / 255, gtsrb.test.labels[index], AttackConfig(name="fgsm"), defense)
    assert report["attack"] == "fgsm" and report["eps"] == round(8 / 255, 6)
    assert [{k: v for k, v in row.items() if k != "label_name"} for row in report["images"]] == result.summary()
    grid = sensitivity_grid(model, result.images[1, 0], defense)
    printed = report["sensitivity"]["rows"]
    assert [[(c["parameter"], c["predicted"], c["confidence"]) for c in row] for row in printed] == \
        [[(c.parameter, c.predicted, c.confidence) for c in row] for row in grid]


def _stderr_until(process: subprocess.Popen, text: str, seconds: float) -> str:
    """What `process` wrote to stderr until `text` appeared in it (tqdm redraws with \\r, not lines)."""
    import selectors
    import time

    seen, deadline = b"", time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while text.encode() not in seen and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                seen += os.read(process.stderr.fileno(), 65536)
    return seen.decode(errors="replace")


@pytest.mark.parametrize("command", ["heatmaps", "detect"])
def test_the_command_line_waits_for_an_artifact_another_process_is_computing(gtsrb, seeded_cache, command):
    """Two processes, one computation: while this process holds the lock of the artifact the
    command needs (the class's heatmaps, or its GW k-means), the command waits; then it reads
    what this process stored and computes nothing itself."""
    from core.cache import WAITING, artifact_lock
    from core.experiment import model_path
    from core.detectors import detection_path, experiment_gw
    from core.gw_kmeans import GWConfig
    from core.heatmaps import heatmaps_path

    config = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=2))
    from core.presets import GW_RELEVANCE

    lrp, gw = (LRPConfig() if command == "heatmaps" else GW_RELEVANCE), GWConfig(max_iter=2)  # each command's default
    train_or_load(config, gtsrb)
    heatmaps_file = heatmaps_path(model_path(gtsrb, config).name, 5, lrp)
    if command == "heatmaps":
        artifact, compute = heatmaps_file, lambda: experiment_heatmaps(config, 5, lrp, gtsrb)
        args = ("heatmaps", "--subset", "2000", "--epochs", "2")
    else:
        experiment_heatmaps(config, 5, lrp, gtsrb)
        artifact, compute = detection_path(heatmaps_file.name, gw), lambda: experiment_gw(config, 5, lrp, gw, gtsrb)
        args = ("detect", "--method", "gw", "--max-iter", "2", "--subset", "2000", "--epochs", "2")
    assert not artifact.exists()

    lock = artifact_lock(artifact.name)
    lock.acquire()
    env = {**os.environ, "POISONLAB_CACHE": str(seeded_cache), "COLUMNS": "100"}
    process = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        waited = _stderr_until(process, WAITING, seconds=300)
        assert WAITING in waited, waited[-2000:]
        assert not artifact.exists(), "the command computed while the lock was held"
        compute()  # this process's computation, under the lock it holds
        stored = artifact.stat()
    finally:
        lock.release()
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-2000:]
    after = artifact.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns), "the command rewrote the artifact"
    report = json.loads(stdout.decode().splitlines()[-1])
    ours = compute()  # from the cache now
    assert report["seconds"] == (ours.seconds if command == "heatmaps" else ours[1].seconds), "read, not computed again"
