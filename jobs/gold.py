"""Build the gold layer: run the dbt project over the silver Delta tables, then write its marts
back to the lake as Delta tables (``<lake>/gold/<model>/``).

Two dbt targets build the same project. ``duckdb``: dbt reads silver through the project's
``medlake_delta`` source plugin (dbt-duckdb's delta plugin, at pinned silver versions: given, or
current when the build starts) and builds every model and test in a DuckDB file under
``<lake>/gold/_dbt/``. ``spark``: dbt-spark's ``session`` method runs dbt inside this process's
SparkSession (delta-spark from the local jars), reads silver as
``delta.`<lake>/silver/<table>` VERSION AS OF <pinned>`` and materializes every table as a
path-based Delta table under ``<lake>/gold/_dbt/spark/``. Only when every model and error-level
test passed are the marts (models under ``models/marts/``) copied to ``<lake>/gold/<model>/``,
so a failing test never publishes a gold table; the copy is the same for both targets (same
imputation, same gold suites, same delta-rs writer), so the gold tables do not depend on the
engine. dbt's ``target/`` and ``logs/`` go to the same folder under the lake, so builds of
different lakes never share files.

Between dbt and Delta, the marts named in :data:`IMPUTED_MARTS` get their missing values filled
as ``medlake.jobs.clean.config`` plans it (:mod:`medlake.jobs.clean.impute`: each filled cell
flagged in ``_imputed``), and the fraction filled per column goes to the ledger (stage
``impute``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from medlake import ledger
from medlake.config import DbtSettings, Settings
from medlake.errors import BadDataError
from medlake.governance.files import private_dir, private_tree
from medlake.jobs.clean.config import ML_FEATURE_IMPUTATION, Imputation
from medlake.jobs.clean.impute import impute
from medlake.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

Target = Literal["duckdb", "spark"]

#: the silver tables the dbt project declares as sources
SILVER_SOURCES: tuple[str, ...] = (
    "silver.patients",
    "silver.encounters",
    "silver.observations",
    "silver.conditions",
    "silver.medications",
    "silver.vitals_1h",
)

#: marts whose missing values are imputed before they are written, and how (per column)
IMPUTED_MARTS: Mapping[str, Mapping[str, Imputation]] = MappingProxyType(
    {"ml_patient_features": ML_FEATURE_IMPUTATION}
)

#: dbt's working folder below the lake root: the DuckDB file, target/ and logs/
DBT_WORKDIR = "gold/_dbt"

#: the session catalog databases the project's models and seeds go to on the spark target
#: (generate_schema_name: each layer's +schema as is; seeds in the target schema, gold)
SPARK_SCHEMAS: tuple[str, ...] = ("staging", "intermediate", "gold")
#: where dbt-spark puts the seeds' Delta tables below the lake (dbt_project.yml, location_root)
SPARK_SEEDS = "gold/_dbt/spark/seeds"

#: reads one built mart as Arrow, rows ordered by its grain
MartReader = Callable[["_Mart"], pa.Table]

# dbt-core keeps process-wide state (flags, the dbt-duckdb connection environment):
# two builds in one process run one after the other; separate processes run in parallel.
_DBT_LOCK = threading.Lock()


class GoldBuildError(BadDataError):
    """dbt could not build the gold layer; names every model or test that failed."""

    def __init__(
        self,
        message: str,
        *,
        failures: tuple[str, ...] = (),
        tests_passed: int = 0,
        tests_failed: int = 0,
    ) -> None:
        super().__init__(message)
        self.failures = failures
        self.tests_passed = tests_passed
        self.tests_failed = tests_failed


@dataclass(frozen=True)
class GoldTable:
    """One mart written to the lake."""

    name: str
    version: int
    rows: int


@dataclass(frozen=True)
class GoldResult:
    """What a gold build wrote, what it read, and how dbt's data tests came out."""

    run_id: str
    tables: tuple[GoldTable, ...]
    silver_versions: Mapping[str, int]
    tests_passed: int
    tests_warned: int
    tests_failed: int
    log_path: Path
    #: ``gold.<model>`` -> column -> fraction of rows imputed (also in the ledger, stage impute)
    imputed: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: the ledger entries the build recorded (stage ``impute``, one per imputed mart)
    entries: tuple[ledger.Entry, ...] = ()

    @property
    def versions(self) -> dict[str, int]:
        """Delta version of each gold table written: what the next task pins (via XCom)."""
        return {t.name: t.version for t in self.tables}

    def table(self, name: str) -> GoldTable:
        """The written table ``gold.<model>`` (or just ``<model>``)."""
        wanted = name if name.startswith("gold.") else f"gold.{name}"
        for t in self.tables:
            if t.name == wanted:
                return t
        raise KeyError(f"{wanted} was not built; built: {', '.join(t.name for t in self.tables)}")


