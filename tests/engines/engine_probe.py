"""A batch-local step for tests of where the embedded engine runs its steps: importable by name in
the engine's spawned worker processes (the test modules themselves are imported by path)."""

from __future__ import annotations

import os

import pyarrow as pa

from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split


def copied_in(batch: pa.RecordBatch) -> Split:
    """The batch unchanged, and again as the side output ``copy``; counters name the process
    that ran it and whether ``raw`` was open."""
    plain = sum(1 for raw in batch.column("raw").to_pylist() if raw.startswith("{"))
    rows = pa.Table.from_batches([batch])
    return Split(
        rows,
        QUARANTINE_SCHEMA.empty_table(),
        {f"pid:{os.getpid()}": batch.num_rows, "plain": plain},
        sides={"copy": rows},
    )


#: the environment variable naming the test's own process (the main process of the engine)
MAIN_PID = "MEDLAKE_TEST_MAIN_PID"


def sealed_in_a_worker(rows: pa.Table) -> pa.Table:
    """An encoder that refuses to run in the process named by :data:`MAIN_PID`."""
    if os.environ.get(MAIN_PID) == str(os.getpid()):
        raise AssertionError("sealed in the main process")
    return rows


def per_key(key: tuple[object, ...], rows: pa.Table) -> Split:
    """A keyed step: one row per key with how many rows it saw (all of them: a key's rows arrive
    together, whatever bucket holds them)."""
    out = pa.table({"k": [str(key[0])], "n": [rows.num_rows]})
    return Split(out, QUARANTINE_SCHEMA.empty_table(), {f"pid:{os.getpid()}": 1})
