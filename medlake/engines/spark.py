"""The Spark engine: delta-spark reads and writes, the same pure transform runs in ``mapInArrow``.

The transform runs once per Arrow batch on the executors. Each batch's :class:`Split` comes back
as one tagged stream, a ``good`` struct or a ``quarantined`` struct per row, which is persisted so
the two Delta writes read it instead of running the transform a second time.

Delta tables are created from the registered Arrow schema before the first write, so NOT NULL
columns stay NOT NULL (a DataFrame write alone makes every column nullable) and the table is the
one the embedded engine would have written. The delta-spark jars come from ``settings.jars_dir``
(fetched at install time by ``make env``); nothing downloads at run time.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    DataType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from medlake.config import STATE_DIR, SparkSettings
from medlake.engines import (
    Applied,
    BatchTransform,
    DeltaSource,
    Encode,
    FileReader,
    FileSource,
    Inserted,
    KeyedTransform,
    QuarantineSink,
    Source,
    Target,
)
from medlake.lake import TableWriter, conform
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split, stamp_run

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
#: the jars ``make env`` fetches from Maven Central, by file-name prefix
DELTA_JAR_PREFIXES = ("delta-spark_", "delta-storage-")
LOCAL_PARTITIONS = 2

_GOOD = "good"
_QUARANTINED = "quarantined"

ArrowBatches = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def delta_jars(jars_dir: Path) -> list[Path]:
    """The delta-spark jars in ``jars_dir``, or an error saying how to fetch them."""
    jars = sorted(jars_dir.glob("*.jar")) if jars_dir.is_dir() else []
    missing = [p for p in DELTA_JAR_PREFIXES if not any(j.name.startswith(p) for j in jars)]
    if missing:
        raise FileNotFoundError(
            f"no {' or '.join(m + '*.jar' for m in missing)} in {jars_dir}: run `make env` to fetch "
            "the delta-spark jars from Maven Central (nothing is downloaded at run time)"
        )
    return jars


def spark_session(
    settings: SparkSettings | None = None, *, app_name: str = "medlake"
) -> SparkSession:
    """A Spark session with delta-spark from the local jars; the running one if there is one.

    With ``settings.remote`` it is a Spark Connect session: ``sc://host:15002`` reaches a running
    Connect server (whose own command line carries the Delta jars and extensions: a client cannot
    set static confs there), ``local[N]`` starts one in-process with the confs below.
    """
    settings = settings or SparkSettings()
    if settings.remote and settings.remote.startswith("sc://"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = SparkSession.builder.remote(settings.remote).appName(app_name).getOrCreate()
        require_delta(spark)
        return spark
    jars = delta_jars(settings.jars_dir)
    # Python workers run the interpreter that runs medlake, unless the caller chose another.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = {
        "spark.jars": ",".join([*(str(j.resolve()) for j in jars), *splink_jars()]),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        # the JVM medlake starts: in local mode its heap holds the executors' tasks too (Spark's
        # default 1g ran out caching 1M resources' bronze rows); ignored by a running JVM
        "spark.driver.memory": settings.driver_memory,
        # rows per batch of a cached (persisted) frame: bronze rows carry whole resources, notes
        # of tens of kilobytes, and 10,000 of them made one batch's column buffers
        "spark.sql.inMemoryColumnarStorage.batchSize": str(CACHED_BATCH_ROWS),
        "spark.ui.showConsoleProgress": "false",
        # Parquet timestamps as delta-rs writes them (not INT96), for byte-level parity
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Spark's catalog tables (dbt-spark's schemas) live in local state, not in the cwd
        "spark.sql.warehouse.dir": str((STATE_DIR / "spark-warehouse").resolve()),
    }
    master = settings.remote or settings.master
    if master.startswith("local"):
        # Spark's 200 shuffle partitions and Delta's 50 log-replay partitions are for clusters.
        conf["spark.sql.shuffle.partitions"] = str(LOCAL_PARTITIONS)
        conf["spark.databricks.delta.snapshotPartitions"] = str(LOCAL_PARTITIONS)
    builder = (
        SparkSession.builder.remote(master)
        if settings.remote
        else SparkSession.builder.master(master)
    ).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    require_delta(spark)
    return spark


#: rows per in-memory columnar batch of a persisted frame (Spark's default: 10,000)
CACHED_BATCH_ROWS = 1_000


def splink_jars() -> list[str]:
    """Splink's Spark similarity functions (Jaro-Winkler, …), shipped in the splink package: on
    every session, so entity resolution can run on Splink's Spark backend in it."""
    try:
        from splink.backends.spark import similarity_jar_location
    except ImportError:
        return []
    return [str(similarity_jar_location())]


