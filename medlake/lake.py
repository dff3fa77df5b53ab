"""The lake on disk: registered Delta tables, read with delta-rs (no JVM) and written by the
stage's engine: delta-rs by default, delta-spark when a Spark stage holds the lake
(:meth:`Lake.on` with the engine's :class:`TableWriter`), so a table has one writer engine per
stage (shared/DESIGN.md, "Engines").

Every write is one Delta transaction; keyed writes are MERGEs, so a task re-run after a crash
gives the same tables. A keyed write or delete that loses a commit race to another writer (two
runs or two source DAGs on one lake) is redone on the new table state (:func:`retried`).

A lake may carry a :class:`ColumnCodec` that encrypts named columns of named tables on every
write and decrypts them on every read (``governance/at_rest.py`` implements it for the raw PHI of
bronze and the quarantine). Without one, the lake reads and writes columns as stored: plaintext
tables as before, encrypted ones as ciphertext.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties, write_deltalake

from medlake.config import object_uri
from medlake.registry import TABLES, TableSpec


class TableNotFound(LookupError):
    """A table was read before anything wrote it."""


class ColumnCodec(Protocol):
    """Encrypts some columns of some tables at rest; the lake calls it on every write and read."""

    def encode(self, name: str, data: pa.Table) -> pa.Table:
        """The rows of table ``name`` as they are to be stored (its encrypted columns sealed)."""
        ...

    def decode(self, name: str, data: pa.Table) -> pa.Table:
        """The stored rows of table ``name`` in clear; raises rather than return part of them."""
        ...

    def lookup(self, name: str, column: str, value: str) -> list[str] | None:
        """The stored forms ``value`` may take in ``column`` (for equality filters); None: stored as is."""
        ...

    def seal_file(self, relpath: str, data: bytes) -> bytes:
        """The bytes of a file kept below the lake root (e.g. an archived original) as stored."""
        ...

    def open_file(self, relpath: str, data: bytes) -> bytes:
        """The stored bytes of a file below the lake root, in clear."""
        ...


class TableWriter(Protocol):
    """Commits rows (already as stored: sealed, conformed) to the Delta table at a URI, each call
    one transaction. :class:`DeltaRsWriter` here; the Spark engine's commits through delta-spark."""

    @property
    def name(self) -> str:
        """The engine that commits: ``delta-rs`` or ``delta-spark``."""
        ...

    def write(
        self, uri: str, data: pa.Table, *, mode: Literal["append", "overwrite"], partition_by: Sequence[str] = ()
    ) -> int:
        """Append or overwrite (the schema of ``data`` replaces the table's); the new version."""
        ...

    def merge(self, uri: str, data: pa.Table, *, key: Sequence[str], update: bool) -> tuple[int, int]:
        """Insert the rows whose key the table lacks and, with ``update``, replace the rows whose
        key it holds; (inserted, updated). ``data`` holds each key once."""
        ...

    def delete(self, uri: str, predicate: str) -> int:
        """Delete the rows matching a SQL predicate; how many."""
        ...

    def create(self, uri: str, schema: pa.Schema) -> None:
        """Create the table empty when it does not exist."""
        ...


#: every delta-rs write cuts its Parquet files into row groups of at most this many rows. delta-rs's
#: default (one row group per file, ~100 MB) made each write buffer, and each later read decode,
#: a whole file at once: 1.4 GB against 1.0 GB to copy a million-resource bronze table.
ROW_GROUP_ROWS = 16_384


def writer_properties() -> WriterProperties:
    """The Parquet writer settings of every delta-rs write of the lake (:data:`ROW_GROUP_ROWS`)."""
    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS)


