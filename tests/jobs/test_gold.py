"""The gold layer: dbt over real silver Delta tables, marts written back to the lake as Delta."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.jobs.gold import GoldBuildError, GoldResult, build_gold
from medlake.lake import Lake
from medlake.registry import spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOINC = "http://loinc.org"


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def write_silver(lake: Lake, table: str, rows: list[dict[str, Any]]) -> None:
    """Write silver rows in the registered schema, with lineage columns filled in."""
    name = f"silver.{table}"
    full = [
        {"_record_hash": f"{table}-{i}", "_source_kind": "fhir", "_run_id": "silver-run", **row}
        for i, row in enumerate(rows)
    ]
    lake.write(name, pa.Table.from_pylist(full, schema=spec(name).schema), mode="overwrite")


def patient(
    person_key: str,
    birth: date | None,
    *,
    source_key: str | None = None,
    gender: str | None = "female",
    source_system: str = "ehr",
) -> dict[str, Any]:
    return {
        "person_key": person_key,
        "source_key": source_key or f"src-{person_key}",
        "source_system": source_system,
        "gender": gender,
        "birth_date": birth,
    }


def encounter(
    key: str, person_key: str, start: str, end: str | None = None, status: str = "finished"
) -> dict[str, Any]:
    return {
        "encounter_key": key,
        "person_key": person_key,
        "status": status,
        "start_at": at(start),
        "end_at": at(end) if end else None,
    }


def obs(
    key: str, person_key: str, code: str, value: float, unit: str, when: str, status: str = "final"
) -> dict[str, Any]:
    return {
        "observation_key": key,
        "person_key": person_key,
        "status": status,
        "code_system": LOINC,
        "code": code,
        "value_num": value,
        "value_unit": unit,
        "effective_at": at(when),
    }


def condition(
    key: str,
    person_key: str,
    *,
    icd10cm: str | None = None,
    snomed: str | None = None,
    verification: str = "confirmed",
) -> dict[str, Any]:
    return {
        "condition_key": key,
        "person_key": person_key,
        "verification_status": verification,
        "icd10cm_code": icd10cm,
        "snomed_code": snomed,
    }


def medication(key: str, person_key: str, rxnorm: str, status: str = "active") -> dict[str, Any]:
    return {
        "medication_key": key,
        "person_key": person_key,
        "status": status,
        "rxnorm_code": rxnorm,
        "code_system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": rxnorm,
    }


def features(lake: Lake) -> dict[str, dict[str, Any]]:
    rows = lake.read("gold.ml_patient_features").to_pylist()
    return {row["person_key"]: row for row in rows}


@pytest.fixture(scope="module")
def full_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, GoldResult]:
    """Four people, every silver table present, built once."""
    lake = Lake(tmp_path_factory.mktemp("gold_full"))
    write_silver(
        lake,
        "patients",
        [
            # two source records of one person: the one with a birth date survives
            patient("p-old", None, source_key="lab-1", source_system="lab"),
            patient("p-old", date(1920, 3, 10), source_key="ehr-1"),
            patient("p-diab", date(1970, 1, 15), gender="male"),
            # turns 40 the day after the index date
            patient("p-htn", date(1985, 6, 2)),
            patient("p-none", date(2001, 7, 7)),
        ],
    )
    write_silver(
        lake,
        "encounters",
        [
            encounter("e1", "p-old", "2024-02-01T09:00:00", "2024-02-03T12:00:00"),
            encounter("e2", "p-old", "2023-11-20T09:00:00", "2023-11-20T10:00:00"),
            encounter("e3", "p-old", "2025-01-01T09:00:00", status="cancelled"),
            encounter("e4", "p-diab", "2023-03-01T08:00:00", "2023-03-01T09:00:00"),
            encounter("e5", "p-htn", "2025-05-20T08:00:00", "2025-05-20T08:30:00"),
        ],
    )
    write_silver(
        lake,
        "observations",
        [
            obs("o1", "p-diab", "2339-0", 100.0, "mg/dL", "2023-05-01T08:00:00"),
            obs("o2", "p-diab", "2339-0", 140.0, "mg/dL", "2023-06-01T08:00:00"),
            obs(
                "o3",
                "p-diab",
                "2339-0",
                999.0,
                "mg/dL",
                "2023-05-15T08:00:00",
                status="entered-in-error",
            ),
            obs("o4", "p-diab", "4548-4", 7.2, "%", "2023-06-01T08:00:00"),
            obs("o5", "p-htn", "29463-7", 80.0, "kg", "2025-05-20T08:00:00"),
            obs("o6", "p-htn", "29463-7", 82.0, "kg", "2025-06-01T08:00:00"),
            obs("o7", "p-htn", "8480-6", 150.0, "mm[Hg]", "2025-05-20T08:00:00"),
            obs("o8", "p-old", "8867-4", 72.0, "/min", "2024-02-01T10:00:00"),
        ],
    )
    write_silver(
        lake,
        "conditions",
        [
            condition("c1", "p-diab", icd10cm="E11.9"),
            condition("c2", "p-htn", snomed="38341003"),
            condition("c3", "p-none", icd10cm="E10.9", verification="refuted"),
            condition("c4", "p-old", icd10cm="J45.909"),
        ],
    )
    write_silver(
        lake,
        "medications",
        [
            medication("m1", "p-htn", "314076"),  # lisinopril, ordered twice
            medication("m2", "p-htn", "314076"),
            medication("m3", "p-htn", "197361"),  # amlodipine
            medication("m4", "p-htn", "310798", status="cancelled"),
        ],
    )
    return lake, build_gold(lake.root, run_id="run-full")


def test_gold_has_one_row_per_person(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = full_lake
    rows = lake.read("gold.ml_patient_features").to_pylist()
    # ordered by the mart's grain, so the same silver gives the same files
    assert [r["person_key"] for r in rows] == ["p-diab", "p-htn", "p-none", "p-old"]
    assert result.table("ml_patient_features").rows == 4
    assert result.versions["gold.ml_patient_features"] == lake.version("gold.ml_patient_features")
    assert {r["_run_id"] for r in rows} == {"run-full"}


def test_age_is_a_band_at_the_index_date(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = full_lake
    f = features(lake)
    assert f["p-old"]["age_band"] == "90+"
    assert f["p-diab"]["age_band"] == "50-54"  # index = last observation 2023-06-01
    assert f["p-htn"]["age_band"] == "35-39"  # 39 on 2025-06-01, 40 the next day
    assert f["p-none"]["age_band"] is None  # no encounter or observation: no index date
    columns = lake.read("gold.ml_patient_features").column_names
    assert not {"birth_date", "index_date", "age"} & set(columns)


def test_surviving_record_gives_demographics(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = full_lake
    f = features(lake)
    assert f["p-diab"]["gender"] == "male"
    assert f["p-old"]["encounter_count"] == 2  # the cancelled one does not count
    assert f["p-none"]["encounter_count"] == 0


def test_condition_flags(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = full_lake
    f = features(lake)
    assert (f["p-diab"]["has_diabetes"], f["p-diab"]["has_hypertension"]) == (True, False)
    assert (f["p-htn"]["has_diabetes"], f["p-htn"]["has_hypertension"]) == (False, True)
    assert f["p-none"]["has_diabetes"] is False  # the E10 diagnosis was refuted
    assert (f["p-old"]["has_diabetes"], f["p-old"]["has_hypertension"]) == (False, False)


def test_lab_last_and_mean(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = full_lake
    f = features(lake)
    assert f["p-diab"]["glucose_last"] == 140.0
    assert f["p-diab"]["glucose_mean"] == pytest.approx(120.0)  # the value in error is left out
    assert f["p-diab"]["hba1c_last"] == pytest.approx(7.2)
    assert f["p-htn"]["body_weight_last"] == 82.0
    assert f["p-htn"]["body_weight_mean"] == pytest.approx(81.0)
    assert f["p-htn"]["systolic_bp_mean"] == pytest.approx(150.0)
    assert f["p-old"]["heart_rate_last"] == 72.0
    assert f["p-none"]["glucose_mean"] is None


def test_medication_counts(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = full_lake
    f = features(lake)
    assert f["p-htn"]["medication_count"] == 2  # lisinopril and amlodipine; cancelled left out
    assert f["p-htn"]["medication_order_count"] == 3
    assert f["p-diab"]["medication_count"] == 0


def test_result_reports_inputs_and_tests(full_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = full_lake
    tables = ("patients", "encounters", "observations", "conditions", "medications", "vitals_1h")
    assert result.silver_versions == {f"silver.{t}": lake.version(f"silver.{t}") for t in tables}
    assert result.tests_passed > 20
    assert (result.tests_failed, result.tests_warned) == (0, 0)
    # dbt's working files live under the lake, not in the repository
    assert (lake.root / "gold" / "_dbt" / "target" / "run_results.json").is_file()
    assert result.log_path == lake.root / "gold" / "_dbt" / "logs" / "dbt.log"
    assert result.log_path.is_file()


@pytest.fixture(scope="module")
def sparse_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, GoldResult]:
    """A landing with patients and encounters only, one encounter dated before birth;
    silver.patients read at its first version although a second one exists."""
    lake = Lake(tmp_path_factory.mktemp("gold_sparse"))
    write_silver(
        lake, "patients", [patient("p1", date(1950, 1, 1)), patient("p2", date(1990, 5, 5))]
    )
    write_silver(
        lake,
        "patients",
        [
            patient("p1", date(1950, 1, 1)),
            patient("p2", date(1990, 5, 5)),
            patient("p3", date(2000, 1, 1)),
        ],
    )
    write_silver(
        lake,
        "encounters",
        [
            encounter("e1", "p1", "2020-01-01T00:00:00", "2020-01-01T01:00:00"),
            encounter("e2", "p2", "1989-01-01T00:00:00", "1989-01-01T01:00:00"),
        ],
    )
    return lake, build_gold(lake.root, run_id="run-sparse", silver_versions={"silver.patients": 0})


def test_missing_silver_tables_build_empty(sparse_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = sparse_lake
    f = features(lake)
    assert set(f) == {"p1", "p2"}
    assert f["p1"]["medication_count"] == 0
    assert f["p1"]["has_diabetes"] is False
    assert f["p1"]["glucose_last"] is None
    assert f["p1"]["age_band"] == "70-74"
    for table in ("observations", "conditions", "medications"):
        assert lake.count(f"silver.{table}") == 0
        assert result.silver_versions[f"silver.{table}"] == 0


def test_silver_is_read_at_the_pinned_version(sparse_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = sparse_lake
    assert lake.version("silver.patients") == 1
    assert result.silver_versions["silver.patients"] == 0
    assert set(features(lake)) == {"p1", "p2"}  # p3 only exists in version 1


def test_unknown_or_future_versions_are_refused(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    write_silver(lake, "patients", [patient("p1", date(1950, 1, 1))])
    with pytest.raises(ValueError, match="silver.patients has versions 0..0"):
        build_gold(lake.root, run_id="r", silver_versions={"silver.patients": 4})
    with pytest.raises(ValueError, match="not silver sources"):
        build_gold(lake.root, run_id="r", silver_versions={"bronze.fhir_resources": 0})


def test_warning_test_does_not_block_gold(sparse_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = sparse_lake
    assert result.tests_warned == 1  # assert_no_encounter_before_birth, on p2
    assert features(lake)["p2"]["age_band"] is None  # born after the index date: no band
    assert result.table("gold.ml_patient_features").rows == 2


def test_failing_tests_raise_and_write_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    write_silver(
        lake,
        "patients",
        [
            patient("p1", date(1950, 1, 1), source_key="dup"),
            patient("p2", date(1960, 1, 1), source_key="dup"),
        ],
    )
    write_silver(
        lake,
        "encounters",
        [
            encounter("e1", "p1", "2020-01-02T00:00:00", "2020-01-01T00:00:00"),
        ],
    )
    write_silver(
        lake,
        "observations",
        [
            obs("o1", "p1", "29463-7", 176.0, "[lb_av]", "2020-01-02T00:00:00"),
        ],
    )
    with pytest.raises(GoldBuildError) as raised:
        build_gold(lake.root, run_id="run-bad")
    message = str(raised.value)
    assert "unique_stg_silver__patients_source_key" in message
    assert "assert_encounter_ends_after_start" in message
    assert raised.value.tests_failed == 2
    assert "assert_key_labs_in_canonical_unit" not in message  # a warning: the pound weight is left out of the mart
    assert not lake.exists("gold.ml_patient_features")


def test_unknown_target_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dbt target 'postgres'"):
        build_gold(tmp_path, run_id="run-pg", target="postgres")  # type: ignore[arg-type]


# --- gold.ml_vitals_windows ---------------------------------------------------------------------

HR, SPO2, TEMP, SYS, DIA, MAP = "8867-4", "59408-5", "8310-5", "8480-6", "8462-4", "8478-0"
UNITS = {HR: "/min", SPO2: "%", TEMP: "Cel", SYS: "mm[Hg]", DIA: "mm[Hg]", MAP: "mm[Hg]"}
VITALS = ("heart_rate", "spo2", "respiratory_rate", "systolic_bp", "diastolic_bp")
VITALS += ("body_temperature",)


def hour(
    person_key: str,
    code: str,
    when: str,
    mean: float | None,
    count: int,
    *,
    low: float | None = None,
    high: float | None = None,
    last: float | None = None,
    device: str = "monitor",
    filled: bool = False,
) -> dict[str, Any]:
    """One silver.vitals_1h bucket; min, max and last default to the mean."""
    return {
        "person_key": person_key,
        "device_id": device,
        "code": code,
        "value_unit": UNITS[code],
        "bucket_start": at(when),
        "value_mean": mean,
        "value_min": mean if low is None else low,
        "value_max": mean if high is None else high,
        "value_last": mean if last is None else last,
        "sample_count": count,
        "filled": filled,
    }


@pytest.fixture(scope="module")
def vitals_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, GoldResult]:
    """Two people's hourly vitals: p-v1 in two 6-hour windows with an empty window between
    (a long gap) and two devices on heart rate in one hour; p-v2 in one window, plus a mean
    arterial pressure (not a window vital) alone in a later window."""
    lake = Lake(tmp_path_factory.mktemp("gold_vitals"))
    write_silver(lake, "patients", [patient("p-v1", date(1960, 1, 1)), patient("p-v2", None)])
    write_silver(
        lake,
        "vitals_1h",
        [
            # window 2024-03-01 00:00–06:00
            hour("p-v1", HR, "2024-03-01T00:00:00", 70.0, 10, low=65.0, high=75.0, last=72.0),
            hour("p-v1", HR, "2024-03-01T01:00:00", 80.0, 30, low=78.0, high=90.0, last=85.0),
            hour("p-v1", HR, "2024-03-01T01:00:00", 90.0, 10, high=99.0, last=91.0, device="watch"),
            # carried forward, no sample: counts nowhere
            hour("p-v1", HR, "2024-03-01T02:00:00", None, 0, last=85.0, filled=True),
            hour("p-v1", SPO2, "2024-03-01T03:00:00", 97.0, 60, low=95.0, high=99.0, last=96.0),
            # the gap 06:00–12:00: an empty bucket, no window row
            hour("p-v1", HR, "2024-03-01T07:00:00", None, 0, last=None),
            # window 2024-03-01 12:00–18:00
            hour("p-v1", HR, "2024-03-01T12:00:00", 60.0, 5, low=58.0, high=62.0, last=61.0),
            hour("p-v1", HR, "2024-03-01T17:00:00", 66.0, 15, low=64.0, high=70.0, last=65.0),
            hour("p-v1", TEMP, "2024-03-01T13:00:00", 37.2, 1),
            hour("p-v2", SYS, "2024-03-01T05:00:00", 120.0, 2, device="cuff"),
            hour("p-v2", DIA, "2024-03-01T05:00:00", 80.0, 2, device="cuff"),
            hour("p-v2", MAP, "2024-03-02T00:00:00", 93.0, 2, device="cuff"),
        ],
    )
    return lake, build_gold(lake.root, run_id="run-vitals")


def windows(lake: Lake) -> list[dict[str, Any]]:
    return lake.read("gold.ml_vitals_windows").to_pylist()


def test_one_row_per_person_and_window_with_samples(
    vitals_lake: tuple[Lake, GoldResult],
) -> None:
    lake, result = vitals_lake
    rows = windows(lake)
    assert [(r["person_key"], r["window_start"], r["window_end"]) for r in rows] == [
        ("p-v1", at("2024-03-01T00:00:00"), at("2024-03-01T06:00:00")),
        ("p-v1", at("2024-03-01T12:00:00"), at("2024-03-01T18:00:00")),
        ("p-v2", at("2024-03-01T00:00:00"), at("2024-03-01T06:00:00")),
    ]
    assert [r["sample_count"] for r in rows] == [110, 21, 4]
    assert {r["_run_id"] for r in rows} == {"run-vitals"}
    assert result.table("ml_vitals_windows").rows == 3
    assert result.silver_versions["silver.vitals_1h"] == lake.version("silver.vitals_1h")


def test_window_vitals_pool_devices_and_weight_by_samples(
    vitals_lake: tuple[Lake, GoldResult],
) -> None:
    lake, _ = vitals_lake
    first, second, other = windows(lake)
    # (70·10 + 80·30 + 90·10) / 50: the watch's hour pooled with the monitor's
    assert first["heart_rate_mean"] == pytest.approx(80.0)
    assert (first["heart_rate_min"], first["heart_rate_max"]) == (65.0, 99.0)
    # the last hour with samples is 01:00 (02:00 was only carried); the monitor measured most
    assert first["heart_rate_last"] == 85.0
    assert first["heart_rate_coverage"] == pytest.approx(2 / 6)
    assert (first["spo2_mean"], first["spo2_last"]) == (97.0, 96.0)
    assert first["spo2_coverage"] == pytest.approx(1 / 6)
    # (60·5 + 66·15) / 20
    assert second["heart_rate_mean"] == pytest.approx(64.5)
    assert second["heart_rate_last"] == 65.0
    assert second["heart_rate_coverage"] == pytest.approx(2 / 6)
    assert second["body_temperature_mean"] == pytest.approx(37.2)
    assert (other["systolic_bp_mean"], other["diastolic_bp_last"]) == (120.0, 80.0)


def test_unmeasured_window_vitals_stay_null(vitals_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = vitals_lake
    first, _, other = windows(lake)
    for row, missing in ((first, "respiratory_rate"), (first, "body_temperature"), (other, "spo2")):
        stats = [row[f"{missing}_{s}"] for s in ("mean", "min", "max", "last")]
        assert stats == [None] * 4
        assert row[f"{missing}_coverage"] == 0.0
    assert other["heart_rate_mean"] is None


def test_vitals_windows_suite_bounds_are_silvers(vitals_lake: tuple[Lake, GoldResult]) -> None:
    import json

    import yaml

    from medlake.jobs.clean.ranges import impossible_ranges

    silver = impossible_ranges()
    root = Path(__file__).parents[2]
    suite = json.loads((root / "expectations/suites/gold_ml_vitals_windows.json").read_text())
    bounded = [e for e in suite["expectations"] if "loinc" in e["meta"]]
    dbt_vars = yaml.safe_load((root / "dbt/dbt_project.yml").read_text())["vars"]
    features = {v["feature"]: (code, v) for code, v in dbt_vars["window_vitals"].items()}
    assert set(features) == set(VITALS)
    assert {e["kwargs"]["column"] for e in bounded} == {
        f"{f}_{s}" for f in VITALS for s in ("mean", "min", "max", "last")
    }
    for e in bounded:
        code, var = features[e["kwargs"]["column"].rsplit("_", 1)[0]]
        bound = silver[(e["meta"]["loinc"], e["meta"]["ucum"])]
        assert (e["meta"]["loinc"], e["meta"]["ucum"]) == (code, var["unit"])
        assert (e["kwargs"]["min_value"], e["kwargs"]["max_value"]) == (bound.low, bound.high)
        assert (var["low"], var["high"]) == (bound.low, bound.high)
        assert bound.source == e["meta"]["silver_rule"]


def test_a_lake_without_vitals_builds_an_empty_windows_mart(
    sparse_lake: tuple[Lake, GoldResult],
) -> None:
    lake, result = sparse_lake
    assert lake.count("silver.vitals_1h") == 0
    assert result.table("ml_vitals_windows").rows == lake.count("gold.ml_vitals_windows") == 0


@pytest.fixture(scope="module")
def sample_hospital_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """The sample hospital (with its vitals streams) through ingest, clean, gate and gold."""
    from medlake.jobs import pipeline
    from medlake.jobs.stage import StageResult
    from medlake.sample.landing import generate

    root, run, key = tmp_path_factory.mktemp("gold_sample_hospital"), "run-sample", b"\x07" * 32
    landing = generate(root / "landing", patients=24, seed=7).out
    lake = Lake(root / "lake")
    # as task_ingest and task_clean do, without their settings and lineage
    now = datetime.now(UTC)
    ingested = [
        pipeline.ingest(landing, lake, run_id=run, now=now),
        pipeline.ingest_hl7v2(landing, lake, run_id=run, now=now),
        *(
            pipeline.source_module(kind).ingest(landing, lake, run_id=run, now=now)
            for kind in pipeline.SOURCES
        ),
    ]
    versions = StageResult.merge(ingested).versions
    pipeline.clean(lake, run_id=run, key=key, max_shift_days=365)
    for kind in pipeline.SOURCES:
        pipeline.source_module(kind).to_staging(
            lake, run_id=run, key=key, max_shift_days=365, versions=versions
        )
    pipeline.task_gate(str(lake.root), run_id=run)
    pipeline.task_gold(str(lake.root), run_id=run)
    return lake


def test_the_sample_hospitals_vitals_reach_the_windows_mart(sample_hospital_lake: Lake) -> None:
    lake = sample_hospital_lake
    hourly = lake.read("silver.vitals_1h").to_pylist()
    rows = windows(lake)
    assert rows
    measured = {r["person_key"] for r in hourly if r["sample_count"] > 0 and r["code"] != MAP}
    assert {r["person_key"] for r in rows} == measured
    # every sample of the six vitals is in exactly one window
    assert sum(r["sample_count"] for r in rows) == sum(
        r["sample_count"] for r in hourly if r["code"] != MAP
    )
    assert all(r["window_start"].hour % 6 == 0 and r["window_start"].minute == 0 for r in rows)
    assert max(r["heart_rate_coverage"] for r in rows) > 0


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"spo2_max": 140.0}, "spo2_max_range"),
        ({"respiratory_rate_coverage": None}, "respiratory_rate_coverage_not_null"),
        ({"window_start": at("2024-03-01T12:00:00")}, "person_window_unique"),
    ],
)
def test_the_windows_suite_refuses_a_wrong_window(
    vitals_lake: tuple[Lake, GoldResult], tmp_path: Path, change: dict[str, Any], rule: str
) -> None:
    from medlake.expectations.gate import GateFailed, validate_gold

    lake, _ = vitals_lake
    built = lake.read("gold.ml_vitals_windows")
    rows = built.to_pylist()
    rows[0].update(change)
    wrong = pa.Table.from_pylist(rows, schema=built.schema)
    name = "gold.ml_vitals_windows"

    with pytest.raises(GateFailed) as refused:
        validate_gold(Lake(tmp_path), run_id="run-wrong", tables=[name], data={name: wrong})

    (result,) = refused.value.results
    assert [f.rule for f in result.table_failures] == [rule]
