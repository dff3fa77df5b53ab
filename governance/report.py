"""The compliance report of one pipeline run: one self-contained HTML page and the same as JSON.

For a reviewer who reads no code: what the run did (tasks and their status), whether every
record is accounted for (the ledger and its check), what was quarantined and why, what
de-identification removed and how identifiable the gold rows still are (k-anonymity), what the
quality gate asserted, what was read and written at which Delta version (a lineage graph), whether
the audit chain is intact, differential-privacy budget spent, and quarantine rates across runs.

:func:`gather` reads the lake into a :class:`RunReport`; :func:`render_html` and
:meth:`RunReport.as_dict` present it. The page shows nothing the JSON lacks. Neither holds a raw
record: quarantine examples carry rule, table, reason, offset and a short hash of the file name
(file names can embed patient names, as Synthea's bundles do), never ``raw_record``.
:func:`trace_record` follows one source record (file and offset) through the lake.

No network, no JavaScript: the CSS is inline and the lineage graph and sparklines are SVG drawn
here, so the page opens the same on an air-gapped reviewer's machine.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from medlake import ledger as ledger_mod
from medlake import registry
from medlake.governance.deid import K_ANONYMITY, k_anonymity
from medlake.governance.pseudonyms import (
    FILE_REF_CHARS,
    file_reference,
    keyed_hash,
    scrub_file_names,
)
from medlake.lake import Lake
from medlake.pending import pending_counts
from medlake.registry import BRONZE_FHIR, QUARANTINE, staging_name

from . import audit
from .lineage import read_events

#: how file names appear in the report: the first characters of the SHA-256 of the name
FILE_HASH_CHARS = FILE_REF_CHARS
#: examples shown per quarantine rule
EXAMPLES_PER_RULE = 3
#: runs shown in "quality over time"
TREND_RUNS = 10
#: column order of the lineage graph
LAYERS = ("landing", "bronze", "staging", "silver", "gold")
#: tables every stage writes besides its data (drawn as a caption, not as graph nodes)
BOOKKEEPING = ("quarantine", "ledger", "vault", "audit", "reference")
GOLD_FEATURES = "gold.ml_patient_features"
SILVER_TABLES = registry.SILVER_TABLES
DP_BUDGET_DIR = "dp_budget"

#: Safe Harbor identifiers the clean stage handles, and how (governance/deid.py, jobs/ingest/fhir.py)
DEID_HANDLING: tuple[tuple[str, str], ...] = (
    ("Names", "dropped from silver; kept only encrypted in the vault"),
    ("Telephone, fax, e-mail (telecom)", "dropped from silver; kept only encrypted in the vault"),
    ("Street address, city", "dropped; only state and country are kept"),
    (
        "ZIP code",
        "generalized to ZIP3; '000' for the sparsely populated ZIP3s of the Safe Harbor list",
    ),
    (
        "Dates (birth, death, encounters, observations, conditions, orders)",
        "shifted per patient by a keyed offset (intervals between a patient's events survive)",
    ),
    (
        "Record ids, MRNs, SSNs and other identifiers",
        "replaced by keyed pseudonyms (HMAC-SHA256); identifiers themselves only in the vault",
    ),
    ("Free text (notes, narrative)", "not carried into silver or gold"),
    ("Ages over 89", "gold age bands top-coded at 90+"),
)


@dataclass(frozen=True)
class RunReport:
    """Everything the compliance page of one run shows."""

    run_id: str
    dag_id: str
    lake: str
    generated_at: str
    started_at: str | None
    ended_at: str | None
    status: str
    tasks: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    ledger_balanced: bool
    quarantine: list[dict[str, Any]]
    quarantine_total: int
    #: what the ledger counts as quarantined in this run (all stages); more than ``quarantine_total``
    #: when records quarantined by an earlier run were read again (a quarantine row is never duplicated)
    quarantine_ledger_total: int
    deid: dict[str, Any]
    quality: dict[str, Any]
    lineage: dict[str, Any]
    audit: dict[str, Any]
    dp_budget: dict[str, Any]
    quality_over_time: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    #: per bronze table, records no run has carried past bronze yet (across runs, counted)
    pending: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunNotFound(LookupError):
    """Neither the ledger nor the lineage knows the run (or any run)."""


# --- gathering ------------------------------------------------------------------------------------


def known_runs(lake: Lake) -> list[str]:
    """Run ids oldest first: those the lineage events name (a run that failed before writing its
    ledger is one), then ledger runs that have no events (lakes written without lineage)."""
    first: dict[str, str] = {}
    for event in read_events(lake):
        run = _run_of(event)
        if run is not None:
            first.setdefault(run, str(event["eventTime"]))
    by_events = sorted(first, key=lambda r: first[r])
    ledger_runs = ledger_mod.runs(lake) if lake.exists("ledger") else []
    return [r for r in ledger_runs if r not in first] + by_events


def gather(
    lake: Lake,
    *,
    run_id: str | None = None,
    audit_key: bytes,
    reference_key: bytes,
    trend_runs: int = TREND_RUNS,
    now: datetime | None = None,
) -> RunReport:
    """Read the lake into the report of one run (default: the latest run).

    ``reference_key`` (the project key) names files by keyed reference: file names can embed
    patient names, and an unkeyed hash of one is reversed by hashing a list of names.
    """
    runs = known_runs(lake)
    if not runs:
        raise RunNotFound(
            f"no run recorded under {lake.root} (no ledger, no lineage); run the pipeline first"
        )
    run_id = run_id or runs[-1]
    if run_id not in runs:
        raise RunNotFound(
            f"run {run_id!r} is in neither the ledger nor the lineage under {lake.root}; "
            f"latest runs: {', '.join(runs[-5:])}"
        )
    events = [e for e in read_events(lake) if _run_of(e) == run_id]
    airflow_events = [e for e in read_events(lake, airflow=True) if _airflow_dag_run(e) == run_id]
    tasks = _tasks(events, airflow_events)
    ledger_rows = [_jsonable(r) for r in ledger_mod.for_run(lake, run_id)]
    for row in ledger_rows:
        row["accounted"] = (
            row["records_out"] + row["quarantined"] + row["merged"] + row["bronze_only"]
        )
        row["adds_up"] = row["records_in"] == row["accounted"]
    quarantine_rows = _quarantine_rows(lake, run_id)
    times = [e["eventTime"] for e in events + airflow_events]
    dag_ids = {
        str((e.get("run", {}).get("facets") or {}).get("medlake_run", {}).get("dag_id", ""))
        for e in events
    }
    return RunReport(
        run_id=run_id,
        dag_id=next(iter(sorted(dag_ids - {""})), "medlake_pipeline"),
        lake=str(lake.root),
        generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        started_at=min(times) if times else None,
        ended_at=max(times) if times else None,
        status=_run_status(tasks, airflow_events),
        tasks=tasks,
        ledger=ledger_rows,
        ledger_balanced=all(r["adds_up"] for r in ledger_rows),
        quarantine=quarantine_by_rule(quarantine_rows, reference_key=reference_key),
        quarantine_total=len(quarantine_rows),
        quarantine_ledger_total=sum(int(r["quarantined"]) for r in ledger_rows),
        deid=deid_summary(lake),
        quality=quality_results(events, quarantine_rows, ledger_rows),
        lineage=lineage_picture(events),
        audit=audit_result(lake, run_id=run_id, key=audit_key),
        dp_budget=dp_budget(lake),
        quality_over_time=quality_over_time(lake, runs[: runs.index(run_id) + 1][-trend_runs:]),
        pending=pending_counts(lake),
        notes=[
            (
                f"Files are shown as file#<HMAC of the name under the project key>[:{FILE_HASH_CHARS}] (the same "
                "reference `medlake quarantine list` shows as file:…): landing file names can embed patient "
                "names. Raw records are never shown; they stay encrypted in the quarantine table."
            ),
        ],
    )


def file_hash(name: str | None, *, reference_key: bytes) -> str | None:
    """How a landing file is named in the report: its keyed reference (HMAC under the project key)."""
    if not name:
        return None
    return file_reference(reference_key, name).removeprefix("file:")


def scrub_reason(
    reason: str, *, source_file: str | None, reference_key: bytes, record_id: str | None = None
) -> str:
    """The reason with the file name (path, last part, stem) and the source record id replaced by keyed references."""
    if source_file:
        reason = scrub_file_names(reference_key, reason, [source_file]).replace("file:", "file#")
    if source_file and record_id and len(record_id) >= 6:  # a source system's id, not a pseudonym
        reason = reason.replace(record_id, f"id#{keyed_hash(reference_key, 'record', record_id)[:FILE_HASH_CHARS]}")
    return reason


def _quarantine_rows(lake: Lake, run_id: str) -> list[dict[str, Any]]:
    columns = [
        "run_id",
        "stage",
        "table_name",
        "rule_id",
        "reason",
        "source_file",
        "source_offset",
        "record_id",
    ]
    if not lake.exists(QUARANTINE.name):
        return []
    rows: list[dict[str, Any]] = lake.read(
        QUARANTINE.name, columns=columns, where={"run_id": run_id}
    ).to_pylist()
    return rows


def quarantine_by_rule(
    rows: Iterable[Mapping[str, Any]], *, reference_key: bytes, examples: int = EXAMPLES_PER_RULE
) -> list[dict[str, Any]]:
    """Quarantined records per rule, most frequent first, with a few de-identified examples each."""
    by_rule: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_rule[str(row["rule_id"])].append(row)
    found = []
    for rule, members in sorted(by_rule.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        members = sorted(
            members,
            key=lambda r: (
                str(r["table_name"]),
                r["source_file"] or "",
                r["source_offset"] or 0,
                r["reason"],
            ),
        )
        found.append(
            {
                "rule_id": rule,
                "stage": str(members[0]["stage"]),
                "count": len(members),
                "tables": dict(sorted(Counter(str(r["table_name"]) for r in members).items())),
                "examples": [
                    {
                        "table": r["table_name"],
                        "reason": scrub_reason(
                            str(r["reason"]),
                            source_file=r["source_file"],
                            record_id=r["record_id"],
                            reference_key=reference_key,
                        ),
                        "file": file_hash(r["source_file"], reference_key=reference_key),
                        "offset": r["source_offset"],
                    }
                    for r in members[:examples]
                ],
            }
        )
    return found


def _tasks(
    events: Sequence[Mapping[str, Any]], airflow_events: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per task: medlake's lineage state and Airflow's, with start and end times."""
    tasks: dict[str, dict[str, Any]] = {}
    for source, stream in (("medlake", events), ("airflow", airflow_events)):
        for e in sorted(stream, key=lambda e: e["eventTime"]):
            job = str(e["job"]["name"])
            if source == "airflow" and "." not in job:
                continue  # the DAG-level event: the run's status, not a task
            task = tasks.setdefault(
                job.split(".", 1)[1] if "." in job else job,
                {
                    "task": job.split(".", 1)[1] if "." in job else job,
                    "job": job,
                    "state": None,
                    "airflow_state": None,
                    "started_at": None,
                    "ended_at": None,
                    "error": None,
                },
            )
            state = str(e["eventType"])
            if source == "medlake":
                task["state"] = state
            else:
                task["airflow_state"] = state
            if state == "START":
                task["started_at"] = task["started_at"] or e["eventTime"]
            else:
                task["ended_at"] = e["eventTime"]
            error = (e.get("run", {}).get("facets") or {}).get("errorMessage")
            if error and source == "medlake":
                task["error"] = str(error.get("message", ""))[:500]
    return sorted(tasks.values(), key=lambda t: t["started_at"] or "")