def require_delta(spark: SparkSession) -> None:
    """Fail early when a session was started without delta-spark."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_EXTENSION not in extensions:
        raise RuntimeError(
            "the Spark session was started without delta-spark (spark.sql.extensions lacks "
            f"{DELTA_EXTENSION}); stop it, or create sessions with medlake.engines.spark.spark_session()"
        )


def spark_schema(schema: pa.Schema) -> StructType:
    """The Spark schema of an Arrow schema (large_string → string, tz-aware timestamps → timestamp)."""
    return from_arrow_schema(schema, prefer_timestamp_ntz=True)


class SparkEngine:
    """Spark with delta-spark: the same transforms when a hospital outgrows one machine.

    Only the DataFrame API and SQL are used (no ``sparkContext``, no ``delta.tables``), so a
    classic session and a Spark Connect session (``MEDLAKE__SPARK__REMOTE=sc://…``) both work.
    """

    name = "spark"

    def __init__(
        self, spark: SparkSession | None = None, settings: SparkSettings | None = None
    ) -> None:
        self.spark = spark if spark is not None else spark_session(settings)
        require_delta(self.spark)
        #: commits the stage's own table writes (ledger, quarantine, staging) through delta-spark
        self.writer: TableWriter = SparkTableWriter(self.spark)

    # -- batch-local -------------------------------------------------------------------------

    def batch_local(
        self,
        fn: BatchTransform,
        *,
        source: Source,
        target: Target,
        quarantine: QuarantineSink,
        sides: Mapping[str, Target] | None = None,
    ) -> Applied:
        sides = dict(sides or {})
        if isinstance(source, FileSource):
            frame = self._files(source)
            rows_in = None
        else:
            frame = self._read(source)
            rows_in = frame.count()
        tagged_type = _tagged_type(target.schema, {n: t.schema for n, t in sides.items()})
        run = _tagged_batches(
            _decoded(fn, source.decode) if isinstance(source, DeltaSource) else fn,
            # the transform sees the Arrow types the embedded engine's delta-rs reader gives it
            source_schema=(
                source.schema if isinstance(source, FileSource) else to_arrow_schema(frame.schema, timezone="UTC")
            ),
            good_schema=target.schema,
            out_schema=self._arrow(tagged_type),
            run_id=quarantine.run_id,
            encode_good=target.encode,
            encode_bad=quarantine.encode,
            sides={n: (t.schema, t.encode) for n, t in sides.items()},
        )
        return self._write_tagged(
            frame.mapInArrow(run, tagged_type), target, quarantine, rows_in, sides=sides
        )

    def _files(self, source: FileSource) -> DataFrame:
        """One row per landing file, read (and cut into records) on the executors."""
        files = self.spark.createDataFrame(
            [(path, name) for path, name in source.files], "path string, name string"
        ).repartition(max(1, min(len(source.files), 64)))
        schema = spark_schema(source.schema)
        return files.mapInArrow(_file_batches(source.reader, source.schema, schema), schema)

    def _read(self, source: DeltaSource) -> DataFrame:
        reader = self.spark.read.format("delta")
        if source.version is not None:
            reader = reader.option("versionAsOf", source.version)
        frame = reader.load(source.uri)
        for column, values in source.where.items():
            frame = frame.where(F.col(column).cast("string").isin(list(values)))
        for column, values in source.where_not.items():
            frame = frame.where(~F.col(column).cast("string").isin(list(values)))
        if source.columns is not None:
            frame = frame.select(*source.columns)
        return frame

    def _arrow(self, struct: StructType) -> pa.Schema:
        large = (
            self.spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") or ""
        ).lower()
        return to_arrow_schema(struct, timezone="UTC", prefers_large_types=large == "true")

    def _write_tagged(
        self,
        tagged: DataFrame,
        target: Target,
        quarantine: QuarantineSink,
        rows_in: int | None,
        *,
        sides: Mapping[str, Target] | None = None,
    ) -> Applied:
        sides = dict(sides or {})
        tagged = tagged.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counted = tagged.agg(
                F.count(_GOOD).alias(_GOOD),
                F.count(_QUARANTINED).alias(_QUARANTINED),
                F.sum(F.col("_in")).alias("_in"),
                *(F.count(_side(n)).alias(_side(n)) for n in sides),
            ).collect()[0]
            good_rows, quarantined_rows = int(counted[_GOOD]), int(counted[_QUARANTINED])
            counters: dict[str, int] = {}
            for row in tagged.where(F.col("_counters").isNotNull()).select("_counters").collect():
                for name, value in json.loads(row["_counters"]).items():
                    counters[name] = counters.get(name, 0) + int(value)
            good = tagged.where(F.col(_GOOD).isNotNull()).select(f"{_GOOD}.*")
            self.write(good, target)
            by_table: dict[str, int] = {}
            if quarantined_rows:
                bad = tagged.where(F.col(_QUARANTINED).isNotNull()).select(f"{_QUARANTINED}.*")
                for row in bad.groupBy("table_name").count().collect():
                    by_table[row["table_name"]] = int(row["count"])
                self._insert_quarantine(bad, quarantine.uri)
            for name, side in sides.items():
                rows = tagged.where(F.col(_side(name)).isNotNull()).select(f"{_side(name)}.*")
                self.write(rows, side)
        finally:
            tagged.unpersist()
        return Applied(
            rows_in=rows_in if rows_in is not None else int(counted["_in"] or 0),
            good=good_rows,
            quarantined=quarantined_rows,
            target_version=self.version(target.uri) or 0,
            counters=counters,
            sides={name: int(counted[_side(name)]) for name in sides},
            quarantined_by=by_table,
        )

    # -- keyed -------------------------------------------------------------------------------

    def keyed(
        self,
        fn: KeyedTransform,
        *,
        source: DeltaSource,
        keys: Sequence[str],
        target: Target,
        quarantine: QuarantineSink,
    ) -> Applied:
        frame = self._read(source)
        rows_in = frame.count()
        tagged_type = _tagged_type(target.schema)
        grouped = frame.groupBy(*keys).applyInArrow(
            _keyed_batches(
                fn,
                decode=source.decode,
                source_schema=to_arrow_schema(frame.schema, timezone="UTC"),
                good_schema=target.schema,
                out_schema=self._arrow(tagged_type),
                run_id=quarantine.run_id,
                encode_good=target.encode,
                encode_bad=quarantine.encode,
            ),
            tagged_type,
        )
        return self._write_tagged(grouped, target, quarantine, rows_in)

    # -- set-based ---------------------------------------------------------------------------

    def insert_new(
        self,
        *,
        source: DeltaSource,
        target: Target,
        key: Sequence[str],
        order: Sequence[str],
        run_id: str | None = None,
        update: bool = False,
    ) -> Inserted:
        """As :meth:`EmbeddedEngine.insert_new`, with DataFrames and one ``MERGE INTO``."""
        runs = [run_id] if run_id else list(source.where.get("_run_id") or [])
        src = self._read(
            DeltaSource(source.uri, source.version, None, dict(source.where), dict(source.where_not))
        )
        columns = [c for c in target.schema.names if c in src.columns]
        position = F.struct(*[F.col(c) for c in order])
        firsts = src.groupBy(*key).agg(F.min(position).alias("_pos"))
        if update:
            if not self.exists(target.uri):
                self._create(target.uri, spark_schema(target.schema), partition_by=target.partition_by)
        elif self.exists(target.uri):
            earlier = self.spark.read.format("delta").load(target.uri)
            if runs:
                earlier = earlier.where(
                    F.coalesce(F.col(target.run_column).cast("string"), F.lit("")) != runs[0]
                )
            firsts = firsts.join(earlier.select(*key), on=list(key), how="left_anti")
        else:
            self._create(target.uri, spark_schema(target.schema), partition_by=target.partition_by)
        keep = firsts.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            marked = src.withColumn("_pos", position)
            kept_rows = marked.join(keep, on=[*key, "_pos"], how="left_semi").select(*columns)
            rows_in = src.count()
            kept = keep.count()
            duplicates = marked.join(keep, on=[*key, "_pos"], how="left_anti").count()
            appended, updated = _merge_frame(self.spark, kept_rows, target.uri, key=key, update=update)
        finally:
            keep.unpersist()
        return Inserted(
            rows_in=rows_in,
            kept=kept,
            duplicates=duplicates,
            appended=appended,
            target_version=self.version(target.uri) or 0,
            updated=updated,
        )

    def close(self) -> None:
        """Nothing to release: the session outlives the engine (dbt and Splink share it)."""

    # -- tables, through SQL -----------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        """Whether a Delta table is at ``uri`` (``DESCRIBE DETAIL`` fails on anything else)."""
        return _exists(self.spark, uri)

    def version(self, uri: str) -> int | None:
        return _version(self.spark, uri) if self.exists(uri) else None

    def write(self, frame: DataFrame, target: Target) -> None:
        """Write rows to a Delta table that has exactly ``target.schema`` (:func:`_save`)."""
        _save(self.spark, frame, target.uri, spark_schema(target.schema), mode=target.mode,
              partition_by=target.partition_by)

    def _insert_quarantine(self, rows: DataFrame, uri: str) -> None:
        """The quarantine rows whose id the table does not hold yet (a retried step adds none)."""
        if not self.exists(uri):
            self._create(uri, spark_schema(QUARANTINE_SCHEMA))
        # two source DAGs may refuse records at once: a lost race is redone
        _merge_frame(self.spark, rows.dropDuplicates(["quarantine_id"]), uri, key=["quarantine_id"], update=False)

    def _create(self, uri: str, schema: StructType, *, partition_by: Sequence[str] = ()) -> None:
        _create(self.spark, uri, schema, partition_by=partition_by)


class SparkTableWriter:
    """Commits a stage's table writes through delta-spark (:class:`medlake.lake.TableWriter`):
    the rows travel as Arrow into a DataFrame, appended or overwritten with the DataFrame writer,
    merged with ``MERGE INTO`` and deleted with ``DELETE FROM``; SQL and DataFrames only, so a
    Spark Connect session commits them too. Tables are created from the Arrow schema first (NOT
    NULL kept), as :meth:`SparkEngine.write` does."""

    name = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def __reduce__(self) -> tuple[Any, ...]:
        # a lake sent to a worker (an executor, a process) writes there with the active session
        return (_active_writer, ())

    def _frame(self, data: pa.Table, uri: str | None = None) -> DataFrame:
        """The rows as a DataFrame, cast to the types of the table at ``uri`` when it exists (a
        table another engine created may store a type under another name, e.g. timestamp_ntz)."""
        frame = self.spark.createDataFrame(data, schema=spark_schema(data.schema))
        if uri is None or not _exists(self.spark, uri):
            return frame
        stored = {f.name: f.dataType for f in self.spark.read.format("delta").load(uri).schema}
        return frame.select(
            *[F.col(f"`{c}`").cast(stored[c]).alias(c) if c in stored else F.col(f"`{c}`") for c in frame.columns]
        )

    def write(
        self, uri: str, data: pa.Table, *, mode: Any, partition_by: Sequence[str] = ()
    ) -> int:
        frame = self._frame(data, uri if mode == "append" else None)
        _save(self.spark, frame, uri, spark_schema(data.schema), mode=mode,
              partition_by=partition_by)
        return _version(self.spark, uri)

    def merge(self, uri: str, data: pa.Table, *, key: Sequence[str], update: bool) -> tuple[int, int]:
        return _merge_frame(self.spark, self._frame(data, uri), uri, key=key, update=update)

    def delete(self, uri: str, predicate: str) -> int:
        rows = _retried(lambda: self.spark.sql(f"DELETE FROM delta.`{uri}` WHERE {predicate}").collect())
        return int(rows[0]["num_affected_rows"]) if rows else 0

    def create(self, uri: str, schema: pa.Schema) -> None:
        _create(self.spark, uri, spark_schema(schema))


def _merge_frame(
    spark: SparkSession, frame: DataFrame, uri: str, *, key: Sequence[str], update: bool
) -> tuple[int, int]:
    """``MERGE INTO`` the Delta table at ``uri`` on ``key``: the frame's new keys inserted, its
    matched ones updated when ``update``; a commit that lost a race is redone. Returns the rows
    inserted and updated, as the MERGE counted them."""
    view = f"medlake_merge_{os.getpid()}_{uuid.uuid4().hex}"
    frame.createOrReplaceTempView(view)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key)
    matched = "WHEN MATCHED THEN UPDATE SET * " if update else ""
    try:
        row = _retried(
            lambda: spark.sql(
                f"MERGE INTO delta.`{uri}` t USING {view} s ON {on} {matched}WHEN NOT MATCHED THEN INSERT *"
            ).collect()
        )[0]
    finally:
        spark.catalog.dropTempView(view)
    return int(row["num_inserted_rows"]), int(row["num_updated_rows"])


def _active_writer() -> SparkTableWriter:
    active = SparkSession.getActiveSession()
    if active is None:
        raise RuntimeError("a lake holding the Spark writer was sent where no Spark session runs")
    return SparkTableWriter(active)


def _save(
    spark: SparkSession, frame: DataFrame, uri: str, schema: StructType, *, mode: str,
    partition_by: Sequence[str] = (),
) -> None:
    """Write rows to a Delta table that has exactly ``schema``, creating or replacing it first
    (``overwriteSchema`` would drop every NOT NULL); an unchanged schema is overwritten in one
    commit, as delta-rs does. A commit race is retried (:func:`_retried`)."""
    exists = _exists(spark, uri)
    if not exists or (
        mode == "overwrite" and not _same_columns(spark.read.format("delta").load(uri).schema, schema)
    ):
        _create(spark, uri, schema, partition_by=partition_by, replace=exists)
    _retried(lambda: frame.write.format("delta").mode(mode).save(uri))


def _exists(spark: SparkSession, uri: str) -> bool:
    try:
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{uri}`").select("format").collect()
    except Exception:  # noqa: BLE001 - not a Delta table (Spark raises AnalysisException)
        return False
    return bool(detail) and (detail[0]["format"] or "delta") == "delta"


def _version(spark: SparkSession, uri: str) -> int:
    last = spark.sql(f"DESCRIBE HISTORY delta.`{uri}` LIMIT 1").select("version").collect()
    return int(last[0]["version"])


def _create(
    spark: SparkSession, uri: str, schema: StructType, *, partition_by: Sequence[str] = (), replace: bool = False
) -> None:
    verb = "REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    parts = f" PARTITIONED BY ({', '.join(f'`{c}`' for c in partition_by)})" if partition_by else ""
    spark.sql(f"{verb} delta.`{uri}` ({_ddl(schema)}) USING delta{parts}")


#: commit races a delta-spark write retries (another run or source DAG committed in between)
_ATTEMPTS = 8


def _retried(commit: Callable[[], Any]) -> Any:
    """Run a delta-spark commit again when it lost a race to another writer (Delta's
    ``Concurrent…Exception``s): keyed writes give the same table when redone."""
    import random
    import time

    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return commit()
        except Exception as exc:  # Py4J / Spark Connect wrap Delta's exception
            if attempt == _ATTEMPTS or "Concurrent" not in f"{type(exc).__name__} {exc}"[:2000]:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable")


def _ddl(schema: StructType) -> str:
    """Column definitions for CREATE TABLE, NOT NULL kept."""
    return ", ".join(
        f"`{f.name}` {f.dataType.simpleString()}{'' if f.nullable else ' NOT NULL'}" for f in schema
    )


def _side(name: str) -> str:
    """The tagged stream's column of a side output."""
    if not name.isidentifier():
        raise ValueError(f"a side output's name must be an identifier, not {name!r}")
    return f"side_{name}"


def _tagged_type(
    good_schema: pa.Schema, sides: Mapping[str, pa.Schema] | None = None
) -> StructType:
    """One struct column per output (good, quarantined, each side, in name order), the batch's
    input row count and its counters; every row fills one of them."""
    return StructType(
        [
            StructField(_GOOD, _nullable(spark_schema(good_schema)), nullable=True),
            StructField(_QUARANTINED, _nullable(spark_schema(QUARANTINE_SCHEMA)), nullable=True),
            *(
                StructField(_side(name), _nullable(spark_schema(schema)), nullable=True)
                for name, schema in sorted((sides or {}).items())
            ),
            StructField("_in", LongType(), nullable=True),
            StructField("_counters", StringType(), nullable=True),
        ]
    )


def _decoded(fn: BatchTransform, decode: Callable[[pa.Table], pa.Table] | None) -> BatchTransform:
    if decode is None:
        return fn

    def run(batch: pa.RecordBatch) -> Split:
        table = decode(pa.Table.from_batches([batch])).combine_chunks()
        return fn(table.to_batches()[0] if table.num_rows else batch.slice(0, 0))

    return run


def _file_batches(
    reader: FileReader, arrow_schema: pa.Schema, schema: StructType
) -> ArrowBatches:
    """The ``mapInArrow`` function that reads each landing file of a batch of (path, name) rows."""
    large_out = to_arrow_schema(schema, timezone="UTC")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path, name in zip(
                batch.column("path").to_pylist(), batch.column("name").to_pylist(), strict=True
            ):
                for records in reader(path, name):
                    if records.num_rows:
                        yield _cast_batch(records, arrow_schema, large_out)

    return run


def _cast_batch(records: pa.RecordBatch, schema: pa.Schema, out: pa.Schema) -> pa.RecordBatch:
    table = conform(pa.Table.from_batches([records]), schema).cast(out).combine_chunks()
    return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=out)


