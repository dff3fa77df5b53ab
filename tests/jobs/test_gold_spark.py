"""The spark dbt target: the same project built by dbt-spark (session method, delta-spark) gives
the same gold tables as the duckdb target, row for row, OMOP ids included."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from medlake.config import SparkSettings
from medlake.engines.spark import spark_session
from medlake.jobs.gold import GoldResult, build_gold
from medlake.lake import Lake
from medlake.registry import spec

pytestmark = [pytest.mark.spark, pytest.mark.e2e, pytest.mark.slow]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

MARTS = (
    "ml_patient_features",
    "ml_vitals_windows",
    "omop_person",
    "omop_visit_occurrence",
    "omop_condition_occurrence",
    "omop_drug_exposure",
    "omop_measurement",
    "omop_observation",
    "omop_death",
    "omop_observation_period",
)


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=UTC)


def write_silver(lake: Lake, table: str, rows: list[dict[str, Any]]) -> None:
    """Write silver rows in the registered schema, with lineage columns filled in."""
    name = f"silver.{table}"
    full = [
        {"_record_hash": f"{table}-{i}", "_source_kind": "fhir", "_run_id": "silver-run", **row}
        for i, row in enumerate(rows)
    ]
    lake.write(name, pa.Table.from_pylist(full, schema=spec(name).schema), mode="overwrite")


def patient(person_key: str, birth: date | None, **more: Any) -> dict[str, Any]:
    return {
        "person_key": person_key,
        "source_key": f"src-{person_key}",
        "source_system": "ehr",
        "gender": "female",
        "birth_date": birth,
        **more,
    }


def encounter(
    key: str, person_key: str, start: str, end: str | None, **more: Any
) -> dict[str, Any]:
    return {
        "encounter_key": key,
        "person_key": person_key,
        "status": "finished",
        "class_code": "AMB",
        "start_at": at(start),
        "end_at": at(end) if end else None,
        **more,
    }


def obs(
    key: str,
    person_key: str,
    code: str,
    value: float | None,
    unit: str | None,
    when: str,
    **more: Any,
) -> dict[str, Any]:
    return {
        "observation_key": key,
        "person_key": person_key,
        "encounter_key": "e1" if person_key == "p-diab" else None,
        "status": "final",
        "category": "laboratory",
        "code_system": LOINC,
        "code": code,
        "value_num": value,
        "value_unit": unit,
        "effective_at": at(when),
        **more,
    }


def write_sample_silver(lake: Lake) -> None:
    """Five people across every silver table; silver.patients has a second version that the
    builds must not see (they pin version 0)."""
    people = [
        patient("p-diab", date(1970, 1, 15), gender="male", zip3="021", race="white"),
        patient("p-htn", date(1985, 6, 2), ethnicity="hispanic"),
        patient("p-old", date(1920, 3, 10), deceased=True, deceased_date=date(2024, 2, 3)),
        patient("p-none", None, gender=None),
        patient("p-leap", date(2000, 2, 29), gender="other"),
    ]
    write_silver(lake, "patients", people)
    write_silver(lake, "patients", [*people, patient("p-late", date(1990, 1, 1))])
    write_silver(
        lake,
        "encounters",
        [
            encounter("e1", "p-diab", "2023-03-01T08:00:00", "2023-03-01T09:30:00"),
            encounter(
                "e2", "p-diab", "2023-12-31T23:30:00", "2024-01-02T01:00:00", class_code="IMP"
            ),
            encounter("e3", "p-htn", "2025-05-20T08:00:00", None, class_code="EMER"),
            encounter(
                "e4", "p-old", "2024-02-01T09:00:00", "2024-02-03T12:00:00", status="cancelled"
            ),
            encounter("e5", "p-leap", "2024-02-29T10:00:00", "2024-02-29T10:20:00"),
        ],
    )
    write_silver(
        lake,
        "observations",
        [
            obs(
                "o1",
                "p-diab",
                "2339-0",
                100.0,
                "mg/dL",
                "2023-05-01T08:00:00",
                ref_low=70.0,
                ref_high=99.0,
            ),
            obs("o2", "p-diab", "2339-0", 140.5, "mg/dL", "2023-06-01T08:00:00"),
            obs("o3", "p-diab", "4548-4", 7.2, "%", "2023-06-01T08:00:00"),
            obs(
                "o4", "p-htn", "29463-7", 80.25, "kg", "2025-05-20T08:00:00", category="vital-signs"
            ),
            obs(
                "o5",
                "p-htn",
                "8480-6",
                150.0,
                "mm[Hg]",
                "2025-05-20T08:00:00",
                category="vital-signs",
            ),
            obs(
                "o6", "p-old", "8867-4", 72.0, "/min", "2024-02-01T10:00:00", category="vital-signs"
            ),
            obs(
                "o7",
                "p-old",
                "72166-2",
                None,
                None,
                "2024-02-01T10:00:00",
                category="social-history",
                code_system=LOINC,
                value_code="8517006",
                value_text="Ex-smoker",
            ),
            obs("o8", "p-leap", "2160-0", 0.9, "mg/dL", "2024-02-29T10:10:00", status="amended"),
        ],
    )
    write_silver(
        lake,
        "conditions",
        [
            {
                "condition_key": "c1",
                "person_key": "p-diab",
                "encounter_key": "e1",
                "verification_status": "confirmed",
                "clinical_status": "active",
                "code_system": ICD10CM,
                "code": "E119",
                "icd10cm_code": "E11.9",
                "onset_at": at("2023-03-01T08:00:00"),
            },
            {
                "condition_key": "c2",
                "person_key": "p-htn",
                "verification_status": "confirmed",
                "code_system": SNOMED,
                "code": "38341003",
                "snomed_code": "38341003",
                "recorded_date": date(2025, 5, 20),
            },
            {
                "condition_key": "c3",
                "person_key": "p-old",
                "verification_status": "refuted",
                "code_system": ICD10CM,
                "code": "J45.909",
                "icd10cm_code": "J45.909",
                "onset_at": at("2024-02-01T09:00:00"),
                "abatement_at": at("2024-02-02T09:00:00"),
            },
        ],
    )
    write_silver(
        lake,
        "medications",
        [
            {
                "medication_key": "m1",
                "person_key": "p-htn",
                "status": "active",
                "code_system": RXNORM,
                "code": "314076",
                "rxnorm_code": "314076",
                "authored_at": at("2025-05-20T08:10:00"),
            },
            {
                "medication_key": "m2",
                "person_key": "p-htn",
                "status": "active",
                "code_system": RXNORM,
                "code": "197361",
                "rxnorm_code": "197361",
                "authored_at": at("2025-05-20T08:11:00"),
            },
            {
                "medication_key": "m3",
                "person_key": "p-diab",
                "status": "cancelled",
                "code_system": RXNORM,
                "code": "860975",
                "rxnorm_code": "860975",
                "authored_at": at("2023-03-01T08:20:00"),
            },
        ],
    )

    def hour(person: str, code: str, unit: str, when: str, mean: float, count: int) -> dict[str, Any]:
        return {"person_key": person, "device_id": "monitor", "code": code, "value_unit": unit,
                "bucket_start": at(when), "value_mean": mean, "value_min": mean - 2,
                "value_max": mean + 2, "value_last": mean + 1, "sample_count": count,
                "filled": False}

    write_silver(
        lake,
        "vitals_1h",
        [
            hour("p-htn", "8867-4", "/min", "2025-05-20T07:00:00", 72.0, 60),
            hour("p-htn", "8867-4", "/min", "2025-05-20T08:00:00", 80.0, 20),
            hour("p-htn", "59408-5", "%", "2025-05-20T08:00:00", 97.0, 10),
            hour("p-diab", "8310-5", "Cel", "2023-03-01T13:00:00", 37.4, 2),
        ],
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """The local Spark session with delta-spark; stopped at the end unless it ran before."""
    running = SparkSession.getActiveSession()
    session = spark_session(SparkSettings(master="local[2]"), app_name="medlake-tests")
    yield session
    if running is None:
        session.stop()


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, spark: SparkSession
) -> dict[str, tuple[Lake, GoldResult]]:
    """The same silver in two lakes, gold built with each target."""
    out = {}
    for target in ("duckdb", "spark"):
        lake = Lake(tmp_path_factory.mktemp(f"gold_{target}"))
        write_sample_silver(lake)
        result = build_gold(
            lake.root, run_id="run-same", target=target, silver_versions={"silver.patients": 0}
        )
        out[target] = (lake, result)
    return out


def rows(lake: Lake, mart: str) -> list[dict[str, Any]]:
    return lake.read(f"gold.{mart}").to_pylist()


def test_both_targets_write_the_same_marts(built: dict[str, tuple[Lake, GoldResult]]) -> None:
    (duck, duck_result), (spark, spark_result) = built["duckdb"], built["spark"]
    assert {t.name for t in spark_result.tables} == {f"gold.{m}" for m in MARTS}
    assert {t.name for t in duck_result.tables} == {f"gold.{m}" for m in MARTS}
    for mart in MARTS:
        assert rows(spark, mart) == rows(duck, mart), mart
        assert rows(duck, mart), f"{mart} is empty: the comparison proves nothing"


def test_both_targets_write_the_same_schemas(built: dict[str, tuple[Lake, GoldResult]]) -> None:
    (duck, _), (spark, _) = built["duckdb"], built["spark"]
    for mart in MARTS:
        duck_schema = duck.read(f"gold.{mart}").schema
        spark_schema = spark.read(f"gold.{mart}").schema
        assert spark_schema.names == duck_schema.names, mart
        for d, s in zip(duck_schema, spark_schema, strict=True):
            assert (s.name, s.nullable) == (d.name, d.nullable), mart
            assert _compatible(s.type, d.type), f"{mart}.{d.name}: spark {s.type}, duckdb {d.type}"


def _compatible(a: pa.DataType, b: pa.DataType) -> bool:
    """Same type, string and large string being one."""

    def norm(t: pa.DataType) -> pa.DataType:
        return pa.string() if pa.types.is_large_string(t) or pa.types.is_string_view(t) else t

    return norm(a) == norm(b)


def test_omop_ids_are_the_same_on_both_engines(built: dict[str, tuple[Lake, GoldResult]]) -> None:
    (duck, _), (spark, _) = built["duckdb"], built["spark"]
    spark_ids = {r["person_source_value"]: r["person_id"] for r in rows(spark, "omop_person")}
    duck_ids = {r["person_source_value"]: r["person_id"] for r in rows(duck, "omop_person")}
    assert spark_ids == duck_ids
    # p-none has no birth date (not an OMOP person), p-late is in silver.patients version 1 only
    assert sorted(spark_ids) == ["p-diab", "p-htn", "p-leap", "p-old"]
    # the documented id: the first 60 bits (15 hex digits) of the key's MD5
    for key, person_id in spark_ids.items():
        assert person_id == int(hashlib.md5(key.encode()).hexdigest()[:15], 16)


def test_spark_marts_are_delta_tables_delta_rs_reads(
    built: dict[str, tuple[Lake, GoldResult]],
) -> None:
    lake, result = built["spark"]
    for mart in MARTS:
        table = DeltaTable(str(lake.root / "gold" / mart))
        assert table.version() == result.table(mart).version
        rows_read = table.to_pyarrow_dataset().to_table(use_threads=False).num_rows
        assert rows_read == result.table(mart).rows
    # dbt-spark's own tables are Delta too, in the build's working folder, the enforced
    # contract's NOT NULL columns held by Delta CHECK constraints
    built_by_dbt = DeltaTable(str(lake.root / "gold" / "_dbt" / "spark" / "gold" / "omop_person"))
    constraints = built_by_dbt.metadata().configuration
    assert constraints["delta.constraints.person_id_not_null"] == "person_id is not null"
    assert "delta.constraints.year_of_birth_not_null" in constraints


def test_spark_build_reports_tests_and_imputation(
    built: dict[str, tuple[Lake, GoldResult]],
) -> None:
    (_, duck_result), (_, spark_result) = built["duckdb"], built["spark"]
    assert spark_result.tests_passed == duck_result.tests_passed > 0
    assert spark_result.tests_warned == duck_result.tests_warned
    assert spark_result.silver_versions["silver.patients"] == 0
    assert dict(spark_result.imputed) == dict(duck_result.imputed)


def test_a_second_spark_build_in_the_same_lake_loads_each_seed_once(
    built: dict[str, tuple[Lake, GoldResult]],
) -> None:
    """The next run's gold: dbt-spark finds last build's seed tables at their locations, which
    must not keep their rows under the new load (the seed's uniqueness test failed the build)."""
    lake, first = built["spark"]
    again = build_gold(lake.root, run_id="run-again", target="spark", silver_versions={"silver.patients": 0})
    assert again.tests_passed == first.tests_passed and again.tests_failed == 0
    seed = DeltaTable(str(lake.root / "gold" / "_dbt" / "spark" / "seeds" / "omop_source_to_concept"))
    rows_now = seed.to_pyarrow_dataset().to_table(use_threads=False).num_rows
    csv = Path(__file__).resolve().parents[2] / "dbt" / "seeds" / "omop_source_to_concept.csv"
    assert rows_now == len(csv.read_text().strip().splitlines()) - 1  # the CSV's rows, once
    assert {t.name: t.rows for t in again.tables} == {t.name: t.rows for t in first.tables}


def test_spark_target_refuses_an_athena_vocabulary(tmp_path: Path) -> None:
    """Refused before anything runs, rather than a dbt compile error halfway through."""
    with pytest.raises(ValueError, match="vocabulary_dir is not supported on the spark target"):
        build_gold(tmp_path, run_id="r", target="spark", vocabulary_dir=tmp_path)
    assert not (tmp_path / "gold").exists()
