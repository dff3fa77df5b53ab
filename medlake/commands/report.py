"""`medlake report`: the compliance report of a run (HTML + JSON), or the trace of one source record."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from medlake.config import load_settings
from medlake.governance import report as report_mod
from medlake.governance.at_rest import lake_for
from medlake.governance.lineage import read_events
from medlake.keys import KeyMissing, audit_key
from medlake.lake import Lake
from medlake.summary import summary_path

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


def report(
    lake: Annotated[Path, typer.Option("--lake", help="Lake root folder.", file_okay=False)],
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
) -> None:
    """Write the compliance report of a run: one self-contained HTML page (no scripts, no network) and
    its JSON. Exits 1 when the ledger does not add up or the audit chain is broken.

    Example: medlake report --lake .medlake/demo/lake --out /tmp/run-report.html
    Example: medlake report --lake .medlake/demo/lake --record fhir/bulk/Observation.000.ndjson:17
    """
    target = lake_for(load_settings(lake=lake), lake.resolve())  # bronze's file names are encrypted
    if record is not None:
        _trace(target, record, landing=landing, as_json=as_json)
        return
    try:
        key = audit_key(load_settings(lake=lake), create=False)
    except KeyMissing as exc:
        err.print(f"[red]cannot verify the audit chain: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    try:
        data = report_mod.gather(target, run_id=run_id, audit_key=key)
    except report_mod.RunNotFound as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(json.dumps(data.as_dict(), indent=2, default=str) + "\n")
    if out is not None or not as_json:
        html_path = out or report_path(target, data.run_id)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(report_mod.render_html(data), encoding="utf-8")
        html_path.with_suffix(".json").write_text(
            json.dumps(data.as_dict(), indent=2, default=str), encoding="utf-8"
        )
        if not as_json:
            _print_verdict(data, html_path)
    if not (data.ledger_balanced and data.audit["intact"]):
        raise typer.Exit(1)


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


def _trace(lake: Lake, record: str, *, landing: Path | None, as_json: bool) -> None:
    source_file, sep, offset_text = record.rpartition(":")
    if not sep or not source_file or not offset_text.isdigit():
        err.print(
            "[red]--record wants '<source_file>:<offset>', e.g. fhir/bulk/Observation.000.ndjson:17[/red]"
        )
        raise typer.Exit(2)
    offset = int(offset_text)
    landing = landing or _landing_from_lineage(lake)
    content_hash = landing_record_hash(landing, source_file, offset) if landing else None
    found = report_mod.trace_record(lake, source_file, offset, record_hash=content_hash)
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
    console.print("  (file names are shown as sha256(name)[:10])")


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