def _run_status(
    tasks: Sequence[Mapping[str, Any]], airflow_events: Sequence[Mapping[str, Any]]
) -> str:
    for e in sorted(airflow_events, key=lambda e: e["eventTime"], reverse=True):
        if "." not in str(e["job"]["name"]) and e["eventType"] in ("COMPLETE", "FAIL", "ABORT"):
            return {"COMPLETE": "success", "FAIL": "failed", "ABORT": "aborted"}[e["eventType"]]
    states = {t["state"] for t in tasks}
    if states & {"FAIL", "ABORT"}:
        return "failed"
    if not tasks:
        return "unknown"
    if states == {"COMPLETE"}:
        return "success"
    return "running"


def deid_summary(lake: Lake, *, k: int = K_ANONYMITY) -> dict[str, Any]:
    """What silver drops or generalizes, and k-anonymity of gold over (age band, gender, ZIP3)."""
    quasi = ["age_band", "gender", "zip3"]
    result: dict[str, Any] = {
        "identifiers": [{"identifier": i, "handling": h} for i, h in DEID_HANDLING],
        "k_anonymity": {"k": k, "quasi_identifiers": quasi, "available": False},
    }
    if not lake.exists(GOLD_FEATURES):
        result["k_anonymity"]["reason"] = (
            f"{GOLD_FEATURES} does not exist (the gold stage has not run)"
        )
        return result
    gold = lake.read(GOLD_FEATURES, columns=["person_key", "age_band", "gender"]).to_pylist()
    zips: dict[str, str] = {}
    patients = lake.read("silver.patients", columns=["person_key", "zip3"]).to_pylist()
    for p in sorted(patients, key=lambda p: (p["person_key"], p["zip3"] or "~")):
        zips.setdefault(p["person_key"], p["zip3"])  # a person's first known ZIP3
    joined = [
        {"age_band": r["age_band"], "gender": r["gender"], "zip3": zips.get(r["person_key"])}
        for r in gold
    ]
    result["k_anonymity"] = {
        **k_anonymity(joined, tuple(quasi), k=k),
        "available": True,
        "source": f"{GOLD_FEATURES} (age_band, gender) joined with silver.patients (zip3) on person_key",
    }
    return result


