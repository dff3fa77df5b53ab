"""The sample hospital's PACS export: deterministic, truthful, PHI-bearing, and tied to the same
people (MRN, visit dates) as the FHIR and HL7 v2 feeds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import mrn_key
from medlake.jobs.ingest import dicom
from medlake.lake import Lake
from medlake.sample.dicom import PRIVATE_CREATOR, in_dicom, write_dicom
from medlake.sample.people import Hospital
from medlake.sample.truth import Truth
from medlake.sample.vocab import MRN_SYSTEM

PATIENTS = 24
SEED = 5
KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_SHIFT = 365


def export(out: Path, *, patients: int = PATIENTS, seed: int = SEED) -> dict[str, Any]:
    truth = Truth(seed=seed, patients=patients)
    write_dicom(Hospital(patients=patients, seed=seed), out, truth)
    return truth.as_dict()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pacs")
    out, lake = root / "landing", Lake(root / "lake")
    truth = export(out)
    ingested = dicom.ingest(out, lake, run_id="r1", now=NOW)
    staged = dicom.to_staging(
        lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    return {"out": out, "lake": lake, "truth": truth, "entries": ingested.entries + staged.entries}


def files_below(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    export(tmp_path / "a")
    export(tmp_path / "b")
    first = files_below(tmp_path / "a")
    assert first and first == files_below(tmp_path / "b")
    export(tmp_path / "c", seed=SEED + 1)
    assert files_below(tmp_path / "c") != first


def test_truth_counts_match_the_files(sample: dict[str, Any]) -> None:
    truth, out = sample["truth"], sample["out"]
    on_disk = files_below(out / "dicom")
    assert truth["files"]["dicom"] == {"files": len(on_disk), "records": len(on_disk)}
    planted = {f for study in truth["imaging"] for f in study["files"]}
    broken = {m["file"] for m in truth["malformed"]}
    assert {f"dicom/{name}" for name in on_disk} == planted | broken
    imaged = [i for i in range(PATIENTS) if in_dicom(i)]
    assert [s["person"] for s in truth["imaging"]] == imaged
    assert {s["modality"] for s in truth["imaging"]} == {"CT", "MR"}


def test_a_small_hospital_plants_no_broken_files(tmp_path: Path) -> None:
    truth = export(tmp_path / "small", patients=6)
    assert truth["imaging"] and truth["malformed"] == []


def test_headers_carry_the_people_s_phi_and_visit(sample: dict[str, Any]) -> None:
    hospital = Hospital(patients=PATIENTS, seed=SEED)
    for study in sample["truth"]["imaging"]:
        person = hospital.person(study["person"])
        reg, visit = person.chart.registration, person.chart.visits[0]
        for name in study["files"]:
            ds = pydicom.dcmread(sample["out"] / name)
            assert (
                (ds.PatientID, ds.IssuerOfPatientID)
                == (reg.mrn, MRN_SYSTEM)
                == (study["mrn"], MRN_SYSTEM)
            )
            assert ds.PatientName.family_name == reg.family
            assert ds.PatientBirthDate == reg.birth_date.strftime("%Y%m%d")
            assert ds.StudyInstanceUID == study["study_uid"]
            assert (
                ds.StudyDate == visit.start.strftime("%Y%m%d")
                and ds.TimezoneOffsetFromUTC == "-0500"
            )
            assert (
                ds.InstitutionName == visit.site.name
                and ds.AccessionNumber
                and ds.ReferringPhysicianName
            )
            block = ds.private_block(0x0009, PRIVATE_CREATOR)
            assert reg.family in block[0x01].value


def test_compressed_and_uncompressed_pixels(sample: dict[str, Any]) -> None:
    studies = sample["truth"]["imaging"]
    compressed = [f for s in studies for f in s["compressed"]]
    assert compressed
    for name in compressed:
        ds = pydicom.dcmread(sample["out"] / name)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        assert ds.PixelData.startswith(b"\xfe\xff\x00\xe0")  # an encapsulated item tag
        assert ds.pixel_array.shape == (
            ds.Rows,
            ds.Columns,
        )  # valid RLE: pydicom's decoder reads it
    ct = pydicom.dcmread(
        sample["out"] / next(s for s in studies if s["modality"] == "CT")["files"][0]
    )
    assert (ct.BitsAllocated, len(ct.PixelData)) == (16, ct.Rows * ct.Columns * 2)


def test_the_export_lands_in_silver_with_the_persons_key_and_shift(sample: dict[str, Any]) -> None:
    lake: Lake = sample["lake"]
    assert all(e.balanced for e in sample["entries"])
    quarantined = {(q["source_file"], q["rule_id"]) for q in lake.read("quarantine").to_pylist()}
    assert quarantined == {(m["file"], m["rule"]) for m in sample["truth"]["malformed"]}
    studies = {s["study_uid"]: s for s in lake.read("staging.imaging_studies").to_pylist()}
    hospital = Hospital(patients=PATIENTS, seed=SEED)
    assert len(studies) == len(sample["truth"]["imaging"])
    for planted in sample["truth"]["imaging"]:
        row = studies[dicom.new_uid(KEY, planted["study_uid"])]
        person_key = mrn_key(
            KEY, MRN_SYSTEM, planted["mrn"]
        )  # the key FHIR and HL7 v2 give the MRN
        assert row["person_key"] == person_key
        assert row["number_of_instances"] == len(planted["files"])
        visit = hospital.person(planted["person"]).chart.visits[0]
        shift = date_shift_days(KEY, person_key, max_days=MAX_SHIFT)
        assert row["started_at"] == visit.start.astimezone(UTC) + timedelta(days=shift)


def test_no_planted_phi_survives_in_silver_or_the_deidentified_files(
    sample: dict[str, Any],
) -> None:
    lake: Lake = sample["lake"]
    phi = sample["truth"]["phi"]
    words = [w for w in phi["names"] + phi["mrns"] if len(w) > 3]
    assert words
    tables = [
        lake.read(f"staging.{s.name.split('.')[1]}").to_pylist() for s in dicom.IMAGING_SILVER
    ]
    text = json.dumps(tables, default=str)
    copies = lake.read("staging.imaging_instances", columns=["deid_path"]).column(0).to_pylist()
    assert len(copies) == sum(len(s["files"]) for s in sample["truth"]["imaging"])
    blobs = [(lake.root / p).read_bytes() for p in copies]
    for word in words:
        assert word not in text
        assert not [p for p, b in zip(copies, blobs, strict=True) if word.encode() in b], word
    institutions = {
        pydicom.dcmread(sample["out"] / s["files"][0]).InstitutionName
        for s in sample["truth"]["imaging"]
    }
    assert not [i for i in institutions if any(i.encode() in b for b in blobs)]
