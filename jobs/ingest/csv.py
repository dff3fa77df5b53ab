"""CSV extracts: landing files → ``bronze.csv_rows`` → the silver tables FHIR and HL7 v2 fill.

A hospital onboards an extract by writing a mapping file, not code: ``landing/csv/<name>.mapping.yaml``
next to the extracts (see ``jobs/ingest/csv_mappings/`` for examples, e.g. Synthea's
``patients.csv``). The mapping says which files it reads (globs relative to ``landing/csv``), how
they are written (encoding, delimiter, quote character, header line), which silver table they
feed (or ``bronze_only``), and how each silver field is read from a column: date/datetime
formats, the code system of a code column (fixed, or read per row from a system column), value
maps (``F`` → ``female``), constants. :class:`Mapping` validates the file itself; an invalid one
stops ingest with :class:`MappingError` naming the file and the field.

Bronze keeps one row per data record: the line as decoded (a quoted field spanning lines keeps
them together), its file's header, its 1-based line number as ``_source_offset`` and the hash of
the mapping it was read with; ``bronze.csv_mappings`` keeps each mapping's text by that hash, so
``to_staging`` needs nothing but bronze. The record hash covers the header and the line:
re-ingesting a file, or the same extract under another name, adds nothing.

Refused at ingest (``quarantine``, table ``bronze.csv_rows``):

- a whole file (offset 0, counted as one record): no mapping matches it (``ingest.no_mapping``:
  the file stays in landing and is read again once a mapping exists), several do
  (``ingest.csv_ambiguous_mapping``), it has no header (``parse.csv_empty_file``), its header
  lacks the mapping's columns (``parse.csv_wrong_delimiter`` when another delimiter would split it
  into them, naming that delimiter; else ``parse.csv_header_mismatch`` naming the missing columns);
- a line: bytes that do not decode under the declared encoding (``parse.csv_bad_encoding``), a
  field count other than the header's (``parse.csv_ragged_row``), a quote not closed within
  :data:`MAX_RECORD_LINES` lines (``parse.csv_unclosed_quote``: that line only; the next are read).
  Lines above the header and blank lines are no records.

Refused by ``to_staging`` (table: the target silver table): unparseable dates and numbers
(``parse.csv_bad_date``, ``parse.csv_bad_number``), a value outside the field's value map
(``parse.csv_bad_value``), an empty required field (``parse.csv_missing_field``), a code system
value the mapping does not know (``parse.csv_unknown_code_system``). The rows it accepts are
pseudonymized and date-shifted like FHIR's, standardized with the same steps
(``jobs/clean/standardize.py``), and appended to the staging tables FHIR and HL7 v2 wrote.

Keys: a patient's ``person_key`` is ``mrn_key(key, authority, mrn)`` when the mapping names the
MRN's assigning authority, so the same MRN in FHIR, HL7 v2 and CSV is one person; without one it
is the ``source_key`` of (``csv:<source_system>``, id). Other records are keyed by their
``record_id`` columns under the same source system.

Ledger: ``ingest`` → ``bronze.csv_rows`` (lines in = new + quarantined + merged); per target table
``silver`` and ``standardize`` entries named ``<silver table>#csv`` (FHIR's own entries for the
table keep their names); ``bronze_only`` extracts count under ``silver`` → ``bronze.csv_rows``.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc
import yaml  # type: ignore[import-untyped, unused-ignore]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlake import ledger
from medlake.governance.deid import date_shift_days, shift_date, shift_datetime, zip3
from medlake.governance.pseudonyms import mrn_key, record_key, source_key
from medlake.jobs.clean import terminology
from medlake.jobs.clean.standardize import STANDARDIZE
from medlake.jobs.ingest import limits
from medlake.jobs.ingest.fhir import ICD10CM, LOINC, RXNORM, SNOMED
from medlake.jobs.stage import StageResult, ingest_files, reader_of
from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.quarantine import Split, quarantine_rows, stamp_run
from medlake.registry import (
    BRONZE_CSV,
    BRONZE_CSV_MAPPINGS,
    FHIR_SILVER,
    QUARANTINE,
    SILVER_CONDITIONS,
    SILVER_ENCOUNTERS,
    SILVER_MEDICATIONS,
    SILVER_OBSERVATIONS,
    SILVER_PATIENTS,
    TableSpec,
    staging_name,
)

if TYPE_CHECKING:
    from medlake.engines import Engine

log = logging.getLogger(__name__)

SOURCE_KIND = "csv"
MAPPING_SUFFIXES = (".mapping.yaml", ".mapping.yml")
#: the shipped example mappings (copy one into landing/csv/ to use it)
SHIPPED_MAPPINGS = Path(__file__).parent / "csv_mappings"
BRONZE_ONLY = "bronze_only"

Target = Literal[
    "patients", "encounters", "observations", "conditions", "medications", "bronze_only"
]
TARGETS: dict[str, TableSpec] = {
    "patients": SILVER_PATIENTS,
    "encounters": SILVER_ENCOUNTERS,
    "observations": SILVER_OBSERVATIONS,
    "conditions": SILVER_CONDITIONS,
    "medications": SILVER_MEDICATIONS,
}
#: the key column of each target and the record kind its pseudonym is made under
RECORD_KEYS: dict[str, tuple[str, str]] = {
    "encounters": ("encounter_key", "Encounter"),
    "observations": ("observation_key", "Observation"),
    "conditions": ("condition_key", "Condition"),
    "medications": ("medication_key", "MedicationRequest"),
}
#: code fields and the system field a mapping's ``system`` / ``system_column`` fills
CODE_FIELDS = {"code": "code_system", "type_code": "type_system"}
#: silver fields a mapping may not name: keys, lineage and what standardization fills
DERIVED = frozenset(
    {"person_key", "source_key", "source_system", "deceased", *CODE_FIELDS.values()}
    | {"mapping_status", "_mapped_from", "_unit_converted_from", "_value_original", "_range_flag"}
)
#: short names a mapping may use for a code system; any other system is written as a URI
SYSTEM_NAMES = {
    "LOINC": LOINC,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "ICD10CM": ICD10CM,
    "ICD-10-CM": ICD10CM,
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "RXNORM": RXNORM,
}
#: the standard code column a coded row also fills, by table and code system
STANDARD_CODE_COLUMNS: dict[str, dict[str, str]] = {
    "conditions": {ICD10CM: "icd10cm_code", SNOMED: "snomed_code"},
    "medications": {RXNORM: "rxnorm_code"},
}
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
#: how many lines one quoted field may span before its opening quote counts as a stray one
MAX_RECORD_LINES = 50
#: the most of a whole refused file a quarantine row keeps (the file itself stays in landing)
MAX_FILE_RECORD = 64 * 1024
BOOLEAN = {
    "true": True,
    "1": True,
    "yes": True,
    "y": True,
    "false": False,
    "0": False,
    "no": False,
    "n": False,
}
_NAME = r"[a-z][a-z0-9_]*"


class MappingError(ValueError):
    """A mapping file that cannot be used, naming the file and the field."""


def system_uri(name: str) -> str | None:
    """The system URI a mapping's code system name stands for; None for a name that is neither."""
    if name.upper() in SYSTEM_NAMES:
        return str(SYSTEM_NAMES[name.upper()])
    return name if re.match(r"^[a-z][a-z0-9+.-]*:\S+$", name) else None