def quality_results(
    events: Sequence[Mapping[str, Any]],
    quarantine_rows: Sequence[Mapping[str, Any]],
    ledger_rows: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The gate's assertions (from the lineage's dataQualityAssertions facets) and its quarantine counts."""
    assertions: dict[tuple[str, str], dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["eventTime"]):
        if e["eventType"] not in ("COMPLETE", "FAIL"):
            continue
        for dataset in e.get("inputs", []):
            facet = (dataset.get("inputFacets") or {}).get("dataQualityAssertions")
            for a in (facet or {}).get("assertions", []):
                assertions[(dataset["name"], a.get("name", a["assertion"]))] = {
                    "table": dataset["name"],
                    "rule": a.get("name") or a["assertion"],
                    "assertion": a["assertion"],
                    "column": a.get("column"),
                    "level": "row" if (a.get("params") or {}).get("row_level") else "table",
                    "success": bool(a["success"]),
                    "expected": a.get("expected"),
                    "actual": a.get("actual"),
                }
    gate_counts = Counter(
        (str(r["table_name"]), str(r["rule_id"])) for r in quarantine_rows if r["stage"] == "gate"
    )
    listed = list(assertions.values())
    return {
        "assertions": listed,
        "passed": sum(a["success"] for a in listed),
        "failed": sum(not a["success"] for a in listed),
        "gate_quarantine": [
            {"table": t, "rule_id": r, "count": n} for (t, r), n in sorted(gate_counts.items())
        ],
        "gate_ledger": [
            {
                "table": r["table_name"],
                "records_in": r["records_in"],
                "promoted": r["records_out"],
                "quarantined": r["quarantined"],
                "merged": r["merged"],
            }
            for r in ledger_rows
            if r["stage"] == "gate"
        ],
    }


def lineage_picture(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tables (with the versions this run wrote or read) and the edges input → output between them."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    completed: dict[str, Mapping[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["eventTime"]):
        if e["eventType"] == "COMPLETE":
            completed[e["job"]["name"]] = e  # a retried task: its last COMPLETE counts

    def node(dataset: Mapping[str, Any]) -> str:
        name = _dataset_label(dataset)
        version = (dataset.get("facets") or {}).get("version", {}).get("datasetVersion")
        entry = nodes.setdefault(name, {"name": name, "layer": _layer(dataset), "version": None})
        if version is not None:
            entry["version"] = max(
                int(version), entry["version"] if entry["version"] is not None else -1
            )
        return name

    for job, e in completed.items():
        inputs = e.get("inputs", [])
        for i in inputs:
            node(i)
        for o in e.get("outputs", []):
            target = node(o)
            for i in _made_from(o, inputs):
                edges[(_dataset_label(i), target)].add(job)
    data_nodes = [n for n in nodes.values() if n["layer"] in LAYERS]
    return {
        "nodes": sorted(data_nodes, key=lambda n: (LAYERS.index(n["layer"]), n["name"])),
        "edges": [
            {"from": a, "to": b, "jobs": sorted(jobs)}
            for (a, b), jobs in sorted(edges.items())
            if nodes[a]["layer"] in LAYERS and nodes[b]["layer"] in LAYERS
        ],
        "bookkeeping": sorted(
            (n for n in nodes.values() if n["layer"] not in LAYERS), key=lambda n: n["name"]
        ),
    }


def _made_from(
    output: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The inputs an output's column lineage names; all inputs when it has none."""
    lineage = (output.get("facets") or {}).get("columnLineage")
    if not lineage:
        return list(inputs)
    used = {
        f["name"]
        for column in lineage.get("fields", {}).values()
        for f in column.get("inputFields", [])
    }
    used |= {f["name"] for f in lineage.get("dataset") or []}
    return [i for i in inputs if i["name"] in used]


