"""The Spark part of the production profile on real daemons: infra/prod.py starts versitygw (S3 over
TLS), a Spark standalone master, one worker and a Spark Connect server from the pip-installed pyspark
(delta-spark and the S3A jars from Maven Central, fetched by `make test`); three patients' FHIR files
go through ingest, clean and the gate (which publishes silver) on the Spark engine into s3://, and
everything is stopped by pid.

Asserts the silver rows against the sample's answer key and that bronze on the object store holds
PHI only as ciphertext. The fewest daemons and stages that prove the deployment: executors on a
standalone worker write and read Delta on the object store over S3A, driven through Connect. Gold
on Spark is tests/engines/test_equivalence.py's (a local session); the other profile test runs the
whole pipeline on the embedded engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAKE = "s3://lake/spark-test"
RUN_ID = "manual__spark_profile"

pytestmark = [pytest.mark.infra, pytest.mark.spark, pytest.mark.slow, pytest.mark.e2e]

if not all((REPO / ".venv" / need).exists() for need in ("infra-bin/versitygw", "jars-s3a/.complete")):  # pragma: no cover
    # make test builds and fetches them first (make infra-test-deps)
    pytest.skip("versitygw or the S3A jars missing: run `make infra-test-deps`", allow_module_level=True)


@pytest.fixture(scope="module")
def spark_profile(start_profile):  # type: ignore[no-untyped-def]
    """versitygw + Spark master, one worker and the Connect server in their own folder and ports."""
    with start_profile("spark", "s3,spark", MEDLAKE_PROD_SPARK_WORKERS="1") as profile:
        yield profile


READ_BACK = """
import json, sys
from medlake.config import lake_root, load_settings
from medlake.governance.at_rest import PREFIX, encrypted_columns, lake_for
from medlake.lake import Lake

root = lake_root(sys.argv[1])
keyless, opened = Lake(root), lake_for(load_settings(), root)
sealed = encrypted_columns()
out = {"tables": {}, "sealed": {}, "clear_text": {}}
for name in keyless.tables():
    out["tables"][name] = keyless.read(name).num_rows
    if name.startswith("bronze."):
        stored = keyless.read(name)
        for column in sealed.get(name, {}):
            if column in stored.column_names:
                values = [v for v in stored.column(column).to_pylist() if v is not None]
                out["sealed"][f"{name}.{column}"] = [len(values), sum(str(v).startswith(PREFIX) for v in values)]
        clear = [c for c in stored.column_names if c not in sealed.get(name, {})]
        out["clear_text"][name] = json.dumps(opened.read(name, columns=clear).to_pylist(), default=str)
print(json.dumps(out))
"""


def test_a_few_patients_run_on_the_spark_daemons_into_the_object_store(spark_profile, run_command, tmp_path):  # type: ignore[no-untyped-def]
    settings = spark_profile["settings"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MEDLAKE__"))},
        **{k: v for k, v in settings.items() if not k.startswith(("MEDLAKE__AIRFLOW", "MEDLAKE__MLFLOW"))},
        "MEDLAKE_HOME": str(tmp_path / "home"),
        "MEDLAKE__ENGINE": "spark",
    }
    env.pop("MEDLAKE__LAKE__ROOT")
    env.pop("SSL_CERT_FILE", None)  # medlake must find the object store's CA from its own settings
    assert env["MEDLAKE__SPARK__REMOTE"].startswith("sc://")
    medlake = str(BIN / "medlake")
    landing = tmp_path / "landing"
    subprocess.run([medlake, "sample", "--patients", "3", "--seed", "5", "--out", str(landing)],
                   env=env, check=True, capture_output=True)
    for folder in landing.iterdir():  # one source: the FHIR bundles
        if folder.is_dir() and folder.name != "fhir":
            shutil.rmtree(folder)
    truth = json.loads((landing / "_truth.json").read_text())

    for stage in ("ingest", "clean", "gate"):
        argv = [medlake, "stage", stage, "--lake", LAKE, "--run-id", RUN_ID, "--engine", "spark"]
        if stage == "ingest":
            argv += ["--landing", str(landing)]
        done = run_command(argv, env)
        errors = [line for line in done.stderr.splitlines() if "Exception" in line or "Error" in line]
        assert done.returncode == 0, f"{stage}:\n{done.stdout[-2000:]}\n{errors[:10]}\n{done.stderr[-3000:]}"

    read = run_command([sys.executable, "-c", READ_BACK, LAKE], env)
    assert read.returncode == 0, read.stderr[-3000:]
    found = json.loads(read.stdout.strip().splitlines()[-1])
    tables = found["tables"]
    # silver rows: every sample patient is one person; their observations reached silver
    assert tables["silver.persons"] == truth["patients"], (tables, truth.get("patients"))
    assert tables["silver.observations"] > 0
    assert tables["bronze.fhir_resources"] > 0
    # the Delta tables are on the object store (versitygw's folder), not on local disk
    objects = spark_profile["home"] / "s3" / "data" / "lake" / "spark-test"
    assert any((objects / "bronze" / "fhir_resources" / "_delta_log").iterdir())
    assert any((objects / "silver" / "persons" / "_delta_log").iterdir())
    assert not list((tmp_path / "home").rglob("*.parquet")), "a Delta file was written locally"
    # bronze holds PHI only as ciphertext: every sealed column's value is an envelope, and no
    # planted name, phone or MRN appears in the columns left clear
    sealed = found["sealed"]
    assert sealed["bronze.fhir_resources.raw"][0] == tables["bronze.fhir_resources"]
    assert all(n == enc for n, enc in sealed.values()), sealed
    phi = truth["phi"]
    for name, text in found["clear_text"].items():
        words = set(re.findall(r"[^\W\d_]+", text))
        leaked = [n for n in phi["names"] if n in words]
        leaked += [v for kind in ("phones", "mrns", "ssns", "streets") for v in phi.get(kind, []) if v in text]
        assert not leaked, (name, leaked[:5])
