"""``medlake deid text``: de-identify the notes of a JSON-lines file, a thin wrapper over
governance.text_deid."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from medlake.config import load_settings
from medlake.governance.text_deid import RowError, deidentify_batch, parse_text_row, text_row
from medlake.keys import KeyMissing, project_key

deid_app = typer.Typer(help="De-identify free text outside the pipeline.", no_args_is_help=True)
err = Console(stderr=True)

#: Notes per batch: a full batch goes to the worker processes (text_deid.PARALLEL_MIN_TEXTS).
BATCH = 2000


def _rows(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of every non-blank line of ``path``."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


@deid_app.command("text")
def text(
    source: Annotated[
        Path,
        typer.Option(
            "--in", help='JSON lines, one {"id", "text"} a line.', exists=True, dir_okay=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help='JSON lines to write: {"id", "text", "spans", "language"} a line.', dir_okay=False
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes (default: MEDLAKE__DEID__TEXT_WORKERS, 0 = one per core)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Notes per batch.")] = BATCH,
) -> None:
    """De-identify the notes of a JSON-lines file: each output row holds the note's id, its
    de-identified text, the spans removed ({"start", "end", "type"}, offsets into the input
    text) and its language ("en", or e.g. "es" for a note the English rules serve less well:
    hold those for review). A malformed row is reported on stderr with its line number and
    skipped; the others are written in input order. Surrogates are keyed by the project key,
    as in the pipeline.

    Example: medlake deid text --in notes.jsonl --out notes.deid.jsonl
    """
    settings = load_settings()
    try:
        key = project_key(settings)
    except KeyMissing as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    processes = workers or settings.deid.workers()
    written = skipped = 0
    pending: list[tuple[Any, str]] = []

    def flush(handle: Any) -> None:
        nonlocal written
        if not pending:
            return
        done = deidentify_batch(
            [t for _, t in pending],
            surrogate_key=key,
            workers=processes,
            ages=settings.deid.text_ages,
        )
        for (row_id, _), result in zip(pending, done):
            handle.write(json.dumps(text_row(row_id, result), ensure_ascii=False) + "\n")
        written += len(pending)
        pending.clear()

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for number, line in _rows(source):
            try:
                pending.append(parse_text_row(line))
            except RowError as exc:
                err.print(f"{source.name} line {number}: skipped, {exc}")
                skipped += 1
                continue
            if len(pending) >= batch:
                flush(handle)
                err.print(f"{written} notes de-identified")
        flush(handle)
    err.print(
        f"wrote {written} notes to {out}"
        + (f"; skipped {skipped} malformed rows" if skipped else "")
    )
    if skipped:
        raise typer.Exit(1)
    sys.stdout.flush()