class Column(BaseModel):
    """How one silver field is read: from a column (parsed by the field's silver type), or a constant."""

    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    value: str | None = None  # a constant, e.g. status: final
    format: str | None = None  # strptime format of a date/datetime column (default ISO 8601)
    required: bool = False  # an empty value quarantines the row
    values: dict[str, str] | None = None  # value map; a value outside it quarantines the row
    system: str | None = None  # code fields: the code system of every row
    system_column: str | None = None  # … or the column naming each row's code system
    systems: dict[str, str] | None = None  # system column value → code system name or URI

    @model_validator(mode="after")
    def _one_source(self) -> Column:
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of 'column' and 'value'")
        if self.system_column is not None and not self.systems:
            raise ValueError("'system_column' needs 'systems' (column value → code system)")
        if self.system is not None and self.system_column is not None:
            raise ValueError("give 'system' or 'system_column', not both")
        for name in [self.system, *(self.systems or {}).values()]:
            if name is not None and system_uri(name) is None:
                raise ValueError(
                    f"unknown code system {name!r}: use one of {', '.join(sorted(SYSTEM_NAMES))} "
                    "or a system URI"
                )
        return self


class Patient(BaseModel):
    """The column naming the patient, and the assigning authority of that id when it is an MRN."""

    model_config = ConfigDict(extra="forbid")

    column: str
    authority: str | None = None  # system URI of the MRN's assigning authority


