"""One DAG per source domain — ehr_fhir, ehr_hl7v2, ehr_csv, pacs_dicom, iot_vitals, genomics_vcf —
each landing/<kind>/ → its bronze tables, generated from `medlake/registry.py` SOURCE_DAGS.

Each run appends a batch under its run id; the batch stays pending until the curation DAG
(`medlake_curation`, scheduled on these bronze assets) carries it to silver. Source DAGs run in
parallel with each other: each writes its own bronze tables, and commit races on the shared
quarantine and ledger are retried.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medlake import assets
from medlake.errors import BadDataError
from medlake.registry import BRONZE_OF, SOURCE_DAGS

DEFAULT_ARGS = {"owner": "medlake", "retries": 2, "retry_delay": timedelta(seconds=20)}


def source_dag(dag_id: str, kind: str) -> DAG:
    bronze = [assets.asset(name) for name in BRONZE_OF[kind]]
    with DAG(
        dag_id=dag_id,
        schedule=None,  # `medlake run` triggers it; a deployment may set a cron or an asset
        catchup=False,
        max_active_runs=1,  # two runs of one source would race to append the same new records
        tags=["source", kind],
        doc_md=f"landing/{kind}/ → {', '.join(BRONZE_OF[kind])}\n\n" + (__doc__ or ""),
        default_args=DEFAULT_ARGS,
        params={
            "landing": Param(".medlake/demo/landing", type="string", description="Landing folder"),
            "lake": Param(".medlake/demo/lake", type="string", description="Lake root"),
            "engine": Param("", type="string", enum=["", "embedded", "spark"]),
        },
    ) as dag:

        @task(task_id="ingest", inlets=[assets.landing(kind)], outlets=[*bronze, assets.QUARANTINE, assets.LEDGER])
        def ingest() -> dict[str, object]:
            from medlake.jobs.pipeline import task_ingest_source

            context = get_current_context()
            params = context["params"]
            try:
                result = task_ingest_source(
                    kind, params["landing"], params["lake"], run_id=context["run_id"],
                    dag_id=dag_id, engine=params.get("engine") or None,
                )
            except BadDataError as exc:
                raise AirflowFailException(str(exc)) from exc
            lake = str(Path(params["lake"]).resolve())  # tells the curation DAG which lake
            for outlet in bronze:
                context["outlet_events"][outlet].extra = {"lake": lake}
            return result

        ingest()
    return dag


for _dag_id, _kind in SOURCE_DAGS.items():
    globals()[_dag_id] = source_dag(_dag_id, _kind)
