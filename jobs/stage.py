"""What every pipeline stage shares: its result (versions written and ledger entries) and the
bronze writer every source's ingest uses.

A source module (``jobs/ingest/<kind>.py``) plugs into the pipeline with two stage functions:

    ingest(landing: Path, lake: Lake, *, run_id: str, now: datetime, engine: Engine) -> StageResult
        landing/<kind>/ → bronze.<table> (raw kept, first copy of each _record_hash) + quarantine
        + ledger, on the run's engine
    to_staging(lake: Lake, *, run_id: str, key: bytes, max_shift_days: int,
               versions: dict[str, int | None], engine: Engine) -> StageResult
        this run's bronze rows (bronze read at versions[<bronze table>], the version ingest wrote)
        → staging.<silver table> (awaiting the gate) + quarantine + ledger. It overwrites every
        staging table it owns on every run, with zero rows when nothing came: the gate reads them
        all. A source feeding a silver table FHIR and HL7 v2 also fill (patients, observations, …)
        runs after them and appends to that staging table instead (mode="append"), after applying
        the same standardization (jobs/clean/standardize.py STANDARDIZE).

so the pipeline and the DAG only list sources, never know their formats.

Every source's landing files reach bronze the same way (:func:`ingest_files`): read a file at a
time into record batches (:func:`read_batches`), each batch checked into bronze rows and refused
records (the source's ``to_bronze``) by the selected engine, the run's rows sealed into its own
scratch table, and the first copy of each new record appended to bronze by the set-based insert.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from medlake.lake import Lake, conform
from medlake.ledger import Entry
from medlake.quarantine import Split, stamp_run
from medlake.registry import QUARANTINE, TableSpec

if TYPE_CHECKING:
    from medlake.engines import Applied, DeltaSource, Engine, Inserted

#: records per batch a landing file is cut into (one file may hold millions)
RECORDS_PER_BATCH = 5_000


@dataclass(frozen=True)
class StageResult:
    """What a stage wrote: table name → Delta version, and its ledger entries."""

    versions: dict[str, int | None]
    entries: list[Entry]

    def as_xcom(self) -> dict[str, object]:
        """Only names, versions and counts travel between tasks, never data."""
        return {"versions": self.versions, "ledger": [e.__dict__ for e in self.entries]}

    @staticmethod
    def merge(results: list[StageResult]) -> StageResult:
        """One result from several stages' (e.g. every source's ingest)."""
        return StageResult(
            {name: v for r in results for name, v in r.versions.items()},
            [e for r in results for e in r.entries],
        )


def read_batches(
    path: str,
    name: str,
    *,
    read_file: Callable[..., Iterable[dict[str, Any]]],
    schema: pa.Schema,
    rows: int = RECORDS_PER_BATCH,
) -> Iterator[pa.RecordBatch]:
    """The raw records ``read_file(path, name=name)`` yields, as record batches of ``schema`` of at
    most ``rows`` records: the reader both engines stream a source's landing files through."""
    records: list[dict[str, Any]] = []
    for record in read_file(Path(path), name=name):
        records.append(record)
        if len(records) == rows:
            yield pa.RecordBatch.from_pylist(records, schema=schema)
            records = []
    if records:
        yield pa.RecordBatch.from_pylist(records, schema=schema)


def reader_of(
    read_file: Callable[..., Iterable[dict[str, Any]]], schema: pa.Schema
) -> Callable[..., Iterator[pa.RecordBatch]]:
    """A picklable file reader (``(path, name) -> record batches``) from a source's per-file
    record iterator (``read_file(path, *, name) -> dicts``)."""
    return functools.partial(read_batches, read_file=read_file, schema=schema)


@dataclass(frozen=True)
class Ingested:
    """A source's files in bronze: its ledger entry and what the engine counted on the way."""

    entry: Entry
    read: Applied
    new: Inserted