class Mapping(BaseModel):
    """One extract's mapping file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{_NAME}$")
    files: list[str] = Field(min_length=1)  # globs relative to landing/csv
    target: Target
    source_system: str | None = Field(default=None, pattern=f"^{_NAME}$")
    encoding: str = "utf-8"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote_char: str = Field(default='"', min_length=1, max_length=1)
    header_row: int = Field(
        default=1, ge=1
    )  # 1-based line of the header; lines above it are skipped
    decimal_separator: Literal[".", ","] = "."
    timezone: str = "UTC"  # the zone of datetimes written without an offset: IANA name or ±HH:MM
    patient: Patient | None = None
    record_id: list[str] = []
    fields: dict[str, Column] = {}

    @field_validator("files", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codec = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        if "\n,;|\t\"'".encode(codec.name, errors="replace") != b"\n,;|\t\"'":
            raise ValueError(
                f"encoding {value!r} is not ASCII-compatible (UTF-16/32 extracts are not read)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone_of(value)
        return value

    @model_validator(mode="after")
    def _fits_target(self) -> Mapping:
        if self.target == BRONZE_ONLY:
            return self
        spec = TARGETS[self.target]
        if self.patient is None:
            raise ValueError(f"a {self.target} mapping needs 'patient' (the patient id column)")
        if self.target != "patients" and not self.record_id:
            raise ValueError(
                f"a {self.target} mapping needs 'record_id' (the columns naming a record)"
            )
        for name, column in self.fields.items():
            if name not in spec.schema.names or name.startswith("_"):
                raise ValueError(f"fields.{name}: {spec.name} has no field {name!r}")
            if name in DERIVED or name == RECORD_KEYS.get(self.target, ("",))[0]:
                raise ValueError(f"fields.{name}: medlake derives {name!r}; it cannot be mapped")
            kind = spec.schema.field(name).type
            if column.format is not None and not (
                pa.types.is_timestamp(kind) or pa.types.is_date(kind)
            ):
                raise ValueError(
                    f"fields.{name}: 'format' applies to date and datetime fields only"
                )
            if (column.system or column.system_column) and name not in CODE_FIELDS:
                raise ValueError(
                    f"fields.{name}: a code system applies to {', '.join(CODE_FIELDS)} only"
                )
        return self

    @property
    def source(self) -> str:
        """The source system its keys are made under: shared by extracts of one system."""
        return f"csv:{self.source_system or self.name}"

    def columns(self) -> list[str]:
        """Every column the mapping reads: a file's header must hold them all."""
        named = [self.patient.column] if self.patient else []
        named += self.record_id
        for column in self.fields.values():
            named += [c for c in (column.column, column.system_column) if c]
        return list(dict.fromkeys(named))

    def matches(self, relpath: str) -> bool:
        """Whether a file (relative to landing/csv) is one of this extract's."""
        return any(fnmatch(relpath, pattern) for pattern in self.files)


def zone_of(name: str) -> tzinfo:
    """A time zone from an IANA name or a fixed ``±HH:MM`` offset."""
    fixed = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
    if fixed:
        delta = timedelta(hours=int(fixed.group(2)), minutes=int(fixed.group(3)))
        return timezone(-delta if fixed.group(1) == "-" else delta)
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name or ±HH:MM") from None


def parse_mapping(text: str, *, name: str) -> Mapping:
    """A mapping from its YAML text; :class:`MappingError` names the file and each bad field."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{name}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(document, dict):
        raise MappingError(f"{name}: a mapping file holds a YAML mapping (key: value lines)")
    try:
        return Mapping.model_validate(document)
    except ValidationError as exc:
        problems = [
            ": ".join(
                [
                    *([".".join(str(p) for p in err["loc"])] if err["loc"] else []),
                    err["msg"].removeprefix("Value error, "),
                ]
            )
            for err in exc.errors()
        ]
        raise MappingError(f"{name}: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class MappingFile:
    """A validated mapping and the text it was read from (kept in bronze)."""

    name: str
    text: str
    mapping: Mapping

    @property
    def hash(self) -> str:
        """The content hash bronze rows name their mapping by."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def as_row(self, *, run_id: str, ingested_at: datetime) -> dict[str, Any]:
        """The mapping as a ``bronze.csv_mappings`` row."""
        return {
            "mapping_hash": self.hash,
            "extract": self.mapping.name,
            "mapping_file": self.name,
            "mapping": self.text,
            "_ingested_at": ingested_at,
            "_run_id": run_id,
        }


def load_mappings(csv_dir: Path) -> list[MappingFile]:
    """The mapping files of a landing folder, validated; two with one name is an error too."""
    if not csv_dir.is_dir():
        return []
    found = [
        MappingFile(p.name, text, parse_mapping(text, name=str(p)))
        for p in sorted(csv_dir.rglob("*"))
        if p.is_file() and p.name.endswith(MAPPING_SUFFIXES)
        for text in [p.read_text(encoding="utf-8")]
    ]
    names = [m.mapping.name for m in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MappingError(f"{csv_dir}: several mapping files name the extract {', '.join(twice)}")
    return found


def mapping_file(path: Path) -> MappingFile:
    """One mapping file, validated (e.g. a shipped example)."""
    text = path.read_text(encoding="utf-8")
    return MappingFile(path.name, text, parse_mapping(text, name=str(path)))


# ---------------------------------------------------------------------------------------------
# landing files → raw records

RAW_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("source_offset", pa.int64()),
        pa.field("text", pa.large_string()),
        pa.field("header", pa.string()),
        pa.field("extract", pa.string()),
        pa.field("target", pa.string()),
        pa.field("mapping_file", pa.string()),
        pa.field("mapping_hash", pa.string()),
        pa.field("error_rule", pa.string()),
        pa.field("error_reason", pa.string()),
    ]
)


def landing_files(csv_dir: Path) -> list[Path]:
    """The extract files of a landing folder: every file but mapping files and hidden ones."""
    if not csv_dir.is_dir():
        return []
    return sorted(
        p
        for p in csv_dir.rglob("*")
        if p.is_file()
        and not p.name.endswith(MAPPING_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(csv_dir).parts)
    )


