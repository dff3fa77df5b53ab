"""`medlake views`: SQL-on-FHIR v2 ViewDefinitions, the FHIR silver tables' column definitions.

Registered in ``medlake.cli``: ``app.add_typer(views.views_app, name="views")``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medlake.jobs.views.conformance import run_suite, test_report

views_app = typer.Typer(
    help="SQL-on-FHIR v2 ViewDefinitions: the FHIR silver tables' columns.", no_args_is_help=True
)

console = Console(width=None if sys.stdout.isatty() else 150)


@views_app.command("test")
def test(
    suite: Annotated[
        Path,
        typer.Argument(
            help="Folder of SQL-on-FHIR v2 conformance test files (*.json).",
            file_okay=False,
            exists=True,
        ),
    ],
    report: Annotated[
        Path,
        typer.Option(
            "--report", help="Where to write the test report (the suite's test_report.json schema)."
        ),
    ] = Path("test_report.json"),
) -> None:
    """Run the SQL-on-FHIR v2 conformance suite against the view engine and write test_report.json.
    Exits 1 when a shareable case fails (experimental ones are reported, not required).

    Example: medlake views test corpus/standards/sql-on-fhir-v2/tests --report test_report.json
    """
    results = run_suite(suite)
    failed = [r for r in results if not r.passed]
    for r in failed:
        tag = "" if r.shareable else " (experimental)"
        console.print(f"FAIL {escape(r.file)} :: {escape(r.name)}{tag}: {escape(r.error or '')}")
    report.write_text(json.dumps(test_report(results), indent=2) + "\n", encoding="utf-8")
    console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed; report in {report}")
    if any(r.shareable for r in failed):
        raise typer.Exit(1)
