"""Scoring a detector against the poison truth (core/detection.py): confusion counts and rates
worked out by hand, ROC-AUC from continuous scores only, and flagging the smaller cluster."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.detection import DetectionScore, flag_smaller_cluster, score_detection
from core.errors import ConfigError

T, F = True, False


# --- confusion counts and rates -----------------------------------------------------------------


def test_counts_and_rates_of_a_hand_made_example():
    #         poisoned ------------  clean ---------------------
    truth = [T, T, T, T, T, F, F, F, F, F, F, F, F, F, F]
    flags = [T, T, T, F, F, T, F, F, F, F, F, F, F, F, F]
    s = score_detection(np.array(truth), np.array(flags))
    assert (s.tn, s.fp, s.fn, s.tp) == (9, 1, 2, 3)
    assert s.accuracy == pytest.approx(12 / 15)
    assert s.tpr == pytest.approx(3 / 5)
    assert s.tnr == pytest.approx(9 / 10)
    assert s.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # = 2 PR / (P + R) with P = 3/4, R = 3/5
    assert s.f1 == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert s.auc is None, "no continuous score, so no AUC"
    assert all(isinstance(v, int) for v in (s.tn, s.fp, s.fn, s.tp))


def test_the_thesis_gromov_wasserstein_table():
    """The thesis's last GW k-means iteration, (tn, fp, fn, tp) = 1632, 18, 27, 786, is the one
    behind its table 2 (ACC 98.17 %, TNR 98.91 %); its TPR 96.98 % is a typo for 786/813 = 96.68 %."""
    truth = np.r_[np.zeros(1650, bool), np.ones(813, bool)]
    flags = np.r_[np.zeros(1632, bool), np.ones(18, bool), np.zeros(27, bool), np.ones(786, bool)]
    s = score_detection(truth, flags)
    assert (s.tn, s.fp, s.fn, s.tp) == (1632, 18, 27, 786)
    assert round(100 * s.accuracy, 2) == 98.17
    assert round(100 * s.tnr, 2) == 98.91
    assert round(100 * s.tpr, 2) == 96.68


def test_perfect_and_inverted_detection():
    truth = np.array([T, F, T, F, F])
    perfect = score_detection(truth, truth)
    assert (perfect.tn, perfect.fp, perfect.fn, perfect.tp) == (3, 0, 0, 2)
    assert perfect.accuracy == perfect.tpr == perfect.tnr == perfect.f1 == 1.0
    inverted = score_detection(truth, ~truth)
    assert (inverted.tn, inverted.fp, inverted.fn, inverted.tp) == (0, 3, 2, 0)
    assert inverted.accuracy == inverted.tpr == inverted.tnr == inverted.f1 == 0.0


def test_zero_one_integers_and_lists_are_accepted():
    by_bool = score_detection(np.array([T, F, T, F]), np.array([T, T, F, F]))
    by_int = score_detection([1, 0, 1, 0], np.array([1, 1, 0, 0], dtype=np.uint8))
    by_float = score_detection(np.array([1.0, 0.0, 1.0, 0.0]), [1, 1, 0, 0])
    assert by_bool == by_int == by_float
    assert (by_bool.tn, by_bool.fp, by_bool.fn, by_bool.tp) == (1, 1, 1, 1)


def test_rates_without_positives_or_negatives_are_nan():
    clean_only = score_detection(np.zeros(4, bool), np.array([T, F, F, F]))
    assert (clean_only.tn, clean_only.fp, clean_only.fn, clean_only.tp) == (3, 1, 0, 0)
    assert math.isnan(clean_only.tpr) and clean_only.tnr == 0.75 and clean_only.f1 == 0.0
    nothing_to_find = score_detection(np.zeros(3, bool), np.zeros(3, bool))
    assert nothing_to_find.accuracy == 1.0 and math.isnan(nothing_to_find.f1) and math.isnan(nothing_to_find.tpr)
    poisoned_only = score_detection(np.ones(3, bool), np.array([T, T, F]))
    assert math.isnan(poisoned_only.tnr) and poisoned_only.tpr == pytest.approx(2 / 3)


def test_as_dict_lists_every_field_in_the_thesis_order():
    s = score_detection(np.array([T, F, F]), np.array([T, T, F]), np.array([0.9, 0.5, 0.1]))
    assert list(s.as_dict()) == ["tn", "fp", "fn", "tp", "accuracy", "tpr", "tnr", "f1", "auc"]
    assert s.as_dict()["auc"] == 1.0 and isinstance(s, DetectionScore)


# --- ROC-AUC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_auc_equals_sklearn_on_a_noisy_score(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.33
    score = truth + rng.normal(scale=0.9, size=300)
    flags = score > 0.5
    s = score_detection(truth, flags, score)
    assert s.auc == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    assert 0.6 < s.auc < 1.0
    assert s.auc != pytest.approx(roc_auc_score(truth, flags), abs=1e-3), "from the score, not the flags"


def test_auc_of_separating_constant_and_reversed_scores():
    truth = np.array([F, F, F, T, T, F, T])
    flags = np.zeros(7, bool)  # the AUC does not depend on the flags at all
    separating = np.where(truth, 5.0, -1.0) + np.arange(7) * 0.01
    assert score_detection(truth, flags, separating).auc == 1.0
    assert score_detection(truth, flags, -separating).auc == 0.0
    assert score_detection(truth, flags, np.full(7, 3.0)).auc == 0.5
    assert score_detection(truth, flags, list(separating)).auc == 1.0


def test_auc_needs_both_classes():
    score = np.arange(5.0)
    assert score_detection(np.zeros(5, bool), np.zeros(5, bool), score).auc is None
    assert score_detection(np.ones(5, bool), np.ones(5, bool), score).auc is None


def test_flags_equal_to_the_truth_give_no_auc_without_a_score():
    truth = np.array([T, F, T, F, F, F])
    s = score_detection(truth, truth.copy())
    assert s.tpr == s.tnr == 1.0 and s.auc is None
    assert score_detection(truth, truth, None).auc is None


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("truth, flags, score, message", [
    (np.ones(3, bool), np.ones(4, bool), None, "differ in length"),
    (np.ones(4, bool), np.ones(3, bool), None, "differ in length"),
    (np.array([0, 2, 1]), np.ones(3, bool), None, "true/false"),
    (np.ones(3, bool), np.array([0.0, 0.5, 1.0]), None, "true/false"),
    (np.ones(3, bool), np.array([0.0, np.nan, 1.0]), None, "true/false"),
    (np.ones(3, bool), np.array(["yes", "no", "yes"]), None, "true/false"),
    (np.ones((2, 2), bool), np.ones((2, 2), bool), None, "one-dimensional"),
    (np.array(True), np.array(True), None, "one-dimensional"),
    (np.array([T, F, T]), np.ones(3, bool), np.array([0.0, np.nan, 1.0]), "NaN or infinite"),
    (np.array([T, F, T]), np.ones(3, bool), np.array([0.0, np.inf, 1.0]), "NaN or infinite"),
    (np.array([T, F, T]), np.ones(3, bool), np.ones(2), "score and truth differ"),
    (np.array([T, F, T]), np.ones(3, bool), np.ones((3, 1)), "score and truth differ"),
    (np.zeros(0, bool), np.zeros(0, bool), None, "no samples"),
    ([], [], None, "no samples"),
], ids=["short flags", "short truth", "truth 2", "flags 0.5", "flags NaN", "flags strings", "2-D", "0-D",
        "score NaN", "score inf", "short score", "2-D score", "empty", "empty lists"])
def test_bad_input_is_a_config_error(truth, flags, score, message):
    with pytest.raises(ConfigError, match=message):
        score_detection(truth, flags, score)


# --- the smaller cluster is the poisoned one ----------------------------------------------------


def test_the_smaller_of_two_clusters_is_flagged():
    assert flag_smaller_cluster(np.array([0, 0, 1, 0, 1, 0])).tolist() == [F, F, T, F, T, F]
    assert flag_smaller_cluster(np.array([1, 1, 0, 1, 1])).tolist() == [F, F, T, F, F]
    flags = flag_smaller_cluster([0, 1, 1])
    assert flags.dtype == bool and flags.tolist() == [T, F, F]


def test_ties_flag_the_lower_cluster_id():
    assert flag_smaller_cluster(np.array([1, 1, 0, 0])).tolist() == [F, F, T, T]
    assert flag_smaller_cluster(np.array([2, 0, 2, 0])).tolist() == [F, T, F, T]
    assert flag_smaller_cluster(np.array([1, 2, 3])).tolist() == [T, F, F]


def test_more_than_two_clusters_and_arbitrary_ids():
    assert flag_smaller_cluster(np.array([0, 0, 0, 1, 1, 2])).tolist() == [F] * 5 + [T]
    assert flag_smaller_cluster(np.array([7, 3, 7, 9, 3, 7, 9, 9, 9])).tolist() == [F, T, F, F, T, F, F, F, F]
    labels = np.random.default_rng(0).permutation(np.repeat([4, 1, 6, 2], [30, 12, 9, 20]))
    flags = flag_smaller_cluster(labels)
    assert flags.sum() == 9 and np.all(labels[flags] == 6)


def test_a_single_cluster_is_all_flagged():
    assert flag_smaller_cluster(np.zeros(4, int)).all()


@pytest.mark.parametrize("assignments", [np.zeros(0, int), np.zeros((2, 3), int), np.array(1)], ids=["empty", "2-D", "0-D"])
def test_bad_assignments_are_a_config_error(assignments):
    with pytest.raises(ConfigError, match="non-empty one-dimensional"):
        flag_smaller_cluster(assignments)


def test_over_seeds_reports_median_min_max_and_every_seeds_counts():
    from core.detection import over_seeds

    truth = np.array([True] * 4 + [False] * 6)
    runs = {0: score_detection(truth, np.array([True] * 4 + [False] * 6)),
            1: score_detection(truth, np.array([True] * 3 + [False] * 7)),
            7: score_detection(truth, np.array([True] * 4 + [True] + [False] * 5))}
    summary = over_seeds(runs)
    assert summary["seeds"] == 3
    assert summary["accuracy"] == {"median": 0.9, "min": 0.9, "max": 1.0}
    assert summary["tpr"] == {"median": 1.0, "min": 0.75, "max": 1.0}
    assert [row["seed"] for row in summary["per_seed"]] == [0, 1, 7]
    assert summary["per_seed"][1] == {"seed": 1, "tn": 6, "fp": 0, "fn": 1, "tp": 3, "accuracy": 0.9, "tpr": 0.75, "tnr": 1.0}
    with pytest.raises(ConfigError):
        over_seeds({})
