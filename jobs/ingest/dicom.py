"""DICOM files (a PACS export): landing files → ``bronze.dicom_files`` → the imaging silver tables,
with a de-identified copy of every file kept in the lake.

Ingest walks ``landing/dicom/`` at any depth and reads every file, whatever its name (PACS exports
often have no ``.dcm`` suffix). One bronze row per file: the header as the DICOM JSON model
(PS3.18 Annex F) whose bulk data (pixel data, large binary values) is a ``BulkDataURI`` into the
original file, archived byte for byte at ``<lake>/raw/dicom/<sha256>.dcm`` so nothing is lost
(sealed as a whole when the lake encrypts at rest: BulkDataURI offsets are into the opened file).
Pixel data is never decoded, so a compressed transfer syntax (JPEG, JPEG 2000, RLE, …) needs no
codec. A file that is not DICOM, is cut short, or whose header cannot be read is quarantined with
the reason (``ingest.not_dicom``, ``ingest.truncated``, ``ingest.bad_header``); it is archived too.

:func:`to_staging` turns this run's bronze files into ``silver.imaging_studies``,
``silver.imaging_series`` and ``silver.imaging_instances`` (shaped after FHIR ImagingStudy) and
writes the de-identified copy of each instance to
``<lake>/deid/dicom/<study uid>/<series uid>/<sop uid>.dcm`` following the DICOM PS3.15 Annex E
Basic Application Level Confidentiality Profile (:func:`deidentify`), with the Retain
Longitudinal Temporal Information with Modified Dates Option: dates move by the patient's offset,
the same one every other source applies, so images line up with the patient's other records.
An instance without its three UIDs (``silver.dicom_missing_uid``) or a Patient ID
(``silver.dicom_no_patient_id``), whose pixels may carry burned-in identifiers
(``deid.dicom_burned_in``: :func:`burned_in_risk`), or whose copy cannot be written
(``deid.dicom_failed``), stays out of silver, in quarantine; a second file of an instance already read in the run is merged.

Keys: a file's ``person_key`` is the MRN's key (``mrn_key(key, IssuerOfPatientID, PatientID)``)
when the header names the issuer, the key FHIR and HL7 v2 give the same MRN; without one it is
the source key of (``dicom[:<institution>]``, PatientID). Study, series and instance UIDs are
remapped to ``2.25.<decimal>`` UIDs derived from the original UID under the project key: the same
original UID gets the same new UID in silver, in every de-identified file and in every run.

Offsets: a file is one record at offset 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medlake import ledger
from medlake.governance.deid import date_shift_days, shift_datetime
from medlake.governance.pseudonyms import keyed_hash, mrn_key, source_key
from medlake.jobs.stage import StageResult, write_bronze
from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.quarantine import Split, quarantine_rows, stamp_run
from medlake.registry import (
    BRONZE_DICOM,
    QUARANTINE,
    SILVER_IMAGING_INSTANCES,
    SILVER_IMAGING_SERIES,
    SILVER_IMAGING_STUDIES,
    staging_name,
)

if TYPE_CHECKING:
    from medlake.engines import Engine

log = logging.getLogger(__name__)

SOURCE_KIND = "dicom"
ARCHIVE_DIR = "raw/dicom"
DEID_DIR = "deid/dicom"
#: binary values longer than this (base64) go to bronze as a BulkDataURI, not inline
BULK_DATA_THRESHOLD = 1024
PROFILE_FILE = Path(__file__).with_name("dicom_profile") / "confidentiality_profile_attributes.json"
UNDEFINED_LENGTH = 0xFFFFFFFF
#: how deep sequence items are searched for a value cut short
MAX_ITEM_DEPTH = 32
PRIVATE_ROW = "(GGGG,EEEE) WHERE GGGG IS ODD"  # Table E.1-1's row for private attributes
UID_ROOT = "2.25."  # UUID-derived UIDs (PS3.5 B.2): no registered root needed

#: the silver tables DICOM feeds, coarsest first
IMAGING_SILVER = (SILVER_IMAGING_STUDIES, SILVER_IMAGING_SERIES, SILVER_IMAGING_INSTANCES)

# tags read from the header (DICOM JSON keys)
PATIENT_ID = "00100020"
ISSUER = "00100021"
ISSUER_QUALIFIERS = "00100024"
UNIVERSAL_ENTITY_ID = "00400032"
INSTITUTION = "00080080"
SOP_CLASS = "00080016"
SOP_INSTANCE = "00080018"
STUDY_INSTANCE = "0020000D"
SERIES_INSTANCE = "0020000E"
MODALITY = "00080060"
STUDY_DATE, STUDY_TIME = "00080020", "00080030"
SERIES_DATE, SERIES_TIME = "00080021", "00080031"
TZ_OFFSET = "00080201"
BODY_PART = "00180015"
SERIES_NUMBER = "00200011"
INSTANCE_NUMBER = "00200013"
ROWS, COLUMNS, FRAMES, PIXEL_SPACING = "00280010", "00280011", "00280008", "00280030"

#: PS3.16 CID 7050 codes this profile run is described by (DeidentificationMethodCodeSequence)
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
DEID_METHOD = ("DICOM PS3.15 E.1 Basic Profile", "Retain Longitudinal Modified Dates Option")


# ---------------------------------------------------------------------------------------------
# landing files → bronze


def landing_files(dicom_dir: Path) -> list[Path]:
    """Every file below the DICOM landing folder, at any depth, in a stable order."""
    if not dicom_dir.is_dir():
        return []
    return sorted(p for p in dicom_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


def archive_path(record_hash: str) -> str:
    """Where the original file is kept, relative to the lake root."""
    return f"{ARCHIVE_DIR}/{record_hash}.dcm"


@dataclass(frozen=True)
class Read:
    """One landing file read: the bronze row, or the quarantine record saying why not."""

    record_hash: str
    row: dict[str, Any] | None
    rejected: dict[str, Any] | None


def read_bytes(data: bytes, *, name: str, run_id: str, ingested_at: datetime) -> Read:
    """A file's bronze row (header as DICOM JSON, UIDs, modality, transfer syntax), or why it has none.

    ``name`` is how the file is named in bronze and quarantine (relative to the landing root).
    """
    digest = hashlib.sha256(data).hexdigest()
    archived = archive_path(digest)
    try:
        ds = parse(data, where=name)
        header = header_json(ds, bulk_uri=archived, where=name)
    except Rejected as rej:
        return Read(
            digest,
            None,
            {
                "source_file": name,
                "source_offset": 0,
                "rule_id": rej.rule_id,
                "reason": rej.reason,
                "record_hash": digest,
                "raw_record": json.dumps({"archive_path": archived, "bytes": len(data)}),
            },
        )
    return Read(
        digest,
        {
            "sop_instance_uid": _text(ds.get("SOPInstanceUID")),
            "series_instance_uid": _text(ds.get("SeriesInstanceUID")),
            "study_instance_uid": _text(ds.get("StudyInstanceUID")),
            "sop_class_uid": _text(ds.get("SOPClassUID")),
            "modality": _text(ds.get("Modality")),
            "transfer_syntax_uid": transfer_syntax(ds),
            "raw": header,
            "archive_path": archived,
            "_source_file": name,
            "_source_offset": 0,
            "_ingested_at": ingested_at,
            "_record_hash": digest,
            "_run_id": run_id,
        },
        None,
    )


class Rejected(Exception):
    """A file or an instance that cannot be accepted, with the rule it breaks."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


