"""Curation: bronze batches → staging (clean, entity resolution) → silver (gate) → gold (dbt) →
the run summary. Scheduled on the bronze assets the source DAGs produce; one run at a time per
deployment (max_active_runs=1), so a batch is curated once (medlake/pending.py).

An asset-triggered run reads exactly the bronze versions its triggering events name
(`extra["version"]`): the pending batches in those tables at those versions — the trigger's, and
any a killed run left before them — and records the versions in its clean stage's lineage and
XCom. A batch a source run commits later waits for the run its own event triggers. A run
triggered by hand (no events) takes every pending batch at the tables' current versions.

The lake is the triggering asset events' `extra["lake"]`, else the `lake` param; events that name
no lake (the one-DAG pipeline's, which curates its own batches) make a run that skips.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from medlake import assets, sources
from medlake.config import Settings
from medlake.errors import BadDataError

DEFAULT_ARGS = {"owner": "medlake", "retries": Settings().airflow.retries, "retry_delay": timedelta(seconds=20)}


def _lake() -> str:  # the lake the triggering bronze updates name, else the `lake` param
    context = get_current_context()
    lakes = sorted({e.extra["lake"] for events in context.get("triggering_asset_events", {}).values()
                    for e in events if e.extra.get("lake")})
    if len(lakes) > 1:
        raise AirflowFailException(f"one curation run per lake; triggered by {lakes}")
    if context.get("triggering_asset_events") and not lakes:
        raise AirflowSkipException("triggered by bronze updates naming no lake (the one-DAG pipeline's)")
    return str(lakes[0] if lakes else context["params"]["lake"])


def _engine() -> str | None:  # the `engine` param, else the one the triggering source runs ran on
    ctx = get_current_context()
    return ctx["params"].get("engine") or sources.trigger_engine(ctx.get("triggering_asset_events") or {})


def _call(step: Callable[..., dict[str, object]], **kwargs: Any) -> dict[str, object]:
    """One stage on the lake under this run's id; bad data fails at once."""
    try:
        return step(_lake(), run_id=get_current_context()["run_id"], **kwargs)
    except BadDataError as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="medlake_curation",
    schedule=assets.any_of(assets.BATCHED),
    catchup=False,
    max_active_runs=1,
    tags=["curation", "silver", "gold"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={"lake": Param(".medlake/demo/lake", type="string", description="Lake root"),
            "engine": Param("", type="string", enum=["", "embedded", "spark"])},
)
def medlake_curation() -> None:
    @task(inlets=assets.BRONZE, outlets=[*assets.STAGING, assets.QUARANTINE, assets.LEDGER])
    def clean() -> dict[str, object]:
        from medlake.jobs.pipeline import task_clean

        context = get_current_context()
        events = context.get("triggering_asset_events") or {}
        trigger = sources.trigger_versions(events, _lake()) or None  # none named: all pending
        if trigger is not None and not sources.pending_at(_lake(), trigger):
            raise AirflowSkipException(f"the bronze versions this run's events name are curated: {trigger}")
        return _call(task_clean, bronze_version=None, engine=_engine(), trigger=trigger)

    @task(inlets=assets.STAGING, outlets=[*assets.SILVER, assets.QUARANTINE, assets.LEDGER])
    def gate(cleaned: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gate
        return _call(task_gate, engine=_engine())

    @task(inlets=assets.SILVER, outlets=assets.GOLD)
    def dbt_gold(gated: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gold

        versions = _call(task_gold, engine=_engine())
        # the training DAG, scheduled on the features asset, reads which lake from here
        get_current_context()["outlet_events"][assets.GOLD_FEATURES].extra = {"lake": _lake()}
        return versions

    @task(inlets=[assets.LEDGER, assets.QUARANTINE])
    def summary(gold: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_summary
        return _call(task_summary)

    summary(dbt_gold(gate(clean())))


medlake_curation()
