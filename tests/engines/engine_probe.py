"""A batch-local step for tests of where the embedded engine runs its steps: importable by name in
the engine's spawned worker processes (the test modules themselves are imported by path)."""

from __future__ import annotations

import os

import pyarrow as pa

from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split


def copied_in(batch: pa.RecordBatch) -> Split:
    """The batch unchanged; counters name the process that ran it and whether ``raw`` was open."""
    plain = sum(1 for raw in batch.column("raw").to_pylist() if raw.startswith("{"))
    return Split(
        pa.Table.from_batches([batch]),
        QUARANTINE_SCHEMA.empty_table(),
        {f"pid:{os.getpid()}": batch.num_rows, "plain": plain},
    )
