"""``medlake read`` and ``medlake release``: thin wrappers over governance.access and governance.dp.

The access policy comes from the settings (``MEDLAKE__ACCESS__POLICY_FILE``, default the shipped
``governance/policies/default.yaml``); the audit key from ``MEDLAKE_AUDIT_KEY`` or
``<keys>/audit.key``. Neither can be chosen on the command line: the operator sets them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medlake.commands.principal import RoleOpt, acting_as, table_fits
from medlake.config import Settings, lake_root, load_settings
from medlake.governance import audit, dp
from medlake.governance.access import PURPOSES, AccessDenied, Policy, PolicyError, read_table
from medlake.keys import KeyMissing, audit_key
from medlake.lake import Lake, TableNotFound

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

LakeOpt = Annotated[
    Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
]
PurposeOpt = Annotated[str, typer.Option("--purpose", help=f"Purpose of use, recorded in the audit log: {', '.join(PURPOSES)}.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def load_policy(settings: Settings) -> Policy:
    """The access policy the settings name (the shipped default unless the operator set another)."""
    return Policy.load(settings.access.policy_file)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _context(lake: Path) -> tuple[Settings, Lake, Policy, bytes]:
    settings = load_settings(lake=lake)
    try:
        policy = load_policy(settings)
        key = audit_key(settings, create=settings.env == "local")
    except (KeyMissing, PolicyError, OSError) as exc:
        raise _fail(f"cannot check access: {exc}", code=2) from exc
    return settings, Lake(lake.resolve()), policy, key


def read(
    table: Annotated[str, typer.Argument(help="The table, e.g. silver.observations or gold.ml_patient_features.")],
    purpose: PurposeOpt,
    lake: LakeOpt,
    role: RoleOpt = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated columns (default: all you may see).")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Delta version to read (time travel).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N rows.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Read a table for a stated purpose, as one of your roles: only the columns and rows the access policy grants.

    Your roles come from who you are (the policy's `principals`), not from a flag. A refused read
    exits 1 naming the role, table and column or purpose, and is audited; reads of PHI-bearing
    tables are audited too.

    Example: medlake read silver.observations --role ml --purpose research --columns person_key,code,value_num --lake .medlake/demo/lake
    """
    settings, target, policy, key = _context(lake)
    principal, role = acting_as(settings, target, policy, key, role, object=table, fits=table_fits(policy, table))
    wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    try:
        data = read_table(target, table, role=role, purpose=purpose, actor=principal.id,
                          audit_key=key, policy=policy, columns=wanted, version=version)
    except AccessDenied as exc:
        raise _fail(f"refused: {exc} (this attempt was audited)") from exc
    except (TableNotFound, KeyError, audit.AuditLogBroken) as exc:
        raise _fail(str(exc).strip("'\"")) from exc
    rows = data.slice(0, limit).to_pylist()
    if as_json:
        _print_json(rows)
        return
    shown = Table(title=f"{table}: {len(rows)} of {data.num_rows} row(s)", title_justify="left")
    for name in data.column_names:
        shown.add_column(name)
    for row in rows:
        shown.add_row(*(escape("" if v is None else str(v)) for v in row.values()))
    console.print(shown)


def release(
    query: Annotated[str, typer.Argument(help="The release query, e.g. 'count gold.ml_patient_features where has_diabetes'.")],
    epsilon: Annotated[float, typer.Option("--epsilon", help="Privacy loss this release spends (> 0).")],
    lake: LakeOpt,
    role: RoleOpt = None,
    purpose: PurposeOpt = "research",
    as_json: JsonOpt = False,
) -> None:
    """Release a differentially private count, sum, mean, quantile or histogram; prints epsilon spent and the budget left.

    Queries: count TABLE [where COND] | sum/mean TABLE.COLUMN bounds LO..HI | quantile TABLE.COLUMN
    q Q bounds LO..HI | median TABLE.COLUMN bounds LO..HI | histogram TABLE.COLUMN [bins LO..HI step S
    | over a,b,c]; COND is COLUMN, not COLUMN or COLUMN OP VALUE joined by and. Bounds and
    categories come from the query, never the data. Over budget or epsilon <= 0: refused and audited.

    Example: medlake release "mean gold.ml_patient_features.heart_rate_mean bounds 30..220" --epsilon 0.5 --role ml --lake .medlake/demo/lake
    """
    settings, target, policy, key = _context(lake)
    try:
        parsed = dp.ReleaseQuery.parse(query)
    except dp.QueryError as exc:
        raise _fail(str(exc), code=2) from exc
    principal, role = acting_as(settings, target, policy, key, role, object=parsed.table,
                                fits=table_fits(policy, parsed.table))
    try:
        result = dp.release(target, parsed, epsilon=epsilon, role=role, purpose=purpose,
                            actor=principal.id, audit_key=key, policy=policy)
    except dp.QueryError as exc:
        raise _fail(str(exc), code=2) from exc
    except (dp.ReleaseRefused, AccessDenied) as exc:
        raise _fail(f"refused: {exc} (this attempt was audited)") from exc
    except (TableNotFound, KeyError, audit.AuditLogBroken) as exc:
        raise _fail(str(exc).strip("'\"")) from exc
    if as_json:
        _print_json(result.as_dict())
        return
    value = result.value
    if isinstance(value, dict):
        shown = Table(title=result.query, title_justify="left")
        shown.add_column("bin")
        shown.add_column("noisy count", justify="right")
        for name, count in value.items():
            shown.add_row(escape(name), str(count))
        console.print(shown)
    else:
        console.print(f"{escape(result.query)} = {value if value is not None else 'nothing (no rows matched)'}")
    console.print(
        f"epsilon spent {result.epsilon:g}; {result.role} has spent {result.spent:g} of {result.budget:g} "
        f"on {result.dataset}, remaining {result.remaining:g}"
    )
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/dim]")