def _tagged_batches(
    fn: BatchTransform,
    *,
    source_schema: pa.Schema,
    good_schema: pa.Schema,
    out_schema: pa.Schema,
    run_id: str,
    encode_good: Encode | None = None,
    encode_bad: Encode | None = None,
    sides: Mapping[str, tuple[pa.Schema, Encode | None]] | None = None,
) -> ArrowBatches:
    """The ``mapInArrow`` function: each batch's good rows, then its quarantine rows and its side
    outputs' rows, tagged, and one row counting the batch's input rows (``_in``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            split = fn(pa.Table.from_batches([batch]).cast(source_schema).combine_chunks().to_batches()[0])
            yield from _tag(
                split,
                batch.num_rows,
                good_schema,
                out_schema,
                run_id,
                encode_good,
                encode_bad,
                sides,
            )

    return run


def _keyed_batches(
    fn: KeyedTransform,
    *,
    decode: Callable[[pa.Table], pa.Table] | None,
    source_schema: pa.Schema,
    good_schema: pa.Schema,
    out_schema: pa.Schema,
    run_id: str,
    encode_good: Encode | None = None,
    encode_bad: Encode | None = None,
) -> Callable[[tuple[Any, ...], Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``applyInArrow`` function (iterator form): one key's batches, as one table for ``fn``."""

    def run(key: tuple[Any, ...], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches), schema=None).cast(source_schema)
        if decode is not None:
            table = decode(table)
        values = tuple(k.as_py() if isinstance(k, pa.Scalar) else k for k in key)
        split = fn(values, table.combine_chunks())
        yield from _tag(split, table.num_rows, good_schema, out_schema, run_id, encode_good, encode_bad)

    return run


