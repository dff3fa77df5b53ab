"""Imputation: hand-made tables with known answers, the ledger entry it makes, and the ML mart
imputed between dbt and Delta."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from medlake import ledger
from medlake.jobs.clean.config import (
    ML_FEATURE_IMPUTATION,
    VITALS_IMPUTATION,
    Imputation,
)
from medlake.jobs.clean.impute import impute, variance_column
from medlake.lake import Lake
from medlake.registry import LEDGER, spec

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
ANY = 1.0  # max_missing that lets a small hand-made table be imputed however sparse


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def flags(table: pa.Table) -> list[list[str]]:
    return table.column("_imputed").to_pylist()


# -- median and mode by cohort -------------------------------------------------------------------


def people() -> pa.Table:
    return pa.table(
        {
            "sex": ["female", "female", "female", "male", "male", "male", None],
            "age_band": ["40-44", "40-44", "40-44", "40-44", "70-74", "70-74", "40-44"],
            "weight": [60.0, None, 70.0, 90.0, None, None, None],
            "smoker": ["no", None, "yes", "yes", "no", None, None],
        }
    )


def test_median_by_cohort_falls_back_to_the_whole_column() -> None:
    result = impute(
        people(), {"weight": Imputation("median", cohort=("sex", "age_band"), max_missing=ANY)}
    )

    assert result.table.column("weight").to_pylist() == [
        60.0,
        65.0,  # median of the women 40-44: 60 and 70
        70.0,
        90.0,
        70.0,  # no man 70-74 has a weight: the median of all weights (60, 70, 90)
        70.0,
        70.0,  # sex unknown: no cohort, the median of all weights
    ]
    assert flags(result.table) == [
        [],
        ["weight:median"],
        [],
        [],
        ["weight:median"],
        ["weight:median"],
        ["weight:median"],
    ]
    assert result.fractions == {"weight": pytest.approx(4 / 7)}


def test_mode_by_cohort_takes_the_smallest_on_a_tie() -> None:
    result = impute(people(), {"smoker": Imputation("mode", cohort=("sex",), max_missing=ANY)})

    # women: 'no' and 'yes' once each -> 'no'; men: 'yes', 'no' -> 'no'; unknown sex: all
    # values ('no' twice, 'yes' twice) -> 'no'
    assert result.table.column("smoker").to_pylist() == ["no", "no", "yes", "yes", "no", "no", "no"]
    assert flags(result.table) == [
        [],
        ["smoker:mode"],
        [],
        [],
        [],
        ["smoker:mode"],
        ["smoker:mode"],
    ]
    assert result.fractions == {"smoker": pytest.approx(3 / 7)}


def test_median_of_whole_numbers_stays_a_whole_number() -> None:
    table = pa.table({"visits": pa.array([1, 2, None, 3, 4], pa.int64())})
    result = impute(table, {"visits": Imputation("median")})
    assert result.table.column("visits").type == pa.int64()
    assert result.table.column("visits").to_pylist() == [1, 2, 2, 3, 4]  # 2.5 rounds to even


def test_a_mostly_missing_column_is_left_alone() -> None:
    table = pa.table({"x": [1.0, None, None], "y": [1.0, None, 3.0]})
    result = impute(table, {"x": Imputation("median"), "y": Imputation("none")})
    assert result.table.column("x").to_pylist() == [1.0, None, None]  # 2/3 missing > 0.5
    assert result.table.column("y").to_pylist() == [1.0, None, 3.0]
    assert flags(result.table) == [[], [], []]
    assert result.fractions == {"x": 0.0, "y": 0.0}


def test_a_missing_column_is_named() -> None:
    with pytest.raises(KeyError, match="no column sex"):
        impute(pa.table({"weight": [1.0]}), {"weight": Imputation("median", cohort=("sex",))})


# -- last observation carried forward --------------------------------------------------------------


def series(*rows: tuple[str, str, datetime | None, float | None]) -> pa.Table:
    person, code, when, value = zip(*rows, strict=True)
    return pa.table(
        {
            "person_key": list(person),
            "code": list(code),
            "effective_at": pa.array(list(when), pa.timestamp("us", tz="UTC")),
            "value_num": pa.array(list(value), pa.float64()),
        }
    )


LOCF = Imputation(
    "locf", series=("person_key", "code"), max_age=timedelta(hours=4), max_missing=ANY
)


def test_locf_carries_within_one_series_and_not_beyond_max_age() -> None:
    table = series(
        ("p1", "hr", hours(2), None),  # rows out of time order: sorted by time, then put back
        ("p1", "hr", hours(0), 70.0),
        ("p1", "hr", hours(1), None),
        ("p1", "hr", hours(5), None),  # 5 h after the last value: too old
        ("p2", "hr", hours(3), None),  # p2 has no earlier value: never p1's
        ("p1", "temp", hours(1), None),  # another code of p1: not the heart rate
        ("p2", "hr", hours(4), 90.0),
        ("p2", "hr", hours(6), None),
        ("p1", "hr", None, None),  # no time: cannot be placed in the series
    )
    result = impute(table, {"value_num": LOCF})

    assert result.table.column("value_num").to_pylist() == [
        70.0,
        70.0,
        70.0,
        None,
        None,
        None,
        90.0,
        90.0,
        None,
    ]
    assert flags(result.table) == [
        ["value_num:locf"],
        [],
        ["value_num:locf"],
        [],
        [],
        [],
        [],
        ["value_num:locf"],
        [],
    ]
    assert result.fractions == {"value_num": pytest.approx(3 / 9)}
    # order and every other column as they came
    assert result.table.drop_columns(["value_num", "_imputed"]) == table.drop_columns(["value_num"])


def test_locf_at_exactly_max_age_still_carries() -> None:
    table = series(("p1", "hr", hours(0), 70.0), ("p1", "hr", hours(4), None))
    assert impute(table, {"value_num": LOCF}).table.column("value_num").to_pylist() == [70.0, 70.0]


def test_vitals_plan_carries_forward_then_takes_the_median_of_the_code() -> None:
    table = series(
        ("p1", "hr", hours(0), 60.0),
        ("p1", "hr", hours(1), None),  # carried: 60
        ("p1", "hr", hours(9), None),  # too old: median of heart rates (60, 80, 100) = 80
        ("p2", "hr", hours(0), 80.0),
        ("p2", "hr", hours(1), 100.0),
        ("p2", "temp", hours(0), 37.0),
        ("p3", "temp", hours(0), None),  # median of temperatures: 37
    )
    result = impute(table, VITALS_IMPUTATION)

    assert result.table.column("value_num").to_pylist() == [
        60.0,
        60.0,
        80.0,
        80.0,
        100.0,
        37.0,
        37.0,
    ]
    assert flags(result.table) == [
        [],
        ["value_num:locf"],
        ["value_num:median"],
        [],
        [],
        [],
        ["value_num:median"],
    ]
    assert result.fractions == {"value_num": pytest.approx(3 / 7)}


def test_earlier_flags_are_kept() -> None:
    table = series(("p1", "hr", hours(0), 70.0), ("p1", "hr", hours(1), None))
    once = impute(table, {"value_num": LOCF}).table
    again = impute(once, {"code": Imputation("mode", max_missing=ANY)}).table
    assert flags(again) == [[], ["value_num:locf"]]


# -- multiple imputation -------------------------------------------------------------------------


def linear(rows: int = 300, missing: int = 60) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(7)
    a = rng.normal(100, 10, rows)
    b = 2 * a + rng.normal(0, 1, rows)
    observed = b.copy()
    observed[:missing] = np.nan
    table = pa.table({"a": a, "b": pa.array(observed, mask=np.isnan(observed))})
    return table, b


PLAN = {"a": Imputation("iterative"), "b": Imputation("iterative")}


def test_multiple_imputation_recovers_a_linearly_related_column() -> None:
    table, truth = linear()
    result = impute(table, PLAN, draws=5, seed=0)

    b = np.array(result.table.column("b").to_pylist())
    assert np.abs(b[:60] - truth[:60]).max() < 5  # b's spread is 20; the noise 1
    assert b[60:].tolist() == table.column("b").to_pylist()[60:]  # observed cells untouched
    assert flags(result.table) == [["b:iterative"]] * 60 + [[]] * 240
    assert result.fractions == {"a": 0.0, "b": pytest.approx(0.2)}

    variance = result.table.column(variance_column("b")).to_pylist()
    assert all(v is not None and 0 <= v < 25 for v in variance[:60])
    assert variance[60:] == [None] * 240
    assert result.table.column(variance_column("a")).null_count == 300


def test_multiple_imputation_is_reproducible_and_stays_in_the_observed_range() -> None:
    table, _ = linear()
    first = impute(table, PLAN, seed=3).table
    assert first.equals(impute(table, PLAN, seed=3).table)
    assert not first.equals(impute(table, PLAN, seed=4).table)  # the seed matters

    outlier = table.set_column(0, "a", pa.array([1000.0] + table.column("a").to_pylist()[1:]))
    b = impute(outlier, PLAN).table.column("b").to_pylist()
    observed = [v for v in table.column("b").to_pylist() if v is not None]
    assert min(observed) <= b[0] <= max(observed)  # never extrapolated beyond what was seen


# -- the ledger ----------------------------------------------------------------------------------


def test_ledger_entry_holds_the_fractions_and_balances(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    result = impute(people(), {"weight": Imputation("median", cohort=("sex",), max_missing=ANY)})
    entry = result.ledger_entry("gold.t")
    assert (entry.stage, entry.records_in, entry.records_out) == ("impute", 7, 7)

    ledger.record(lake, "run-1", [entry])

    (row,) = ledger.for_run(lake, "run-1")
    assert row["balanced"] is True
    assert json.loads(str(row["details"])) == {"weight": pytest.approx(4 / 7, abs=1e-6)}


def test_ledger_rows_written_before_details_existed_stay_readable(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    old_schema = pa.schema([f for f in LEDGER.schema if f.name != "details"])
    old = {
        "run_id": "run-0",
        "stage": "silver",
        "table_name": "silver.observations",
        "records_in": 3,
        "records_out": 3,
        "quarantined": 0,
        "merged": 0,
        "bronze_only": 0,
        "balanced": True,
        "recorded_at": T0,
    }
    write_deltalake(lake.uri(LEDGER.name), pa.Table.from_pylist([old], schema=old_schema))

    assert ledger.for_run(lake, "run-0")[0]["details"] is None
    ledger.record(lake, "run-1", [ledger.Entry("impute", "gold.t", 2, 2, details='{"x": 0.5}')])

    assert ledger.for_run(lake, "run-0")[0]["details"] is None
    assert ledger.for_run(lake, "run-1")[0]["details"] == '{"x": 0.5}'


# -- the ML mart: imputed between dbt and Delta ---------------------------------------------------


def write_silver(lake: Lake, table: str, rows: list[dict[str, Any]]) -> None:
    name = f"silver.{table}"
    full = [
        {"_record_hash": f"{table}-{i}", "_source_kind": "fhir", "_run_id": "silver-run", **row}
        for i, row in enumerate(rows)
    ]
    lake.write(name, pa.Table.from_pylist(full, schema=spec(name).schema), mode="overwrite")


def vital(key: str, person: str, code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "observation_key": key,
        "person_key": person,
        "status": "final",
        "code_system": "http://loinc.org",
        "code": code,
        "value_num": value,
        "value_unit": unit,
        "effective_at": T0,
    }


@pytest.mark.e2e
@pytest.mark.slow
def test_gold_ml_mart_is_imputed_flagged_and_ledgered(tmp_path: Path) -> None:
    from medlake.expectations.gate import validate_gold
    from medlake.jobs.gold import build_gold

    lake = Lake(tmp_path)
    persons = [f"p{i}" for i in range(6)]
    write_silver(
        lake,
        "patients",
        [
            {
                "person_key": p,
                "source_key": f"src-{p}",
                "source_system": "ehr",
                "gender": "female",
                "birth_date": date(1970, 1, 1),
            }
            for p in persons
        ],
    )
    # heart rate for five of six people, weight for four: p5 lacks both, p4 its weight;
    # nobody has a glucose (all missing: left alone, nothing to learn it from)
    rates = {"p0": 60.0, "p1": 70.0, "p2": 80.0, "p3": 90.0, "p4": 100.0}
    weights = {"p0": 60.0, "p1": 70.0, "p2": 80.0, "p3": 90.0}
    write_silver(
        lake,
        "observations",
        [vital(f"hr-{p}", p, "8867-4", v, "/min") for p, v in rates.items()]
        + [vital(f"wt-{p}", p, "29463-7", v, "kg") for p, v in weights.items()],
    )

    result = build_gold(lake.root, run_id="run-impute")

    rows = {r["person_key"]: r for r in lake.read("gold.ml_patient_features").to_pylist()}
    assert [rows[p]["heart_rate_last"] for p in rates] == list(rates.values())  # untouched
    assert 60.0 <= rows["p5"]["heart_rate_last"] <= 100.0
    assert 60.0 <= rows["p4"]["body_weight_mean"] <= 90.0
    assert rows["p5"]["glucose_mean"] is None
    assert sorted(rows["p5"]["_imputed"]) == sorted(
        f"{c}:iterative"
        for c in ("heart_rate_last", "heart_rate_mean", "body_weight_last", "body_weight_mean")
    )
    assert sorted(rows["p4"]["_imputed"]) == [
        "body_weight_last:iterative",
        "body_weight_mean:iterative",
    ]
    assert all(rows[p]["_imputed"] == [] for p in ("p0", "p1", "p2", "p3"))
    assert rows["p5"][variance_column("heart_rate_last")] is not None
    assert rows["p0"][variance_column("heart_rate_last")] is None

    expected = {column: 0.0 for column in ML_FEATURE_IMPUTATION}
    expected.update(
        heart_rate_last=1 / 6, heart_rate_mean=1 / 6, body_weight_last=2 / 6, body_weight_mean=2 / 6
    )
    assert result.imputed["gold.ml_patient_features"] == pytest.approx(expected)
    (entry,) = [e for e in ledger.for_run(lake, "run-impute") if e["stage"] == "impute"]
    assert (entry["table_name"], entry["records_in"], entry["records_out"]) == (
        "gold.ml_patient_features",
        6,
        6,
    )
    assert json.loads(str(entry["details"])) == pytest.approx(expected, abs=1e-6)

    # the imputed mart passes its suite (imputed values stay within the observed, plausible range)
    validate_gold(lake, run_id="run-impute", tables=["gold.ml_patient_features"])
