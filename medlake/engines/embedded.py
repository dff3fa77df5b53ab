"""The embedded engine: delta-rs reads and writes, Arrow batches stream through the transform.

- **batch-local**: the source is read as record batches (``batch_rows`` each) and the accepted
  rows stream into one ``write_deltalake`` commit through a ``RecordBatchReader``: no stage holds
  a whole table. Large sources run the transform in worker processes (one per core, spawned;
  at most two batches per worker in flight), so both cores work while the main process reads and
  writes. Quarantine rows are spooled to an Arrow IPC file and merged into the quarantine table
  once, on ``quarantine_id`` (a retried step adds no row twice).
- **keyed**: the source is cut into ``buckets`` Arrow IPC files by a hash of the key; one bucket
  at a time is read, sorted and cut into its keys' groups, so memory holds one bucket.
- **set-based**: DuckDB over the Delta tables' Arrow datasets (it spills to disk under its memory
  limit), written back with delta-rs.
"""

from __future__ import annotations

import atexit
import contextvars
import math
import os
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from queue import Full, Queue
from typing import TYPE_CHECKING, Any, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake
from pyarrow import ipc

from medlake.engines import (
    Applied,
    BatchTransform,
    DeltaSource,
    FileSource,
    Inserted,
    KeyedTransform,
    QuarantineSink,
    Source,
    Target,
)
from medlake.lake import DELTA_RS, TableWriter, conform, writer_properties
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split, stamp_run

if TYPE_CHECKING:
    import numpy as np

    from medlake.config import EmbeddedSettings

#: DuckDB's memory for set-based steps; beyond it, it spills to a temporary folder
DUCKDB_MEMORY = "1GB"
#: rows a MERGE of :meth:`EmbeddedEngine.insert_new` writes over at most in one commit
MERGE_ROWS = 200_000


