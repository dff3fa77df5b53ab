"""The medlake pipeline: landing → bronze → staging → (quality gate) → silver → gold → summary.

Triggered by `medlake run --landing DIR --lake DIR`, which passes both as params. Tasks hand
each other table names and Delta versions through XCom, never data.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from medlake import assets

DEFAULT_ARGS = {"owner": "medlake", "retries": 2, "retry_delay": timedelta(seconds=20)}


def _run() -> tuple[dict[str, str], str]:
    context = get_current_context()
    return context["params"], context["run_id"]


@dag(
    dag_id="medlake_pipeline",
    schedule=None,
    catchup=False,
    tags=["pipeline", "ehr"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "landing": Param(".medlake/demo/landing", type="string", description="Landing folder"),
        "lake": Param(".medlake/demo/lake", type="string", description="Lake root"),
    },
)
def medlake_pipeline() -> None:
    @task(outlets=assets.BRONZE + [assets.QUARANTINE, assets.LEDGER])
    def ingest() -> dict[str, object]:
        from medlake.jobs.pipeline import task_ingest

        params, run_id = _run()
        return task_ingest(params["landing"], params["lake"], run_id=run_id)

    @task(inlets=assets.BRONZE)
    def clean(ingested: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_clean

        params, run_id = _run()
        bronze_version = ingested["versions"]["bronze.fhir_resources"]  # type: ignore[index]
        return task_clean(params["lake"], run_id=run_id, bronze_version=bronze_version)

    @task(outlets=assets.SILVER + [assets.QUARANTINE])
    def gate(cleaned: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gate

        params, run_id = _run()
        return task_gate(params["lake"], run_id=run_id)

    @task(inlets=assets.SILVER, outlets=[assets.GOLD_FEATURES])
    def dbt_gold(gated: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_gold

        params, run_id = _run()
        return task_gold(params["lake"], run_id=run_id)

    @task
    def summary(gold: dict[str, object]) -> dict[str, object]:
        from medlake.jobs.pipeline import task_summary

        params, run_id = _run()
        return task_summary(params["lake"], run_id=run_id)

    summary(dbt_gold(gate(clean(ingest()))))


medlake_pipeline()
