"""The quality gate: which staged rows reach silver, which are quarantined and why."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.expectations.gate import (
    SUITES_DIR,
    GateFailed,
    GateResult,
    load_suite,
    run_gate,
    suite_path,
    validate,
    validate_gold,
)
from medlake.expectations.volume import Delivery, VolumePolicy, band
from medlake.expectations.volume import history as volume_history
from medlake.lake import Lake, TableNotFound
from medlake.ledger import Entry, check, record
from medlake.registry import (
    SILVER_CONDITIONS,
    SILVER_OBSERVATIONS,
    SILVER_PATIENTS,
    SILVER_TABLES,
    TableSpec,
    staging_name,
)

OBS = SILVER_OBSERVATIONS.name
SUITE = suite_path(OBS)


def obs(
    key: str,
    code: str = "8867-4",
    value: float | None = 72.0,
    unit: str | None = "/min",
    **extra: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "observation_key": key,
        "person_key": "pk-" + key,
        "status": "final",
        "category": "vital-signs",
        "code_system": "http://loinc.org",
        "code": code,
        "value_num": value,
        "value_unit": unit,
        "effective_at": datetime(2024, 3, 1, 8, 30, tzinfo=UTC),
        "_record_hash": "rh-" + key,
        "_source_kind": "fhir",
        "_run_id": "run-clean",
    }
    row.update(extra)
    return row


def observations(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SILVER_OBSERVATIONS.schema)


#: the staging rows of one run: four kinds of trouble and one clean row
MIXED = (
    obs("hr-900", value=900.0),
    obs("temp-60", code="8310-5", value=60.0, unit="Cel"),
    obs("no-person", person_key=None),
    obs("ok"),
    obs("temp-f", code="8310-5", value=98.6, unit="[degF]"),
)


def nullable(spec: TableSpec) -> TableSpec:
    """The spec with every column nullable: staging that can hold a row with a missing key."""
    schema = pa.schema([f.with_nullable(True) for f in spec.schema])
    return dataclasses.replace(spec, name=staging_name(spec.name), schema=schema)


def quarantined_by_record(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["record_id"]: row for row in table.to_pylist()}


# --- validate ----------------------------------------------------------------------------------


def test_validate_promotes_valid_rows_and_quarantines_impossible_ones() -> None:
    result = validate(observations(*MIXED), SUITE, table_name=OBS)

    assert result.promotable
    assert sorted(result.split.good.column("observation_key").to_pylist()) == ["ok", "temp-f"]
    bad = quarantined_by_record(result.split.quarantined)
    assert {k: v["rule_id"] for k, v in bad.items()} == {
        "hr-900": "gate.heart_rate_range",
        "temp-60": "gate.body_temperature_range",
        "no-person": "gate.person_key_not_null",
    }
    assert "value_num is 900" in bad["hr-900"]["reason"]
    assert "between 0 and 300" in bad["hr-900"]["reason"]
    assert "code == '8867-4'" in bad["hr-900"]["reason"]
    assert "value_num is 60" in bad["temp-60"]["reason"]
    assert "between 25 and 45" in bad["temp-60"]["reason"]
    assert "person_key is null" in bad["no-person"]["reason"]
    assert all(f"observation_key '{k}'" in row["reason"] for k, row in bad.items())
    assert {row["stage"] for row in bad.values()} == {"gate"}
    assert bad["hr-900"]["record_hash"] == "rh-hr-900"


def test_rule_results_carry_counts_and_observed_values() -> None:
    result = validate(observations(*MIXED), SUITE, table_name=OBS)

    heart = result.rule("heart_rate_range")
    assert (heart.success, heart.row_level, heart.unexpected_count) == (False, True, 1)
    assert heart.observed == [900.0]
    assert heart.unexpected_rows == (0,)
    temperature = result.rule("body_temperature_range")
    assert temperature.observed == [60.0]
    # the [degF] row is not range-checked until the cleaning stage normalizes units
    assert temperature.element_count == 1
    assert result.rule("status_valid").success
    present = result.rule("person_key_mostly_present")
    assert (present.row_level, present.success, present.unexpected_count) == (False, True, 1)


def test_a_row_failing_two_rules_is_quarantined_once_under_its_first_rule() -> None:
    result = validate(
        observations(obs("double", value=900.0, person_key=None, status="bogus"), obs("ok")),
        SUITE,
        table_name=OBS,
    )

    (row,) = result.split.quarantined.to_pylist()
    assert row["rule_id"] == "gate.person_key_not_null"  # first in suite order
    assert "status_valid: status is 'bogus'" in row["reason"]
    assert "heart_rate_range: value_num is 900" in row["reason"]
    assert result.split.good.column("observation_key").to_pylist() == ["ok"]


@pytest.mark.parametrize(
    ("code", "unit", "inside", "outside"),
    [
        ("8867-4", "/min", [0.0, 300.0], [-1.0, 301.0]),
        ("8310-5", "Cel", [25.0, 45.0], [24.9, 45.1]),
        ("29463-7", "kg", [0.2, 700.0], [0.1, 701.0]),
        ("8302-2", "cm", [20.0, 280.0], [19.0, 281.0]),
        ("59408-5", "%", [0.0, 100.0], [-0.5, 100.5]),
        ("9279-1", "/min", [0.0, 150.0], [-1.0, 151.0]),
        ("8480-6", "mm[Hg]", [20.0, 300.0], [19.0, 301.0]),
        ("8462-4", "mm[Hg]", [10.0, 250.0], [9.0, 251.0]),
    ],
)
def test_physiological_ranges_per_loinc_in_canonical_units(
    code: str, unit: str, inside: list[float], outside: list[float]
) -> None:
    rows = [obs(f"in-{v}", code=code, value=v, unit=unit) for v in inside]
    rows += [obs(f"out-{v}", code=code, value=v, unit=unit) for v in outside]
    rows += [obs(f"other-unit-{v}", code=code, value=v, unit="[arb'U]") for v in outside]

    result = validate(observations(*rows), SUITE, table_name=OBS)

    good = set(result.split.good.column("observation_key").to_pylist())
    assert good == {f"in-{v}" for v in inside} | {f"other-unit-{v}" for v in outside}
    assert set(result.split.quarantined.column("record_id").to_pylist()) == {
        f"out-{v}" for v in outside
    }


def test_status_outside_the_fhir_value_set_is_quarantined() -> None:
    result = validate(
        observations(obs("s1", status="F"), obs("s2", status="amended")), SUITE, table_name=OBS
    )

    (row,) = result.split.quarantined.to_pylist()
    assert (row["record_id"], row["rule_id"]) == ("s1", "gate.status_valid")
    assert "status is 'F'" in row["reason"] and "'final'" in row["reason"]


@pytest.mark.parametrize(
    ("person_keys", "words"),
    [
        (
            [None, None],
            "100.0% of rows fail (2 of 2); expected person_key not null for at least 50%",
        ),
        ([None, None, "pk"], "66.7% of rows fail (2 of 3)"),
    ],
)
def test_a_mostly_null_required_column_makes_the_table_unpromotable(
    person_keys: list[str | None], words: str
) -> None:
    rows = [obs(f"o{i}", person_key=pk) for i, pk in enumerate(person_keys)]

    result = validate(observations(*rows), SUITE, table_name=OBS)

    assert not result.promotable
    failure = result.rule("person_key_mostly_present")
    assert not failure.success and not failure.row_level
    assert words in failure.message


#: a suite for a table that must never be empty in a run
NOT_EMPTY = {
    "name": "not_empty",
    "expectations": [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": 1},
            "meta": {"rule": "table_not_empty"},
        }
    ],
}


def test_an_empty_table_fails_a_row_count_rule() -> None:
    result = validate(observations(), NOT_EMPTY, table_name=OBS)

    failure = result.rule("table_not_empty")
    assert (failure.success, failure.row_level, failure.observed) == (False, False, 0)
    assert failure.message == "row count is 0; expected row count ≥ 1"
    assert not result.promotable


def test_a_run_without_new_observations_promotes_nothing_and_passes(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations())

    (entry,) = run_gate(lake, run_id="run-2", tables=[OBS])

    assert (entry.records_in, entry.records_out, entry.quarantined) == (0, 0, 0)
    assert lake.count(OBS) == 0 and lake.count("quarantine") == 0


def test_a_suite_without_rule_ids_is_refused() -> None:
    suite = {
        "name": "bad",
        "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "x"}}],
    }
    with pytest.raises(ValueError, match="has no meta.rule id"):
        load_suite(suite)


def test_suite_files_are_gx_suites_with_unique_rule_ids() -> None:
    import great_expectations as gx

    paths = sorted(SUITES_DIR.glob("*.json"))
    assert SUITE in paths
    for path in paths:
        data = load_suite(path)
        suite = gx.ExpectationSuite(**json.loads(path.read_text()))
        assert [e.meta["rule"] for e in suite.expectations] == [
            e["meta"]["rule"] for e in data["expectations"]
        ]


def test_a_missing_column_is_a_table_level_failure() -> None:
    rows = observations(obs("ok")).drop_columns(["status"])

    result = validate(rows, SUITE, table_name=OBS)

    failure = result.rule("status_valid")
    assert not failure.success and not failure.row_level
    assert "status" in failure.message and not result.promotable


# --- run_gate ----------------------------------------------------------------------------------


def stage(lake: Lake, spec: TableSpec, rows: pa.Table, *, with_patients: bool = True) -> None:
    """Stage the rows; ``with_patients``: their people are in silver.patients already, as the
    referential-integrity rules (``person_key_known``) expect of a sound run."""
    lake.write(staging_name(spec.name), rows, mode="overwrite", spec=nullable(spec))
    if with_patients and "person_key" in rows.column_names:
        known = [p for p in set(rows.column("person_key").to_pylist()) if p is not None]
        patients = [
            {
                "person_key": p,
                "source_key": p,
                "source_system": "test",
                "_record_hash": "rh-" + p,
                "_source_kind": "fhir",
                "_run_id": "run-0",
            }
            for p in sorted(known)
        ]
        lake.upsert(
            SILVER_PATIENTS.name, pa.Table.from_pylist(patients, schema=SILVER_PATIENTS.schema)
        )


def test_run_gate_promotes_quarantines_and_is_idempotent(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations(*MIXED))

    first = run_gate(lake, run_id="run-1", tables=[OBS])
    silver_1 = lake.read(OBS).sort_by("observation_key")
    quarantine_1 = lake.read("quarantine").sort_by("quarantine_id")
    second = run_gate(lake, run_id="run-1", tables=[OBS])
    silver_2 = lake.read(OBS).sort_by("observation_key")
    quarantine_2 = lake.read("quarantine").sort_by("quarantine_id")

    assert silver_1.column("observation_key").to_pylist() == ["ok", "temp-f"]
    assert silver_2.equals(silver_1)
    assert quarantine_2.equals(quarantine_1)
    assert sorted(quarantine_2.column("record_id").to_pylist()) == [
        "hr-900",
        "no-person",
        "temp-60",
    ]
    assert set(quarantine_2.column("run_id").to_pylist()) == {"run-1"}
    assert set(quarantine_2.column("table_name").to_pylist()) == {OBS}
    (entry,) = second
    assert first == second
    assert (entry.stage, entry.table_name) == ("gate", OBS)
    assert (entry.records_in, entry.records_out, entry.quarantined, entry.merged) == (5, 2, 3, 0)
    check(first + second)


def test_panel_components_from_one_bronze_record_are_quarantined_separately(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    systolic = obs("bp-sys", code="8480-6", value=400.0, unit="mm[Hg]", _record_hash="rh-bp")
    diastolic = obs("bp-dia", code="8462-4", value=400.0, unit="mm[Hg]", _record_hash="rh-bp")
    stage(lake, SILVER_OBSERVATIONS, observations(systolic, diastolic, obs("ok")))

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS])

    assert sorted(lake.read("quarantine").column("record_id").to_pylist()) == ["bp-dia", "bp-sys"]
    assert (entry.records_out, entry.quarantined) == (1, 2)


def test_duplicate_keys_in_one_run_are_counted_as_merged(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations(obs("dup"), obs("dup"), obs("ok")))

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS])

    assert (entry.records_in, entry.records_out, entry.merged) == (3, 2, 1)
    assert entry.balanced and lake.count(OBS) == 2


def test_a_table_without_a_suite_is_promoted_whole(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    conditions = pa.Table.from_pylist(
        [
            {
                "condition_key": f"c{i}",
                "person_key": "pk",
                "code": "I10",
                "_record_hash": f"h{i}",
                "_source_kind": "fhir",
                "_run_id": "run-clean",
            }
            for i in range(3)
        ],
        schema=SILVER_CONDITIONS.schema,
    )
    stage(lake, SILVER_CONDITIONS, conditions)
    no_suites = tmp_path / "suites"
    no_suites.mkdir()

    (entry,) = run_gate(lake, run_id="run-1", tables=[SILVER_CONDITIONS.name], suites_dir=no_suites)

    assert (entry.records_in, entry.records_out, entry.quarantined) == (3, 3, 0)
    assert sorted(lake.read(SILVER_CONDITIONS.name).column("condition_key").to_pylist()) == [
        "c0",
        "c1",
        "c2",
    ]
    assert lake.count("quarantine") == 0


def test_a_table_level_failure_promotes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    pseudonymization_failed = [obs(k, person_key=None) for k in ("a", "b", "c")]
    stage(lake, SILVER_OBSERVATIONS, observations(*pseudonymization_failed, obs("d")))
    conditions = pa.Table.from_pylist(
        [
            {
                "condition_key": "c1",
                "person_key": "pk",
                "_record_hash": "h",
                "_source_kind": "fhir",
                "_run_id": "r",
            }
        ],
        schema=SILVER_CONDITIONS.schema,
    )
    stage(lake, SILVER_CONDITIONS, conditions)

    with pytest.raises(GateFailed, match="silver.observations: person_key_mostly_present — 75.0%"):
        run_gate(lake, run_id="run-1", tables=[SILVER_CONDITIONS.name, OBS])

    assert not lake.exists(OBS) and not lake.exists(SILVER_CONDITIONS.name)
    assert lake.count("quarantine") == 0


def test_a_table_never_staged_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TableNotFound, match="no staging table staging.observations"):
        run_gate(Lake(tmp_path / "lake"), run_id="run-1", tables=[OBS])


# --- size --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_validate_100k_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how long the gate takes on 100k rows (a figure, not an assertion on time)."""
    kinds = [
        obs("ok"),
        obs("hr", value=900.0),
        obs("t", code="8310-5", value=37.0, unit="Cel"),
        obs("w", code="29463-7", value=70.0, unit="kg"),
    ]
    rows = [
        dict(kinds[i % 4], observation_key=f"o{i}", _record_hash=f"h{i}") for i in range(100_000)
    ]
    table = observations(*rows)

    started = time.perf_counter()
    result = validate(table, SUITE, table_name=OBS)
    elapsed = time.perf_counter() - started

    assert result.split.counts == (75_000, 25_000)
    with capsys.disabled():
        print(
            f"\nvalidate: 100k rows, {len(result.rules)} rules, 25k quarantined in {elapsed:.2f} s"
        )


