"""One transform, two engines: the embedded engine and Spark write the same Delta tables.

Bronze rows are real Synthea FHIR R4 Observations plus two broken records. The same pure
transform runs through ``EmbeddedEngine`` (delta-rs) and ``SparkEngine`` (delta-spark,
``mapInArrow``); both outputs are read back with delta-rs and must be equal, and Spark must read
what delta-rs wrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark import cloudpickle
from pyspark.sql import SparkSession

from medlake.config import SparkSettings
from medlake.engines import Applied, BatchTransform, DeltaSource, Engine, QuarantineSink, Target
from medlake.engines.embedded import EmbeddedEngine
from medlake.engines.spark import SparkEngine, delta_jars, spark_schema
from medlake.lake import Lake
from medlake.quarantine import Split, by_rule, quarantine_rows
from medlake.registry import BRONZE_FHIR, SILVER_OBSERVATIONS

pytestmark = [pytest.mark.spark]

# Spark's Python workers cannot import this test module (it is not on their path), so the
# transform defined below travels to them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CORPUS = (
    Path(__file__).resolve().parents[1] / "corpus" / "fhir" / "synthea_bundles_covid_r4"
)
OBSERVATIONS = 100
INGESTED_AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
TEST_KEY = bytes(range(32))

#: what the test's own transform writes; value_text is large_string to prove the type mapping
OBSERVATION_ROWS = pa.schema(
    [
        pa.field("observation_id", pa.string(), nullable=False),
        pa.field("subject", pa.string()),
        pa.field("status", pa.string()),
        pa.field("code_system", pa.string()),
        pa.field("code", pa.string(), nullable=False),
        pa.field("code_display", pa.string()),
        pa.field("value_num", pa.float64()),
        pa.field("value_unit", pa.string()),
        pa.field("value_text", pa.large_string()),
        pa.field("effective_at", pa.timestamp("us", tz="UTC")),
        pa.field("_record_hash", pa.string(), nullable=False),
    ]
)


def observation_rows(bronze: pa.Table) -> Split:
    """One row per FHIR Observation: its first code, its value and when it was taken."""
    good: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for rec in bronze.select(["raw", "_source_file", "_source_offset", "_record_hash"]).to_pylist():
        where = {
            "source_file": rec["_source_file"],
            "source_offset": rec["_source_offset"],
            "record_hash": rec["_record_hash"],
        }
        try:
            obs = json.loads(rec["raw"])
        except json.JSONDecodeError as exc:
            rejected.append(
                {**where, "rule_id": "parse.bad_json", "reason": f"raw is not JSON: {exc.msg}"}
            )
            continue
        codings = (obs.get("code") or {}).get("coding") or []
        if not codings:
            rejected.append(
                {
                    **where,
                    "rule_id": "map.observation_no_code",
                    "reason": "the Observation has no code.coding",
                    "record_id": obs.get("id"),
                }
            )
            continue
        quantity = obs.get("valueQuantity") or {}
        concept = obs.get("valueCodeableConcept") or {}
        effective = obs.get("effectiveDateTime")
        good.append(
            {
                "observation_id": obs["id"],
                "subject": (obs.get("subject") or {}).get("reference"),
                "status": obs.get("status"),
                "code_system": codings[0].get("system"),
                "code": codings[0]["code"],
                "code_display": codings[0].get("display"),
                "value_num": quantity.get("value"),
                "value_unit": quantity.get("code") or quantity.get("unit"),
                "value_text": concept.get("text"),
                "effective_at": datetime.fromisoformat(effective).astimezone(UTC)
                if effective
                else None,
                "_record_hash": rec["_record_hash"],
            }
        )
    return Split(
        good=pa.Table.from_pylist(good, schema=OBSERVATION_ROWS),
        quarantined=quarantine_rows(rejected, table_name="silver.observations"),
    )


@dataclass(frozen=True)
class Case:
    """A transform under test, the schema it writes and the column that keys its rows."""

    fn: BatchTransform
    good_schema: pa.Schema
    key: str
    rules: dict[str, int] | None  # the quarantine rule counts expected, when known


def own_transform() -> Case:
    return Case(
        observation_rows,
        OBSERVATION_ROWS,
        "observation_id",
        rules={"parse.bad_json": 1, "map.observation_no_code": 1},
    )


def fhir_ingest() -> Case:
    from medlake.jobs.ingest.fhir import observations_from_bronze

    fn = functools.partial(observations_from_bronze, key=TEST_KEY, max_shift_days=365)
    return Case(fn, SILVER_OBSERVATIONS.schema, "observation_key", rules=None)


def bronze_observations(limit: int = OBSERVATIONS) -> pa.Table:
    """Bronze rows: ``limit`` Synthea Observations, one without a code and one that is not JSON."""
    files = sorted(CORPUS.glob("*.json"))
    assert files, f"no Synthea bundles under {CORPUS}"
    rows: list[dict[str, Any]] = []
    for path in files:
        for offset, entry in enumerate(json.loads(path.read_text())["entry"]):
            resource = entry["resource"]
            if resource["resourceType"] == "Observation" and len(rows) < limit:
                rows.append(_bronze_row(path.name, offset, resource["id"], json.dumps(resource)))
    assert len(rows) == limit, f"the corpus holds fewer than {limit} Observations"
    no_code = {k: v for k, v in json.loads(rows[0]["raw"]).items() if k != "code"} | {
        "id": "obs-no-code"
    }
    rows.append(_bronze_row("broken.ndjson", 0, "obs-no-code", json.dumps(no_code)))
    rows.append(
        _bronze_row("broken.ndjson", 1, "obs-bad-json", '{"resourceType": "Observation", "id": ')
    )
    return pa.Table.from_pylist(rows, schema=BRONZE_FHIR.schema)


def _bronze_row(source_file: str, offset: int, resource_id: str, raw: str) -> dict[str, Any]:
    return {
        "resource_type": "Observation",
        "resource_id": resource_id,
        "raw": raw,
        "_source_file": source_file,
        "_source_offset": offset,
        "_ingested_at": INGESTED_AT,
        "_record_hash": hashlib.sha256(raw.encode()).hexdigest(),
        "_run_id": "test-bronze",
    }


def apply(
    engine: Engine,
    fn: BatchTransform,
    *,
    source: str,
    target: str,
    quarantine: str,
    schema: pa.Schema,
    version: int | None = None,
) -> Applied:
    """A batch-local step from one Delta table to another, its quarantine stamped ``test-run``."""
    return engine.batch_local(
        fn,
        source=DeltaSource(source, version=version),
        target=Target(target, schema),
        quarantine=QuarantineSink(quarantine, run_id="test-run"),
    )


def read_sorted(uri: str, first: str, *, drop: tuple[str, ...] = ()) -> pa.Table:
    """A Delta table read with delta-rs, without ``drop``, sorted by ``first`` then every column."""
    table = DeltaTable(uri).to_pyarrow_dataset().to_table(use_threads=False)
    table = table.drop_columns(list(drop))
    order = [first] + [c for c in table.column_names if c != first]
    return table.sort_by([(c, "ascending") for c in order])


@pytest.mark.parametrize(
    "make_case",
    [
        pytest.param(own_transform, id="test-transform"),
        pytest.param(fhir_ingest, id="fhir-observations"),
    ],
)
def test_both_engines_write_the_same_delta_tables(
    spark: SparkSession, tmp_path: Path, make_case: Callable[[], Case]
) -> None:
    case = make_case()
    lake = Lake(tmp_path / "lake")
    bronze = bronze_observations()
    lake.write("bronze.fhir_resources", bronze, mode="overwrite")

    applied: dict[str, Applied] = {}
    engines: list[Engine] = [EmbeddedEngine(batch_rows=16), SparkEngine(spark)]
    for engine in engines:
        applied[engine.name] = apply(
            engine,
            case.fn,
            source=lake.uri("bronze.fhir_resources"),
            target=str(tmp_path / engine.name / "observations"),
            quarantine=str(tmp_path / engine.name / "quarantine"),
            schema=case.good_schema,
        )
    embedded, spark_ = applied["embedded"], applied["spark"]
    assert embedded.rows_in == spark_.rows_in == bronze.num_rows
    assert (spark_.good, spark_.quarantined) == (embedded.good, embedded.quarantined)
    assert embedded.quarantined >= 2, (
        "the record without a code and the invalid JSON must be quarantined"
    )
    for name, result in applied.items():
        assert result.target_version == DeltaTable(str(tmp_path / name / "observations")).version()

    # What Spark wrote is a Delta table delta-rs reads, equal to the embedded engine's: the same
    # columns, types and NOT NULLs in the Delta log, and the same rows.
    targets = {name: str(tmp_path / name / "observations") for name in applied}
    assert DeltaTable(targets["spark"]).schema() == DeltaTable(targets["embedded"]).schema()
    good = {name: read_sorted(uri, case.key) for name, uri in targets.items()}
    assert good["spark"].num_rows == embedded.good > 0
    assert good["spark"].schema == good["embedded"].schema
    assert good["spark"].to_pylist() == good["embedded"].to_pylist()

    quarantines = {name: str(tmp_path / name / "quarantine") for name in applied}
    assert DeltaTable(quarantines["spark"]).schema() == DeltaTable(quarantines["embedded"]).schema()
    bad = {
        name: read_sorted(uri, "quarantine_id", drop=("quarantined_at",))
        for name, uri in quarantines.items()
    }
    assert bad["spark"].schema == bad["embedded"].schema
    assert bad["spark"].to_pylist() == bad["embedded"].to_pylist()
    if case.rules is not None:
        assert by_rule(bad["spark"]) == case.rules

    # The reverse direction: Spark reads what delta-rs wrote, NOT NULLs included.
    from_embedded = spark.read.format("delta").load(targets["embedded"])
    assert from_embedded.schema == spark_schema(case.good_schema)
    as_arrow = from_embedded.toArrow().cast(good["embedded"].schema)
    order = [case.key] + [c for c in as_arrow.column_names if c != case.key]
    assert (
        as_arrow.sort_by([(c, "ascending") for c in order]).to_pylist()
        == good["embedded"].to_pylist()
    )


def test_spark_engine_reads_the_pinned_source_version_and_overwrites(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    bronze = bronze_observations(limit=12)  # 12 Observations, then the two broken records
    first_version = lake.write("bronze.fhir_resources", bronze.slice(0, 10), mode="overwrite")
    lake.write("bronze.fhir_resources", bronze.slice(10), mode="append")
    engine = SparkEngine(spark)
    target, quarantine = str(tmp_path / "observations"), str(tmp_path / "quarantine")
    # a target left by an older version of the step, with another schema
    write_deltalake(target, pa.table({"observation_id": ["stale"], "old_column": [1]}))

    def run(source_version: int | None) -> Applied:
        return apply(
            engine,
            observation_rows,
            source=lake.uri("bronze.fhir_resources"),
            target=target,
            quarantine=quarantine,
            schema=OBSERVATION_ROWS,
            version=source_version,
        )

    pinned = run(first_version)
    assert (pinned.rows_in, pinned.good, pinned.quarantined) == (10, 10, 0)
    assert not DeltaTable.is_deltatable(quarantine), "no quarantine rows, no quarantine write"
    replaced = DeltaTable(target).to_pyarrow_dataset().to_table(use_threads=False)
    assert replaced.column_names == OBSERVATION_ROWS.names
    assert sorted(replaced.column("observation_id").to_pylist()) == sorted(
        bronze.slice(0, 10).column("resource_id").to_pylist()
    )

    latest = run(None)
    assert (latest.rows_in, latest.good, latest.quarantined) == (14, 12, 2)
    # An overwrite with an unchanged schema is one commit, and keeps the NOT NULL columns.
    assert latest.target_version == pinned.target_version + 1
    written = DeltaTable(target).to_pyarrow_dataset().to_table(use_threads=False)
    assert written.num_rows == 12
    assert {f.name for f in written.schema if not f.nullable} == {
        "observation_id",
        "code",
        "_record_hash",
    }
    assert by_rule(DeltaTable(quarantine).to_pyarrow_dataset().to_table(use_threads=False)) == {
        "parse.bad_json": 1,
        "map.observation_no_code": 1,
    }


def test_missing_delta_jars_say_how_to_fetch_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"delta-spark_\*\.jar.*make env") as err:
        delta_jars(tmp_path / "jars")
    assert str(tmp_path / "jars") in str(err.value)


#: a side output of the test transform: each accepted Observation's units, found while parsed
UNIT_ROWS = pa.schema(
    [pa.field("_record_hash", pa.string(), nullable=False), pa.field("unit", pa.string())]
)


def observation_rows_and_units(bronze: pa.Table) -> Split:
    """The test transform, with a side output: the unit of every accepted row that has one, and
    an empty side output ``none`` (its table must still be written)."""
    split = observation_rows(bronze)
    with_unit = split.good.filter(pa.compute.is_valid(split.good.column("value_unit")))
    units = pa.table(
        {"_record_hash": with_unit.column("_record_hash"), "unit": with_unit.column("value_unit")},
        schema=UNIT_ROWS,
    )
    return Split(split.good, split.quarantined, sides={"units": units, "none": UNIT_ROWS.empty_table()})


def test_side_outputs_are_written_and_counted_alike_on_both_engines(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    bronze = bronze_observations()
    lake.write("bronze.fhir_resources", bronze, mode="overwrite")
    applied: dict[str, Applied] = {}
    for engine in (EmbeddedEngine(batch_rows=16), SparkEngine(spark)):
        out = tmp_path / engine.name
        applied[engine.name] = engine.batch_local(
            observation_rows_and_units,
            source=DeltaSource(lake.uri("bronze.fhir_resources")),
            target=Target(str(out / "observations"), OBSERVATION_ROWS),
            quarantine=QuarantineSink(str(out / "quarantine"), run_id="test-run"),
            sides={
                "units": Target(str(out / "units"), UNIT_ROWS),
                "none": Target(str(out / "none"), UNIT_ROWS),
            },
        )
    embedded, on_spark = applied["embedded"], applied["spark"]
    assert embedded.sides == on_spark.sides
    assert 0 < embedded.sides["units"] <= embedded.good and embedded.sides["none"] == 0
    assert embedded.quarantined_by == on_spark.quarantined_by == {"silver.observations": 2}
    units = {name: read_sorted(str(tmp_path / name / "units"), "_record_hash") for name in applied}
    assert units["embedded"].num_rows == embedded.sides["units"]
    assert units["spark"].to_pylist() == units["embedded"].to_pylist()
    good_units = read_sorted(str(tmp_path / "embedded" / "observations"), "_record_hash")
    expected = good_units.filter(pa.compute.is_valid(good_units.column("value_unit")))
    assert units["embedded"].column("unit").to_pylist() == expected.column("value_unit").to_pylist()
    for name in applied:  # an empty side is still a table a reader finds
        none = DeltaTable(str(tmp_path / name / "none"))
        assert none.to_pyarrow_dataset().count_rows() == 0
        assert none.schema().to_arrow().names == UNIT_ROWS.names


def test_a_side_output_without_a_target_is_refused(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write("bronze.fhir_resources", bronze_observations(10), mode="overwrite")
    # raised in the step, surfacing through delta-rs's writer (which wraps it)
    with pytest.raises(Exception, match="side output 'none', which has no target"):
        EmbeddedEngine().batch_local(
            observation_rows_and_units,
            source=DeltaSource(lake.uri("bronze.fhir_resources")),
            target=Target(str(tmp_path / "observations"), OBSERVATION_ROWS),
            quarantine=QuarantineSink(str(tmp_path / "quarantine"), run_id="test-run"),
            sides={"units": Target(str(tmp_path / "units"), UNIT_ROWS)},
        )


def committed_by(uri: str) -> list[str]:
    """Which engine made each commit of a Delta table, oldest first (delta-spark writes
    ``engineInfo``, delta-rs ``clientVersion``)."""
    history = sorted(DeltaTable(uri).history(), key=lambda c: c["version"])
    return [
        "delta-spark" if "Apache-Spark" in str(c.get("engineInfo", "")) else "delta-rs" for c in history
    ]


def test_a_lake_on_the_spark_engine_commits_its_writes_through_delta_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    from medlake.registry import LEDGER, QUARANTINE

    embedded = Lake(tmp_path / "embedded")
    on_spark = Lake(tmp_path / "spark").on(SparkEngine(spark).writer)
    bad = [
        {"quarantine_id": f"q{i}", "run_id": "r1", "stage": "silver", "table_name": "silver.observations",
         "rule_id": "r", "reason": f"bad {i}", "raw_record": "{}", "quarantined_at": INGESTED_AT,
         "status": "open"}
        for i in range(3)
    ]
    ledger_rows = [
        {"run_id": "r1", "stage": "ingest", "table_name": "bronze.fhir_resources", "records_in": n,
         "records_out": n, "quarantined": 0, "merged": 0, "bronze_only": 0, "balanced": True,
         "recorded_at": INGESTED_AT}
        for n in (5,)
    ]
    for lake in (embedded, on_spark):
        assert lake.insert_new(QUARANTINE.name, pa.Table.from_pylist(bad[:2])) == 2
        # a retried step: the two it inserted are not inserted again, the new one is
        assert lake.insert_new(QUARANTINE.name, pa.Table.from_pylist(bad)) == 1
        lake.ensure(LEDGER.name)
        assert lake.upsert(LEDGER.name, pa.Table.from_pylist(ledger_rows, schema=LEDGER.schema)) == (1, 0)
        redone = [{**ledger_rows[0], "records_out": 4, "quarantined": 1}]
        assert lake.upsert(LEDGER.name, pa.Table.from_pylist(redone, schema=LEDGER.schema)) == (0, 1)
        assert lake.delete(QUARANTINE.name, "quarantine_id = 'q0'") == 1
        lake.write("gold.test_overwrite", pa.table({"n": [1, 2]}), mode="overwrite")
        lake.write("gold.test_overwrite", pa.table({"n": [3], "m": ["x"]}), mode="overwrite")

    for name in (QUARANTINE.name, LEDGER.name, "gold.test_overwrite"):
        assert sorted(on_spark.read(name).to_pylist(), key=str) == sorted(
            embedded.read(name).to_pylist(), key=str
        ), name
        assert set(committed_by(on_spark.uri(name))) == {"delta-spark"}, name
        assert set(committed_by(embedded.uri(name))) == {"delta-rs"}, name
    assert on_spark.read(LEDGER.name).to_pylist()[0]["records_out"] == 4
    assert on_spark.read("gold.test_overwrite").to_pylist() == [{"n": 3, "m": "x"}]


KEYED_ROWS = pa.schema(
    [pa.field("k", pa.string(), nullable=False), pa.field("v", pa.string()), pa.field("_run_id", pa.string())]
)


@pytest.mark.parametrize("update", [False, True], ids=["insert", "upsert"])
def test_the_set_based_insert_keeps_the_first_of_each_key_alike_on_both_engines(
    spark: SparkSession, tmp_path: Path, update: bool
) -> None:
    """The first row of each key by ``order``: a key an earlier run holds is left out, or with
    ``update`` written over; a retry of the same run counts the same and writes nothing new."""
    source = tmp_path / "source"
    write_deltalake(
        source,
        pa.table(
            {
                "k": ["c", "b", "c", "d", "b"],
                "v": ["c-late", "b-new", "c-first", "d", "b-late"],
                "_run_id": ["r1"] * 5,
                "n": [5, 1, 2, 3, 4],
            }
        ),
    )
    held = pa.table({"k": ["a", "b"], "v": ["a-old", "b-old"], "_run_id": ["r0", "r0"]}, schema=KEYED_ROWS)
    engines: dict[str, Engine] = {"embedded": EmbeddedEngine(batch_rows=2), "spark": SparkEngine(spark)}
    for name, engine in engines.items():
        target = Target(str(tmp_path / name), KEYED_ROWS, mode="append")
        write_deltalake(target.uri, held)
        for attempt in ("first", "retry"):
            done = engine.insert_new(
                source=DeltaSource(str(source)), target=target, key=["k"], order=["n"], run_id="r1",
                update=update,
            )
            counts = (done.rows_in, done.kept, done.duplicates, done.appended, done.updated)
            if update:  # b, c, d kept; b written over (all three on the retry)
                assert counts == ((5, 3, 2, 2, 1) if attempt == "first" else (5, 3, 2, 0, 3)), (name, attempt)
            else:  # c and d kept; b is the earlier run's
                assert counts == ((5, 2, 3, 2, 0) if attempt == "first" else (5, 2, 3, 0, 0)), (name, attempt)
            rows = sorted(DeltaTable(target.uri).to_pyarrow_table().to_pylist(), key=lambda r: r["k"])
            assert [(r["k"], r["v"]) for r in rows] == [
                ("a", "a-old"),
                ("b", "b-new" if update else "b-old"),
                ("c", "c-first"),
                ("d", "d"),
            ], (name, attempt)


def test_the_session_medlake_starts_has_room_for_a_hospitals_rows(spark: SparkSession) -> None:
    """Spark's 1g default heap ran out caching the bronze rows of 1M resources in local mode:
    the JVM medlake starts takes ``MEDLAKE__SPARK__DRIVER_MEMORY`` (4g), and a persisted frame
    is cut into batches of 1,000 rows (not 10,000 whole resources)."""
    from medlake.engines.spark import CACHED_BATCH_ROWS

    assert spark.conf.get("spark.driver.memory") == SparkSettings().driver_memory == "4g"
    assert spark.conf.get("spark.sql.inMemoryColumnarStorage.batchSize") == str(CACHED_BATCH_ROWS)
