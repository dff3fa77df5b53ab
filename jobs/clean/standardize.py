"""Standardization of flattened silver rows, as the clean stage applies it before staging:
observations go through terminology → units → plausibility, conditions and medications through
terminology. Each step's refusals are quarantined with its rule id; no row is lost
(in = good + quarantined at every step).

The ``*_EXTRA_FIELDS`` are the columns the steps add to each silver table (what was done to a
row, for compliance); the registry's schemas carry them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyarrow as pa

from medlake.jobs.clean import ranges, terminology, units
from medlake.jobs.clean.config import (
    RANGE_FIELDS,
    TERMINOLOGY_FIELDS,
    UNIT_FIELDS,
    OnUnmapped,
    with_fields,
)
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split

OBSERVATION_EXTRA_FIELDS: list[pa.Field] = [*TERMINOLOGY_FIELDS, *UNIT_FIELDS, *RANGE_FIELDS]
CONDITION_EXTRA_FIELDS: list[pa.Field] = [*TERMINOLOGY_FIELDS]
MEDICATION_EXTRA_FIELDS: list[pa.Field] = [*TERMINOLOGY_FIELDS]


def with_observation_fields(obs: pa.Table) -> pa.Table:
    """Observation rows with the standardization columns (null until the steps fill them)."""
    return with_fields(obs, OBSERVATION_EXTRA_FIELDS)


def chain(rows: pa.Table, steps: list[Callable[[pa.Table], Split]]) -> Split:
    """Run steps one after another on the rows each accepted; collect every step's refusals."""
    refused = [QUARANTINE_SCHEMA.empty_table()]
    for step in steps:
        split = step(rows)
        if split.good.num_rows + split.quarantined.num_rows != rows.num_rows:
            name = getattr(step, "__name__", repr(step))
            raise RuntimeError(
                f"{name} lost rows: {rows.num_rows} in, {split.good.num_rows} good, "
                f"{split.quarantined.num_rows} quarantined"
            )
        rows = split.good
        refused.append(split.quarantined)
    return Split(rows, pa.concat_tables(refused))


def standardize_observations(
    obs: pa.Table,
    *,
    concept_map: pa.Table,
    on_unmapped: OnUnmapped = "quarantine",
    canonical: Mapping[str, units.Canonical] = units.LOINC_CANONICAL,
    impossible: Mapping[tuple[str, str], ranges.Range] | None = None,
    normal: Mapping[str, ranges.Range] = ranges.NORMAL_RANGES,
) -> Split:
    """Observations with LOINC codes, values in canonical UCUM units, impossible values refused."""
    obs = with_observation_fields(obs)

    def map_codes(rows: pa.Table) -> Split:
        split: Split = terminology.map_observation_codes(
            rows, concept_map=concept_map, on_unmapped=on_unmapped
        )
        return split

    def normalize(rows: pa.Table) -> Split:
        split: Split = units.normalize_units(rows, canonical=canonical)
        return split

    def plausible(rows: pa.Table) -> Split:
        split: Split = ranges.check_plausibility(rows, impossible=impossible, normal=normal)
        return split

    return chain(obs, [map_codes, normalize, plausible])


def standardize_conditions(
    conditions: pa.Table, *, concept_map: pa.Table, on_unmapped: OnUnmapped = "quarantine"
) -> Split:
    """Diagnoses with checked ICD-10-CM and SNOMED CT codes, local codes mapped."""
    rows = with_fields(conditions, CONDITION_EXTRA_FIELDS)
    return chain(
        rows,
        [
            lambda r: terminology.map_condition_codes(
                r, concept_map=concept_map, on_unmapped=on_unmapped
            )
        ],
    )


def standardize_medications(
    meds: pa.Table, *, concept_map: pa.Table, on_unmapped: OnUnmapped = "quarantine"
) -> Split:
    """Medication orders with checked RxNorm codes, local drug codes mapped."""
    rows = with_fields(meds, MEDICATION_EXTRA_FIELDS)
    return chain(
        rows,
        [
            lambda r: terminology.map_medication_codes(
                r, concept_map=concept_map, on_unmapped=on_unmapped
            )
        ],
    )


#: the standardization of each FHIR resource type that has one, as the clean stage calls it
STANDARDIZE: dict[str, Callable[..., Split]] = {
    "Observation": standardize_observations,
    "Condition": standardize_conditions,
    "MedicationRequest": standardize_medications,
}