def parse(data: bytes, *, where: str) -> Dataset:
    """The file as a pydicom Dataset, every value read (pixel data as its stored bytes, never decoded).

    Files without the 128-byte preamble and ``DICM`` prefix (older exports write the bare data
    set) are read too, when what they hold has a SOP Instance UID; anything else is not DICOM.
    A value shorter than its declared length, or a sequence cut off, means the file is truncated.
    """
    if not data:
        raise Rejected("ingest.not_dicom", f"{where}: the file is empty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
            except InvalidDicomError:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                if "SOPInstanceUID" not in ds or not _looks_like_uid(ds.get("SOPInstanceUID")):
                    raise Rejected(
                        "ingest.not_dicom",
                        f"{where}: no DICM prefix and no DICOM data set with a SOP Instance UID",
                    ) from None
            short = _short_value(ds)
        except Rejected:
            raise
        except Exception as exc:  # pydicom raises many types on garbage; name it, keep the file
            raise Rejected(
                "ingest.not_dicom" if data[128:132] != b"DICM" else "ingest.bad_header",
                f"{where}: pydicom cannot read the file ({type(exc).__name__})",
            ) from exc
    if not ds:
        raise Rejected("ingest.truncated", f"{where}: the file ends before its data set begins")
    eof = [w for w in caught if "end of file" in str(w.message).lower() or "EOF" in str(w.message)]
    if short is not None and short[3] and not eof:  # inside an item: its length is a lie
        tag, declared, got, _ = short
        raise Rejected(
            "limit.dicom_element_length",
            f"{where}: element {tag} in a sequence item declares {declared} bytes, beyond the end of "
            f"its item or of the file ({got} present); nothing after it can be trusted",
        )
    if short is not None:
        tag, declared, got, _ = short
        raise Rejected(
            "ingest.truncated",
            f"{where}: the file ends inside element {tag} ({got} of its {declared} bytes present)",
        )
    if eof:
        raise Rejected("ingest.truncated", f"{where}: the file ends inside a sequence or item")
    return ds


def _short_value(ds: Dataset, depth: int = 0) -> tuple[str, int, int, bool] | None:
    """(tag, declared, present, nested) of the first value shorter than its declared length, if
    any, at any depth of the sequences (items as read, up to :data:`MAX_ITEM_DEPTH` levels)."""
    for tag, elem in list(ds._dict.items()):  # raw elements: values as read, with their length
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", None)
        if (
            isinstance(value, bytes)
            and isinstance(length, int)
            and length != UNDEFINED_LENGTH
            and len(value) < length
        ):
            return f"({tag >> 16:04X},{tag & 0xFFFF:04X})", length, len(value), depth > 0
        if depth < MAX_ITEM_DEPTH and _is_sequence(ds, tag):  # its items, read as raw elements
            for item in ds[tag].value:
                if isinstance(item, Dataset) and (found := _short_value(item, depth + 1)):
                    return found
    return None


def _looks_like_uid(value: Any) -> bool:
    return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)+", _text(value) or ""))


