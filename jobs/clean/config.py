"""What the clean steps share: their option types, the silver keys they name rows by, the
columns they add, and the one way they turn rows they cannot accept into quarantine rows.

The options themselves are keyword arguments of each step (defaults below); the pipeline passes
them from ``medlake.config`` so a hospital changes them in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
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


# -- imputation (jobs/clean/impute.py): which column is filled how, in one place -------------------

#: imputation: '<column>:<method>' for every cell of the row that was filled in, empty when none
IMPUTED_FIELDS: list[pa.Field] = [
    pa.field("_imputed", pa.list_(pa.string())),
]

#: how a missing value is filled: not at all; the median or most frequent value of the row's
#: cohort (the whole table when the cohort has no value); the last earlier value of the same
#: series; or the pooled mean of multiple imputations by chained equations (scikit-learn's
#: IterativeImputer)
ImputeMethod = Literal["none", "median", "mode", "locf", "iterative"]


@dataclass(frozen=True)
class Imputation:
    """How the missing values of one column are filled in.

    ``max_missing``: a column missing in more than this fraction of rows is left as it is (its
    imputed fraction is 0): filling most of a column from the rest invents the column.
    """

    method: ImputeMethod
    #: median/mode: the columns whose values make a cohort (e.g. sex and age band)
    cohort: tuple[str, ...] = ()
    #: locf: the columns naming one series (e.g. person and code); never carried across series
    series: tuple[str, ...] = ("person_key",)
    #: locf: the timestamp column that orders a series
    order_by: str = "effective_at"
    #: locf: how old a carried value may be; older ones leave the cell missing (None: any age)
    max_age: timedelta | None = None
    max_missing: float = 0.5
    #: what fills the cells this method left missing (e.g. the cohort median after LOCF)
    then: Imputation | None = None


#: how many imputations the multiple imputation pools, and the seed of the first
IMPUTATION_DRAWS = 5
IMPUTATION_SEED = 0

#: gold.ml_patient_features: the lab and vital features, imputed jointly by multiple imputation
#: from each other only (never from the condition flags, which are the labels models learn).
#: An imputed value carries information of the other labs (a weight imputed partly from HbA1c):
#: a model whose label one of them leaks should be evaluated on rows whose ``_imputed`` is empty.
ML_FEATURE_IMPUTATION: Mapping[str, Imputation] = {
    f"{lab}_{stat}": Imputation("iterative")
    for lab in ("heart_rate", "body_weight", "systolic_bp", "glucose", "creatinine", "hba1c")
    for stat in ("last", "mean")
}

#: silver vitals series (one row per person, code and time, e.g. a resampled grid): the last
#: value of the same person and code up to 4 hours old, else the median of the code
VITALS_IMPUTATION: Mapping[str, Imputation] = {
    "value_num": Imputation(
        "locf",
        series=("person_key", "code"),
        order_by="effective_at",
        max_age=timedelta(hours=4),
        then=Imputation("median", cohort=("code",)),
    ),
}

# -- vitals (jobs/ingest/vitals.py, jobs/clean/resample.py) ----------------------------------------

#: per-device clock offset: what to add to a device's timestamps to get the true time. Known from
#: biomedical engineering's clock checks; a device not listed is trusted. The sample hospital's
#: monitor ICU-MON-07 runs 95 seconds fast (medlake/sample/vitals.py plants it).
VITALS_CLOCK_OFFSETS: dict[str, timedelta] = {"ICU-MON-07": timedelta(seconds=-95)}

#: the resampling grids: silver table → (bucket width, longest gap between two samples whose
#: empty buckets still carry the last value forward; buckets of a longer gap stay missing)
VITALS_GRIDS: dict[str, tuple[timedelta, timedelta]] = {
    "silver.vitals_1min": (timedelta(minutes=1), timedelta(minutes=5)),
    "silver.vitals_1h": (timedelta(hours=1), timedelta(hours=3)),
}

# -- entity resolution (jobs/clean/dedup.py) ------------------------------------------------------

#: a pair of patient records at or above this Splink match probability is one person (merged)
LINK_THRESHOLD = 0.90
#: a pair from this probability up to LINK_THRESHOLD waits for a steward (reference.identity_review)
REVIEW_THRESHOLD = 0.50
#: below REVIEW_THRESHOLD, a possible name change (same first name, birth date and sex, another
#: family name) still waits for a steward from this probability up
NAME_CHANGE_FLOOR = 0.01
#: the prior: how many other records of the same person a record has, on average
EXPECTED_MATCHES_PER_RECORD = 1.0
#: below this many patient records the m probabilities stay at their documented priors (no EM)
EM_MIN_RECORDS = 5000