@dataclass
class EmbeddedEngine:
    """One machine, no JVM: starts in well under a second."""

    batch_rows: int = 10_000
    workers: int = 1
    parallel_min_rows: int = 50_000
    buckets: int = 16
    bucket_rows: int = 250_000
    name: str = "embedded"
    #: commits the stage's own table writes (ledger, quarantine, staging): delta-rs, here
    writer: TableWriter = field(default=DELTA_RS, repr=False, compare=False)
    #: the worker processes, started on first use and kept for the engine's next steps (each
    #: worker imports medlake and loads models once, not once per step)
    _pool: ProcessPoolExecutor | None = field(default=None, repr=False, compare=False)

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
            atexit.register(self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later parallel step starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @classmethod
    def from_settings(cls, settings: EmbeddedSettings) -> EmbeddedEngine:
        return cls(
            batch_rows=settings.batch_rows,
            workers=settings.worker_count(),
            parallel_min_rows=settings.parallel_min_rows,
            buckets=settings.buckets,
            bucket_rows=settings.bucket_rows,
        )

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
        counts = _Counts()
        # the whole step (open, transform, seal) runs where the transform runs: in the workers
        # when the step is parallel, so the main process only reads, spools and writes
        step = _Sealed(fn, target.schema, target.encode, _decoder(source), dict(sides or {}))
        batches = _counted(self._read(_undecoded(source)), counts)
        with _Spool(quarantine) as spool, _SideSpools(sides or {}) as extra:
            splits = self._map(step, batches, parallel=self._parallel(source))
            good = _good_batches(splits, spool, counts, extra)
            _write(target, good)
            counts.quarantined = spool.close_and_merge()
            written = extra.write()
        return Applied(
            rows_in=counts.rows_in,
            good=counts.good,
            quarantined=counts.quarantined,
            target_version=DeltaTable(target.uri).version(),
            counters=counts.counters,
            sides=written,
            quarantined_by=spool.by_table,
        )

    def _parallel(self, source: Source) -> bool:
        """Whether a step over ``source`` runs in the workers: from ``parallel_min_rows`` on, or
        from two batches on once the workers are started (an earlier step paid for that)."""
        if self.workers <= 1:
            return False
        least = self.parallel_min_rows if self._pool is None else self.batch_rows + 1
        if isinstance(source, FileSource):
            size = sum(os.path.getsize(path) for path, _ in source.files if os.path.exists(path))
            return size >= least * 1_000  # about a kilobyte a record
        return row_count(source) >= least

    def _read(self, source: Source) -> Iterator[pa.RecordBatch]:
        if isinstance(source, FileSource):
            return _rebatched(
                (b for path, name in source.files for b in source.reader(path, name)),
                self.batch_rows,
            )
        return read_batches(source, batch_rows=self.batch_rows)

    def _map(
        self, fn: BatchTransform, batches: Iterable[pa.RecordBatch], *, parallel: bool
    ) -> Iterator[Split]:
        if not parallel:
            for batch in batches:
                if batch.num_rows:
                    yield fn(batch)
            return
        yield from _in_workers(fn, batches, pool=self.pool(), workers=self.workers)

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
        counts = _Counts()
        with tempfile.TemporaryDirectory(prefix="medlake-buckets-") as scratch:
            paths = _bucketed(
                _counted(read_batches(source, batch_rows=self.batch_rows), counts),
                keys=list(keys),
                buckets=self.buckets_for(source),
                folder=Path(scratch),
            )
            with _Spool(quarantine) as spool:
                if self.workers > 1 and counts.rows_in >= self.parallel_min_rows:
                    splits = _in_workers(
                        _KeyedBucket(fn, tuple(keys)),
                        (pa.record_batch({"path": [str(p)]}) for p in paths),
                        pool=self.pool(),
                        workers=self.workers,
                    )
                else:
                    splits = (_KeyedBucket(fn, tuple(keys)).apply(p) for p in paths)
                sealed = (_seal(split, target.schema, target.encode) for split in splits)
                _write(target, _good_batches(sealed, spool, counts))
                counts.quarantined = spool.close_and_merge()
        return Applied(
            rows_in=counts.rows_in,
            good=counts.good,
            quarantined=counts.quarantined,
            target_version=DeltaTable(target.uri).version(),
            counters=counts.counters,
        )

    def buckets_for(self, source: DeltaSource) -> int:
        """The hash buckets of a keyed step over ``source``: at least :attr:`buckets`, and enough
        that a bucket holds about :attr:`bucket_rows` rows, so its memory does not grow with the
        input."""
        return max(self.buckets, math.ceil(row_count(source) / self.bucket_rows))

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
        """Insert into ``target`` the first row (by ``order``) of each key of ``source`` whose key
        the target does not hold yet, except under ``run_id``'s own rows (a retried step; default:
        the run ``source`` is filtered on). With ``update``, the first row of every key: a key
        the target holds has its row written over (delta-rs MERGE, :data:`MERGE_ROWS` rows a
        commit; the new keys are appended in one commit first).

        Counted, not derived: rows read, rows kept (new keys, first of each), duplicates (rows of
        the source not kept), the rows this call appended (fewer than kept on a retry) and the
        rows it wrote over.

        Memory and time stay linear in the source's size: DuckDB decides on the key and order
        columns only, each row numbered by its place in one ordered scan of the source (a table
        it spills past :data:`DUCKDB_MEMORY`); the decision comes back as the sorted numbers of
        the rows to append, and a second scan in the same order streams the whole rows past
        it a batch at a time into the target's one commit."""
        import duckdb
        import numpy as np

        run_id = run_id or _single(source.where.get("_run_id"))
        narrow = list(dict.fromkeys([*key, *order]))
        with tempfile.TemporaryDirectory(prefix="medlake-duckdb-") as spill:
            con = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": spill})
            rows_in = _numbered_into(con, "rows", replace(source, columns=narrow), self.batch_rows)
            keys = _columns(key)
            position = ", ".join([*(f'"{c}" := "{c}"' for c in order), "_row := _row"])
            earlier = absent = held = ""
            if DeltaTable.is_deltatable(target.uri):
                stored = DeltaTable(target.uri).to_pyarrow_dataset()
                run = target.run_column
                held_columns = [*key, *([run] if run in stored.schema.names else [])]
                con.register("stored", stored)
                con.execute(
                    f"CREATE TEMP TABLE tgt AS SELECT DISTINCT {_columns(held_columns)} FROM stored"
                )
                con.unregister("stored")
                other_run = (
                    f"AND coalesce(CAST(t.\"{run}\" AS VARCHAR), '') <> '{_quoted(run_id)}'"
                    if run_id and run in held_columns
                    else ""
                )
                if not update:
                    earlier = f"WHERE NOT EXISTS (SELECT 1 FROM tgt t WHERE {_on(key, 't', 'f')} {other_run})"
                absent = f"WHERE NOT EXISTS (SELECT 1 FROM tgt t WHERE {_on(key, 't', 'k')})"
                held = f"WHERE EXISTS (SELECT 1 FROM tgt t WHERE {_on(key, 't', 'k')})"
            # the first row of each key by ``order`` (its number breaks a tie), unless an earlier
            # run put the key in the target
            con.execute(
                f"""CREATE TEMP TABLE keep AS SELECT {keys}, first._row AS _row FROM (
                      SELECT {keys}, min(struct_pack({position})) AS first FROM rows GROUP BY {keys}
                    ) f {earlier}"""
            )
            kept = _scalar(con, "SELECT count(*) FROM keep")
            duplicates = _scalar(con, "SELECT count(*) FROM rows s ANTI JOIN keep k USING (_row)")
            fresh = con.execute(f"SELECT _row FROM keep k {absent} ORDER BY _row").fetchnumpy()["_row"]
            over = (
                con.execute(f"SELECT _row FROM keep k {held} ORDER BY _row").fetchnumpy()["_row"]
                if update and held
                else np.empty(0, np.int64)
            )
            con.close()
        counts = _Counts()
        append = Target(target.uri, target.schema, mode="append", partition_by=target.partition_by)
        whole = read_batches(replace(source, columns=None), batch_rows=self.batch_rows)
        _write(append, _counted(_rows_numbered(whole, np.asarray(fresh, np.int64), target.schema), counts))
        updated = 0
        if len(over):
            again = read_batches(replace(source, columns=None), batch_rows=self.batch_rows)
            for part in _tables_of(_rows_numbered(again, np.asarray(over, np.int64), target.schema), MERGE_ROWS):
                _, written = DELTA_RS.merge(target.uri, part, key=key, update=True)
                updated += written
        return Inserted(
            rows_in=rows_in,
            kept=kept,
            duplicates=duplicates,
            appended=counts.rows_in,
            target_version=DeltaTable(target.uri).version(),
            updated=updated,
        )

    def version(self, uri: str) -> int | None:
        return DeltaTable(uri).version() if DeltaTable.is_deltatable(uri) else None


# ---------------------------------------------------------------------------------------------
# reading


def read_batches(source: DeltaSource, *, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The source's rows as record batches of at most ``batch_rows``, decoded, view types plain.

    The Delta table is opened now, not when the first batch is asked for: the batches are
    consumed inside delta-rs's writer, where opening a table would start a runtime in a runtime.
    """
    dataset = _dataset(source)
    return _scan(source, dataset, batch_rows)


def _scan(source: DeltaSource, dataset: ds.Dataset, batch_rows: int) -> Iterator[pa.RecordBatch]:
    columns = list(source.columns) if source.columns is not None else None
    scanner = dataset.scanner(
        columns=columns,
        filter=_filter(source),
        batch_size=batch_rows,
        use_threads=False,  # see Lake.read: threaded scans over delta-rs can abort at exit
        # no read-ahead: pyarrow's default (16 batches, 4 files) held up to 1.9 GB of a bronze
        # table's decoded row groups at once, whatever ``batch_rows`` is
        batch_readahead=0,
        fragment_readahead=0,
    )
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        batch = plain(batch)
        if source.decode is not None:
            table = source.decode(pa.Table.from_batches([batch]))
            yield from table.combine_chunks().to_batches()
        else:
            yield batch


def source_schema(source: DeltaSource) -> pa.Schema:
    """The columns the source reads, at its version, view types plain."""
    schema = _dataset(source).schema
    if source.columns is not None:
        schema = pa.schema([schema.field(c) for c in source.columns])
    return plain(pa.RecordBatch.from_pylist([], schema=schema)).schema


def _dataset(source: DeltaSource) -> ds.Dataset:
    table = DeltaTable(source.uri)
    if source.version is not None:
        table.load_as_version(source.version)
    return table.to_pyarrow_dataset()


def _filter(source: DeltaSource) -> pc.Expression | None:
    condition = None
    for column, values in source.where.items():
        term = pc.field(column).cast(pa.string()).isin(list(values))
        condition = term if condition is None else condition & term
    for column, values in source.where_not.items():
        term = ~pc.field(column).cast(pa.string()).isin(list(values))
        condition = term if condition is None else condition & term
    return condition


def row_count(source: DeltaSource) -> int:
    """How many rows the source reads (its version, its filters), from the files' metadata."""
    return int(_dataset(source).count_rows(filter=_filter(source), use_threads=False))


def plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with string/binary view columns (delta-rs MERGE writes them) as plain ones."""
    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    if not any(f.type in views for f in batch.schema):
        return batch
    schema = pa.schema([f.with_type(views.get(f.type, f.type)) for f in batch.schema])
    return batch.cast(schema)


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of at most ``rows`` rows (a reader's batch may be a whole file)."""
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


@dataclass
class _Counts:
    rows_in: int = 0
    good: int = 0
    quarantined: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, counters: Mapping[str, int]) -> None:
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value


def _counted(batches: Iterable[pa.RecordBatch], counts: _Counts) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        counts.rows_in += batch.num_rows
        yield batch


# ---------------------------------------------------------------------------------------------
# the transform in worker processes


def _in_workers(
    fn: Any, batches: Iterable[pa.RecordBatch], *, pool: ProcessPoolExecutor, workers: int
) -> Iterator[Split]:
    """``fn`` over the batches in the pool's processes, results in input order, at most two
    batches per worker in flight (memory stays bounded however long the source is)."""
    pending: deque[Future[Split]] = deque()
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            pending.append(pool.submit(_call, fn, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _call(fn: Any, batch: pa.RecordBatch) -> Split:
    if isinstance(fn, _KeyedBucket):
        return fn.apply(Path(batch.column(0)[0].as_py()))
    result: Split = fn(batch)
    return result


# ---------------------------------------------------------------------------------------------
# keyed: hash buckets


def _bucketed(
    batches: Iterable[pa.RecordBatch], *, keys: list[str], buckets: int, folder: Path
) -> list[Path]:
    """Every row in one of ``buckets`` Arrow IPC files by a hash of its key; the files written."""
    import polars as pl

    writers: dict[int, ipc.RecordBatchStreamWriter] = {}
    paths: dict[int, Path] = {}
    try:
        for batch in batches:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            bucket = frame.select(pl.struct(keys).hash(seed=0) % buckets).to_series().to_numpy()
            table = pa.Table.from_batches([batch])
            for b in sorted(set(bucket.tolist())):
                part = table.filter(pa.array(bucket == b))
                if b not in writers:
                    paths[b] = folder / f"bucket-{b:05d}.arrow"
                    writers[b] = ipc.new_stream(paths[b], part.schema)
                writers[b].write_table(part)
    finally:
        for writer in writers.values():
            writer.close()
    return [paths[b] for b in sorted(paths)]


@dataclass(frozen=True)
class _KeyedBucket:
    """Applies a keyed transform to every key of one bucket file (picklable for the workers)."""

    fn: KeyedTransform
    keys: tuple[str, ...]

    def apply(self, path: Path) -> Split:
        with ipc.open_stream(path) as reader:
            table = reader.read_all()
        return apply_by_key(self.fn, table, list(self.keys))


def apply_by_key(fn: KeyedTransform, table: pa.Table, keys: list[str]) -> Split:
    """``fn`` once per key of ``table`` (its rows in their stored order), the splits joined."""
    if table.num_rows == 0:
        return Split(pa.table({}), QUARANTINE_SCHEMA.empty_table())
    indexed = table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    ordered = indexed.sort_by([(k, "ascending") for k in keys] + [("__row", "ascending")])
    ordered = ordered.drop_columns(["__row"]).combine_chunks()
    key_rows = ordered.select(keys).to_pylist()
    goods: list[pa.Table] = []
    bads: list[pa.Table] = []
    counters: dict[str, int] = {}
    start = 0
    for i in range(1, len(key_rows) + 1):
        if i == len(key_rows) or key_rows[i] != key_rows[start]:
            key = tuple(key_rows[start][k] for k in keys)
            split = fn(key, ordered.slice(start, i - start))
            goods.append(split.good)
            bads.append(split.quarantined)
            for name, value in split.counters.items():
                counters[name] = counters.get(name, 0) + value
            start = i
    return Split(
        pa.concat_tables(goods, promote_options="permissive") if goods else pa.table({}),
        pa.concat_tables(bads) if bads else QUARANTINE_SCHEMA.empty_table(),
        counters,
    )


# ---------------------------------------------------------------------------------------------
# writing


def conform_batch(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows with exactly the schema's columns, in order, cast to its types."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    return conform(table, schema)


@dataclass(frozen=True)
class _Sealed:
    """A batch-local transform with its source's decoding before it and its target's conforming
    and sealing after it: one picklable call, so a worker does all three."""

    fn: BatchTransform
    schema: pa.Schema
    encode: Any = None
    decode: Any = None
    #: the side outputs' targets by name: their rows are conformed and sealed here too
    sides: Mapping[str, Target] = field(default_factory=dict)

    def __call__(self, batch: pa.RecordBatch) -> Split:
        if self.decode is not None:
            batch = self.decode(pa.Table.from_batches([batch])).combine_chunks().to_batches()[0]
        return _seal(self.fn(batch), self.schema, self.encode, self.sides)


def _seal(
    split: Split, schema: pa.Schema, encode: Any, sides: Mapping[str, Target] | None = None
) -> Split:
    """The split with its good rows, and the rows of each side output with a target, conformed
    and sealed (a side without one is left for the spool to refuse)."""
    targets = sides or {}
    return Split(
        _sealed(split.good, schema, encode),
        split.quarantined,
        split.counters,
        {
            name: _sealed(rows, targets[name].schema, targets[name].encode) if name in targets else rows
            for name, rows in split.sides.items()
        },
    )


def _sealed(rows: pa.Table, schema: pa.Schema, encode: Any) -> pa.Table:
    """The rows conformed to ``schema`` and sealed by ``encode`` (exactly ``schema`` after)."""
    if not rows.num_rows:
        return rows
    good = conform(rows, schema)
    return encode(good).cast(schema) if encode is not None else good


def _decoder(source: Source) -> Any:
    return source.decode if isinstance(source, DeltaSource) else None


def _undecoded(source: Source) -> Source:
    """The source read as stored (its encrypted columns opened later, by the step)."""
    return replace(source, decode=None) if isinstance(source, DeltaSource) else source


def _good_batches(
    splits: Iterable[Split],
    spool: _Spool,
    counts: _Counts,
    sides: _SideSpools | None = None,
) -> Iterator[pa.Table]:
    """The good rows of each split (conformed and sealed by the step already), its quarantine
    rows spooled, its side rows spooled, its counters and rows counted."""
    for split in splits:
        counts.add(split.counters)
        if split.sides:
            if sides is None:
                raise ValueError(f"the step produced side outputs {sorted(split.sides)} here")
            sides.add(split.sides)
        if split.quarantined.num_rows:
            spool.add(split.quarantined)
        if split.good.num_rows:
            counts.good += split.good.num_rows
            yield split.good


def _write(target: Target, tables: Iterable[pa.Table]) -> None:
    """Stream the tables into one Delta commit of exactly ``target.schema`` (an empty table when
    there are none: readers find every table the step owns)."""
    schema = target.schema

    def batches() -> Iterator[pa.RecordBatch]:
        for table in tables:
            yield from table.cast(schema).to_batches()

    # The writer pulls batches from a thread of delta-rs's runtime, where the transform, the
    # codec or a read could not open another table: a thread of ours produces them instead.
    reader = pa.RecordBatchReader.from_batches(schema, _produced(batches()))
    write_deltalake(
        target.uri,
        reader,
        mode=target.mode,
        partition_by=list(target.partition_by) or None,
        # an append may bring a column the registry gained after the table was created
        schema_mode="overwrite" if target.mode == "overwrite" else "merge",
        writer_properties=writer_properties(),
    )


_DONE = object()


def _produced(items: Iterable[Any], *, ahead: int = 4) -> Iterator[Any]:
    """The items, produced by a thread of ours at most ``ahead`` in advance; its errors re-raised."""
    queue: Queue[Any] = Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put(_Failed(exc))

    # the producer sees this thread's context variables (e.g. the ingest limits in force)
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(produce,), name="medlake-batches", daemon=True
    )
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Spool:
    """Quarantine rows of one step, spooled to disk, merged into the quarantine once at the end."""

    def __init__(self, sink: QuarantineSink) -> None:
        self.sink = sink
        self._dir = tempfile.TemporaryDirectory(prefix="medlake-quarantine-")
        self._path = Path(self._dir.name) / "spool.arrow"
        self._writer: ipc.RecordBatchStreamWriter | None = None
        #: rows spooled per table they were refused for
        self.by_table: dict[str, int] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._dir.cleanup()

    def add(self, rows: pa.Table) -> None:
        rows = conform(stamp_run(rows, self.sink.run_id), QUARANTINE_SCHEMA)
        for name in rows.column("table_name").to_pylist():
            self.by_table[name] = self.by_table.get(name, 0) + 1
        if self._writer is None:
            self._writer = ipc.new_stream(self._path, QUARANTINE_SCHEMA)
        self._writer.write_table(rows)

    def close_and_merge(self) -> int:
        """Merge the spooled rows into the quarantine table; returns how many rows were spooled."""
        if self._writer is None:
            return 0
        self._writer.close()
        self._writer = None
        with ipc.open_stream(self._path) as reader:
            rows = reader.read_all()
        insert_new_rows(self.sink.uri, rows, key=["quarantine_id"], encode=self.sink.encode)
        return int(rows.num_rows)


class _SideSpools:
    """The side outputs of one step (:attr:`Split.sides`), each spooled to disk as the batches
    come, then streamed into its own target in one commit."""

    def __init__(self, targets: Mapping[str, Target]) -> None:
        self.targets = dict(targets)
        self.rows = dict.fromkeys(self.targets, 0)
        self._dir = tempfile.TemporaryDirectory(prefix="medlake-sides-")
        self._writers: dict[str, ipc.RecordBatchStreamWriter] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._dir.cleanup()

    def _path(self, name: str) -> Path:
        return Path(self._dir.name) / f"side-{sorted(self.targets).index(name)}.arrow"

    def add(self, sides: Mapping[str, pa.Table]) -> None:
        for name, rows in sides.items():
            target = self.targets.get(name)
            if target is None:
                raise ValueError(f"the step produced side output {name!r}, which has no target")
            if not rows.num_rows:
                continue
            self.rows[name] += rows.num_rows  # conformed and sealed by the step (_Sealed)
            if name not in self._writers:
                self._writers[name] = ipc.new_stream(self._path(name), target.schema)
            self._writers[name].write_table(rows)

    def write(self) -> dict[str, int]:
        """Write every side's spooled rows to its target; the rows written per side."""
        for name, target in self.targets.items():
            writer = self._writers.pop(name, None)
            if writer is None:
                _write(target, [])
                continue
            writer.close()
            with ipc.open_stream(self._path(name)) as reader:
                _write(target, (pa.Table.from_batches([batch]) for batch in reader))
        return dict(self.rows)


def insert_new_rows(
    uri: str, rows: pa.Table, *, key: Sequence[str], encode: Any = None
) -> int:
    """Insert the rows whose key the table does not hold yet (one MERGE); returns how many."""
    import polars as pl

    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    rows = frame.unique(subset=list(key), keep="first", maintain_order=True).to_arrow().cast(rows.schema)
    stored = encode(rows) if encode is not None else rows
    if not DeltaTable.is_deltatable(uri):
        DELTA_RS.write(uri, stored, mode="append")
        return int(rows.num_rows)
    inserted, _ = DELTA_RS.merge(uri, stored, key=key, update=False)
    return inserted


def _numbered_into(con: Any, name: str, source: DeltaSource, batch_rows: int) -> int:
    """Create table ``name`` on ``con`` from the source's rows, each numbered ``_row`` by its
    place in the source's ordered scan (:func:`read_batches`); how many rows."""
    row = 0
    for batch in read_batches(source, batch_rows=batch_rows):
        numbered = batch.append_column("_row", pa.array(range(row, row + batch.num_rows), pa.int64()))
        con.register("batch", numbered)
        if row == 0:
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM batch")
        else:
            con.execute(f"INSERT INTO {name} SELECT * FROM batch")
        con.unregister("batch")
        row += batch.num_rows
    if row == 0:  # no rows: the table still has the columns
        con.register("src", _dataset(source))
        columns = _columns(source.columns) if source.columns is not None else "*"
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT {columns}, 0::BIGINT AS _row FROM src LIMIT 0")
        con.unregister("src")
    return row


def _rows_numbered(
    batches: Iterable[pa.RecordBatch], wanted: np.ndarray, schema: pa.Schema
) -> Iterator[pa.Table]:
    """The rows whose place in the ordered scan ``batches`` is in ``wanted`` (sorted numbers)."""
    import numpy as np

    start = 0
    for batch in batches:
        end = start + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, end])
        if hi > lo:
            yield conform_batch(batch.take(pa.array(wanted[lo:hi] - start)), schema)
        start = end


def _tables_of(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The tables' rows regrouped into tables of about ``rows`` (the last one fewer)."""
    held: list[pa.Table] = []
    count = 0
    for table in tables:
        held.append(table)
        count += table.num_rows
        if count >= rows:
            yield pa.concat_tables(held)
            held, count = [], 0
    if count:
        yield pa.concat_tables(held)


def _columns(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _scalar(con: Any, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0


def _on(key: Sequence[str], left: str, right: str) -> str:
    return " AND ".join(f'{left}."{k}" = {right}."{k}"' for k in key)


def _single(values: Sequence[str] | None) -> str | None:
    return values[0] if values and len(values) == 1 else None


def _quoted(value: str | None) -> str:
    return (value or "").replace("'", "''")
