"""The batch-local cleaning steps of FHIR resources, as the engines run them.

Each is a pure function of one record batch (bronze rows of this run, or rows a previous step
wrote) with its options bound by ``functools.partial``, so the embedded engine can run it in a
worker process and Spark in ``mapInArrow``. The declared chain that uses them is
``jobs/pipeline.py`` :func:`~medlake.jobs.pipeline.clean_fhir`:

    flatten (validate, view, pseudonymize, shift)  →  standardize + re-key  →  staging.<table>
      └ side output: the free text of the same parsed resources, de-identified
    bronze-only (validate types no silver table reads)
      └ side output: their free text, de-identified
    the notes of both  →  re-key  →  staging.notes

Each resource is parsed once: what the notes need is taken from the parse the flattener (or the
bronze-only validation) already made, and travels on as Arrow rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pyarrow as pa

from medlake.jobs.clean import dedup
from medlake.jobs.clean.config import OnUnmapped
from medlake.jobs.clean.standardize import STANDARDIZE
from medlake.jobs.ingest import fhir, limits
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split

#: the schema of what the bronze-only step keeps (its rows stay in bronze: only counted)
BRONZE_ONLY_SCHEMA = pa.schema([pa.field("_record_hash", pa.string(), nullable=False)])


def _table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def standardize_and_remap(
    batch: pa.RecordBatch,
    *,
    resource_type: str,
    concept_map: pa.Table,
    on_unmapped: OnUnmapped,
    person_of: Mapping[str, str],
    key: bytes,
    max_shift_days: int,
) -> Split:
    """Flattened rows with codes mapped and checked, units canonical and impossible values
    refused (when the type has a standardize step), each moved to its resolved person."""
    rows = _table(batch)
    standardize = STANDARDIZE.get(resource_type)
    if standardize is None:
        standard = Split(rows, QUARANTINE_SCHEMA.empty_table())
    else:
        standard = standardize(rows, concept_map=concept_map, on_unmapped=on_unmapped)
    moved = dedup.remap(standard.good, person_of, key=key, max_shift_days=max_shift_days)
    return Split(moved, standard.quarantined)


def remap_notes(
    batch: pa.RecordBatch, *, person_of: Mapping[str, str], key: bytes, max_shift_days: int
) -> Split:
    """De-identified notes (a flatten step's side output) moved to their resolved person."""
    moved = dedup.remap(_table(batch), person_of, key=key, max_shift_days=max_shift_days)
    return Split(moved, QUARANTINE_SCHEMA.empty_table())


def bronze_only(
    batch: pa.RecordBatch, *, viewed: tuple[str, ...], notes: fhir.NoteOptions | None = None
) -> Split:
    """Resources no silver table reads, validated: the valid ones counted (they stay in bronze,
    their hash is all the step keeps), the others quarantined. With ``notes``, the free text of
    the parsed resources comes back de-identified as the side output ``notes``."""
    found = fhir.NoteFields(notes.pseudonymizer()) if notes is not None else None
    kept = fhir.bronze_only_from_bronze(
        _table(batch), viewed=viewed, on_parsed=found.add if found is not None else None
    )
    good = kept.good.select(["_record_hash"])
    if found is None or notes is None:
        return Split(good, kept.quarantined)
    texts = found.split(notes)
    return Split(
        good,
        pa.concat_tables([kept.quarantined, texts.quarantined]),
        sides={fhir.NOTES_SIDE: texts.good},
    )


def notes_only(batch: pa.RecordBatch, *, notes: fhir.NoteOptions) -> Split:
    """The free text of resources another step turns into rows (an extra view's type), as the
    side output ``notes``, de-identified; nothing else is kept (the view accounts for them)."""
    found = fhir.NoteFields(notes.pseudonymizer())
    for row in _table(batch).to_pylist():
        try:
            resource = limits.loads(row["raw"])
        except json.JSONDecodeError:
            continue  # refused by the view's own step
        if isinstance(resource, dict):
            found.add(row, resource)
    texts = found.split(notes)
    return Split(
        BRONZE_ONLY_SCHEMA.empty_table(), texts.quarantined, sides={fhir.NOTES_SIDE: texts.good}
    )