@dataclass(frozen=True)
class _Mart:
    name: str
    relation: str
    grain: tuple[str, ...]
    #: columns the model's enforced dbt contract declares NOT NULL: written non-nullable to Delta
    not_null: frozenset[str] = frozenset()
    #: the folder of the Delta table dbt-spark built (location_root/<model>); None on DuckDB
    location: str | None = None


def build_gold(
    lake_root: Path,
    *,
    run_id: str,
    project_dir: Path | None = None,
    target: Target = "duckdb",
    silver_versions: Mapping[str, int] | None = None,
    vocabulary_dir: Path | None = None,
) -> GoldResult:
    """Build the gold marts from silver with dbt and write them to ``<lake>/gold/<model>/`` as Delta.

    Silver is read at ``silver_versions`` (``{"silver.patients": 3, ...}``, e.g. from the
    upstream task's XCom); tables not named there are pinned to their version when the build
    starts. Missing silver tables are created empty first (a landing without medications
    still builds). ``vocabulary_dir`` is a folder of OHDSI Athena vocabulary CSVs
    (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv) the OMOP marts map codes with; without it they use
    the small concept table the project ships (the spark target does not read them yet).
    ``target`` is the dbt profile: ``duckdb``, or ``spark`` (dbt-spark's session method in this
    process's SparkSession, started from ``MEDLAKE__SPARK__*`` when none runs); the gold tables
    are the same either way. Raises :class:`GoldBuildError` naming each failing model or test;
    nothing is written to gold then.
    """
    if not run_id:
        raise ValueError("build_gold needs the pipeline run id")
    if target not in ("duckdb", "spark"):
        raise ValueError(f"unknown dbt target {target!r}: duckdb or spark")
    lake = Lake(Path(lake_root).resolve())
    project = Path(project_dir or DbtSettings().project_dir).resolve()
    if not (project / "dbt_project.yml").is_file():
        raise FileNotFoundError(f"no dbt project at {project} (dbt_project.yml missing)")

    if vocabulary_dir is not None and target == "spark":
        raise ValueError(
            "vocabulary_dir is not supported on the spark target yet (Spark SQL cannot read the "
            "Athena CSVs inside dbt): build with target='duckdb', or without vocabulary_dir"
        )
    if vocabulary_dir is not None:
        vocabulary_dir = Path(vocabulary_dir).resolve()
        needed = ("CONCEPT.csv", "CONCEPT_RELATIONSHIP.csv")
        missing = [f for f in needed if not (vocabulary_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"vocabulary folder {vocabulary_dir} lacks {', '.join(missing)} "
                "(unpack the OHDSI Athena download there)"
            )
    pinned = _pin_silver(lake, silver_versions or {})
    workdir = private_dir(lake.root / DBT_WORKDIR)  # the DuckDB file holds the marts: owner only
    duckdb_path = workdir / "dbt.duckdb"
    dbt_vars = {
        "lake": lake.location,
        "run_id": run_id,
        "silver_versions": {name.split(".", 1)[1]: v for name, v in pinned.items()},
        "duckdb_path": str(duckdb_path),
        "plugins_dir": str(project / "plugins"),
    }
    if vocabulary_dir is not None:
        dbt_vars["vocabulary_dir"] = str(vocabulary_dir)
    spark = _spark_for_dbt(dbt_vars) if target == "spark" else None
    if spark is not None:  # the marts (and the gold ledger) commit through delta-spark too
        from medlake.engines.spark import SparkTableWriter

        lake = lake.on(SparkTableWriter(spark))
    options = {
        "--project-dir": str(project),
        "--profiles-dir": str(project),
        "--target": target,
        "--vars": json.dumps(dbt_vars),
        "--target-path": str(workdir / "target"),
        "--log-path": str(workdir / "logs"),
    }
    args = ["build", *(part for option in options.items() for part in option)]

    started = time.monotonic()
    with _DBT_LOCK:
        if spark is not None:
            _forget_spark_schemas(spark)
            # a seed is created at its location, where a Delta table of the last build adopts it,
            # then loaded again: rows twice. Seeds come from the CSVs every build: start afresh
            lake.drop_folder(SPARK_SEEDS)
        marts, passed, warned = _run_dbt(args, log_path=workdir / "logs" / "dbt.log")
    log.info(
        "dbt build of %s took %.1f s: %d tests passed, %d warned",
        lake.root,
        time.monotonic() - started,
        passed,
        warned,
    )

    reading = _duckdb_marts(duckdb_path) if spark is None else _spark_marts(spark)
    with reading as read:
        tables, imputed = _write_marts(lake, marts, read, run_id=run_id)
    private_tree(workdir)  # dbt and DuckDB create their files 0644
    for t in tables:
        log.info("wrote %s version %d (%d rows)", t.name, t.version, t.rows)
    entries = tuple(ledger.record(lake, run_id, [entry for entry, _ in imputed.values()]))
    return GoldResult(
        run_id=run_id,
        tables=tables,
        silver_versions=MappingProxyType(pinned),
        tests_passed=passed,
        tests_warned=warned,
        tests_failed=0,
        log_path=workdir / "logs" / "dbt.log",
        imputed=MappingProxyType(
            {name: MappingProxyType(dict(fractions)) for name, (_, fractions) in imputed.items()}
        ),
        entries=entries,
    )


def _spark_for_dbt(dbt_vars: dict[str, Any]) -> SparkSession:
    """This process's SparkSession (started with delta-spark if none runs), for dbt-spark's
    session method, which runs every statement in it; the vars the profile needs are added."""
    from medlake.engines.spark import delta_jars, spark_session

    settings = Settings().spark
    dbt_vars["spark_jars"] = ",".join(str(j.resolve()) for j in delta_jars(settings.jars_dir))
    spark = spark_session(settings, app_name="medlake-gold")
    # dbt-spark sets the profile's server_side_parameters on the running session: keep its own
    dbt_vars["spark_shuffle_partitions"] = spark.conf.get("spark.sql.shuffle.partitions", "200")
    dbt_vars["spark_snapshot_partitions"] = spark.conf.get(
        "spark.databricks.delta.snapshotPartitions", "50"
    )
    return spark


def _forget_spark_schemas(spark: SparkSession) -> None:
    """Drop the project's databases from the session's catalog, which outlives a build: a
    previous build (of this or another lake) must not leave tables behind that this one would
    read. Dropping only forgets them; their Delta files stay until the build replaces them."""
    for schema in SPARK_SCHEMAS:
        spark.sql(f"drop schema if exists {schema} cascade")


@contextmanager
def _duckdb_marts(duckdb_path: Path) -> Iterator[MartReader]:
    """Read marts from dbt's DuckDB file (opened read-only while the marts are copied)."""
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        yield lambda mart: con.sql(
            f"select * from {mart.relation}{_order_by(mart)}"
        ).to_arrow_table()


@contextmanager
def _spark_marts(spark: SparkSession) -> Iterator[MartReader]:
    """Read marts from the Delta tables dbt-spark built, through the session, as Arrow.

    By path, not by catalog name: the session's catalog is shared by every build in the process,
    the path belongs to this lake.
    """

    def read(mart: _Mart) -> pa.Table:
        if mart.location is None:
            raise GoldBuildError(f"{mart.name}: dbt-spark built no Delta table (no location_root)")
        source = f"delta.`{mart.location}`"
        return spark.sql(f"select * from {source}{_order_by(mart)}").toArrow()

    yield read


def _order_by(mart: _Mart) -> str:
    """The ORDER BY of the mart's grain, nulls last on every engine (DuckDB's default)."""
    if not mart.grain:
        return ""
    return " order by " + ", ".join(f"{column} asc nulls last" for column in mart.grain)


def _pin_silver(lake: Lake, requested: Mapping[str, int]) -> dict[str, int]:
    """The version of each silver source dbt reads: the requested one, else the current one.

    Missing silver tables are created empty first.
    """
    unknown = sorted(set(requested) - set(SILVER_SOURCES))
    if unknown:
        raise ValueError(
            f"not silver sources of the gold build: {', '.join(unknown)}; "
            f"sources: {', '.join(SILVER_SOURCES)}"
        )
    versions: dict[str, int] = {}
    for name in SILVER_SOURCES:
        lake.ensure(name)
        current = lake.version(name)
        assert current is not None  # ensure() just created it
        wanted = requested.get(name, current)
        if not 0 <= wanted <= current:
            raise ValueError(f"{name} has versions 0..{current}; cannot read version {wanted}")
        versions[name] = wanted
    return versions


def _run_dbt(args: list[str], *, log_path: Path) -> tuple[list[_Mart], int, int]:
    """Run ``dbt build``; the marts it built and the tests passed and warned, or raise."""
    from dbt.cli.main import dbtRunner

    outcome = dbtRunner().invoke(args)
    if outcome.exception is not None:
        raise GoldBuildError(
            f"dbt build could not run: {outcome.exception} (log: {log_path})"
        ) from outcome.exception
    results: list[Any] = list(getattr(outcome.result, "results", None) or [])
    if not results and not outcome.success:
        raise GoldBuildError(f"dbt build failed before running any node (log: {log_path})")

    failures: list[str] = []
    skipped = passed = warned = failed = 0
    marts: list[_Mart] = []
    for r in results:
        node, status, kind = r.node, str(r.status), str(r.node.resource_type)
        if kind == "test":
            passed += status == "pass"
            warned += status == "warn"
            failed += status in ("fail", "error")
        if status in ("fail", "error"):
            failures.append(_describe_failure(r))
        elif status == "skipped":
            skipped += 1
        elif kind == "model" and status == "success" and _is_mart(node):
            grain = node.config.meta.get("grain") or ()
            grain = (grain,) if isinstance(grain, str) else tuple(grain)
            marts.append(
                _Mart(
                    name=node.name,
                    relation=str(node.relation_name),
                    location=_location(node),
                    grain=grain,
                    not_null=_contract_not_null(node),
                )
            )

    if failures or not outcome.success:
        summary = "\n  ".join(failures) or "dbt reported failure without a failing node"
        raise GoldBuildError(
            f"dbt build failed; nothing was written to gold:\n  {summary}\n"
            f"({passed} tests passed, {failed} failed, {skipped} nodes skipped; log: {log_path})",
            failures=tuple(failures),
            tests_passed=passed,
            tests_failed=failed,
        )
    return marts, passed, warned


def _location(node: Any) -> str | None:
    """Where dbt-spark put the model's Delta table (``location_root``/<alias>), if it says."""
    root = node.config.get("location_root")
    return f"{str(root).rstrip('/')}/{node.alias}" if root else None


def _contract_not_null(node: Any) -> frozenset[str]:
    """The columns an enforced dbt contract declares NOT NULL (DuckDB enforced them while building)."""
    if not node.config.contract.enforced:
        return frozenset()
    return frozenset(
        name
        for name, column in node.columns.items()
        if any(c.type == "not_null" for c in column.constraints)
    )


def _is_mart(node: Any) -> bool:
    """Models under models/marts/ are the gold tables; staging and intermediate stay in dbt."""
    return len(node.fqn) > 2 and node.fqn[1] == "marts"


#: lines of a dbt error message that name no reason
_BARE_HEADINGS = frozenset({"Runtime Error", "Database Error", "Compilation Error"})


def _describe_failure(result: Any) -> str:
    """'test <name> (<file>): <what dbt said>': which node failed and why, in dbt's words."""
    node = result.node
    lines = [line.strip() for line in (result.message or "").splitlines() if line.strip()]
    # dbt-spark puts a bare "Runtime Error" line before the reason
    lines = [line for line in lines if line not in _BARE_HEADINGS]
    said = ": ".join(lines[:2]) or str(result.status)
    return f"{node.resource_type} {node.name} ({node.original_file_path}): {said}"


def _write_marts(
    lake: Lake, marts: list[_Mart], read: MartReader, *, run_id: str
) -> tuple[tuple[GoldTable, ...], dict[str, tuple[ledger.Entry, Mapping[str, float]]]]:
    """Copy each mart as dbt built it (``read``) to ``gold.<model>`` as a new Delta version; the
    imputed marts with their missing values filled (ledger entry and fractions per mart).
    Every mart is validated with its gold suite before any is written (:class:`GateFailed`).

    Rows are ordered by the mart's grain (``meta.grain`` in its YAML), so the same silver
    gives the same files, row for row.
    """
    written: list[GoldTable] = []
    imputed: dict[str, tuple[ledger.Entry, Mapping[str, float]]] = {}
    from medlake.expectations.gate import validate_gold

    ready = StagedMarts(lake, run_id=run_id)  # one mart in memory at a time, not all of them
    try:
        for mart in sorted(marts, key=lambda m: m.name):
            data = read(mart)
            name = f"gold.{mart.name}"
            if mart.name in IMPUTED_MARTS:
                result = impute(data, IMPUTED_MARTS[mart.name])
                data = result.table
                imputed[name] = (result.ledger_entry(name), result.fractions)
            if mart.not_null:
                data = _with_not_null(data, mart.not_null, name=name)
            ready.put(name, data)
            del data
        # the gold suites first: a mart breaking one (its SQL is wrong) stops the build unwritten
        validate_gold(lake, run_id=run_id, tables=list(ready), data=ready)
        for name in ready:
            data = ready[name]
            version = lake.write(name, data, mode="overwrite")
            written.append(GoldTable(name=name, version=version, rows=data.num_rows))
    finally:
        ready.drop()
    return tuple(written), imputed


class StagedMarts(Mapping[str, pa.Table]):
    """Marts built and checked but not yet in gold, kept in the run's scratch tables and read
    back one at a time: a build holds one mart in memory, not all of them."""

    def __init__(self, lake: Lake, *, run_id: str) -> None:
        self.lake = lake
        self.run_id = run_id
        self._names: list[str] = []

    def _uri(self, name: str) -> str:
        return self.lake.scratch_uri(name, run_id=self.run_id)

    def put(self, name: str, data: pa.Table) -> None:
        write_deltalake(self._uri(name), data, mode="overwrite", schema_mode="overwrite")
        if name not in self._names:
            self._names.append(name)

    def __getitem__(self, name: str) -> pa.Table:
        if name not in self._names:
            raise KeyError(name)
        return DeltaTable(self._uri(name)).to_pyarrow_table()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def drop(self) -> None:
        for name in self._names:
            self.lake.drop_scratch_table(name, run_id=self.run_id)


def _with_not_null(data: pa.Table, not_null: frozenset[str], *, name: str) -> pa.Table:
    """The mart with its contract's NOT NULL columns non-nullable, so the Delta schema keeps them.

    DuckDB's Arrow export marks every column nullable, contract or not.
    """
    missing = sorted(not_null - set(data.column_names))
    if missing:
        raise GoldBuildError(f"{name}: NOT NULL contract columns missing: {', '.join(missing)}")
    nulls = sorted(c for c in not_null if data.column(c).null_count)
    if nulls:
        raise GoldBuildError(f"{name}: NOT NULL contract columns hold nulls: {', '.join(nulls)}")
    schema = pa.schema([f.with_nullable(f.name not in not_null) for f in data.schema])
    return data.cast(schema)
