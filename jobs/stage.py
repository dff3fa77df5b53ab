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
from deltalake import write_deltalake

from medlake.lake import Lake, conform
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
    """Write a bronze split and its quarantine; the ingest ledger entry, every count counted.

    ``raw`` is every record read (one row each). The accepted rows go to the run's scratch copy of
    the table (sealed like bronze), then the first copy of each new key is appended to bronze by
    the set-based insert both engines share (:meth:`~medlake.engines.Engine.insert_new`): new
    records are the keys it kept, merged ones the rows it did not (a later copy within the run,
    or a record bronze held before; a file ingested twice adds nothing). A retried run counts the
    same: its own earlier rows in bronze are not "before".
    """
    from medlake.engines import DeltaSource, Target
    from medlake.engines.embedded import EmbeddedEngine

    lake.insert_new(QUARANTINE.name, stamp_run(split.quarantined, run_id))
    scratch = lake.scratch_uri(spec.name, run_id=run_id)
    write_deltalake(
        scratch,
        conform(_encoded(lake, spec.name, split.good), spec.schema),
        mode="overwrite",
        schema_mode="overwrite",
    )
    order = tuple(c for c in ("_source_file", "_source_offset") if c in spec.schema.names)
    new = EmbeddedEngine().insert_new(
        source=DeltaSource(scratch),
        target=Target(lake.uri(spec.name), spec.schema, partition_by=spec.partition_by),
        key=spec.key,
        order=order or spec.key,
        run_id=run_id,
    )
    lake.drop_scratch_table(spec.name, run_id=run_id)
    return Entry(
        stage="ingest",
        table_name=spec.name,
        records_in=raw.num_rows,
        records_out=new.kept,
        quarantined=split.quarantined.num_rows,
        merged=new.duplicates,
    )


def _encoded(lake: Lake, name: str, rows: pa.Table) -> pa.Table:
    encode = lake.encoder(name)
    return encode(rows) if encode is not None and rows.num_rows else rows
