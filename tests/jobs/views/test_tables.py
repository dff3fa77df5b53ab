"""Extra silver tables from view files: the example Immunization view over the real corpus."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from medlake.governance.deid import date_shift_days, shift_datetime
from medlake.jobs.ingest import fhir
from medlake.jobs.views.engine import ViewError, compile_view
from medlake.jobs.views.tables import load_view_tables, rows_from_bronze, view_table

KEY = bytes(range(32))
EXAMPLES = Path(fhir.__file__).resolve().parents[1] / "views" / "examples"
BULK = Path(__file__).resolve().parents[2] / "corpus" / "fhir" / "synthea_bulk_10pt"


@pytest.fixture(scope="module")
def bronze() -> pa.Table:
    raw = fhir.read_files(fhir.landing_files(BULK), root=BULK)
    return fhir.to_bronze(raw, run_id="r1", ingested_at=datetime(2026, 1, 1, tzinfo=UTC)).good


def test_adding_a_view_file_adds_a_pseudonymized_date_shifted_table(bronze: pa.Table) -> None:
    tables = load_view_tables(EXAMPLES, reserved={"silver.patients"})
    table = tables["immunizations"]
    assert table.spec.name == "silver.immunizations"
    aliases = fhir.patient_aliases(bronze, key=KEY)  # Patient id → its MRN's person key
    split = rows_from_bronze(bronze, table, key=KEY, aliases=aliases)
    immunizations = [
        json.loads(r)
        for r, t in zip(bronze["raw"].to_pylist(), bronze["resource_type"].to_pylist())
        if t == "Immunization"
    ]
    assert split.quarantined.num_rows == 0
    assert split.good.num_rows == len(immunizations) > 100
    patients = set(
        fhir.patients_from_bronze(bronze, key=KEY, aliases=aliases)
        .good.column("person_key")
        .to_pylist()
    )
    encounters = set(
        fhir.encounters_from_bronze(bronze, key=KEY).good.column("encounter_key").to_pylist()
    )
    rows = split.good.to_pylist()
    assert {r["person_key"] for r in rows} <= patients
    assert {r["encounter_key"] for r in rows} <= encounters
    first, raw = rows[0], immunizations[0]
    assert first["cvx_code"] == raw["vaccineCode"]["coding"][0]["code"]
    shift = int(date_shift_days(KEY, first["person_key"], max_days=365))
    occurred = fhir.parse_datetime(raw["occurrenceDateTime"])
    assert first["occurred_at"] == shift_datetime(occurred, shift) != occurred
    assert raw["id"] not in json.dumps([r["immunization_key"] for r in rows])


def _view(*columns: dict) -> dict:
    return {"resource": "Immunization", "select": [{"column": list(columns)}]}


PERSON = {"name": "person_key", "path": "patient.getReferenceKey(Patient)"}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (
            _view(PERSON, {"name": "lot", "path": "lotNumber", "type": "string"}),
            "could carry an identifier",
        ),
        (_view({"name": "status", "path": "status", "type": "code"}), "exactly one Patient key"),
        (
            _view(PERSON, {"name": "loc", "path": "location.getReferenceKey()"}),
            "needs the target type",
        ),
    ],
)
def test_a_view_that_could_leak_phi_is_refused(definition: dict, message: str) -> None:
    with pytest.raises(ViewError, match=message):
        view_table(compile_view(definition), name="x")


def test_a_view_cannot_replace_a_built_in_table(tmp_path: Path) -> None:
    (tmp_path / "patients.json").write_text(json.dumps({**_view(PERSON), "name": "patients"}))
    with pytest.raises(ViewError, match="would replace the table silver.patients"):
        load_view_tables(tmp_path, reserved={"silver.patients"})


def test_a_type_an_extra_view_reads_is_not_counted_bronze_only(bronze: pa.Table) -> None:
    everything = fhir.bronze_only_from_bronze(bronze).good
    viewed = fhir.bronze_only_from_bronze(bronze, viewed=["Immunization"]).good
    immunizations = sum(t == "Immunization" for t in bronze["resource_type"].to_pylist())
    assert immunizations > 0
    assert viewed.num_rows == everything.num_rows - immunizations
