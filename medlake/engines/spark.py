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

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import ArrayType, DataType, MapType, StructField, StructType

from medlake.config import STATE_DIR, SparkSettings
from medlake.engines import Applied, Transform
from medlake.lake import conform
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA

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
    """A Spark session with delta-spark from the local jars; the running one if there is one."""
    settings = settings or SparkSettings()
    jars = delta_jars(settings.jars_dir)
    # Python workers run the interpreter that runs medlake, unless the caller chose another.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = {
        "spark.jars": ",".join(str(j.resolve()) for j in jars),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Spark's catalog tables (dbt-spark's schemas) live in local state, not in the cwd
        "spark.sql.warehouse.dir": str((STATE_DIR / "spark-warehouse").resolve()),
    }
    if settings.master.startswith("local"):
        # Spark's 200 shuffle partitions and Delta's 50 log-replay partitions are for clusters.
        conf["spark.sql.shuffle.partitions"] = str(LOCAL_PARTITIONS)
        conf["spark.databricks.delta.snapshotPartitions"] = str(LOCAL_PARTITIONS)
    builder = SparkSession.builder.master(settings.master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    require_delta(spark)
    return spark


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
    """Spark with delta-spark: the same transforms when a hospital outgrows one machine."""

    name = "spark"

    def __init__(
        self, spark: SparkSession | None = None, settings: SparkSettings | None = None
    ) -> None:
        self.spark = spark if spark is not None else spark_session(settings)
        require_delta(self.spark)

    def apply(
        self,
        fn: Transform,
        *,
        source_uri: str,
        target_uri: str,
        quarantine_uri: str,
        good_schema: pa.Schema,
        source_version: int | None = None,
        mode: Literal["append", "overwrite"] = "overwrite",
    ) -> Applied:
        reader = self.spark.read.format("delta")
        if source_version is not None:
            reader = reader.option("versionAsOf", source_version)
        source = reader.load(source_uri)

        good_type = spark_schema(good_schema)
        quarantine_type = spark_schema(QUARANTINE_SCHEMA)
        tagged_type = StructType(
            [
                StructField(_GOOD, _nullable(good_type), nullable=True),
                StructField(_QUARANTINED, _nullable(quarantine_type), nullable=True),
            ]
        )
        large = (
            self.spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") or ""
        ).lower()
        run = _tagged_batches(
            fn,
            # the transform sees the Arrow types the embedded engine's delta-rs reader gives it
            source_schema=to_arrow_schema(source.schema, timezone="UTC"),
            good_schema=good_schema,
            out_schema=to_arrow_schema(
                tagged_type, timezone="UTC", prefers_large_types=large == "true"
            ),
        )
        tagged = source.mapInArrow(run, tagged_type).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counted = tagged.agg(
                F.count(_GOOD).alias(_GOOD), F.count(_QUARANTINED).alias(_QUARANTINED)
            ).collect()[0]
            good_rows, quarantined_rows = int(counted[_GOOD]), int(counted[_QUARANTINED])
            rows_in = source.count()
            good = tagged.where(F.col(_GOOD).isNotNull()).select(f"{_GOOD}.*")
            self._write(good, target_uri, good_type, mode=mode)
            if quarantined_rows:
                quarantined = tagged.where(F.col(_QUARANTINED).isNotNull()).select(
                    f"{_QUARANTINED}.*"
                )
                self._write(quarantined, quarantine_uri, quarantine_type, mode="append")
        finally:
            tagged.unpersist()
        last = DeltaTable.forPath(self.spark, target_uri).history(1).select("version").collect()
        return Applied(
            rows_in=rows_in,
            good=good_rows,
            quarantined=quarantined_rows,
            target_version=int(last[0]["version"]),
        )

    def _write(
        self,
        frame: DataFrame,
        uri: str,
        schema: StructType,
        *,
        mode: Literal["append", "overwrite"],
    ) -> None:
        """Write rows to a Delta table that has exactly ``schema``, creating or replacing it first.

        ``overwriteSchema`` would drop every NOT NULL, so a new table, or an overwrite that changes
        the schema, first creates (or replaces) the table from ``schema``; the rows follow in a
        second commit. An unchanged schema is overwritten in one commit, as delta-rs does.
        """
        exists = DeltaTable.isDeltaTable(self.spark, uri)
        if not exists or (mode == "overwrite" and not _same_columns(self._schema_of(uri), schema)):
            # replace(), not createOrReplace(): the latter refuses a path table of another schema
            builder = DeltaTable.replace(self.spark) if exists else DeltaTable.create(self.spark)
            builder.location(uri).addColumns(schema).execute()
        frame.write.format("delta").mode(mode).save(uri)

    def _schema_of(self, uri: str) -> StructType:
        return self.spark.read.format("delta").load(uri).schema


def _tagged_batches(
    fn: Transform, *, source_schema: pa.Schema, good_schema: pa.Schema, out_schema: pa.Schema
) -> ArrowBatches:
    """The ``mapInArrow`` function: each batch's good rows, then its quarantine rows, tagged."""
    good_type = out_schema.field(_GOOD).type
    quarantine_type = out_schema.field(_QUARANTINED).type

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            split = fn(pa.Table.from_batches([batch]).cast(source_schema))
            good = _struct(conform(split.good, good_schema), good_type)
            bad = _struct(conform(split.quarantined, QUARANTINE_SCHEMA), quarantine_type)
            tagged = pa.concat_tables(
                [
                    pa.table([good, pa.nulls(len(good), quarantine_type)], schema=out_schema),
                    pa.table([pa.nulls(len(bad), good_type), bad], schema=out_schema),
                ]
            )
            yield from tagged.combine_chunks().to_batches()

    return run


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
