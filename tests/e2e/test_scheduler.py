"""`medlake run` on a real scheduler: the local Airflow (scheduler, DAG processor, API server on
SQLite with the LocalExecutor) started by `medlake run`, two source DAGs triggered at once through
the REST API, the curation run their bronze assets trigger followed to the end, then
`medlake airflow stop` (issue #14)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medlake.config import load_settings
from medlake.governance.at_rest import lake_for
from medlake.lake import Lake
from medlake.sample import generate
from medlake.scheduler import running

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEDLAKE = str(Path(sys.executable).with_name("medlake"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scheduler_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    port = free_port()
    monkeypatch.setenv("MEDLAKE__AIRFLOW__API_PORT", str(port))
    # a loaded CI machine can take minutes to turn asset events into a run; the test proves the
    # asset schedule, so `medlake run` must not step in with a run of its own
    monkeypatch.setenv("MEDLAKE__AIRFLOW__ASSET_GRACE", "1200")
    yield port
    subprocess.run([MEDLAKE, "airflow", "stop"], check=False, capture_output=True)


def test_medlake_run_triggers_two_source_dags_at_once_on_a_started_scheduler(
    tmp_path: Path, scheduler_port: int
) -> None:
    hospital, landing, lake = tmp_path / "hospital", tmp_path / "landing", tmp_path / "lake"
    generate(hospital, patients=10, seed=41)
    for kind in ("fhir", "csv"):  # two sources: ehr_fhir and ehr_csv run side by side
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
    assert sorted(d for d in by_dag if d != "medlake_curation") == ["ehr_csv", "ehr_fhir"]
    assert all(r["state"] == "success" for runs in by_dag.values() for r in runs)
    assert {r["run_id"].split("__")[0] for r in by_dag["medlake_curation"]} == {"asset_triggered"}
    assert summary["ledger_balanced"] and summary["pending"] == {}
    # both sources reached silver through the one curation DAG
    observations = lake_for(load_settings(), lake).read("silver.observations", columns=["_source_kind"])
    assert set(observations.column("_source_kind").to_pylist()) == {"fhir", "csv"}
    # the source runs' ingest batches are curated, in the ledger under the source runs' ids
    ledger = Lake(lake).read("ledger").to_pylist()
    ingest_runs = {r["run_id"] for r in ledger if r["stage"] == "ingest" and r["records_out"] > 0}
    assert ingest_runs == {r["run_id"] for d in ("ehr_fhir", "ehr_csv") for r in by_dag[d]}
    assert len(running(load_settings())) == 3  # scheduler, DAG processor, API server stay up

    stopped = subprocess.run([MEDLAKE, "airflow", "stop"], capture_output=True, text=True, check=True)
    assert "scheduler" in stopped.stdout
    assert running(load_settings()) == {}
