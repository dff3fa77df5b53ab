"""One transform, two engines.

Every transform is a pure function over Arrow data in one of three shapes, and knows nothing of
files, Spark or Airflow (shared/DESIGN.md, "Engines"):

========== ================================ ================================== =============================
shape      signature                        embedded (:mod:`.embedded`)        Spark (:mod:`.spark`)
========== ================================ ================================== =============================
batch-local ``fn(pa.RecordBatch) -> Split`` record batches streamed into one    ``mapInArrow``
                                            Delta commit; worker processes
keyed      ``fn(key, pa.Table) -> Split``   hash buckets, one in memory at a    ``groupBy(...).applyInArrow``
                                            time                               (iterator form)
set-based  SQL                              delta-rs MERGE, dbt-duckdb          ``MERGE INTO``, dbt-spark
========== ================================ ================================== =============================

An engine reads a :class:`DeltaSource` (or the files of a :class:`FileSource`), applies the
function and writes the accepted rows to one Delta table and the rest, stamped with the run id,
to the quarantine table (MERGE on ``quarantine_id``, so a retried step adds no row twice).
Transforms are batch-invariant: the same rows come out whatever the batch boundaries.

Which engine runs a stage is configuration (``MEDLAKE__ENGINE=embedded|spark``, see
:func:`engine_for`); the tables either writes are the same Delta tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa

from medlake.quarantine import Split

if TYPE_CHECKING:
    from medlake.config import Settings
    from medlake.lake import TableWriter

#: batch-local: one record batch in, the rows accepted and the quarantine rows out
BatchTransform = Callable[[pa.RecordBatch], Split]
#: keyed: every row of one key (a person, a device stream) in, as one table
KeyedTransform = Callable[[tuple[Any, ...], pa.Table], Split]
#: reads one landing file: its (path, name in bronze) → record batches of the source's raw schema
FileReader = Callable[[str, str], Iterator[pa.RecordBatch]]
#: encrypts (or leaves) the PHI columns of rows about to be stored; picklable
Encode = Callable[[pa.Table], pa.Table]

Mode = Literal["append", "overwrite"]


@dataclass(frozen=True)
class DeltaSource:
    """A Delta table to read, at a pinned version, optionally only some columns and rows.

    ``where`` keeps rows whose column equals one of the given string values (pushed down to
    the Parquet statistics by both engines: a run's rows by ``_run_id``, a type by
    ``resource_type``).
    """

    uri: str
    version: int | None = None
    columns: Sequence[str] | None = None
    where: dict[str, Sequence[str]] = field(default_factory=dict)
    #: rows whose column equals none of the given values
    where_not: dict[str, Sequence[str]] = field(default_factory=dict)
    #: opens the encrypted columns of what is read (the lake's codec); picklable
    decode: Callable[[pa.Table], pa.Table] | None = None


@dataclass(frozen=True)
class FileSource:
    """Landing files read by ``reader`` into record batches of ``schema`` (one file per task on
    Spark, one after another embedded). Each file is given as (path, name in bronze)."""

    files: Sequence[tuple[str, str]]
    reader: FileReader
    schema: pa.Schema


Source = DeltaSource | FileSource


@dataclass(frozen=True)
class Target:
    """Where the accepted rows go: a Delta table of exactly ``schema``."""

    uri: str
    schema: pa.Schema
    mode: Mode = "overwrite"
    partition_by: Sequence[str] = ()
    encode: Encode | None = None
    #: the column naming the run that wrote a row (a retried step's own rows are not "before")
    run_column: str = "_run_id"


@dataclass(frozen=True)
class QuarantineSink:
    """The quarantine table, and the run id stamped on every row sent there."""

    uri: str
    run_id: str
    encode: Encode | None = None


@dataclass(frozen=True)
class Applied:
    """What applying a transform wrote, counted as it was written."""

    rows_in: int
    good: int
    quarantined: int
    target_version: int
    #: the transform's counters (:attr:`Split.counters`), summed over every batch
    counters: dict[str, int] = field(default_factory=dict)
    #: rows written to each side output (:attr:`Split.sides`), counted as written
    sides: dict[str, int] = field(default_factory=dict)
    #: the quarantine rows by the table they were refused for (their ``table_name``): a step
    #: with side outputs refuses for more than one table
    quarantined_by: dict[str, int] = field(default_factory=dict)


class Engine(Protocol):
    """Applies pure Arrow transforms from Delta tables (or landing files) to Delta tables."""

    name: str
    #: commits the stage's own writes to lake tables (:meth:`medlake.lake.Lake.on`): the tables a
    #: stage writes have one writer engine, delta-rs embedded and delta-spark on Spark
    writer: TableWriter

    def batch_local(
        self,
        fn: BatchTransform,
        *,
        source: Source,
        target: Target,
        quarantine: QuarantineSink,
        sides: Mapping[str, Target] | None = None,
    ) -> Applied:
        """``fn`` over every batch of ``source``: its good rows to ``target`` (one commit), its
        quarantine rows to ``quarantine``, and the rows of each side output it names
        (:attr:`Split.sides`) to that side's target (one commit each, an empty table when none)."""
        ...

    def keyed(
        self,
        fn: KeyedTransform,
        *,
        source: DeltaSource,
        keys: Sequence[str],
        target: Target,
        quarantine: QuarantineSink,
    ) -> Applied: ...

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
        """The first row (by ``order``) of each key of ``source`` into ``target``: appended when
        the key is new; when the target holds the key from another run, left out, or with
        ``update`` written over the row held (an upsert, as the gate promotes silver). The rows
        go as they are stored (``source`` not decoded): the source holds them sealed as the
        target does."""
        ...

    def version(self, uri: str) -> int | None: ...

    def close(self) -> None:
        """Release what the engine started for its steps (worker processes); not the session a
        caller gave it."""
        ...


@dataclass(frozen=True)
class Inserted:
    """A set-based insert of the rows whose key is new: each count counted, none derived."""

    rows_in: int
    #: rows whose key is new to the target (the first of each key; with ``update``, the first
    #: of every key); on a retry, some may be in the target already from the attempt that crashed
    kept: int
    #: rows of the source not kept: a later copy of a key, or (without ``update``) a key the
    #: target held before
    duplicates: int
    #: rows this call appended
    appended: int
    target_version: int
    #: rows written over a row the target held with the same key (``update``)
    updated: int = 0


def engine_for(settings: Settings, *, kind: str | None = None) -> Engine:
    """The engine a stage runs on: ``kind`` when given (``medlake run --engine``), else the
    setting ``MEDLAKE__ENGINE``."""
    chosen = kind or settings.engine
    if chosen == "embedded":
        from medlake.engines.embedded import EmbeddedEngine

        return EmbeddedEngine.from_settings(settings.embedded)
    if chosen == "spark":
        from medlake.engines.spark import SparkEngine

        return SparkEngine(settings=settings.spark)
    raise ValueError(f"unknown engine {chosen!r}: MEDLAKE__ENGINE is embedded or spark")
