"""`medlake dataset ...` and `medlake train`: versioned datasets for the ML team, and training on them.

Registered in ``medlake.cli``: ``app.add_typer(ml.dataset_app, name="dataset")`` and
``app.command("train")(ml.train)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medlake.config import lake_root, load_settings
from medlake.errors import BadDataError
from medlake.lake import Lake

if TYPE_CHECKING:
    from medlake.training.datasets import Manifest

dataset_app = typer.Typer(
    help="Versioned datasets: a gold table pinned at a Delta version, with a manifest.",
    no_args_is_help=True,
)

console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

LakeOpt = Annotated[
    Path, typer.Option("--lake", help="Lake root: a folder or s3://bucket/prefix.", parser=lake_root)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
RoleOpt = Annotated[
    str | None,
    typer.Option("--role", help="Act as this one of your roles (ml, data_engineer, compliance); default: the first that may."),
]
PurposeOpt = Annotated[
    str | None,
    typer.Option("--purpose", help="Purpose of use, checked against the grant and audited."),
]


def _smallest_class(k: dict[str, Any]) -> str:
    """e.g. '3 (k=5: 2 classes below, over age_band, gender)'."""
    over = ", ".join(k["quasi_identifiers"]) or "no quasi-identifier"
    return f"{k['smallest_class']} (k={k['k']}: {k['classes_below_k']} classes below, over {over})"


def _acting(lake: Path, requested: str | None, *, need: str) -> tuple[str, str]:
    """(principal id, role) of whoever runs the command; ``need``: ``datasets`` (a role that may
    pull), ``publish`` (a role that reads the gold tables and the dataset register) or a role name."""
    from medlake.commands.principal import acting_as
    from medlake.governance.access import Policy
    from medlake.keys import audit_key

    settings = load_settings(lake=lake)
    policy = Policy.load(settings.access.policy_file)
    key = audit_key(settings, create=settings.env == "local")

    def fits(role: str) -> bool:
        if need == "datasets":
            return role in policy.dataset_grants
        if need == "publish":
            return policy.grant_for(role, "datasets") is not None and policy.grant_for(role, "gold.x") is not None
        return role == need

    principal, role = acting_as(settings, Lake(lake.resolve()), policy, key, requested, object="datasets", fits=fits)
    if not fits(role):
        audit_refusal = f"role {role} may not do this ({need})"
        from medlake.governance import audit

        audit.append(Lake(lake.resolve()), key=key, actor=principal.id, role=role, action="access.denied",
                     object="datasets", details={"attempted": need, "why": audit_refusal})
        err.print(f"[red]refused: {escape(audit_refusal)} (this attempt was audited)[/red]")
        raise typer.Exit(3)
    return principal.id, role


def _pull_audit(actor: str, purpose: str | None) -> Any:
    """Every pull from the CLI is audited: who, as which role, for what purpose."""
    from medlake.keys import audit_key
    from medlake.training.datasets import PullAudit

    return PullAudit(key=audit_key(load_settings()), actor=actor, purpose=purpose)


class PullFormat(str, Enum):
    parquet = "parquet"
    arrow = "arrow"
    pandas = "pandas"


class DeidLevel(str, Enum):
    safe_harbor = "safe_harbor"
    expert_determination = "expert_determination"
    limited_data_set = "limited_data_set"
    identified = "identified"


@dataset_app.command("publish")
def publish(
    table: Annotated[
        str, typer.Argument(help="Gold table, e.g. ml_patient_features (or layer.table).")
    ],
    name: Annotated[str, typer.Option("--name", help="Dataset name, e.g. patient_features.")],
    lake: LakeOpt,
    deid_level: Annotated[
        DeidLevel, typer.Option("--deid-level", help="De-identification level of the rows.")
    ] = DeidLevel.safe_harbor,
    run_ids: Annotated[
        list[str] | None,
        typer.Option("--lineage-run-id", help="Extra run id to record (repeatable)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="k-anonymity the release must meet (1: no constraint).")] = 5,
    l_diversity: Annotated[
        int | None, typer.Option("--l", min=1, help="l-diversity of --sensitive within each class.")
    ] = None,
    sensitive: Annotated[str | None, typer.Option("--sensitive", help="Sensitive column for --l.")] = None,
    quasi: Annotated[
        list[str] | None,
        typer.Option("--quasi", help="Quasi-identifier column (repeatable; default: age_band, gender, zip3 present)."),
    ] = None,
    max_suppression: Annotated[
        float, typer.Option("--max-suppression", min=0.0, max=0.99, help="Largest share of records that may be suppressed.")
    ] = 0.1,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Release a table's current Delta version as the next version of a named dataset, meeting its
    privacy model: quasi-identifiers generalized along their hierarchies (age bands, ZIP3 → state,
    dates → month → year) and what remains below k suppressed, or refused with the reason (exit 1).

    Example: medlake dataset publish ml_patient_features --name patient_features --k 5 --l 2 --sensitive has_diabetes --lake .medlake/demo/lake
    """
    from medlake.governance.release import PrivacyModel
    from medlake.training import datasets

    _acting(lake, role, need="publish")
    try:
        model = PrivacyModel(k=k, l_diversity=l_diversity, sensitive=sensitive, max_suppression=max_suppression)
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc

    with _errors():
        m = datasets.publish(
            Lake(lake.resolve()),
            table,
            name=name,
            deid_level=deid_level.value,
            lineage_run_ids=run_ids or (),
            privacy=model,
            quasi_identifiers=quasi or None,
        )
    if as_json:
        _print_json(m.as_dict())
        return
    console.print(
        f"published [bold]{escape(m.ref)}[/bold]: {m.table} at Delta version {m.delta_version}, "
        f"{m.row_count} rows, content hash {m.content_hash[:16]}..."
    )
    if m.k_anonymity:
        console.print(privacy_line(m.k_anonymity))


