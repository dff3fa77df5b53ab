"""`medlake report`: the compliance report of a run (HTML + JSON), or the trace of one source record."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from medlake.commands.principal import RoleOpt, acting_as
from medlake.config import lake_root, load_settings
from medlake.governance import audit
from medlake.governance import report as report_mod
from medlake.governance.access import Policy, PolicyError
from medlake.governance.at_rest import lake_for
from medlake.governance.files import write_private
from medlake.governance.lineage import read_events
from medlake.keys import KeyMissing, audit_key, project_key
from medlake.lake import Lake
from medlake.summary import summary_path

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


def report(
    lake: Annotated[
        Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
    ],
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run id (default: the latest run in the ledger).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="HTML file to write (default: <lake>/_runs/<run>.report.html); the JSON goes beside it.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report (or the record's trace) as JSON.")
    ] = False,
    record: Annotated[
        str | None,
        typer.Option(
            "--record",
            help="Trace one source record, '<source_file>:<offset>' as bronze and quarantine name it "
            "(e.g. fhir/bulk/Observation.000.ndjson:17): the tables it reached, why it was quarantined, "
            "or that it merged as a duplicate.",
        ),
    ] = None,
    landing: Annotated[
        Path | None,
        typer.Option(
            "--landing",
            help="Landing folder of --record's file, to recognise a merged duplicate "
            "(default: the one the lineage's ingest events name).",
            file_okay=False,
        ),
    ] = None,
    role: RoleOpt = None,
) -> None:
    """Write the compliance report of a run: one self-contained HTML page (no scripts, no network) and
    its JSON. Exits 1 when the ledger does not add up or the audit chain is broken.

    Example: medlake report --lake .medlake/demo/lake --out /tmp/run-report.html
    Example: medlake report --lake .medlake/demo/lake --record fhir/bulk/Observation.000.ndjson:17
    """
    settings = load_settings(lake=lake)
    target = lake_for(settings, lake.resolve())  # bronze's file names are encrypted
    try:
        key = audit_key(settings, create=False)
        reference_key = project_key(settings)
        policy = Policy.load(settings.access.policy_file)
    except (KeyMissing, PolicyError, OSError) as exc:
        err.print(f"[red]cannot write the report: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    principal, acting = acting_as(settings, target, policy, key, role, object="report", fits=_may_report(policy))
    if not _may_report(policy)(acting):
        audit.append(target, key=key, actor=principal.id, role=acting, action="access.denied", object="report",
                     details={"attempted": "report", "why": f"role {acting} reads neither the ledger nor the quarantine"})
        err.print(f"[red]refused: role {escape(acting)} may not read the compliance report (this attempt was audited)[/red]")
        raise typer.Exit(1)
    audit.append(target, key=key, actor=principal.id, role=acting, action="access.read", object="report",
                 run_id=run_id, details={"attempted": "report.trace" if record else "report"})
    if record is not None:
        _trace(target, record, landing=landing, as_json=as_json, reference_key=reference_key)
        return
    try:
        data = report_mod.gather(target, run_id=run_id, audit_key=key, reference_key=reference_key)
    except report_mod.RunNotFound as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(json.dumps(data.as_dict(), indent=2, default=str) + "\n")
    if out is not None or not as_json:
        html_path = out or report_path(target, data.run_id)
        write_private(html_path, report_mod.render_html(data))  # 0600: the service principal's only
        write_private(html_path.with_suffix(".json"), json.dumps(data.as_dict(), indent=2, default=str))
        if not as_json:
            _print_verdict(data, html_path)
    if not (data.ledger_balanced and data.audit["intact"]):
        raise typer.Exit(1)


def _may_report(policy: Policy) -> Callable[[str], bool]:
    """The report shows the ledger and de-identified quarantine reasons: roles granted both."""
    return lambda r: policy.grant_for(r, "ledger") is not None and policy.grant_for(r, "quarantine") is not None


def report_path(lake: Lake, run_id: str) -> Path:
    """Where a run's report goes by default: ``<lake>/_runs/<run>.report.html``, beside its summary."""
    summary = summary_path(lake, run_id)
    return summary.with_name(summary.name.removesuffix(".json") + ".report.html")


