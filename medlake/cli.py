"""The medlake command line: thin wrappers over library functions, each with an example."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from medlake import ledger as ledger_mod
from medlake.commands import access, ml, views
from medlake.commands.deid import deid_app
from medlake.commands.governance import audit_app, vault_app
from medlake.commands.identity import identity_app
from medlake.commands.lineage import app as lineage_app
from medlake.commands.principal import RoleOpt, acting_as, table_fits
from medlake.commands.report import report as report_command
from medlake.config import lake_root, load_settings, settings_table
from medlake.governance import audit as audit_mod
from medlake.lake import Lake

app = typer.Typer(
    name="medlake",
    help="medlake: a lakehouse for medical data, run by DAGs. Run `medlake COMMAND --help` for examples.",
    no_args_is_help=True,
    add_completion=False,
)
airflow_app = typer.Typer(help="Local Airflow.", no_args_is_help=True)
app.add_typer(airflow_app, name="airflow")
app.add_typer(lineage_app, name="lineage")
app.add_typer(audit_app, name="audit")
app.add_typer(ml.dataset_app, name="dataset")
app.command("train")(ml.train)
app.add_typer(vault_app, name="vault")
app.add_typer(identity_app, name="identity")
app.add_typer(views.views_app, name="views")
app.add_typer(deid_app, name="deid")
app.command("report")(report_command)
app.command("read")(access.read)
app.command("release")(access.release)

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)

LakeOpt = Annotated[
    Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _print_rows(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if rows and isinstance(rows[0].get(col), int) else "left")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Landing folder to write.")],
    patients: Annotated[int, typer.Option(min=1, help="Number of synthetic patients.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 7,
) -> None:
    """Generate the sample hospital's landing folder (FHIR bundles and bulk ndjson, with real-world mess).

    Example: medlake sample --patients 50 --seed 7 --out /tmp/landing
    """
    from medlake.sample import generate

    manifest = generate(out, patients=patients, seed=seed)
    console.print(f"wrote {manifest.patients} patients (seed {manifest.seed}) to {out}")


@app.command()
def run(
    landing: Annotated[Path, typer.Option(help="Landing folder (fhir/, hl7v2/, csv/, dicom/, vitals/, vcf/).")],
    lake: LakeOpt,
    as_json: JsonOpt = False,
    engine: Annotated[
        str | None,
        typer.Option(help="Engine of this run: embedded or spark (default: MEDLAKE__ENGINE)."),
    ] = None,
    inline: Annotated[
        bool,
        typer.Option("--inline", help="Debug path: run the one-DAG pipeline with `airflow dags test`, no scheduler."),
    ] = False,
) -> None:
    """Run the pipeline through Airflow on a landing folder; exits non-zero if a run failed, the
    ledger does not add up or records are left pending.

    By default the source DAGs (one per landing sub-folder) are triggered through the REST API of
    a local scheduler and API server (started when none is up; `medlake airflow stop` stops
    them) and the curation runs their bronze assets trigger are followed to the end.

    Example: medlake run --landing /tmp/landing --lake /tmp/lake --engine spark
    """
    if engine not in (None, "embedded", "spark"):
        err.print(f"[red]--engine is embedded or spark, not {engine!r}[/red]")
        raise typer.Exit(2)
    from medlake.orchestrator import PipelineFailed, run_pipeline
    from medlake.summary import summarize

    if not landing.is_dir():
        err.print(f"[red]landing folder {landing} does not exist[/red]")
        raise typer.Exit(2)
    settings = load_settings(lake=lake)
    progress = None if as_json else (lambda line: err.print(f"  {line}"))
    try:
        if inline:
            if not as_json:
                err.print(f"running DAG {settings.airflow.pipeline_dag_id} inline (airflow dags test) on {landing} …")
            dag_run = run_pipeline(settings, landing=landing, lake=lake, progress=progress, engine=engine)
            runs = [dag_run]
        else:
            from medlake.scheduler import run_scheduled

            if not as_json:
                where = (f"the Airflow at {settings.airflow.api_url}" if settings.airflow.api_url
                         else "the local Airflow scheduler")
                err.print(f"triggering the source DAGs on {landing} through {where} …")
            scheduled = run_scheduled(settings, landing=landing, lake=lake, progress=progress, engine=engine)
            runs = scheduled.runs
            dag_run = scheduled.curation[-1]
    except PipelineFailed as exc:
        err.print(f"[red]pipeline failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    target = Lake(lake.resolve())
    summary = summarize(target, run_id=dag_run.run_id if ledger_mod.for_run(target, dag_run.run_id) else None)
    summary["dag_run"] = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "state": dag_run.state}
    summary["dag_runs"] = [r.__dict__ for r in runs]
    # every run this command set off adds up, not only the one summarized
    summary["ledger_balanced"] = summary["ledger_balanced"] and all(
        bool(e["balanced"]) for r in runs for e in ledger_mod.for_run(target, r.run_id)
    )
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary)
    if not summary["ledger_balanced"] or summary["pending"]:
        raise typer.Exit(1)


STAGES = ("ingest", "clean", "gate", "gold", "summary")


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(STAGES)}.")],
    lake: LakeOpt,
    run_id: Annotated[str, typer.Option("--run-id", help="The pipeline run this stage belongs to.")],
    landing: Annotated[Path | None, typer.Option(help="Landing folder (ingest only).")] = None,
    engine: Annotated[str | None, typer.Option(help="embedded or spark (default: MEDLAKE__ENGINE).")] = None,
) -> None:
    """Run one pipeline stage outside Airflow, under a run id (what a DAG task calls): to redo a
    stage by hand, or retry one after a crash. Stages are idempotent under one run id.

    Example: medlake stage clean --lake /tmp/lake --run-id manual__2026-12-07
    """
    import logging


    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if name not in STAGES:
        err.print(f"[red]stage is one of {', '.join(STAGES)}, not {name!r}[/red]")
        raise typer.Exit(2)
    if name == "ingest" and landing is None:
        err.print("[red]ingest needs --landing[/red]")
        raise typer.Exit(2)
    from medlake.orchestrator import held, lake_lock

    with held(lake_lock(lake), waiting=err.print):  # never beside a `medlake run` on this lake
        out = _stage(name, lake, run_id=run_id, landing=landing, engine=engine)
    _print_json(out)


def _stage(name: str, lake: Path, *, run_id: str, landing: Path | None, engine: str | None) -> dict[str, object]:
    from medlake.jobs import pipeline

    root = str(lake.resolve())
    out: dict[str, object]
    if name == "ingest":
        assert landing is not None
        out = pipeline.task_ingest(str(landing.resolve()), root, run_id=run_id, engine=engine)
    elif name == "clean":
        versions = {t: Lake(lake.resolve()).version(t) for t in Lake(lake.resolve()).tables() if t.startswith("bronze.")}
        out = pipeline.task_clean(
            root,
            run_id=run_id,
            bronze_version=versions.get("bronze.fhir_resources"),
            hl7v2_version=versions.get("bronze.hl7v2_messages"),
            versions=versions,
            engine=engine,
        )
    elif name == "gate":
        out = pipeline.task_gate(root, run_id=run_id, engine=engine)
    elif name == "gold":
        out = pipeline.task_gold(root, run_id=run_id, engine=engine)
    else:
        out = pipeline.task_summary(root, run_id=run_id, actor="medlake stage")
    return out


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's landing/ and lake/.")] = Path(".medlake/demo"),
    patients: Annotated[int, typer.Option(min=1, help="Number of synthetic patients.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Generate the sample hospital, run the whole pipeline on it through Airflow, then publish the
    gold features as a versioned dataset and train an MLflow-tracked model on it.

    Example: medlake demo --out .medlake/demo --patients 500
    """
    import shutil

    landing, lake = out / "landing", out / "lake"
    shutil.rmtree(landing, ignore_errors=True)
    shutil.rmtree(lake, ignore_errors=True)  # a demo starts from an empty lake
    sample(out=landing, patients=patients, seed=seed)
    run(landing=landing, lake=lake, as_json=False, inline=True)  # one process, no services left running
    report_command(lake=lake, run_id=None, out=None, as_json=False, record=None, landing=None, role=None)
    _demo_training(lake)
    console.print(
        f"\nNext: open the compliance report above in a browser; `medlake tables --lake {lake}`, "
        f"`medlake quarantine --lake {lake}`, `medlake ledger --lake {lake}`, "
        f"`medlake report --lake {lake} --record <file>:<offset>`; Airflow UI: `make airflow`."
    )