@dataclass(frozen=True)
class DeltaRsWriter:
    """Commits with delta-rs, in this process (the embedded engine's writer)."""

    name: str = "delta-rs"

    def write(
        self, uri: str, data: pa.Table, *, mode: Literal["append", "overwrite"], partition_by: Sequence[str] = ()
    ) -> int:
        write_deltalake(
            uri,
            data,
            mode=mode,
            partition_by=list(partition_by) or None,
            schema_mode="overwrite" if mode == "overwrite" else "merge",
            writer_properties=writer_properties(),
        )
        return DeltaTable(uri).version()

    def merge(self, uri: str, data: pa.Table, *, key: Sequence[str], update: bool) -> tuple[int, int]:
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key)

        def commit() -> dict[str, Any]:
            merger = DeltaTable(uri).merge(
                data,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                writer_properties=writer_properties(),
            )
            if update:
                merger = merger.when_matched_update_all()
            return merger.when_not_matched_insert_all().execute()

        metrics = retried(commit)
        return int(metrics["num_target_rows_inserted"]), int(metrics.get("num_target_rows_updated", 0))

    def delete(self, uri: str, predicate: str) -> int:
        metrics = retried(lambda: DeltaTable(uri).delete(predicate))
        return int(metrics.get("num_deleted_rows", 0))

    def create(self, uri: str, schema: pa.Schema) -> None:
        DeltaTable.create(uri, schema=schema, mode="ignore")


DELTA_RS = DeltaRsWriter()


