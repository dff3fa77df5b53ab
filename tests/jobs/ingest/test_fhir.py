"""FHIR R4 parsing, validation and flattening, on hand-made files and on the real corpus."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from medlake.jobs.ingest import fhir
from medlake.quarantine import by_rule

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "fhir"

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Lindqvist", "given": ["Astrid"]}],
    "telecom": [{"system": "phone", "value": "555-0101"}],
    "gender": "female",
    "birthDate": "1950-03-15",
    "address": [{"line": ["12 Elm St"], "city": "Boston", "state": "MA", "postalCode": "02115"}],
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2020-05-01T10:00:00+02:00",
    "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    "note": [{"text": "Astrid called from 555-0101"}],
}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def bronze_of(tmp_path: Path, files: dict[str, str | bytes]) -> fhir.Split:
    for name, content in files.items():
        write(tmp_path, name, content)
    raw = fhir.read_files(fhir.landing_files(tmp_path), root=tmp_path)
    return fhir.to_bronze(raw, run_id="r1", ingested_at=NOW)


@pytest.mark.parametrize(
    ("name", "content", "rule", "offset"),
    [
        ("a.ndjson", json.dumps(PATIENT) + "\n{not json\n", "parse.bad_json", 2),
        ("a.ndjson", json.dumps(PATIENT) + "\n[1, 2]\n", "parse.not_a_resource", 2),
        ("a.ndjson", json.dumps(PATIENT) + '\n{"id": "x"}\n', "parse.not_a_resource", 2),
        ("a.ndjson", json.dumps(PATIENT) + '\n{"resourceType": "Patinet", "id": "x"}\n', "parse.unknown_resource_type", 2),
        ("a.ndjson", json.dumps(PATIENT).encode() + b"\n\xff\xfe\n", "parse.bad_encoding", 2),
        ("b.json", "", "parse.empty_file", 0),
        ("b.json", '{"resourceType": "Bundle", "entry": [', "parse.bad_json", 0),
        ("b.json", "[1, 2, 3]", "parse.not_a_resource", 0),
        ("b.json", '{"resourceType": "Bundle", "type": "batch", "entry": []}', "parse.empty_bundle", 0),
        ("b.json", json.dumps({"resourceType": "Bundle", "entry": [{"resource": PATIENT}, {"fullUrl": "x"}]}),
         "parse.bundle_entry_without_resource", 2),
    ],
)
def test_malformed_input_is_quarantined_with_file_offset_and_reason(tmp_path, name, content, rule, offset):
    split = bronze_of(tmp_path, {name: content})
    bad = split.quarantined.to_pylist()
    assert [b["rule_id"] for b in bad] == [rule]
    assert bad[0]["source_file"] == name and bad[0]["source_offset"] == offset
    assert name in bad[0]["reason"]
    assert split.good.num_rows + len(bad) == fhir.read_files(fhir.landing_files(tmp_path), root=tmp_path).num_rows


def test_bundle_entries_become_records_with_their_position(tmp_path):
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"fullUrl": "urn:uuid:p1", "resource": PATIENT}, {"resource": OBSERVATION}]}
    split = bronze_of(tmp_path, {"fhir/b.json": json.dumps(bundle)})
    rows = split.good.to_pylist()
    assert [(r["resource_type"], r["_source_offset"]) for r in rows] == [("Patient", 1), ("Observation", 2)]
    assert split.quarantined.num_rows == 0


def test_same_resource_in_two_files_has_one_hash(tmp_path):
    split = bronze_of(tmp_path, {"a.ndjson": json.dumps(PATIENT) + "\n", "b.json": json.dumps(PATIENT, indent=2)})
    hashes = split.good.column("_record_hash").to_pylist()
    assert len(hashes) == 2 and hashes[0] == hashes[1]


def test_ndjson_line_is_kept_verbatim(tmp_path):
    line = json.dumps(PATIENT, indent=None, separators=(", ", ": "))
    split = bronze_of(tmp_path, {"a.ndjson": line + "\n"})
    assert split.good.column("raw").to_pylist() == [line]


def bronze_rows(*resources: dict) -> pa.Table:
    rows = [
        {"resource_type": r["resourceType"], "resource_id": r.get("id"), "raw": json.dumps(r),
         "_source_file": "x.ndjson", "_source_offset": i + 1, "_ingested_at": NOW,
         "_record_hash": fhir.record_hash(r), "_run_id": "r1"}
        for i, r in enumerate(resources)
    ]
    return pa.Table.from_pylist(rows, schema=fhir.BRONZE_FHIR.schema)


def test_patient_loses_direct_identifiers_and_dates_shift_by_a_keyed_offset():
    split = fhir.patients_from_bronze(bronze_rows(PATIENT), key=KEY, max_shift_days=365)
    (row,) = split.good.to_pylist()
    text = json.dumps(row, default=str)
    for phi in ("Lindqvist", "Astrid", "555-0101", "Elm", "Boston", "p1", "1950-03-15"):
        assert phi not in text
    assert row["zip3"] == "021" and row["state"] == "MA" and row["gender"] == "female"
    shift = (row["birth_date"] - date(1950, 3, 15)).days
    assert shift != 0 and abs(shift) <= 365
    assert row["person_key"] == fhir.Pseudonymizer(KEY).person("p1")
    other_key = fhir.patients_from_bronze(bronze_rows(PATIENT), key=bytes(32), max_shift_days=365)
    assert other_key.good.column("person_key")[0] != split.good.column("person_key")[0]


def test_observation_keeps_interval_to_birth_and_drops_free_text():
    patient = fhir.patients_from_bronze(bronze_rows(PATIENT), key=KEY).good.to_pylist()[0]
    obs = fhir.observations_from_bronze(bronze_rows(OBSERVATION), key=KEY).good.to_pylist()[0]
    assert obs["person_key"] == patient["person_key"]
    assert obs["code"] == "8867-4" and obs["value_num"] == 72.0 and obs["value_unit"] == "/min"
    assert (obs["effective_at"].date() - patient["birth_date"]).days == (date(2020, 5, 1) - date(1950, 3, 15)).days
    assert "555-0101" not in json.dumps(obs, default=str)


def test_blood_pressure_panel_becomes_one_row_per_component():
    bp = {**OBSERVATION, "id": "bp", "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
          "component": [
              {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
               "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
              {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
               "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
    del bp["valueQuantity"]
    rows = fhir.observations_from_bronze(bronze_rows(bp), key=KEY).good.to_pylist()
    assert [(r["code"], r["value_num"], r["panel_code"]) for r in rows] == [("8480-6", 120.0, "85354-9"), ("8462-4", 80.0, "85354-9")]
    assert len({r["observation_key"] for r in rows}) == 2


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"status": None}, "validate.fhir_r4"),
        ({"code": None}, "validate.fhir_r4"),
        ({"valueQuantity": {"value": "abc"}}, "validate.fhir_r4"),
        ({"subject": None}, "silver.missing_subject"),
    ],
)
def test_invalid_observation_is_quarantined_naming_file_record_and_problem(change, rule):
    obs = {k: v for k, v in {**OBSERVATION, **change}.items() if v is not None}
    split = fhir.observations_from_bronze(bronze_rows(obs), key=KEY)
    assert split.good.num_rows == 0
    (bad,) = split.quarantined.to_pylist()
    assert bad["rule_id"] == rule
    assert "x.ndjson record 1 (Observation/o1)" in bad["reason"]
    assert "abc" not in bad["reason"]  # values never echoed: they may be PHI


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("Patient/1", "1"), ("urn:uuid:ab-12", "ab-12"), ("http://x/fhir/Patient/7/_history/2", "7"), (None, None)],
)
def test_reference_forms(ref, expected):
    assert fhir.reference_id({"reference": ref} if ref else None) == expected


def test_partial_and_zoned_datetimes_become_utc():
    assert fhir.parse_datetime("2020") == datetime(2020, 1, 1, tzinfo=UTC)
    assert fhir.parse_datetime("2020-05") == datetime(2020, 5, 1, tzinfo=UTC)
    assert fhir.parse_datetime("2020-05-01T10:00:00+02:00") == datetime(2020, 5, 1, 8, tzinfo=UTC)


def test_every_corpus_record_is_accounted_for():
    assert CORPUS.is_dir(), f"the vendored corpus is expected at {CORPUS}"
    raw = fhir.read_files(fhir.landing_files(CORPUS), root=CORPUS)
    split = fhir.to_bronze(raw, run_id="r1", ingested_at=NOW)
    assert split.good.num_rows + split.quarantined.num_rows == raw.num_rows
    # the bulk export logs are not FHIR resources; everything else is
    assert by_rule(split.quarantined) == {"parse.not_a_resource": 8}
    assert set(split.quarantined.column("source_file").to_pylist()) == {
        "synthea_bulk_10pt/log.ndjson", "synthea_bulk_100pt/log.ndjson"}
    bronze = pl.from_arrow(split.good).unique("_record_hash", maintain_order=True).to_arrow()  # as bronze's MERGE does
    silver_in = 0
    for transform in (fhir.patients_from_bronze, fhir.encounters_from_bronze, fhir.observations_from_bronze,
                      fhir.conditions_from_bronze, fhir.medications_from_bronze):
        out = transform(bronze, key=KEY)
        silver_in += len(set(out.good.column("_record_hash").to_pylist())) + out.quarantined.num_rows
    rest = fhir.bronze_only_from_bronze(bronze)
    assert silver_in + rest.good.num_rows + rest.quarantined.num_rows == bronze.num_rows
