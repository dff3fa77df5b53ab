"""Every DAG imports cleanly, reads no secret at import, and has tags, an owner and retries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    os.environ.pop("MEDLAKE_PROJECT_KEY", None)
    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "medlake_pipeline" in dagbag.dags


def test_every_dag_has_tags_owner_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", (dag_id, task.task_id)
            assert task.retries >= 1, (dag_id, task.task_id)


def test_pipeline_runs_ingest_clean_gate_gold_summary_in_order(dagbag):
    dag = dagbag.dags["medlake_pipeline"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["ingest", "clean", "gate", "dbt_gold", "summary"]


def test_dag_files_stay_thin():
    for path in DAGS.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 100, f"{path.name}: logic has leaked into dags/"


def test_medlake_airflow_dags_lists_schedules_tags_and_assets():
    import json
    import subprocess
    import sys

    medlake = str(Path(sys.executable).with_name("medlake"))
    done = subprocess.run([medlake, "airflow", "dags", "--json"], capture_output=True, text=True, check=True)
    dags = {d["dag_id"]: d for d in json.loads(done.stdout)}
    assert dags["medlake_pipeline"]["max_active_runs"] == 1  # curation is one run at a time per lake
    assert "bronze.fhir_resources" in dags["medlake_pipeline"]["produces"]
    assert dags["medlake_training"]["schedule"] == "assets"
    assert dags["medlake_training"]["consumes"] == ["gold.ml_patient_features"]
