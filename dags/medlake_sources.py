"""One DAG per source domain — ehr_fhir, ehr_hl7v2, ehr_csv, pacs_dicom, iot_vitals, genomics_vcf —
each landing/<kind>/ → its bronze tables, generated from `medlake/registry.py` SOURCE_DAGS.

Each run appends a batch under its run id; the batch stays pending until the curation DAG
(`medlake_curation`, scheduled on these bronze assets) carries it to silver. Each bronze asset
event names the Delta version the run left, and the curation run reads bronze at those versions.
A large landing fans out: `plan` splits it into batches of files, `ingest` is mapped over them
(one at a time per run; each its own batch `<run id>.b<n>`), and `publish` announces the bronze
tables once per run (their asset events). Source DAGs run side by side, each
in its own pool (`medlake_<kind>`); commit races on the shared quarantine and ledger are retried.
Schedule, pools, retries, batch size: `MEDLAKE__AIRFLOW__*` (medlake/sources.py).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medlake import assets, sources
from medlake.config import Settings
from medlake.errors import BadDataError
from medlake.registry import BRONZE_OF, SOURCE_DAGS

SETTINGS = Settings()  # schedule, pools, retries; no secret is read here


def source_dag(dag_id: str, kind: str) -> DAG:
    bronze = [assets.asset(name) for name in BRONZE_OF[kind]]
    cron = sources.schedule(SETTINGS)
    with DAG(
        dag_id=dag_id,
        schedule=[assets.landing(kind)] if cron == sources.ASSET else cron,
        catchup=False,
        max_active_runs=1,  # two runs of one source would race to append the same new records
        tags=["source", kind],
        doc_md=f"landing/{kind}/ → {', '.join(BRONZE_OF[kind])}\n\n" + (__doc__ or ""),
        default_args={"owner": "medlake", "retries": sources.retries(SETTINGS, kind),
                      "retry_delay": timedelta(seconds=20), "pool": sources.pool(kind)},
        params={
            "landing": Param(str(SETTINGS.airflow.landing), type="string", description="Landing folder"),
            "lake": Param(str(SETTINGS.lake.root), type="string", description="Lake root"),
            "engine": Param("", type="string", enum=["", "embedded", "spark"]),
            "delivery": Param("", type="string", description="Delivery id (`medlake run`)"),
            "sources": Param("", type="string", description="Landing kinds of the delivery"),
        },
    ) as dag:

        @task.sensor(task_id="wait_for_files", poke_interval=60, mode="reschedule",
                     timeout=SETTINGS.airflow.sensor_timeout)
        def wait_for_files() -> bool:
            return sources.has_files(get_current_context()["params"]["landing"], kind)

        @task(task_id="plan")
        def plan() -> list[int]:
            context = get_current_context()
            return sources.plan_batches(context["params"]["landing"], kind, context["params"]["lake"],
                                        run_id=context["run_id"], size=SETTINGS.airflow.batch_files)

        @task(task_id="ingest", inlets=[assets.landing(kind)], outlets=[assets.QUARANTINE, assets.LEDGER],
              max_active_tis_per_dagrun=1)
        def ingest(batch: int) -> dict[str, object]:
            from medlake.jobs.pipeline import task_ingest_source

            context = get_current_context()
            params = context["params"]
            landing, run_id = sources.batch_landing(params["lake"], kind, run_id=context["run_id"],
                                                    batch=batch, landing=params["landing"])
            try:
                return task_ingest_source(kind, landing, params["lake"], run_id=run_id, dag_id=dag_id,
                                          engine=params.get("engine") or None, lineage_landing=params["landing"])
            except BadDataError as exc:
                raise AirflowFailException(str(exc)) from exc
            finally:
                sources.drop_batch_landing(landing)

        @task(task_id="publish", outlets=bronze)
        def publish(ingested: list[dict[str, object]]) -> dict[str, object]:
            """One event per bronze table per run: the versions its curation run reads (medlake/sources.py)."""
            context = get_current_context()
            params = context["params"]
            own = sources.bronze_versions(params["lake"], BRONZE_OF[kind], sources.last_versions(ingested))
            named = sources.announce(params["lake"], kind, own, delivery=params.get("delivery") or "",
                                     sources=[k for k in (params.get("sources") or "").split(",") if k],
                                     timeout=SETTINGS.airflow.delivery_wait)
            extras = sources.bronze_events(params["lake"], own, context["run_id"], named, params.get("engine"))
            for outlet in bronze:
                context["outlet_events"][outlet].extra = extras[outlet.name]
            return {"versions": named}

        batches = plan()
        publish(ingest.expand(batch=batches))
        if sources.sensed(SETTINGS):
            wait_for_files() >> batches
    return dag


for _dag_id, _kind in SOURCE_DAGS.items():
    globals()[_dag_id] = source_dag(_dag_id, _kind)
