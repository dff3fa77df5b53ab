"""The batch-local cleaning steps of FHIR resources, as the engines run them.

Each is a pure function of one record batch (bronze rows of this run, or rows a previous step
wrote) with its options bound by ``functools.partial``, so the embedded engine can run it in a
worker process and Spark in ``mapInArrow``. The declared chain that uses them is
``jobs/pipeline.py`` :func:`~medlake.jobs.pipeline.clean_fhir`:

    flatten (validate, view, pseudonymize, shift)  →  standardize + re-key  →  staging.<table>
    notes (extract, de-identify, re-key)                                     →  staging.notes
    bronze-only (validate types no silver table reads)
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from medlake.config import AgePolicy
from medlake.jobs.clean import dedup
from medlake.jobs.clean.config import OnUnmapped
from medlake.jobs.clean.standardize import STANDARDIZE
from medlake.jobs.ingest import fhir
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


def notes(
    batch: pa.RecordBatch,
    *,
    key: bytes,
    max_shift_days: int,
    aliases: Mapping[str, str],
    deny_lists: Mapping[str, list[str]],
    person_of: Mapping[str, str],
    ages: AgePolicy,
) -> Split:
    """``silver.notes`` rows from the free text of a batch of resources, de-identified with each
    patient's deny list, on the resolved person."""
    found = fhir.notes_from_bronze(
        _table(batch),
        key=key,
        deny_lists=dict(deny_lists),
        max_shift_days=max_shift_days,
        aliases=aliases,
        workers=1,  # the engine spreads batches over the cores
        ages=ages,
    )
    moved = dedup.remap(found.good, person_of, key=key, max_shift_days=max_shift_days)
    return Split(moved, found.quarantined)


def bronze_only(batch: pa.RecordBatch, *, viewed: tuple[str, ...]) -> Split:
    """Resources no silver table reads, validated: the valid ones counted (they stay in bronze,
    their hash is all the step keeps), the others quarantined."""
    kept = fhir.bronze_only_from_bronze(_table(batch), viewed=viewed)
    return Split(kept.good.select(["_record_hash"]), kept.quarantined)
