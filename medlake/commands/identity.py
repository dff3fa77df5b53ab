"""``medlake identity``: the review queue entity resolution leaves, and unmerge (split).

Thin wrappers over :mod:`medlake.jobs.clean.identity`; every decision is audited with who and
why. Pairs and persons are shown by pseudonym only: to see who two records are, a reidentifier
uses ``medlake vault reidentify`` (audited there).
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medlake.config import lake_root, load_settings

identity_app = typer.Typer(help="Patient identity: the review queue of uncertain pairs, and unmerge.",
                           no_args_is_help=True)
review_app = typer.Typer(
    help="Pairs of patient records waiting for a steward: list, approve (merge), reject.\n\n"
    "Example: medlake identity review list --lake .medlake/demo/lake",
    no_args_is_help=True,
)
identity_app.add_typer(review_app, name="review")

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

LakeOpt = Annotated[
    Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
]
ReasonOpt = Annotated[str, typer.Option(help="Why: recorded with the decision and in the audit log (no PHI).")]
ActorOpt = Annotated[str | None, typer.Option(help="Who decides (default: the login name).")]


def _lake(lake: Path) -> Any:
    from medlake.governance.at_rest import lake_for

    return lake_for(load_settings(lake=lake), lake.resolve())


def _keys(lake: Path) -> tuple[bytes, bytes, int]:
    from medlake.keys import audit_key, project_key

    settings = load_settings(lake=lake)
    return audit_key(settings), project_key(settings), settings.deid.date_shift_max_days


def _vault_keyring(lake: Path) -> Any:
    """The vault keyring, so a decision re-keys the vault at once; None (said) when this machine has
    none: the next pipeline run re-keys it."""
    from medlake.governance.crypto import KeyringError
    from medlake.governance.vault import vault_keyring

    try:
        return vault_keyring(load_settings(lake=lake), create=False)
    except KeyringError as exc:
        err.print(f"[yellow]no vault keyring here ({escape(str(exc))}): the vault follows at the next run[/yellow]")
        return None


@review_app.command("list")
def review_list(
    lake: LakeOpt,
    status: Annotated[str | None, typer.Option(help="open (default), approved, rejected, or all.")] = "open",
    limit: Annotated[int, typer.Option(help="Rows to show in the person-readable listing.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List review pairs, most probable first: pseudonyms, match probability, why queued, and which
    fields agree (no values).

    Example: medlake identity review list --lake .medlake/demo/lake
    """
    from medlake.jobs.clean.identity import queue

    rows = queue(_lake(lake), status=None if status == "all" else status)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(title=f"{len(rows)} review pair(s)", title_justify="left")
    for column in ("pair_id", "source_key_l", "source_key_r", "probability", "reason", "status", "evidence"):
        table.add_column(column)
    for r in rows[:limit]:
        fields = json.loads(r["evidence"] or "{}")
        table.add_row(r["pair_id"], r["source_key_l"], r["source_key_r"], f"{r['match_probability']:.4f}",
                      r["reason"], r["status"], " ".join(f"{k}={v}" for k, v in sorted(fields.items())))
    console.print(table)


@review_app.command("approve")
def review_approve(
    pair_ids: Annotated[list[str], typer.Argument(help="Pair ids (from `medlake identity review list`).")],
    lake: LakeOpt,
    reason: ReasonOpt,
    actor: ActorOpt = None,
) -> None:
    """One person: merge the two records' persons now; their silver rows move to the survivor.

    Example: medlake identity review approve 5e1c… --reason "same person: confirmed by registration desk" --lake .medlake/demo/lake
    """
    from medlake.jobs.clean.identity import DecisionRefused, approve

    audit_key, key, max_shift_days = _keys(lake)
    try:
        done = approve(_lake(lake), pair_ids, reason=reason, actor=actor or getpass.getuser(),
                       audit_key=audit_key, key=key, max_shift_days=max_shift_days, keyring=_vault_keyring(lake))
    except DecisionRefused as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    merged = ", ".join(f"{a} → {s}" for a, s in done.merged) or "already one person"
    console.print(f"approved {len(done.pairs)} pair(s) ({done.decision_id}): {merged}; "
                  f"{done.rows_moved} silver rows moved, {done.vault_rekeyed} vault identities re-keyed")


@review_app.command("reject")
def review_reject(
    pair_ids: Annotated[list[str], typer.Argument(help="Pair ids (from `medlake identity review list`).")],
    lake: LakeOpt,
    reason: ReasonOpt,
    actor: ActorOpt = None,
) -> None:
    """Two people: keep the pair apart for good (never merged, never queued again).

    Example: medlake identity review reject 5e1c… --reason "twins: different first names at birth" --lake .medlake/demo/lake
    """
    from medlake.jobs.clean.identity import DecisionRefused, reject

    audit_key, _, _ = _keys(lake)
    try:
        done = reject(_lake(lake), pair_ids, reason=reason, actor=actor or getpass.getuser(), audit_key=audit_key)
    except DecisionRefused as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    console.print(f"rejected {len(done.pairs)} pair(s) ({done.decision_id})")


@identity_app.command("split")
def split_command(
    person_key: Annotated[str, typer.Argument(help="The person to split (a person_key).")],
    lake: LakeOpt,
    records: Annotated[list[str], typer.Option("--record", help="A source_key that is someone else (repeat).")],
    reason: ReasonOpt,
    actor: ActorOpt = None,
) -> None:
    """Unmerge: the named records (and those sharing their MRN) become a person of their own; their
    silver rows move with them and the split is recorded in reference.person_events.

    Example: medlake identity split 9b2f… --record 4c7a… --reason "overlay: father's chart merged into son's" --lake .medlake/demo/lake
    """
    from medlake.jobs.clean.identity import DecisionRefused, split

    audit_key, key, max_shift_days = _keys(lake)
    try:
        done = split(_lake(lake), person_key, records, reason=reason, actor=actor or getpass.getuser(),
                     audit_key=audit_key, key=key, max_shift_days=max_shift_days, keyring=_vault_keyring(lake))
    except DecisionRefused as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    console.print(f"split {done.person_key}: {len(done.moved_records)} record(s) → new person {done.new_person_key} "
                  f"({done.decision_id}); silver rows moved: {sum(done.rows_moved.values())}, vault identities re-keyed: "
                  f"{done.vault_rekeyed}")
    if done.unattributed:
        err.print(f"[yellow]rows without provenance left with {done.person_key}:[/yellow] {done.unattributed}")