def _tag(
    split: Split,
    rows_in: int,
    good_schema: pa.Schema,
    out_schema: pa.Schema,
    run_id: str,
    encode_good: Encode | None,
    encode_bad: Encode | None,
    sides: Mapping[str, tuple[pa.Schema, Encode | None]] | None = None,
) -> Iterator[pa.RecordBatch]:
    outputs = [
        (_GOOD, split.good, good_schema, encode_good),
        (_QUARANTINED, stamp_run(split.quarantined, run_id), QUARANTINE_SCHEMA, encode_bad),
    ]
    sides = sides or {}
    unknown = set(split.sides) - set(sides)
    if unknown:
        raise ValueError(f"the step produced side outputs {sorted(unknown)}, which have no target")
    for name, (schema, encode) in sorted(sides.items()):
        rows = split.sides.get(name)
        outputs.append(
            (_side(name), schema.empty_table() if rows is None else rows, schema, encode)
        )
    segments: list[tuple[str, pa.Array]] = []
    for column, rows, schema, encode in outputs:
        conformed = conform(rows, schema)
        if encode is not None and conformed.num_rows:
            conformed = conform(encode(conformed), schema)
        if conformed.num_rows:
            segments.append((column, _struct(conformed, out_schema.field(column).type)))
    facts = json.dumps(dict(split.counters), sort_keys=True) if split.counters else None
    parts = [_only(out_schema, {column: values}) for column, values in segments]
    parts.append(
        _only(out_schema, {"_in": pa.array([rows_in], pa.int64()), "_counters": pa.array([facts])})
    )
    yield from pa.concat_tables(parts).combine_chunks().to_batches()


