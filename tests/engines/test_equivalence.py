"""The FHIR chain on both engines: the same landing through the embedded engine and through Spark
``local[2]`` writes the same bronze, staging and quarantine tables and the same ledger counts;
every source's ingest writes the same bronze tables; and the whole pipeline (the DAGs' task
functions, every source, ingest → clean → gate → gold) writes the same silver, gold and ledger,
the Spark run committing every table it writes through delta-spark.

Both lakes use the same project key (same pseudonyms and date shifts) and seal their raw PHI at
rest with data keys of their own, so the tables are compared as the lake reads them (opened).
A Spark Connect session (``remote("local[2]")``, in a child process: a classic session already
holds this one's JVM) ingests a smaller landing the same way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from medlake.config import Settings
from medlake.engines import Engine
from medlake.engines.embedded import EmbeddedEngine
from medlake.engines.spark import SparkEngine
from medlake.governance.at_rest import DATA_KEYS_TABLE, lake_for
from medlake.jobs import pipeline
from medlake.jobs.ingest import vitals
from medlake.lake import Lake
from medlake.registry import (
    BRONZE_FHIR,
    FHIR_SILVER,
    QUARANTINE,
    SILVER_NOTES,
    SILVER_VITALS_1H,
    SILVER_VITALS_1MIN,
    staging_name,
)
from medlake.sample import generate

pytestmark = [pytest.mark.spark, pytest.mark.slow]

KEY = bytes(range(32))
RUN_ID = "equivalence__run"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
#: columns that name when a row was written, not what it holds
WHEN = ("quarantined_at", "recorded_at")


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hospital") / "landing"
    generate(folder, patients=8, seed=5)
    with_broken_records(folder)
    return folder


def with_broken_records(landing: Path) -> None:
    """A bulk file with a truncated line, a line that is no resource, and a resource twice."""
    first = next((landing / "fhir").rglob("*.ndjson")).read_text().splitlines()[0]
    (landing / "fhir" / "broken.ndjson").write_text(
        f'{first}\n{{"resourceType": "Observation", "id": \n[1, 2]\n{first}' + "\n"
    )


def run_fhir_chain(landing: Path, root: Path, engine: Engine) -> tuple[Lake, list[dict[str, Any]]]:
    """Ingest and clean the landing's FHIR files on ``engine``; the lake and its ledger."""
    lake = lake_for(Settings(), root)
    ingested = pipeline.ingest(landing, lake, run_id=RUN_ID, now=NOW, engine=engine)
    result = pipeline.clean(
        lake,
        run_id=RUN_ID,
        key=KEY,
        max_shift_days=365,
        bronze_version=ingested.versions[BRONZE_FHIR.name],
        engine=engine,
    )
    ledger = [e.__dict__ for e in (*ingested.entries, *result.entries)]
    return lake, ledger