def privacy_line(k: dict[str, Any]) -> str:
    """e.g. 'k=5 met: smallest class 7 over age_band, gender; generalized age_band to 10-year band; 3 suppressed; loss 0.12'."""
    over = ", ".join(k.get("quasi_identifiers") or []) or "no quasi-identifier"
    if not k.get("meets_model"):
        return f"no privacy model applied: smallest class {k.get('smallest_class')} over {over}"
    applied = [f"{c} to {h['applied']}" for c, h in (k.get("hierarchies") or {}).items() if h["applied"] != h["levels"][0]]
    return (
        f"k={k['k']} met: smallest class {k['smallest_class']} over {over}; "
        f"{'generalized ' + ', '.join(applied) if applied else 'nothing generalized'}; "
        f"{k['records_suppressed']} of {k['records_in']} record(s) suppressed; information loss {k['information_loss']}"
    )


@dataset_app.command("list")
def list_(
    lake: LakeOpt,
    name: Annotated[str | None, typer.Option("--name", help="Only this dataset.")] = None,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List published dataset versions with the table and Delta version each pins.

    Example: medlake dataset list --lake .medlake/demo/lake --json
    """
    from medlake.training import datasets

    _acting(lake, role, need="datasets")

    manifests = datasets.list_datasets(Lake(lake.resolve()), name)
    if as_json:
        _print_json([m.as_dict() for m in manifests])
        return
    table = Table(title=f"{len(manifests)} dataset version(s)", title_justify="left")
    for column in (
        "dataset", "table", "delta version", "rows", "de-id", "smallest class", "content hash", "created"
    ):
        table.add_column(column)
    for m in manifests:
        table.add_row(
            m.ref,
            m.table,
            str(m.delta_version),
            str(m.row_count),
            m.deid_level,
            "" if m.k_anonymity is None else _smallest_class(m.k_anonymity),
            m.content_hash[:16],
            m.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@dataset_app.command("pull")
def pull(
    ref: Annotated[
        str, typer.Argument(help="name@version, e.g. patient_features@3 (or name@latest).")
    ],
    lake: LakeOpt,
    role: RoleOpt = None,
    to: Annotated[
        PullFormat,
        typer.Option(
            "--to", help="parquet or arrow: write a file; pandas: print a preview of the rows."
        ),
    ] = PullFormat.parquet,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="File to write (default: ./<name>_v<version>.<parquet|arrow>).",
            dir_okay=False,
        ),
    ] = None,
    purpose: PurposeOpt = None,
) -> None:
    """Pull exactly the rows of a dataset version (time travel), checked against its content hash.

    Example: medlake dataset pull patient_features@3 --to parquet --out features.parquet --role ml --lake .medlake/demo/lake
    """
    import pyarrow as pa
    from pyarrow import feather

    from medlake.training import datasets

    target = Lake(lake.resolve())
    actor, role = _acting(lake, role, need="datasets")
    with _errors():
        m = datasets.manifest(target, ref)
        audit = _pull_audit(actor, purpose)
        if to is PullFormat.parquet:
            path = datasets.pull(
                target,
                m.ref,
                role=role,
                to="parquet",
                out=out or _default_out(m, "parquet"),
                audit=audit,
            )
            console.print(
                f"wrote {m.row_count} rows of {escape(m.ref)} to {path} (content hash verified)"
            )
            return
        rows = datasets.pull(target, m.ref, role=role, to="arrow", audit=audit)
    assert isinstance(rows, pa.Table)
    if to is PullFormat.arrow:
        path = out or _default_out(m, "arrow")
        feather.write_feather(rows, path, compression="uncompressed")
        console.print(
            f"wrote {rows.num_rows} rows of {escape(m.ref)} to {path} (Arrow IPC, content hash verified)"
        )
        return
    frame = rows.to_pandas()
    console.print(
        f"{escape(m.ref)}: {frame.shape[0]} rows x {frame.shape[1]} columns (content hash verified)"
    )
    console.print(frame.head(10).to_string())


@dataset_app.command("diff")
def diff(
    a: Annotated[str, typer.Argument(help="Reference version, e.g. patient_features@1.")],
    b: Annotated[str, typer.Argument(help="Version to compare, e.g. patient_features@2.")],
    lake: LakeOpt,
    role: RoleOpt = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Label column (default: has_diabetes if present).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two dataset versions: rows, added/removed columns, per-feature PSI, label prevalence.

    Example: medlake dataset diff patient_features@1 patient_features@2 --lake .medlake/demo/lake
    """
    from medlake.training.drift import diff as drift_diff

    _actor, role = _acting(lake, role, need="datasets")
    with _errors():
        report = drift_diff(Lake(lake.resolve()), a, b, role=role, label=label)
    if as_json:
        _print_json(report.as_dict())
        return
    console.print(
        f"[bold]{escape(report.a)} → {escape(report.b)}[/bold]: rows {report.rows_a} → {report.rows_b}"
    )
    if report.label:
        console.print(
            f"label {report.label}: prevalence {_pct(report.prevalence_a)} → {_pct(report.prevalence_b)}"
        )
    for what, columns in (("added", report.added_columns), ("removed", report.removed_columns)):
        if columns:
            console.print(f"{what} columns: {', '.join(columns)}")
    for column, type_a, type_b in report.type_changes:
        console.print(f"type changed: {column} {type_a} → {type_b}")
    table = Table(title="feature shift (PSI, A as reference)", title_justify="left")
    for column in ("feature", "kind", "PSI", "shift", "missing A", "missing B", "mean A", "mean B"):
        table.add_column(column)
    for f in report.features:
        table.add_row(
            f.column,
            f.kind,
            f"{f.psi:.3f}",
            f.level,
            _pct(f.missing_a),
            _pct(f.missing_b),
            "" if f.mean_a is None else f"{f.mean_a:.3g}",
            "" if f.mean_b is None else f"{f.mean_b:.3g}",
        )
    console.print(table)


def train(
    lake: LakeOpt,
    dataset: Annotated[
        str, typer.Option("--dataset", help="name@version to train on, e.g. patient_features@1.")
    ],
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (default: sqlite:///$MEDLAKE_HOME/mlflow/mlflow.db).",
        ),
    ] = None,
    label: Annotated[
        str, typer.Option("--label", help="Boolean column to predict.")
    ] = "has_diabetes",
    seed: Annotated[int, typer.Option("--seed", help="Random seed of splits and model.")] = 0,
    optuna_trials: Annotated[
        int,
        typer.Option(
            "--optuna-trials", min=0, help="Tune hyperparameters with Optuna first (0: off)."
        ),
    ] = 0,
    target_sensitivity: Annotated[
        float | None,
        typer.Option(
            "--target-sensitivity",
            min=0.01,
            max=1.0,
            help="Threshold reaching this sensitivity (default: Youden's J).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and register a model on a dataset version; print the MLflow run id and metrics.

    Example: medlake train --lake .medlake/demo/lake --dataset patient_features@1
    """
    from medlake.training.train import train as run_training

    uri = tracking_uri or load_settings().mlflow.tracking_uri
    actor, _role = _acting(lake, None, need="ml")
    with _errors():
        result = run_training(
            Lake(lake.resolve()),
            dataset,
            tracking_uri=uri,
            label=label,
            seed=seed,
            optuna_trials=optuna_trials,
            target_sensitivity=target_sensitivity,
            audit=_pull_audit(actor, "research"),
        )
    if as_json:
        _print_json(
            {
                "run_id": result.run_id,
                "dataset": result.dataset,
                "tracking_uri": uri,
                "model": result.model_name,
                "model_version": result.model_version,
                "metrics": result.metrics,
            }
        )
        return
    console.print(f"MLflow run [bold]{result.run_id}[/bold] ({uri})")
    console.print(f"registered model {escape(result.model_name)} version {result.model_version}")
    table = Table(title=f"{label} on {result.dataset}, test fold", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4g}")
    console.print(table)


def _default_out(m: Manifest, suffix: str) -> Path:
    return Path(f"{m.name}_v{m.version}.{suffix}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _errors() -> Iterator[None]:
    """Bad data (a dataset error, too few labels) becomes one red line and exit code 1; a refused pull exits 3."""
    from medlake.training.datasets import PullRefused

    try:
        yield
    except PullRefused as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(3) from exc
    except (BadDataError, ValueError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from exc
