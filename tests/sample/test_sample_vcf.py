"""The sample hospital's VCFs: deterministic, real VCF/BGZF, truthful, and linked to FHIR by MRN."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cyvcf2 import VCF

from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs import pipeline
from medlake.jobs.ingest import fhir, vcf
from medlake.jobs.stage import StageResult
from medlake.lake import Lake
from medlake.registry import BRONZE_FHIR, SILVER_VARIANTS, staging_name
from medlake.sample import generate
from medlake.sample.vcf import CONTROL, DEFECT_RULES, KNOWN_SITES, in_cohort, in_vcf
from medlake.sample.vocab import MRN_SYSTEM

PATIENTS = 40
SEED = 5
KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Run:
    landing: Path
    truth: dict[str, Any]
    lake: Lake
    ingest: StageResult
    staging: StageResult


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("vcf")
    landing = root / "landing"
    generate(landing, patients=PATIENTS, seed=SEED)
    lake = Lake(root / "lake")
    ingested = vcf.ingest(landing, lake, run_id="run-1", now=NOW)
    staged = vcf.to_staging(
        lake, run_id="run-1", key=KEY, max_shift_days=365, versions=ingested.versions
    )
    truth = json.loads((landing / "_truth.json").read_text())
    return Run(landing, truth, lake, ingested, staged)


def vcf_files(landing: Path) -> dict[str, bytes]:
    return {
        p.relative_to(landing).as_posix(): p.read_bytes()
        for p in sorted((landing / "vcf").rglob("*"))
        if p.is_file()
    }


def test_the_same_seed_writes_the_same_bytes(sample: Run, tmp_path: Path) -> None:
    generate(tmp_path / "again", patients=PATIENTS, seed=SEED)
    assert vcf_files(tmp_path / "again") == vcf_files(sample.landing)
    generate(tmp_path / "other", patients=PATIENTS, seed=SEED + 1)
    assert vcf_files(tmp_path / "other") != vcf_files(sample.landing)


def test_a_bgzipped_multi_sample_cohort_and_plain_single_sample_files(sample: Run) -> None:
    files = vcf_files(sample.landing)
    cohorts = [name for name in files if name.startswith("vcf/cohort/")]
    assert cohorts and all(name.endswith(".vcf.gz") for name in cohorts)
    assert all(files[name][:4] == b"\x1f\x8b\x08\x04" for name in cohorts)  # BGZF blocks
    reader = VCF(str(sample.landing / cohorts[0]))
    cohort_people = [i for i in range(PATIENTS) if in_cohort(i)]
    assert len(reader.samples) == len(cohort_people) + 1 and reader.samples[-1] == CONTROL
    variants = list(reader)
    assert {v.CHROM for v in variants} >= {"chr1", "chr6", "chr7", "chr17", "chr19", "chrX"}
    assert any(len(v.ALT) > 1 for v in variants)  # multi-allelic
    assert any(len(v.REF) != len(v.ALT[0]) for v in variants)  # indels
    assert any(-1 in g[:-1] for v in variants for g in v.genotypes)  # no-calls
    known = {(chrom, pos): rsid for chrom, pos, rsid, _, _ in KNOWN_SITES}
    assert {(v.CHROM, v.POS): v.ID for v in variants if (v.CHROM, v.POS) in known} == known
    singles = [n for n in files if n.startswith("vcf/single/")]
    assert singles and all(n.endswith(".vcf") for n in singles)
    sequenced = sum(1 for i in range(PATIENTS) if in_vcf(i))
    assert len(sample.truth["vcf_samples"]) == sequenced + len(cohorts)  # + one control per cohort


def test_the_truth_file_counts_every_record_ingest_reads(sample: Run) -> None:
    truth = sample.truth
    expected = sum(t["records"] for src, t in truth["files"].items() if src.startswith("vcf/"))
    assert sum(e.records_in for e in sample.ingest.entries) == expected
    assert truth["total_records"] == sum(t["records"] for t in truth["files"].values())


def test_every_planted_defect_is_quarantined_with_its_rule_and_line(sample: Run) -> None:
    planted = {
        (m["file"], m["offset"], m["rule"])
        for m in sample.truth["malformed"]
        if m["file"].startswith("vcf/")
    }
    assert {rule for _, _, rule in planted} == {rule for rule, _ in DEFECT_RULES.values()}
    quarantined = {
        (q["source_file"], q["source_offset"], q["rule_id"])
        for q in sample.lake.read("quarantine").to_pylist()
    }
    assert quarantined == planted
    for name, offset, _ in planted:  # the offset is the file's line (0: the whole file)
        if offset:
            text = (sample.landing / name).read_text().split("\n")[offset - 1]
            assert not text.startswith("#") and text.count("\t") >= 7


def test_silver_rows_per_sample_match_the_truth(sample: Run) -> None:
    rows = sample.lake.read(staging_name(SILVER_VARIANTS.name)).to_pylist()
    per_sample = Counter(r["sample_key"] for r in rows)
    expected: Counter[str] = Counter()
    for entry in sample.truth["vcf_samples"]:
        expected[source_key(KEY, "vcf", entry["sample"])] += entry["genotype_rows"]
    assert per_sample == expected
    (silver,) = sample.staging.entries
    assert silver.balanced and silver.quarantined == 0
    assert {r["genotype"] for r in rows} >= {"./.", "0/1", "0/0"}
    assert any(r["phased"] for r in rows)


def test_linked_samples_are_the_fhir_patients_of_their_mrn(sample: Run, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    pipeline.ingest(sample.landing, lake, run_id="run-1", now=NOW)  # FHIR into bronze
    patients = lake.read(
        BRONZE_FHIR.name, columns=["resource_id", "raw"], where={"resource_type": "Patient"}
    )
    fhir_persons = set(fhir.patient_aliases(patients, key=KEY).values())
    rows = sample.lake.read(staging_name(SILVER_VARIANTS.name)).to_pylist()
    persons = {r["sample_key"]: r["person_key"] for r in rows}
    for entry in sample.truth["vcf_samples"]:
        sample_key = source_key(KEY, "vcf", entry["sample"])
        if entry["mrn"] is None:
            assert entry["sample"] == CONTROL and persons[sample_key] == sample_key
        else:
            assert persons[sample_key] == mrn_key(KEY, MRN_SYSTEM, entry["mrn"])
            assert persons[sample_key] in fhir_persons
    leaked = {mrn for mrn in sample.truth["phi"]["mrns"] if mrn in json.dumps(rows, default=str)}
    assert leaked == set()
