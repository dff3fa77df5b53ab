"""`make infra-check` offline: medlake's chart renders to manifests Kubernetes' schemas accept, and
the check refuses a manifest or an Airflow values file that is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))

import check

pytestmark = [pytest.mark.infra]

if not check.HELM.exists():  # pragma: no cover - make test builds it (make infra-deps)
    pytest.skip("helm not built: run `make infra-deps`", allow_module_level=True)


def test_the_chart_renders_valid_manifests(tmp_path):
    out = tmp_path / "medlake.yaml"
    assert check.render(out) == []
    count, problems = check.validate(out)
    assert problems == []
    kinds = {d["kind"] for d in yaml.safe_load_all(out.read_text()) if d}
    assert kinds >= {"Deployment", "Service", "Role", "RoleBinding", "ServiceAccount", "NetworkPolicy", "ConfigMap"}
    assert count == 12


def test_an_unknown_field_fails_validation(tmp_path):
    out = tmp_path / "medlake.yaml"
    check.render(out)
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replicaCount"] = 2  # not a Deployment field (replicas is)
    out.write_text(yaml.safe_dump_all(docs))
    _, problems = check.validate(out)
    assert len(problems) == 1 and "replicaCount" in problems[0]


def test_the_airflow_values_pass_and_a_secret_value_is_refused(tmp_path):
    assert check.airflow_values(check.AIRFLOW_VALUES) == []
    values = yaml.safe_load(check.AIRFLOW_VALUES.read_text())
    values["fernetKey"] = "not-in-a-values-file"
    values["executer"] = "KubernetesExecutor"
    bad = tmp_path / "airflow-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    problems = check.airflow_values(bad)
    assert any("'executer'" in p for p in problems)
    assert any("fernetKey is a secret value" in p for p in problems)


def test_make_infra_check_exits_zero():
    done = subprocess.run([sys.executable, str(REPO / "infra" / "check.py"), "--out", str(REPO / "build" / "helm" / "t.yaml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problem(s)" in done.stdout