def transfer_syntax(ds: Dataset) -> str:
    """The file's transfer syntax: its meta header's, else the encoding the data set was read in."""
    declared = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) else None
    if declared:
        return str(declared)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def header_json(ds: Dataset, *, bulk_uri: str, where: str) -> str:
    """The data set as DICOM JSON; binary values over the threshold point into the archived file.

    A BulkDataURI is ``<archive path>?offset=<byte of the value>&length=<bytes>`` (relative to the
    lake root), so a reader can fetch the pixel data of the original without parsing it.
    """

    def bulk(elem: DataElement) -> str:
        at = getattr(elem, "file_tell", None)
        size = len(elem.value) if isinstance(elem.value, bytes) else None
        if at is None or size is None:
            return bulk_uri
        return f"{bulk_uri}?offset={at}&length={size}"

    try:
        model = ds.to_json_dict(BULK_DATA_THRESHOLD, bulk)
    except Exception as exc:
        raise Rejected(
            "ingest.bad_header",
            f"{where}: the header cannot be written as DICOM JSON ({type(exc).__name__}: a value "
            "does not fit its VR)",
        ) from exc
    return json.dumps(model, separators=(",", ":"), ensure_ascii=False)


def read_files(
    paths: Sequence[Path], *, root: Path, run_id: str, ingested_at: datetime, archive: Lake
) -> tuple[pa.Table, Split]:
    """One raw record per file (its name) and the bronze split; each file's bytes are archived
    in the ``archive`` lake (sealed when it encrypts at rest) unless already there."""
    names, good, bad = [], [], []
    for path in paths:
        name = path.relative_to(root).as_posix()
        data = path.read_bytes()
        read = read_bytes(data, name=name, run_id=run_id, ingested_at=ingested_at)
        kept = archive_path(read.record_hash)
        if not (archive.root / kept).exists():
            keep(archive.root / kept, archive.seal_file(kept, data))
        names.append(name)
        if read.row is not None:
            good.append(read.row)
        if read.rejected is not None:
            bad.append(read.rejected)
    raw = pa.table({"source_file": pa.array(names, pa.string())})
    split = Split(
        pa.Table.from_pylist(good, schema=BRONZE_DICOM.schema),
        quarantine_rows(bad, table_name=BRONZE_DICOM.name, run_id=run_id, now=ingested_at),
    )
    return raw, split