def test_shipped_suites_quarantine_an_encounter_that_ends_before_it_starts():
    from datetime import UTC, datetime

    from medlake.registry import SILVER_ENCOUNTERS

    def enc(
        key: str, start: datetime | None, end: datetime | None, status: str = "finished"
    ) -> dict:
        return {
            "encounter_key": key,
            "person_key": "p",
            "status": status,
            "class_code": "AMB",
            "start_at": start,
            "end_at": end,
            "_record_hash": f"h-{key}",
            "_source_kind": "fhir",
            "_run_id": "r",
        }

    day = lambda d: datetime(2020, 1, d, tzinfo=UTC)
    rows = pa.Table.from_pylist(
        [
            enc("ok", day(1), day(2)),
            enc("open", day(1), None),
            enc("backwards", day(2), day(1)),
            enc("odd", day(1), day(1), status="done"),
        ],
        schema=SILVER_ENCOUNTERS.schema,
    )
    result = validate(rows, suite_path("silver.encounters"), table_name="silver.encounters")
    assert sorted(result.split.good.column("encounter_key").to_pylist()) == ["ok", "open"]
    reasons = {
        r["record_id"]: (r["rule_id"], r["reason"]) for r in result.split.quarantined.to_pylist()
    }
    assert reasons["backwards"][0] == "gate.encounter_ends_after_start"
    assert "end_at ≥ start_at" in reasons["backwards"][1]
    assert reasons["odd"][0] == "gate.status_in_fhir_set"


