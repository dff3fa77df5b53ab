"""`make prod-demo`: the sample hospital through the running production profile into s3://.

Starts the profile when it is not running (infra/prod.py up), generates the sample hospital and
runs the pipeline through the profile's running Airflow: ``medlake run --engine spark`` triggers
the source DAGs through its API server (``MEDLAKE__AIRFLOW__API_URL``), its scheduler
(LocalExecutor, PostgreSQL) runs them and the curation runs their bronze assets trigger, each task
on the Spark engine (the profile's Spark Connect server, ``MEDLAKE__SPARK__REMOTE``, on the
standalone master and its workers, writing Delta on the object store over S3A) into
``s3://lake/demo-<time>``. Prints the lake URI and the run summary, then publishes the gold
features as a dataset and trains a model tracked by the profile's MLflow server (PostgreSQL +
artifacts on S3) when the sample holds enough cases of each class.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prod

BIN = Path(sys.executable).parent


def client_env(profile: prod.Profile, *, engine: str) -> dict[str, str]:
    """medlake's environment against the profile: settings with paths to secrets, no secret values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MEDLAKE__"))}
    env.update(prod.client_settings(profile))
    env.pop("MEDLAKE__LAKE__ROOT")
    env["MEDLAKE__ENGINE"] = engine
    env["PYSPARK_PYTHON"] = sys.executable
    env["GX_ANALYTICS_ENABLED"] = "false"
    return env


def medlake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ medlake {' '.join(args)}", flush=True)
    return subprocess.run([str(BIN / "medlake"), *args], env=env, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine", choices=("spark", "embedded"), default="spark",
                        help="the run's engine: the source DAGs get it in their run's conf, the curation "
                             "runs in the bronze asset events that trigger them")
    args = parser.parse_args(argv)
    profile = prod.Profile.from_env()
    began = time.monotonic()
    timings = prod.up(profile, ["pg", "s3", "mlflow", "airflow", "spark"] if args.engine == "spark"
                      else ["pg", "s3", "mlflow", "airflow"])
    print(f"profile up ({time.monotonic() - began:.0f} s; started now: {timings or 'nothing, all running'})")
    env = client_env(profile, engine=args.engine)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S")
    lake = f"s3://lake/demo-{stamp}"
    landing = profile.home / "demo" / f"landing-{stamp}"
    if medlake(env, "sample", "--patients", str(args.patients), "--seed", str(args.seed), "--out", str(landing)).returncode:
        return 1
    print(f"the pipeline runs on the profile's scheduler ({env['MEDLAKE__AIRFLOW__API_URL']}) on the "
          f"{args.engine} engine" + (f" ({env['MEDLAKE__SPARK__REMOTE']})" if args.engine == "spark" else ""),
          flush=True)
    ran = time.monotonic()
    run = medlake(env, "run", "--landing", str(landing), "--lake", lake, "--engine", args.engine)
    print(f"medlake run: exit {run.returncode} in {time.monotonic() - ran:.0f} s", flush=True)
    summary = subprocess.run([str(BIN / "medlake"), "summary", "--lake", lake, "--json"], env=env,
                             capture_output=True, text=True, check=False)
    if summary.returncode == 0:
        data = json.loads(summary.stdout[summary.stdout.index("{"):])
        print(f"\nlake: {lake}  run: {data['run_id']}  engines: {data.get('engines')}  "
              f"ledger balanced: {data['ledger_balanced']}  tables: {len(data['tables'])}")
    if run.returncode:
        return run.returncode
    if medlake(env, "dataset", "publish", "ml_patient_features", "--name", "patient_features", "--lake", lake).returncode:
        return 1
    trained = medlake(env, "train", "--lake", lake, "--dataset", "patient_features@1")
    if trained.returncode:
        print("training skipped or failed (it needs 25 cases of each class: try DEMO_PATIENTS=500)")
    print(f"\nlake: {lake}  (in {time.monotonic() - began:.0f} s)\nMLflow: {prod.client_settings(profile)['MEDLAKE__MLFLOW__TRACKING_URI']}"
          f"\nstop the services: make prod-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
