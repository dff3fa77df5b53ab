"""What the clean steps share: their option types, the silver keys they name rows by, the
columns they add, and the one way they turn rows they cannot accept into quarantine rows.

The options themselves are keyword arguments of each step (defaults below); the pipeline passes
them from ``medlake.config`` so a hospital changes them in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import silver_rejects

#: what a step does with a code it cannot map or validate: quarantine the row, or keep it
#: with ``mapping_status`` 'unmapped' / 'invalid' so it is counted but not lost
OnUnmapped = Literal["quarantine", "keep"]

OBSERVATIONS = "silver.observations"
CONDITIONS = "silver.conditions"
MEDICATIONS = "silver.medications"

#: the column that names a row in reasons and quarantine rows, per silver table
KEY_COLUMN: dict[str, str] = {
    OBSERVATIONS: "observation_key",
    CONDITIONS: "condition_key",
    MEDICATIONS: "medication_key",
}

# -- columns the steps add to the silver rows (what was done to each row, for compliance) --------

#: terminology: how the row's code became standard, and from what
TERMINOLOGY_FIELDS: list[pa.Field] = [
    pa.field("mapping_status", pa.string()),  # 'standard' | 'mapped' | 'unmapped' | 'invalid'
    pa.field("_mapped_from", pa.string()),  # '<source system>|<source code>' when mapped, else null
]
#: units: the unit and value as received, when the value was converted to the canonical unit
UNIT_FIELDS: list[pa.Field] = [
    pa.field("_unit_converted_from", pa.string()),
    pa.field("_value_original", pa.float64()),
]
#: plausibility: the value against its normal range ('normal' | 'low' | 'high'; null: no range)
RANGE_FIELDS: list[pa.Field] = [
    pa.field("_range_flag", pa.string()),
]


def with_fields(table: pa.Table, fields: Sequence[pa.Field]) -> pa.Table:
    """The table with each field appended (all null) unless it already has a column of that name."""
    for f in fields:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table


def replace(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """The table with column ``name`` replaced by ``values``, cast to the column's type."""
    index = table.schema.get_field_index(name)
    field = table.schema.field(index)
    return table.set_column(index, field, values.cast(field.type))


def distinct(table: pa.Table, columns: Sequence[str]) -> tuple[list[tuple[Any, ...]], pa.Array]:
    """The distinct value combinations of some columns, and each row's position among them.

    Steps decide once per distinct (code system, code) or (LOINC, unit) and spread the decision
    over the rows with ``take``: a million rows carry a few hundred distinct codes. Nulls are
    values of their own; any string is safe (no separator characters are involved).
    """
    combos: list[tuple[Any, ...]] = [()]
    position = pa.array(np.zeros(table.num_rows, dtype=np.int64))
    for name in columns:
        encoded = pc.dictionary_encode(table.column(name).combine_chunks())
        values = encoded.dictionary.to_pylist()
        radix = len(values) + 1  # 0 stands for null
        code = pc.add(pc.fill_null(encoded.indices.cast(pa.int64()), -1), 1)
        key = pc.add(pc.multiply(position, radix), code)
        uniques = pc.unique(key)
        position = pc.index_in(key, value_set=uniques).cast(pa.int64())
        combos = [
            combos[k // radix] + ((values[k % radix - 1] if k % radix else None),)
            for k in uniques.to_pylist()
        ]
    if table.num_rows == 0:
        combos = []
    return combos, position.cast(pa.int32())


def quarantine(
    rows: pa.Table,
    *,
    rule_id: str,
    reasons: Sequence[str],
    table_name: str,
) -> pa.Table:
    """Quarantine rows for silver rows a step refused, one per row, with its reason in words.

    The record id is the row's silver key. The quarantine id is stable over re-runs and distinct for
    rows of one bronze record (the components of one blood pressure panel), unlike an id from
    the record hash alone. The raw record is the silver-shaped row (pseudonymized, no direct
    identifiers), so a reviewer sees exactly what the step saw.
    """
    if rows.num_rows == 0:
        return QUARANTINE_SCHEMA.empty_table()
    return silver_rejects(
        rows.to_pylist(),
        rule_ids=[rule_id] * rows.num_rows,
        reasons=reasons,
        table_name=table_name,
        key=(KEY_COLUMN[table_name],),
    )


def reasons_for(
    rows: pa.Table, problems: pa.Array | pa.ChunkedArray, *, table_name: str
) -> list[str]:
    """One reason per row: the row's silver key, then its problem."""
    key = KEY_COLUMN[table_name]
    return [
        f"{key} {k}: {p}"
        for k, p in zip(rows.column(key).to_pylist(), problems.to_pylist(), strict=True)
    ]


# -- entity resolution (jobs/clean/dedup.py) ------------------------------------------------------

#: a pair of patient records at or above this Splink match probability is one person
LINK_THRESHOLD = 0.95
#: the prior: how many other records of the same person a record has, on average
EXPECTED_MATCHES_PER_RECORD = 1.0
#: below this many patient records the m probabilities stay at their documented priors (no EM)
EM_MIN_RECORDS = 5000
