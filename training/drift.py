"""What changed between two versions of a dataset: rows, columns, feature distributions, label prevalence.

    report = diff(lake, "patient_features@1", "patient_features@2")

Distribution shift is the population stability index (PSI) of each feature shared by both
versions, version A as the reference: ``sum((b - a) * ln(b / a))`` over bins, where ``a`` and
``b`` are the shares of A's and B's rows in a bin. Numeric features are binned at the deciles
of A; categorical and boolean features by category. Missing values are a bin of their own, so
a feature that starts arriving empty shows up. Shares are floored at 1e-4 so an empty bin
does not make the index infinite. Usual reading: below 0.1 stable, 0.1 to 0.25 moderate
shift, above 0.25 major shift (check before retraining).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from medlake.lake import Lake
from medlake.training import datasets
from medlake.training.train import TASKS

Level = Literal["stable", "moderate", "major"]

SHARE_FLOOR = 1e-4
MAX_CATEGORIES = 50
MISSING = "<missing>"


@dataclass(frozen=True)
class FeatureDrift:
    """The shift of one feature from version A to version B."""

    column: str
    kind: Literal["numeric", "categorical"]
    psi: float
    level: Level
    missing_a: float
    missing_b: float
    mean_a: float | None = None
    mean_b: float | None = None


@dataclass(frozen=True)
class DriftReport:
    """Two versions of a dataset side by side."""

    a: str
    b: str
    rows_a: int
    rows_b: int
    added_columns: tuple[str, ...]
    removed_columns: tuple[str, ...]
    type_changes: tuple[tuple[str, str, str], ...]
    features: tuple[FeatureDrift, ...]
    label: str | None = None
    prevalence_a: float | None = None
    prevalence_b: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def shifted(self) -> tuple[FeatureDrift, ...]:
        """Features whose shift is moderate or major, largest first."""
        return tuple(f for f in self.features if f.level != "stable")

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("features", "type_changes")},
            "type_changes": [
                {"column": c, "type_a": ta, "type_b": tb} for c, ta, tb in self.type_changes
            ],
            "features": [asdict(f) for f in self.features],
        }


def diff(lake: Lake, a: str, b: str, *, role: str = "ml", label: str | None = None) -> DriftReport:
    """Compare dataset versions ``a`` and ``b`` (``name@version``), both pulled and hash-checked as ``role``.

    ``label`` defaults to the first known training label (``has_diabetes``, ...) both versions hold.
    """
    ma, mb = datasets.manifest(lake, a), datasets.manifest(lake, b)
    ta = datasets.pull_table(lake, ma.ref, role=role)
    tb = datasets.pull_table(lake, mb.ref, role=role)
    return compare(ta, tb, a=ma.ref, b=mb.ref, key=(*ma.key, *mb.key), label=label)


def compare(
    ta: pa.Table,
    tb: pa.Table,
    *,
    a: str = "A",
    b: str = "B",
    key: Sequence[str] = (),
    label: str | None = None,
) -> DriftReport:
    """The drift report of two Arrow tables, ``ta`` the reference."""
    cols_a, cols_b = ta.column_names, tb.column_names
    shared = [c for c in cols_a if c in cols_b]
    if label is None:
        label = next((t for t in TASKS if t in cols_a and t in cols_b), None)
    type_changes = tuple(
        (c, str(ta.schema.field(c).type), str(tb.schema.field(c).type))
        for c in shared
        if not _same_kind(ta.schema.field(c).type, tb.schema.field(c).type)
    )
    features: list[FeatureDrift] = []
    skipped: dict[str, str] = {}
    for column in shared:
        if column in key:
            skipped[column] = "row key"
            continue
        if column.startswith("_"):
            skipped[column] = "lineage"
            continue
        va, vb = ta.column(column), tb.column(column)
        if _is_numeric(va.type) and _is_numeric(vb.type):
            xa, xb = _floats(va), _floats(vb)
            value = psi_numeric(xa, xb)
            features.append(
                FeatureDrift(
                    column=column,
                    kind="numeric",
                    psi=value,
                    level=level(value),
                    missing_a=_missing_share(xa),
                    missing_b=_missing_share(xb),
                    mean_a=_nanmean(xa),
                    mean_b=_nanmean(xb),
                )
            )
            continue
        ca, cb = _labels(va), _labels(vb)
        if len(set(ca) | set(cb)) > MAX_CATEGORIES:
            skipped[column] = (
                f"more than {MAX_CATEGORIES} distinct values (identifier or free text)"
            )
            continue
        value = psi_categorical(ca, cb)
        features.append(
            FeatureDrift(
                column=column,
                kind="categorical",
                psi=value,
                level=level(value),
                missing_a=_share(ca, MISSING),
                missing_b=_share(cb, MISSING),
            )
        )
    features.sort(key=lambda f: (-f.psi, f.column))
    return DriftReport(
        a=a,
        b=b,
        rows_a=ta.num_rows,
        rows_b=tb.num_rows,
        added_columns=tuple(c for c in cols_b if c not in cols_a),
        removed_columns=tuple(c for c in cols_a if c not in cols_b),
        type_changes=type_changes,
        features=tuple(features),
        label=label,
        prevalence_a=_prevalence(ta, label),
        prevalence_b=_prevalence(tb, label),
        skipped=skipped,
    )


def psi_numeric(a: npt.ArrayLike, b: npt.ArrayLike, *, bins: int = 10) -> float:
    """PSI of numeric values, binned at the quantiles of ``a`` (deciles by default); NaN is a bin."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    present = xa[~np.isnan(xa)]
    if len(present):
        inner = np.quantile(present, np.arange(1, bins) / bins)
        edges = np.unique(inner)
    else:
        edges = np.array([])
    return _psi(_binned_shares(xa, edges), _binned_shares(xb, edges))


