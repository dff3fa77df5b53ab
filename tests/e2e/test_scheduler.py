"""`medlake run` on a real scheduler: the local Airflow (scheduler, DAG processor, API server on
SQLite with the LocalExecutor) started by `medlake run`, three source DAGs triggered at once
through the REST API, the curation runs their bronze assets trigger followed to the end (each
reading the bronze versions its asset events name), the lineage from silver back to each source's
landing folder, then `medlake airflow stop` (issue #14)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from medlake.config import load_settings
from medlake.governance.at_rest import lake_for
from medlake.governance.lineage import read_events
from medlake.lake import Lake
from medlake.sample import generate
from medlake.scheduler import Client, running
from medlake.sources import pool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEDLAKE = str(Path(sys.executable).with_name("medlake"))
FHIR_BATCH = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scheduler_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    monkeypatch.setenv("MEDLAKE__AIRFLOW__API_PORT", str(port))
    # an Airflow of its own: the asset events earlier tests' inline runs left in the session's
    # metadata DB would trigger curation runs of their own once a scheduler starts
    monkeypatch.setenv("MEDLAKE__AIRFLOW__HOME", str(tmp_path / "airflow"))
    # a loaded CI machine can take minutes to turn asset events into a run; the test proves the
    # asset schedule, so `medlake run` must not step in with a run of its own
    monkeypatch.setenv("MEDLAKE__AIRFLOW__ASSET_GRACE", "1200")
    # FHIR's landing fans out over two or more mapped ingest tasks; the other sources' fit in one
    monkeypatch.setenv("MEDLAKE__AIRFLOW__BATCH_FILES", str(FHIR_BATCH))
    yield port
    subprocess.run([MEDLAKE, "airflow", "stop"], check=False, capture_output=True)


def test_medlake_run_triggers_two_source_dags_at_once_on_a_started_scheduler(
    tmp_path: Path, scheduler_port: int
) -> None:
    hospital, landing, lake = tmp_path / "hospital", tmp_path / "landing", tmp_path / "lake"
    generate(hospital, patients=10, seed=41)
    for kind in ("fhir", "hl7v2", "csv"):  # three sources: ehr_fhir, ehr_hl7v2, ehr_csv side by side
        shutil.copytree(hospital / kind, landing / kind)

    done = subprocess.run(
        [MEDLAKE, "run", "--landing", str(landing), "--lake", str(lake), "--json"],
        capture_output=True, text=True, check=False, env=os.environ,
    )

    assert done.returncode == 0, done.stderr[-5000:]
    summary = json.loads(done.stdout)
    by_dag: dict[str, list[dict[str, str]]] = {}
    for run in summary["dag_runs"]:
        by_dag.setdefault(run["dag_id"], []).append(run)
    assert sorted(d for d in by_dag if d != "medlake_curation") == ["ehr_csv", "ehr_fhir", "ehr_hl7v2"]
    assert all(r["state"] == "success" for runs in by_dag.values() for r in runs)
    assert {r["run_id"].split("__")[0] for r in by_dag["medlake_curation"]} == {"asset_triggered"}
    assert summary["ledger_balanced"] and summary["pending"] == {}
    # both sources reached silver through the one curation DAG
    observations = lake_for(load_settings(), lake).read("silver.observations", columns=["_source_kind"])
    assert set(observations.column("_source_kind").to_pylist()) == {"fhir", "hl7v2", "csv"}
    # the source runs' ingest batches are curated, in the ledger under the source runs' ids
    ledger = Lake(lake).read("ledger").to_pylist()
    ingest_runs = {r["run_id"] for r in ledger if r["stage"] == "ingest" and r["records_out"] > 0}
    # a mapped ingest's batch is `<run id>.b<n>`; FHIR's landing was ingested in batches
    assert {re.sub(r"\.b\d{5}$", "", r) for r in ingest_runs} == {
        r["run_id"] for d in ("ehr_fhir", "ehr_hl7v2", "ehr_csv") for r in by_dag[d]}
    fhir_files = sum(1 for p in (landing / "fhir").rglob("*") if p.is_file())
    assert fhir_files > FHIR_BATCH
    [fhir_run] = by_dag["ehr_fhir"]
    assert min(r for r in ingest_runs if r.startswith(fhir_run["run_id"] + ".b")).endswith(".b00000")

    # each curation run read exactly the bronze versions its triggering asset events name (the
    # delivery's: each source run's event names every source's); a run whose versions an earlier
    # run had curated skipped
    client = Client(load_settings())
    quoted = urllib.parse.quote(fhir_run["run_id"], safe="")
    tasks = client._request("GET", f"/api/v2/dags/ehr_fhir/dagRuns/{quoted}/taskInstances")["task_instances"]
    mapped = [t for t in tasks if t["task_id"] == "ingest"]
    assert len(mapped) >= 2 and {t["state"] for t in mapped} == {"success"}
    assert {t["pool"] for t in tasks} == {pool("fhir")}
    cleaned = {e["run"]["facets"]["medlake_run"]["airflow_run_id"]: e for e in read_events(lake)
               if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".clean")}
    fed: dict[str, set[str]] = {}
    for run in by_dag["medlake_curation"]:
        named: dict[str, int] = {}
        for event in client.asset_events("medlake_curation", run["run_id"]):
            assert event["extra"]["lake"] == str(lake.resolve())
            for table, version in {**event["extra"]["versions"], event["name"]: event["extra"]["version"]}.items():
                named[table] = max(version, named.get(table, version))
        if run["run_id"] not in cleaned:
            continue
        read = {i["name"]: int(i["facets"]["version"]["datasetVersion"])
                for i in cleaned[run["run_id"]]["inputs"] if i["name"].startswith("bronze.")}
        assert {t: v for t, v in read.items() if t in named} == named
        # lineage: silver.observations ← staging ← the bronze tables this run read ← their own folders
        shown = json.loads(subprocess.run(
            [MEDLAKE, "lineage", "show", "silver.observations", "--lake", str(lake), "--run", run["run_id"],
             "--json"], capture_output=True, text=True, check=True).stdout)
        for staging in shown["upstream"]:
            for bronze in staging["upstream"]:
                fed.setdefault(bronze["table"], set()).update(u["table"] for u in bronze["upstream"])
    assert cleaned.keys() & {r["run_id"] for r in by_dag["medlake_curation"]}
    assert {t: fed.get(t) for t in ("bronze.fhir_resources", "bronze.hl7v2_messages", "bronze.csv_rows")} == {
        "bronze.fhir_resources": {str((landing / "fhir").resolve())},
        "bronze.hl7v2_messages": {str((landing / "hl7v2").resolve())},
        "bronze.csv_rows": {str((landing / "csv").resolve())},
    }
    assert {p["name"]: p["slots"] for p in client._request("GET", "/api/v2/pools?limit=100")["pools"]
            if p["name"].startswith("medlake_")}[pool("csv")] == 2
    assert len(running(load_settings())) == 3  # scheduler, DAG processor, API server stay up

    stopped = subprocess.run([MEDLAKE, "airflow", "stop"], capture_output=True, text=True, check=True)
    assert "scheduler" in stopped.stdout
    assert running(load_settings()) == {}
