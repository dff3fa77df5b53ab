"""The sample hospital's CSV extracts: deterministic, read by their own mapping files, every planted
defect quarantined where the truth file says, units and codes standardized, linked to FHIR by MRN."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medlake.governance.pseudonyms import mrn_key
from medlake.jobs.ingest import csv
from medlake.jobs.stage import StageResult
from medlake.lake import Lake
from medlake.registry import BRONZE_CSV
from medlake.sample.csv import DEFECT_RULES, in_csv, write_csv
from medlake.sample.people import Hospital
from medlake.sample.truth import Truth
from medlake.sample.vocab import MRN_SYSTEM

PATIENTS = 40
SEED = 9
KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Landing:
    out: Path
    truth: dict[str, Any]
    lake: Lake
    ingested: StageResult
    staged: StageResult


def build(root: Path, *, patients: int = PATIENTS, seed: int = SEED) -> Landing:
    """The CSV part of a landing folder, ingested and staged into a fresh lake."""
    out = root / "landing"
    hospital, truth = Hospital(patients=patients, seed=seed), Truth(seed=seed, patients=patients)
    write_csv(hospital, out, truth)
    lake = Lake(root / "lake")
    ingested = csv.ingest(out, lake, run_id="r1", now=NOW)
    staged = csv.to_staging(
        lake, run_id="r1", key=KEY, max_shift_days=30, versions=ingested.versions
    )
    return Landing(out, truth.as_dict(), lake, ingested, staged)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Landing:
    return build(tmp_path_factory.mktemp("sample"))


def files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
    }


def test_same_inputs_give_the_same_bytes(tmp_path, landing):
    again = build(tmp_path)
    assert files(again.out) == files(landing.out)
    assert again.truth == landing.truth


def test_every_record_read_is_in_the_truth_file_and_the_ledger_adds_up(landing):
    csv_files = {k: v for k, v in landing.truth["files"].items() if k.startswith("csv/")}
    assert set(csv_files) == {"csv/labs", "csv/diagnoses", "csv/exports"}
    [ingest] = landing.ingested.entries
    assert ingest.records_in == sum(t["records"] for t in csv_files.values())
    assert all(e.balanced for e in landing.ingested.entries + landing.staged.entries)


def test_every_planted_defect_is_quarantined_at_its_line_with_its_rule(landing):
    planted = {(m["file"], m["offset"], m["rule"]) for m in landing.truth["malformed"]}
    assert {rule for _, _, rule in planted} == {r for r, _ in DEFECT_RULES.values()} | {
        "parse.csv_wrong_delimiter",
        "ingest.no_mapping",
    }
    found = {
        (q["source_file"], q["source_offset"], q["rule_id"])
        for q in landing.lake.read("quarantine").to_pylist()
    }
    assert found == planted  # and nothing else: every other line is well-formed


def test_the_latin1_extract_is_declared_and_its_names_decoded(landing):
    data = (landing.out / "csv" / "diagnoses" / "diagnoses.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert "encoding: latin-1" in (landing.out / "csv" / "diagnoses.mapping.yaml").read_text()
    raws = (
        landing.lake.read(BRONZE_CSV.name, where={"extract": "diagnoses"}).column("raw").to_pylist()
    )
    names = set(landing.truth["phi"]["names"])
    assert any(
        not word.isascii() and word in names
        for raw in raws
        for word in raw.replace('"', " ").split()
    )


def test_units_and_local_codes_are_standardized(landing):
    spoiled = {m["offset"] for m in landing.truth["malformed"]}
    rows = landing.lake.read("staging.observations").to_pylist()
    assert not [r for r in rows if r["code_system"] != "http://loinc.org"]
    converted = [r for r in rows if r["_unit_converted_from"] is not None]
    mixed = [u for u in landing.truth["csv_unit_mix"] if u["offset"] not in spoiled]
    assert mixed and len(converted) == len(mixed)
    by_value = sorted((r["_value_original"], r["value_num"]) for r in converted)
    expected = sorted((u["value"], u["canonical_value"]) for u in mixed)
    for (original, value), (planted, canonical) in zip(by_value, expected, strict=True):
        assert original == planted and value == pytest.approx(canonical, rel=0.02)
    local = [u for u in landing.truth["csv_local_coded"] if u["offset"] not in spoiled]
    assert local and sum(r["mapping_status"] == "mapped" for r in rows) == len(local)


def test_rows_belong_to_the_persons_of_their_mrn(landing):
    hospital = Hospital(patients=PATIENTS, seed=SEED)
    expected = {
        mrn_key(KEY, MRN_SYSTEM, p.chart.registration.mrn)
        for p in hospital.people()
        if in_csv(p.index)
    }
    for table in ("staging.observations", "staging.conditions"):
        persons = set(landing.lake.read(table, columns=["person_key"]).column(0).to_pylist())
        assert persons and persons <= expected


def test_a_small_hospital_gets_no_planted_defects(tmp_path):
    small = build(tmp_path, patients=6, seed=3)
    assert not [m for m in small.truth["malformed"] if m["file"].startswith("csv/")]
    assert small.lake.count("quarantine") == 0
    assert json.loads(json.dumps(small.truth))["files"]["csv/labs"]["files"] == 1