@pytest.mark.parametrize("table", SILVER_TABLES)
def test_every_silver_table_has_a_suite(table):
    assert suite_path(table).is_file()


# --- delivery volume against each source's own history -----------------------------------------


def valid_observations(n: int, *, prefix: str, source: str = "fhir") -> pa.Table:
    return observations(
        *(obs(f"{prefix}{i}", _record_hash=f"rh-{prefix}{i}", _source_kind=source) for i in range(n))
    )


def delivered(lake: Lake, run_id: str, volume: dict[str, int], *, on: datetime) -> None:
    """An earlier run's gate entry, as the gate records it: its rows per source."""
    entry = Entry(
        stage="gate",
        table_name=OBS,
        records_in=sum(volume.values()),
        records_out=sum(volume.values()),
        details=json.dumps({"volume": volume}),
    )
    record(lake, run_id, [entry], now=on)


def history(lake: Lake, sizes: list[int], *, source: str = "fhir", start: datetime) -> None:
    for i, n in enumerate(sizes):
        delivered(lake, f"past-{source}-{i}", {source: n}, on=start + timedelta(days=i))


MONDAY = datetime(2024, 3, 4, 9, tzinfo=UTC)


def findings(entry: Entry) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(entry.details or "{}")["volume_findings"]
    return found