def read_files(
    paths: Sequence[Path], *, root: Path, csv_dir: Path, mappings: Sequence[MappingFile]
) -> pa.Table:
    """Raw records of many extract files (names relative to the landing root), each read with
    the one mapping whose globs match it."""
    rows = [
        record
        for path in paths
        for record in read_file(
            path, name=path.relative_to(root).as_posix(), csv_dir=csv_dir, mappings=mappings
        )
    ]
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def read_file(
    path: Path, *, name: str, csv_dir: Path, mappings: Sequence[MappingFile]
) -> Iterator[dict[str, Any]]:
    """Raw records of one extract file (``name``: how bronze and quarantine name it), read with
    the one mapping whose globs match its path under ``csv_dir``; a file no mapping or several
    mappings match is one refused whole-file record."""
    matching = [m for m in mappings if m.mapping.matches(path.relative_to(csv_dir).as_posix())]
    if len(matching) != 1:
        rule, said = (
            ("ingest.no_mapping", "no mapping file's 'files' globs match it; it stays in landing")
            if not matching
            else (
                "ingest.csv_ambiguous_mapping",
                f"the mapping files {', '.join(m.name for m in matching)} all match it",
            )
        )
        yield _file_error(name, rule, f"{name}: {said}", data=_head(path))
        return
    yield from read_bytes(limits.read_bounded(path, name=name), name=name, mapping=matching[0])


def reader(
    csv_dir: Path, mappings: Sequence[MappingFile]
) -> Callable[..., Iterator[pa.RecordBatch]]:
    """The reader both engines stream the extracts of ``csv_dir`` through, with its mappings:
    ``(path, name) -> record batches`` of :data:`RAW_SCHEMA`."""
    read: Callable[..., Iterator[pa.RecordBatch]] = reader_of(
        functools.partial(read_file, csv_dir=csv_dir, mappings=tuple(mappings)), RAW_SCHEMA
    )
    return read


def _head(path: Path) -> bytes:
    """Enough of a refused file for its quarantine row (and to tell it was longer)."""
    with path.open("rb") as handle:
        return handle.read(MAX_FILE_RECORD + 1)