def ingest_files(
    lake: Lake,
    engine: Engine,
    spec: TableSpec,
    files: Sequence[tuple[str, str]],
    *,
    reader: Callable[..., Iterator[pa.RecordBatch]],
    schema: pa.Schema,
    to_bronze: Callable[[pa.RecordBatch], Split],
    run_id: str,
) -> Ingested:
    """Landing files → ``spec``'s bronze table through ``engine``, a batch at a time.

    ``files`` are (path, name in bronze); ``reader`` yields each file's raw records as batches of
    ``schema``; ``to_bronze`` turns a batch into bronze rows and refused records (quarantined
    with their file, offset and reason). The run's rows are sealed into its scratch table; the
    first copy (by file, then offset) of each new key is appended to bronze. A retried run counts
    the same, and a file ingested twice adds nothing. Every count is counted where it happens:
    records read, quarantined, new in bronze, and duplicates (within the run or already in bronze).
    The limits in force (``MEDLAKE__LIMITS__*``) travel with the reader and the step to workers.
    """
    from medlake.engines import DeltaSource, FileSource, QuarantineSink, Target
    from medlake.jobs.ingest import limits

    scratch = lake.scratch_uri(spec.name, run_id=run_id)
    read = engine.batch_local(
        limits.bound(to_bronze),
        source=FileSource(files, reader=limits.bound(reader), schema=schema),
        target=Target(scratch, spec.schema, encode=lake.encoder(spec.name)),
        quarantine=QuarantineSink(
            lake.uri(QUARANTINE.name), run_id=run_id, encode=lake.encoder(QUARANTINE.name)
        ),
    )
    new = _promote(lake, engine, spec, DeltaSource(scratch, where={"_run_id": [run_id]}), run_id=run_id)
    entry = Entry(
        stage="ingest",
        table_name=spec.name,
        records_in=read.rows_in,
        records_out=new.kept,
        quarantined=read.quarantined,
        merged=new.duplicates,
    )
    return Ingested(entry, read, new)


def write_bronze(
    lake: Lake,
    spec: TableSpec,
    split: Split,
    raw: pa.Table,
    *,
    run_id: str,
    engine: Engine | None = None,
) -> Entry:
    """Write a bronze split and its quarantine; the ingest ledger entry, every count counted.

    ``raw`` is every record read (one row each). The accepted rows go to the run's scratch copy of
    the table (sealed like bronze), then the first copy of each new key is appended to bronze by
    the set-based insert both engines share (:meth:`~medlake.engines.Engine.insert_new`): new
    records are the keys it kept, merged ones the rows it did not (a later copy within the run,
    or a record bronze held before; a file ingested twice adds nothing). A retried run counts the
    same: its own earlier rows in bronze are not "before".
    """
    from medlake.engines import DeltaSource
    from medlake.engines.embedded import EmbeddedEngine

    lake.insert_new(QUARANTINE.name, stamp_run(split.quarantined, run_id))
    scratch = lake.write_scratch(
        spec.name, conform(split.good, spec.schema), run_id=run_id, sealed_as=spec.name
    )
    new = _promote(lake, engine or EmbeddedEngine(), spec, DeltaSource(scratch), run_id=run_id)
    return Entry(
        stage="ingest",
        table_name=spec.name,
        records_in=raw.num_rows,
        records_out=new.kept,
        quarantined=split.quarantined.num_rows,
        merged=new.duplicates,
    )


def _promote(lake: Lake, engine: Engine, spec: TableSpec, scratch: DeltaSource, *, run_id: str) -> Inserted:
    """The first copy (by file, then offset) of each key of the run's scratch rows that bronze
    lacks, appended to bronze by the engine's set-based insert; the scratch table dropped."""
    from medlake.engines import Target

    order = tuple(c for c in ("_source_file", "_source_offset") if c in spec.schema.names)
    new = engine.insert_new(
        source=scratch,
        target=Target(lake.uri(spec.name), spec.schema, mode="append", partition_by=spec.partition_by),
        key=spec.key,
        order=order or spec.key,
        run_id=run_id,
    )
    lake.drop_scratch_table(spec.name, run_id=run_id)
    return new
