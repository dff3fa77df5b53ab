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


SOURCE_DAGS = {"ehr_fhir": "bronze.fhir_resources", "ehr_hl7v2": "bronze.hl7v2_messages",
               "ehr_csv": "bronze.csv_rows", "pacs_dicom": "bronze.dicom_files",
               "iot_vitals": "bronze.vitals_samples", "genomics_vcf": "bronze.vcf_records"}


def test_a_dag_per_source_domain_writes_its_bronze_tables(dagbag):
    for dag_id, bronze in SOURCE_DAGS.items():
        dag = dagbag.dags[dag_id]
        ingest, publish = dag.get_task("ingest"), dag.get_task("publish")
        assert [t.task_id for t in dag.topological_sort()] == ["plan", "ingest", "publish"], dag_id
        # the mapped ingest writes the batches; publish announces the bronze tables once per run
        assert bronze in {a.name for a in publish.outlets}, dag_id
        assert not {a.name for a in ingest.outlets} & {a.name for a in publish.outlets}, dag_id
        assert {"quarantine", "ledger"} <= {a.name for a in ingest.outlets}, dag_id
        assert dag.max_active_runs == 1, dag_id


def test_the_curation_dag_is_scheduled_on_every_source_dags_bronze_and_runs_alone(dagbag):
    dag = dagbag.dags["medlake_curation"]
    consumed = {a.name for a in dag.timetable.asset_condition.objects}
    assert consumed == set(SOURCE_DAGS.values())
    assert dag.max_active_runs == 1
    assert [t.task_id for t in dag.topological_sort()] == ["clean", "gate", "dbt_gold", "summary"]
    gate = dag.get_task("gate")
    assert "silver.observations" in {a.name for a in gate.outlets}
    assert "staging.observations" in {a.name for a in gate.inlets}


def test_the_gold_assets_are_the_marts_dbt_builds():
    from medlake.assets import GOLD_MARTS

    marts = Path(__file__).resolve().parents[2] / "dbt" / "models" / "marts"
    assert sorted(GOLD_MARTS) == sorted(p.stem for p in marts.glob("*/*.sql"))


def test_every_table_asset_is_named_and_addressed_as_its_lineage_dataset(dagbag):
    from medlake.registry import dataset_name

    seen = set()
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            for item in [*task.inlets, *task.outlets]:
                if not item.name.startswith("landing."):
                    assert item.uri == item.name == dataset_name(item.name), (dag_id, item.uri)
                    seen.add(item.name)
    assert {"bronze.csv_rows", "staging.observations", "silver.observations", "gold.omop_person"} <= seen


def test_source_dags_have_a_pool_each_and_their_retries(dagbag):
    from medlake.registry import SOURCE_DAGS

    for dag_id, kind in SOURCE_DAGS.items():
        for task in dagbag.dags[dag_id].tasks:
            assert task.pool == f"medlake_{kind}" and task.retries == 2, (dag_id, task.task_id)
        ingest = dagbag.dags[dag_id].get_task("ingest")
        assert ingest.inlets[0].name == f"landing.{kind}"


@pytest.mark.parametrize("schedule", ["@hourly", "asset"])
def test_a_source_schedule_of_its_own_cron_with_a_sensor_or_its_landing_asset(schedule, monkeypatch):
    monkeypatch.setenv("MEDLAKE__AIRFLOW__SOURCE_SCHEDULE", schedule)
    monkeypatch.setenv("MEDLAKE__AIRFLOW__SOURCE_RETRIES", '{"dicom": 5}')
    bag = DagBag(dag_folder=str(DAGS / "medlake_sources.py"))
    assert bag.import_errors == {}
    dag = bag.dags["ehr_fhir"]
    if schedule == "asset":
        assert [a.name for a in dag.timetable.asset_condition.objects] == ["landing.fhir"]
        assert [t.task_id for t in dag.topological_sort()] == ["plan", "ingest", "publish"]
    else:
        assert [t.task_id for t in dag.topological_sort()] == ["wait_for_files", "plan", "ingest", "publish"]
        sensor = dag.get_task("wait_for_files")
        assert sensor.mode == "reschedule" and sensor.pool == "medlake_fhir"
    assert bag.dags["pacs_dicom"].get_task("ingest").retries == 5


def test_the_landing_sensor_waits_for_a_file_not_a_folder(tmp_path):
    from medlake.sources import has_files

    (tmp_path / "fhir" / "bulk").mkdir(parents=True)
    (tmp_path / "fhir" / ".partial").write_text("copying")
    assert not has_files(tmp_path, "fhir") and not has_files(tmp_path, "csv")
    (tmp_path / "fhir" / "bulk" / "Patient.ndjson").write_text("{}\n")
    assert has_files(tmp_path, "fhir")


def test_a_large_landing_is_planned_as_batches_each_a_folder_of_its_files(tmp_path):
    from medlake.sources import batch_landing, drop_batch_landing, plan_batches

    landing, lake = tmp_path / "landing", tmp_path / "lake"
    for name in ("a.csv", "b.csv", "c.csv", "lab.mapping.yaml", "sub/d.csv"):
        (landing / "csv" / name).parent.mkdir(parents=True, exist_ok=True)
        (landing / "csv" / name).write_text(name)
    assert plan_batches(landing, "csv", lake, run_id="manual__1", size=0) == [0]
    assert batch_landing(lake, "csv", run_id="manual__1", batch=0, landing=landing) == (str(landing), "manual__1")
    assert plan_batches(landing, "csv", lake, run_id="manual__2", size=2) == [0, 1]
    views = [batch_landing(lake, "csv", run_id="manual__2", batch=b, landing=landing) for b in (0, 1)]
    assert [run for _, run in views] == ["manual__2.b00000", "manual__2.b00001"]
    seen = [sorted(p.relative_to(Path(view) / "csv").as_posix() for p in (Path(view) / "csv").rglob("*") if p.is_file())
            for view, _ in views]
    assert seen == [["a.csv", "b.csv", "lab.mapping.yaml"], ["c.csv", "lab.mapping.yaml", "sub/d.csv"]]
    assert (Path(views[0][0]) / "csv" / "a.csv").read_text() == "a.csv"
    drop_batch_landing(views[0][0])
    drop_batch_landing(landing)  # never the landing folder itself
    assert not Path(views[0][0]).exists() and (landing / "csv" / "a.csv").exists()