def keep(path: Path, data: bytes) -> None:
    """Write a content-addressed file once (atomically), so a re-run finds it complete."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)


def ingest(
    landing: Path, lake: Lake, *, run_id: str, now: datetime, engine: Engine | None = None
) -> StageResult:
    """landing/dicom → bronze.dicom_files (+ the archived originals) + quarantine + ledger."""
    files = landing_files(landing / SOURCE_KIND)
    raw, split = read_files(files, root=landing, run_id=run_id, ingested_at=now, archive=lake)
    entry = write_bronze(lake, BRONZE_DICOM, split, raw, run_id=run_id, engine=engine)
    ledger.record(lake, run_id, [entry])
    log.info(
        "ingest: %d DICOM files, %d new in bronze, %d quarantined",
        raw.num_rows,
        entry.records_out,
        entry.quarantined,
    )
    return StageResult({BRONZE_DICOM.name: lake.version(BRONZE_DICOM.name)}, [entry])


# ---------------------------------------------------------------------------------------------
# bronze → silver rows


def new_uid(key: bytes, uid: str) -> str:
    """The UID that stands for ``uid`` in silver and in de-identified files (same key, same UID)."""
    return UID_ROOT + str(int(keyed_hash(key, "dicom-uid", uid.strip()), 16))


@dataclass(frozen=True)
class Instance:
    """One bronze file read for silver: its silver row and the series and study facts it carries."""

    row: dict[str, Any]
    body_part: str | None
    series_number: int | None
    series_started_at: datetime | None
    study_started_at: datetime | None
    archive_path: str
    shift_days: int


@dataclass(frozen=True)
class Imaging:
    """The imaging rows of one run: instances (split), and the series and studies they touch."""

    instances: list[Instance]
    quarantined: pa.Table
    merged: int
    records_in: int


def instances_from_bronze(bronze: pa.Table, *, key: bytes, max_shift_days: int) -> Imaging:
    """Silver instance rows of bronze files: pseudonymized person, remapped UIDs, shifted times.

    A file without the three instance UIDs, or without a PatientID to tie it to a person, is
    quarantined; a second file with an instance UID already seen in the run merges into the first.
    """
    instances: list[Instance] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    merged = 0
    for rec in bronze.to_pylist():
        try:
            instance = _instance(rec, key=key, max_shift_days=max_shift_days)
        except Rejected as rej:
            bad.append(
                {
                    "rule_id": rej.rule_id,
                    "reason": rej.reason,
                    "source_file": rec["_source_file"],
                    "source_offset": rec["_source_offset"],
                    "record_id": rec["sop_instance_uid"] and new_uid(key, rec["sop_instance_uid"]),
                    "record_hash": rec["_record_hash"],
                }
            )
            continue
        if instance.row["instance_uid"] in seen:
            merged += 1
            continue
        seen.add(instance.row["instance_uid"])
        instances.append(instance)
    return Imaging(
        instances,
        quarantine_rows(bad, table_name=SILVER_IMAGING_INSTANCES.name),
        merged,
        bronze.num_rows,
    )


def _instance(rec: Mapping[str, Any], *, key: bytes, max_shift_days: int) -> Instance:
    header: dict[str, Any] = json.loads(rec["raw"])
    where = rec["_source_file"]
    uids = {
        "Study Instance UID (0020,000D)": _first(header, STUDY_INSTANCE),
        "Series Instance UID (0020,000E)": _first(header, SERIES_INSTANCE),
        "SOP Instance UID (0008,0018)": _first(header, SOP_INSTANCE),
    }
    missing = [name for name, uid in uids.items() if not uid]
    if missing:
        raise Rejected(
            "silver.dicom_missing_uid", f"{where}: the header has no {', '.join(missing)}"
        )
    person_key = person_key_of(header, key=key)
    if person_key is None:
        raise Rejected(
            "silver.dicom_no_patient_id",
            f"{where}: the header has no PatientID (0010,0020) to tie the instance to a person",
        )
    shift = date_shift_days(key, person_key, max_days=max_shift_days)
    zone = _zone(_first(header, TZ_OFFSET))
    study_uid, series_uid, sop_uid = (new_uid(key, str(u)) for u in uids.values())
    spacing = _values(header, PIXEL_SPACING)
    row = {
        "instance_uid": sop_uid,
        "series_uid": series_uid,
        "study_uid": study_uid,
        "person_key": person_key,
        "sop_class_uid": _first(header, SOP_CLASS),
        "instance_number": _int(_first(header, INSTANCE_NUMBER)),
        "modality": _first(header, MODALITY),
        "rows": _int(_first(header, ROWS)),
        "columns": _int(_first(header, COLUMNS)),
        "number_of_frames": _int(_first(header, FRAMES)) or (1 if ROWS in header else None),
        "pixel_spacing_row_mm": _float(spacing[0]) if len(spacing) == 2 else None,
        "pixel_spacing_col_mm": _float(spacing[1]) if len(spacing) == 2 else None,
        "transfer_syntax_uid": rec["transfer_syntax_uid"],
        "deid_path": f"{DEID_DIR}/{study_uid}/{series_uid}/{sop_uid}.dcm",
        "_record_hash": rec["_record_hash"],
        "_source_kind": SOURCE_KIND,
        "_run_id": rec["_run_id"],
    }
    return Instance(
        row=row,
        body_part=_first(header, BODY_PART),
        series_number=_int(_first(header, SERIES_NUMBER)),
        series_started_at=shift_datetime(
            _when(_first(header, SERIES_DATE), _first(header, SERIES_TIME), zone), shift
        ),
        study_started_at=shift_datetime(
            _when(_first(header, STUDY_DATE), _first(header, STUDY_TIME), zone), shift
        ),
        archive_path=rec["archive_path"],
        shift_days=shift,
    )


def person_key_of(header: Mapping[str, Any], *, key: bytes) -> str | None:
    """The person key of a header: its MRN's key when the issuer is named, else its source key."""
    patient_id = _text(_first(header, PATIENT_ID))
    if not patient_id:
        return None
    issuer = _text(_first(header, ISSUER))
    if not issuer:
        qualifiers = _first(header, ISSUER_QUALIFIERS)
        issuer = _text(_first(qualifiers, UNIVERSAL_ENTITY_ID)) if qualifiers else None
    institution = _text(_first(header, INSTITUTION))
    system = f"{SOURCE_KIND}:{institution}" if institution else SOURCE_KIND
    person: str = (
        mrn_key(key, issuer, patient_id) if issuer else source_key(key, system, patient_id)
    )
    return person


def _in_uid_order(instances: Sequence[Instance]) -> list[Instance]:
    """The instances by UID: a study's or series' row takes its lineage (``_record_hash``, source
    file) from the same instance whatever order the files were read in (engines, batch cuts)."""
    return sorted(instances, key=lambda i: str(i.row["instance_uid"]))


def series_rows(instances: Sequence[Instance], known: pa.Table) -> pa.Table:
    """One row per series the run's instances belong to; counts over silver's instances and these.

    ``known`` is silver's instances of the run's studies (instance, series and study UID, modality),
    so a series delivered over several runs counts all its instances.
    """
    members = _members(instances, known, "series_uid")
    rows: dict[str, dict[str, Any]] = {}
    for inst in _in_uid_order(instances):  # the row's lineage: its first instance by UID
        uid = inst.row["series_uid"]
        if uid in rows:
            continue
        rows[uid] = {
            "series_uid": uid,
            "study_uid": inst.row["study_uid"],
            "person_key": inst.row["person_key"],
            "modality": inst.row["modality"],
            "body_part": inst.body_part,
            "series_number": inst.series_number,
            "started_at": inst.series_started_at or inst.study_started_at,
            "number_of_instances": len(members[uid]),
            **_lineage(inst.row),
        }
    return pa.Table.from_pylist(list(rows.values()), schema=SILVER_IMAGING_SERIES.schema)


