"""Quarantine rows: what a stage could not accept, with its rule id and a reason in words.

A transform returns a :class:`Split`: the rows it accepts (``good``) and quarantine rows built by
:func:`reject` or :func:`quarantine_rows`. Nothing is dropped: every input record is in one of them,
merged as a duplicate, or counted as bronze-only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
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
    #: facts a step reports beside its rows (e.g. schema drift: paths seen per type), summed over
    #: every batch by the engine
    counters: Mapping[str, int] = field(default_factory=dict)
    #: rows for a step's side outputs, by name: what it found while it had a record parsed that
    #: another table needs (e.g. the free text of a resource being flattened), so the record is
    #: parsed once; the engine writes each to the side's own target
    sides: Mapping[str, pa.Table] = field(default_factory=dict)

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


def silver_rejects(
    rows: Sequence[Mapping[str, Any]],
    *,
    rule_ids: Sequence[str],
    reasons: Sequence[str],
    table_name: str,
    key: Sequence[str],
) -> pa.Table:
    """Quarantine rows for silver-shaped rows a step refused, one per row, each with its rule and reason.

    The raw record is the silver-shaped row itself (pseudonymized, no direct identifiers), so a
    reviewer sees what the step saw and an accepted record can re-enter silver. The quarantine id
    is stable over re-runs and distinct for rows of one bronze record (the components of a panel).
    """
    records: list[dict[str, Any]] = []
    ids: list[str] = []
    for row, rule_id, reason in zip(rows, rule_ids, reasons, strict=True):
        records.append(
            {
                "rule_id": rule_id,
                "reason": reason,
                "record_id": record_id(row, key),
                "record_hash": row.get("_record_hash"),
                "raw_record": row_json(row),
            }
        )
        ids.append(quarantine_id(rule_id.split(".", 1)[0], rule_id, None, None, row_identity(table_name, row, key)))
    table = quarantine_rows(records, table_name=table_name)
    index = table.schema.get_field_index("quarantine_id")
    return table.set_column(index, table.schema.field(index), pa.array(ids, pa.string()))


def record_id(row: Mapping[str, Any], key: Sequence[str]) -> str | None:
    """The row's key as text (``a|b`` for a compound key), or None when part of it is missing."""
    values = [row.get(k) for k in key]
    if not key or any(v is None for v in values):
        return None
    return "|".join(str(v) for v in values)


def row_identity(table_name: str, row: Mapping[str, Any], key: Sequence[str]) -> str:
    """What makes a quarantined row the same row in a re-run: table, key and bronze record.

    Without a complete key the row's content (less the run stamp) stands in for it.
    """
    rid = record_id(row, key)
    parts = [table_name, rid or "", str(row.get("_record_hash") or "")]
    if rid is None:
        content = {k: v for k, v in row.items() if k != "_run_id"}
        parts.append(hashlib.sha256(row_json(content).encode()).hexdigest())
    return "\x1f".join(parts)


def row_json(row: Mapping[str, Any]) -> str:
    """A row as canonical JSON; dates and times as ISO text."""
    return json.dumps(row, default=_json_default, sort_keys=True)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


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
