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
