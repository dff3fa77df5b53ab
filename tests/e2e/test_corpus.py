"""The pipeline's stages on real third-party FHIR nobody here wrote (Synthea bulk and bundles,
HL7 spec examples): every resource is accounted for, and de-identification holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medlake import ledger
from medlake.jobs import pipeline
from medlake.lake import Lake
from medlake.quarantine import by_rule

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "fhir"
RUN = "corpus-run-1"


@pytest.fixture(scope="module")
def corpus_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    assert CORPUS.is_dir(), f"the vendored corpus is expected at {CORPUS}"
    root = tmp_path_factory.mktemp("corpus")
    shutil.copytree(CORPUS, root / "landing" / "fhir")
    lake = Lake(root / "lake")
    ingested = pipeline.task_ingest(str(root / "landing"), str(lake.root), run_id=RUN)
    versions = ingested["versions"]
    pipeline.task_clean(str(lake.root), run_id=RUN, bronze_version=versions["bronze.fhir_resources"],
                        hl7v2_version=versions["bronze.hl7v2_messages"], versions=versions)
    pipeline.task_gate(str(lake.root), run_id=RUN)
    pipeline.task_gold(str(lake.root), run_id=RUN)
    return lake


def test_every_corpus_resource_is_accounted_for(corpus_lake):
    entries = ledger.for_run(corpus_lake, RUN)
    assert entries and all(e["balanced"] for e in entries)
    ingest = next(e for e in entries if e["stage"] == "ingest" and e["table_name"] == "bronze.fhir_resources")
    lines = sum(1 for p in CORPUS.rglob("*.ndjson") for line in p.read_text().splitlines() if line.strip())
    assert ingest["records_in"] > lines  # every ndjson line plus every bundle entry / single resource
    assert ingest["records_out"] + ingest["merged"] + ingest["quarantined"] == ingest["records_in"]
    silver_in = sum(e["records_in"] for e in entries if e["stage"] == "silver")
    assert silver_in == ingest["records_out"]


def test_corpus_quarantine_holds_only_what_is_not_fhir_or_invalid(corpus_lake):
    rules = by_rule(corpus_lake.read("quarantine"))
    assert rules.get("parse.not_a_resource") == 8  # the two bulk-export log.ndjson files
    assert set(rules) <= {"parse.not_a_resource", "validate.fhir_r4", "silver.missing_id", "gate.body_weight_range",
                          "gate.heart_rate_range", "gate.body_temperature_range", "gate.encounter_key_known"}
    # the HL7 spec's body-weight example names an Encounter the corpus does not hold
    assert rules.get("gate.encounter_key_known") == 1


def test_bronze_only_types_are_counted_not_lost(corpus_lake):
    entry = next(e for e in ledger.for_run(corpus_lake, RUN)
                 if e["stage"] == "silver" and e["table_name"] == "bronze.fhir_resources")
    assert entry["bronze_only"] > 4000  # Procedure, DocumentReference, Immunization, Claim, …


def test_gold_has_a_row_per_synthea_person_and_no_names(corpus_lake):
    persons = set(corpus_lake.read("silver.patients", columns=["person_key"]).column("person_key").to_pylist())
    assert corpus_lake.count("gold.ml_patient_features") == len(persons) > 100
    # Synthea bundle file names embed patient names (Bibi254_Schowalter414_…): never past bronze
    names = {p.name.split("_")[0] for p in (CORPUS / "synthea_bundles_covid_r4").glob("*_*_*.json")}
    for table in ("silver.patients", "silver.observations", "gold.ml_patient_features"):
        text = str(corpus_lake.read(table).to_pylist())
        assert not [n for n in names if n in text], table