def _dataset_label(dataset: Mapping[str, Any]) -> str:
    """Lake tables by name; a landing folder as ``landing/<kind>`` (its absolute path says nothing to a reviewer)."""
    name = str(dataset["name"])
    if dataset.get("namespace") == "file" or name.startswith("/"):
        parts = Path(name).parts
        return "landing/" + parts[-1] if parts else "landing"
    return name


def _layer(dataset: Mapping[str, Any]) -> str:
    name = _dataset_label(dataset)
    if name.startswith("landing"):
        return "landing"
    return name.split(".", 1)[0] if "." in name else name


def audit_result(lake: Lake, *, run_id: str, key: bytes) -> dict[str, Any]:
    """The audit chain's verification, and how many entries name this run."""
    verification = audit.verify(lake, key=key)
    entries = audit.read(lake)
    return {
        **verification.as_dict(),
        "intact": verification.ok,
        "run_entries": sum(1 for e in entries if e.run_id == run_id),
        "actions": dict(sorted(Counter(e.action for e in entries if e.run_id == run_id).items())),
    }


def dp_budget(lake: Lake) -> dict[str, Any]:
    """Differential-privacy releases recorded under ``<lake>/dp_budget/`` (a Delta table or JSON files)."""
    root = lake.path(DP_BUDGET_DIR)
    if not root.exists():
        return {"releases": [], "status": "no releases"}
    rows: list[dict[str, Any]] = []
    if DeltaTable.is_deltatable(str(root)):
        rows = DeltaTable(str(root)).to_pyarrow_dataset().to_table(use_threads=False).to_pylist()
    else:
        for path in sorted(root.rglob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            rows.extend(data if isinstance(data, list) else [data])
    rows = [_jsonable(r) for r in rows if isinstance(r, Mapping)]
    return {"releases": rows, "status": f"{len(rows)} release(s)" if rows else "no releases"}


def quality_over_time(lake: Lake, runs: Sequence[str]) -> list[dict[str, Any]]:
    """Per silver table and run: records that entered clean, quarantined at the gate and at any stage."""
    rows = lake.read("ledger").to_pylist()
    by_key = {(r["run_id"], r["stage"], r["table_name"]): r for r in rows}
    found = []
    for table in SILVER_TABLES:
        points = []
        for run in runs:
            silver = by_key.get((run, "silver", table))
            gate = by_key.get((run, "gate", table))
            standardize = by_key.get((run, "standardize", table))
            if silver is None and gate is None:
                continue
            quarantined = sum(
                r["quarantined"] for r in (silver, standardize, gate) if r is not None
            )
            records_in = silver["records_in"] if silver else 0
            gate_in = gate["records_in"] if gate else 0
            gate_q = gate["quarantined"] if gate else 0
            points.append(
                {
                    "run_id": run,
                    "records_in": records_in,
                    "quarantined": quarantined,
                    "rate": round(quarantined / records_in, 4) if records_in else None,
                    "gate_in": gate_in,
                    "gate_quarantined": gate_q,
                    "gate_rate": round(gate_q / gate_in, 4) if gate_in else None,
                }
            )
        found.append({"table": table, "runs": points})
    return found


# --- tracing one source record ------------------------------------------------------------------


def trace_record(
    lake: Lake,
    source_file: str,
    offset: int,
    *,
    reference_key: bytes,
    record_hash: str | None = None,
) -> dict[str, Any]:
    """Where the record at ``source_file:offset`` went: the tables it reached, its quarantine, or its merge.

    ``record_hash``: the record's content hash, when the caller computed it from the landing file;
    it finds the bronze row a duplicate was merged into.
    """
    result: dict[str, Any] = {
        "file": file_hash(source_file, reference_key=reference_key),
        "offset": offset,
        "outcome": "not found",
        "quarantined": [],
        "reached": [],
        "merged_into": None,
    }
    if lake.exists(QUARANTINE.name):
        for row in lake.read(
            QUARANTINE.name, columns=_TRACE_QUARANTINE, where={"source_file": source_file}
        ).to_pylist():
            if row["source_offset"] == offset:
                result["quarantined"].append(_quarantine_finding(row, reference_key))
    bronze = lake.read(
        BRONZE_FHIR.name,
        columns=["resource_type", "_source_file", "_source_offset", "_record_hash", "_run_id"],
        where={"_source_file": source_file},
    ).to_pylist()
    here = [b for b in bronze if b["_source_offset"] == offset]
    hashes = {b["_record_hash"] for b in here}
    if not here and record_hash:
        merged = lake.read(
            BRONZE_FHIR.name,
            columns=["resource_type", "_source_file", "_source_offset", "_record_hash", "_run_id"],
            where={"_record_hash": record_hash},
        ).to_pylist()
        if merged:
            first = merged[0]
            result["merged_into"] = {
                "file": file_hash(first["_source_file"], reference_key=reference_key),
                "offset": first["_source_offset"],
                "run_id": first["_run_id"],
                "resource_type": first["resource_type"],
            }
            hashes = {record_hash}
    for b in here:
        result["reached"].append(
            {
                "table": BRONZE_FHIR.name,
                "rows": 1,
                "run_id": b["_run_id"],
                "resource_type": b["resource_type"],
            }
        )
    if hashes:
        result["reached"].extend(_downstream(lake, hashes))
        if lake.exists(QUARANTINE.name):
            for row in lake.read(QUARANTINE.name, columns=_TRACE_QUARANTINE).to_pylist():
                if (
                    row["record_hash"] in hashes
                    and _quarantine_finding(row, reference_key) not in result["quarantined"]
                ):
                    result["quarantined"].append(_quarantine_finding(row, reference_key))
    if result["merged_into"]:
        result["outcome"] = "merged as a duplicate"
    elif result["quarantined"] and not any(
        r["table"].startswith("silver.") for r in result["reached"]
    ):
        result["outcome"] = "quarantined"
    elif result["reached"]:
        result["outcome"] = "reached " + ", ".join(
            dict.fromkeys(r["table"] for r in result["reached"])
        )
    return result


_TRACE_QUARANTINE = [
    "run_id",
    "stage",
    "table_name",
    "rule_id",
    "reason",
    "source_file",
    "source_offset",
    "record_id",
    "record_hash",
]


def _quarantine_finding(row: Mapping[str, Any], reference_key: bytes) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "stage": row["stage"],
        "table": row["table_name"],
        "rule_id": row["rule_id"],
        "reason": scrub_reason(
            str(row["reason"]),
            source_file=row["source_file"],
            record_id=row["record_id"],
            reference_key=reference_key,
        ),
    }


