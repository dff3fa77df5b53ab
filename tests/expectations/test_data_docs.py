"""Data Docs: every gate run leaves a browsable HTML site of its validation results in the lake."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.expectations import data_docs
from medlake.expectations.gate import GateFailed, run_gate, validate_gold
from medlake.lake import Lake
from medlake.registry import SILVER_CONDITIONS, SILVER_OBSERVATIONS, TableSpec, staging_name

OBS = SILVER_OBSERVATIONS.name


def stage(lake: Lake, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
    """Rows as the clean stage leaves them in ``staging.<table>`` (every column nullable)."""
    schema = pa.schema([f.with_nullable(True) for f in spec.schema])
    nullable = dataclasses.replace(spec, name=staging_name(spec.name), schema=schema)
    lake.write(
        nullable.name, pa.Table.from_pylist(rows, schema=schema), mode="overwrite", spec=nullable
    )


def obs(key: str, value: float, person_key: str | None = "pk") -> dict[str, Any]:
    return {
        "observation_key": key,
        "person_key": person_key,
        "status": "final",
        "code": "8867-4",
        "value_num": value,
        "value_unit": "/min",
        "effective_at": datetime(2024, 3, 1, tzinfo=UTC),
        "_record_hash": f"rh-{key}",
        "_source_kind": "fhir",
        "_run_id": "run-clean",
    }


def condition(key: str) -> dict[str, Any]:
    return {
        "condition_key": key,
        "person_key": "pk",
        "_record_hash": f"h-{key}",
        "_source_kind": "fhir",
        "_run_id": "r",
    }


def test_a_gate_run_builds_data_docs_naming_every_suite(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, [obs("ok", 72.0), obs("hr-900", 900.0)])
    stage(lake, SILVER_CONDITIONS, [condition("c1")])

    run_gate(lake, run_id="run-1", tables=[OBS, SILVER_CONDITIONS.name])

    index = data_docs.index_path(lake)
    assert index == lake.root / "_quality" / "data_docs" / "index.html" and index.is_file()
    html = index.read_text(encoding="utf-8")
    assert "silver_observations" in html and "silver_conditions" in html and "run-1" in html
    (page,) = (index.parent / "validations" / "silver_observations" / "run-1").rglob("*.html")
    assert "value_num" in page.read_text(encoding="utf-8")


def test_a_refused_run_still_builds_data_docs(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    stage(lake, SILVER_OBSERVATIONS, [obs(k, 72.0, person_key=None) for k in "abc"])

    with pytest.raises(GateFailed):
        run_gate(lake, run_id="run-9", tables=[OBS])

    html = data_docs.index_path(lake).read_text(encoding="utf-8")
    assert "silver_observations" in html and "run-9" in html
    assert not lake.exists(OBS)


def test_gold_validation_builds_its_own_site(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    features = {
        "person_key": "p1",
        "age_band": "40-44",
        "encounter_count": 1,
        "medication_count": 0,
        "medication_order_count": 0,
        "heart_rate_last": 70.0,
        "heart_rate_mean": 70.0,
        "body_weight_last": 70.0,
        "body_weight_mean": 70.0,
        "systolic_bp_last": 120.0,
        "systolic_bp_mean": 120.0,
        "_imputed": [],
    }
    lake.write("gold.ml_patient_features", pa.Table.from_pylist([features]), mode="overwrite")

    validate_gold(lake, run_id="run-1", tables=["gold.ml_patient_features"])

    index = data_docs.site_dir(lake) / "gold" / "index.html"
    assert "gold_ml_patient_features" in index.read_text(encoding="utf-8")