def rows(lake: Lake, name: str, *, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every row of a table as the lake reads it (opened), sorted, without ``drop``."""
    table = lake.read(name)
    table = table.drop_columns([c for c in (*WHEN, *drop) if c in table.column_names])
    return sorted(table.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_the_fhir_chain_writes_the_same_tables_on_both_engines(
    spark: SparkSession, landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))  # one project, its keys
    embedded, embedded_ledger = run_fhir_chain(
        landing, tmp_path / "embedded" / "lake", EmbeddedEngine(batch_rows=97)
    )
    # the same data keys (a lake moving to Spark keeps its keys): the file names sealed alike,
    # so the first copy of a duplicated record is the same copy on both engines
    shutil.copytree(embedded.root / DATA_KEYS_TABLE, tmp_path / "spark" / "lake" / DATA_KEYS_TABLE)
    on_spark, spark_ledger = run_fhir_chain(
        landing, tmp_path / "spark" / "lake", SparkEngine(spark)
    )

    assert embedded_ledger == spark_ledger
    assert all(e["records_in"] >= 0 and e["records_out"] >= 0 for e in embedded_ledger)
    ingest = next(e for e in embedded_ledger if e["stage"] == "ingest")
    assert ingest["records_in"] > 100 and ingest["quarantined"] > 0  # the sample's broken records

    bronze = rows(embedded, BRONZE_FHIR.name)
    assert len(bronze) == ingest["records_out"]
    assert rows(on_spark, BRONZE_FHIR.name) == bronze
    for spec in (*FHIR_SILVER.values(), SILVER_NOTES):
        name = staging_name(spec.name)
        assert rows(on_spark, name) == rows(embedded, name), name
    assert rows(embedded, staging_name(FHIR_SILVER["Observation"].name))
    quarantine = rows(embedded, QUARANTINE.name)
    assert rows(on_spark, QUARANTINE.name) == quarantine
    assert Counter(r["rule_id"] for r in quarantine)["parse.bad_json"] >= 1


def ingest_every_source(landing: Path, root: Path, engine: Engine) -> tuple[Lake, list[dict[str, Any]]]:
    """Ingest all six sources of the landing on ``engine``; the lake and its ledger."""
    lake = lake_for(Settings(), root)
    stages = [
        pipeline.ingest(landing, lake, run_id=RUN_ID, now=NOW, engine=engine),
        pipeline.ingest_hl7v2(landing, lake, run_id=RUN_ID, now=NOW, engine=engine),
        *(
            pipeline.source_module(kind).ingest(landing, lake, run_id=RUN_ID, now=NOW, engine=engine)
            for kind in pipeline.SOURCES
        ),
    ]
    return lake, [e.__dict__ for stage in stages for e in stage.entries]


def test_every_source_ingests_the_same_bronze_on_both_engines(
    spark: SparkSession, landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))
    embedded, embedded_ledger = ingest_every_source(
        landing, tmp_path / "embedded" / "lake", EmbeddedEngine(batch_rows=53)
    )
    shutil.copytree(embedded.root / DATA_KEYS_TABLE, tmp_path / "spark" / "lake" / DATA_KEYS_TABLE)
    on_spark, spark_ledger = ingest_every_source(landing, tmp_path / "spark" / "lake", SparkEngine(spark))

    assert spark_ledger == embedded_ledger
    by_table = {e["table_name"]: e for e in embedded_ledger}
    bronze = [name for name in by_table if name.startswith("bronze.")]
    assert {"bronze.fhir_resources", "bronze.hl7v2_messages", "bronze.csv_rows"} <= set(bronze)
    assert len(bronze) >= 6, bronze  # every source wrote its bronze table
    for name in bronze:
        entry = by_table[name]
        assert entry["records_in"] == entry["records_out"] + entry["quarantined"] + entry["merged"], name
        assert rows(on_spark, name) == rows(embedded, name), name
        assert len(rows(embedded, name)) == entry["records_out"], name
    assert rows(on_spark, QUARANTINE.name) == rows(embedded, QUARANTINE.name)

    # vitals resampling, keyed by person (embedded hash buckets, Spark applyInArrow)
    staged = {}
    for lake, engine in ((embedded, EmbeddedEngine(batch_rows=53)), (on_spark, SparkEngine(spark))):
        result = vitals.to_staging(
            lake, run_id=RUN_ID, key=KEY, max_shift_days=365, versions={}, engine=engine
        )
        staged[engine.name] = [e.__dict__ for e in result.entries]
    assert staged["spark"] == staged["embedded"]
    resampled = [e for e in staged["embedded"] if e["stage"] == "resample"]
    assert len(resampled) == 2 and all(e["records_in"] > 0 for e in resampled), resampled
    for spec in (SILVER_VITALS_1MIN, SILVER_VITALS_1H):
        grid = rows(embedded, staging_name(spec.name))
        assert grid and rows(on_spark, staging_name(spec.name)) == grid, spec.name


def test_a_spark_connect_session_ingests_like_the_embedded_engine(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    generate(landing, patients=4, seed=3)
    with_broken_records(landing)
    script = f"""
import json, os
from datetime import datetime, UTC
from pathlib import Path
from medlake.config import SparkSettings
from medlake.engines.spark import SparkEngine, spark_session
from medlake.jobs import pipeline
from medlake.lake import Lake
spark = spark_session(SparkSettings(remote="local[2]"), app_name="medlake-connect-test")
assert type(spark).__module__.startswith("pyspark.sql.connect"), type(spark)
lake = Lake(Path({str(tmp_path / "connect")!r}))
result = pipeline.ingest(Path({str(landing)!r}), lake, run_id={RUN_ID!r},
                         now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), engine=SparkEngine(spark))
print(json.dumps([e.__dict__ for e in result.entries]))
spark.stop()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    connect_ledger = json.loads(done.stdout.strip().splitlines()[-1])
    lake = Lake(tmp_path / "embedded")
    embedded = pipeline.ingest(landing, lake, run_id=RUN_ID, now=NOW, engine=EmbeddedEngine())
    assert connect_ledger == [e.__dict__ for e in embedded.entries]
    connect = Lake(tmp_path / "connect")
    assert rows(connect, BRONZE_FHIR.name) == rows(lake, BRONZE_FHIR.name)
    assert rows(connect, QUARANTINE.name) == rows(lake, QUARANTINE.name)
    assert pa.Table.from_pylist(rows(lake, BRONZE_FHIR.name)).num_rows > 20
    ingest = embedded.entries[0]
    assert (ingest.quarantined, ingest.merged) == (2, 2)  # the broken lines; the repeats


