"""Pending bronze: the ledger across runs.

Every ingest appends its new records to bronze under its run id (``_run_id``): a *batch*. A batch
is *curated* once a run's gate has promoted what the clean stage made of it (silver rows,
quarantine rows, merges, bronze-only counts); until then it is *pending*, whichever run put it
there. A run killed after ingest leaves its batch pending, and so does one killed in clean or in
the gate: the next run's clean takes every pending batch, not only its own, so no record stays
in bronze unseen (``reference.curation`` says which run staged and which curated each batch).

Curation is one run at a time per lake (``medlake run`` holds the lake's curation lock; the
DAGs serialize it with ``max_active_runs``): a batch another run staged and did not curate was
left by a run that died, and the next run takes it over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from medlake.lake import Lake
from medlake.registry import (
    BRONZE_CSV,
    BRONZE_DICOM,
    BRONZE_FHIR,
    BRONZE_HL7V2,
    BRONZE_VCF,
    BRONZE_VITALS,
    CURATION,
    LEDGER,
)

log = logging.getLogger(__name__)

#: the bronze tables whose records the clean stage carries on, one batch per ingest run
BATCHED: tuple[str, ...] = (
    BRONZE_FHIR.name,
    BRONZE_HL7V2.name,
    BRONZE_CSV.name,
    BRONZE_DICOM.name,
    BRONZE_VITALS.name,
    BRONZE_VCF.name,
)
STAGED, CURATED = "staged", "curated"
#: the ledger stages that count a batch's records between bronze and silver (clean and gate)
CURATING_STAGES: tuple[str, ...] = ("silver", "standardize", "deid_text", "resolve", "resample", "gate")


def batches_in(lake: Lake, table: str, *, version: int | None = None) -> set[str]:
    """The ingest runs that hold rows in a bronze table (at ``version``, else now).

    Read from the Delta log's file statistics (each ingest appends files of one run); a file
    without statistics, or holding several runs, has its ``_run_id`` column read."""
    if not lake.exists(table):
        return set()
    dt = lake.table(table, version=version)
    actions = pa.table(dt.get_add_actions(flatten=True))
    found: set[str] = set()
    unknown: list[str] = []
    low = actions.column("min._run_id").to_pylist() if "min._run_id" in actions.column_names else None
    high = actions.column("max._run_id").to_pylist() if "max._run_id" in actions.column_names else None
    for i, path in enumerate(actions.column("path").to_pylist()):
        if low is not None and high is not None and low[i] is not None and low[i] == high[i]:
            found.add(str(low[i]))
        else:
            unknown.append(path)
    if unknown:
        dataset = dt.to_pyarrow_dataset()
        column = dataset.to_table(columns=["_run_id"], use_threads=False).column("_run_id")
        found.update(str(v) for v in pc.unique(column.cast(pa.string())).to_pylist())
    return found


def _states(lake: Lake) -> dict[tuple[str, str], dict[str, object]]:
    if not lake.exists(CURATION.name):
        return {}
    return {(str(r["bronze_table"]), str(r["batch_run_id"])): r for r in lake.read(CURATION.name).to_pylist()}


def pending(
    lake: Lake, *, tables: Sequence[str] = BATCHED, versions: Mapping[str, int] | None = None
) -> dict[str, list[str]]:
    """Per bronze table, the batches no gate has curated yet (oldest run id first).

    ``versions``: only these tables, each as of that Delta version (the batches committed by then)."""
    states = _states(lake)
    out: dict[str, list[str]] = {}
    if versions is not None:
        tables = [t for t in tables if t in versions]
    for table in tables:
        found = batches_in(lake, table, version=None if versions is None else versions[table])
        left = sorted(b for b in found if states.get((table, b), {}).get("state") != CURATED)
        if left:
            out[table] = left
    return out


def count(lake: Lake, table: str, batches: Iterable[str]) -> int:
    """Bronze rows of these batches, counted (pushed down to the files' statistics)."""
    wanted = sorted(set(batches))
    if not wanted or not lake.exists(table):
        return 0
    dataset = lake.table(table).to_pyarrow_dataset()
    condition = ds.field("_run_id").cast(pa.string()).isin(wanted)
    return int(dataset.count_rows(filter=condition, use_threads=False))


def pending_counts(lake: Lake) -> dict[str, int]:
    """Per bronze table, the records no run has carried past bronze yet (counted rows)."""
    return {table: count(lake, table, batches) for table, batches in pending(lake).items()}


def take(
    lake: Lake, *, run_id: str, now: datetime | None = None, versions: Mapping[str, int] | None = None
) -> dict[str, list[str]]:
    """The batches this run's clean curates: every pending one (its own among them), marked
    staged by this run. Batches another run staged and did not curate were left by a run that
    died: their partial clean and gate ledger entries are withdrawn (this run counts them again).

    ``versions``: the bronze versions the run's trigger names (the curation DAG's asset events):
    only those tables, only the batches committed by those versions — a source run still ingesting
    commits later, and its own event triggers the run that curates it."""
    states = _states(lake)
    taken = pending(lake, versions=versions)
    stamp = now or datetime.now(UTC)
    rows = []
    abandoned: set[str] = set()
    for table, batches in taken.items():
        for batch in batches:
            state = states.get((table, batch))
            if state is not None and state["run_id"] != run_id:
                abandoned.add(str(state["run_id"]))
            rows.append(
                {
                    "bronze_table": table,
                    "batch_run_id": batch,
                    "state": STAGED,
                    "run_id": run_id,
                    "records": count(lake, table, [batch]),
                    "updated_at": stamp,
                }
            )
    recover_ingest_entries(lake, taken, run_id=run_id)
    for earlier in sorted(abandoned):
        withdrawn = withdraw(lake, earlier)
        log.warning(
            "run %s takes over the batches run %s staged and never curated (it did not finish); "
            "%d of its clean and gate ledger entries withdrawn",
            run_id,
            earlier,
            withdrawn,
        )
    if rows:
        lake.upsert(CURATION.name, pa.Table.from_pylist(rows, schema=CURATION.schema))
    for table, batches in taken.items():
        log.info("clean: %s: %d pending batch(es): %s", table, len(batches), ", ".join(batches))
    return taken


def recover_ingest_entries(lake: Lake, taken: Mapping[str, Sequence[str]], *, run_id: str) -> int:
    """Ledger entries for batches whose run died between its bronze commit and its ingest entry:
    the rows that reached bronze, counted there (records in = out; what that run quarantined is in
    the quarantine under its id). Returns how many entries were written."""
    from medlake.ledger import Entry, record

    known = set()
    if lake.exists(LEDGER.name):
        rows = lake.read(LEDGER.name, columns=["run_id", "stage", "table_name"]).to_pylist()
        known = {(str(r["run_id"]), str(r["table_name"])) for r in rows if r["stage"] == "ingest"}
    written = 0
    for table, batches in taken.items():
        for batch in batches:
            if batch == run_id or (batch, table) in known:
                continue
            rows_in = count(lake, table, [batch])
            note = json.dumps({"recovered_by": run_id, "why": "the run died before recording its ingest"})
            record(lake, batch, [Entry("ingest", table, rows_in, records_out=rows_in, details=note)])
            log.warning("run %s records the ingest of %s into %s (%d rows) its run never recorded",
                        run_id, batch, table, rows_in)
            written += 1
    return written


def withdraw(lake: Lake, run_id: str) -> int:
    """Remove a dead run's ledger entries of the curating stages (clean, gate): its batches are
    curated by another run, which counts them."""
    quoted = run_id.replace("'", "''")
    stages = ", ".join(f"'{s}'" for s in CURATING_STAGES)
    return lake.delete(LEDGER.name, f"run_id = '{quoted}' AND stage IN ({stages})")


def mark_curated(lake: Lake, *, run_id: str, now: datetime | None = None) -> int:
    """After this run's gate promoted: the batches its clean staged are curated. Returns how many."""
    rows = [r for r in _states(lake).values() if r["run_id"] == run_id and r["state"] == STAGED]
    if not rows:
        return 0
    stamp = now or datetime.now(UTC)
    done = [{**r, "state": CURATED, "updated_at": stamp} for r in rows]
    lake.upsert(CURATION.name, pa.Table.from_pylist(done, schema=CURATION.schema))
    return len(done)


def batches_of(taken: Mapping[str, Sequence[str]], table: str, run_id: str) -> list[str]:
    """The batches to read from one bronze table (the run's own id when none is pending, so a
    reader's filter stays well-formed)."""
    return list(taken.get(table) or [run_id])
