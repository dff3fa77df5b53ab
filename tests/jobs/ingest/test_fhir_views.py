"""The FHIR flatteners read their columns from the ViewDefinitions; drift stays in bronze, reported."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from medlake.jobs.ingest import fhir
from medlake.jobs.views.engine import load_views
from medlake.registry import FHIR_SILVER

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
WARD = "http://hospital.example/fhir/StructureDefinition/ward"

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "birthDate": "1950-03-15",
    "extension": [{"url": WARD, "valueString": "B"}],
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2020-05-01T10:00:00+02:00",
    "valueQuantity": {
        "value": 72,
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    },
    "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003"}]},
}


def bronze(tmp_path: Path, *resources: dict) -> pa.Table:
    path = tmp_path / "fhir" / "a.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    raw = fhir.read_files(fhir.landing_files(tmp_path / "fhir"), root=tmp_path)
    return fhir.to_bronze(raw, run_id="r1", ingested_at=NOW).good


def test_one_view_file_per_fhir_silver_table() -> None:
    views = load_views(fhir.VIEW_DEFINITIONS)
    assert {v.resource for v in views.values()} == set(FHIR_SILVER)
    assert set(views) == {spec.name.split(".")[1] for spec in FHIR_SILVER.values()}


def test_drift_is_reported_and_the_resources_still_flatten(tmp_path: Path) -> None:
    rows = bronze(tmp_path, PATIENT, OBSERVATION)
    patients = fhir.patients_from_bronze(rows, key=KEY)
    observations = fhir.observations_from_bronze(rows, key=KEY)
    assert patients.quarantined.num_rows == 0 and observations.quarantined.num_rows == 0
    assert patients.good.column("gender").to_pylist() == ["female"]
    assert observations.good.column("value_num").to_pylist() == [72.0]
    unread = fhir.unread_elements(rows)
    assert unread["Patient"] == {f"Patient.extension({WARD}).valueString": 1}
    assert unread["Observation"] == {
        "Observation.bodySite.coding.system": 1,
        "Observation.bodySite.coding.code": 1,
    }


def test_an_element_fhir_r4_does_not_define_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    rows = bronze(tmp_path, {**OBSERVATION, "hospitalWard": "B"})
    split = fhir.observations_from_bronze(rows, key=KEY)
    assert split.good.num_rows == 0
    assert split.quarantined.column("rule_id").to_pylist() == ["validate.fhir_r4"]
    assert "Observation.hospitalWard" in fhir.unread_elements(rows)["Observation"]


def test_the_clean_stage_reports_drift_in_the_run_summary(tmp_path: Path) -> None:
    from medlake.jobs import pipeline
    from medlake.lake import Lake
    from medlake.summary import summarize

    landing = tmp_path / "landing"
    (landing / "fhir").mkdir(parents=True)
    lines = [json.dumps(PATIENT), json.dumps(OBSERVATION)]
    (landing / "fhir" / "export.ndjson").write_text("\n".join(lines) + "\n")
    lake = Lake(tmp_path / "lake")

    pipeline.ingest(landing, lake, run_id="run-drift")
    pipeline.clean(lake, run_id="run-drift", key=KEY, max_shift_days=30)

    drift = summarize(lake, run_id="run-drift")["schema_drift"]
    assert drift["Patient"] == {f"Patient.extension({WARD}).valueString": 1}
    assert "Observation.bodySite.coding.code" in drift["Observation"]
    assert lake.count("staging.patients") == 1 and lake.count("staging.observations") == 1
