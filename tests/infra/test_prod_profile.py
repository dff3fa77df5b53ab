"""The production profile for real: PostgreSQL, versitygw (S3) and the MLflow server are started by
infra/prod.py, the sample hospital runs into s3://, and everything is stopped by pid afterwards.

Needs versitygw (from the Go module proxy), which `make test` builds first (`make infra-test-deps`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.infra, pytest.mark.slow, pytest.mark.e2e]

if not (REPO / ".venv" / "infra-bin" / "versitygw").exists():  # pragma: no cover - make test builds it
    pytest.skip("versitygw not built: run `make infra-test-deps`", allow_module_level=True)


@pytest.fixture(scope="module")
def profile(start_profile):  # type: ignore[no-untyped-def]
    """A running profile (pg, s3, mlflow) in its own folder and ports; stopped and removed after."""
    with start_profile("prod", "pg,s3,mlflow") as running:
        yield running


def test_the_sample_hospital_runs_into_the_object_store(profile, run_command, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    settings = profile["settings"]
    env = {
        **profile["env"],
        **{k: v for k, v in settings.items() if not k.startswith(("MEDLAKE__SPARK", "MEDLAKE__AIRFLOW"))},
        "MEDLAKE_HOME": str(tmp_path / "home"),
    }
    env.pop("MEDLAKE__LAKE__ROOT")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "SSL_CERT_FILE"):
        env.pop(name, None)  # medlake must find the object store from its own settings
    lake = "s3://lake/test-run"
    medlake = str(BIN / "medlake")
    subprocess.run([medlake, "sample", "--patients", "20", "--seed", "11", "--out", str(tmp_path / "landing")],
                   env=env, check=True, capture_output=True)
    run = run_command([medlake, "run", "--inline", "--landing", str(tmp_path / "landing"), "--lake", lake, "--json"], env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["lake"] == lake
    assert summary["ledger_balanced"] is True

    # the tables are on the object store: delta-rs reads them there with explicit storage options
    from deltalake import DeltaTable

    options = {
        "AWS_ENDPOINT_URL": settings["MEDLAKE__S3__ENDPOINT"],
        "AWS_ACCESS_KEY_ID": Path(settings["MEDLAKE__S3__ACCESS_KEY_FILE"]).read_text().strip(),
        "AWS_SECRET_ACCESS_KEY": Path(settings["MEDLAKE__S3__SECRET_KEY_FILE"]).read_text().strip(),
        "AWS_REGION": "us-east-1",
    }
    monkeypatch.setenv("SSL_CERT_FILE", settings["MEDLAKE__S3__CA_FILE"])  # not for the tests after this one
    persons = DeltaTable(f"{lake}/silver/persons", storage_options=options).to_pyarrow_table()
    assert persons.num_rows == 20
    by_table = {t["table"]: t for t in summary["tables"]}
    assert by_table["silver.persons"]["path"] == f"{lake}/silver/persons"
    objects = profile["home"] / "s3" / "data" / "lake" / "test-run"
    assert any((objects / "silver" / "observations" / "_delta_log").iterdir())
    assert not list((tmp_path / "home").rglob("*.parquet")), "a Delta file was written locally"

    # every command reads the same lake: tables, audit, report
    tables = run_command([medlake, "tables", "--lake", lake, "--json"], env)
    assert {t["table"] for t in json.loads(tables.stdout)} >= {"silver.persons", "gold.ml_patient_features"}
    verify = run_command([medlake, "audit", "verify", "--lake", lake], env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout

    # the MLflow server records a run in PostgreSQL and its artifact on the object store
    run_uuid = _mlflow_run(settings, summary)
    rows = _pg(profile, "mlflow", "SELECT status, artifact_uri FROM runs WHERE run_uuid = %s", run_uuid)
    assert rows and rows[0][0] == "FINISHED"
    stored = profile["home"] / "s3" / "data" / "mlflow" / "artifacts"
    assert [p.name for p in stored.rglob("summary.json")] == ["summary.json"]
    assert _secrets_in_logs(profile["home"]) == []


def _secrets_in_logs(home: Path) -> list[str]:
    """The secret files whose value appears in a service's log."""
    logs = [p.read_text(errors="replace") for p in (home / "logs").glob("*.log")]
    leaked = []
    for secret in (home / "secrets").iterdir():
        value = secret.read_text().strip()
        if secret.name != "pgpass" and value and any(value in log for log in logs):
            leaked.append(secret.name)
    return leaked


def _mlflow_run(settings: dict[str, str], summary: dict) -> str:  # type: ignore[type-arg]
    import mlflow

    mlflow.set_tracking_uri(settings["MEDLAKE__MLFLOW__TRACKING_URI"])
    with mlflow.start_run(run_name="prod-profile-test", tags={"medlake.run_id": summary["run_id"]}) as run:
        mlflow.log_metric("silver_tables", sum(1 for t in summary["tables"] if t["table"].startswith("silver.")))
        mlflow.log_dict({"run_id": summary["run_id"], "lake": summary["lake"]}, "summary.json")
    return str(run.info.run_id)


def _pg(profile, db: str, sql: str, *args: str) -> list[tuple]:  # type: ignore[no-untyped-def, type-arg]
    import psycopg2

    home = profile["home"]
    port = int(profile["env"]["MEDLAKE_PROD_PORT_BASE"]) + 32
    conn = psycopg2.connect(
        host="127.0.0.1", port=port, dbname=db, user="medlake_admin",
        password=(home / "secrets" / "pg_admin").read_text().strip(),
        sslmode="verify-full", sslrootcert=str(home / "tls" / "ca.crt"),
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()
