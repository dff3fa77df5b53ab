"""DICOM ingest, silver rows and PS3.15 de-identification, on pydicom's own test files (shipped in
the installed wheel, real formats: explicit/implicit VR, big endian, no preamble, RLE, JPEG,
JPEG 2000, sequences, private tags, overlays) and on broken files."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pydicom
import pytest
from pydicom.dataset import Dataset

from medlake import ledger
from medlake.expectations.gate import run_gate
from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs.ingest import dicom
from medlake.lake import Lake
from medlake.registry import BRONZE_DICOM, QUARANTINE, SILVER_IMAGING_INSTANCES

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_SHIFT = 365
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # in the wheel: no download
CORPUS_PROFILE = (
    Path(__file__).resolve().parents[2] / "corpus/standards/dicom-ps3.15/confidentiality_profile_attributes.json"
)
#: real files with PHI-like headers, in several encodings; the MR_small_* are one image re-encoded
FIXTURES = {
    "CT_small.dcm": "ct/1/CT_small.dcm",  # explicit VR little endian, CT
    "MR_small.dcm": "mr/MR_small",  # no suffix
    "MR_small_RLE.dcm": "mr/rle/MR_small_RLE",  # RLE Lossless, encapsulated
    "MR_small_bigendian.dcm": "mr/big/MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm": "nm/JPEG2000.dcm",  # JPEG 2000, no codec installed
    "JPEG-lossy.dcm": "nm/JPEG-lossy.dcm",  # JPEG baseline, same study as JPEG2000
    "ExplVR_LitEndNoMeta.dcm": "old/ExplVR_LitEndNoMeta.dcm",  # no preamble, no meta header
    "rtplan.dcm": "rt/rtplan.dcm",  # implicit VR, deep sequences
    "examples_overlay.dcm": "us/examples_overlay.dcm",  # overlay data (60xx,3000)
    "waveform_ecg.dcm": "ecg/waveform_ecg.dcm",
    "liver_1frame.dcm": "seg/liver_1frame.dcm",
}
BROKEN = {
    "MR_truncated.dcm": ("bad/MR_truncated.dcm", "ingest.truncated"),
    "rtplan_truncated.dcm": ("bad/rtplan_truncated", "ingest.truncated"),
    "badVR.dcm": ("bad/badVR.dcm", "ingest.bad_header"),
}


#: fixtures whose SOP class or ImageType (Secondary Capture, DERIVED\\SECONDARY) would make them
#: burned-in suspects: landed declaring BurnedInAnnotation NO, as a scanner that checked would
DECLARED_CLEAN = {"MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                  "JPEG-lossy.dcm", "examples_overlay.dcm"}


def landing_with(tmp_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    landing = tmp_path / "landing"
    for name, rel in FIXTURES.items():
        target = landing / "dicom" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if name in DECLARED_CLEAN:
            ds = pydicom.dcmread(TEST_FILES / name)
            ds.BurnedInAnnotation = "NO"
            ds.save_as(target)
        else:
            shutil.copy(TEST_FILES / name, target)
    for name, (rel, _) in BROKEN.items():
        target = landing / "dicom" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TEST_FILES / name, target)
    for rel, content in (extra or {}).items():
        target = landing / "dicom" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return landing


NOT_DICOM = {
    "bad/notes.txt": b"Patient John Smith seen today\n",
    "bad/empty": b"",
    "bad/fake.dcm": b"\x00" * 128 + b"DICM" + b"\xff" * 40,  # a preamble, then no element fits
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ingest + to_staging over the fixtures and the broken files."""
    root = tmp_path_factory.mktemp("dicom")
    landing, lake = landing_with(root, NOT_DICOM), Lake(root / "lake")
    ingested = dicom.ingest(landing, lake, run_id="r1", now=NOW)
    staged = dicom.to_staging(
        lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    return {"landing": landing, "lake": lake, "ingested": ingested, "staged": staged}


# ------------------------------------------------------------------ bronze


def test_every_file_is_in_bronze_or_quarantine_and_the_ledger_adds_up(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    (entry,) = run["ingested"].entries
    files = len(FIXTURES) + len(BROKEN) + len(NOT_DICOM)
    assert entry.records_in == files
    assert entry.records_out == lake.count(BRONZE_DICOM.name) == len(FIXTURES)
    assert entry.quarantined == len(BROKEN) + len(NOT_DICOM)
    assert entry.balanced
    assert all(e.balanced for e in run["staged"].entries)
    recorded = {(r["stage"], r["table_name"]): r for r in ledger.for_run(lake, "r1")}
    assert recorded[("ingest", BRONZE_DICOM.name)]["records_in"] == files


def test_bronze_keeps_the_header_as_dicom_json_and_the_original_bytes(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    rows = {r["_source_file"]: r for r in lake.read(BRONZE_DICOM.name).to_pylist()}
    ct = rows["dicom/ct/1/CT_small.dcm"]
    original = (TEST_FILES / "CT_small.dcm").read_bytes()
    assert ct["_source_offset"] == 0
    assert ct["modality"] == "CT" and ct["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert (lake.root / ct["archive_path"]).read_bytes() == original
    header = json.loads(ct["raw"])
    assert header["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    uri = header["7FE00010"]["BulkDataURI"]
    assert uri.startswith(ct["archive_path"] + "?offset=")
    offset, length = (int(part.split("=")[1]) for part in uri.split("?")[1].split("&"))
    assert (
        original[offset : offset + length] == pydicom.dcmread(TEST_FILES / "CT_small.dcm").PixelData
    )
    assert ct["sop_instance_uid"] == pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID


def test_compressed_files_are_read_without_a_codec(run: dict[str, Any]) -> None:
    rows = {r["_source_file"]: r for r in run["lake"].read(BRONZE_DICOM.name).to_pylist()}
    assert rows["dicom/mr/rle/MR_small_RLE"]["transfer_syntax_uid"] == "1.2.840.10008.1.2.5"
    assert rows["dicom/nm/JPEG2000.dcm"]["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.91"
    assert rows["dicom/old/ExplVR_LitEndNoMeta.dcm"]["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"


def test_broken_files_are_quarantined_with_their_rule_and_named(run: dict[str, Any]) -> None:
    quarantined = run["lake"].read(QUARANTINE.name).to_pylist()
    found = {q["source_file"]: q for q in quarantined if q["stage"] == "ingest"}
    expected = {f"dicom/{rel}": rule for rel, rule in BROKEN.values()} | {
        f"dicom/{rel}": ("ingest.truncated" if rel.endswith("fake.dcm") else "ingest.not_dicom")
        for rel in NOT_DICOM
    }
    assert {name: q["rule_id"] for name, q in found.items()} == expected
    for name, q in found.items():
        assert q["reason"].startswith(name + ":") and q["source_offset"] == 0
        assert "Smith" not in q["reason"]
    assert "ends inside element (7FE0,0010)" in found["dicom/bad/MR_truncated.dcm"]["reason"]
    assert json.loads(found["dicom/bad/notes.txt"]["raw_record"])["bytes"] == len(
        NOT_DICOM["bad/notes.txt"]
    )


def test_a_file_cut_anywhere_is_truncated_or_not_dicom_never_a_crash(tmp_path: Path) -> None:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    for cut in (100, 140, 300, 1000, len(data) // 2, len(data) - 1):
        read = dicom.read_bytes(data[:cut], name=f"cut{cut}", run_id="r", ingested_at=NOW)
        assert read.row is None, cut
        assert read.rejected["rule_id"] in {
            "ingest.truncated",
            "ingest.not_dicom",
            "ingest.bad_header",
        }


def test_reingesting_the_same_files_adds_nothing(tmp_path: Path) -> None:
    landing, lake = landing_with(tmp_path, NOT_DICOM), Lake(tmp_path / "lake")
    first = dicom.ingest(landing, lake, run_id="r1", now=NOW)
    bronze, quarantine = lake.count(BRONZE_DICOM.name), lake.count(QUARANTINE.name)
    (again,) = dicom.ingest(landing, lake, run_id="r2", now=NOW).entries
    assert (lake.count(BRONZE_DICOM.name), lake.count(QUARANTINE.name)) == (bronze, quarantine)
    assert (
        again.records_out == 0 and again.merged == first.entries[0].records_out and again.balanced
    )
    staged = dicom.to_staging(lake, run_id="r2", key=KEY, max_shift_days=MAX_SHIFT, versions={})
    assert all(lake.count(f"staging.{s.name.split('.')[1]}") == 0 for s in dicom.IMAGING_SILVER)
    assert all(e.records_in == 0 for e in staged.entries)


# ------------------------------------------------------------------ silver


def test_silver_rows_are_pseudonymized_remapped_and_shifted(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    instances = {r["_record_hash"]: r for r in lake.read("staging.imaging_instances").to_pylist()}
    bronze = {r["_source_file"]: r for r in lake.read(BRONZE_DICOM.name).to_pylist()}
    ct_file = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ct = instances[bronze["dicom/ct/1/CT_small.dcm"]["_record_hash"]]
    person = source_key(KEY, f"dicom:{ct_file.InstitutionName}", ct_file.PatientID)
    assert ct["person_key"] == person
    assert ct["instance_uid"] == dicom.new_uid(KEY, ct_file.SOPInstanceUID)
    assert ct["study_uid"] == dicom.new_uid(KEY, ct_file.StudyInstanceUID)
    assert (ct["rows"], ct["columns"], ct["number_of_frames"]) == (128, 128, 1)
    assert ct["pixel_spacing_row_mm"] == float(ct_file.PixelSpacing[0])
    assert (
        ct["deid_path"]
        == f"deid/dicom/{ct['study_uid']}/{ct['series_uid']}/{ct['instance_uid']}.dcm"
    )
    study = next(
        s
        for s in lake.read("staging.imaging_studies").to_pylist()
        if s["study_uid"] == ct["study_uid"]
    )
    shift = date_shift_days(KEY, person, max_days=MAX_SHIFT)
    taken = datetime.strptime(ct_file.StudyDate + ct_file.StudyTime[:6], "%Y%m%d%H%M%S")
    assert ct_file.TimezoneOffsetFromUTC == "-0500"  # local time 07:27:30 is 12:27:30 UTC
    expected = taken + timedelta(days=shift, hours=5)
    assert study["started_at"] == expected.replace(tzinfo=UTC)
    assert study["modalities"] == "CT" and study["number_of_instances"] == 1
    text = json.dumps(lake.read("staging.imaging_instances").to_pylist(), default=str)
    for phi in (
        ct_file.PatientID,
        str(ct_file.PatientName),
        ct_file.SOPInstanceUID,
        ct_file.StudyInstanceUID,
    ):
        assert phi not in text


def test_one_image_in_several_encodings_is_one_instance(run: dict[str, Any]) -> None:
    (entry,) = [e for e in run["staged"].entries if e.table_name == SILVER_IMAGING_INSTANCES.name]
    mr = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    rows = run["lake"].read("staging.imaging_instances").to_pylist()
    assert sum(r["instance_uid"] == dicom.new_uid(KEY, mr.SOPInstanceUID) for r in rows) == 1
    assert entry.merged == 2  # MR_small_RLE and MR_small_bigendian repeat MR_small's SOP instance


def test_the_mrn_and_its_issuer_give_the_person_key_fhir_and_hl7_give() -> None:
    header = {
        "00100020": {"vr": "LO", "Value": ["MRN-1"]},
        "00100021": {"vr": "LO", "Value": ["urn:h"]},
    }
    assert dicom.person_key_of(header, key=KEY) == mrn_key(KEY, "urn:h", "MRN-1")
    qualified = {
        "00100020": {"vr": "LO", "Value": ["MRN-1"]},
        "00100024": {"vr": "SQ", "Value": [{"00400032": {"vr": "UT", "Value": ["urn:h"]}}]},
    }
    assert dicom.person_key_of(qualified, key=KEY) == mrn_key(KEY, "urn:h", "MRN-1")
    assert dicom.person_key_of({}, key=KEY) is None


def test_an_instance_without_patient_id_is_quarantined(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del ds.PatientID
    landing = tmp_path / "landing" / "dicom"
    landing.mkdir(parents=True)
    ds.save_as(landing / "anon.dcm")
    lake = Lake(tmp_path / "lake")
    dicom.ingest(tmp_path / "landing", lake, run_id="r1", now=NOW)
    staged = dicom.to_staging(lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions={})
    (q,) = lake.read(QUARANTINE.name).to_pylist()
    assert q["rule_id"] == "silver.dicom_no_patient_id" and q["source_file"] == "dicom/anon.dcm"
    assert [
        e.quarantined for e in staged.entries if e.table_name == SILVER_IMAGING_INSTANCES.name
    ] == [1]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"BurnedInAnnotation": "YES"}, "declares BurnedInAnnotation"),
        ({"Modality": "US"}, "modality US"),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, "modality US"),  # a US's NO is not trusted
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "Secondary Capture"),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "DERIVED\\SECONDARY"),
    ],
)
def test_a_likely_burned_in_image_never_reaches_the_deidentified_copies(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.PatientName = "Okafor^Ana"
    landing = tmp_path / "landing" / "dicom"
    landing.mkdir(parents=True)
    ds.save_as(landing / "Okafor_Ana_screenshot.dcm")
    lake = Lake(tmp_path / "lake")
    dicom.ingest(tmp_path / "landing", lake, run_id="r1", now=NOW)
    staged = dicom.to_staging(lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions={})
    (q,) = lake.read(QUARANTINE.name).to_pylist()
    assert q["rule_id"] == "deid.dicom_burned_in" and why in q["reason"]
    assert not (lake.root / dicom.DEID_DIR).exists() or not list((lake.root / dicom.DEID_DIR).rglob("*.dcm"))
    assert lake.count("staging.imaging_instances") == 0 if lake.exists("staging.imaging_instances") else True
    (entry,) = [e for e in staged.entries if e.table_name == SILVER_IMAGING_INSTANCES.name]
    assert (entry.quarantined, entry.records_out) == (1, 0) and entry.balanced


def test_a_clean_ct_still_gets_its_copy() -> None:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert dicom.burned_in_risk(ds) is None
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    assert dicom.burned_in_risk(ds) is None  # declared clean, and CT is not a burned-in modality


def test_a_study_delivered_over_two_runs_counts_all_its_instances(tmp_path: Path) -> None:
    lake, landing = Lake(tmp_path / "lake"), tmp_path / "landing"
    base = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    for run_id, numbers in (("r1", (1, 2)), ("r2", (3,))):
        for n in numbers:
            ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
            ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{n}"
            ds.SeriesInstanceUID = f"{base.SeriesInstanceUID}.{n % 2}"
            path = landing / "dicom" / run_id / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path)
        dicom.ingest(landing, lake, run_id=run_id, now=NOW)
        dicom.to_staging(lake, run_id=run_id, key=KEY, max_shift_days=MAX_SHIFT, versions={})
        run_gate(lake, run_id=run_id, tables=[s.name for s in dicom.IMAGING_SILVER])
    (study,) = lake.read("silver.imaging_studies").to_pylist()
    assert (study["number_of_series"], study["number_of_instances"]) == (2, 3)
    assert lake.count("silver.imaging_instances") == 3


# ------------------------------------------------------------------ de-identification


def check_deid(original: Dataset, deid: Dataset, *, shift: int) -> list[str]:
    """What in a de-identified copy breaks PS3.15 Annex E as this lake applies it (empty: nothing).

    Every attribute of Table E.1-1 present with a value in the original: X gone, U the project
    key's UID for it, the modified-dates option's dates moved by ``shift`` (times kept), any other
    action's value not the original's; no private attribute; pixel data byte-identical.
    """
    profile = dicom.load_profile()
    problems: list[str] = []

    def walk(orig: Dataset, copy: Dataset, path: str) -> None:
        for elem in orig:
            tag, where = int(elem.tag), f"{path}{elem.tag}"
            if elem.tag.is_private:
                if elem.tag in copy:
                    problems.append(f"{where}: private attribute kept")
                continue
            rule = profile.rule(tag)
            kept = copy.get(elem.tag)
            if rule is None or rule.action in ("K", "X/Z/U*"):
                if elem.VR == "SQ" and kept is not None:
                    for i, (a, b) in enumerate(zip(elem.value, kept.value, strict=False)):
                        walk(a, b, f"{where}[{i}].")
                continue
            if elem.value in (None, "", b"") or (elem.VR == "SQ" and not elem.value):
                continue
            if rule.modified_dates and elem.VR in ("DA", "DT", "TM") and kept is not None:
                expected = elem.value if elem.VR == "TM" else _shifted(elem.value, shift)
                if expected is not None and kept.value != expected:
                    problems.append(
                        f"{where} {rule.name}: {kept.value!r}, not shifted {expected!r}"
                    )
                continue
            if rule.action == "X" and kept is not None:
                problems.append(f"{where} {rule.name}: kept though the profile says X")
            elif rule.action == "U" and kept is not None and elem.VR == "UI":
                values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
                wanted = [dicom.new_uid(KEY, str(v)) for v in values]
                got = list(kept.value) if kept.VM > 1 else [kept.value]
                if got != wanted:
                    problems.append(f"{where} {rule.name}: UID not remapped under the key")
            elif kept is not None and kept.value == elem.value:
                problems.append(f"{where} {rule.name}: original value kept ({rule.action})")

    walk(original, deid, "")
    if "PixelData" in original and deid.get("PixelData") != original.PixelData:
        problems.append("PixelData differs from the original")
    if deid.get("PatientIdentityRemoved") != "YES":
        problems.append("PatientIdentityRemoved is not YES")
    codes = {c.CodeValue for c in deid.get("DeidentificationMethodCodeSequence", [])}
    if not {"113100", "113107"} <= codes:
        problems.append(f"DeidentificationMethodCodeSequence holds {sorted(codes)}")
    return problems


def _shifted(value: Any, days: int) -> Any:
    def one(text: str) -> str | None:
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
        return (day + timedelta(days=days)).strftime("%Y%m%d") + text[8:]

    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [one(str(v)) for v in value]
    return one(str(value))


def test_every_deidentified_copy_follows_the_basic_profile(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    bronze = {r["_record_hash"]: r for r in lake.read(BRONZE_DICOM.name).to_pylist()}
    instances = lake.read("staging.imaging_instances").to_pylist()
    # MR_small_RLE and _bigendian repeat MR_small; ExplVR_LitEndNoMeta has no PatientID
    assert len(instances) == len(FIXTURES) - 3
    for row in instances:
        original = pydicom.dcmread(
            lake.root / bronze[row["_record_hash"]]["archive_path"], force=True
        )
        copy = pydicom.dcmread(lake.root / row["deid_path"])
        shift = date_shift_days(KEY, row["person_key"], max_days=MAX_SHIFT)
        assert check_deid(original, copy, shift=shift) == [], row["deid_path"]
        assert (
            copy.SOPInstanceUID == row["instance_uid"] == copy.file_meta.MediaStorageSOPInstanceUID
        )
        assert copy.file_meta.TransferSyntaxUID == row["transfer_syntax_uid"]
        assert str(copy.get("PatientName", "")) == ""


def test_the_check_catches_a_copy_that_was_not_deidentified() -> None:
    original = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    problems = check_deid(original, pydicom.dcmread(TEST_FILES / "CT_small.dcm"), shift=10)
    assert any("Patient's Name" in p for p in problems)
    assert any("UID not remapped" in p for p in problems)
    assert any("not shifted" in p for p in problems)
    assert any("private attribute kept" in p for p in problems)


def test_compressed_pixel_data_is_copied_verbatim(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    rows = lake.read("staging.imaging_instances").to_pylist()
    jpeg2000 = pydicom.dcmread(TEST_FILES / "JPEG2000.dcm")
    (row,) = [r for r in rows if r["instance_uid"] == dicom.new_uid(KEY, jpeg2000.SOPInstanceUID)]
    copy = pydicom.dcmread(lake.root / row["deid_path"])
    assert copy.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    assert copy.PixelData == jpeg2000.PixelData


def test_uids_are_consistent_across_a_study(run: dict[str, Any]) -> None:
    lake: Lake = run["lake"]
    rows = lake.read("staging.imaging_instances").to_pylist()
    lossy, j2k = (pydicom.dcmread(TEST_FILES / n) for n in ("JPEG-lossy.dcm", "JPEG2000.dcm"))
    assert lossy.StudyInstanceUID == j2k.StudyInstanceUID  # one study in two files
    copies = [
        pydicom.dcmread(lake.root / r["deid_path"])
        for r in rows
        if r["study_uid"] == dicom.new_uid(KEY, j2k.StudyInstanceUID)
    ]
    assert len(copies) == 2
    assert {c.StudyInstanceUID for c in copies} == {dicom.new_uid(KEY, j2k.StudyInstanceUID)}
    frames = {c.get("FrameOfReferenceUID") for c in copies} - {None}
    assert (
        frames <= {dicom.new_uid(KEY, j2k.FrameOfReferenceUID)}
        if "FrameOfReferenceUID" in j2k
        else True
    )


def test_nested_uids_dates_and_overlays() -> None:
    plan = pydicom.dcmread(TEST_FILES / "rtplan.dcm")
    ref = plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    out = dicom.deidentify(
        pydicom.dcmread(TEST_FILES / "rtplan.dcm"),
        new_uid=lambda u: dicom.new_uid(KEY, u),
        shift_days=-3,
    )
    assert out.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == dicom.new_uid(KEY, ref)
    assert out.RTPlanDate == (
        datetime.strptime(plan.RTPlanDate, "%Y%m%d") - timedelta(days=3)
    ).strftime("%Y%m%d")
    overlay = dicom.deidentify(
        pydicom.dcmread(TEST_FILES / "examples_overlay.dcm"),
        new_uid=lambda u: u + ".1",
        shift_days=1,
    )
    assert 0x60003000 in pydicom.dcmread(TEST_FILES / "examples_overlay.dcm")
    assert 0x60003000 not in overlay  # (60XX,3000) Overlay Data: X, matched through the group mask


@pytest.mark.parametrize(
    ("action", "tag", "chosen"),
    [
        ("X/Z", 0x00080022, "X"),
        ("X/D", 0x00080021, "X"),
        ("X/Z/D", 0x00080080, "X"),
        ("Z/D", 0x00100020, "Z"),
        ("Z/D", 0x00080023, "Z"),
        ("X/Z/U*", 0x00081140, "X"),
        ("D", 0x00100010, "D"),
    ],
)
def test_combined_actions_resolve_by_the_attribute_type(action: str, tag: int, chosen: str) -> None:
    assert dicom.resolve_action(action, tag) == chosen


def test_the_profile_is_the_standard_table() -> None:
    profile = dicom.load_profile()
    rows = json.loads(dicom.PROFILE_FILE.read_text())
    assert len(rows) == 621
    assert len(profile.exact) + len(profile.masked) + 1 == 621
    assert profile.rule(0x00100010).action == "Z"  # Patient's Name
    assert profile.rule(0x50021234).action == "X"  # (50XX,XXXX) Curve Data
    assert profile.rule(0x60224000).action == "X"  # (60XX,4000) Overlay Comments
    assert profile.private.action == "X"
    if CORPUS_PROFILE.is_file():  # the vendored copy is the corpus file, byte for byte
        assert dicom.PROFILE_FILE.read_bytes() == CORPUS_PROFILE.read_bytes()


@pytest.mark.filterwarnings(
    "ignore::UserWarning"
)  # pydicom warns about invalid values in some files
def test_every_pydicom_test_file_is_accounted_for(tmp_path: Path) -> None:
    """Every file of pydicom's test set ends in bronze or quarantine, and every instance in silver
    or quarantine; no codec is needed and nothing crashes."""
    landing = tmp_path / "landing" / "dicom"
    landing.mkdir(parents=True)
    for path in sorted(TEST_FILES.glob("*.dcm")):
        shutil.copy(path, landing / path.name)
    lake = Lake(tmp_path / "lake")
    ingested = dicom.ingest(tmp_path / "landing", lake, run_id="r1", now=NOW)
    staged = dicom.to_staging(lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions={})
    for entry in [*ingested.entries, *staged.entries]:
        assert entry.balanced, entry.explain()
    assert ingested.entries[0].records_in == len(list(TEST_FILES.glob("*.dcm")))
    written = lake.read("staging.imaging_instances", columns=["deid_path"]).column(0).to_pylist()
    assert written and all((lake.root / p).is_file() for p in written)
    assert pa.array(written).unique().to_pylist() == written


def _instances_of_the_test_set() -> list[str]:
    names = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds = dicom.parse(path.read_bytes(), where=path.name)
        except dicom.Rejected:
            continue
        if "SOPInstanceUID" in ds and "SOPClassUID" in ds:
            names.append(path.name)
    return names


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", _instances_of_the_test_set())
def test_every_encoding_is_deidentified_and_written_back(tmp_path: Path, name: str) -> None:
    """Big endian, implicit VR, no meta header, deflate, JPEG, JPEG-LS, JPEG 2000, RLE, SR, RT,
    waveforms: each de-identified copy passes the check and keeps its transfer syntax."""
    data = (TEST_FILES / name).read_bytes()
    original = dicom.parse(data, where=name)
    ds = dicom.deidentify(
        dicom.parse(data, where=name), new_uid=lambda u: dicom.new_uid(KEY, u), shift_days=17
    )
    dicom.write_deid(ds, tmp_path / name)
    copy = pydicom.dcmread(tmp_path / name)
    assert check_deid(original, copy, shift=17) == []
    assert copy.file_meta.TransferSyntaxUID == dicom.transfer_syntax(original)