def study_rows(instances: Sequence[Instance], known: pa.Table) -> pa.Table:
    """One row per study the run's instances belong to; modalities and counts over silver and these."""
    members = _members(instances, known, "study_uid")
    modalities: dict[str, set[str]] = {}
    series: dict[str, set[str]] = {}
    for row in [*known.to_pylist(), *(i.row for i in instances)]:
        if row["study_uid"] in members:
            if row.get("modality"):
                modalities.setdefault(row["study_uid"], set()).add(row["modality"])
            series.setdefault(row["study_uid"], set()).add(row["series_uid"])
    rows: dict[str, dict[str, Any]] = {}
    for inst in _in_uid_order(instances):
        uid = inst.row["study_uid"]
        if uid in rows:
            continue
        rows[uid] = {
            "study_uid": uid,
            "person_key": inst.row["person_key"],
            "started_at": inst.study_started_at,
            "modalities": ",".join(sorted(modalities.get(uid, ()))) or None,
            "number_of_series": len(series[uid]),
            "number_of_instances": len(members[uid]),
            **_lineage(inst.row),
        }
    return pa.Table.from_pylist(list(rows.values()), schema=SILVER_IMAGING_STUDIES.schema)


def _members(instances: Sequence[Instance], known: pa.Table, level: str) -> dict[str, set[str]]:
    """Instance UIDs per series or study UID, over silver's known instances and the run's."""
    wanted = {i.row[level] for i in instances}
    members: dict[str, set[str]] = {uid: set() for uid in wanted}
    for row in [*known.select([level, "instance_uid"]).to_pylist(), *(i.row for i in instances)]:
        if row[level] in members:
            members[row[level]].add(row["instance_uid"])
    return members


def _lineage(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("_record_hash", "_source_kind", "_run_id")}


# ---------------------------------------------------------------------------------------------
# DICOM JSON and value helpers


def _first(header: Mapping[str, Any] | None, tag: str) -> Any:
    values = _values(header, tag)
    return values[0] if values else None


def _values(header: Mapping[str, Any] | None, tag: str) -> list[Any]:
    element = (header or {}).get(tag) or {}
    values = element.get("Value") or []
    return [v for v in values if v is not None]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _zone(offset: Any) -> tzinfo:
    """TimezoneOffsetFromUTC (``+HHMM``/``-HHMM``) as a zone; UTC when absent or unreadable."""
    match = re.fullmatch(r"([+-])(\d\d)(\d\d)", str(offset or "").strip())
    if not match:
        return UTC
    sign = -1 if match.group(1) == "-" else 1
    return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


def parse_da(value: Any) -> date | None:
    """A DA value (``YYYYMMDD``, or the ``YYYY.MM.DD`` of old ACR-NEMA files) as a date."""
    digits = str(value or "").strip().replace(".", "")
    try:
        return datetime.strptime(digits, "%Y%m%d").date() if len(digits) == 8 else None
    except ValueError:
        return None


def parse_tm(value: Any) -> time | None:
    """A TM value (``HH[MM[SS[.FFFFFF]]]``, or old ``HH:MM:SS``) as a time."""
    text = str(value or "").strip().replace(":", "")
    match = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(?:\.(\d{1,6}))?", text)
    if not match:
        return None
    hour, minute, second = (int(g or 0) for g in match.group(1, 2, 3))
    micro = int((match.group(4) or "0").ljust(6, "0"))
    try:
        return time(hour, minute, min(second, 59), micro)
    except ValueError:
        return None


def _when(day: Any, clock: Any, zone: tzinfo) -> datetime | None:
    """A DA and a TM as one UTC instant (midnight without a time); None without a date."""
    parsed = parse_da(day)
    if parsed is None:
        return None
    return datetime.combine(parsed, parse_tm(clock) or time(0), zone).astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# PS3.15 Annex E: the Basic Application Level Confidentiality Profile


@dataclass(frozen=True)
class ProfileRule:
    """One row of PS3.15 Table E.1-1: the attribute, its basic-profile action, and whether the
    Retain Longitudinal Temporal Information with Modified Dates Option cleans (shifts) it."""

    tag: str
    name: str
    action: str
    modified_dates: bool


