"""Clinical metrics of a binary classifier, as pure functions over labels and probabilities.

``y`` holds the true labels (1 = has the condition), ``p`` the predicted probability of 1.
A prediction is positive when ``p >= threshold``. Nothing here knows of MLflow or the lake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

Array = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Confusion:
    """Counts of a threshold's decisions: true/false positives and negatives."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        """Share of people with the condition the model flags (recall, true positive rate)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """Share of people without the condition the model leaves unflagged."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        """Share of flagged people who have the condition, at this sample's prevalence."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        """Share of unflagged people who do not have it, at this sample's prevalence."""
        return _ratio(self.tn, self.tn + self.fn)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def confusion_at(y: Array, p: Array, threshold: float) -> Confusion:
    """The confusion counts when ``p >= threshold`` is called positive."""
    truth, prob = _arrays(y, p)
    flagged = prob >= threshold
    return Confusion(
        tp=int(np.sum(flagged & (truth == 1))),
        fp=int(np.sum(flagged & (truth == 0))),
        tn=int(np.sum(~flagged & (truth == 0))),
        fn=int(np.sum(~flagged & (truth == 1))),
    )


def predictive_values(
    sensitivity: float, specificity: float, prevalence: float
) -> tuple[float, float]:
    """(PPV, NPV) at a given prevalence, by Bayes' rule from sensitivity and specificity."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], not {prevalence}")
    true_pos = sensitivity * prevalence
    false_pos = (1.0 - specificity) * (1.0 - prevalence)
    true_neg = specificity * (1.0 - prevalence)
    false_neg = (1.0 - sensitivity) * prevalence
    return _ratio(true_pos, true_pos + false_pos), _ratio(true_neg, true_neg + false_neg)


def roc_auc(y: Array, p: Array) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties half)."""
    truth, prob = _arrays(y, p)
    positives, negatives = int(truth.sum()), int((1 - truth).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(prob)
    rank_sum = float(ranks[truth == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def pr_auc(y: Array, p: Array) -> float:
    """Area under the precision-recall curve as average precision: sum of (R_k - R_k-1) * P_k."""
    truth, prob = _arrays(y, p)
    positives = int(truth.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-prob, kind="mergesort")
    prob, truth = prob[order], truth[order]
    # one point per distinct score: the last index of each run of equal scores
    ends = np.r_[np.flatnonzero(np.diff(prob)), len(prob) - 1]
    tp = np.cumsum(truth)[ends]
    flagged = ends + 1
    precision = tp / flagged
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y: Array, p: Array) -> float:
    """Mean squared difference between the probability and what happened (0 is perfect)."""
    truth, prob = _arrays(y, p)
    return float(np.mean((prob - truth) ** 2))


def reliability(y: Array, p: Array, *, bins: int = 10) -> list[dict[str, float]]:
    """Calibration table over equal-width probability bins: count, mean predicted, observed rate."""
    truth, prob = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=True), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            table.append(
                {
                    "bin_low": float(edges[b]),
                    "bin_high": float(edges[b + 1]),
                    "count": count,
                    "mean_predicted": float(prob[inside].mean()),
                    "observed_rate": float(truth[inside].mean()),
                }
            )
    return table


def expected_calibration_error(y: Array, p: Array, *, bins: int = 10) -> float:
    """Count-weighted mean |observed rate - mean predicted| over the reliability bins."""
    table = reliability(y, p, bins=bins)
    total = sum(row["count"] for row in table)
    return (
        sum(row["count"] * abs(row["observed_rate"] - row["mean_predicted"]) for row in table)
        / total
    )


def youden_threshold(y: Array, p: Array) -> float:
    """The score maximizing Youden's J = sensitivity + specificity - 1 (ties: the lower score)."""
    thresholds, sens, spec = _operating_points(y, p)
    j = sens + spec - 1.0
    # thresholds descend: the last maximum is the lowest, most sensitive score
    return float(thresholds[len(j) - 1 - int(np.argmax(j[::-1]))])


def threshold_for_sensitivity(y: Array, p: Array, target: float) -> float:
    """The highest score whose sensitivity is at least ``target``."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], not {target}")
    thresholds, sens, _ = _operating_points(y, p)
    return float(thresholds[int(np.argmax(sens >= target - 1e-12))])


def _operating_points(y: Array, p: Array) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Each distinct score as a threshold (descending) with its sensitivity and specificity."""
    truth, prob = _arrays(y, p)
    order = np.argsort(-prob, kind="mergesort")
    prob, truth = prob[order], truth[order]
    ends = np.r_[np.flatnonzero(np.diff(prob)), len(prob) - 1]
    tp = np.cumsum(truth)[ends]
    fp = (ends + 1) - tp
    positives, negatives = truth.sum(), len(truth) - truth.sum()
    sens = tp / positives if positives else np.full(len(ends), np.nan)
    spec = 1.0 - fp / negatives if negatives else np.full(len(ends), np.nan)
    return prob[ends], sens, spec


def bootstrap_ci(
    y: Array,
    p: Array,
    metric: Callable[[FloatArray, FloatArray], float],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric``, resampling positives and negatives separately.

    Stratified resampling keeps both classes in every resample (AUC needs them) and the
    sample's prevalence fixed.
    """
    truth, prob = _arrays(y, p)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    if len(pos) == 0 or len(neg) == 0:
        return math.nan, math.nan
    values = np.empty(resamples)
    for i in range(resamples):
        take = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        values[i] = metric(truth[take], prob[take])
    values = values[~np.isnan(values)]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    data = np.asarray(values, dtype=float)
    return float(data.mean()), float(data.std(ddof=1)) if len(data) > 1 else 0.0


def conformal_quantile(y_calibration: Array, p_calibration: Array, *, alpha: float) -> float:
    """Split-conformal cut-off q: the ceil((n+1)(1-alpha))-th smallest score 1 - p(true label).

    A prediction set then holds every label whose score is <= q, and covers the true label
    with probability >= 1 - alpha for exchangeable rows. Infinity when n is too small.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    truth, prob = _arrays(y_calibration, p_calibration)
    scores = np.sort(np.where(truth == 1, 1.0 - prob, prob))
    rank = math.ceil((len(scores) + 1) * (1.0 - alpha))
    return math.inf if rank > len(scores) else float(scores[rank - 1])


def prediction_sets(p: Array, q: float) -> list[tuple[int, ...]]:
    """Per row, the labels (0, 1) whose conformal score 1 - p(label) is <= q."""
    prob = np.asarray(p, dtype=float)
    return [tuple(label for label, score in ((0, pr), (1, 1.0 - pr)) if score <= q) for pr in prob]


def coverage(y: Array, sets: Sequence[tuple[int, ...]]) -> float:
    """Share of rows whose prediction set holds the true label."""
    truth = np.asarray(y, dtype=int)
    return float(np.mean([int(t) in s for t, s in zip(truth, sets, strict=True)]))


def _arrays(y: Array, p: Array) -> tuple[FloatArray, FloatArray]:
    truth = np.asarray(y, dtype=float)
    prob = np.asarray(p, dtype=float)
    if truth.shape != prob.shape or truth.ndim != 1:
        raise ValueError(
            f"labels and probabilities must be 1-d of one length: {truth.shape} vs {prob.shape}"
        )
    if not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return truth, prob


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray(sums / counts, dtype=np.float64)[inverse]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