def _downstream(lake: Lake, hashes: set[str]) -> list[dict[str, Any]]:
    """Staging and silver rows made from these bronze records, then the gold rows of their people."""
    reached: list[dict[str, Any]] = []
    people: set[str] = set()
    for silver in SILVER_TABLES:
        for name in (staging_name(silver), silver):
            if not lake.exists(name):
                continue
            rows = [
                r
                for r in lake.read(
                    name, columns=["_record_hash", "person_key", "_run_id"]
                ).to_pylist()
                if r["_record_hash"] in hashes
            ]
            if rows:
                reached.append({"table": name, "rows": len(rows), "run_id": rows[0]["_run_id"]})
                if name == silver:
                    people.update(r["person_key"] for r in rows)
    if people and lake.exists(GOLD_FEATURES):
        gold = [
            r
            for r in lake.read(GOLD_FEATURES, columns=["person_key"]).to_pylist()
            if r["person_key"] in people
        ]
        if gold:
            reached.append(
                {
                    "table": GOLD_FEATURES,
                    "rows": len(gold),
                    "run_id": None,
                    "note": "aggregated into the feature row of the record's person",
                }
            )
    return reached


# --- helpers --------------------------------------------------------------------------------------


def _run_of(event: Mapping[str, Any]) -> str | None:
    value = ((event.get("run", {}).get("facets") or {}).get("medlake_run") or {}).get(
        "airflow_run_id"
    )
    return str(value) if value is not None else None


def _airflow_dag_run(event: Mapping[str, Any]) -> str | None:
    facets = event.get("run", {}).get("facets") or {}
    for name in ("airflow", "airflowDagRun"):
        run = (facets.get(name) or {}).get("dagRun") or {}
        if run.get("run_id"):
            return str(run["run_id"])
    return None


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


