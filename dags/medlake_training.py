"""After each gold build: publish gold.ml_patient_features as the next dataset version, train on it.

Scheduled on the gold asset. The lake is the asset event's `extra["lake"]` when the producer sets
it, else the `lake` param. XCom carries only the dataset reference, Delta version and MLflow run id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from medlake import assets
from medlake.errors import BadDataError

DEFAULT_ARGS = {"owner": "medlake", "retries": 2, "retry_delay": timedelta(seconds=30)}


def _call(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one step: too few labels to train skips; other bad data (a hash mismatch) fails at once."""
    from medlake.training.train import TooFewLabels
    try:
        return step(*args, **kwargs)
    except TooFewLabels as exc:
        raise AirflowSkipException(str(exc)) from exc
    except BadDataError as exc:
        raise AirflowFailException(str(exc)) from exc


def _lake() -> Any:
    """The lake of the gold build that triggered this run, else the `lake` param."""
    from medlake.lake import Lake

    context = get_current_context()
    triggered = [e.extra["lake"] for events in context.get("triggering_asset_events", {}).values()
                 for e in events if e.extra.get("lake")]
    return Lake(Path(triggered[-1] if triggered else context["params"]["lake"]).resolve())


@dag(
    dag_id="medlake_training",
    schedule=[assets.GOLD_FEATURES],
    catchup=False,
    tags=["ml", "training"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "lake": Param(".medlake/demo/lake", type="string", description="Lake root"),
        "dataset": Param("patient_features", type="string", description="Dataset name to publish"),
        "label": Param("has_diabetes", type="string", description="Boolean column to predict"),
        "tracking_uri": Param("", type="string", description="MLflow URI ('': the mlflow.tracking_uri setting)"),
    },
)
def medlake_training() -> None:
    @task(inlets=[assets.GOLD_FEATURES])
    def publish() -> dict[str, object]:
        from medlake.training import datasets
        name = get_current_context()["params"]["dataset"]
        m = _call(datasets.publish, _lake(), "gold.ml_patient_features", name=name)
        return {"dataset": m.ref, "delta_version": m.delta_version, "content_hash": m.content_hash}

    @task
    def train(published: dict[str, object]) -> dict[str, object]:
        from medlake.config import Settings
        from medlake.keys import audit_key
        from medlake.training import train as training
        from medlake.training.datasets import PullAudit
        context, settings = get_current_context(), Settings()
        params, dataset = context["params"], str(published["dataset"])
        uri = params["tracking_uri"] or settings.mlflow.tracking_uri
        audit = PullAudit(key=audit_key(settings), actor="airflow", purpose="research", run_id=context["run_id"])
        result = _call(training.train, _lake(), dataset, tracking_uri=uri, label=params["label"],
                       run_id=context["run_id"], audit=audit)
        return {"mlflow_run_id": result.run_id, "model": result.model_name, "version": result.model_version}

    train(publish())


medlake_training()