def test_gold_is_built_on_the_runs_engine_unless_the_dbt_target_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MEDLAKE__DBT__TARGET", raising=False)
    monkeypatch.delenv("MEDLAKE__ENGINE", raising=False)
    assert pipeline.dbt_target(Settings()) == "duckdb"
    assert pipeline.dbt_target(Settings(), "spark") == "spark"
    monkeypatch.setenv("MEDLAKE__ENGINE", "spark")
    assert pipeline.dbt_target(Settings()) == "spark"
    assert pipeline.dbt_target(Settings(), "embedded") == "duckdb"
    monkeypatch.setenv("MEDLAKE__DBT__TARGET", "duckdb")  # an explicit target wins
    assert pipeline.dbt_target(Settings(), "spark") == "duckdb"


def run_whole_pipeline(landing: Path, root: Path, engine: str, *, keys_from: Path | None = None) -> None:
    """The pipeline's own task functions (as the DAGs call them) over every source, on ``engine``;
    ``keys_from``: a lake whose data keys this one takes before it ingests (see above)."""
    if keys_from is not None:
        shutil.copytree(keys_from / DATA_KEYS_TABLE, root / DATA_KEYS_TABLE)
    lake = str(root)
    pipeline.task_ingest(str(landing), lake, run_id=WHOLE_RUN, engine=engine)
    pipeline.task_clean(lake, run_id=WHOLE_RUN, bronze_version=None, engine=engine)
    pipeline.task_gate(lake, run_id=WHOLE_RUN, engine=engine)
    pipeline.task_gold(lake, run_id=WHOLE_RUN, engine=engine)


WHOLE_RUN = "equivalence__whole"
#: columns that say when a row was ingested (each run ingests at its own clock)
INGESTED = ("_ingested_at",)


def test_the_whole_pipeline_writes_the_same_silver_gold_and_ledger_on_both_engines(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every source through ingest → clean → gate → gold with the embedded engine (dbt-duckdb)
    and with Spark local[2] (dbt-spark): the same silver and gold rows, ledger counts and
    quarantine rules; and every commit the Spark run made to a table of the lake is delta-spark's
    (a stage's tables have one writer engine)."""
    from medlake.registry import LEDGER, SILVER_TABLES

    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("MEDLAKE__DBT__TARGET", raising=False)
    landing = tmp_path / "landing"
    generate(landing, patients=4, seed=11)
    embedded_root, spark_root = tmp_path / "embedded" / "lake", tmp_path / "spark" / "lake"
    run_whole_pipeline(landing, embedded_root, "embedded")
    run_whole_pipeline(landing, spark_root, "spark", keys_from=embedded_root)
    embedded, on_spark = lake_for(Settings(), embedded_root), lake_for(Settings(), spark_root)

    for name in SILVER_TABLES:
        assert rows(on_spark, name, drop=INGESTED) == rows(embedded, name, drop=INGESTED), name
    assert rows(embedded, "silver.observations") and rows(embedded, "silver.notes")
    gold = sorted(t for t in embedded.tables() if t.startswith("gold."))
    assert len(gold) >= 10 and gold == sorted(t for t in on_spark.tables() if t.startswith("gold."))
    for name in gold:
        assert rows(on_spark, name) == rows(embedded, name), name
    counts = ("run_id", "stage", "table_name", "records_in", "records_out", "quarantined", "merged",
              "bronze_only", "balanced")
    ledger = sorted(
        (tuple(r[c] for c in counts) for r in embedded.read(LEDGER.name).to_pylist()), key=str
    )
    assert ledger and all(r[-1] for r in ledger)  # every entry balances
    assert sorted(
        (tuple(r[c] for c in counts) for r in on_spark.read(LEDGER.name).to_pylist()), key=str
    ) == ledger
    rules = Counter(r["rule_id"] for r in embedded.read(QUARANTINE.name).to_pylist())
    assert Counter(r["rule_id"] for r in on_spark.read(QUARANTINE.name).to_pylist()) == rules

    # the Spark run's commits: every table of the lake it wrote, through delta-spark alone; the
    # governance stores (data keys, the vault, the audit log) keep their own delta-rs commits,
    # made under their lock files with no retry (the audit chain, key rotation)
    from deltalake import DeltaTable

    from medlake.governance import audit, vault

    stores = {DATA_KEYS_TABLE, vault.TABLE, audit.TABLE}
    written = [t for t in on_spark.tables() if t not in stores]
    assert {"bronze.fhir_resources", "silver.observations", "gold.omop_person", QUARANTINE.name,
            LEDGER.name} <= set(written)
    for name in written:
        engines = {
            "delta-spark" if "Apache-Spark" in str(c.get("engineInfo", "")) else "delta-rs"
            for c in DeltaTable(on_spark.uri(name)).history()
        }
        assert engines == {"delta-spark"}, (name, engines)
