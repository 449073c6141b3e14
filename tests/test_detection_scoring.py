"""Detection scores on hand-made masks and scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.detection import flag_smaller_cluster, score_detection
from core.errors import ConfigError


def test_confusion_counts_and_rates_by_hand():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    flags = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    s = score_detection(truth, flags)
    assert (s.tn, s.fp, s.fn, s.tp) == (4, 1, 1, 2)
    assert s.accuracy == pytest.approx(6 / 8)
    assert s.tpr == pytest.approx(2 / 3) and s.tnr == pytest.approx(4 / 5)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s.auc is None  # no continuous score, no AUC


def test_auc_comes_from_the_score_not_from_the_flags():
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.3
    score = truth + rng.normal(scale=0.8, size=200)
    flags = score > 0.5
    s = score_detection(truth, flags, score)
    assert s.auc == pytest.approx(roc_auc_score(truth, score))
    assert s.auc != pytest.approx(roc_auc_score(truth, flags))
    assert score_detection(truth, flags, truth.astype(float) * 3).auc == 1.0
    assert score_detection(truth, flags, np.ones(200)).auc == 0.5
    assert score_detection(np.zeros(5, bool), np.zeros(5, bool), np.arange(5.0)).auc is None


@pytest.mark.parametrize("truth, flags, score", [
    (np.ones(3, bool), np.ones(4, bool), None),
    (np.array([0, 2, 1]), np.ones(3, bool), None),
    (np.ones(3, bool), np.ones(3, bool), np.array([0.0, np.nan, 1.0])),
    (np.ones(3, bool), np.ones(3, bool), np.ones(2)),
    (np.zeros(0, bool), np.zeros(0, bool), None),
])
def test_bad_input_is_a_config_error(truth, flags, score):
    with pytest.raises(ConfigError):
        score_detection(truth, flags, score)


def test_the_smaller_cluster_is_flagged():
    assert flag_smaller_cluster(np.array([0, 0, 1, 0, 1, 0])).tolist() == [False, False, True, False, True, False]
    three = np.array([0, 0, 0, 1, 1, 2])
    assert flag_smaller_cluster(three).tolist() == [False] * 5 + [True]
    tie = np.array([1, 1, 0, 0])
    assert flag_smaller_cluster(tie).tolist() == [False, False, True, True]