def test_first_deliveries_have_no_band_and_are_promoted_whatever_their_size(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    history(lake, [1000, 1000], start=MONDAY)
    stage(lake, SILVER_OBSERVATIONS, valid_observations(3, prefix="a"))

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS], now=MONDAY)

    assert entry.records_out == 3 and lake.count(OBS) == 3
    assert json.loads(entry.details or "{}")["volume"] == {"fhir": 3}
    assert [(f["source"], f["verdict"], f["deliveries"]) for f in findings(entry)] == [("fhir", "no band", 2)]


def test_a_small_delivery_outside_its_band_warns_and_is_promoted_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = Lake(tmp_path / "lake")
    history(lake, [1000, 980, 1020, 1010, 990], start=MONDAY)
    stage(lake, SILVER_OBSERVATIONS, valid_observations(10, prefix="a"))

    with caplog.at_level("WARNING"):
        (entry,) = run_gate(lake, run_id="run-1", tables=[OBS], now=MONDAY)

    assert entry.records_out == 10 and lake.count(OBS) == 10
    (found,) = findings(entry)
    assert (found["verdict"], found["basis"], found["deliveries"]) == ("low", "all days", 5)
    assert found["low"] > 10
    assert "silver.observations from fhir: 10 rows, low" in caplog.text


