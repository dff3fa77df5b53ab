"""`make infra-check`: the Kubernetes description checked offline.

1. ``helm lint`` and ``helm template`` on medlake's chart (helm built from the Go module proxy);
2. every rendered manifest validated against the Kubernetes JSON schemas that the PyPI package
   kubernetes-validate bundles (strict: an unknown field fails);
3. the values file for the official Airflow chart (in no registry CI reaches, so it cannot be
   rendered here) parsed and its keys checked against the chart's top-level keys below.

Exit 0 when all pass; otherwise each problem is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "infra" / "helm" / "medlake"
AIRFLOW_VALUES = REPO / "infra" / "helm" / "airflow-values.yaml"
HELM = REPO / ".venv" / "infra-bin" / "helm"
KUBERNETES_VERSION = "1.33.0"

#: top-level keys of the official Airflow chart's values (chart/values.yaml, 1.18) that we set
AIRFLOW_CHART_KEYS = {
    "executor", "airflowVersion", "images", "postgresql", "redis", "pgbouncer", "data",
    "fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName", "dags", "extraEnvFrom", "env",
    "config", "dagProcessor", "scheduler", "apiServer", "triggerer", "networkPolicies", "rbac",
    "createUserJob", "defaultAirflowRepository", "defaultAirflowTag", "workers", "logs", "secret",
    "extraSecrets", "extraConfigMaps", "webserverSecretKeySecretName", "ingress", "labels",
}
AIRFLOW_EXECUTORS = {"LocalExecutor", "CeleryExecutor", "KubernetesExecutor", "CeleryKubernetesExecutor"}


def render(out: Path) -> list[str]:
    """Lint and render the chart into ``out``; the problems helm reports."""
    problems: list[str] = []
    lint = subprocess.run([str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False)
    if lint.returncode != 0:
        problems.append(f"helm lint: {lint.stdout.strip()} {lint.stderr.strip()}")
    rendered = subprocess.run(
        [str(HELM), "template", "medlake", str(CHART), "--namespace", "medlake", "--kube-version", KUBERNETES_VERSION],
        capture_output=True, text=True, check=False,
    )
    if rendered.returncode != 0:
        problems.append(f"helm template: {rendered.stderr.strip()}")
    out.write_text(rendered.stdout)
    return problems


def validate(rendered: Path) -> tuple[int, list[str]]:
    """How many manifests, and the schema errors of each (kind/name: message)."""
    import kubernetes_validate

    problems: list[str] = []
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {error.message} at {'.'.join(str(p) for p in error.path)}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: no schema ({error})")
    return len(docs), problems


def airflow_values(path: Path) -> list[str]:
    """Problems of the values file for the official Airflow chart."""
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    problems = [f"{path.name}: unknown key {k!r}" for k in sorted(set(values) - AIRFLOW_CHART_KEYS)]
    if values.get("executor") not in AIRFLOW_EXECUTORS:
        problems.append(f"{path.name}: executor {values.get('executor')!r} is not one of {sorted(AIRFLOW_EXECUTORS)}")
    if values.get("postgresql", {}).get("enabled") is not False:
        problems.append(f"{path.name}: the metadata DB must be the hospital's PostgreSQL (postgresql.enabled: false)")
    secrets = ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName")
    problems += [f"{path.name}: {k} must name a Kubernetes Secret" for k in secrets if not values.get(k)]
    if not values.get("data", {}).get("metadataSecretName"):
        problems.append(f"{path.name}: data.metadataSecretName must name a Kubernetes Secret")
    if not values.get("dags", {}).get("gitSync", {}).get("enabled"):
        problems.append(f"{path.name}: dags.gitSync must be enabled")
    for secret_value in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        if values.get(secret_value):
            problems.append(f"{path.name}: {secret_value} is a secret value; name a Secret instead")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "helm" / "medlake.yaml")
    args = parser.parse_args(argv)
    if not HELM.exists():
        print(f"no {HELM}: run `make infra-check` (it builds helm from the Go module proxy)")
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    problems = render(args.out)
    count, invalid = validate(args.out)
    problems += invalid + airflow_values(AIRFLOW_VALUES)
    for problem in problems:
        print(problem)
    print(f"{count} manifests rendered to {args.out}, validated against Kubernetes {KUBERNETES_VERSION}; "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
