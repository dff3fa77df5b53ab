"""Quarantine review: data stewards work the quarantine instead of losing it.

A steward resolves quarantined records: **accept** (the value is real, e.g. a confirmed extreme
lab), **correct** (with the right value), or **reject** (for good, with the decision recorded).
Every resolution is audited with who and why. Accepted and corrected records re-enter silver at
the next pipeline run — the ledger counts them under the stage ``release`` — and their quarantine
row then says ``released``; rejected ones stay, with the decision.

Only records quarantined as silver-shaped rows (by the standardize steps or the quality gate)
can be accepted or corrected: they hold the row itself. A record that failed parsing or FHIR
validation is fixed at its source and re-sent (a corrected record has a new content hash); it
can only be rejected here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa

from medlake.governance import audit
from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.registry import QUARANTINE, TABLES

Action = Literal["accept", "correct", "reject"]

#: quarantine status after a resolution, and after the record re-entered silver
STATUS_AFTER = {"accept": "accepted", "correct": "corrected", "reject": "rejected"}
RELEASED = "released"
#: stages whose quarantine rows hold a silver-shaped row that can re-enter silver
RELEASABLE_STAGES = ("gate", "ranges", "units", "terminology")


class ResolutionRefused(ValueError):
    """A resolution that cannot be applied, with why."""


@dataclass(frozen=True)
class Resolved:
    """What one resolve call changed."""

    quarantine_ids: tuple[str, ...]
    action: Action
    status: str


def resolve(
    lake: Lake,
    quarantine_ids: Sequence[str],
    *,
    action: Action,
    reason: str,
    actor: str,
    audit_key: bytes,
    value: float | None = None,
    now: datetime | None = None,
    role: str = "data_steward",
) -> Resolved:
    """Record a steward's decision on open quarantine rows; audited, applied at the next run."""
    if action not in STATUS_AFTER:
        raise ResolutionRefused(f"action must be accept, correct or reject, not {action!r}")
    if not reason.strip():
        raise ResolutionRefused("a resolution needs a reason")
    if action == "correct" and value is None:
        raise ResolutionRefused("correct needs --value, the corrected value")
    if action != "correct" and value is not None:
        raise ResolutionRefused("--value goes with --action correct only")
    wanted = list(dict.fromkeys(quarantine_ids))
    rows = [r for r in lake.read(QUARANTINE.name).to_pylist() if r["quarantine_id"] in set(wanted)]
    found = {r["quarantine_id"] for r in rows}
    missing = [q for q in wanted if q not in found]
    if missing:
        raise ResolutionRefused(f"no quarantined record with id {', '.join(missing)}")
    for row in rows:
        if row["status"] != "open":
            raise ResolutionRefused(f"{row['quarantine_id']} is already {row['status']}: resolve open records only")
        if action != "reject" and not _releasable(row):
            raise ResolutionRefused(
                f"{row['quarantine_id']} ({row['rule_id']}) failed before it became a silver row: fix it at the "
                "source and re-send it, or reject it"
            )
        if action == "correct" and row["table_name"] != "silver.observations":
            raise ResolutionRefused(f"{row['quarantine_id']}: only observation values can be corrected")
    stamp = now or datetime.now(UTC)
    status = STATUS_AFTER[action]
    updated = [
        {**r, "status": status, "resolution": action, "resolution_reason": reason, "resolved_by": actor,
         "resolved_at": stamp, "corrected_value": value}
        for r in rows
    ]
    lake.upsert(QUARANTINE.name, pa.Table.from_pylist(updated, schema=QUARANTINE.schema))
    for r in updated:
        audit.append(
            lake,
            key=audit_key,
            actor=actor,
            role=role,
            action="quarantine.resolve",
            object=r["quarantine_id"],
            run_id=r["run_id"],
            purpose="quality_improvement",
            details={"action": action, "rule_id": r["rule_id"], "table": r["table_name"], "reason": reason,
                     "corrected_value": value},
        )
    return Resolved(tuple(wanted), action, status)


def release(lake: Lake, *, run_id: str) -> tuple[dict[str, pa.Table], list[Entry]]:
    """Silver rows for the accepted and corrected records, per table, and their ledger entries.

    The caller upserts the rows into silver and then calls :func:`mark_released`.
    """
    rows = [r for r in lake.read(QUARANTINE.name).to_pylist() if r["status"] in ("accepted", "corrected")]
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        record = json.loads(r["raw_record"])
        if r["status"] == "corrected":
            record["_value_original"] = record.get("_value_original") or record.get("value_num")
            record["value_num"] = r["corrected_value"]
        record["_run_id"] = run_id
        by_table.setdefault(r["table_name"], []).append(record)
    tables = {name: _typed(records, name) for name, records in by_table.items()}
    entries = [
        Entry(stage="release", table_name=name, records_in=t.num_rows, records_out=t.num_rows)
        for name, t in sorted(tables.items())
    ]
    return tables, entries


def mark_released(lake: Lake, *, run_id: str, now: datetime | None = None) -> int:
    """Mark the accepted and corrected records as released by this run; returns how many."""
    rows = [r for r in lake.read(QUARANTINE.name).to_pylist() if r["status"] in ("accepted", "corrected")]
    if not rows:
        return 0
    stamp = now or datetime.now(UTC)
    done = [{**r, "status": RELEASED, "released_run_id": run_id, "released_at": stamp} for r in rows]
    lake.upsert(QUARANTINE.name, pa.Table.from_pylist(done, schema=QUARANTINE.schema))
    return len(done)


def _releasable(row: dict[str, Any]) -> bool:
    return bool(row["raw_record"]) and row["stage"] in RELEASABLE_STAGES and row["table_name"] in TABLES


def _typed(records: list[dict[str, Any]], table_name: str) -> pa.Table:
    """Rows parsed back from their quarantined JSON into the table's Arrow types."""
    schema = TABLES[table_name].schema
    converted = []
    for record in records:
        row: dict[str, Any] = {}
        for field in schema:
            value = record.get(field.name)
            if value is not None and pa.types.is_timestamp(field.type) and isinstance(value, str):
                value = datetime.fromisoformat(value)
            elif value is not None and pa.types.is_date(field.type) and isinstance(value, str):
                value = date.fromisoformat(value[:10])
            row[field.name] = value
        converted.append(row)
    return pa.Table.from_pylist(converted, schema=schema)