def test_where_the_policy_blocks_an_out_of_band_delivery_stops_the_table(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    history(lake, [1000, 980, 1020, 1010, 990], start=MONDAY)
    stage(lake, SILVER_OBSERVATIONS, valid_observations(10, prefix="a"))
    results: list[GateResult] = []

    with pytest.raises(GateFailed) as refused:
        run_gate(
            lake,
            run_id="run-1",
            tables=[OBS],
            results=results,
            volume_policy=VolumePolicy(block=frozenset({OBS})),
            now=MONDAY,
        )

    assert "silver.observations: volume_in_band — silver.observations from fhir: 10 rows, low" in str(refused.value)
    assert not lake.exists(OBS) or lake.count(OBS) == 0
    assert not results[0].promotable


def test_each_source_is_compared_with_its_own_deliveries_not_the_table_total(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for i in range(5):  # every day: 1000 rows from FHIR and 12 from HL7 v2
        delivered(lake, f"past-{i}", {"fhir": 1000, "hl7v2": 12}, on=MONDAY + timedelta(days=i))
    stage(lake, SILVER_OBSERVATIONS, valid_observations(11, prefix="h", source="hl7v2"))

    (entry,) = run_gate(
        lake, run_id="run-1", tables=[OBS], volume_policy=VolumePolicy(block=frozenset({"*"})), now=MONDAY
    )

    assert [(f["source"], f["verdict"]) for f in findings(entry)] == [("hl7v2", "in band")]
    assert lake.count(OBS) == 11


def test_the_band_is_the_same_weekdays_once_there_are_enough_of_them() -> None:
    saturday = MONDAY + timedelta(days=5)
    weeks = [
        Delivery(f"r{w}{d}", d, 100 if d >= 5 else 1000) for w in range(5) for d in range(7)
    ]
    policy = VolumePolicy(min_history=5)
    low, high, basis, used = band(weeks, saturday.weekday(), policy=policy) or (0, 0, "", 0)
    assert basis == "Saturdays" and used == 5 and low <= 100 <= high < 1000
    low, high, basis, _ = band(weeks, MONDAY.weekday(), policy=policy) or (0, 0, "", 0)
    assert basis == "Mondays" and not low <= 100 <= high
    assert band(weeks[:4], 0, policy=policy) is None  # too little history: no band


def test_a_run_that_staged_nothing_is_no_delivery_neither_judged_nor_learned(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    history(lake, [100, 100, 100, 100, 100], start=MONDAY)
    stage(lake, SILVER_OBSERVATIONS, observations())

    (entry,) = record(lake, "run-1", run_gate(lake, run_id="run-1", tables=[OBS], now=MONDAY))

    assert (entry.records_in, findings(entry)) == (0, [])
    assert [d.rows for d in volume_history(lake, OBS, run_id="run-2")["fhir"]] == [100] * 5


# --- gold --------------------------------------------------------------------------------------

FEATURES = "gold.ml_patient_features"


def feature_row(person_key: str | None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "person_key": person_key,
        "gender": "female",
        "age_band": "40-44",
        "is_deceased": False,
        "encounter_count": 3,
        "heart_rate_last": 70.0,
        "heart_rate_mean": 72.5,
        "body_weight_last": 70.0,
        "body_weight_mean": 71.0,
        "systolic_bp_last": 120.0,
        "systolic_bp_mean": 118.0,
        "glucose_last": None,
        "glucose_mean": None,
        "medication_count": 1,
        "medication_order_count": 2,
        "_run_id": "run-1",
        "_imputed": [],
    }
    row.update(extra)
    return row


def write_features(lake: Lake, *rows: dict[str, Any]) -> None:
    lake.write(FEATURES, pa.Table.from_pylist(list(rows)), mode="overwrite")


def test_a_sound_gold_mart_passes(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write_features(
        lake, feature_row("p1"), feature_row("p2", age_band=None), feature_row("p3", age_band="90+")
    )

    # a mart without a suite (here one that does not exist at all) is not checked
    (result,) = validate_gold(lake, run_id="run-1", tables=[FEATURES, "gold.mart_without_suite"])

    assert result.table_name == FEATURES and result.promotable
    assert all(r.success for r in result.rules)


@pytest.mark.parametrize(
    ("rows", "rule", "words"),
    [
        ([feature_row("p1"), feature_row("p1")], "person_key_unique", "2 rows fail"),
        (
            [feature_row("p1"), feature_row("p2", age_band="90-94")],
            "age_band_in_dbt_bands",
            "1 row fail",
        ),
        ([feature_row("p1"), feature_row(None)], "person_key_not_null", "1 row fail"),
        ([feature_row("p1", encounter_count=-1)], "encounter_count_not_negative", "1 row fail"),
        ([feature_row("p1", heart_rate_mean=720.0)], "heart_rate_mean_range", "between 0 and 300"),
    ],
)
def test_a_wrong_gold_row_stops_the_gold_task(
    tmp_path: Path, rows: list[dict[str, Any]], rule: str, words: str
) -> None:
    lake = Lake(tmp_path / "lake")
    write_features(lake, *rows)

    with pytest.raises(GateFailed) as refused:
        validate_gold(lake, run_id="run-1", tables=[FEATURES])

    (result,) = refused.value.results
    assert [f.rule for f in result.table_failures] == [rule]
    assert f"{FEATURES}: {rule} — " in str(refused.value) and words in str(refused.value)


def test_a_gold_mart_is_validated_in_chunks_its_key_over_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of two rows: a person twice, three chunks apart, still stops the build."""
    from medlake.expectations import gate

    monkeypatch.setattr(gate, "CHUNK_ROWS", 2)
    frames: list[tuple[int, int]] = []
    run_gx = gate._run_gx
    monkeypatch.setattr(
        gate, "_run_gx", lambda rows, *a, **k: frames.append(rows.shape) or run_gx(rows, *a, **k)
    )
    lake = Lake(tmp_path / "lake")
    write_features(lake, *(feature_row(f"p{i}") for i in range(6)), feature_row("p0"))

    with pytest.raises(GateFailed, match="person_key_unique — 2 rows fail") as refused:
        validate_gold(lake, run_id="run-1", tables=[FEATURES])

    columns = len(feature_row("p").keys())
    assert frames == [(7, 1), (2, columns), (2, columns), (2, columns), (1, columns)]  # the key, then chunks

    (result,) = refused.value.results
    assert result.rule("person_key_unique").unexpected_rows == (0, 6)
    assert result.rule("age_band_in_dbt_bands").element_count == 7  # added up over four chunks


def test_gold_lab_bounds_are_silvers_physiological_bounds() -> None:
    from medlake.jobs.clean.ranges import impossible_ranges

    silver = impossible_ranges()
    labs = [e for e in load_suite(suite_path(FEATURES))["expectations"] if "loinc" in e["meta"]]
    assert {e["kwargs"]["column"] for e in labs} >= {
        "heart_rate_mean",
        "body_weight_mean",
        "systolic_bp_mean",
    }
    for e in labs:
        bound = silver[(e["meta"]["loinc"], e["meta"]["ucum"])]
        assert (e["kwargs"]["min_value"], e["kwargs"]["max_value"]) == (bound.low, bound.high)
        assert bound.source == e["meta"]["silver_rule"]


def test_gold_age_bands_are_the_bands_dbt_emits() -> None:
    import yaml

    dbt = Path(__file__).parents[2] / "dbt"
    top = int(yaml.safe_load((dbt / "dbt_project.yml").read_text())["vars"]["age_top_code"])

    def band(age: int) -> str:  # dbt/macros/age.sql, age_band
        low = age // 5 * 5
        return f"{top + 1}+" if age > top else f"{low}-{min(low + 4, top)}"

    models = yaml.safe_load((dbt / "models/marts/ml/_ml__models.yml").read_text())["models"]
    (features,) = [m for m in models if m["name"] == "ml_patient_features"]
    (age,) = [c for c in features["columns"] if c["name"] == "age_band"]
    accepted = age["data_tests"][0]["accepted_values"]["arguments"]["values"]
    (rule,) = [
        e
        for e in load_suite(suite_path(FEATURES))["expectations"]
        if e["meta"]["rule"] == "age_band_in_dbt_bands"
    ]
    assert set(rule["kwargs"]["value_set"]) == {band(a) for a in range(120)} == set(accepted)


def test_a_row_whose_person_is_unknown_is_quarantined_naming_the_parent_table(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations(obs("ok")))
    stage(lake, SILVER_OBSERVATIONS, observations(obs("ok"), obs("orphan")), with_patients=False)

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS])

    (row,) = lake.read("quarantine").to_pylist()
    assert (row["record_id"], row["rule_id"]) == ("orphan", "gate.person_key_known")
    assert (
        "person_key is 'pk-orphan', expected person_key present in silver.patients.person_key"
        in row["reason"]
    )
    assert (entry.records_out, entry.quarantined) == (1, 1)


def test_a_patient_staged_in_the_same_run_makes_its_rows_known(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations(obs("new")), with_patients=False)
    patient = {
        "person_key": "pk-new",
        "source_key": "sk",
        "source_system": "test",
        "_record_hash": "rh-p",
        "_source_kind": "fhir",
        "_run_id": "run-1",
    }
    stage(
        lake,
        SILVER_PATIENTS,
        pa.Table.from_pylist([patient], schema=SILVER_PATIENTS.schema),
        with_patients=False,
    )

    entries = run_gate(lake, run_id="run-1", tables=[SILVER_PATIENTS.name, OBS])

    assert [(e.table_name, e.records_out, e.quarantined) for e in entries] == [
        (SILVER_PATIENTS.name, 1, 0),
        (OBS, 1, 0),
    ]


def test_an_encounter_key_must_name_a_known_encounter(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(
        lake,
        SILVER_OBSERVATIONS,
        observations(obs("visit", encounter_key="enc-missing"), obs("none")),
    )

    run_gate(lake, run_id="run-1", tables=[OBS])

    assert lake.read("quarantine", columns=["record_id", "rule_id"]).to_pylist() == [
        {"record_id": "visit", "rule_id": "gate.encounter_key_known"}
    ]


def test_a_mapped_code_outside_its_standard_system_is_quarantined(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    local = "http://hospital.example.org/lab-codes"
    stage(
        lake,
        SILVER_OBSERVATIONS,
        observations(
            obs("claims-loinc", code_system=local, mapping_status="standard"),
            obs("kept-unmapped", code_system=local, mapping_status="unmapped"),
            obs("loinc", mapping_status="standard"),
        ),
    )

    run_gate(lake, run_id="run-1", tables=[OBS])

    assert lake.read("quarantine", columns=["record_id", "rule_id"]).to_pylist() == [
        {"record_id": "claims-loinc", "rule_id": "gate.code_system_standard"}
    ]
    assert sorted(lake.read(OBS).column("observation_key").to_pylist()) == [
        "kept-unmapped",
        "loinc",
    ]


@pytest.mark.parametrize(
    "table", ["ml_patient_features", "ml_vitals_windows", "omop_person", "omop_visit_occurrence",
              "omop_condition_occurrence", "omop_drug_exposure", "omop_measurement", "omop_observation",
              "omop_death", "omop_observation_period"],
)
def test_every_gold_mart_has_a_suite(table: str) -> None:
    assert suite_path(f"gold.{table}").is_file()
    assert load_suite(suite_path(f"gold.{table}"))["expectations"]


def test_an_omop_visit_ending_before_it_starts_stops_the_gold_task(tmp_path: Path) -> None:
    from datetime import date

    lake = Lake(tmp_path / "lake")
    visit = {"visit_occurrence_id": 1, "person_id": 7, "visit_concept_id": 9202, "visit_type_concept_id": 32817,
             "visit_start_date": date(2024, 3, 2), "visit_end_date": date(2024, 3, 1)}
    with pytest.raises(GateFailed, match="visit_ends_after_start"):
        validate_gold(lake, run_id="run-1", tables=["gold.omop_visit_occurrence"],
                      data={"gold.omop_visit_occurrence": pa.Table.from_pylist([visit])})
    assert not lake.exists("gold.omop_visit_occurrence")


def test_the_gate_keeps_validated_rows_on_disk_sealed_and_leaves_no_scratch(tmp_path: Path) -> None:
    """Every table is validated before any is promoted, one table's rows in memory at a time:
    the others wait in the run's scratch, sealed like the tables they go to, removed after."""
    from medlake.config import Settings
    from medlake.governance.at_rest import lake_for

    lake = lake_for(Settings(), tmp_path / "lake")
    bad = obs("bad", value=900.0, _record_hash="rh-bad")
    stage(lake, SILVER_OBSERVATIONS, observations(*valid_observations(3, prefix="a").to_pylist(), bad))
    results: list[GateResult] = []

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS], results=results, now=MONDAY)

    assert (entry.records_in, entry.records_out, entry.quarantined) == (4, 3, 1)
    assert lake.count(OBS) == 3
    (refused,) = [q for q in lake.read("quarantine").to_pylist() if q["run_id"] == "run-1"]
    assert refused["record_hash"] == "rh-bad" and refused["raw_record"]  # read back opened
    assert results[0].validated == 4 and results[0].split.good.num_rows == 0  # counts, not rows
    assert not (lake.root / "_scratch" / "run-1" / "gate").exists()


def test_the_gate_streams_a_chunk_at_a_time_and_promotes_the_first_of_each_key(tmp_path: Path) -> None:
    """Chunks of two rows: a key repeated in a later chunk is merged (its first copy promoted), a
    key silver held from an earlier run is written over, a row refused twice is quarantined once;
    a retried gate counts the same and changes nothing."""
    lake = Lake(tmp_path / "lake")
    earlier = observations(obs("a2", value=60.0, _run_id="run-0"), obs("z", _run_id="run-0"))
    lake.write(OBS, earlier, mode="append")
    bad = obs("bad", value=900.0)
    stage(
        lake,
        SILVER_OBSERVATIONS,
        observations(obs("a0"), obs("a1"), bad, obs("a2"), obs("a1", value=80.0), bad),
    )

    for attempt in ("first", "retry"):
        (entry,) = run_gate(lake, run_id="run-1", tables=[OBS], chunk_rows=2, now=MONDAY)

        assert (entry.records_in, entry.records_out, entry.quarantined, entry.merged) == (6, 3, 1, 2), attempt
        silver = {r["observation_key"]: r["value_num"] for r in lake.read(OBS).to_pylist()}
        assert silver == {"a0": 72.0, "a1": 72.0, "a2": 72.0, "z": 72.0}, attempt
        refused = [q["record_id"] for q in lake.read("quarantine").to_pylist()]
        assert refused == ["bad"], attempt
    assert not (lake.root / "_scratch" / "run-1" / "gate").exists()


# --- validated a chunk at a time ---------------------------------------------------------------


def test_a_suite_of_column_rules_validated_in_chunks_gives_the_whole_tables_results() -> None:
    rows = observations(*MIXED, *(obs(f"more-{i}", value=300.0 + i % 3) for i in range(7)))
    whole = validate(rows, SUITE, table_name=OBS)
    chunked = validate(rows, SUITE, table_name=OBS, chunk_rows=3)  # five chunks, one of 3 or fewer

    assert chunked.rules == whole.rules  # positions, values, counts, shares and words alike
    assert chunked.split.good.to_pylist() == whole.split.good.to_pylist()
    assert chunked.split.quarantined.drop(["quarantined_at"]).to_pylist() == (
        whole.split.quarantined.drop(["quarantined_at"]).to_pylist()
    )
    assert whole.rule("heart_rate_range").unexpected_rows == (0, 6, 7, 9, 10)  # 900, then 301s and 302s


def test_a_validated_chunk_leaves_no_frame_in_the_context() -> None:
    """GX's data source holds the chunk's pandas frame: the gate drops it after each chunk, so a
    gate task's context grows by suites and results only, not by every chunk's rows."""
    from medlake.expectations.gate import _gx_context

    context = _gx_context()
    rows = observations(*MIXED, *(obs(f"more-{i}") for i in range(7)))

    validate(rows, SUITE, table_name=OBS, context=context, chunk_rows=3)

    assert len(context.suites.all()) == 4  # a suite a chunk, kept for the Data Docs
    assert list(context.data_sources.all()) == []


def test_a_share_is_added_up_over_chunks_not_judged_per_chunk() -> None:
    # the first chunk has no person at all: alone it fails "person_key for at least 50% of rows";
    # over the table three of five rows have one, which holds
    rows = observations(
        obs("a", person_key=None), obs("b", person_key=None), obs("c"), obs("d"), obs("e")
    )
    suite = {
        "name": "share",
        "expectations": [
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "person_key", "mostly": 0.5},
                "meta": {"rule": "person_key_mostly_present"},
            }
        ],
    }
    assert not validate(rows.slice(0, 2), suite, table_name=OBS).promotable
    chunked = validate(rows, suite, table_name=OBS, chunk_rows=2)
    assert chunked.promotable
    share = chunked.rule("person_key_mostly_present")
    assert (share.element_count, share.unexpected_count, share.row_level) == (5, 2, False)
    refused = validate(rows.slice(0, 3), suite, table_name=OBS, chunk_rows=2)  # one of three
    assert refused.table_failures[0].message.startswith("66.7% of rows fail (2 of 3)")


