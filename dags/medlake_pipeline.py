"""The medlake pipeline: landing → bronze → staging → (quality gate) → silver → gold → summary.

Triggered by `medlake run --landing DIR --lake DIR [--engine spark]`, which passes them as params. Tasks hand
each other table names and Delta versions through XCom, never data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medlake import assets
from medlake.errors import BadDataError

DEFAULT_ARGS = {"owner": "medlake", "retries": 2, "retry_delay": timedelta(seconds=20)}


def _call(step: Callable[..., dict[str, object]], *args: Any, **kwargs: Any) -> dict[str, object]:
    """Run one stage with this run's id; bad data fails the task at once (a retry cannot fix it)."""
    context = get_current_context()
    try:
        return step(*args, run_id=context["run_id"], **kwargs)
    except BadDataError as exc:
        raise AirflowFailException(str(exc)) from exc


def _params() -> dict[str, str]:
    return get_current_context()["params"]


@dag(
    dag_id="medlake_pipeline",
    schedule=None,
    catchup=False,
    max_active_runs=1,  # curation (clean → gate) is one run at a time per lake: see medlake/pending.py
    tags=["pipeline", "ehr"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "landing": Param(".medlake/demo/landing", type="string", description="Landing folder"),
        "lake": Param(".medlake/demo/lake", type="string", description="Lake root"),
        "engine": Param("", type="string", enum=["", "embedded", "spark"],
                        description="Engine of this run (empty: the MEDLAKE__ENGINE setting)"),
    },
)
def medlake_pipeline() -> None:
    @task(outlets=assets.BRONZE + [assets.QUARANTINE, assets.LEDGER])
    def ingest() -> dict[str, object]:
        from medlake.jobs.pipeline import task_ingest

        return _call(
            task_ingest, _params()["landing"], _params()["lake"], engine=_params().get("engine")
        )

    @task(inlets=assets.BRONZE)
    def clean(ingested: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_clean

        versions: dict[str, int | None] = ingested["versions"]  # type: ignore[assignment]
        return _call(
            task_clean,
            _params()["lake"],
            bronze_version=versions["bronze.fhir_resources"],
            hl7v2_version=versions.get("bronze.hl7v2_messages"),
            versions=versions,
            engine=_params().get("engine"),
        )

    @task(outlets=assets.SILVER + [assets.QUARANTINE])
    def gate(cleaned: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gate

        return _call(task_gate, _params()["lake"], engine=_params().get("engine"))

    @task(inlets=assets.SILVER, outlets=[assets.GOLD_FEATURES])
    def dbt_gold(gated: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gold

        versions = _call(task_gold, _params()["lake"], engine=_params().get("engine"))
        # tells the training DAG, scheduled on this asset, which lake the new gold is in
        get_current_context()["outlet_events"][assets.GOLD_FEATURES].extra = {"lake": str(Path(_params()["lake"]).resolve())}
        return versions

    @task
    def summary(gold: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_summary

        return _call(task_summary, _params()["lake"])

    summary(dbt_gold(gate(clean(ingest()))))


medlake_pipeline()