def read_bytes(data: bytes, *, name: str, mapping: MappingFile) -> Iterator[dict[str, Any]]:
    """Raw records of one extract: one per data record (a line, or the lines a quoted field
    spans), at its first line's number; or one whole-file record at offset 0."""
    spec = mapping.mapping
    extract = {
        "extract": spec.name,
        "target": spec.target,
        "mapping_file": mapping.name,
        "mapping_hash": mapping.hash,
    }
    if codecs.lookup(spec.encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if len(lines) < spec.header_row or not lines[spec.header_row - 1].strip():
        yield _file_error(
            name, "parse.csv_empty_file", f"{name}: no header on line {spec.header_row}", data=data
        )
        return
    try:
        header = lines[spec.header_row - 1].decode(spec.encoding)
    except UnicodeDecodeError as exc:
        yield _file_error(
            name,
            "parse.csv_bad_encoding",
            f"{name}: the header (line {spec.header_row}) is not {spec.encoding} ({exc.reason} at byte {exc.start})",
            data=data,
        )
        return
    try:
        limits.check_bytes(header, where=f"{name} line {spec.header_row} (the header)")
    except limits.LimitExceeded as over:
        yield _file_error(name, over.rule_id, over.reason, data=data)
        return
    try:
        problem = header_problem(header, spec)
    except Rejected as rej:
        problem = (rej.rule_id, f"the header (line {spec.header_row}) {rej.reason}")
    if problem:
        yield _file_error(name, *problem, data=data)
        return
    width = len(split_fields(header, spec))
    with limits.clock() as clock:
        for number, text, rule, reason in records(lines, spec, start=spec.header_row + 1):
            where = f"{name} line {number}"
            if rule is None:
                try:
                    with clock.record(where):
                        limits.check_bytes(text, where=where)
                        fields = split_fields(text, spec)
                except Rejected as rej:
                    yield {
                        "source_file": name,
                        "source_offset": number,
                        "text": text,
                        "header": header,
                        **extract,
                        "error_rule": rej.rule_id,
                        "error_reason": f"{where}: {rej.reason}",
                    }
                    continue
                except limits.LimitExceeded as over:
                    yield {
                        "source_file": name,
                        "source_offset": number,
                        "text": limits.clip(text),
                        "header": header,
                        **extract,
                        "error_rule": over.rule_id,
                        "error_reason": over.reason,
                    }
                    continue
                if len(fields) != width:
                    rule = "parse.csv_ragged_row"
                    reason = f"holds {len(fields)} fields where the header has {width}"
            yield {
                "source_file": name,
                "source_offset": number,
                "text": text,
                "header": header,
                **extract,
                "error_rule": rule,
                "error_reason": f"{where}: {reason}" if rule else None,
            }


def records(
    lines: Sequence[bytes], spec: Mapping, *, start: int
) -> Iterator[tuple[int, str, str | None, str | None]]:
    """(line number, text, rule, reason) of each data record from line ``start`` on (1-based).

    A record whose quote characters do not balance continues on the next line (a quoted field
    holding a line break). Blank lines are no records. A line that does not decode quarantines
    its record, whose text then shows the bytes as ``\\xNN`` escapes.
    """
    quote = spec.quote_char
    number = start
    while number <= len(lines):
        first = number
        parts: list[str] = []
        problems: list[str | None] = []
        while True:
            raw = lines[number - 1]
            try:
                parts.append(raw.decode(spec.encoding))
                problems.append(None)
            except UnicodeDecodeError as exc:
                parts.append(raw.decode(spec.encoding, errors="backslashreplace"))
                problems.append(f"is not {spec.encoding} ({exc.reason} at byte {exc.start})")
            number += 1
            balanced = "\n".join(parts).count(quote) % 2 == 0
            if balanced or number > len(lines) or len(parts) == MAX_RECORD_LINES:
                break
        if not balanced:  # never closed: only the first line is refused, the next ones are read
            number, parts, problems = first + 1, parts[:1], problems[:1]
        text = "\n".join(parts)
        bad = next((p for p in problems if p), None)
        if not text.strip():
            continue
        if bad:
            yield first, text, "parse.csv_bad_encoding", bad
        elif not balanced:
            yield (
                first,
                text,
                "parse.csv_unclosed_quote",
                f"opens a quoted field that is not closed within {MAX_RECORD_LINES} lines",
            )
        else:
            yield first, text, None, None


def split_fields(text: str, spec: Mapping, delimiter: str | None = None) -> list[str]:
    """The fields of one record, per the mapping's dialect; :class:`Rejected` when Python's csv
    module cannot split it (a carriage return inside an unquoted field)."""
    reader = csv.reader(
        io.StringIO(text),
        delimiter=delimiter or spec.delimiter,
        quotechar=spec.quote_char,
        strict=False,
    )
    try:
        rows = list(reader)
    except csv.Error:
        raise Rejected(
            "parse.csv_bad_line_break",
            "holds a carriage return (CR) inside an unquoted field, so it cannot be split into fields",
        ) from None
    return (
        [field for row in rows for field in row] if len(rows) > 1 else (rows[0] if rows else [""])
    )


def header_problem(header: str, spec: Mapping) -> tuple[str, str] | None:
    """Why a header does not fit the mapping (rule, reason), or None; names columns, never values."""
    names = [n.strip() for n in split_fields(header, spec)]
    missing = [c for c in spec.columns() if c not in names]
    if not missing:
        return None
    shown = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
    for other in CANDIDATE_DELIMITERS:
        if other != spec.delimiter:
            split = [n.strip() for n in split_fields(header, spec, other)]
            if all(c in split for c in spec.columns()):
                return (
                    "parse.csv_wrong_delimiter",
                    (
                        "the header does not split into the mapping's columns with delimiter "
                        f"{shown.get(spec.delimiter, repr(spec.delimiter))}; it does with "
                        f"{shown[other]}: the file looks {shown[other]}-delimited"
                    ),
                )
    return (
        "parse.csv_header_mismatch",
        f"the header lacks the mapping's column(s) {', '.join(repr(c) for c in missing)}",
    )


def _file_error(name: str, rule: str, reason: str, *, data: bytes) -> dict[str, Any]:
    return {
        "source_file": name,
        "source_offset": 0,
        "text": data[:MAX_FILE_RECORD].decode("utf-8", errors="backslashreplace"),
        "header": None,
        "extract": None,
        "target": None,
        "mapping_file": None,
        "mapping_hash": None,
        "error_rule": rule,
        "error_reason": (reason if reason.startswith(name) else f"{name}: {reason}")
        + (
            f" (the quarantined text is its first {MAX_FILE_RECORD} bytes)"
            if len(data) > MAX_FILE_RECORD
            else ""
        ),
    }


# ---------------------------------------------------------------------------------------------
# raw records → bronze


def record_hash(header: str, text: str) -> str:
    """The content hash of a record: its header and its text (the same line under another header differs)."""
    return hashlib.sha256(f"{header}\n{text}".encode()).hexdigest()


def to_bronze(raw: pa.Table, *, run_id: str, ingested_at: datetime) -> Split:
    """Bronze rows for the well-formed records; the others quarantined with their line number."""
    failed = pc.is_valid(raw.column("error_rule"))
    bad = raw.filter(failed)
    good = raw.filter(pc.invert(failed))
    headers = good.column("header").to_pylist()
    hashes = {h: hashlib.sha256(h.encode()).hexdigest() for h in set(headers)}
    n = good.num_rows
    bronze = pa.table(
        {
            "extract": good.column("extract"),
            "target": good.column("target"),
            "raw": good.column("text"),
            "header": good.column("header"),
            "header_hash": pa.array([hashes[h] for h in headers], pa.string()),
            "mapping_file": good.column("mapping_file"),
            "mapping_hash": good.column("mapping_hash"),
            "_source_file": good.column("source_file"),
            "_source_offset": good.column("source_offset"),
            "_ingested_at": pa.array(
                [ingested_at] * n, BRONZE_CSV.schema.field("_ingested_at").type
            ),
            "_record_hash": pa.array(
                [
                    record_hash(h, t)
                    for h, t in zip(headers, good.column("text").to_pylist(), strict=True)
                ],
                pa.string(),
            ),
            "_run_id": pa.array([run_id] * n, pa.string()),
        }
    )
    records = [
        {
            "source_file": rec["source_file"],
            "source_offset": rec["source_offset"],
            "raw_record": rec["text"],
            "rule_id": rec["error_rule"],
            "reason": rec["error_reason"],
        }
        for rec in bad.select(
            ["source_file", "source_offset", "text", "error_rule", "error_reason"]
        ).to_pylist()
    ]
    unmapped = sum(1 for rec in records if rec["rule_id"] == "ingest.no_mapping")
    return Split(
        bronze.cast(BRONZE_CSV.schema),
        quarantine_rows(records, table_name=BRONZE_CSV.name, run_id=run_id, now=ingested_at),
        {UNMAPPED: unmapped} if unmapped else {},
    )


#: the counter of files no mapping file matches (quarantined, left in landing)
UNMAPPED = "csv.unmapped_files"


def ingest(
    landing: Path,
    lake: Lake,
    *,
    run_id: str,
    now: datetime,
    mappings: Sequence[MappingFile] | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """Landing CSV extracts → ``bronze.csv_rows`` (stage contract of jobs/stage.py), streamed
    through the engine a batch of records at a time (:func:`~medlake.jobs.stage.ingest_files`).

    ``mappings`` default to the mapping files in ``landing/csv``.
    """
    from medlake.engines.embedded import EmbeddedEngine

    csv_dir = landing / SOURCE_KIND
    found = load_mappings(csv_dir) if mappings is None else list(mappings)
    files = landing_files(csv_dir)
    done = ingest_files(
        lake,
        engine or EmbeddedEngine(),
        BRONZE_CSV,
        [(str(p), p.relative_to(landing).as_posix()) for p in files],
        reader=reader(csv_dir, found),
        schema=RAW_SCHEMA,
        to_bronze=functools.partial(to_bronze, run_id=run_id, ingested_at=now),
        run_id=run_id,
    )
    lake.insert_new(
        BRONZE_CSV_MAPPINGS.name,
        pa.Table.from_pylist(
            [m.as_row(run_id=run_id, ingested_at=now) for m in found],
            schema=BRONZE_CSV_MAPPINGS.schema,
        ),
    )
    ledger.record(lake, run_id, [done.entry])
    unmapped = done.read.counters.get(UNMAPPED, 0)
    if unmapped:
        log.warning(
            "landing/csv: %d file(s) match no mapping file; quarantined, left in landing", unmapped
        )
    log.info(
        "ingest: %d CSV records from %d files, %d new in bronze",
        done.entry.records_in,
        len(files),
        done.entry.records_out,
    )
    return StageResult(
        {name: lake.version(name) for name in (BRONZE_CSV.name, BRONZE_CSV_MAPPINGS.name)},
        [done.entry],
    )


# ---------------------------------------------------------------------------------------------
# bronze → silver


class Rejected(Exception):
    """A record that cannot become a silver row, with the rule it breaks."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


@cache
def _mapping(text: str, name: str) -> Mapping:
    return parse_mapping(text, name=name)


@cache
def _shift(key: bytes, person_key: str, max_days: int) -> int:
    return int(date_shift_days(key, person_key, max_days=max_days))


class _Reader:
    """Reads the records of one extract into silver rows of its target table."""

    def __init__(self, mapping: Mapping, *, key: bytes, max_shift_days: int) -> None:
        self.mapping = mapping
        self.spec = TARGETS[mapping.target]
        self.key = key
        self.max_shift_days = max_shift_days
        self.zone = zone_of(mapping.timezone)
        self.headers: dict[str, dict[str, int]] = {}
        self.patients: dict[str, tuple[str, str, int]] = {}
        #: per field: how its text becomes its silver type, and how reasons name it
        self.kinds = {
            name: _kind(name, self.spec.schema.field(name).type) for name in mapping.fields
        }
        self.where = {
            name: f"column {c.column!r}" if c.column else f"the constant of {name!r}"
            for name, c in mapping.fields.items()
        }

    def positions(self, header: str) -> dict[str, int]:
        if header not in self.headers:
            names = [n.strip() for n in split_fields(header, self.mapping)]
            self.headers[header] = {n: i for i, n in reversed(list(enumerate(names)))}
        return self.headers[header]

    def row(self, raw: str, header: str) -> dict[str, Any]:
        """The silver row of one bronze record (its text, its file's header), or :class:`Rejected`."""
        m = self.mapping
        fields = split_fields(raw, m)
        position = self.positions(header)

        def cell(column: str) -> str | None:
            value = fields[position[column]].strip()
            return value or None

        assert m.patient is not None
        patient_id = self.require(cell(m.patient.column), m.patient.column)
        local_source, person, shift = self.patient_keys(patient_id)
        row: dict[str, Any] = {"person_key": person}
        if m.target == "patients":
            row |= {"source_key": local_source, "source_system": m.source}
        else:
            local_id = "|".join(self.require(cell(c), c) for c in m.record_id)
            key_column, kind = RECORD_KEYS[m.target]
            row[key_column] = record_key(self.key, kind, m.source, local_id)
        for name, column in m.fields.items():
            text = column.value if column.column is None else cell(column.column)
            where = self.where[name]
            if text is None:
                if column.required:
                    raise Rejected(
                        "parse.csv_missing_field", f"{where} ({name}) is empty, but required"
                    )
                row[name] = None
                continue
            if column.values is not None:
                if text not in column.values:
                    raise Rejected(
                        "parse.csv_bad_value",
                        f"{where} ({name}) holds a value outside the mapping's value map",
                    )
                text = column.values[text]
            row[name] = self.typed(name, text, column, where=where, shift=shift)
            if name in CODE_FIELDS:
                row[CODE_FIELDS[name]] = self.code_system(column, cell)
        if m.target == "patients" and "deceased_date" in row:
            row["deceased"] = row["deceased_date"] is not None
        for system, target_column in STANDARD_CODE_COLUMNS.get(m.target, {}).items():
            if row.get("code_system") == system and row.get(target_column) is None:
                row[target_column] = row.get("code")
        if "encounter_key" in row and m.target != "encounters" and row["encounter_key"] is not None:
            row["encounter_key"] = record_key(self.key, "Encounter", m.source, row["encounter_key"])
        return row

    def patient_keys(self, patient_id: str) -> tuple[str, str, int]:
        """(source key, person key, date shift) of a patient id, made once per patient."""
        if patient_id not in self.patients:
            m = self.mapping
            assert m.patient is not None
            local = source_key(self.key, m.source, patient_id)
            person = (
                mrn_key(self.key, m.patient.authority, patient_id) if m.patient.authority else local
            )
            self.patients[patient_id] = (
                local,
                person,
                _shift(self.key, person, self.max_shift_days),
            )
        return self.patients[patient_id]

    @staticmethod
    def require(value: str | None, column: str) -> str:
        if value is None:
            raise Rejected("parse.csv_missing_field", f"column {column!r} (an id) is empty")
        return value

    def typed(self, name: str, text: str, column: Column, *, where: str, shift: int) -> Any:
        """A value as its silver field's type: timestamps to UTC and shifted, dates shifted."""
        kind = self.kinds[name]
        if kind == "text":
            return text
        try:
            if kind == "timestamp":
                return shift_datetime(self.parse_datetime(text, column.format, where=where), shift)
            if kind == "date":
                return shift_date(self.parse_date(text, column.format, where=where), shift)
        except OverflowError:  # year 1 or 9999: the zone or the date shift moves it off the calendar
            raise Rejected(
                "parse.csv_bad_date",
                f"{where} ({name}) lies at the edge of the calendar (year 1 or 9999), where the "
                "de-identifying date shift cannot move it",
            ) from None
        if kind == "number":
            if self.mapping.decimal_separator == ",":
                text = text.replace(",", ".")
            try:
                number = float(text)
            except ValueError:
                raise Rejected(
                    "parse.csv_bad_number", f"{where} ({name}) is not a number"
                ) from None
            if not math.isfinite(number):  # NaN, ±Infinity, 1e309
                raise Rejected(
                    "parse.csv_bad_number", f"{where} ({name}) is not a finite number"
                )
            return number
        if kind == "boolean":
            if text.lower() not in BOOLEAN:
                raise Rejected("parse.csv_bad_value", f"{where} ({name}) is not true/false")
            return BOOLEAN[text.lower()]
        return zip3(text)

    def parse_datetime(self, text: str, fmt: str | None, *, where: str) -> datetime:
        try:
            value = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
        except ValueError:
            said = f"format {fmt!r}" if fmt else "ISO 8601"
            raise Rejected("parse.csv_bad_date", f"{where} is not a date/time in {said}") from None
        return (value if value.tzinfo else value.replace(tzinfo=self.zone)).astimezone(UTC)

    def parse_date(self, text: str, fmt: str | None, *, where: str) -> date:
        try:
            return datetime.strptime(text, fmt).date() if fmt else date.fromisoformat(text)
        except ValueError:
            said = f"format {fmt!r}" if fmt else "ISO 8601 (YYYY-MM-DD)"
            raise Rejected("parse.csv_bad_date", f"{where} is not a date in {said}") from None

    def code_system(self, column: Column, cell: Any) -> str | None:
        if column.system is not None:
            return system_uri(column.system)
        if column.system_column is None:
            return None
        value = cell(column.system_column)
        systems = column.systems or {}
        if value not in systems:
            raise Rejected(
                "parse.csv_unknown_code_system",
                f"column {column.system_column!r} names a code system the mapping does not list "
                f"({', '.join(sorted(systems))})",
            )
        return system_uri(systems[value])


def _kind(name: str, type_: pa.DataType) -> str:
    """How a text becomes a value of a silver field of that type."""
    if pa.types.is_timestamp(type_):
        return "timestamp"
    if pa.types.is_date(type_):
        return "date"
    if pa.types.is_floating(type_):
        return "number"
    if pa.types.is_boolean(type_):
        return "boolean"
    return "zip3" if name == "zip3" else "text"


@dataclass(frozen=True)
class Flattened:
    """Silver rows of one target table from CSV bronze records (one row per record)."""

    spec: TableSpec
    split: Split
    records_in: int


def silver_from_bronze(
    bronze: pa.Table, mappings: dict[str, dict[str, Any]], *, key: bytes, max_shift_days: int
) -> dict[str, Flattened]:
    """The silver rows of CSV bronze records, by target table name; records of ``bronze_only``
    extracts are left out (counted by :func:`bronze_only`). ``mappings``: ``bronze.csv_mappings``
    rows by mapping hash."""
    good: dict[str, list[dict[str, Any]]] = {}
    bad: dict[str, list[dict[str, Any]]] = {}
    read = bronze.filter(pc.not_equal(bronze.column("target"), BRONZE_ONLY))
    for mapping_hash in sorted(set(read.column("mapping_hash").to_pylist())):
        used = mappings[mapping_hash]
        reader = _Reader(
            _mapping(used["mapping"], used["mapping_file"]), key=key, max_shift_days=max_shift_days
        )
        rows = read.filter(pc.equal(read.column("mapping_hash"), mapping_hash))
        table = reader.spec.name
        good.setdefault(table, [])
        bad.setdefault(table, [])
        columns = ("raw", "header", "_source_file", "_source_offset", "_record_hash", "_run_id")
        for raw, header, file, offset, hashed, run in zip(
            *(rows.column(c).to_pylist() for c in columns), strict=True
        ):
            try:
                row = reader.row(raw, header)
            except Rejected as rej:
                bad[table].append(
                    {
                        "rule_id": rej.rule_id,
                        "reason": f"{file} line {offset}: {rej.reason}",
                        "source_file": file,
                        "source_offset": offset,
                        "record_hash": hashed,
                        "raw_record": raw,
                    }
                )
                continue
            row["_record_hash"] = hashed
            row["_source_kind"] = SOURCE_KIND
            row["_run_id"] = run
            good[table].append(row)
    result = {}
    for spec in TARGETS.values():
        if spec.name in good:
            result[spec.name] = Flattened(
                spec,
                Split(
                    pa.Table.from_pylist(good[spec.name], schema=spec.schema),
                    quarantine_rows(bad[spec.name], table_name=spec.name),
                ),
                len(good[spec.name]) + len(bad[spec.name]),
            )
    return result


def bronze_only(bronze: pa.Table) -> int:
    """How many records belong to extracts no silver table reads."""
    return int(pc.sum(pc.equal(bronze.column("target"), BRONZE_ONLY)).as_py() or 0)


def to_staging(
    lake: Lake,
    *,
    run_id: str,
    key: bytes,
    max_shift_days: int,
    versions: dict[str, int | None],
    bronze_batches: dict[str, list[str]] | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """This run's CSV bronze records → staging (appended after FHIR and HL7 v2), standardized.
    ``engine`` is unused: the rows are built in memory (the data plane's next step)."""
    bronze = lake.read(
        BRONZE_CSV.name,
        version=versions.get(BRONZE_CSV.name),
        where={"_run_id": list((bronze_batches or {}).get(BRONZE_CSV.name) or [run_id])},
    )
    concept_map, _ = terminology.concept_maps(lake)
    resource_types = {spec.name: rtype for rtype, spec in FHIR_SILVER.items()}
    entries: list[Entry] = []
    written: dict[str, int | None] = {}
    used = lake.read(BRONZE_CSV_MAPPINGS.name, version=versions.get(BRONZE_CSV_MAPPINGS.name))
    mappings = {m["mapping_hash"]: m for m in used.to_pylist()}
    flattened = silver_from_bronze(bronze, mappings, key=key, max_shift_days=max_shift_days)
    for name, flat in flattened.items():
        lake.insert_new(QUARANTINE.name, stamp_run(flat.split.quarantined, run_id))
        entries.append(
            Entry(
                stage="silver",
                table_name=f"{name}#csv",
                records_in=flat.records_in,
                records_out=flat.split.good.num_rows,
                quarantined=flat.split.quarantined.num_rows,
            )
        )
        rows = flat.split.good
        standardize = STANDARDIZE.get(resource_types[name])
        if standardize is not None:
            standard = standardize(rows, concept_map=concept_map)
            lake.insert_new(QUARANTINE.name, stamp_run(standard.quarantined, run_id))
            entries.append(
                Entry(
                    stage="standardize",
                    table_name=f"{name}#csv",
                    records_in=rows.num_rows,
                    records_out=standard.good.num_rows,
                    quarantined=standard.quarantined.num_rows,
                )
            )
            rows = standard.good
        written[staging_name(name)] = lake.write(
            staging_name(name), rows, mode="append", spec=flat.spec
        )
    only = bronze_only(bronze)
    if only:
        entries.append(
            Entry(stage="silver", table_name=BRONZE_CSV.name, records_in=only, bronze_only=only)
        )
    ledger.record(lake, run_id, entries)
    return StageResult(written, entries)
