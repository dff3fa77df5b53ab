"""Imputation: missing values filled in by a stated method, every filled cell flagged.

What fills which column is configured in one place (:mod:`medlake.jobs.clean.config`:
``ML_FEATURE_IMPUTATION`` for the ML mart, ``VITALS_IMPUTATION`` for silver vitals series); the
functions here only apply a plan. Rows are never added or dropped and observed values are never
changed: a cell is filled only when it is null.

What a consumer finds on the output:

- ``_imputed`` (list of strings): ``'<column>:<method>'`` for each cell of the row that was filled,
  empty when none was, so imputed rows can be filtered out or weighted.
- ``_<column>_imputed_var`` (float) for columns filled by multiple imputation: the cell holds the
  mean of ``draws`` imputations (IterativeImputer with posterior sampling, one seed each) and
  this column the between-imputation variance, the uncertainty the imputation adds (Rubin's B);
  null on observed cells.
- :attr:`Imputed.fractions`: per column, the fraction of rows filled, for the ledger.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medlake.jobs.clean.config import (
    IMPUTATION_DRAWS,
    IMPUTATION_SEED,
    IMPUTED_FIELDS,
    Imputation,
    distinct,
)
from medlake.ledger import Entry

IMPUTED = IMPUTED_FIELDS[0].name


@dataclass(frozen=True)
class Imputed:
    """The table with its missing cells filled and flagged, and how much of each column was filled."""

    table: pa.Table
    #: column -> fraction of rows whose cell was imputed (0.0 for columns left as they were)
    fractions: Mapping[str, float]

    def ledger_entry(self, table_name: str) -> Entry:
        """The ``impute`` ledger entry: every row in is a row out; details = the fractions."""
        rows = self.table.num_rows
        details = json.dumps({c: round(f, 6) for c, f in sorted(self.fractions.items())})
        return Entry("impute", table_name, records_in=rows, records_out=rows, details=details)


def variance_column(column: str) -> str:
    """The column holding the between-imputation variance of a multiply imputed column."""
    return f"_{column}_imputed_var"


def impute(
    table: pa.Table,
    plan: Mapping[str, Imputation],
    *,
    draws: int = IMPUTATION_DRAWS,
    seed: int = IMPUTATION_SEED,
) -> Imputed:
    """Fill the missing cells of each planned column by its method; flag each filled cell.

    Every method reads the observed values only (never another method's fills), so the result
    does not depend on the order of the plan.
    """
    needed = {c for column, imp in plan.items() for c in (column, *_inputs(imp))}
    missing_columns = sorted(needed - set(table.column_names))
    if missing_columns:
        raise KeyError(
            f"cannot impute: the table has no column {', '.join(missing_columns)} "
            f"(columns: {', '.join(table.column_names)})"
        )
    if draws < 1:
        raise ValueError(f"multiple imputation needs at least one draw, not {draws}")

    rows = table.num_rows
    fills: dict[str, pa.ChunkedArray | pa.Array] = {}
    flags: list[tuple[str, np.ndarray]] = []  # ('<column>:<method>', cells it filled)

    # columns observed often enough inform each other; those with missing cells get filled
    iterative = [
        c for c, imp in plan.items() if imp.method == "iterative" and _usable(table, c, imp)
    ]
    means, variances = _multiple_imputation(table, iterative, draws=draws, seed=seed)
    for column in means:
        filled = ~np.isnan(means[column])
        fills[column] = _put(table.column(column), filled, pa.array(means[column]))
        flags.append((f"{column}:iterative", filled))

    for column, imp in plan.items():
        if imp.method in ("none", "iterative") or not _eligible(table, column, imp):
            continue
        original = table.column(column)
        values: pa.ChunkedArray | pa.Array = original
        step: Imputation | None = imp
        while step is not None:
            filled, donors = _fill(table, column, step)
            filled &= _missing(values)
            values = _put(values, filled, donors)
            flags.append((f"{column}:{step.method}", filled))
            step = step.then
        fills[column] = values

    counts = {column: 0 for column in plan}
    for label, filled in flags:
        counts[label.split(":", 1)[0]] += int(filled.sum())
    fractions = {column: count / rows if rows else 0.0 for column, count in counts.items()}

    out = table
    for column, values in fills.items():
        index = out.schema.get_field_index(column)
        out = out.set_column(index, out.schema.field(index), values)
    for column, imp in plan.items():
        if imp.method == "iterative":
            var = variances.get(column, np.full(rows, np.nan))
            field = pa.field(variance_column(column), pa.float64())
            values = pa.array(var, mask=np.isnan(var), type=pa.float64())
            if field.name in out.column_names:
                out = out.set_column(out.schema.get_field_index(field.name), field, values)
            else:
                out = out.append_column(field, values)
    return Imputed(_with_flags(out, flags), fractions)


def _inputs(imp: Imputation) -> set[str]:
    """The columns a method reads besides the one it fills."""
    used: set[str] = set()
    step: Imputation | None = imp
    while step is not None:
        if step.method in ("median", "mode"):
            used |= set(step.cohort)
        elif step.method == "locf":
            used |= {*step.series, step.order_by}
        step = step.then
    return used


def _missing(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)


def _usable(table: pa.Table, column: str, imp: Imputation) -> bool:
    """Whether the column is observed often enough to impute or to inform another's imputation:
    missing in at most ``max_missing`` of the rows, and observed at least once."""
    nulls: int = table.column(column).null_count
    return bool(nulls <= imp.max_missing * table.num_rows and nulls < table.num_rows)


def _eligible(table: pa.Table, column: str, imp: Imputation) -> bool:
    """Whether the column is filled at all: usable, and something is missing."""
    return table.column(column).null_count > 0 and _usable(table, column, imp)


def _put(
    values: pa.ChunkedArray | pa.Array, filled: np.ndarray, donors: pa.ChunkedArray | pa.Array
) -> pa.ChunkedArray | pa.Array:
    """``values`` with the ``filled`` cells taken from ``donors`` (cast to the column's type)."""
    if not filled.any():
        return values
    if pa.types.is_integer(values.type) and pa.types.is_floating(donors.type):
        donors = pc.round(donors, ndigits=0, round_mode="half_to_even")
    donors = donors.cast(values.type)
    if isinstance(donors, pa.ChunkedArray):
        donors = donors.combine_chunks()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.if_else(pa.array(filled), donors, values)


def _fill(table: pa.Table, column: str, imp: Imputation) -> tuple[np.ndarray, pa.Array]:
    """(cells the method can fill, one donor value per row) for one method on one column."""
    if imp.method == "median":
        return _cohort_median(table, column, imp.cohort)
    if imp.method == "mode":
        return _cohort_mode(table, column, imp.cohort)
    if imp.method == "locf":
        return _locf(table, column, imp)
    raise ValueError(f"imputation method {imp.method!r} cannot be chained after another method")


def _cohorts(table: pa.Table, cohort: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """Each row's cohort number (-1 when a cohort column is null: the row has no cohort)."""
    if not cohort:
        return np.zeros(table.num_rows, dtype=np.int64), 1
    combos, position = distinct(table, cohort)
    groups = np.asarray(position.to_numpy(zero_copy_only=False), dtype=np.int64)
    unknown = np.zeros(table.num_rows, dtype=bool)
    for name in cohort:
        unknown |= _missing(table.column(name))
    groups[unknown] = -1
    return groups, len(combos)


def _numbers(values: pa.ChunkedArray | pa.Array, *, column: str) -> np.ndarray:
    """The values as floats, NaN where null (numeric columns only)."""
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise TypeError(f"cannot take the median of {column}: type {values.type} is not numeric")
    return np.asarray(
        pc.fill_null(values.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False),
        dtype=np.float64,
    )


def _cohort_median(
    table: pa.Table, column: str, cohort: tuple[str, ...]
) -> tuple[np.ndarray, pa.Array]:
    """The median of the row's cohort; of the whole column when the cohort has no value."""
    values = _numbers(table.column(column), column=column)
    groups, count = _cohorts(table, cohort)
    known = ~np.isnan(values)
    overall = float(np.median(values[known])) if known.any() else np.nan
    medians = _group_medians(groups[known & (groups >= 0)], values[known & (groups >= 0)], count)
    per_row = np.where(groups >= 0, medians[np.maximum(groups, 0)], np.nan)
    per_row = np.where(np.isnan(per_row), overall, per_row)
    return ~np.isnan(per_row), pa.array(per_row, mask=np.isnan(per_row))


def _group_medians(groups: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """The exact median of the values of each group 0..count-1 (NaN for a group without values)."""
    order = np.lexsort((values, groups))
    groups, values = groups[order], values[order]
    sizes = np.bincount(groups, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    medians = np.full(count, np.nan)
    has = sizes > 0
    low = starts[has] + (sizes[has] - 1) // 2
    high = starts[has] + sizes[has] // 2
    medians[has] = (values[low] + values[high]) / 2
    return medians


def _cohort_mode(
    table: pa.Table, column: str, cohort: tuple[str, ...]
) -> tuple[np.ndarray, pa.Array]:
    """The most frequent value of the row's cohort (the smallest on a tie); of the whole column
    when the cohort has no value."""
    values = table.column(column).combine_chunks()
    encoded = pc.dictionary_encode(values)
    dictionary = encoded.dictionary
    rank_of = np.empty(len(dictionary), dtype=np.int64)  # dictionary code -> rank by value
    rank_of[np.asarray(pc.sort_indices(dictionary).to_numpy())] = np.arange(len(dictionary))
    by_rank = pc.take(dictionary, pc.sort_indices(dictionary))
    known = ~_missing(values)
    codes = np.asarray(pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False))
    ranks = rank_of[codes] if len(dictionary) else codes
    groups, count = _cohorts(table, cohort)

    def modes(groups_: np.ndarray, ranks_: np.ndarray, count_: int) -> np.ndarray:
        best = np.full(count_, -1, dtype=np.int64)
        if not len(ranks_):
            return best
        pairs, counts = np.unique(np.stack([groups_, ranks_]), axis=1, return_counts=True)
        order = np.lexsort((pairs[1], -counts, pairs[0]))  # per group: most frequent, smallest
        first = np.concatenate([[True], np.diff(pairs[0][order]) != 0])
        best[pairs[0][order][first]] = pairs[1][order][first]
        return best

    in_cohort = known & (groups >= 0)
    per_group = modes(groups[in_cohort], ranks[in_cohort], count)
    overall = modes(np.zeros(known.sum(), dtype=np.int64), ranks[known], 1)[0]
    per_row = np.where(groups >= 0, per_group[np.maximum(groups, 0)], -1)
    per_row = np.where(per_row < 0, overall, per_row)
    filled = per_row >= 0
    donors = pc.take(by_rank, pa.array(np.maximum(per_row, 0), mask=~filled))
    return filled, donors


def _locf(table: pa.Table, column: str, imp: Imputation) -> tuple[np.ndarray, pa.Array]:
    """The last earlier value of the same series, when it is at most ``max_age`` old.

    Rows without a time cannot be placed in their series: they neither give nor get a value.
    """
    rows = table.num_rows
    times_col = table.column(imp.order_by)
    if not (pa.types.is_timestamp(times_col.type) or pa.types.is_date(times_col.type)):
        raise TypeError(
            f"cannot carry {column} forward: order_by column {imp.order_by} is "
            f"{times_col.type}, not a timestamp or date"
        )
    unit = times_col.type.unit if pa.types.is_timestamp(times_col.type) else "s"
    if pa.types.is_date(times_col.type):
        times_col = times_col.cast(pa.timestamp("s"))
    timed = ~_missing(times_col)
    times = np.asarray(
        pc.fill_null(times_col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    _, series = distinct(table, imp.series)
    series_of = np.asarray(series.to_numpy(zero_copy_only=False), dtype=np.int64)

    rows_in_time = np.flatnonzero(timed)
    order = rows_in_time[np.lexsort((rows_in_time, times[rows_in_time], series_of[rows_in_time]))]
    observed = ~_missing(table.column(column))[order]
    position = np.arange(len(order))
    last = np.maximum.accumulate(np.where(observed, position, -1)) if len(order) else position
    starts = np.concatenate([[True], np.diff(series_of[order]) != 0]) if len(order) else observed
    series_start = np.maximum.accumulate(np.where(starts, position, 0)) if len(order) else position
    can = ~observed & (last >= series_start) & (last >= 0)
    if imp.max_age is not None:
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
        limit = int(imp.max_age.total_seconds() * per_second)
        age = times[order] - times[order[np.maximum(last, 0)]]
        can &= age <= limit

    filled = np.zeros(rows, dtype=bool)
    donor_rows = np.zeros(rows, dtype=np.int64)
    filled[order[can]] = True
    donor_rows[order[can]] = order[last[can]]
    donors = pc.take(table.column(column), pa.array(donor_rows, mask=~filled))
    return filled, donors.combine_chunks() if isinstance(donors, pa.ChunkedArray) else donors


def _multiple_imputation(
    table: pa.Table, columns: list[str], *, draws: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per column: the pooled mean of ``draws`` imputations and their between-imputation variance,
    NaN on observed cells.

    Chained equations (IterativeImputer, Bayesian ridge) over the given columns only, each draw
    sampled from the posterior with its own seed; imputed values are kept within each column's
    observed range, so no feature gets a value no person in the table has. NaN and infinite
    values are left as sent and inform nothing.
    """
    if not columns:
        return {}, {}
    # scikit-learn (and the BLAS of scipy it loads) first: threadpoolctl limits loaded libraries only
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from threadpoolctl import threadpool_limits

    data = np.column_stack([_numbers(table.column(c), column=c) for c in columns])
    missing = np.column_stack([_missing(table.column(c)) for c in columns])
    data[~np.isfinite(data)] = np.nan
    informative = ~np.isnan(data).all(axis=0)
    columns = [c for c, keep in zip(columns, informative, strict=True) if keep]
    data, missing = data[:, informative], missing[:, informative]
    if not missing.any():
        return {}, {}
    low, high = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    # a column with one observed value has nothing to learn: it is filled with that value
    mean = np.broadcast_to(low, data.shape).copy()
    var = np.zeros_like(mean)
    varying = low < high
    if varying.any():
        # one BLAS thread: the regressions are a dozen columns wide, and threads waiting on each
        # other made 5,000 rows take 170 s instead of 9 s on a busy 2-core machine
        with threadpool_limits(limits=1):
            samples = [
                _draw(data[:, varying], low[varying], high[varying], seed + d) for d in range(draws)
            ]
        stacked = np.stack(samples)
        mean[:, varying] = stacked.mean(axis=0)
        var[:, varying] = stacked.var(axis=0, ddof=1) if draws > 1 else 0.0
    means = {c: np.where(missing[:, i], mean[:, i], np.nan) for i, c in enumerate(columns)}
    variances = {c: np.where(missing[:, i], var[:, i], np.nan) for i, c in enumerate(columns)}
    return means, variances


def _draw(data: np.ndarray, low: np.ndarray, high: np.ndarray, seed: int) -> np.ndarray:
    """One imputation of the NaN cells: chained Bayesian ridge regressions, posterior sampled."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.impute import IterativeImputer

    imputer = IterativeImputer(
        sample_posterior=True,
        max_iter=10,
        random_state=seed,
        min_value=low,
        max_value=high,
        keep_empty_features=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result: np.ndarray = imputer.fit_transform(data)
    return result


def _with_flags(table: pa.Table, flags: list[tuple[str, np.ndarray]]) -> pa.Table:
    """The table with ``_imputed``: per row, the '<column>:<method>' of each cell filled."""
    rows = table.num_rows
    labels = pa.array([label for label, _ in flags], type=pa.string())
    matrix = (
        np.column_stack([filled for _, filled in flags]) if flags else np.zeros((rows, 0), bool)
    )
    counts = matrix.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    _, which = np.nonzero(matrix)  # row-major: each row's labels in plan order
    flagged = pa.ListArray.from_arrays(pa.array(offsets), pc.take(labels, pa.array(which)))
    if IMPUTED in table.column_names:  # imputed before (e.g. in silver): keep those flags too
        earlier = table.column(IMPUTED).to_pylist()
        merged = [(e or []) + n for e, n in zip(earlier, flagged.to_pylist(), strict=True)]
        index = table.schema.get_field_index(IMPUTED)
        return table.set_column(index, IMPUTED_FIELDS[0], pa.array(merged, IMPUTED_FIELDS[0].type))
    return table.append_column(IMPUTED_FIELDS[0], flagged.cast(IMPUTED_FIELDS[0].type))