def test_which_suites_hold_a_rule_over_every_row() -> None:
    from medlake.expectations.gate import by_chunks, load_suite

    unique = load_suite(suite_path("silver.imaging_instances"))
    assert not by_chunks(unique)  # uniqueness needs every row at once
    assert by_chunks(load_suite(SUITE))
    for name in SILVER_TABLES:  # every silver suite but one judges each row on its own
        path = suite_path(name)
        if path.exists() and name != "silver.imaging_instances":
            assert by_chunks(load_suite(path)), name


#: column rules and two rules over every row: a key's uniqueness and the table's row count
MIXED_SUITE = {
    "name": "mixed",
    "expectations": [
        {
            "type": "expect_column_values_to_be_unique",
            "kwargs": {"column": "observation_key"},
            "meta": {"rule": "observation_key_unique"},
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "value_num", "min_value": 0, "max_value": 300},
            "meta": {"rule": "value_in_range"},
        },
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": 1, "max_value": 100},
            "meta": {"rule": "row_count_in_band"},
        },
    ],
}


def test_rules_over_every_row_hold_across_chunks() -> None:
    """Chunks of two rows: a key repeated three chunks apart is still found twice (uniqueness is
    validated once, on the table's key column), a row failing both kinds of rule is quarantined
    once under its first rule in suite order, and the results are the whole table's."""
    rows = observations(
        obs("a"), obs("b"), obs("dup", value=900.0), obs("c"), obs("d"), obs("e"), obs("dup")
    )
    whole = validate(rows, MIXED_SUITE, table_name=OBS)
    chunked = validate(rows, MIXED_SUITE, table_name=OBS, chunk_rows=2)

    assert chunked.rules == whole.rules
    assert chunked.rule("observation_key_unique").unexpected_rows == (2, 6)
    assert chunked.rule("row_count_in_band").success
    assert chunked.split.quarantined.drop(["quarantined_at"]).to_pylist() == (
        whole.split.quarantined.drop(["quarantined_at"]).to_pylist()
    )
    assert chunked.split.quarantined.column("rule_id").to_pylist() == [
        "gate.observation_key_unique", "gate.observation_key_unique"
    ]
    assert chunked.split.good.num_rows == 5


