"""The sample hospital's PACS export: small DICOM studies of some patients, with PHI in the headers.

Every fourth person (``index % 4 == 1``, see :func:`in_dicom`) with a visit was imaged at their
first visit: a CT (two series of two or three 8 x 8 16-bit slices), or an MR (one series of two
8-bit images, the second stored RLE Lossless: encapsulated, compressed pixel data that needs no
codec to write or to copy). Layout under ``out/dicom/``, the way PACS exports name things:

- ``study_<nnnn>/series_<n>/IM<n>``: CT instances (no file suffix);
- ``study_<nnnn>/series_<n>/IM<n>.dcm``: MR instances;
- ``broken/``: once the hospital has :data:`~medlake.sample.people.MIN_POPULATION_FOR_MESS`
  people, a CT instance cut off inside its pixel data (``ingest.truncated``) and the export's
  text log, which is not DICOM (``ingest.not_dicom``), both in the truth file's ``malformed``.

PHI sits where modalities write it: Patient's Name, Patient ID (the MRN) with Issuer of Patient
ID (the hospital's MRN system), birth date and sex, Institution Name, Referring Physician's
Name, Operators' Name (both clinicians' names go to the truth file's ``phi``), Accession
Number, and a private attribute (group 0009, creator ``MEDLAKE SAMPLE``) holding
the patient's name again. Study date and time are the visit's, in the hospital's zone (stated in
Timezone Offset From UTC). Everything comes from the hospital's seed (UIDs are ``2.25.``
numbers drawn from it), so the same seed writes the same bytes. The truth file's ``imaging`` list
names each study: person, MRN, original study UID, modality and its files.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

from medlake.sample.people import Hospital, Person, Visit, plants_every_kind
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import FAMILY, FEMALE_GIVEN, MALE_GIVEN, MRN_SYSTEM

DICOM = "dicom"
SIDE = 8  # every image is SIDE x SIDE pixels: small files, real structure
PRIVATE_CREATOR = "MEDLAKE SAMPLE"
IMPLEMENTATION_VERSION = "MEDLAKE_SAMPLE_1"
SEX = {"female": "F", "male": "M", "other": "O"}
EXPORT_LOG = "PACS export log\nstudy of MRN {mrn} exported by {user}\n"


def in_dicom(index: int) -> bool:
    """Whether person `index` was imaged."""
    return index % 4 == 1


@dataclass(frozen=True)
class Study:
    """What was planted for one imaged person (the truth file's ``imaging`` entries)."""

    person: int
    mrn: str
    study_uid: str
    modality: str
    files: tuple[str, ...]
    compressed: tuple[str, ...]


def write_dicom(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write the PACS export of the imaged people under `out/dicom/` and record it in `truth`."""
    studies: list[tuple[Study, list[bytes]]] = []
    for person in hospital.people():
        if not in_dicom(person.index) or not person.chart.visits:
            continue
        rng = hospital.rng(DICOM, person.index)
        number = len(studies) + 1
        modality = "CT" if number % 2 else "MR"
        study, contents = _write_study(
            out, person, person.chart.visits[0], rng, number, modality, truth
        )
        truth.registration(person.chart.registration)
        truth.add("imaging", Where(study.files[0], 0), **_truth_fields(study))
        for _ in study.files:
            truth.file_read(DICOM, 1)
        studies.append((study, contents))
    if plants_every_kind(hospital.patients) and studies:
        _write_broken(out, studies, hospital.rng(DICOM, "broken"), truth)


def _truth_fields(study: Study) -> dict[str, object]:
    return {
        "person": study.person,
        "mrn": study.mrn,
        "study_uid": study.study_uid,
        "modality": study.modality,
        "files": list(study.files),
        "compressed": list(study.compressed),
    }


def _write_study(
    out: Path,
    person: Person,
    visit: Visit,
    rng: random.Random,
    number: int,
    modality: str,
    truth: Truth,
) -> tuple[Study, list[bytes]]:
    """Write one study's files; the study and each file's bytes."""
    study = _study_header(person, visit, rng, modality)
    series_sizes = (rng.randint(2, 3), rng.randint(2, 3)) if modality == "CT" else (2,)
    files: list[str] = []
    compressed: list[str] = []
    contents: list[bytes] = []
    for series_number, size in enumerate(series_sizes, start=1):
        series_uid = uid(rng)
        for instance_number in range(1, size + 1):
            rle = modality == "MR" and instance_number == size
            ds = _instance(
                study, rng, modality, series_uid, series_number, instance_number, rle=rle
            )
            suffix = ".dcm" if modality == "MR" else ""
            name = f"{DICOM}/study_{number:04d}/series_{series_number}/IM{instance_number}{suffix}"
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            for clinician in (ds.ReferringPhysicianName, ds.OperatorsName):
                truth.planted("names", clinician.family_name, clinician.given_name)
            files.append(name)
            contents.append(path.read_bytes())
            if rle:
                compressed.append(name)
    reg = person.chart.registration
    return Study(
        person.index, reg.mrn, study.StudyInstanceUID, modality, tuple(files), tuple(compressed)
    ), contents


def uid(rng: random.Random) -> str:
    """A UUID-derived UID (PS3.5 B.2) drawn from the seed."""
    return f"2.25.{rng.getrandbits(127) | 1 << 126}"


def _study_header(person: Person, visit: Visit, rng: random.Random, modality: str) -> Dataset:
    """Patient and study attributes every instance of the study repeats."""
    reg = person.chart.registration
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"{reg.family}^{' '.join(reg.given)}"
    ds.PatientID = reg.mrn
    ds.IssuerOfPatientID = MRN_SYSTEM
    ds.PatientBirthDate = reg.birth_date.strftime("%Y%m%d")
    if reg.gender in SEX:
        ds.PatientSex = SEX[reg.gender]
    ds.StudyInstanceUID = uid(rng)
    ds.StudyDate, ds.StudyTime = _da_tm(visit.start)
    ds.TimezoneOffsetFromUTC = _offset(visit.start)
    ds.StudyID = f"S{rng.randrange(10**5):05d}"
    ds.AccessionNumber = f"ACC{rng.randrange(10**7):07d}"
    referring = (rng.choice(FAMILY), rng.choice(FEMALE_GIVEN + MALE_GIVEN))
    ds.ReferringPhysicianName = f"{referring[0]}^{referring[1]}^^Dr."
    ds.InstitutionName = visit.site.name
    ds.StudyDescription = f"{modality} {'CHEST' if modality == 'CT' else 'BRAIN'}"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST" if modality == "CT" else "BRAIN"
    ds.FrameOfReferenceUID = uid(rng)
    return ds


def _instance(
    study: Dataset,
    rng: random.Random,
    modality: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    *,
    rle: bool,
) -> Dataset:
    """One image: the study's attributes, its series and its pixels (16-bit CT, 8-bit MR)."""
    ds = copy.deepcopy(study)
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = uid(rng)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SeriesDate, ds.SeriesTime = study.StudyDate, study.StudyTime
    ds.ContentDate, ds.ContentTime = study.StudyDate, study.StudyTime
    ds.Manufacturer = "MEDLAKE"
    ds.StationName = f"{modality}01"
    operator = (rng.choice(FAMILY), rng.choice(FEMALE_GIVEN + MALE_GIVEN))
    ds.OperatorsName = "^".join(operator)
    ds.add_new(0x00090010, "LO", PRIVATE_CREATOR)
    ds.add_new(0x00091001, "LO", str(study.PatientName).replace("^", " "))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.PixelSpacing = [f"{0.5 + 0.25 * series_number:g}", f"{0.5 + 0.25 * series_number:g}"]
    ds.SliceThickness = "2.5"
    ds.ImagePositionPatient = ["0", "0", f"{2.5 * instance_number:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    bits = 16 if modality == "CT" else 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    pixels = bytes(rng.randrange(256) for _ in range(SIDE * SIDE * bits // 8))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if rle:
        meta.TransferSyntaxUID = RLELossless
        ds.PixelData = encapsulate([rle_frame(pixels, SIDE)])
        ds["PixelData"].VR = "OB"
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    ds.file_meta = meta
    return ds


def rle_frame(pixels: bytes, width: int) -> bytes:
    """An 8-bit frame encoded RLE Lossless (PS3.5 G): one segment, each row a PackBits literal run."""
    segment = b"".join(
        bytes([width - 1]) + pixels[row : row + width] for row in range(0, len(pixels), width)
    )
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    return header + segment + (b"\x00" if len(segment) % 2 else b"")


def _da_tm(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _write_broken(
    out: Path, studies: list[tuple[Study, list[bytes]]], rng: random.Random, truth: Truth
) -> None:
    """A CT instance cut inside its pixel data, and the export's text log (not DICOM)."""
    study, contents = next((s, c) for s, c in studies if s.modality == "CT")
    cut = DICOM + "/broken/IM_cut"
    (out / cut).parent.mkdir(parents=True, exist_ok=True)
    (out / cut).write_bytes(contents[0][: len(contents[0]) - SIDE * 3])
    truth.file_read(DICOM, 1)
    truth.malformed(Where(cut, 0), "ingest.truncated", "the file ends inside its pixel data")
    log = DICOM + "/broken/export.log"
    user = (rng.choice(FEMALE_GIVEN + MALE_GIVEN), rng.choice(FAMILY))
    truth.planted("names", *user)
    text = EXPORT_LOG.format(user=" ".join(user), mrn=study.mrn)
    (out / log).write_text(text, encoding="utf-8")
    truth.file_read(DICOM, 1)
    truth.malformed(Where(log, 0), "ingest.not_dicom", "a text file in the DICOM export")