def _print_verdict(data: report_mod.RunReport, html_path: Path) -> None:
    def mark(ok: bool, yes: str, no: str) -> str:
        return f"[green]{yes}[/green]" if ok else f"[red]{no}[/red]"

    k = data.deid["k_anonymity"]
    console.print(f"report of run {escape(data.run_id)} ({escape(data.status)}): {html_path}")
    console.print(f"  ledger: {mark(data.ledger_balanced, 'adds up', 'DOES NOT ADD UP')}")
    console.print(
        f"  audit chain: {mark(data.audit['intact'], 'intact', 'BROKEN: ' + str(data.audit['problem']))}"
    )
    console.print(
        f"  quarantined this run: {data.quarantine_total} record(s) under {len(data.quarantine)} rule(s)"
    )
    if k["available"]:
        console.print(
            f"  k-anonymity (k={k['k']}): smallest class {k['smallest_class']}, "
            f"{k['classes_below_k']} class(es) below k"
        )
    console.print(f"  JSON: {html_path.with_suffix('.json')}")


def _trace(lake: Lake, record: str, *, landing: Path | None, as_json: bool, reference_key: bytes) -> None:
    source_file, sep, offset_text = record.rpartition(":")
    if not sep or not source_file or not offset_text.isdigit():
        err.print(
            "[red]--record wants '<source_file>:<offset>', e.g. fhir/bulk/Observation.000.ndjson:17[/red]"
        )
        raise typer.Exit(2)
    offset = int(offset_text)
    landing = landing or _landing_from_lineage(lake)
    content_hash = landing_record_hash(landing, source_file, offset) if landing else None
    found = report_mod.trace_record(lake, source_file, offset, record_hash=content_hash, reference_key=reference_key)
    if as_json:
        sys.stdout.write(json.dumps(found, indent=2, default=str) + "\n")
    else:
        _print_trace(found)
    if found["outcome"] == "not found":
        raise typer.Exit(1)


def _print_trace(found: dict[str, Any]) -> None:
    console.print(
        f"record file#{found['file']} offset {found['offset']}: [bold]{escape(found['outcome'])}[/bold]"
    )
    for q in found["quarantined"]:
        console.print(
            f"  quarantined in run {escape(q['run_id'])} at {q['stage']} ({q['table']}): "
            f"[bold]{escape(q['rule_id'])}[/bold] — {escape(q['reason'])}"
        )
    if found["merged_into"]:
        m = found["merged_into"]
        console.print(
            f"  same content as file#{m['file']} offset {m['offset']} (run {escape(str(m['run_id']))}), "
            "already in bronze: merged as a duplicate, nothing added"
        )
    for r in found["reached"]:
        note = f" — {r['note']}" if r.get("note") else ""
        console.print(f"  reached {r['table']}: {r['rows']} row(s){escape(note)}")
    console.print("  (files are shown by keyed reference: HMAC of the name under the project key)")


def _landing_from_lineage(lake: Lake) -> Path | None:
    """The landing folder the last ingest read, from its lineage event (``<landing>/fhir``)."""
    for event in reversed(read_events(lake)):
        if event.get("job", {}).get("name", "").endswith(".ingest"):
            for dataset in event.get("inputs", []):
                if dataset.get("namespace") == "file":
                    return Path(dataset["name"]).parent
    return None


def landing_record_hash(landing: Path, source_file: str, offset: int) -> str | None:
    """The content hash ingest gives the record at ``source_file:offset``, when the file is still in landing."""
    from medlake.jobs.ingest import fhir

    path = landing / source_file
    if not path.is_file():
        return None
    for raw in fhir.read_file(path, name=source_file):
        if raw["source_offset"] != offset or raw["error_rule"] or raw["text"] is None:
            continue
        try:
            resource = json.loads(raw["text"])
        except json.JSONDecodeError:
            return None
        return fhir.record_hash(resource) if isinstance(resource, dict) else None
    return None