@dataclass(frozen=True)
class Profile:
    """Table E.1-1 as lookups: exact tags, and the group ranges written with ``XX``."""

    exact: dict[int, ProfileRule]
    masked: tuple[tuple[int, int, ProfileRule], ...]
    private: (
        ProfileRule  # the row for every attribute of an odd group: "(GGGG,EEEE) where GGGG is odd"
    )

    def rule(self, tag: int) -> ProfileRule | None:
        """The rule of a tag: an exact row first, else a ``(50XX,XXXX)``-style range row."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        return next((rule for mask, value, rule in self.masked if tag & mask == value), None)


@cache
def load_profile(path: Path = PROFILE_FILE) -> Profile:
    """PS3.15 Table E.1-1 from the standard's own machine-readable table (innolitics/dicom-standard)."""
    exact: dict[int, ProfileRule] = {}
    masked: list[tuple[int, int, ProfileRule]] = []
    private: ProfileRule | None = None
    for item in json.loads(path.read_text(encoding="utf-8")):
        rule = ProfileRule(
            tag=item["tag"],
            name=item["name"],
            action=item["basicProfile"],
            modified_dates=item.get("rtnLongModifDatesOpt") == "C",
        )
        if item["tag"].upper() == PRIVATE_ROW:
            private = rule
            continue
        hexes = item["tag"].strip("()").replace(",", "")
        if not re.fullmatch(r"[0-9A-Fa-fX]{8}", hexes):
            raise ValueError(
                f"{path}: row {item['name']!r} has a tag this reader does not know: {item['tag']}"
            )
        if "X" in hexes.upper():
            mask = int("".join("0" if c in "xX" else "F" for c in hexes), 16)
            value = int("".join("0" if c in "xX" else c for c in hexes), 16)
            masked.append((mask, value, rule))
        else:
            exact[int(hexes, 16)] = rule
    if private is None:
        raise ValueError(f"{path}: no row for private attributes {PRIVATE_ROW}")
    return Profile(exact, tuple(masked), private)


#: Type (PS3.3) of the profile's X/Z/D-choice attributes that the image IODs this lake receives
#: (CT, MR, CR/DX, US, SC: Patient, General Study, General Series, General Image modules) require.
#: The profile picks X "unless Z or D is required to maintain IOD conformance": a listed Type 2
#: attribute is emptied (Z), a Type 1 one dummied (D); any other is treated as optional (Type 3)
#: and removed where X is allowed.
IOD_TYPE: dict[int, str] = {
    0x00100020: "2",  # Patient ID (Patient module, Type 2)
    0x00080023: "2",  # Content Date (General Image, Type 2C)
    0x00080033: "2",  # Content Time (General Image, Type 2C)
}


def resolve_action(action: str, tag: int) -> str:
    """One of X, Z, D, U, K (or U* for a sequence whose UIDs are replaced) for a profile action.

    Combinations follow PS3.15 E.1.1: ``X/Z`` is X unless Z is required (Type 2), ``X/D`` X unless
    D is required (Type 1), ``X/Z/D`` X, Z or D for Type 3, 2 or 1, ``Z/D`` Z unless D is required,
    ``X/Z/U*`` X, Z or (Type 1) U* for a sequence of references.
    """
    choices = action.split("/")
    if len(choices) == 1:
        return choices[0]
    required = IOD_TYPE.get(tag, "3")
    if required == "3" and "X" in choices:
        return "X"
    if required in ("2", "3") and "Z" in choices:
        return "Z"
    return next(c for c in choices if c in ("D", "U*", "U"))


#: D (dummy) values by VR: non-empty, valid for the VR, and identifying nothing
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, Any] = {
    "PN": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "UR": "urn:anonymized",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}


def deidentify(
    ds: Dataset,
    *,
    new_uid: Callable[[str], str],
    shift_days: int,
    profile: Profile | None = None,
) -> Dataset:
    """The data set de-identified in place by PS3.15 Annex E (basic profile, modified-dates option).

    Private attributes go (Table E.1-1's row for odd groups: X). Every attribute of Table E.1-1, at any
    depth of any sequence, gets its action: X removed, Z emptied, D a dummy value, U a UID from
    ``new_uid`` (the same original UID always gets the same new one), K kept. Dates the option
    cleans move by ``shift_days`` (a DA or DT keeps its precision; a TM, moved by whole days,
    keeps its value); a date that cannot be read falls back to the basic action. Pixel data is
    untouched (its bytes, compressed or not, are copied as read). The result says what was done:
    Patient Identity Removed, De-identification Method and its code sequence (113100, 113107),
    Longitudinal Temporal Information Modified.
    """
    _apply(ds, profile or load_profile(), new_uid, shift_days)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = list(DEID_METHOD)
    codes = []
    for value, meaning in (BASIC_PROFILE_CODE, MODIFIED_DATES_CODE):
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
    return ds


def _apply(ds: Dataset, profile: Profile, new_uid: Callable[[str], str], shift_days: int) -> None:
    """Apply the profile to one data set and the items of its sequences; an attribute the table
    does not name is only read (converted from its raw bytes) when it is a sequence."""
    for tag in list(ds.keys()):
        rule = profile.private if tag.is_private else profile.rule(int(tag))
        if rule is None or rule.action == "K":
            if _is_sequence(ds, tag):
                _recurse(ds[tag], profile, new_uid, shift_days)
            continue
        if rule.action == "X" and not rule.modified_dates:
            del ds[tag]
            continue
        elem = ds[tag]
        if rule.modified_dates and _shift_dates(elem, shift_days):
            continue
        action = resolve_action(rule.action, int(tag))
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = DicomSequence() if elem.VR == "SQ" else None
        elif action == "D":
            _dummy(elem, new_uid)
        elif action == "U":
            _remap(elem, new_uid)
        else:  # U*: a sequence kept, the instance UIDs it references replaced
            _recurse(elem, profile, new_uid, shift_days)


