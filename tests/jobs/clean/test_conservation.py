"""Property: no cleaning step loses, invents or duplicates a row, on generated observation tables.

- terminology, units, ranges and their chain (standardize): every input row comes out exactly once,
  either good or quarantined (in = out + quarantined, and the same observation keys);
- imputation: rows in = rows out in the same order, observed cells and other columns untouched,
  a cell flagged exactly when it was filled, and the fractions are the flagged share.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake.jobs.clean import ranges, standardize, terminology, units
from medlake.jobs.clean.config import VITALS_IMPUTATION, Imputation
from medlake.jobs.clean.impute import Imputed, impute
from medlake.quarantine import Split
from medlake.registry import SILVER_OBSERVATIONS
from medlake.sample.vocab import LOCAL_LAB

LOINC = "http://loinc.org"
CONCEPT_MAP = terminology.read_concept_maps(terminology.SHIPPED_MAPS)
T0 = datetime(2024, 1, 1, tzinfo=UTC)

_CODES = st.sampled_from(
    [
        (LOINC, "8867-4"),  # heart rate
        (LOINC, "8310-5"),  # body temperature
        (LOINC, "2339-0"),  # glucose
        (LOINC, "29463-7"),  # body weight
        (LOINC, "8867-5"),  # bad check digit
        (LOCAL_LAB, "GLU"),  # mapped by the shipped concept map
        (LOCAL_LAB, "NOPE"),  # unmappable
        (None, None),
    ]
)
_UNITS = st.one_of(
    st.sampled_from(["/min", "Cel", "[degF]", "mg/dL", "mmol/L", "kg", "[lb_av]", "foo"]),
    st.none(),
)
_VALUES = st.one_of(
    st.none(),
    st.floats(min_value=-50, max_value=500, allow_nan=False),
    st.sampled_from([float("nan"), float("inf")]),
)


@st.composite
def observation_tables(draw: st.DrawFn) -> pa.Table:
    """Silver observation rows of a few people over a few hours, many values missing."""
    rows: list[dict[str, Any]] = []
    for i in range(draw(st.integers(min_value=0, max_value=30))):
        system, code = draw(_CODES)
        minutes = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=600)))
        rows.append(
            {
                "observation_key": f"o{i}",
                "person_key": draw(st.sampled_from(["p1", "p2", "p3"])),
                "code_system": system,
                "code": code,
                "value_num": draw(_VALUES),
                "value_unit": draw(_UNITS),
                "effective_at": None if minutes is None else T0 + timedelta(minutes=minutes),
                "_record_hash": f"h{i}",
                "_source_kind": "fhir",
                "_run_id": "run",
            }
        )
    return pa.Table.from_pylist(rows, schema=SILVER_OBSERVATIONS.schema)


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _keys(table: pa.Table) -> Counter[str]:
    return Counter(table.column("observation_key").to_pylist())


def _each_row_once(rows: pa.Table, split: Split) -> None:
    assert split.good.num_rows + split.quarantined.num_rows == rows.num_rows
    out = _keys(split.good) + Counter(split.quarantined.column("record_id").to_pylist())
    assert out == _keys(rows)


@SETTINGS
@given(observation_tables())
def test_standardize_steps_keep_every_row_once(rows: pa.Table) -> None:
    rows = standardize.with_observation_fields(rows)
    steps = {
        "terminology": lambda r: terminology.map_observation_codes(r, concept_map=CONCEPT_MAP),
        "units": units.normalize_units,
        "ranges": ranges.check_plausibility,
        "standardize": lambda r: standardize.standardize_observations(r, concept_map=CONCEPT_MAP),
    }
    for step in steps.values():
        _each_row_once(rows, step(rows))


def _same(before: Any, after: Any) -> bool:
    """Equal, NaN equal to NaN."""
    both_nan = isinstance(before, float) and isinstance(after, float)
    return bool(before == after or (both_nan and math.isnan(before) and math.isnan(after)))


def _imputation_conserves(rows: pa.Table, result: Imputed, planned: list[str]) -> None:
    out = result.table
    assert out.num_rows == rows.num_rows
    assert out.column("observation_key") == rows.column("observation_key")  # same rows, same order
    for name in rows.column_names:
        if name not in planned:
            before, after = rows.column(name).to_pylist(), out.column(name).to_pylist()
            assert all(_same(b, a) for b, a in zip(before, after, strict=True)), name
    flagged = out.column("_imputed").to_pylist()
    for column in planned:
        before, after = rows.column(column).to_pylist(), out.column(column).to_pylist()
        filled = [f"{column}:" in " ".join(f) for f in flagged]
        for was, now, flag in zip(before, after, filled, strict=True):
            if was is not None:  # observed: untouched (NaN stays NaN)
                assert not flag and _same(was, now)
            else:  # missing: flagged exactly when filled
                assert flag == (now is not None)
        share = sum(filled) / rows.num_rows if rows.num_rows else 0.0
        assert result.fractions[column] == share


@SETTINGS
@given(observation_tables(), st.floats(min_value=0.0, max_value=1.0))
def test_imputation_keeps_rows_and_observed_values(rows: pa.Table, max_missing: float) -> None:
    plans: list[dict[str, Imputation]] = [
        dict(VITALS_IMPUTATION),
        {"value_num": Imputation("median", cohort=("person_key", "code"), max_missing=max_missing)},
        {
            "value_unit": Imputation("mode", cohort=("code",), max_missing=max_missing),
            "value_num": Imputation(
                "locf", series=("person_key",), max_age=None, max_missing=max_missing
            ),
        },
    ]
    for plan in plans:
        _imputation_conserves(rows, impute(rows, plan), list(plan))


@SETTINGS
@given(observation_tables())
def test_standardized_then_imputed_keeps_every_row_once(rows: pa.Table) -> None:
    split = standardize.standardize_observations(rows, concept_map=CONCEPT_MAP)
    imputed = impute(split.good, VITALS_IMPUTATION)
    _imputation_conserves(split.good, imputed, ["value_num"])
    _each_row_once(rows, Split(imputed.table, split.quarantined))


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(0, 300, allow_nan=False)),
            st.one_of(st.none(), st.floats(0, 300, allow_nan=False)),
        ),
        max_size=25,
    ),
    st.integers(min_value=1, max_value=3),
)
def test_multiple_imputation_keeps_rows_and_observed_values(
    pairs: list[tuple[float | None, float | None]], draws: int
) -> None:
    rows = pa.table(
        {
            "observation_key": [f"o{i}" for i in range(len(pairs))],
            "a": pa.array([a for a, _ in pairs], pa.float64()),
            "b": pa.array([b for _, b in pairs], pa.float64()),
        }
    )
    plan = {"a": Imputation("iterative", max_missing=1.0), "b": Imputation("iterative")}
    _imputation_conserves(rows, impute(rows, plan, draws=draws), list(plan))
