"""The clinical metrics, checked against small cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medlake.training import metrics as m

# four people with the condition, four without; scores chosen so each metric is easy by hand
Y = [1, 1, 1, 1, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]


def test_confusion_at_a_threshold_counts_each_decision():
    c = m.confusion_at(Y, P, 0.5)  # flagged: 0.9 0.8 0.6 (sick) and 0.7 (well)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 1, 3, 1)
    assert c.sensitivity == 0.75 and c.specificity == 0.75
    assert c.ppv == 0.75 and c.npv == 0.75


def test_predictive_values_follow_bayes_at_the_given_prevalence():
    # sensitivity 0.9, specificity 0.8, prevalence 0.1:
    # PPV = 0.09 / (0.09 + 0.18) = 1/3; NPV = 0.72 / (0.72 + 0.01) = 72/73
    ppv, npv = m.predictive_values(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(1 / 3)
    assert npv == pytest.approx(72 / 73)
    with pytest.raises(ValueError, match="prevalence"):
        m.predictive_values(0.9, 0.8, 1.5)


def test_roc_auc_counts_correctly_ordered_pairs():
    # of the 16 (sick, well) pairs only (0.6, 0.7), (0.3, 0.7) and (0.3, 0.4) are misordered
    assert m.roc_auc(Y, P) == pytest.approx(13 / 16)
    assert m.roc_auc(Y, P) == pytest.approx(roc_auc_score(Y, P))
    # a tie counts half
    assert m.roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert math.isnan(m.roc_auc([1, 1], [0.2, 0.3]))


def test_pr_auc_is_average_precision():
    # ranked: 0.9 s, 0.8 s, 0.7 w, 0.6 s, 0.4 w, 0.3 s  -> precision at each sick hit:
    # 1/1, 2/2, 3/4, 4/6; each adds recall 1/4
    expected = (1 + 1 + 3 / 4 + 4 / 6) / 4
    assert m.pr_auc(Y, P) == pytest.approx(expected)
    assert m.pr_auc(Y, P) == pytest.approx(average_precision_score(Y, P))


def test_brier_score_is_the_mean_squared_error_of_the_probability():
    assert m.brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    assert m.brier([1, 0], [1.0, 0.0]) == 0.0


def test_reliability_bins_and_calibration_error():
    y = [0, 1, 0, 1]
    p = [0.1, 0.1, 0.9, 0.9]  # two bins, each predicted 0.1 / 0.9, each observed 0.5
    table = m.reliability(y, p, bins=10)
    assert [(row["count"], row["observed_rate"]) for row in table] == [(2, 0.5), (2, 0.5)]
    assert m.expected_calibration_error(y, p) == pytest.approx(0.4)


def test_youden_threshold_maximizes_sensitivity_plus_specificity():
    # at 0.6: sens 3/4, spec 3/4 (J 0.5); at 0.8: sens 2/4, spec 1 (J 0.5); at 0.3: 1, 2/4 (0.5)
    # every J maximum is 0.5; the lowest, most sensitive threshold wins the tie
    assert m.youden_threshold(Y, P) == 0.3
    assert m.youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.8


def test_threshold_for_sensitivity_is_the_highest_reaching_it():
    assert m.threshold_for_sensitivity(Y, P, 0.75) == 0.6
    assert m.threshold_for_sensitivity(Y, P, 1.0) == 0.3
    assert m.threshold_for_sensitivity(Y, P, 0.25) == 0.9


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    low, high = m.bootstrap_ci(y, p, m.roc_auc, resamples=300, seed=3)
    assert low < m.roc_auc(y, p) < high
    assert (low, high) == m.bootstrap_ci(y, p, m.roc_auc, resamples=300, seed=3)
    assert all(math.isnan(v) for v in m.bootstrap_ci([1, 1], [0.1, 0.2], m.roc_auc))


def test_mean_and_sample_sd():
    assert m.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert m.mean_sd([0.7]) == (0.7, 0.0)


def test_split_conformal_quantile_and_sets():
    # calibration scores 1 - p(true): 0.1 0.2 0.3 0.4; n=4, alpha=0.2 -> rank ceil(5*0.8)=4 -> 0.4
    q = m.conformal_quantile([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.4], alpha=0.2)
    assert q == pytest.approx(0.4)
    # p=0.95: only label 1 (score 0.05); p=0.5: both (0.5 > 0.4: neither!); p=0.35: only 0
    assert m.prediction_sets([0.95, 0.5, 0.35], 0.4) == [(1,), (), (0,)]
    assert m.prediction_sets([0.5], 0.6) == [(0, 1)]
    assert m.coverage([1, 1, 0], [(1,), (), (0,)]) == pytest.approx(2 / 3)
    # too few calibration rows for the level: every set is full
    assert m.conformal_quantile([1, 0], [0.9, 0.1], alpha=0.1) == math.inf


def test_labels_must_be_binary_and_aligned():
    with pytest.raises(ValueError, match="0 or 1"):
        m.roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="one length"):
        m.brier([1, 0, 1], [0.1, 0.2])
