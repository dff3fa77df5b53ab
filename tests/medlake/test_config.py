"""Settings: every one documented in the README, and lake roots on an object store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medlake.config import (
    REPO_ROOT,
    lake_root,
    load_settings,
    object_uri,
    remote_dir,
    settings_table,
)
from medlake.lake import Lake
from medlake.storage import LakePath, lake_path


def test_every_setting_is_in_the_readme_table():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name, _, _ in settings_table() if f"`{name}`" not in readme]
    assert not missing, f"add these settings to the README's table: {missing}"


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
