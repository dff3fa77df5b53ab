"""What every pipeline stage shares: its result (versions written and ledger entries) and the
bronze writer every source's ingest uses.

A source module (``jobs/ingest/<kind>.py``) plugs into the pipeline with two stage functions:

    ingest(landing: Path, lake: Lake, *, run_id: str, now: datetime) -> StageResult
        landing/<kind>/ → bronze.<table> (raw kept, MERGE on _record_hash) + quarantine + ledger
    to_staging(lake: Lake, *, run_id: str, key: bytes, max_shift_days: int,
               versions: dict[str, int | None]) -> StageResult
        this run's bronze rows (bronze read at versions[<bronze table>], the version ingest wrote)
        → staging.<silver table> (awaiting the gate) + quarantine + ledger. It overwrites every
        staging table it owns on every run, with zero rows when nothing came: the gate reads them
        all. A source feeding a silver table FHIR and HL7 v2 also fill (patients, observations, …)
        runs after them and appends to that staging table instead (mode="append"), after applying
        the same standardization (jobs/clean/standardize.py STANDARDIZE).

so the pipeline and the DAG only list sources, never know their formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.quarantine import Split, stamp_run
from medlake.registry import QUARANTINE, TableSpec


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


def write_bronze(lake: Lake, spec: TableSpec, split: Split, raw: pa.Table, *, run_id: str) -> Entry:
    """Write a bronze split (MERGE on the record hash) and its quarantine; the ingest ledger entry.

    ``raw`` is every record read (one row each); what is neither new in bronze nor quarantined
    was in bronze already and counts as merged (a file ingested twice adds nothing).
    """
    lake.insert_new(QUARANTINE.name, stamp_run(split.quarantined, run_id))
    lake.insert_new(spec.name, split.good)
    lake.ensure(spec.name)
    written = lake.read(spec.name, columns=["_run_id"], where={"_run_id": run_id}).num_rows
    return Entry(
        stage="ingest",
        table_name=spec.name,
        records_in=raw.num_rows,
        records_out=written,
        quarantined=split.quarantined.num_rows,
        merged=raw.num_rows - split.quarantined.num_rows - written,
    )
