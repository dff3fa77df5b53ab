"""A hospital adds a silver table by adding a ViewDefinition file: the pipeline stages, gates and
accounts for it like a built-in table (Immunization over the Synthea bulk corpus)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medlake import ledger
from medlake.jobs import pipeline
from medlake.jobs.views import tables
from medlake.lake import Lake

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "fhir" / "synthea_bulk_10pt"
EXAMPLE = Path(tables.__file__).parent / "examples" / "immunizations.json"
RUN = "extra-views-1"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("extra-views")
    shutil.copytree(CORPUS, root / "landing" / "fhir")
    views = root / "views"
    views.mkdir()
    shutil.copy(EXAMPLE, views / EXAMPLE.name)
    lake = str(root / "lake")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDLAKE__VIEWS__EXTRA_DIR", str(views))
        ingested = pipeline.task_ingest(str(root / "landing"), lake, run_id=RUN)
        versions = ingested["versions"]
        pipeline.task_clean(
            lake,
            run_id=RUN,
            bronze_version=versions["bronze.fhir_resources"],
            hl7v2_version=versions["bronze.hl7v2_messages"],
            versions=versions,
        )
        gated = pipeline.task_gate(lake, run_id=RUN)
    return {"lake": Lake(Path(lake)), "gated": gated}


def test_the_view_file_becomes_a_gated_silver_table(run):
    lake = run["lake"]
    assert "silver.immunizations" in run["gated"]["versions"]
    rows = lake.read("silver.immunizations").to_pylist()
    assert len(rows) == 161
    persons = set(lake.read("silver.patients", columns=["person_key"]).column(0).to_pylist())
    encounters = set(lake.read("silver.encounters", columns=["encounter_key"]).column(0).to_pylist())
    assert {r["person_key"] for r in rows} <= persons  # pseudonymized like every silver key
    assert {r["encounter_key"] for r in rows if r.get("encounter_key")} <= encounters


def test_its_resources_are_counted_once_in_the_ledger(run):
    entries = {(e["stage"], e["table_name"]): e for e in ledger.for_run(run["lake"], RUN)}
    assert all(e["balanced"] for e in entries.values())
    own = entries[("silver", "silver.immunizations")]
    assert own["records_in"] == own["records_out"] + own["quarantined"] + own["bronze_only"] == 161
    ingest = entries[("ingest", "bronze.fhir_resources")]
    silver_in = sum(e["records_in"] for (stage, _), e in entries.items() if stage == "silver")
    assert silver_in == ingest["records_out"]  # Immunizations no longer also bronze-only
