"""What a run did, for a person and for scripts: tables and row counts, quarantine by reason,
the ledger check, and where the outputs are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from medlake import ledger
from medlake.lake import Lake
from medlake.registry import QUARANTINE


def tables(lake: Lake) -> list[dict[str, Any]]:
    """Every Delta table in the lake with its version and row count."""
    return [
        {"table": name, "version": lake.version(name), "rows": lake.count(name), "path": str(lake.path(name))}
        for name in lake.tables()
    ]


def quarantine_by_rule(lake: Lake, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """Quarantined records per stage and rule (for one run when given), most frequent first."""
    if not lake.exists(QUARANTINE.name):
        return []
    rows = lake.read(QUARANTINE.name, columns=["run_id", "stage", "table_name", "rule_id"])
    if run_id is not None:
        rows = rows.filter(pc.equal(rows.column("run_id"), run_id))
    counts: dict[tuple[str, str, str], int] = {}
    for r in rows.to_pylist():
        k = (r["stage"], r["table_name"], r["rule_id"])
        counts[k] = counts.get(k, 0) + 1
    return [
        {"stage": s, "table": t, "rule_id": rule, "count": n}
        for (s, t, rule), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def summarize(lake: Lake, *, run_id: str | None = None) -> dict[str, Any]:
    """The run summary as a JSON-ready dict. ``pending``: per bronze table, the records no run has
    carried past bronze yet (across runs, counted; see :mod:`medlake.pending`)."""
    from medlake.pending import pending_counts

    run_id = run_id or next(reversed(ledger.runs(lake)), None)
    entries = ledger.for_run(lake, run_id) if run_id else []
    balanced = all(bool(e["balanced"]) for e in entries)
    return {
        "run_id": run_id,
        "lake": lake.location,
        "tables": tables(lake),
        "quarantine": quarantine_by_rule(lake, run_id=run_id),
        "ledger": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in e.items()} for e in entries],
        "ledger_balanced": balanced,
        "pending": pending_counts(lake),
        "volume_warnings": volume_warnings(entries),
        "schema_drift": read_drift(lake, run_id) if run_id else {},
        "engines": read_engines(lake, run_id) if run_id else {},
    }


def volume_warnings(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's deliveries outside their volume band (the gate's findings, kept in its ledger
    entries' details): warnings, unless the gate was configured to block on them."""
    found = []
    for entry in entries:
        if entry["stage"] != "gate" or not entry.get("details"):
            continue
        for finding in json.loads(str(entry["details"])).get("volume_findings", []):
            if finding.get("verdict") in ("low", "high"):
                found.append(finding)
    return found


def summary_path(lake: Lake, run_id: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return lake.root / "_runs" / f"{safe}.json"


def drift_path(lake: Lake, run_id: str) -> Path:
    return summary_path(lake, run_id).with_suffix(".drift.json")


def engines_path(lake: Lake, run_id: str) -> Path:
    return summary_path(lake, run_id).with_suffix(".engines.json")


def record_engine(lake: Lake, run_id: str, stage: str, engine: str) -> None:
    """Note which engine ran a stage of the run (the run summary names it)."""
    path = engines_path(lake, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(path.read_text()) if path.is_file() else {}
    found[stage] = engine
    path.write_text(json.dumps(found, sort_keys=True))


def read_engines(lake: Lake, run_id: str) -> dict[str, str]:
    """Stage → the engine that ran it, for a run (empty for runs before engines were recorded)."""
    path = engines_path(lake, run_id)
    found: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    return found


def write_drift(lake: Lake, run_id: str, unread: dict[str, dict[str, int]]) -> Path:
    """Schema drift the clean stage saw in this run's bronze: per resource type, the element paths
    no view reads, with how many resources carry each (they stay in bronze, nothing breaks)."""
    path = drift_path(lake, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(unread, indent=2, sort_keys=True))
    return path


def read_drift(lake: Lake, run_id: str) -> dict[str, dict[str, int]]:
    path = drift_path(lake, run_id)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_summary(lake: Lake, summary: dict[str, Any]) -> Path:
    """Write the summary next to the lake, one JSON file per run."""
    path = summary_path(lake, str(summary["run_id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path