@dataclass(frozen=True)
class Lake:
    """A lake root and the registered tables below it (the codec of its encrypted columns, and
    the writer its writes commit through)."""

    root: Path
    codec: ColumnCodec | None = None
    writer: TableWriter = field(default=DELTA_RS, compare=False)

    def on(self, writer: TableWriter) -> Lake:
        """The same lake, its writes committed by ``writer`` (a stage's engine's)."""
        return replace(self, writer=writer)

    def __post_init__(self) -> None:
        if self.remote:
            from medlake.storage import use_object_store

            use_object_store()

    @property
    def location(self) -> str:
        """Where the tables are: the root folder, or the object-store URI (``s3://bucket/prefix``)
        of a lake whose root is the local folder of that URI (``medlake.config.lake_root``)."""
        return object_uri(self.root) or str(self.root)

    @property
    def remote(self) -> bool:
        """Whether the tables are on an object store (the root then holds only local files)."""
        return object_uri(self.root) is not None

    def path(self, name: str) -> Path:
        """Where ``layer.table`` (or ``quarantine``/``ledger``) lives. On an object store, a
        ``LakePath``: ``str()`` the table's URI, ``os.fspath()`` its local folder of lock files."""
        return self._at(name.replace(".", "/"))

    def _at(self, relpath: str) -> Path:
        path = self.root / relpath
        if self.remote:
            from medlake.storage import LakePath

            return LakePath(path)
        return path

    def uri(self, name: str) -> str:
        return str(self.path(name))

    def scratch_uri(self, name: str, *, run_id: str) -> str:
        """A run's own scratch copy of table ``name`` (``<root>/_scratch/<run>/<table>``): what a
        step stages before a set-based write, so runs and retries never share it."""
        return str(self._at(f"_scratch/{_safe(run_id)}/{name}"))

    def write_scratch(
        self, name: str, rows: pa.Table, *, run_id: str, sealed_as: str, append: bool = False
    ) -> str:
        """Write ``rows`` to the run's scratch table ``name`` (see :meth:`scratch_uri`), sealed as
        table ``sealed_as`` seals them, a new table unless ``append``; its URI. Scratch tables are
        the writing process's own (delta-rs, whatever the engine), read back by the engine."""
        encode = self.encoder(sealed_as)
        if encode is not None and rows.num_rows:
            rows = encode(rows)
        uri = self.scratch_uri(name, run_id=run_id)
        write_deltalake(
            uri,
            rows,
            mode="append" if append else "overwrite",
            schema_mode=None if append else "overwrite",
            writer_properties=writer_properties(),
        )
        return uri

    def drop_scratch(self, *, run_id: str) -> None:
        """Remove a run's scratch tables (they hold sealed PHI: nothing keeps them once used)."""
        self._drop(str(self._at(f"_scratch/{_safe(run_id)}")))

    def drop_scratch_table(self, name: str, *, run_id: str) -> None:
        """Remove one scratch table of a run (see :meth:`scratch_uri`)."""
        self._drop(self.scratch_uri(name, run_id=run_id))

    def drop_folder(self, relpath: str) -> None:
        """Remove a folder below the root and every table in it, on disk or on the object store."""
        self._drop(str(self._at(relpath)))

    def _drop(self, uri: str) -> None:
        if self.remote:
            from medlake.storage import delete_tree

            delete_tree(uri)
        else:
            import shutil

            shutil.rmtree(uri, ignore_errors=True)

    def encoder(self, name: str) -> Callable[[pa.Table], pa.Table] | None:
        """Seals the encrypted columns of table ``name`` (for an engine writing it), or None. The
        table's data key is made now, so parallel writers share it."""
        if self.codec is None:
            return None
        ready = getattr(self.codec, "ready", None)
        if ready is not None:
            ready(name)
        return functools.partial(self.codec.encode, name)

    def decoder(self, name: str) -> Callable[[pa.Table], pa.Table] | None:
        """Opens the encrypted columns of table ``name`` (for an engine reading it), or None."""
        return functools.partial(self.codec.decode, name) if self.codec is not None else None

    def stored_values(self, name: str, column: str, value: str) -> list[str]:
        """The forms ``value`` is stored as in ``column`` (for a filter pushed to an engine)."""
        stored = self.codec.lookup(name, column, value) if self.codec else None
        return [value] if stored is None else list(stored)

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name))

    def table(self, name: str, *, version: int | None = None) -> DeltaTable:
        """The Delta table, at ``version`` when given (time travel)."""
        if not self.exists(name):
            raise TableNotFound(f"table {name} does not exist yet under {self.location}")
        dt = DeltaTable(self.uri(name))
        if version is not None:
            # load_as_version, not DeltaTable(uri, version=...): the latter aborts the
            # interpreter at exit with deltalake 1.6 ("terminate called without an active exception").
            dt.load_as_version(version)
        return dt

    def version(self, name: str) -> int | None:
        """The table's current Delta version, or None when it does not exist."""
        return DeltaTable(self.uri(name)).version() if self.exists(name) else None

    def read(
        self,
        name: str,
        *,
        version: int | None = None,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        where: Mapping[str, str | Sequence[str]] | None = None,
    ) -> pa.Table:
        """The rows of a table (empty with its registered schema when it does not exist yet).

        ``where`` keeps rows whose string columns equal the given value (or one of the given
        values). Prefer it to a raw ``filter`` on strings: files written by delta-rs MERGE hold
        ``string_view`` columns, which a plain ``pc.field(c) == v`` cannot compare; ``where``
        casts first.
        """
        for column, value in (where or {}).items():
            field = pc.field(column).cast(pa.string())
            if isinstance(value, str):
                stored = self.codec.lookup(name, column, value) if self.codec else None
                condition = field == value if stored is None else field.isin(stored)
            else:
                forms = [f for v in value for f in self.stored_values(name, column, v)]
                condition = field.isin(forms)
            filter = condition if filter is None else filter & condition
        if not self.exists(name):
            spec = TABLES.get(name)
            if spec is None:
                raise TableNotFound(f"table {name} does not exist yet under {self.location}")
            schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
            return schema.empty_table()
        dataset = self.table(name, version=version).to_pyarrow_dataset()
        spec = TABLES.get(name)
        wanted = list(columns) if columns is not None else None
        # a table written before a column joined the registry: read what it has, the rest as nulls
        present = [c for c in wanted if c in dataset.schema.names] if wanted is not None and spec else wanted
        # use_threads=False: a threaded scan over delta-rs's filesystem can leave a thread that
        # aborts the interpreter at exit with deltalake 1.6 ("terminate called without an active
        # exception"); seen on multi-file tables. Single-threaded decoding avoids it.
        table = dataset.to_table(columns=present, filter=filter, use_threads=False)
        if self.codec is not None:
            table = self.codec.decode(name, table)
        if spec is None:
            return table
        for column in wanted if wanted is not None else spec.schema.names:
            if column not in table.column_names:
                field = spec.schema.field(column)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        return table.select(wanted) if wanted is not None else table

    def count(self, name: str, *, version: int | None = None) -> int:
        if not self.exists(name):
            return 0
        return int(self.table(name, version=version).to_pyarrow_dataset().count_rows(use_threads=False))

    def write(
        self,
        name: str,
        data: pa.Table,
        *,
        mode: Literal["append", "overwrite"],
        spec: TableSpec | None = None,
    ) -> int:
        """Append or overwrite; returns the new Delta version."""
        spec = spec or TABLES.get(name)
        data = self._encoded(name, conform(data, spec.schema) if spec else data)
        partition_by = spec.partition_by if spec and spec.partition_by else ()
        return self.writer.write(self.uri(name), data, mode=mode, partition_by=partition_by)

    def insert_new(self, name: str, data: pa.Table, *, key: Sequence[str] | None = None) -> int:
        """Insert the rows whose key is not in the table yet; returns how many were inserted."""
        spec = TABLES.get(name)
        key = list(key or (spec.key if spec else ()))
        if not key:
            raise ValueError(f"insert_new into {name} needs a key")
        data = _dedupe_on(conform(data, spec.schema) if spec else data, key)
        if not self.exists(name):
            if data.num_rows == 0:
                self.ensure(name)
                return 0
            self.write(name, data, mode="append", spec=spec)
            return int(data.num_rows)
        if data.num_rows == 0:
            return 0
        inserted, _ = self.writer.merge(self.uri(name), self._encoded(name, data), key=key, update=False)
        return inserted

    def upsert(self, name: str, data: pa.Table, *, key: Sequence[str] | None = None) -> tuple[int, int]:
        """Insert new keys and update existing ones; returns (inserted, updated)."""
        spec = TABLES.get(name)
        key = list(key or (spec.key if spec else ()))
        data = _dedupe_on(conform(data, spec.schema) if spec else data, key)
        if not self.exists(name):
            self.write(name, data, mode="append", spec=spec)
            return data.num_rows, 0
        if data.num_rows == 0:
            return 0, 0
        return self.writer.merge(self.uri(name), self._encoded(name, data), key=key, update=True)

    def seal_file(self, relpath: str, data: bytes) -> bytes:
        """How a file kept at ``<root>/<relpath>`` is stored: through the codec when the lake has one."""
        return self.codec.seal_file(relpath, data) if self.codec is not None else data

    def open_file(self, relpath: str) -> bytes:
        """The content of a file kept at ``<root>/<relpath>`` (written as :meth:`seal_file` made it)."""
        data = (self.root / relpath).read_bytes()
        return self.codec.open_file(relpath, data) if self.codec is not None else data

    def _encoded(self, name: str, data: pa.Table) -> pa.Table:
        """The rows as they are stored: through the codec when the lake has one."""
        return self.codec.encode(name, data) if self.codec is not None else data

    def delete(self, name: str, predicate: str) -> int:
        """Delete the rows matching a SQL predicate; returns how many."""
        if not self.exists(name):
            return 0
        return self.writer.delete(self.uri(name), predicate)

    def ensure(self, name: str) -> None:
        """Create the registered table empty if it does not exist, so readers find it."""
        if not self.exists(name):
            self.writer.create(self.uri(name), TABLES[name].schema)

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).history(limit)

    def tables(self) -> list[str]:
        """Every Delta table below the root, as ``layer.table`` names."""
        found: list[str] = []
        if self.remote:
            from medlake.storage import delta_tables

            return [
                ".".join(rel.split("/")) for rel in delta_tables(self.location)
                if not any(part.startswith("_") for part in rel.split("/"))
            ]
        if not self.root.exists():
            return found
        for log in sorted(self.root.glob("**/_delta_log")):
            rel = log.parent.relative_to(self.root)
            if any(part.startswith("_") for part in rel.parts):
                continue  # a run's scratch (_scratch/), not a table of the lake
            found.append(".".join(rel.parts))
        return found


