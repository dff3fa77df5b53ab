"""Settings: every one in the README's table with its default, and lake roots on an object store."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medlake.config import (
    lake_root,
    load_settings,
    object_uri,
    remote_dir,
    settings_table,
)
from medlake.lake import Lake
from medlake.storage import LakePath, lake_path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z0-9_]+)`[^|]* \| ([^|]*) \|", README.read_text(), re.MULTILINE)
    return {name: default.strip() for name, default in rows}


@pytest.mark.parametrize(("name", "default"), [(n, d) for n, d, _ in settings_table()])
def test_every_setting_is_in_the_readme_table_with_its_default(name: str, default: str) -> None:
    documented = readme_settings()
    assert name in documented, f"{name} is missing from the README's settings table"
    shown = "unset" if default in ("None", "") else default  # no value: the README says unset
    assert documented[name] == shown


@pytest.mark.parametrize("given", ["s3://lake/prod/a", "s3:/lake/prod/a", Path("s3://lake/prod/a")])
def test_an_s3_lake_maps_to_one_local_folder_and_back(given):
    root = lake_root(given)
    assert root == remote_dir() / "s3" / "lake" / "prod" / "a"
    assert object_uri(root) == "s3://lake/prod/a"
    assert load_settings(lake=given).lake.root == root.resolve()


@pytest.mark.parametrize("bad", ["s3://", "s3:///", "s3://../etc"])
def test_an_s3_uri_without_a_bucket_is_refused(bad):
    with pytest.raises(ValueError, match="names no bucket"):
        lake_root(bad)


def test_a_local_lake_stays_a_folder(tmp_path):
    lake = Lake(tmp_path)
    assert not lake.remote
    assert lake.location == str(tmp_path)
    assert lake.uri("silver.patients") == str(tmp_path / "silver" / "patients")
    assert type(lake.path("audit")) is not LakePath
    assert object_uri(tmp_path) is None


def test_a_remote_lake_names_tables_by_uri_and_keeps_files_local():
    lake = Lake(lake_root("s3://lake/x"))
    assert lake.remote and lake.location == "s3://lake/x"
    assert lake.uri("silver.patients") == "s3://lake/x/silver/patients"
    assert lake.scratch_uri("bronze.fhir_resources", run_id="manual__1:2").startswith("s3://lake/x/_scratch/")
    lock = lake.path("audit") / ".lock"
    assert str(lock) == "s3://lake/x/audit/.lock"
    assert os.fspath(lock) == str(remote_dir() / "s3" / "lake" / "x" / "audit" / ".lock")
    assert str(lake_path(lake.root)) == "s3://lake/x"


def test_a_wheel_install_keeps_nothing_off_the_repository_root(tmp_path):
    """Installed as a wheel (the package outside a checkout), the defaults point inside the package
    (DAGs, dbt project), into $HOME (state) and the environment (jars), never at the folder above it."""
    import subprocess
    import sys

    import medlake.config

    site = tmp_path / "site-packages"
    (site / "medlake").mkdir(parents=True)
    (site / "medlake" / "config.py").write_text(Path(medlake.config.__file__).read_text())
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u; "
        "spec = u.spec_from_file_location('wheel_config', sys.argv[1] + '/medlake/config.py'); "
        "m = u.module_from_spec(spec); sys.modules['wheel_config'] = m; spec.loader.exec_module(m); "
        "s = m.Settings(); "
        "print(m.IN_CHECKOUT, m.STATE_DIR, s.airflow.dags_folder, s.dbt.project_dir, s.spark.jars_dir, sep='\\n')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE")}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", probe, str(site)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    in_checkout, state, dags, dbt, jars = done.stdout.split("\n")[:5]
    assert in_checkout == "False"
    assert state == str(tmp_path / "home" / ".medlake")
    assert dags == str(site / "medlake" / "dags")
    assert dbt == str(site / "medlake" / "dbt")
    assert jars == str(Path(sys.prefix) / "jars")


def test_the_wheel_carries_every_dag_and_dbt_file():
    """pyproject's package data for medlake.dbt covers every file of the dbt project git tracks."""
    import fnmatch
    import subprocess
    import tomllib

    root = README.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert data["package-dir"]["medlake.dags"] == "dags" and data["package-dir"]["medlake.dbt"] == "dbt"
    globs = data["package-data"]["medlake.dbt"]
    tracked = subprocess.run(["git", "ls-files", "dbt", "dags"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    for path in tracked:
        folder, rel = path.split("/", 1)
        if folder == "dags":
            assert rel.endswith(".py") and "/" not in rel, path  # modules of medlake.dags
        else:
            assert any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(rel, g.replace("**/", "")) for g in globs), path