def _only(schema: pa.Schema, columns: Mapping[str, pa.Array]) -> pa.Table:
    """Rows of the tagged stream holding ``columns``, every other column null."""
    length = len(next(iter(columns.values())))
    return pa.table(
        [
            columns[f.name].cast(f.type) if f.name in columns else pa.nulls(length, f.type)
            for f in schema
        ],
        schema=schema,
    )


def _struct(rows: pa.Table, struct_type: pa.DataType) -> pa.Array:
    """The rows as one struct array of ``struct_type``."""
    fields = [struct_type.field(i) for i in range(struct_type.num_fields)]
    cast = rows.cast(pa.schema(fields)).combine_chunks()
    if cast.num_rows == 0:
        return pa.array([], type=struct_type)
    return pa.StructArray.from_arrays(
        [cast.column(i).chunk(0) for i in range(cast.num_columns)], fields=fields
    )


def _nullable(schema: StructType) -> StructType:
    """The same columns, all nullable: the tagged stream holds nulls for the other side."""
    return StructType(
        [StructField(f.name, _nullable_type(f.dataType), True, f.metadata) for f in schema]
    )


def _nullable_type(dtype: DataType) -> DataType:
    if isinstance(dtype, StructType):
        return _nullable(dtype)
    if isinstance(dtype, ArrayType):
        return ArrayType(_nullable_type(dtype.elementType), True)
    if isinstance(dtype, MapType):
        return MapType(dtype.keyType, _nullable_type(dtype.valueType), True)
    return dtype


def _same_columns(a: StructType, b: StructType) -> bool:
    """Same names, types and nullability, whatever the field metadata."""
    return [(f.name, f.dataType.simpleString(), f.nullable) for f in a] == [
        (f.name, f.dataType.simpleString(), f.nullable) for f in b
    ]