@app.command()
def tables(lake: LakeOpt, as_json: JsonOpt = False) -> None:
    """List the lake's Delta tables with their version and row count.

    Example: medlake tables --lake .medlake/demo/lake --json
    """
    from medlake.summary import tables as list_tables

    rows = list_tables(Lake(lake.resolve()))
    if as_json:
        _print_json(rows)
    else:
        _print_rows(f"tables in {lake}", rows, ["table", "version", "rows"])


@app.command()
def ledger(
    lake: LakeOpt,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the ledger of a run: per stage and table, records in = out + quarantined + merged + bronze_only.

    Example: medlake ledger --lake .medlake/demo/lake --run manual__2026-11-24T10:00:00+00:00 --json
    """
    target = Lake(lake.resolve())
    run_id = run_id or next(reversed(ledger_mod.runs(target)), None)
    rows = ledger_mod.for_run(target, run_id) if run_id else []
    if as_json:
        _print_json({"run_id": run_id, "entries": rows, "balanced": all(r["balanced"] for r in rows)})
        return
    _print_rows(
        f"ledger of run {run_id}",
        rows,
        ["stage", "table_name", "records_in", "records_out", "quarantined", "merged", "bronze_only", "balanced"],
    )


quarantine_app = typer.Typer(
    help="The quarantine: list what was refused and why; resolve records as a data steward.",
    invoke_without_command=True,
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.callback()
def quarantine(
    ctx: typer.Context,
    lake: Annotated[
        Path | None,
        typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root),
    ] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule id, e.g. parse.bad_json.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status: open, accepted, corrected, rejected, released.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show in the person-readable listing.")] = 50,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List quarantined records with their rule id and the reason in words (same as `quarantine list`).

    Example: medlake quarantine --lake .medlake/demo/lake --rule validate.fhir_r4 --json
    """
    if ctx.invoked_subcommand is not None:
        return
    if lake is None:
        err.print("--lake is required")
        raise typer.Exit(2)
    quarantine_list(lake=lake, rule=rule, run_id=run_id, status=status, limit=limit, role=role, as_json=as_json)


@quarantine_app.command("list")
def quarantine_list(
    lake: LakeOpt,
    rule: Annotated[str | None, typer.Option(help="Only this rule id, e.g. parse.bad_json.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status: open, accepted, corrected, rejected, released.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show in the person-readable listing.")] = 50,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List quarantined records with their rule id, reason and status, as one of your roles (audited).

    Files are shown by keyed reference (file:1a2b3c4d5e), never by name; the raw record stays
    encrypted in the table.

    Example: medlake quarantine list --lake .medlake/demo/lake --rule gate.heart_rate_range
    """
    from medlake.governance.access import AccessDenied, authorize
    from medlake.governance.at_rest import lake_for
    from medlake.governance.pseudonyms import file_reference, scrub_file_names
    from medlake.keys import project_key
    from medlake.registry import QUARANTINE

    settings, policy, key = _governed(lake)
    target = lake_for(settings, lake.resolve())  # file names are encrypted at rest
    principal, acting = acting_as(settings, target, policy, key, role, object=QUARANTINE.name,
                                  fits=table_fits(policy, QUARANTINE.name))
    purpose = "quality_improvement"
    try:
        grant = authorize(policy, role=acting, table=QUARANTINE.name, columns=None, purpose=purpose)
    except AccessDenied as exc:
        audit_mod.append(target, key=key, actor=principal.id, role=acting, action="access.denied",
                         object=QUARANTINE.name, purpose=purpose, details={"attempted": "quarantine.list", "why": exc.why})
        err.print(f"[red]refused: {exc} (this attempt was audited)[/red]")
        raise typer.Exit(1) from exc
    phi = policy.phi_of(QUARANTINE.name)
    columns = ["quarantine_id", "run_id", "stage", "table_name", "rule_id", "reason", "source_file",
               "source_offset", "record_id", "status", "quarantined_at", "resolution", "resolution_reason",
               "resolved_by", "resolved_at", "corrected_value", "released_run_id"]
    rows = target.read(QUARANTINE.name, columns=columns).to_pylist()
    rows = [r for r in rows if (rule is None or r["rule_id"] == rule) and (run_id is None or r["run_id"] == run_id)
            and (status is None or r["status"] == status)]
    rows.sort(key=lambda r: (r["stage"], r["rule_id"], r["source_file"] or "", r["source_offset"] or 0))
    reference_key = project_key(settings)
    shown = []
    for r in rows:
        ref = file_reference(reference_key, r["source_file"]) if r["source_file"] else None
        row = {c: v for c, v in r.items() if c != "source_file" and grant.allows_column(c, phi=phi)}
        if row.get("reason") and r["source_file"]:  # rows written before reasons were scrubbed on write
            row["reason"] = scrub_file_names(reference_key, row["reason"], [r["source_file"]])
        shown.append({**row, "file": ref})  # never the name, whatever the grant: it may embed a patient's
    audit_mod.append(target, key=key, actor=principal.id, role=acting, action="access.read", object=QUARANTINE.name,
                     purpose=purpose, details={"attempted": "quarantine.list", "rows": len(shown), "rule": rule,
                                               "run_id": run_id, "status": status})
    if as_json:
        _print_json(shown)
    else:
        listed = [c for c in ("quarantine_id", "rule_id", "status", "file", "reason") if not shown or c in shown[0]]
        _print_rows(f"{len(shown)} quarantined record(s)", shown[:limit], listed)


@quarantine_app.command("resolve")
def quarantine_resolve(
    ids: Annotated[list[str], typer.Argument(help="Quarantine ids (from `medlake quarantine list`).")],
    lake: LakeOpt,
    action: Annotated[str, typer.Option(help="accept (the value is real), correct (with --value) or reject.")],
    reason: Annotated[str, typer.Option(help="Why: recorded with the decision and in the audit log.")],
    value: Annotated[float | None, typer.Option(help="The corrected value, with --action correct.")] = None,
    role: RoleOpt = None,
) -> None:
    """Resolve quarantined records as a data steward (a role with every column of the quarantine);
    accepted and corrected ones re-enter silver at the next run. Audited under your principal.

    Example: medlake quarantine resolve 3f2a9c… --action accept --reason "confirmed with the lab: real value" --lake .medlake/demo/lake
    """
    from medlake.governance.at_rest import lake_for
    from medlake.jobs.review import ResolutionRefused, resolve
    from medlake.registry import QUARANTINE

    settings, policy, key = _governed(lake)
    target = lake_for(settings, lake.resolve())

    def steward(r: str) -> bool:  # resolving rewrites whole rows: it needs every column
        grant = policy.grant_for(r, QUARANTINE.name)
        return grant is not None and grant.mode == "all" and not grant.withheld and not grant.via

    principal, acting = acting_as(settings, target, policy, key, role, object=QUARANTINE.name, fits=steward)
    if not steward(acting):
        audit_mod.append(target, key=key, actor=principal.id, role=acting, action="access.denied",
                         object=QUARANTINE.name, details={"attempted": "quarantine.resolve",
                                                          "why": f"role {acting} may not resolve quarantined records"})
        err.print(f"[red]refused: role {acting!r} may not resolve quarantined records (this attempt was audited)[/red]")
        raise typer.Exit(1)
    try:
        done = resolve(target, ids, action=action, reason=reason, value=value, actor=principal.id, role=acting,
                       audit_key=key)
    except ResolutionRefused as exc:
        err.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"{len(done.quarantine_ids)} record(s) {done.status}; audited. "
                  + ("They re-enter silver at the next run." if done.action != "reject" else ""))


def _governed(lake: Path) -> tuple[Any, Any, bytes]:
    """Settings, access policy and audit key, or exit 2 naming what is missing."""
    from medlake.governance.access import Policy, PolicyError
    from medlake.keys import KeyMissing, audit_key

    settings = load_settings(lake=lake)
    try:
        return settings, Policy.load(settings.access.policy_file), audit_key(settings, create=settings.env == "local")
    except (KeyMissing, PolicyError, OSError) as exc:
        err.print(f"[red]cannot check access: {exc}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def summary(lake: LakeOpt, run_id: Annotated[str | None, typer.Option("--run")] = None, as_json: JsonOpt = False) -> None:
    """Summarize a run: tables, quarantine by reason, the ledger check.

    Example: medlake summary --lake .medlake/demo/lake
    """
    from medlake.summary import summarize

    data = summarize(Lake(lake.resolve()), run_id=run_id)
    _print_json(data) if as_json else _print_summary(data)


@app.command()
def whoami(as_json: JsonOpt = False) -> None:
    """Show who you are to medlake: your principal, its groups and the roles the access policy gives it.

    Example: medlake whoami --json
    """
    from medlake.commands.principal import current_principal, held_roles
    from medlake.governance.access import Policy

    settings = load_settings()
    principal = current_principal(settings)
    roles = held_roles(settings, Policy.load(settings.access.policy_file), principal)
    data = {"principal": principal.id, "groups": list(principal.groups), "service_principal": principal.is_service,
            "env": settings.env, "roles": list(roles)}
    if as_json:
        _print_json(data)
    else:
        console.print(f"{principal.id} (groups: {', '.join(principal.groups) or 'none'}) holds "
                      f"{', '.join(roles) or 'no role'}" + (" as the local service principal" if principal.is_service else ""))


@app.command()
def config(as_json: JsonOpt = False) -> None:
    """List every setting: its environment variable, default and meaning.

    Example: MEDLAKE__LAKE__ROOT=/data/lake medlake config
    """
    rows = [{"setting": n, "default": d, "meaning": m} for n, d, m in settings_table()]
    _print_json(rows) if as_json else _print_rows("settings", rows, ["setting", "default", "meaning"])


@airflow_app.command("standalone")
def airflow_standalone() -> None:
    """Start Airflow locally (UI, scheduler) with medlake's DAGs.

    Example: medlake airflow standalone   # then open http://localhost:8080
    """
    from medlake.orchestrator import standalone

    raise typer.Exit(standalone(load_settings()))


@airflow_app.command("stop")
def airflow_stop() -> None:
    """Stop the local Airflow (scheduler, DAG processor, API server) `medlake run` started.

    Example: medlake airflow stop
    """
    from medlake.scheduler import stop

    stopped = stop(load_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no local Airflow was running")


@airflow_app.command("runs")
def airflow_runs(as_json: JsonOpt = False) -> None:
    """List the pipeline's DAG runs recorded in Airflow's metadata DB.

    Example: medlake airflow runs --json
    """
    from medlake.orchestrator import list_runs

    rows = [r.__dict__ for r in list_runs(load_settings())]
    _print_json(rows) if as_json else _print_rows("DAG runs", rows, ["dag_id", "run_id", "state"])


@airflow_app.command("dags")
def airflow_dags(as_json: JsonOpt = False) -> None:
    """List the DAGs: schedule, tags, max active runs, and the assets (Delta tables) each consumes,
    reads and produces.

    Example: medlake airflow dags --json
    """
    from medlake.orchestrator import list_dags

    rows = list_dags(load_settings())
    if as_json:
        _print_json(rows)
        return
    shown = [
        {**r, "tags": ", ".join(r["tags"]), "consumes": ", ".join(r["consumes"]) or "-",  # type: ignore[arg-type]
         "produces": ", ".join(r["produces"]) or "-"}  # type: ignore[arg-type]
        for r in rows
    ]
    _print_rows("DAGs", shown, ["dag_id", "schedule", "tags", "max_active_runs", "consumes", "produces"])


def _demo_training(lake: Path) -> None:
    """Publish gold.ml_patient_features as the next dataset version and train on it."""
    from medlake.commands.ml import privacy_line
    from medlake.training import datasets
    from medlake.training.train import TooFewLabels
    from medlake.training.train import train as run_training

    try:  # k-anonymity (k=5) over the quasi-identifiers, by generalization and suppression
        manifest = datasets.publish(Lake(lake.resolve()), "gold.ml_patient_features", name="patient_features")
    except datasets.PublishRefused as exc:
        console.print(f"dataset not published: {exc}")
        return
    console.rule(f"dataset {manifest.ref}")
    console.print(f"{manifest.row_count} rows, Delta version {manifest.delta_version}, content hash {manifest.content_hash[:16]}…")
    if manifest.k_anonymity:
        console.print(privacy_line(manifest.k_anonymity))
    try:
        result = run_training(Lake(lake.resolve()), manifest.ref, tracking_uri=load_settings().mlflow.tracking_uri)
    except TooFewLabels as exc:
        console.print(f"training skipped: {exc}")
        return
    shown = {k: round(v, 3) for k, v in result.metrics.items() if k in
             ("roc_auc", "pr_auc", "sensitivity", "specificity", "brier", "ppv", "npv", "cv_roc_auc_mean")}
    console.print(f"MLflow run {result.run_id}, model {result.model_name} v{result.model_version}: {shown}")


def _print_summary(data: dict[str, Any]) -> None:
    console.rule(f"medlake run {data['run_id']}")
    _print_rows("tables", data["tables"], ["table", "version", "rows"])
    if data["quarantine"]:
        _print_rows("quarantined this run, by reason", data["quarantine"], ["stage", "table", "rule_id", "count"])
    else:
        console.print("nothing quarantined this run")
    _print_rows(
        "ledger (in = out + quarantined + merged + bronze_only)",
        data["ledger"],
        ["stage", "table_name", "records_in", "records_out", "quarantined", "merged", "bronze_only", "balanced"],
    )
    verdict = "[green]adds up[/green]" if data["ledger_balanced"] else "[red]DOES NOT ADD UP[/red]"
    console.print(f"ledger check: {verdict}")
    for finding in data.get("volume_warnings", []):
        console.print(
            f"[yellow]delivery volume[/yellow]: {finding['table']} from {finding['source']}: {finding['rows']} rows, "
            f"{finding['verdict']} (band {finding['low']:.0f}–{finding['high']:.0f}, {finding['basis']})"
        )
    waiting = {t: n for t, n in data.get("pending", {}).items() if n}
    if waiting:
        shown = ", ".join(f"{t} {n}" for t, n in waiting.items())
        console.print(f"[yellow]pending[/yellow] (in bronze, not yet curated; the next run takes them): {shown}")
    else:
        console.print("pending: none (every bronze record is curated, quarantined, merged or bronze-only)")
    console.print(f"outputs: lake at {data['lake']} (bronze/, silver/, gold/, quarantine/, ledger/)")
    console.print(
        f"compliance report (HTML + JSON): `medlake report --lake {data['lake']} --run {data['run_id']}` "
        "writes <lake>/_runs/<run>.report.html"
    )


def main() -> None:
    """The `medlake` console script: the Typer app, then a hard exit.

    deltalake 1.6 can abort the interpreter during shutdown ("terminate called without an active
    exception", exit -6) after a command finished cleanly; seen rarely after reading several Delta
    tables. The command's work is committed by then, so the CLI flushes its output and leaves
    without running interpreter teardown, keeping the exit code the command chose.
    """
    import os

    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