# --- rendering ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:0;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:20px 28px 48px}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px;font-size:22px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13px}
header dt{opacity:.75}header dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px;color:#1f3a5f}
h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.obs{white-space:nowrap}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.ok{color:#11693a;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#667085}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#e3f4ea}.badge.bad{background:#fbe4e2}.badge.warn{background:#fff3d6;color:#7a5200}
nav{font-size:13px;margin:4px 0 0}nav a{color:#c9dbf2;margin-right:10px}
.note{font-size:12px;color:#667085;margin:6px 0 0}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #e6e9ee;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:20px}
svg text{font-family:system-ui,sans-serif}
summary{cursor:pointer;color:#1f3a5f;margin:6px 0}
"""

SECTIONS = (
    ("tasks", "Tasks"),
    ("ledger", "Ledger"),
    ("quarantine", "Quarantine by rule"),
    ("deid", "De-identification"),
    ("quality", "Quality gate"),
    ("lineage", "Lineage"),
    ("audit", "Audit chain"),
    ("dp", "Differential privacy"),
    ("trend", "Quality over time"),
)


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, no network)."""
    body = [
        _section_tasks(report),
        _section_ledger(report),
        _section_quarantine(report),
        _section_deid(report),
        _section_quality(report),
        _section_lineage(report),
        _section_audit(report),
        _section_dp(report),
        _section_trend(report),
    ]
    status_class = "ok" if report.status == "success" else "bad"
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>medlake run report {escape(report.run_id)}</title><style>{_CSS}</style></head><body>"
        f'<header id="header"><h1>medlake compliance report</h1><dl>'
        f'<dt>run</dt><dd id="run-id">{escape(report.run_id)}</dd>'
        f"<dt>DAG</dt><dd>{escape(report.dag_id)}</dd>"
        f"<dt>time</dt><dd>{escape(report.started_at or '?')} → {escape(report.ended_at or '?')}</dd>"
        f'<dt>status</dt><dd><span class="badge {status_class}" id="run-status">{escape(report.status)}</span>'
        f' · ledger <span class="badge {"ok" if report.ledger_balanced and report.ledger else "bad"}">'
        f"{_ledger_verdict(report)}</span>"
        f' · audit chain <span class="badge {"ok" if report.audit["intact"] else "bad"}">'
        f"{'intact' if report.audit['intact'] else 'BROKEN'}</span></dd>"
        f"<dt>lake</dt><dd>{escape(report.lake)}</dd>"
        f"<dt>generated</dt><dd>{escape(report.generated_at)}</dd>"
        f"</dl><nav>{nav}</nav></header><main>"
        + "".join(body)
        + "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)
        + "</main></body></html>\n"
    )


def _ledger_verdict(report: RunReport) -> str:
    if not report.ledger:
        return "no entries"
    return "adds up" if report.ledger_balanced else "DOES NOT ADD UP"


def _section(sid: str, title: str, inner: str) -> str:
    return f'<section id="{sid}" data-section="{sid}"><h2>{escape(title)}</h2>{inner}</section>'


def _cell(value: Any, *, key: str | None = None, numeric: bool | None = None) -> str:
    if numeric is None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
    attrs = (' class="n"' if numeric else "") + (f' data-k="{key}"' if key else "")
    return f"<td{attrs}>{'' if value is None else escape(str(value))}</td>"


_NUMERIC = ' class="n"'


def _table(
    headers: Sequence[str],
    rows: Iterable[str],
    *,
    tid: str | None = None,
    numeric: Sequence[int] = (),
) -> str:
    head = "".join(
        f"<th{_NUMERIC if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    ident = f' id="{tid}"' if tid else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _yes(ok: bool, yes: str, no: str) -> str:
    return f'<span class="{"ok" if ok else "bad"}">{escape(yes if ok else no)}</span>'


def _state(state: str | None) -> str:
    if state is None:
        return '<span class="muted">—</span>'
    cls = {"COMPLETE": "ok", "FAIL": "bad", "ABORT": "bad"}.get(state, "warn")
    return f'<span class="badge {cls}">{escape(state)}</span>'


def _section_tasks(r: RunReport) -> str:
    rows = [
        f"<tr><td><code>{escape(t['task'])}</code></td><td>{_state(t['state'])}</td><td>{_state(t['airflow_state'])}</td>"
        f'<td class="mono">{escape(t["started_at"] or "")}</td><td class="mono">{escape(t["ended_at"] or "")}</td>'
        f"<td>{escape(t['error'] or '')}</td></tr>"
        for t in r.tasks
    ]
    note = '<p class="note">medlake: the stage\'s OpenLineage events (_lineage/events.ndjson); Airflow: its provider\'s task events (_lineage/airflow.ndjson), "—" when the run did not go through Airflow.</p>'
    inner = (
        _table(["task", "medlake", "Airflow", "started", "ended", "error"], rows, tid="tasks-table")
        if rows
        else "<p>no lineage events recorded for this run</p>"
    )
    return _section("tasks", "Tasks", inner + note)


LEDGER_COLUMNS = ("records_in", "records_out", "quarantined", "merged", "bronze_only")


def _section_ledger(r: RunReport) -> str:
    rows = [
        f'<tr data-stage="{escape(e["stage"])}" data-table="{escape(e["table_name"])}"><td>{escape(e["stage"])}</td>'
        f"<td><code>{escape(e['table_name'])}</code></td>"
        + "".join(_cell(e[c], key=c) for c in LEDGER_COLUMNS)
        + f"<td>{_yes(e['adds_up'], 'adds up', 'does not add up')}</td></tr>"
        for e in r.ledger
    ]
    overall = f'<p id="ledger-check">overall: {_yes(r.ledger_balanced, "every row adds up", "the ledger DOES NOT add up")} (in = out + quarantined + merged + bronze_only)</p>'
    if not r.ledger:
        overall = '<p id="ledger-check" class="bad">no ledger entries for this run: it stopped before any stage recorded its counts</p>'
    waiting = ", ".join(f"<code>{escape(t)}</code> {n:,}" for t, n in sorted(r.pending.items()) if n)
    overall += (
        f'<p id="pending" class="bad">pending (in bronze, not yet curated by any run; the next run takes them): {waiting}</p>'
        if waiting
        else '<p id="pending">pending: none (every bronze record is curated, quarantined, merged or bronze-only)</p>'
    )
    return _section(
        "ledger",
        "Ledger",
        _table(
            ["stage", "table", "in", "out", "quarantined", "merged", "bronze only", "check"],
            rows,
            tid="ledger-table",
            numeric=range(2, 7),
        )
        + overall,
    )


def _section_quarantine(r: RunReport) -> str:
    if not r.quarantine:
        return _section(
            "quarantine",
            "Quarantine by rule",
            f"<p>no new quarantine rows from this run.{_already(r)}</p>",
        )
    summary = _table(
        ["rule", "stage", "tables", "count"],
        (
            f'<tr data-rule="{escape(q["rule_id"])}"><td><code>{escape(q["rule_id"])}</code></td><td>{escape(q["stage"])}</td>'
            f"<td>{escape(', '.join(q['tables']))}</td>{_cell(q['count'], key='count')}</tr>"
            for q in r.quarantine
        ),
        tid="quarantine-table",
        numeric=(3,),
    )
    examples = _table(
        ["rule", "table", "reason", "file (keyed ref)", "offset"],
        (
            f"<tr><td><code>{escape(q['rule_id'])}</code></td><td><code>{escape(ex['table'])}</code></td>"
            f'<td>{escape(ex["reason"])}</td><td class="mono">{escape(ex["file"] or "—")}</td>{_cell(ex["offset"])}</tr>'
            for q in r.quarantine
            for ex in q["examples"]
        ),
    )
    return _section(
        "quarantine",
        "Quarantine by rule",
        f"<p>{r.quarantine_total} new quarantine row(s) from this run.{_already(r)}</p>{summary}"
        f"<h3>Examples (up to {EXAMPLES_PER_RULE} per rule)</h3>{examples}"
        f'<p class="note">File names and source record ids appear as short SHA-256 hashes (file names can embed patient names); '
        "raw records are never shown. <code>medlake quarantine --lake … --json</code> lists every row.</p>",
    )


def _already(r: RunReport) -> str:
    earlier = r.quarantine_ledger_total - r.quarantine_total
    if earlier <= 0:
        return ""
    return (
        f" The ledger counts {r.quarantine_ledger_total} quarantined: the other {earlier} were read again and are "
        "already in quarantine from an earlier run (same record, same rule), where they keep that run's id."
    )


def _section_deid(r: RunReport) -> str:
    ids = _table(
        ["Safe Harbor identifier", "what silver does"],
        (
            f"<tr><td>{escape(i['identifier'])}</td><td>{escape(i['handling'])}</td></tr>"
            for i in r.deid["identifiers"]
        ),
    )
    k = r.deid["k_anonymity"]
    if k["available"]:
        ok = k["classes_below_k"] == 0
        kinfo = (
            '<div class="cards" id="k-anonymity">'
            f'<div class="card">smallest class<b data-k="smallest_class">{k["smallest_class"]}</b></div>'
            f'<div class="card">classes below k={k["k"]}<b data-k="classes_below_k" class="{"ok" if ok else "bad"}">{k["classes_below_k"]}</b></div>'
            f'<div class="card">people in them<b data-k="records_in_classes_below_k">{k["records_in_classes_below_k"]}</b></div>'
            f'<div class="card">classes / people<b>{k["classes"]} / {k["population"]}</b></div></div>'
            f'<p class="note">Quasi-identifiers: {escape(", ".join(k["quasi_identifiers"]))}, from {escape(k["source"])}. '
            "A class smaller than k is a group of people a linkage attack could narrow down; release gold only as aggregates or after further generalization when any exist.</p>"
        )
    else:
        kinfo = (
            f'<p id="k-anonymity">k-anonymity: not available — {escape(k.get("reason", ""))}</p>'
        )
    return _section("deid", "De-identification", ids + "<h3>k-anonymity of gold</h3>" + kinfo)


_FAILED = {"row": "FAIL: rows quarantined", "table": "FAIL: promotion stopped"}


def _section_quality(r: RunReport) -> str:
    q = r.quality

    def rows(passed: bool) -> list[str]:
        return [
            f"<tr><td><code>{escape(a['table'])}</code></td><td><code>{escape(a['rule'])}</code></td><td>{escape(a['level'])}</td>"
            f'<td>{_yes(a["success"], "pass", _FAILED[a["level"]])}</td><td>{escape(a["expected"] or "")}</td><td class="obs">{escape(a["actual"] or "")}</td></tr>'
            for a in q["assertions"]
            if a["success"] == passed
        ]

    headers = ["table", "rule", "level", "result", "expected", "observed"]
    gate = _table(
        ["table", "in", "promoted", "quarantined", "merged"],
        numeric=range(1, 5),
        rows=(
            f"<tr><td><code>{escape(g['table'])}</code></td>{_cell(g['records_in'])}{_cell(g['promoted'])}{_cell(g['quarantined'], key='gate_quarantined')}{_cell(g['merged'])}</tr>"
            for g in q["gate_ledger"]
        ),
    )
    by_rule = (
        _table(
            ["table", "rule", "count"],
            numeric=(2,),
            rows=(
                f"<tr><td><code>{escape(g['table'])}</code></td><td><code>{escape(g['rule_id'])}</code></td>{_cell(g['count'])}</tr>"
                for g in q["gate_quarantine"]
            ),
        )
        if q["gate_quarantine"]
        else "<p>the gate quarantined no rows in this run</p>"
    )
    if not q["assertions"]:
        assertions = "<p>no quality assertions recorded for this run</p>"
    else:
        failed = _table(headers, rows(False), tid="failed-assertions") if q["failed"] else ""
        assertions = failed + (
            f"<details><summary>{q['passed']} passed assertion(s)</summary>{_table(headers, rows(True), tid='passed-assertions')}</details>"
        )
    return _section(
        "quality",
        "Quality gate",
        f'<p><span class="ok">{q["passed"]} passed</span>, <span class="{"bad" if q["failed"] else "muted"}">{q["failed"]} failed</span> '
        "(Great Expectations suites, from the gate's dataQualityAssertions lineage facets; row-level rules quarantine rows, table-level rules stop promotion).</p>"
        + assertions
        + "<h3>Gate promotion</h3>"
        + gate
        + "<h3>Gate quarantine by rule</h3>"
        + by_rule,
    )


def _section_lineage(r: RunReport) -> str:
    extra = r.lineage["bookkeeping"]
    caption = ", ".join(
        f"{n['name']} v{n['version']}" if n["version"] is not None else n["name"] for n in extra
    )
    return _section(
        "lineage",
        "Lineage",
        lineage_svg(r.lineage)
        + f'<p class="note">From this run\'s OpenLineage COMPLETE events: each box is a table at the Delta version the run wrote (or read); '
        f"each arrow an input → output of a task. Also written by the stages: {escape(caption or 'nothing else')}.</p>",
    )


def lineage_svg(lineage: Mapping[str, Any]) -> str:
    """The lineage graph as inline SVG: one column per layer, boxes per table, curved arrows."""
    box_w, box_h, col_w, row_h, top, left = 168, 36, 214, 50, 34, 12
    columns: dict[str, list[Mapping[str, Any]]] = {layer: [] for layer in LAYERS}
    for n in lineage["nodes"]:
        columns[n["layer"]].append(n)
    tallest = max((len(c) for c in columns.values()), default=1) or 1
    height = top + tallest * row_h + 10
    width = left + len(LAYERS) * col_w
    where: dict[str, tuple[float, float]] = {}
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" id="lineage-svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage graph of the run">'
        ),
        (
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
            '<path d="M0,0 L10,5 L0,10 z" fill="#7b8794"/></marker></defs>'
        ),
    ]
    fills = {
        "landing": "#eef1f5",
        "bronze": "#f6e7d8",
        "staging": "#fdf6d8",
        "silver": "#e8edf3",
        "gold": "#fbefc4",
    }
    for c, layer in enumerate(LAYERS):
        x = left + c * col_w
        parts.append(
            f'<text x="{x + box_w / 2}" y="18" text-anchor="middle" font-size="13" font-weight="600" fill="#1f3a5f">{layer}</text>'
        )
        nodes = columns[layer]
        offset = (tallest - len(nodes)) * row_h / 2
        for i, n in enumerate(nodes):
            y = top + offset + i * row_h
            where[n["name"]] = (x, y)
    for e in lineage["edges"]:
        if e["from"] not in where or e["to"] not in where:
            continue
        (x1, y1), (x2, y2) = where[e["from"]], where[e["to"]]
        sx, sy, tx, ty = x1 + box_w, y1 + box_h / 2, x2 - 2, y2 + box_h / 2
        mid = (sx + tx) / 2
        parts.append(
            f'<path d="M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ty:.1f} {tx:.1f},{ty:.1f}" fill="none" '
            f'stroke="#9aa5b1" stroke-width="1.2" marker-end="url(#arrow)"><title>{escape(e["from"])} → {escape(e["to"])} ({escape(", ".join(e["jobs"]))})</title></path>'
        )
    for n in lineage["nodes"]:
        bx, by = where[n["name"]]
        label = n["name"].split(".", 1)[1] if "." in n["name"] else n["name"]
        version = "" if n["version"] is None else f"v{n['version']}"
        parts.append(
            f'<g class="node" data-table="{escape(n["name"])}"><rect x="{bx:.0f}" y="{by:.0f}" width="{box_w}" height="{box_h}" rx="5" '
            f'fill="{fills.get(n["layer"], "#fff")}" stroke="#8795a8"/>'
            f'<text x="{bx + 8:.0f}" y="{by + 23:.0f}" font-size="12" fill="#1d2430">{escape(label)}</text>'
            f'<text x="{bx + box_w - 8:.0f}" y="{by + 23:.0f}" font-size="11" text-anchor="end" fill="#52606d">{escape(version)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _section_audit(r: RunReport) -> str:
    a = r.audit
    verdict = (
        f'<p id="audit-result">{_yes(True, "intact", "")}: {a["entries"]} entr{"y" if a["entries"] == 1 else "ies"}, chain and signed head verify under the audit key.</p>'
        if a["intact"]
        else f'<p id="audit-result">{_yes(False, "", "BROKEN")}: first broken entry {escape(str(a["first_broken_seq"]))} — {escape(a["problem"] or "")}</p>'
    )
    actions = ", ".join(f"{k} ×{v}" for k, v in a["actions"].items()) or "none"
    return _section(
        "audit",
        "Audit chain",
        verdict + f"<p>Entries naming this run: {a['run_entries']} ({escape(actions)}).</p>",
    )


def _section_dp(r: RunReport) -> str:
    d = r.dp_budget
    if not d["releases"]:
        return _section(
            "dp",
            "Differential privacy",
            f'<p id="dp-status">{escape(d["status"])}: no differentially private release has spent budget in this lake.</p>',
        )
    columns = sorted({k for row in d["releases"] for k in row})
    rows = ("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in d["releases"])
    return _section(
        "dp",
        "Differential privacy",
        f'<p id="dp-status">{escape(d["status"])}</p>' + _table(columns, rows),
    )


def _percent(rate: float | None) -> str:
    return "— (no records)" if rate is None else f"{100 * rate:.1f}%"


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> str:
    """A small inline SVG line of the values (0 at the bottom), its last point marked."""
    if not values:
        return ""
    top = max(max(values), 0.01)
    step = width / max(len(values) - 1, 1)
    points = [
        (i * step if len(values) > 1 else width / 2, height - 3 - (v / top) * (height - 6))
        for i, v in enumerate(values)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    lx, ly = points[-1]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{width + 6}" height="{height}" viewBox="-3 0 {width + 6} {height}">'
        f'<line x1="0" y1="{height - 3}" x2="{width}" y2="{height - 3}" stroke="#d0d5dd" stroke-width="1"/>'
        f'<polyline points="{path}" fill="none" stroke="#1f3a5f" stroke-width="1.5"/>'
        f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.5" fill="#b3261e"/></svg>'
    )


def _section_trend(r: RunReport) -> str:
    rows = []
    for t in r.quality_over_time:
        points = t["runs"]
        if not points:
            continue
        last = points[-1]
        rows.append(
            f'<tr data-table="{escape(t["table"])}"><td><code>{escape(t["table"])}</code></td>{_cell(len(points))}'
            f"<td>{sparkline([p['rate'] for p in points if p['rate'] is not None])}</td>"
            + _cell(_percent(last["rate"]), numeric=True)
            + _cell(f"{last['quarantined']} / {last['records_in']}", numeric=True)
            + _cell(_percent(last["gate_rate"]), numeric=True)
            + _cell(f"{last['gate_quarantined']} / {last['gate_in']}", numeric=True)
            + "</tr>"
        )
    inner = _table(
        [
            "silver table",
            "runs",
            "quarantine rate, all stages (oldest → this run)",
            "this run",
            "quarantined / in",
            "gate rate",
            "gate quarantined / in",
        ],
        rows,
        tid="trend-table",
        numeric=(1, 3, 4, 5, 6),
    )
    return _section(
        "trend",
        "Quality over time",
        inner
        + f'<p class="note">The last {TREND_RUNS} runs of the ledger up to this one. "All stages": quarantined at validation, '
        "standardization and the gate over the records clean read for the table; a rising line is a drifting source. Runs that read no records for a table are left out of its line.</p>",
    )


_TAG = re.compile(r"<[^>]+>")


def text_of(html: str) -> str:
    """The page's text without markup (what a reader sees), for checks."""
    return _TAG.sub(" ", html)


__all__ = [
    "RunNotFound",
    "RunReport",
    "file_hash",
    "gather",
    "lineage_svg",
    "render_html",
    "scrub_reason",
    "trace_record",
]
