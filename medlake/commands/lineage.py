"""`medlake lineage`: what a table was made from and what was made from it, from the OpenLineage events."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from medlake.commands.principal import RoleOpt, acting_as, table_fits
from medlake.config import lake_root, load_settings
from medlake.governance import audit
from medlake.governance.access import Policy, PolicyError
from medlake.governance.lineage import Graph, Link, events_path, lineage_graph
from medlake.keys import KeyMissing, audit_key
from medlake.lake import Lake

app = typer.Typer(help="OpenLineage lineage of the lake's tables.", no_args_is_help=True)

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


@app.command()
def show(
    table: Annotated[str, typer.Argument(help="Table name, e.g. silver.observations.")],
    lake: Annotated[
        Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
    ],
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run", help="Airflow run id (default: the last run that touched the table)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    role: RoleOpt = None,
) -> None:
    """Show a table's upstream and downstream tables, with the Delta versions one run read and wrote.
    For roles granted the ledger (pipeline metadata); audited.

    Example: medlake lineage show silver.observations --lake .medlake/demo/lake
    """
    settings = load_settings(lake=lake)
    try:
        key = audit_key(settings, create=settings.env == "local")
        policy = Policy.load(settings.access.policy_file)
    except (KeyMissing, PolicyError, OSError) as exc:
        err.print(f"[red]cannot check access: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    target = Lake(lake.resolve())
    principal, acting = acting_as(settings, target, policy, key, role, object="lineage",
                                  fits=table_fits(policy, "ledger"))
    if policy.grant_for(acting, "ledger") is None:
        audit.append(target, key=key, actor=principal.id, role=acting, action="access.denied", object="lineage",
                     details={"attempted": "lineage.show", "why": f"role {acting} may not read pipeline metadata"})
        err.print(f"[red]refused: role {escape(acting)} may not read the lineage (this attempt was audited)[/red]")
        raise typer.Exit(1)
    audit.append(target, key=key, actor=principal.id, role=acting, action="access.read", object="lineage",
                 run_id=run_id, details={"attempted": "lineage.show", "table": table})
    graph = lineage_graph(lake.resolve(), table, run_id=run_id)
    if not graph.found:
        run = f" in run {run_id}" if run_id else ""
        err.print(
            f"[red]no lineage recorded for {escape(table)}{escape(run)}[/red] in {events_path(lake)}; run the pipeline first"
        )
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(graph.as_dict(), indent=2) + "\n")
        return
    console.print(_tree(graph))


def _tree(graph: Graph) -> Tree:
    root = Tree(
        f"[bold]{escape(graph.table)}[/bold] {_v(graph.version)}   [dim]run {escape(str(graph.airflow_run_id))}[/dim]"
    )
    for label, links, arrow in (
        ("upstream", graph.upstream, "read by"),
        ("downstream", graph.downstream, "written by"),
    ):
        branch = root.add(f"[bold]{label}[/bold]" + ("" if links else " [dim](none)[/dim]"))
        _add(branch, links, arrow)
    return root


def _add(branch: Tree, links: tuple[Link, ...], arrow: str) -> None:
    for link in links:
        label = f"{escape(link.table)} {_v(link.version)}  [dim]{arrow} {escape(link.job)}[/dim]"
        _add(branch.add(label), link.links, arrow)


def _v(version: int | None) -> str:
    return "" if version is None else f"v{version}"