def test_the_gate_validates_a_rule_over_every_row_on_its_columns_and_chunks_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate never holds a whole table for a uniqueness rule: it reads only the columns the
    rule needs (and the key), once, and streams every row's columns a chunk at a time."""
    from medlake.expectations import gate

    read: list[list[str]] = []
    whole_read = gate._columns
    monkeypatch.setattr(gate, "_columns", lambda source, names: read.append(names) or whole_read(source, names))
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "silver_observations.json").write_text(json.dumps(MIXED_SUITE))
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, observations(obs("a"), obs("b"), obs("c"), obs("a"), obs("d")))

    (entry,) = run_gate(lake, run_id="run-1", tables=[OBS], chunk_rows=2, suites_dir=suites)

    assert read == [["observation_key"]]
    assert (entry.records_in, entry.records_out, entry.quarantined, entry.merged) == (5, 3, 1, 1)
    assert sorted(r["observation_key"] for r in lake.read(OBS).to_pylist()) == ["b", "c", "d"]


def test_referential_rules_in_chunks_judge_each_row_against_every_key_of_the_lake(
    tmp_path: Path,
) -> None:
    from medlake.expectations.gate import _reference_keys, _within, resolve_references

    lake = Lake(tmp_path / "lake")
    known = observations(*(obs(f"k{i}") for i in range(6)))  # pk-k0 ... pk-k5 are patients
    stage(lake, SILVER_OBSERVATIONS, known)
    rows = observations(
        obs("k0"), obs("orphan-1"), obs("k5"), obs("k2"), obs("orphan-2"), obs("k0", value=900.0)
    )
    whole = validate(rows, SUITE, table_name=OBS, lake=lake)
    chunked = validate(rows, SUITE, table_name=OBS, lake=lake, chunk_rows=2)

    assert chunked.rules == whole.rules
    assert whole.rule("person_key_known").unexpected_rows == (1, 4)
    assert chunked.split.quarantined.column("rule_id").to_pylist() == [
        "gate.person_key_known", "gate.person_key_known", "gate.heart_rate_range"
    ]
    # a chunk's suite names only the keys its rows hold that the lake knows: not every patient
    suite = resolve_references(load_suite(SUITE), lake)
    cut = _within(suite, rows.slice(0, 2), _reference_keys(suite), name="chunk")
    (rule,) = [e for e in cut["expectations"] if e["meta"]["rule"] == "person_key_known"]
    assert rule["kwargs"]["value_set"] == ["pk-k0"]
    assert len(next(e for e in suite["expectations"] if e["meta"]["rule"] == "person_key_known")["kwargs"]["value_set"]) == 6