def _is_sequence(ds: Dataset, tag: BaseTag) -> bool:
    """Whether an attribute is a sequence, without converting its value."""
    vr = ds.get_item(tag).VR
    if vr in (None, "UN"):  # implicit VR, or stored as UN: pydicom reads it by the dictionary's VR
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return bool(vr == "SQ")


def _recurse(
    elem: DataElement, profile: Profile, new_uid: Callable[[str], str], shift_days: int
) -> None:
    if elem.VR == "SQ":
        for item in elem.value:
            _apply(item, profile, new_uid, shift_days)


def _dummy(elem: DataElement, new_uid: Callable[[str], str]) -> None:
    if elem.VR == "SQ":
        elem.value = DicomSequence([Dataset()])
    elif elem.VR == "UI":
        _remap(elem, new_uid)
    else:
        elem.value = DUMMY_BY_VR.get(elem.VR, DUMMY_TEXT)


def _remap(elem: DataElement, new_uid: Callable[[str], str]) -> None:
    if elem.VR != "UI":  # a UID attribute stored with another VR (UN): nothing safe to keep
        elem.value = None
        return
    values = _as_list(elem.value)
    mapped = [new_uid(str(v)) if str(v).strip() else "" for v in values]
    elem.value = mapped if isinstance(elem.value, MultiValue) else (mapped[0] if mapped else None)


def _shift_dates(elem: DataElement, days: int) -> bool:
    """Move a DA or DT value by ``days`` (TM unchanged); False when it cannot be shifted."""
    if elem.VR == "TM":
        return True
    if elem.VR not in ("DA", "DT"):
        return False
    shifted = []
    for value in _as_list(elem.value):
        text = str(value).strip()
        parts = text.split("-") if elem.VR == "DA" else [text]
        moved = [_shift_one(part, days) if part else "" for part in parts]
        if any(m is None for m in moved):
            return False
        shifted.append("-".join(m for m in moved if m is not None))
    if isinstance(elem.value, MultiValue):
        elem.value = shifted
    else:
        elem.value = shifted[0] if shifted else elem.value
    return True