def psi_categorical(a: Sequence[Any], b: Sequence[Any]) -> float:
    """PSI of category shares over the categories either side holds."""
    count_a, count_b = Counter(a), Counter(b)
    categories = sorted(set(count_a) | set(count_b), key=str)
    total_a, total_b = max(len(a), 1), max(len(b), 1)
    return _psi(
        np.array([count_a[c] / total_a for c in categories]),
        np.array([count_b[c] / total_b for c in categories]),
    )


def level(psi: float) -> Level:
    """The usual reading of a PSI: stable below 0.1, moderate up to 0.25, major above."""
    if psi < 0.1:
        return "stable"
    return "moderate" if psi <= 0.25 else "major"


def _psi(shares_a: npt.NDArray[np.float64], shares_b: npt.NDArray[np.float64]) -> float:
    pa_, pb_ = np.maximum(shares_a, SHARE_FLOOR), np.maximum(shares_b, SHARE_FLOOR)
    return float(np.sum((pb_ - pa_) * np.log(pb_ / pa_)))


def _binned_shares(
    x: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Shares of ``x`` in (-inf, e1], (e1, e2], ..., (ek, inf) and, last, the missing values."""
    if len(x) == 0:
        return np.zeros(len(edges) + 2)
    missing = np.isnan(x)
    which = np.searchsorted(edges, x[~missing], side="left")
    counts = np.bincount(which, minlength=len(edges) + 1).astype(float)
    return np.append(counts, missing.sum()) / len(x)


def _is_numeric(type_: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_)
    )


def _same_kind(ta: pa.DataType, tb: pa.DataType) -> bool:
    """Types that hold the same values (string vs large_string, int32 vs int64) are not a change."""
    if ta == tb:
        return True
    kinds = (
        lambda t: (
            pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
        ),
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
    )
    return any(kind(ta) and kind(tb) for kind in kinds)


def _floats(column: pa.ChunkedArray) -> npt.NDArray[np.float64]:
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=float)


def _labels(column: pa.ChunkedArray) -> list[str]:
    return [MISSING if v is None else str(v) for v in column.to_pylist()]


def _missing_share(x: npt.NDArray[np.float64]) -> float:
    return float(np.isnan(x).mean()) if len(x) else 0.0


def _share(values: Sequence[str], value: str) -> float:
    return sum(1 for v in values if v == value) / len(values) if values else 0.0


def _nanmean(x: npt.NDArray[np.float64]) -> float | None:
    present = x[~np.isnan(x)]
    return float(present.mean()) if len(present) else None


def _prevalence(table: pa.Table, label: str | None) -> float | None:
    if label is None or label not in table.column_names:
        return None
    values = [v for v in table.column(label).to_pylist() if v is not None]
    return sum(bool(v) for v in values) / len(values) if values else math.nan
