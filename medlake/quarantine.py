"""Quarantine rows: what a stage could not accept, with its rule id and a reason in words.

A transform returns a :class:`Split`: the rows it accepts (``good``) and quarantine rows built by
:func:`reject` or :func:`quarantine_rows`. Nothing is dropped: every input record is in one of them,
merged as a duplicate, or counted as bronze-only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medlake.registry import QUARANTINE

SCHEMA = QUARANTINE.schema
OPEN = "open"


@dataclass(frozen=True)
class Split:
    """Rows a step accepted and quarantine rows for those it did not."""

    good: pa.Table
    quarantined: pa.Table

    @property
    def counts(self) -> tuple[int, int]:
        return self.good.num_rows, self.quarantined.num_rows

    @staticmethod
    def concat(splits: Sequence[Split], good_schema: pa.Schema) -> Split:
        """One split from many, e.g. from record batches."""
        goods = [s.good for s in splits] or [good_schema.empty_table()]
        bads = [s.quarantined for s in splits] or [SCHEMA.empty_table()]
        return Split(pa.concat_tables(goods), pa.concat_tables(bads))


def quarantine_id(stage: str, rule_id: str, source_file: str | None, offset: int | None, record: str | None) -> str:
    """A stable id, so quarantining the same record for the same rule twice adds no row."""
    parts = [stage, rule_id, source_file or "", "" if offset is None else str(offset), record or ""]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def quarantine_rows(
    records: Iterable[Mapping[str, Any]],
    *,
    table_name: str,
    run_id: str = "",
    now: datetime | None = None,
) -> pa.Table:
    """Quarantine rows from dicts with rule_id, reason and whatever locates the record.

    Keys read: rule_id, reason, source_file, source_offset, record_id, record_hash, raw_record.
    The stage is the rule id's prefix (``parse.bad_json`` → ``parse``).
    """
    stamp = now or datetime.now(UTC)
    rows = []
    for rec in records:
        rule_id = str(rec["rule_id"])
        stage = rule_id.split(".", 1)[0]
        identity = rec.get("record_hash") or rec.get("record_id") or rec.get("raw_record")
        rows.append(
            {
                "quarantine_id": quarantine_id(
                    stage, rule_id, rec.get("source_file"), rec.get("source_offset"), identity
                ),
                "run_id": run_id,
                "stage": stage,
                "table_name": table_name,
                "rule_id": rule_id,
                "reason": str(rec["reason"]),
                "source_file": rec.get("source_file"),
                "source_offset": rec.get("source_offset"),
                "record_id": rec.get("record_id"),
                "record_hash": rec.get("record_hash"),
                "raw_record": rec.get("raw_record"),
                "quarantined_at": stamp,
                "status": OPEN,
            }
        )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def reject(
    rows: pa.Table,
    rule_id: str,
    reason: str,
    *,
    table_name: str,
    record_id_column: str | None = None,
) -> pa.Table:
    """Quarantine rows for rows of a silver-shaped table; ``reason`` may use ``{column}`` fields."""
    records = []
    for row in rows.to_pylist():
        records.append(
            {
                "rule_id": rule_id,
                "reason": reason.format_map(_Missing(row)),
                "record_id": row.get(record_id_column) if record_id_column else None,
                "record_hash": row.get("_record_hash"),
            }
        )
    return quarantine_rows(records, table_name=table_name)


def stamp_run(quarantined: pa.Table, run_id: str) -> pa.Table:
    """The same quarantine rows, stamped with the run that produced them."""
    idx = quarantined.schema.get_field_index("run_id")
    return quarantined.set_column(idx, "run_id", pa.array([run_id] * quarantined.num_rows, pa.string()))


def by_rule(quarantined: pa.Table) -> dict[str, int]:
    """Counts of quarantine rows per rule id."""
    if quarantined.num_rows == 0:
        return {}
    counts = pc.value_counts(quarantined.column("rule_id")).to_pylist()
    return {c["values"]: c["counts"] for c in counts}


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