def _shift_one(text: str, days: int) -> str | None:
    """A DA (``YYYYMMDD``) or DT (``YYYYMMDD…``) moved by ``days``: the date digits change, the
    rest (time, fraction, offset) stays."""
    day = parse_da(text[:8])
    if day is None:
        return None
    return (day + timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def write_deid(ds: Dataset, path: Path) -> None:
    """Write a de-identified data set as a DICOM file (preamble, meta header) in its own transfer
    syntax, so encapsulated pixel data is written back as the same bytes.

    A data set encoded in implicit VR under an explicit-VR transfer syntax (some writers do that)
    has every value read first, so each attribute is written with its dictionary VR.
    """
    syntax = UID(transfer_syntax(ds))
    tags = list(ds.keys())  # iterating a Dataset would convert its elements; its keys do not
    if not syntax.is_implicit_VR and any(
        getattr(ds.get_item(tag), "is_implicit_VR", False) for tag in tags
    ):
        ds.walk(lambda _dataset, _element: None)  # reading converts every raw element
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    validate_file_meta(meta, enforce_standard=True)
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    ds.save_as(partial, enforce_file_format=True)
    partial.replace(path)


#: what reading an archived file, de-identifying it or writing the copy can raise
DEID_ERRORS = (
    OSError,
    Rejected,
    InvalidDicomError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
)


#: modalities whose images routinely carry burned-in text: ultrasound, secondary capture, external camera
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC"})
#: Secondary Capture Image Storage SOP classes (screenshots, scanned documents, 3D renderings)
SECONDARY_CAPTURE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the instance's pixels may hold burned-in identifiers, or None.

    Declared ``BurnedInAnnotation (0028,0301) = YES``; a modality that routinely burns text in
    (ultrasound, secondary capture, external camera); a Secondary Capture SOP class; or an
    ``ImageType`` of ``DERIVED\\SECONDARY`` (screenshots, screen saves) — unless the file declares
    ``BurnedInAnnotation = NO`` and its modality is not one of the above. The header profile
    (PS3.15 Annex E) cannot reach text drawn into the pixels, so these get no de-identified copy.
    """
    declared = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if declared == "YES":
        return "the header declares BurnedInAnnotation (0028,0301) YES"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in BURNED_IN_MODALITIES:
        return f"modality {modality} routinely carries burned-in annotations"
    if declared == "NO":
        return None
    if str(ds.get("SOPClassUID", "") or "").strip() in SECONDARY_CAPTURE_SOP_CLASSES:
        return "a Secondary Capture SOP class (screenshots, scanned documents)"
    image_type = [str(v).strip().upper() for v in _as_list(ds.get("ImageType"))]
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "ImageType DERIVED\\SECONDARY (a screenshot or secondary capture)"
    return None


def deid_copies(
    lake: Lake, instances: Sequence[Instance], *, key: bytes
) -> tuple[Split, list[Instance]]:
    """Write each instance's de-identified copy below the lake root: the instance rows whose copy
    was written (and those instances), the others quarantined: ``deid.dicom_burned_in`` when its
    pixels may carry identifiers (:func:`burned_in_risk`), ``deid.dicom_failed`` when the copy
    could not be written."""
    good: list[Instance] = []
    bad: list[dict[str, Any]] = []
    profile = load_profile()
    for inst in instances:
        try:
            ds = parse(lake.open_file(inst.archive_path), where=inst.archive_path)
            burned_in = burned_in_risk(ds)
            if burned_in is not None:  # the header profile cannot reach text drawn into the pixels
                bad.append(
                    {
                        "rule_id": "deid.dicom_burned_in",
                        "reason": (
                            f"instance {inst.row['instance_uid']}: {burned_in}; pixel data may show "
                            "patient identifiers, so no de-identified copy is made"
                        ),
                        "record_id": inst.row["instance_uid"],
                        "record_hash": inst.row["_record_hash"],
                    }
                )
                continue
            deidentify(
                ds,
                new_uid=lambda uid: new_uid(key, uid),
                shift_days=inst.shift_days,
                profile=profile,
            )
            write_deid(ds, lake.root / inst.row["deid_path"])
        except DEID_ERRORS as exc:  # the instance stays out of silver, the reason in quarantine
            bad.append(
                {
                    "rule_id": "deid.dicom_failed",
                    "reason": (
                        f"instance {inst.row['instance_uid']}: the de-identified copy could not be "
                        f"written ({type(exc).__name__})"
                    ),
                    "record_id": inst.row["instance_uid"],
                    "record_hash": inst.row["_record_hash"],
                }
            )
            continue
        good.append(inst)
    rows = [i.row for i in good]
    return Split(
        pa.Table.from_pylist(rows, schema=SILVER_IMAGING_INSTANCES.schema),
        quarantine_rows(bad, table_name=SILVER_IMAGING_INSTANCES.name),
    ), good


# ---------------------------------------------------------------------------------------------
# the stage


KNOWN_COLUMNS = ("instance_uid", "series_uid", "study_uid", "modality")


def silver_instances(lake: Lake, *, studies: set[str]) -> pa.Table:
    """Silver's instances of these studies (UIDs and modality), for counts over several runs."""
    known = lake.read(SILVER_IMAGING_INSTANCES.name, columns=list(KNOWN_COLUMNS))
    known = known.cast(pa.schema([pa.field(n, pa.string()) for n in KNOWN_COLUMNS]))  # string_view
    return known.filter(pc.is_in(known.column("study_uid"), pa.array(sorted(studies), pa.string())))


def to_staging(
    lake: Lake,
    *,
    run_id: str,
    key: bytes,
    max_shift_days: int,
    versions: dict[str, int | None],
    bronze_batches: Mapping[str, Sequence[str]] | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """This run's bronze files → staging.imaging_{studies,series,instances} + de-identified copies
    (built in memory: ``engine`` is unused yet).

    Ledger: ``silver.imaging_instances`` counts bronze files (out, quarantined, or merged into an
    instance seen earlier in the run); the studies and series tables count the rows built from
    the run's instances, all staged.
    """
    bronze = lake.read(
        BRONZE_DICOM.name,
        version=versions.get(BRONZE_DICOM.name),
        where={"_run_id": list((bronze_batches or {}).get(BRONZE_DICOM.name) or [run_id])},
    )
    imaging = instances_from_bronze(bronze, key=key, max_shift_days=max_shift_days)
    written, kept = deid_copies(lake, imaging.instances, key=key)
    known = silver_instances(lake, studies={i.row["study_uid"] for i in kept})
    tables = {
        SILVER_IMAGING_STUDIES: study_rows(kept, known),
        SILVER_IMAGING_SERIES: series_rows(kept, known),
        SILVER_IMAGING_INSTANCES: written.good,
    }
    lake.insert_new(
        QUARANTINE.name,
        stamp_run(pa.concat_tables([imaging.quarantined, written.quarantined]), run_id),
    )
    entries = [
        Entry(
            stage="silver",
            table_name=SILVER_IMAGING_INSTANCES.name,
            records_in=imaging.records_in,
            records_out=written.good.num_rows,
            quarantined=imaging.quarantined.num_rows + written.quarantined.num_rows,
            merged=imaging.merged,
        ),
        *(
            Entry(
                stage="silver",
                table_name=spec.name,
                records_in=rows.num_rows,
                records_out=rows.num_rows,
            )
            for spec, rows in tables.items()
            if spec is not SILVER_IMAGING_INSTANCES
        ),
    ]
    versions_out = {
        staging_name(spec.name): lake.write(
            staging_name(spec.name), rows, mode="overwrite", spec=spec
        )
        for spec, rows in tables.items()
    }
    ledger.record(lake, run_id, entries)
    return StageResult(versions_out, entries)