#: commit races a keyed write retries before it gives up
COMMIT_ATTEMPTS = 8


def retried(write: Callable[[], dict[str, Any]], *, attempts: int | None = None) -> dict[str, Any]:
    """Run a Delta write that reads the table first (MERGE, DELETE); when another writer committed
    in between (``CommitFailedError``), run it again on the new state, after a short random pause.
    Safe for keyed writes only: redoing them gives the same table."""
    import random
    import time

    from deltalake.exceptions import CommitFailedError

    attempts = attempts or COMMIT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except CommitFailedError:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable")


def _safe(run_id: str) -> str:
    """A run id as one path segment (Airflow's contain ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """The data with exactly the schema's columns, in order, cast to its types."""
    missing = [f.name for f in schema if f.name not in data.column_names]
    for name in missing:
        data = data.append_column(schema.field(name), pa.nulls(data.num_rows, schema.field(name).type))
    return data.select(schema.names).cast(schema)


def _dedupe_on(data: pa.Table, key: Sequence[str]) -> pa.Table:
    """The first row of each key: a MERGE source may not hold the same key twice."""
    if data.num_rows == 0:
        return data
    import polars as pl

    frame = pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    return frame.unique(subset=list(key), keep="first", maintain_order=True).to_arrow().cast(data.schema)
