"""The thesis's default experiment end to end through the CLI: poison, train, explain.

Uses the shared cache, so the default model is trained once per clone (about 1.5 minutes on
2 cores) and loaded afterwards; every other test trains only small models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> dict:
    env = {**os.environ, "POISONLAB_NO_PROGRESS": "1"}
    env.pop("POISONLAB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


@pytest.mark.slow
def test_default_attack_succeeds_and_lrp_sees_the_sticker(gtsrb):
    trained = run_cli("train")
    assert trained["n_poisoned"] == 813
    assert trained["clean_accuracy"] >= 0.95, trained  # thesis: 0.968
    assert trained["attack_success_rate"] >= 0.95, trained  # thesis: 1.0
    assert trained["source_accuracy"] >= 0.9, trained

    summary = run_cli("heatmaps", "--class", "5")
    assert (summary["count"], summary["poisoned"], summary["clean"]) == (2463, 813, 1650)
    poisoned, clean = summary["window_positive_share_poisoned"], summary["window_positive_share_clean"]
    assert poisoned > 2.5 * clean, summary
    assert summary["window_mass_share_poisoned"] > 2 * summary["window_mass_share_clean"], summary


@pytest.mark.slow
def test_default_spectral_analysis_and_baselines(gtsrb):
    """Class 5 of the default experiment: 2463 samples, 813 poisoned. Measured on the AVX-512 EPYC:
    epsilon rule (tn, fp, fn, tp) = 1650, 0, 485, 328 (the thesis: 1650, 0, 386, 427);
    composite rule 1650, 0, 5, 808 (AUC 1.000); activation clustering 1639, 11, 36, 777;
    spectral signatures 1650, 0, 646, 167; raw images 1185, 465, 418, 395.

    The composite rule's two-way split follows whichever group of the poisoned samples stands apart
    most, and that differs from model to model: training seeds 1 and 2 give 204 and 206 flagged (at
    most one clean), another 2-core machine's model (its kernels sum in another order) 377 with one false
    alarm. What holds on every one: the smaller cluster is (almost) all poisoned and large, and
    activation clustering finds 743-777 of the 813 with at most 13 false alarms."""
    thesis = {"tn": 1650, "fp": 0, "fn": 386, "tp": 427}
    spectral = run_cli("spectral", "--class", "5", "--rule", "epsilon")
    assert spectral["thesis_euclidean_spectral"] == thesis
    assert (spectral["samples"], spectral["poisoned"]) == (2463, 813)
    assert spectral["tn"] + spectral["fp"] + spectral["fn"] + spectral["tp"] == 2463
    assert spectral["tn"] + spectral["fp"] == 1650 and spectral["fn"] + spectral["tp"] == 813
    assert spectral["fp"] <= 10, spectral  # like the thesis: the smaller cluster is (almost) all poisoned
    values = spectral["eigenvalues"]
    assert len(values) == 30 and values == sorted(values) and abs(values[0]) < 1e-8 and values[1] > 0
    assert max(values) < 1.0, "the smallest of L_sym's spectrum, not eigenvalues near 2"

    composite = run_cli("spectral", "--class", "5")
    assert composite["thesis_euclidean_spectral"] == thesis and composite["rule"].startswith("composite")

    methods = run_cli("baselines", "--class", "5")["methods"]
    assert list(methods) == ["LRP heatmaps, Euclidean spectral (composite)", "activation clustering", "spectral signatures", "raw images"]
    lrp = methods["LRP heatmaps, Euclidean spectral (composite)"]
    assert {k: lrp[k] for k in ("tn", "fp", "fn", "tp")} == {k: composite[k] for k in ("tn", "fp", "fn", "tp")}
    assert lrp["fp"] <= 10 and lrp["tp"] >= 150, lrp  # a large group, (almost) all poisoned
    activation = methods["activation clustering"]
    assert activation["tpr"] > 0.85 and activation["fp"] <= 30, activation
    for name, score in methods.items():
        assert score["tn"] + score["fp"] + score["fn"] + score["tp"] == 2463, name
        assert score["tn"] + score["fp"] == 1650, name
        assert 0.0 <= score["auc"] <= 1.0, name
    raw = methods["raw images"]
    for name in ("LRP heatmaps, Euclidean spectral (composite)", "activation clustering"):
        assert methods[name]["accuracy"] > raw["accuracy"] + 0.05, (name, methods[name], raw)  # measured: >= 0.75 against 0.64

@pytest.mark.slow
def test_default_gw_kmeans(gtsrb):
    """GW k-means on class 5 of the default experiment at the thesis's settings (t = 0.99,
    ε = 5e-4, 10-point barycenters) on its default clouds, the positive part of the composite heatmaps.
    The model, and with it the clouds, depends on the CPU it was trained on (each CPU's kernels sum in
    their own order). Measured on a 2-core Intel Xeon (AVX-512): seeding 1650, 0, 323, 490, then the
    counts improve at every iteration and it converges after 9 in 43-64 s at 1622, 28, 72, 741:
    accuracy 95.9 %, TPR 91.1 %, TNR 98.3 % (thesis: 98.17 / 96.68 / 98.91 %); with a model trained
    with AVX2 kernels, 96.2 % and 96.4 % (seeds 0 and 1). On the signed heatmaps (`--signed`, the
    default before) the same model gives 90.4 %, and the reference EPYC's model 81.2 %; no seeding
    reaches the thesis's figure on ThesisNet's clouds (README, GW settings: the truth-centre bound)."""
    result = run_cli("detect", "--method", "gw", "--class", "5")
    assert result["thesis"]["accuracy"] == 0.9817 and result["thesis"]["iteration_3"] == {"tn": 1621, "fp": 29, "fn": 27, "tp": 786}
    assert (result["samples"], result["poisoned"]) == (2463, 813)
    config = result["config"]
    assert (config["threshold"], config["epsilon"], config["epsilon_init"], config["barycenter_size"]) == (0.99, 5e-4, 5e-4, 10)
    for it in result["iterations"]:
        assert it["tn"] + it["fp"] == 1650 and it["fn"] + it["tp"] == 813, it
    # It stops at a repeated assignment or at the cap of 10 iterations (iteration 0 is the seeding).
    assert len(result["iterations"]) <= 11 and (result["converged"] or len(result["iterations"]) == 11)
    assert result["rule"].endswith("positive part"), result["rule"]
    score = result["score"]
    assert {k: score[k] for k in ("tn", "fp", "fn", "tp")} == {k: result["iterations"][-1][k] for k in ("tn", "fp", "fn", "tp")}
    assert score["tpr"] > 0.8 and score["tnr"] > 0.9 and score["auc"] > 0.9, score
    # The mean GW distance to the centres falls at every iteration (measured: 0.011972 after seeding, 0.008168 after 9).
    objectives = [it["objective"] for it in result["iterations"]]
    assert all(later <= earlier * (1 + 1e-3) for earlier, later in zip(objectives, objectives[1:])), objectives  # measured: rises of at most 3e-5
    assert score["accuracy"] > 0.85, score
    seeding = result["iterations"][0]
    assert score["accuracy"] >= (seeding["tn"] + seeding["tp"]) / 2463 - 0.005, "the iterations drift away from the seeding's answer"
    again = run_cli("detect", "--method", "gw", "--class", "5")
    assert again["score"] == score and again["seconds"] == result["seconds"], "the second call loads the cached result"
