"""HL7 v2 messages: landing files → ``bronze.hl7v2_messages`` → the same silver tables as FHIR.

Reading a landing file yields one raw record per message. Files arrive MLLP-framed
(``\\x0b … \\x1c\\r``), with CR, CRLF or LF segment separators (interfaces and editors disagree),
with several messages each, and sometimes wrapped in FHS/BHS batch envelopes; a file that cannot
be split into messages at all yields one whole-file record at offset 0. :func:`to_bronze` checks
each message with python-hl7 (``hl7.parse``) and keeps it verbatim; the ``*_from_bronze``
functions flatten bronze messages into the silver tables' schemas, pseudonymized and
date-shifted. All of them are pure Arrow functions.

Offsets: the 1-based message number in its file, 0 for a problem with the whole file.

Field choices follow the HL7 v2-to-FHIR implementation guide's mapping tables
(``corpus/standards/hl7v2-to-fhir``): each flattener names the segment map it follows.

Keys: a patient record's ``source_key`` is the keyed pseudonym of (``hl7v2:<sending facility>``,
its MRN or first identifier). Its ``person_key`` is the medical record number's key when PID
carries one (a PID-3 identifier typed ``MR`` with an assigning authority):
``source_key(key, "mrn:<authority>", mrn)``, the key a FHIR Patient with that MRN gets too, so
one patient seen through both sources is one ``person_key`` with one date shift. Without an MRN
the person key is the source key, until entity resolution links it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal

import hl7
import pyarrow as pa

from medlake.config import AgePolicy
from medlake.governance.deid import shift_date, shift_datetime, zip3
from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs.ingest import limits
from medlake.jobs.ingest.fhir import (
    ICD10CM,
    LOINC,
    RAW_SCHEMA,
    RXNORM,
    SNOMED,
    UCUM,
    Pseudonymizer,
    deidentified_notes,
)
from medlake.jobs.stage import reader_of
from medlake.quarantine import Split, quarantine_id, quarantine_rows
from medlake.registry import (
    BRONZE_HL7V2,
    SILVER_CONDITIONS,
    SILVER_ENCOUNTERS,
    SILVER_MEDICATIONS,
    SILVER_NOTES,
    SILVER_OBSERVATIONS,
    SILVER_PATIENTS,
    TableSpec,
)

SOURCE_KIND = "hl7v2"
FILE_SUFFIXES = (".hl7", ".er7", ".msg")

#: the silver tables HL7 v2 feeds, by the segment that feeds each
HL7V2_SILVER: dict[str, TableSpec] = {
    "PID": SILVER_PATIENTS,
    "PV1": SILVER_ENCOUNTERS,
    "OBX": SILVER_OBSERVATIONS,
    "RXE/RXO": SILVER_MEDICATIONS,
    "DG1": SILVER_CONDITIONS,
}

ENVELOPE = frozenset({"FHS", "FTS", "BHS", "BTS"})
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_LINE = re.compile(r"[^\r\n]*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MLLP = re.compile(r"\x0b(?P<block>[^\x0b\x1c]*)\x1c?|(?P<outside>[^\x0b\x1c]+)|\x1c")
_VERSION = re.compile(r"2\.\d+(\.\d+)?")

#: segments a message of that type needs before it means anything to silver (HL7 v2.5.1 ch. 2-4)
REQUIRED_SEGMENTS: dict[str, tuple[str, ...]] = {
    "ADT": ("PID",),
    "ORU^R01": ("OBR",),
    "ORM^O01": ("ORC",),
    "OML^O21": ("ORC",),
    "RDE^O11": ("ORC", "RXE"),
    "RDS^O13": ("ORC", "RXD"),
    "VXU^V04": ("PID",),
    "ACK": ("MSA",),
}

#: MSH-18 character sets that are not UTF-8 (HL7 table 0211) and their Python codecs
CHARSETS = {f"8859/{n}": f"iso8859-{n}" for n in range(1, 16)} | {"ASCII": "ascii"}


# ---------------------------------------------------------------------------------------------
# landing files → raw records


def landing_files(hl7_dir: Path) -> list[Path]:
    """The HL7 v2 files of a landing folder, in a stable order."""
    if not hl7_dir.is_dir():
        return []
    return sorted(
        p for p in hl7_dir.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
    )


def read_files(paths: Sequence[Path], *, root: Path) -> pa.Table:
    """Raw records (one per message) of many landing files, named relative to the landing root."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(read_file(path, name=path.relative_to(root).as_posix()))
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def read_file(path: Path, *, name: str) -> Iterator[dict[str, Any]]:
    """Raw records of one landing file; ``name`` is how the file is named in bronze and quarantine."""
    yield from read_bytes(limits.read_bounded(path, name=name), name=name)


def read_bytes(data: bytes, *, name: str) -> Iterator[dict[str, Any]]:
    """Raw records of a file's content: one per message, or one whole-file record at offset 0."""
    if not data.strip(b" \t\r\n\x0b\x1c\x00"):
        yield _file_error(name, "parse.hl7_empty_file", f"{name}: the file is empty")
        return
    text, problem = decode(data)
    if text is None:
        yield _file_error(name, "parse.hl7_bad_encoding", f"{name}: {problem}")
        return
    messages, envelope_problem = split_messages(text)
    if envelope_problem:
        yield _file_error(name, "parse.hl7_bad_batch", f"{name}: {envelope_problem}", text=text)
        return
    if not messages:
        yield _file_error(
            name,
            "parse.hl7_empty_file",
            f"{name}: the file holds a batch envelope but no message",
            text=text,
        )
        return
    for number, message in enumerate(messages, start=1):
        yield {
            "source_file": name,
            "source_offset": number,
            "text": message,
            "error_rule": None,
            "error_reason": None,
        }


#: the reader both engines stream HL7 v2 landing files through: ``(path, name) -> record
#: batches`` of :data:`RAW_SCHEMA`, one row per message (see :func:`medlake.jobs.stage.read_batches`)
read_records = reader_of(read_file, RAW_SCHEMA)


def decode(data: bytes) -> tuple[str | None, str | None]:
    """The file as text: UTF-8 (a BOM dropped), else the single-byte charset MSH-18 declares."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        declared = _declared_charset(data)
        codec = CHARSETS.get(declared or "")
        if codec and codec != "ascii":
            return data.decode(codec), None
        said = f"MSH-18 declares {declared!r}" if declared else "MSH-18 declares no character set"
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start}) and {said}"


def _declared_charset(data: bytes) -> str | None:
    """MSH-18 (character set) of the first MSH, read byte-for-byte."""
    text = data.decode("latin-1")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 4:
        return None
    line = _LINE.match(text, start)
    fields = line.group(0).split(text[start + 3]) if line else []
    return (fields[17].split("~")[0].strip() or None) if len(fields) > 17 else None


def split_messages(text: str) -> tuple[list[str], str | None]:
    """The messages of a decoded file, each verbatim, or why the batch envelope is broken.

    A message starts at an MSH segment, at an MLLP start block, or after a batch or file header
    or trailer; segments before any MSH form a message of their own (which has no MSH).
    FHS/BHS/BTS/FTS envelope segments belong to no message. The envelope rules are python-hl7's
    (``hl7.parse_file``): no FHS inside a file, no BHS inside a batch; stray trailers are ignored.
    """
    messages: list[str] = []
    in_file = in_batch = False
    for frame_start, frame_end in _frames(text):
        current: list[tuple[int, int]] = []  # (start, end) of each segment line of the message
        for start, end in _lines(text, frame_start, frame_end):
            seg = text[start:end].lstrip()[:3]
            if seg in ENVELOPE or seg == "MSH":
                if current:
                    messages.append(text[current[0][0] : current[-1][1]])
                current = []
                if seg == "FHS":
                    if in_file:
                        return (
                            [],
                            f"a second FHS file header before the FTS of the first (message {len(messages) + 1})",
                        )
                    in_file = True
                elif seg == "BHS":
                    if in_batch:
                        return (
                            [],
                            f"a second BHS batch header before the BTS of the first (message {len(messages) + 1})",
                        )
                    in_batch = True
                elif seg == "FTS":
                    in_file = in_batch = False
                elif seg == "BTS":
                    in_batch = False
                if seg != "MSH":
                    continue
            current.append((start, end))
        if current:
            messages.append(text[current[0][0] : current[-1][1]])
    return messages, None


def _frames(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each MLLP block's content (``\\x0b`` … ``\\x1c``) and of any text between
    blocks; of the whole text when it has no blocks."""
    if "\x0b" not in text and "\x1c" not in text:
        yield 0, len(text)
        return
    for match in _MLLP.finditer(text):
        for part in ("block", "outside"):
            if match.group(part) is not None:
                yield match.span(part)


def _lines(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-blank line between start and end; CR, LF and CRLF all break lines."""
    position = start
    while position < end:
        match = _LINE_BREAK.search(text, position, end)
        stop = match.start() if match else end
        if text[position:stop].strip():
            yield position, stop
        position = match.end() if match else end


def _file_error(name: str, rule: str, reason: str, *, text: str | None = None) -> dict[str, Any]:
    return {
        "source_file": name,
        "source_offset": 0,
        "text": text,
        "error_rule": rule,
        "error_reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# raw records → bronze


def segment_lines(message: str) -> list[str]:
    """The message's segments, whatever separated them, without blank lines."""
    return [line for line in _LINE_BREAK.split(message) if line.strip()]


def record_hash(message: str) -> str:
    """The content hash of a message: the same message in any framing or separator has one hash."""
    return hashlib.sha256("\r".join(segment_lines(message)).encode("utf-8")).hexdigest()


class Rejected(Exception):
    """A message or a segment that cannot be accepted, with the rule it breaks."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """What bronze keeps from MSH."""

    message_type: str
    control_id: str
    version: str
    sending_facility: str | None


def to_bronze(raw: pa.Table, *, run_id: str, ingested_at: datetime) -> Split:
    """Bronze rows for the records that are well-formed HL7 v2 messages; the others quarantined."""
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    with limits.clock() as clock:
        for rec in raw.to_pylist():
            locate = {
                "source_file": rec["source_file"],
                "source_offset": rec["source_offset"],
                "raw_record": rec["text"],
            }
            if rec["error_rule"]:
                bad.append({**locate, "rule_id": rec["error_rule"], "reason": rec["error_reason"]})
                continue
            where = f"{rec['source_file']} message {rec['source_offset']}"
            try:
                with clock.record(where):
                    limits.check_bytes(rec["text"], where=where)
                    header = check_message(rec["text"], where=where)
            except limits.LimitExceeded as over:
                bad.append(
                    {**locate, "raw_record": limits.clip(rec["text"]), "rule_id": over.rule_id, "reason": over.reason}
                )
                continue
            except Rejected as rej:
                bad.append(
                    {
                        **locate,
                        "rule_id": rej.rule_id,
                        "reason": rej.reason,
                        "record_id": _control_id(rec["text"]),
                    }
                )
                continue
            good.append(_bronze_row(rec, header, run_id=run_id, ingested_at=ingested_at))
    return Split(
        pa.Table.from_pylist(good, schema=BRONZE_HL7V2.schema),
        quarantine_rows(bad, table_name=BRONZE_HL7V2.name, run_id=run_id, now=ingested_at),
    )


def _bronze_row(rec: dict[str, Any], header: Header, *, run_id: str, ingested_at: datetime) -> dict[str, Any]:
    """The bronze row of a checked message: its MSH facts and the message verbatim."""
    return {
        "message_type": header.message_type,
        "message_control_id": header.control_id,
        "version": header.version,
        "sending_facility": header.sending_facility,
        "raw": rec["text"],
        "_source_file": rec["source_file"],
        "_source_offset": rec["source_offset"],
        "_ingested_at": ingested_at,
        "_record_hash": record_hash(rec["text"]),
        "_run_id": run_id,
    }


def check_message(text: str, *, where: str) -> Header:
    """MSH (read by python-hl7) and segment structure of one message, checked; raises
    :class:`Rejected` naming the problem.

    The reason names the file, message number, control id, segment and field, never a value.
    """
    lines = segment_lines(text)
    first = lines[0].lstrip() if lines else ""
    if not first.startswith("MSH"):
        found = (
            f"segment {first[:3]}"
            if _SEGMENT_ID.fullmatch(first[:3])
            else "text that is not a segment"
        )
        raise Rejected(
            "parse.hl7_no_msh", f"{where}: no MSH segment; the message starts with {found}"
        )
    separator = first[3:4]
    encoding = (
        first[4 : first.find(separator, 4)] if separator and first.find(separator, 4) > 4 else ""
    )
    if not separator or separator.isalnum() or separator.isspace():
        raise Rejected("parse.hl7_bad_msh", f"{where}: MSH-1 (field separator) is missing")
    if not (
        4 <= len(encoding) <= 5
        and len(set(encoding + separator)) == len(encoding) + 1
        and not any(c.isalnum() or c.isspace() for c in encoding)
    ):
        raise Rejected(
            "parse.hl7_bad_msh", f"{where}: MSH-2 (encoding characters) is missing or malformed"
        )
    for number, line in enumerate(lines, start=1):
        limits.check_fields(line, separator, where=f"{where} segment {number}")
    for number, line in enumerate(lines[1:], start=2):
        if not _SEGMENT_ID.fullmatch(line[:3]) or (len(line) > 3 and line[3] != separator):
            raise Rejected(
                "parse.hl7_bad_segment",
                f"{where}: segment {number} does not start with a segment id and the field separator "
                "(a line break inside a field?)",
            )
    try:  # the other segments' fields are split when silver reads them
        parsed = hl7.parse(first)
    except (hl7.ParseException, IndexError, ValueError) as exc:
        raise Rejected(
            "parse.hl7_bad_msh", f"{where}: python-hl7 cannot parse MSH ({type(exc).__name__})"
        ) from exc
    msh = _Segment.of(parsed, parsed[0], 1)
    code, event, control, version = msh.get(9), msh.get(9, 2), msh.get(10), msh.get(12)
    where = f"{where} (control id {_shown_id(control)})" if control else where
    for number, value, label in (
        (9, code, "message type"),
        (10, control, "message control id"),
        (12, version, "version id"),
    ):
        if not value:
            raise Rejected("parse.hl7_bad_msh", f"{where}: MSH-{number} ({label}) is empty")
    if not _VERSION.fullmatch(version):
        raise Rejected("parse.hl7_bad_msh", f"{where}: MSH-12 is not an HL7 v2 version id")
    if msh.get(7):
        try:
            parse_dtm(msh.get(7))
        except BadDatetime:
            raise Rejected(
                "parse.hl7_bad_datetime",
                f"{where}: MSH-7 (message date/time) is not an HL7 date/time",
            ) from None
    message_type = f"{code}^{event}" if event else code
    present = {line[:3] for line in lines}
    needed = REQUIRED_SEGMENTS.get(message_type, REQUIRED_SEGMENTS.get(code, ()))
    missing = [seg for seg in needed if seg not in present]
    if missing:
        raise Rejected(
            "parse.hl7_missing_segment",
            f"{where}: no {' or '.join(missing)} segment, which a {message_type} message needs",
        )
    return Header(message_type, control, version, hd_system(msh.components(4)))


#: the most of a control id a reason repeats (MSH-10 is at most 199 characters; a hostile one is not)
SHOWN_ID_CHARS = 64


def _shown_id(control: str) -> str:
    """A control id (or a code) as reasons name it: cut at :data:`SHOWN_ID_CHARS`, so no reason
    grows with input."""
    return control if len(control) <= SHOWN_ID_CHARS else f"{control[:SHOWN_ID_CHARS]}… ({len(control)} characters)"


def _control_id(text: str | None) -> str | None:
    """MSH-10 of a message text, read without parsing (for quarantine rows of broken messages)."""
    lines = segment_lines(text or "")
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        return None
    fields = lines[0].split(lines[0][3])
    return (fields[9] or None) if len(fields) > 9 else None


# ---------------------------------------------------------------------------------------------
# reading parsed messages: python-hl7's tree as plain strings

Components = list[list[str]]  # a repetition: components → subcomponents


class _Segment:
    """One parsed segment as unescaped strings: field n → repetitions → components → subcomponents.

    Fields are read from python-hl7's tree when first asked for: most of a segment is never read.
    """

    __slots__ = ("_fields", "_segment", "_unescape", "name", "position")

    def __init__(self, segment: Any, position: int, unescape: Callable[[str], str]) -> None:
        self.name = str(segment[0])
        self.position = position
        self._segment = segment
        self._unescape = unescape
        self._fields: dict[int, list[Components]] = {}

    @staticmethod
    def of(message: Any, segment: Any, position: int) -> _Segment:
        return _Segment(segment, position, message.unescape)

    def repetitions(self, number: int) -> list[Components]:
        if number not in self._fields:
            if not 0 < number < len(self._segment):
                return []
            value = self._segment[number]
            if self.name == "MSH" and number in (1, 2):  # the separators, never escaped
                self._fields[number] = [[[str(value[0])]]]
            else:
                self._fields[number] = _tree(value, self._unescape)
        return self._fields[number]

    def components(self, number: int, repetition: int = 0) -> Components:
        reps = self.repetitions(number)
        return reps[repetition] if repetition < len(reps) else []

    def get(self, number: int, component: int = 1, sub: int = 1, *, repetition: int = 0) -> str:
        """One value; '' when absent. The HL7 explicit null ``""`` reads as absent too."""
        return _sub(self.components(number, repetition), component, sub)

    def structured(self, number: int) -> bool:
        """Whether the field holds components or subcomponents (not allowed in text types)."""
        return any(len(rep) > 1 or any(len(c) > 1 for c in rep) for rep in self.repetitions(number))


def _tree(value: Any, unescape: Callable[[str], str]) -> list[Components]:
    reps: list[Components] = []
    for rep in value:
        if isinstance(rep, str):
            reps.append([[unescape(rep)]])
            continue
        comps: Components = []
        for comp in rep:
            comps.append(
                [unescape(comp)] if isinstance(comp, str) else [unescape(str(s)) for s in comp]
            )
        reps.append(comps)
    return reps


def _sub(comps: Components, component: int, sub: int = 1) -> str:
    """One (sub)component of a repetition; '' when absent or the HL7 explicit null ``""``."""
    subs = comps[component - 1] if component <= len(comps) else []
    value = subs[sub - 1] if sub <= len(subs) else ""
    return "" if value == '""' else value.strip()


def _texts(seg: _Segment, number: int) -> list[str]:
    """The text of each repetition of a CWE field: its text component, else its code."""
    return [t for rep in seg.repetitions(number) if (t := _sub(rep, 2) or _sub(rep, 1))]


def hd_system(comps: Components, component: int = 1) -> str | None:
    """An HD (namespace ^ universal id ^ id type) as a system URI, per HD[uri]: the namespace,
    else ``urn:oid:`` / ``urn:uuid:`` + universal id, else the universal id itself.

    ``component`` > 1 reads an HD held in the subcomponents of that component (CX.4, PL.4).
    """
    if component > 1:
        parts = comps[component - 1] if component <= len(comps) else []
        namespace, universal, kind = (parts + ["", "", ""])[:3]
    else:
        namespace, universal, kind = (_sub(comps, 1), _sub(comps, 2), _sub(comps, 3))
    namespace, universal, kind = namespace.strip(), universal.strip(), kind.strip().upper()
    if namespace and namespace != '""':
        return namespace
    if universal:
        return {"ISO": f"urn:oid:{universal}", "UUID": f"urn:uuid:{universal}"}.get(kind, universal)
    return None


# -- dates and times --------------------------------------------------------------------------

_DTM = re.compile(
    r"(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<z>[+-]\d{4})?"
)
_TM = re.compile(r"(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})(?:\.\d{1,4})?)?)?(?P<z>[+-]\d{4})?")


class BadDatetime(ValueError):
    """A value that is not an HL7 DTM / TS / DT."""


def parse_dtm(value: str) -> tuple[datetime, tzinfo | None]:
    """An HL7 DTM ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`` as a naive local datetime and
    its UTC offset when it states one (per DTM[dateTime]); partial values start at their first moment."""
    match = _DTM.fullmatch(value.strip())
    if not match:
        raise BadDatetime(value)
    part = {k: int(v) if v and k != "f" else v for k, v in match.groupdict().items()}
    fraction = int((str(part["f"]) + "000000")[:6]) if part["f"] else 0
    try:
        naive = datetime(
            int(part["y"]),
            int(part["mo"] or 1),
            int(part["d"] or 1),
            int(part["h"] or 0),
            int(part["mi"] or 0),
            int(part["s"] or 0),
            fraction,
        )
    except ValueError:
        raise BadDatetime(value) from None
    return naive, _offset(match.group("z"), value)


def _offset(zone: str | None, value: str) -> tzinfo | None:
    if not zone:
        return None
    hours, minutes = int(zone[1:3]), int(zone[3:5])
    if hours > 23 or minutes > 59:
        raise BadDatetime(value)
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if zone[0] == "-" else delta)


def check_tm(value: str) -> None:
    """An HL7 TM ``HH[MM[SS[.S…]]][+/-ZZZZ]``, or :class:`BadDatetime`."""
    match = _TM.fullmatch(value.strip())
    if (
        not match
        or int(match.group("h")) > 23
        or int(match.group("mi") or 0) > 59
        or int(match.group("s") or 0) > 59
    ):
        raise BadDatetime(value)
    _offset(match.group("z"), value)


def to_utc(value: str, default: tzinfo | None) -> datetime | None:
    """A DTM as a UTC timestamp; without an offset it is in the sender's zone (MSH-7's), else UTC."""
    if not value:
        return None
    naive, zone = parse_dtm(value)
    return naive.replace(tzinfo=zone or default or UTC).astimezone(UTC)


def to_date(value: str) -> date | None:
    """The calendar date a DTM names, in its own zone (a birth date is not moved to UTC)."""
    return parse_dtm(value)[0].date() if value else None


# -- codes ------------------------------------------------------------------------------------

#: HL7 table 0396 coding system names → FHIR system URIs; other names are kept as sent
CODING_SYSTEMS: dict[str, str] = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "SNOMED-CT": SNOMED,
    "I10C": ICD10CM,
    "ICD10CM": ICD10CM,
    "ICD-10-CM": ICD10CM,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "RXNORM": RXNORM,
    "RXN": RXNORM,
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "UCUM": UCUM,
}
_V2_TABLE = re.compile(r"HL7(\d{4})")


def coding_system(name: str) -> str | None:
    """The FHIR system URI of a CWE.3 coding system name (CWE[CodeableConcept]), or the name."""
    name = name.strip()
    if not name:
        return None
    table = _V2_TABLE.fullmatch(name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    return CODING_SYSTEMS.get(name.upper(), name)


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str
    display: str | None


def codings(comps: Components) -> list[Coding]:
    """The coded triplets of a CE/CWE (identifier ^ text ^ system, then the alternate triplet)."""
    found = []
    for first in (1, 4):
        code = _sub(comps, first)
        if code:
            found.append(
                Coding(coding_system(_sub(comps, first + 2)), code, _sub(comps, first + 1) or None)
            )
    return found


def pick(found: list[Coding], system: str | None = None) -> Coding | None:
    """The coding of that system, else the first, else None."""
    for c in found:
        if system and c.system == system:
            return c
    return found[0] if found else None


# -- HL7 tables mapped by the v2-to-FHIR concept maps (corpus/standards/hl7v2-to-fhir/codesystems)

#: AdministrativeSex (HL7 table 0001 → administrative-gender)
GENDER = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other"}
#: MaritalStatus (table 0002 → v3 MaritalStatus / NullFlavor)
MARITAL = {
    "A": "L",
    "D": "D",
    "M": "M",
    "S": "S",
    "W": "W",
    "C": "C",
    "G": "T",
    "P": "T",
    "R": "T",
    "E": "L",
    "N": "A",
    "I": "I",
    "B": "U",
    "U": "UNK",
    "O": "OTH",
    "T": "NAVU",
}
#: PatientClass[EncounterClass] (table 0004 → v3 ActCode; unmapped codes kept as v2-0004 codes)
PATIENT_CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC"}
#: PatientClass[EncounterStatus], used while PV1-45 (discharge) is not valued
PATIENT_CLASS_STATUS = {
    "E": "in-progress",
    "I": "in-progress",
    "O": "in-progress",
    "P": "planned",
    "R": "in-progress",
    "B": "in-progress",
    "C": "in-progress",
    "N": "in-progress",
}
#: ObservationResultStatusCodesInterpretation (table 0085 → observation-status)
RESULT_STATUS = {
    "A": "amended",
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "P": "preliminary",
    "X": "cancelled",
    "W": "entered-in-error",
}
#: OrderStatus (table 0038 → request-status), read from ORC-5
ORDER_STATUS = {
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}
#: OrderControlCode[ServiceRequest.status] (table 0119), read from ORC-1 when ORC-5 is empty
ORDER_CONTROL_STATUS = {
    "AF": "active",
    "CA": "active",
    "CR": "revoked",
    "DC": "revoked",
    "DF": "revoked",
    "DR": "revoked",
    "FU": "completed",
    "HD": "active",
    "HR": "on-hold",
    "NW": "active",
    "OC": "revoked",
    "OD": "revoked",
    "OH": "on-hold",
    "OK": "active",
    "PR": "active",
    "PY": "active",
    "RL": "active",
    "RO": "active",
    "RQ": "active",
}
#: the LOINC codes of the FHIR R4 vital signs profiles: their observations are category vital-signs
VITAL_SIGNS = frozenset(
    {
        "85353-1",
        "9279-1",
        "8867-4",
        "2708-6",
        "59408-5",
        "8310-5",
        "8302-2",
        "9843-4",
        "29463-7",
        "39156-5",
        "85354-9",
        "8480-6",
        "8462-4",
    }
)
#: DiagnosticServiceSectionID (table 0074) codes of laboratory sections: category laboratory
LAB_SECTIONS = frozenset(
    {
        "BG",
        "BLB",
        "CG",
        "CH",
        "CP",
        "HM",
        "IMM",
        "LAB",
        "MB",
        "MCB",
        "MYC",
        "SP",
        "SR",
        "TX",
        "VR",
        "URN",
        "CUS",
    }
)
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
TIME_TYPES = frozenset({"DT", "DTM", "TS"})
PRIMITIVE_TYPES = TEXT_TYPES | TIME_TYPES | {"NM", "TM", "ID", "IS", "SI"}
V2_0007 = "http://terminology.hl7.org/CodeSystem/v2-0007"
V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_RANGE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*")
_UPPER = re.compile(r"\s*<=?\s*(-?\d+(?:\.\d+)?)\s*")
_LOWER = re.compile(r"\s*>=?\s*(-?\d+(?:\.\d+)?)\s*")


def reference_range(text: str) -> tuple[float | None, float | None]:
    """OBX-7 "3.5-5.0", "<200" or ">60" as (low, high); other texts give (None, None)."""
    if match := _RANGE.fullmatch(text):
        return float(match.group(1)), float(match.group(2))
    if match := _UPPER.fullmatch(text):
        return None, float(match.group(1))
    if match := _LOWER.fullmatch(text):
        return float(match.group(1)), None
    return None, None


# ---------------------------------------------------------------------------------------------
# bronze → silver


@dataclass(frozen=True)
class Flattened:
    """Silver rows of one table from HL7 messages, with the ledger's view of the source segments.

    ``records_in`` counts the segments that feed the table (PID, PV1, OBX, DG1, and RXE/RXO order
    groups); each ends up producing rows (``records_out``), quarantined, or ``merged`` (a second
    PID of the same patient record in one message): ``records_in == records_out + quarantined + merged``.
    """

    split: Split
    records_in: int
    records_out: int
    merged: int = 0

    @property
    def balanced(self) -> bool:
        quarantined: int = self.split.quarantined.num_rows
        return self.records_in == self.records_out + quarantined + self.merged


@dataclass
class _Outcome:
    """What one source segment (or order group) became."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rule_id: str | None = None
    reason: str | None = None
    part: str | None = None
    merged: bool = False


@dataclass
class _Message:
    """A bronze message, parsed, with what every row taken from it shares: the source system
    ``hl7v2:<MSH-4 sending facility>`` (MSH-3, the sending application, when MSH-4 is empty)."""

    row: dict[str, Any]
    segments: list[_Segment]
    source_system: str
    zone: tzinfo | None  # MSH-7's offset: the sender's zone for times that state none
    sent_at: datetime | None
    label: str

    @staticmethod
    def of(row: dict[str, Any], *, only: frozenset[str] | None = None) -> _Message:
        """The message, parsed by python-hl7; with ``only``, just MSH and those segments (each
        keeps its position in the whole message)."""
        lines = list(enumerate(segment_lines(row["raw"]), start=1))
        if only is not None:
            lines = [(n, line) for n, line in lines if n == 1 or line[:3] in only]
        message = hl7.parse("\r".join(line for _, line in lines))
        segments = [
            _Segment.of(message, seg, n) for (n, _), seg in zip(lines, message, strict=True)
        ]
        msh = segments[0]
        zone: tzinfo | None = None
        sent_at = None
        if msh.get(7):
            naive, zone = parse_dtm(msh.get(7))
            sent_at = naive.replace(tzinfo=zone or UTC).astimezone(UTC)
        label = f"{row['_source_file']} message {row['_source_offset']} (control id {_shown_id(row['message_control_id'])})"
        facility = row["sending_facility"] or hd_system(msh.components(3)) or "unknown"
        return _Message(row, segments, f"hl7v2:{facility}", zone, sent_at, label)

    def only(self, names: frozenset[str]) -> _Message:
        """The same parsed message seen through MSH and the ``names`` segments only (each keeps
        its position in the whole message): what ``of(row, only=names)`` gives, without a parse."""
        return replace(self, segments=[s for s in self.segments if s.position == 1 or s.name in names])


#: a bronze message parsed once (:func:`parse_messages`), for every step that reads it
Message = _Message


def parse_messages(bronze: pa.Table) -> list[Message]:
    """Each bronze message parsed once by python-hl7: silver rows, patient identities and notes
    all read the same parse (pass the list where those functions take bronze)."""
    return [_Message.of(row) for row in bronze.to_pylist()]


def _parsed(messages: pa.Table | Sequence[Message], only: frozenset[str] | None = None) -> Iterator[Message]:
    """Parsed messages from bronze rows (parsed now) or from :func:`parse_messages`."""
    if isinstance(messages, pa.Table):
        for row in messages.to_pylist():
            yield _Message.of(row, only=only)
        return
    for msg in messages:
        yield msg if only is None else msg.only(only)


class _Walk:
    """Walks one message's segments in order, keeping the patient, visit and order they belong to,
    and turning the segments of the wanted tables into outcomes."""

    def __init__(
        self, msg: _Message, *, key: bytes, max_shift_days: int, tables: frozenset[str]
    ) -> None:
        self.msg = msg
        self.key = key
        self.tables = tables
        self.pseudo = Pseudonymizer(
            key=key, max_shift_days=max_shift_days, source_system=msg.source_system
        )
        self.outcomes: dict[str, list[_Outcome]] = {t: [] for t in tables}
        self.patient: PatientKeys | None = None
        self.person: str | None = None  # the current patient's person_key
        self.records_seen: set[str] = set()
        self.visit: str | None = None  # local id of the current PV1's visit
        self.orc: _Segment | None = None
        self.obr: _Segment | None = None
        self.order: dict[str, _Segment] = {}  # the current order group's ORC / RXO / RXE
        self.observation_ids: Counter[str] = Counter()

    def run(self) -> dict[str, list[_Outcome]]:
        for seg in self.msg.segments:
            handler = getattr(self, f"_on_{seg.name.lower()}", None)
            if handler is not None:
                handler(seg)
        self._close_order()
        return self.outcomes

    def where(self, seg: _Segment) -> str:
        return f"{self.msg.label} {seg.name} {seg.position}"

    def emit(self, table: str, outcome: _Outcome) -> None:
        if table in self.tables:
            self.outcomes[table].append(outcome)

    def time(self, seg: _Segment, number: int, label: str) -> datetime | None:
        """A DTM field as UTC; a malformed one rejects the row."""
        try:
            return to_utc(seg.get(number), self.msg.zone)
        except BadDatetime:
            raise Rejected(
                "parse.hl7_bad_datetime",
                f"{self.where(seg)}: {seg.name}-{number} ({label}) is not an HL7 date/time",
            ) from None

    def shifted(self, value: datetime | None) -> datetime | None:
        assert self.person is not None
        moved: datetime | None = shift_datetime(value, self.pseudo.shift(self.person))
        return moved

    def needs_person(self, seg: _Segment) -> str:
        if self.person is None:
            raise Rejected(
                "silver.missing_subject",
                f"{self.where(seg)}: no PID with a patient identifier precedes it",
            )
        return self.person

    def attempt(self, table: str, seg: _Segment, make: Callable[[], list[dict[str, Any]]]) -> None:
        if table not in self.tables:
            return
        try:
            try:
                rows = make()
            except OverflowError:  # a date at the calendar's edge that the date shift moves off it
                raise Rejected(
                    "parse.hl7_bad_datetime",
                    f"{self.where(seg)}: a date/time lies at the edge of the calendar (year 1 or "
                    "9999), where the de-identifying date shift cannot move it",
                ) from None
        except Rejected as rej:
            self.emit(
                table,
                _Outcome(rule_id=rej.rule_id, reason=rej.reason, part=f"{seg.name} {seg.position}"),
            )
            return
        lineage = {
            "_record_hash": self.msg.row["_record_hash"],
            "_source_kind": SOURCE_KIND,
            "_run_id": self.msg.row["_run_id"],
        }
        rank = (
            table in AUTHORITATIVE and self.msg.row["message_type"].startswith("ADT"),
            self.msg.sent_at or _NEVER,
        )
        self.emit(table, _Outcome(rows=[{**r, **lineage, "_rank": rank} for r in rows]))

    # -- PID → silver.patients (PID[Patient]) ---------------------------------------------------

    def _on_pid(self, pid: _Segment) -> None:
        self._close_order()
        self.visit, self.orc, self.obr = None, None, None
        self.patient = patient_keys(pid, key=self.key, source_system=self.msg.source_system)
        self.person = self.patient.person_key if self.patient else None
        if self.patient is not None and self.patient.source_key in self.records_seen:
            self.emit("patients", _Outcome(merged=True))
            return
        if self.patient is not None:
            self.records_seen.add(self.patient.source_key)
        self.attempt("patients", pid, lambda: [self._patient(pid)])

    def _patient(self, pid: _Segment) -> dict[str, Any]:
        """A patient without direct identifiers (PID[Patient]): no name (PID-5), ids (PID-2/3/4/19/20),
        street (PID-11.1/2), phones (PID-13/14), mother's maiden name (PID-6) or exact dates."""
        if self.patient is None:
            raise Rejected(
                "silver.missing_id", f"{self.where(pid)}: PID-3 (patient identifier list) is empty"
            )
        shift = self.pseudo.shift(self.patient.person_key)
        try:
            birth = to_date(pid.get(7))
        except BadDatetime:
            raise Rejected(
                "parse.hl7_bad_datetime",
                f"{self.where(pid)}: PID-7 (date of birth) is not an HL7 date/time",
            ) from None
        try:
            died = to_date(pid.get(29))
        except BadDatetime:
            raise Rejected(
                "parse.hl7_bad_datetime",
                f"{self.where(pid)}: PID-29 (death date) is not an HL7 date/time",
            ) from None
        marital = pid.get(16)
        return {
            "person_key": self.patient.person_key,
            "source_key": self.patient.source_key,
            "source_system": self.msg.source_system,
            "gender": GENDER.get(pid.get(8).upper()),
            "birth_date": shift_date(birth, shift),
            "deceased": pid.get(30).upper() == "Y" or died is not None,
            "deceased_date": shift_date(died, shift),
            "zip3": zip3(pid.get(11, 5)),
            "state": pid.get(11, 4) or None,
            "country": pid.get(11, 6) or None,
            "marital_status": MARITAL.get(marital.upper(), marital or None),
            "race": pid.get(10, 2) or pid.get(10) or None,
            "ethnicity": pid.get(22, 2) or pid.get(22) or None,
            "language": pid.get(15) or None,
        }

    # -- PV1 → silver.encounters (PV1[Encounter]) -----------------------------------------------

    def _on_pv1(self, pv1: _Segment) -> None:
        self._close_order()
        self.visit = visit_id(pv1, self.person, self.msg.zone)
        self.attempt("encounters", pv1, lambda: [self._encounter(pv1)])

    def _encounter(self, pv1: _Segment) -> dict[str, Any]:
        """An encounter (PV1[Encounter]): class PV1-2, type PV1-4, period PV1-44/45, site PV1-3.4."""
        start, end = (
            self.time(pv1, 44, "admit date/time"),
            self.time(pv1, 45, "discharge date/time"),
        )
        person = self.needs_person(pv1)
        if self.visit is None:
            raise Rejected(
                "silver.missing_id",
                f"{self.where(pv1)}: neither PV1-19 (visit number) nor PV1-44 (admit date/time) identifies the visit",
            )
        patient_class = pv1.get(2).upper()
        return {
            "encounter_key": self.pseudo.record("Encounter", self.visit),
            "person_key": person,
            "status": "finished" if end else PATIENT_CLASS_STATUS.get(patient_class),
            "class_code": PATIENT_CLASS.get(patient_class, patient_class or None),
            "type_system": V2_0007 if pv1.get(4) else None,
            "type_code": pv1.get(4) or None,
            "type_display": pv1.get(4, 2) or None,
            "site": hd_system(pv1.components(3), 4) or pv1.get(39) or None,
            "start_at": self.shifted(start),
            "end_at": self.shifted(end),
        }

    def encounter_key(self) -> str | None:
        return self.pseudo.record("Encounter", self.visit) if self.visit else None

    # -- ORC / OBR: the order context -----------------------------------------------------------

    def _on_orc(self, orc: _Segment) -> None:
        self._close_order()
        self.orc, self.obr = orc, None
        self.order = {"ORC": orc}

    def _on_obr(self, obr: _Segment) -> None:
        self.obr = obr

    # -- OBX → silver.observations (OBX[Observation]) -------------------------------------------

    def _on_obx(self, obx: _Segment) -> None:
        self.attempt("observations", obx, lambda: self._observations(obx))

    def _observations(self, obx: _Segment) -> list[dict[str, Any]]:
        """One row per OBX-5 repetition (one row when it has no kept value), per OBX[Observation]:
        code OBX-3, value OBX-5 by OBX-2, units OBX-6, range OBX-7, flags OBX-8, status OBX-11,
        time OBX-14 else OBR-7 (OBR[DiagnosticReport]); free text (ST/TX/FT) is not kept."""
        coding = pick(codings(obx.components(3)), LOINC)
        if coding is None:
            raise Rejected(
                "parse.hl7_bad_segment",
                f"{self.where(obx)}: OBX-3 (observation identifier) is empty",
            )
        where = f"{self.where(obx)} ({_shown_id(coding.code)})"  # a sender's text: cut
        value_type = obx.get(2).upper()
        values = observation_values(obx, value_type, where=where)
        effective = self.time(obx, 14, "observation date/time")
        if effective is None and self.obr is not None:
            effective = self.time(self.obr, 7, "observation date/time")
        person = self.needs_person(obx)
        low, high = reference_range(obx.get(7))
        status = obx.get(11).upper()
        panel = self.obr.get(4) if self.obr is not None else ""
        order = next(
            (
                v
                for s, n in ((self.obr, 3), (self.obr, 2), (self.orc, 3), (self.orc, 2))
                if s is not None and (v := s.get(n))
            ),
            None,
        )
        base = (
            f"order:{order}|{coding.system}|{coding.code}|{obx.get(4)}"
            if order
            else f"message:{self.msg.row['_record_hash']}|OBX{obx.position}"
        )
        self.observation_ids[base] += 1
        local = f"{base}|{self.observation_ids[base]}"
        section = self.obr.get(24).upper() if self.obr is not None else ""
        common = {
            "person_key": person,
            "encounter_key": self.encounter_key(),
            "status": RESULT_STATUS.get(status, "unknown"),
            "category": "vital-signs"
            if coding.system == LOINC and coding.code in VITAL_SIGNS
            else "laboratory"
            if section in LAB_SECTIONS
            else None,
            "code_system": coding.system,
            "code": coding.code,
            "code_display": coding.display,
            "panel_code": panel if panel and panel != coding.code else None,
            "data_absent_reason": obx.get(32) or ("not-asked" if status == "N" else None),
            "interpretation": obx.get(8) or None,
            "ref_low": low,
            "ref_high": high,
            "effective_at": self.shifted(effective),
        }
        if not values:
            values = [_EMPTY_VALUE]
        return [
            {
                **common,
                **value,
                "observation_key": self.pseudo.record(
                    "Observation", local if len(values) == 1 else f"{local}#{n}"
                ),
            }
            for n, value in enumerate(values, start=1)
        ]

    # -- ORC + RXO/RXE → silver.medications (RXO[MedicationRequest], ORC[ServiceRequest]) -------

    def _on_rxo(self, rx: _Segment) -> None:
        self._pharmacy(rx)

    def _on_rxe(self, rx: _Segment) -> None:
        self._pharmacy(rx)

    def _pharmacy(self, rx: _Segment) -> None:
        if rx.name in self.order:  # a second RXE/RXO without an ORC: a group of its own
            self._close_order()
        self.order.setdefault(rx.name, rx)

    def _close_order(self) -> None:
        group, self.order = self.order, {}
        first = group.get("RXE") or group.get("RXO")
        if first is None:
            return
        self.attempt("medications", first, lambda: [self._medication(group, first)])

    def _medication(self, group: dict[str, _Segment], first: _Segment) -> dict[str, Any]:
        """A medication order: the drug of RXE-2 (give code) else RXO-1 (requested give code),
        status ORC-5 else ORC-1, authored ORC-9 for a new order (ORC-1 NW), sig RXE-7 else RXO-7.
        RXO gives intent original-order (RXO[MedicationRequest]); a pharmacy-encoded RXE gives
        filler-order, as in Microsoft's FHIR-Converter (the IG has no RXE map)."""
        orc, rxo, rxe = group.get("ORC"), group.get("RXO"), group.get("RXE")
        found = (codings(rxe.components(2)) if rxe else []) or (
            codings(rxo.components(1)) if rxo else []
        )
        coding = pick(found)
        if coding is None:
            raise Rejected(
                "parse.hl7_bad_segment",
                f"{self.where(first)}: neither RXE-2 nor RXO-1 names the drug",
            )
        order_id = (orc.get(2) or orc.get(3) if orc else "") or (rxe.get(15) if rxe else "")
        local = (
            f"order:{order_id}"
            if order_id
            else f"message:{self.msg.row['_record_hash']}|{first.name}{first.position}"
        )
        control = orc.get(1).upper() if orc else ""
        authored = (
            self.time(orc, 9, "date/time of transaction") if orc and control == "NW" else None
        )
        person = self.needs_person(first)
        sig = "; ".join(_texts(rxe, 7) if rxe else []) or "; ".join(_texts(rxo, 7) if rxo else [])
        rxnorm = next((c.code for c in found if c.system == RXNORM), None)
        return {
            "medication_key": self.pseudo.record("MedicationRequest", local),
            "person_key": person,
            "encounter_key": self.encounter_key(),
            "status": (ORDER_STATUS.get(orc.get(5).upper()) or ORDER_CONTROL_STATUS.get(control))
            if orc
            else None,
            "intent": "filler-order" if rxe else "original-order",
            "code_system": coding.system,
            "code": coding.code,
            "code_display": coding.display,
            "rxnorm_code": rxnorm,
            "authored_at": self.shifted(authored),
            "dosage_text": sig or None,
        }

    # -- DG1 → silver.conditions (DG1[Condition]) -----------------------------------------------

    def _on_dg1(self, dg1: _Segment) -> None:
        self.attempt("conditions", dg1, lambda: [self._condition(dg1)])

    def _condition(self, dg1: _Segment) -> dict[str, Any]:
        """A diagnosis (DG1[Condition]): code DG1-3 (its system, else the DG1-2 coding method),
        onset DG1-5, recorded DG1-19, entered-in-error when DG1-21 is D."""
        found = codings(dg1.components(3))
        if found and found[0].system is None and dg1.get(2):
            found[0] = Coding(coding_system(dg1.get(2)), found[0].code, found[0].display)
        coding = pick(found)
        if coding is None:
            raise Rejected(
                "parse.hl7_bad_segment", f"{self.where(dg1)}: DG1-3 (diagnosis code) is empty"
            )
        onset = self.time(dg1, 5, "diagnosis date/time")
        recorded = self.time(dg1, 19, "attestation date/time")
        person = self.needs_person(dg1)
        local = (
            dg1.get(20)
            or f"{self.visit or 'message:' + self.msg.row['_record_hash']}|{coding.system}|{coding.code}"
        )
        shift = self.pseudo.shift(person)
        return {
            "condition_key": self.pseudo.record("Condition", local),
            "person_key": person,
            "encounter_key": self.encounter_key(),
            "clinical_status": None,
            "verification_status": "entered-in-error" if dg1.get(21).upper() == "D" else None,
            "code_system": coding.system,
            "code": coding.code,
            "code_display": coding.display,
            "icd10cm_code": next((c.code for c in found if c.system == ICD10CM), None),
            "snomed_code": next((c.code for c in found if c.system == SNOMED), None),
            "onset_at": shift_datetime(onset, shift),
            "abatement_at": None,
            "recorded_date": shift_date(recorded.date() if recorded else None, shift),
        }


_EMPTY_VALUE: dict[str, Any] = {
    "value_num": None,
    "value_unit": None,
    "value_code": None,
    "value_text": None,
}


def observation_values(obx: _Segment, value_type: str, *, where: str) -> list[dict[str, Any]]:
    """The kept values of OBX-5 by its OBX-2 type: NM/SN numbers with OBX-6 units, coded values;
    dates, times and free text are checked but not kept."""
    reps = [rep for rep in obx.repetitions(5) if any(s.strip() for c in rep for s in c)]
    if value_type in PRIMITIVE_TYPES and obx.structured(5):
        raise Rejected(
            "parse.hl7_bad_value",
            f"{where}: OBX-5 holds components, but OBX-2 {value_type} is a primitive type (unescaped ^ or &?)",
        )
    unit = observation_unit(obx.components(6))
    values: list[dict[str, Any]] = []
    for rep in reps:
        text = _sub(rep, 1)
        if value_type == "NM":
            if not _NUMBER.fullmatch(text):
                raise Rejected(
                    "parse.hl7_bad_value", f"{where}: OBX-5 is not a number, but OBX-2 is NM"
                )
            values.append({**_EMPTY_VALUE, "value_num": float(text), "value_unit": unit})
        elif value_type == "SN":
            values.append(structured_numeric(rep, unit, where=where))
        elif value_type in CODED_TYPES or value_type in ("IS", "ID"):
            code = _sub(rep, 1)
            if code:
                display = _sub(rep, 2) if value_type not in ("IS", "ID") else ""
                values.append({**_EMPTY_VALUE, "value_code": code, "value_text": display or None})
        elif value_type in TIME_TYPES:
            try:
                parse_dtm(text)
            except BadDatetime:
                raise Rejected(
                    "parse.hl7_bad_datetime",
                    f"{where}: OBX-5 is not an HL7 date/time, but OBX-2 is {value_type}",
                ) from None
        elif value_type == "TM":
            try:
                check_tm(text)
            except BadDatetime:
                raise Rejected(
                    "parse.hl7_bad_datetime", f"{where}: OBX-5 is not an HL7 time, but OBX-2 is TM"
                ) from None
    return values


def structured_numeric(rep: Components, unit: str | None, *, where: str) -> dict[str, Any]:
    """An SN value (SN[Quantity]): a plain number, or comparator/range/ratio text such as ``<5``."""
    comparator, first, separator, second = (_sub(rep, n) for n in (1, 2, 3, 4))
    numbers = [n for n in (first, second) if n]
    if (
        not numbers
        or not all(_NUMBER.fullmatch(n) for n in numbers)
        or comparator not in ("", "=", "<", ">", "<=", ">=", "<>")
    ):
        raise Rejected(
            "parse.hl7_bad_value", f"{where}: OBX-5 is not a structured numeric (SN) value"
        )
    if comparator in ("", "=") and not separator and not second:
        return {**_EMPTY_VALUE, "value_num": float(first), "value_unit": unit}
    return {
        **_EMPTY_VALUE,
        "value_text": f"{comparator}{first}{separator}{second}",
        "value_unit": unit,
    }


def observation_unit(comps: Components) -> str | None:
    """OBX-6 as silver's unit (CWE[Quantity]): the UCUM code when OBX-6.3 says UCUM, else the text."""
    code, text, system = _sub(comps, 1), _sub(comps, 2), _sub(comps, 3)
    if code and coding_system(system) == UCUM:
        return code
    return text or code or None


@dataclass(frozen=True)
class PatientKeys:
    """A PID's pseudonyms: the patient record in this source, and the person it belongs to."""

    source_key: str  # the record: (sending facility, its MRN or first identifier)
    person_key: str  # the person: the MRN's key when PID carries a qualified MRN, else source_key
    local_id: str  # the identifier the source key is made from (PHI: for the vault only)


def patient_keys(pid: _Segment, *, key: bytes, source_system: str) -> PatientKeys | None:
    """The keys of the patient a PID names; None when it carries no identifier at all.

    The record is keyed by (sending facility, identifier) like any source record. The person is
    keyed by the medical record number when PID-3 (then PID-2, PID-4) holds an identifier typed
    MR with an assigning authority (CX.4): ``mrn_key(key, authority, mrn)``, the same key every
    source carrying that MRN derives, so the same patient in FHIR and HL7 is one person_key.
    """
    identifiers = [rep for number in (3, 2, 4) for rep in pid.repetitions(number) if _sub(rep, 1)]
    if not identifiers:
        return None
    mrn = next(
        (rep for rep in identifiers if _sub(rep, 5).upper() == "MR" and hd_system(rep, 4)), None
    )
    chosen = mrn or identifiers[0]
    authority = hd_system(chosen, 4)
    local = f"{_sub(chosen, 1)}^{authority}" if authority else _sub(chosen, 1)
    record: str = source_key(key, source_system, local)
    person = mrn_key(key, authority, _sub(chosen, 1)) if mrn and authority else record
    return PatientKeys(record, person, local)


def visit_id(pv1: _Segment, person: str | None, zone: tzinfo | None) -> str | None:
    """The local id of a visit: PV1-19 (visit number, with its authority), else the patient and the
    admit time PV1-44; None when neither is there (or the admit time is malformed)."""
    number = pv1.get(19)
    if number:
        authority = hd_system(pv1.components(19), 4)
        return f"{number}^{authority}" if authority else number
    try:
        admitted = to_utc(pv1.get(44), zone)
    except BadDatetime:
        return None
    return f"{person}@{admitted.isoformat()}" if person and admitted else None


# -- the transforms ---------------------------------------------------------------------------

Table = Literal["patients", "encounters", "observations", "medications", "conditions"]
TABLES: dict[Table, TableSpec] = {
    "patients": SILVER_PATIENTS,
    "encounters": SILVER_ENCOUNTERS,
    "observations": SILVER_OBSERVATIONS,
    "medications": SILVER_MEDICATIONS,
    "conditions": SILVER_CONDITIONS,
}
#: tables whose rows from ADT messages outrank rows from other messages: the registration system
#: owns demographics and visit state (an RDE's PV1 does not know the discharge an A08 sent)
AUTHORITATIVE = frozenset({"patients", "encounters"})
_NEVER = datetime.min.replace(tzinfo=UTC)
#: segments that feed some silver table; a message with none of them stays in bronze only
MAPPED_SEGMENTS = frozenset({"PID", "PV1", "OBX", "RXE", "RXO", "DG1"})
#: the segments the flatteners read: the mapped ones and the orders (ORC, OBR) they belong to
WALKED_SEGMENTS = MAPPED_SEGMENTS | {"ORC", "OBR"}


def silver_from_bronze(
    bronze: pa.Table | Sequence[Message],
    *,
    key: bytes,
    max_shift_days: int = 365,
    tables: Sequence[Table] = tuple(TABLES),
) -> dict[str, Flattened]:
    """The silver rows of HL7 v2 bronze messages, by silver table name, parsing each message once.

    Rows of newer messages (MSH-7) come first, ADT messages before all others for patients and
    visits, so the gate's first-row-per-key promotion keeps the latest version of a patient,
    visit or result that an ADT^A08 or a corrected ORU re-sent.
    """
    wanted = frozenset(tables)
    outcomes: dict[str, list[tuple[_Message, _Outcome]]] = {t: [] for t in wanted}
    for msg in _parsed(bronze, WALKED_SEGMENTS):
        for table, found in (
            _Walk(msg, key=key, max_shift_days=max_shift_days, tables=wanted).run().items()
        ):
            outcomes[table].extend((msg, o) for o in found)
    return {TABLES[t].name: _flattened(TABLES[t], outcomes[t]) for t in tables}


def _flattened(target: TableSpec, outcomes: list[tuple[_Message, _Outcome]]) -> Flattened:
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    produced = merged = 0
    for msg, outcome in outcomes:
        if outcome.merged:
            merged += 1
        elif outcome.rule_id:
            bad.append(
                {
                    "rule_id": outcome.rule_id,
                    "reason": outcome.reason,
                    "source_file": msg.row["_source_file"],
                    "source_offset": msg.row["_source_offset"],
                    "record_id": msg.row["message_control_id"],
                    "record_hash": msg.row["_record_hash"],
                    "part": outcome.part,
                    "raw_record": msg.row["raw"],
                }
            )
        else:
            produced += 1
            good.extend(outcome.rows)
    good.sort(key=lambda r: r["_rank"], reverse=True)
    result = Flattened(
        Split(
            pa.Table.from_pylist(
                [{k: v for k, v in r.items() if k != "_rank"} for r in good], schema=target.schema
            ),
            _quarantined(bad, table_name=target.name),
        ),
        records_in=len(outcomes),
        records_out=produced,
        merged=merged,
    )
    assert result.balanced
    return result


def _quarantined(records: list[dict[str, Any]], *, table_name: str) -> pa.Table:
    """Quarantine rows for segments; one message can hold several bad segments, so each row's id
    names its segment too (as the gate's ids name their silver key)."""
    table = quarantine_rows(records, table_name=table_name)
    ids = [
        quarantine_id(
            r["rule_id"].split(".", 1)[0],
            r["rule_id"],
            r["source_file"],
            r["source_offset"],
            f"{r['record_hash']}#{r['part']}",
        )
        for r in records
    ]
    position = table.schema.get_field_index("quarantine_id")
    return table.set_column(position, table.schema.field(position), pa.array(ids, pa.string()))


def _one(table: Table) -> Callable[..., Flattened]:
    def transform(bronze: pa.Table, *, key: bytes, max_shift_days: int = 365) -> Flattened:
        return silver_from_bronze(bronze, key=key, max_shift_days=max_shift_days, tables=(table,))[
            TABLES[table].name
        ]

    transform.__name__ = f"{table}_from_bronze"
    transform.__doc__ = f"``{TABLES[table].name}`` rows from HL7 v2 bronze messages."
    return transform


patients_from_bronze = _one("patients")
encounters_from_bronze = _one("encounters")
observations_from_bronze = _one("observations")
medications_from_bronze = _one("medications")
conditions_from_bronze = _one("conditions")


def patient_identities(bronze: pa.Table | Sequence[Message], *, key: bytes) -> list[dict[str, Any]]:
    """The direct identifiers of each patient record in HL7 v2 bronze, keyed by its pseudonyms, for
    the encrypted vault: FHIR-shaped names (PID-5), identifiers (PID-2/3/4, SSN PID-19), birth and
    death (PID-7/29/30), address (PID-11) and phones (PID-13/14), per XPN[HumanName], CX[Identifier],
    XAD[Address], XTN[ContactPoint]. The newest message (MSH-7) of each record wins.
    """
    found: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for msg in _parsed(bronze, frozenset({"PID"})):
        for pid in (s for s in msg.segments if s.name == "PID"):
            keys = patient_keys(pid, key=key, source_system=msg.source_system)
            if keys is None:
                continue
            sent = msg.sent_at or _NEVER
            if keys.source_key in found and found[keys.source_key][0] > sent:
                continue
            found[keys.source_key] = (
                sent,
                {
                    "person_key": keys.person_key,
                    "source_key": keys.source_key,
                    "source_system": msg.source_system,
                    "local_id": keys.local_id,
                    "names": [
                        {
                            "family": _sub(r, 1),
                            "given": [g for g in (_sub(r, 2), _sub(r, 3)) if g],
                            "suffix": _sub(r, 4) or None,
                            "prefix": _sub(r, 5) or None,
                            "use": _sub(r, 7) or None,
                        }
                        for r in pid.repetitions(5)
                        if _sub(r, 1) or _sub(r, 2)
                    ],
                    "birth_date": pid.get(7) or None,
                    "deceased": pid.get(29) or pid.get(30) or None,
                    "telecom": [
                        {
                            "value": _sub(r, 1) or _sub(r, 4) or f"{_sub(r, 6)}{_sub(r, 7)}",
                            "use": _sub(r, 2) or None,
                            "system": _sub(r, 3) or None,
                        }
                        for n in (13, 14)
                        for r in pid.repetitions(n)
                        if _sub(r, 1) or _sub(r, 4) or _sub(r, 7)
                    ],
                    "address": [
                        {
                            "line": [v for v in (_sub(r, 1), _sub(r, 2)) if v],
                            "city": _sub(r, 3) or None,
                            "state": _sub(r, 4) or None,
                            "postalCode": _sub(r, 5) or None,
                            "country": _sub(r, 6) or None,
                            "use": _sub(r, 7) or None,
                        }
                        for r in pid.repetitions(11)
                        if any(_sub(r, n) for n in range(1, 7))
                    ],
                    "identifiers": [
                        {"value": _sub(r, 1), "type": _sub(r, 5) or None, "system": hd_system(r, 4)}
                        for n in (2, 3, 4)
                        for r in pid.repetitions(n)
                        if _sub(r, 1)
                    ]
                    + (
                        [{"value": pid.get(19), "type": "SS", "system": None}]
                        if pid.get(19)
                        else []
                    ),
                },
            )
    return [identity for _, identity in found.values()]


def bronze_only_from_bronze(bronze: pa.Table) -> Split:
    """Messages with no segment any silver table reads (ACK, MFN, …): kept in bronze only."""
    keep = [
        i
        for i, raw in enumerate(bronze.column("raw").to_pylist())
        if not any(line[:3] in MAPPED_SEGMENTS for line in segment_lines(raw))
    ]
    return Split(
        bronze.take(pa.array(keep, pa.int64())), quarantine_rows([], table_name=BRONZE_HL7V2.name)
    )


# ---------------------------------------------------------------------------------------------
# free text → silver.notes (de-identified)

#: OBX-2 value types whose OBX-5 is free text, kept as a note (HL7 table 0125)
NOTE_VALUE_TYPES = TEXT_TYPES


def note_texts(msg: _Message) -> Iterator[tuple[_Segment, str, str]]:
    """(segment, path, text) of each free-text segment of a message: every NTE (NTE-3, after any
    segment) and every OBX whose OBX-2 is ST, TX or FT (OBX-5). Repetitions are lines (an
    unescaped ``^`` or ``&`` in the text is put back); FT's
    ``\\.br\\`` line breaks stay line breaks. The path names the message type, the parent segment
    and the note by their order in the message (``ORU^R01/OBX[3]/NTE[1]``), never a value."""
    seen: Counter[str] = Counter()
    parent = ""
    notes_of_parent = 0
    for seg in msg.segments[1:]:
        if seg.name != "NTE":
            seen[seg.name] += 1
            parent, notes_of_parent = f"{seg.name}[{seen[seg.name]}]", 0
        if seg.name == "NTE":
            notes_of_parent += 1
            path = "/".join(p for p in (parent, f"NTE[{notes_of_parent}]") if p)
            field_number = 3
        elif seg.name == "OBX" and seg.get(2).upper() in NOTE_VALUE_TYPES:
            path, field_number = parent, 5
        else:
            continue
        lines = ["^".join("&".join(comp) for comp in rep) for rep in seg.repetitions(field_number)]
        text = "\n".join(lines).replace("\r\n", "\n").replace("\r", "\n").strip()
        if text:
            yield seg, f"{msg.row['message_type']}/{path}", text


def notes_from_bronze(
    messages: pa.Table | Sequence[Message],
    *,
    key: bytes,
    max_shift_days: int = 365,
    workers: int = 1,
    ages: AgePolicy = "over_89",
) -> Split:
    """``silver.notes`` rows of HL7 v2 free text (NTE comments, OBX-5 text values), de-identified in
    one batch like FHIR's notes (``fhir.notes_from_bronze``).

    Each note belongs to the patient of the PID before it, whose names, identifiers, phones and
    address (:func:`patient_identities`) are the note's deny list, and to the visit of the PV1
    after that PID, if any. A note with no identified patient before it is quarantined
    (``deid.note_missing_subject``). ``resource_type`` is ``HL7v2:NTE`` or ``HL7v2:OBX``; the
    note and resource keys are keyed pseudonyms of (sending facility, control id, segment position).
    """
    from medlake.governance.text_deid import record_deny_list

    parsed = list(_parsed(messages))
    deny_lists: dict[str, list[str]] = {}
    for identity in patient_identities(parsed, key=key):
        deny_lists.setdefault(identity["person_key"], []).extend(record_deny_list(identity))
    meta: list[dict[str, Any]] = []
    texts: list[str] = []
    bad: list[dict[str, Any]] = []
    for msg in parsed:
        row = msg.row
        pseudo = Pseudonymizer(
            key=key, max_shift_days=max_shift_days, source_system=msg.source_system
        )
        control = row["message_control_id"] or row["_record_hash"]
        person: str | None = None
        visit: str | None = None
        places = {seg.position: seg for seg in msg.segments if seg.name in ("PID", "PV1")}
        notes = {seg.position: (path, text) for seg, path, text in note_texts(msg)}
        for position in sorted(places.keys() | notes.keys()):
            if position in places and places[position].name == "PID":
                keys = patient_keys(places[position], key=key, source_system=msg.source_system)
                person, visit = (keys.person_key if keys else None), None
                continue
            if position in places:
                visit = visit_id(places[position], person, msg.zone)
                continue
            path, text = notes[position]
            kind = path.rsplit("/", 1)[-1].split("[", 1)[0]
            if person is None:
                bad.append(
                    {
                        "rule_id": "deid.note_missing_subject",
                        "reason": f"{msg.label} {kind} {position} ({path}): "
                        "no PID with a patient identifier precedes it",
                        "source_file": row["_source_file"],
                        "source_offset": row["_source_offset"],
                        "record_id": row["message_control_id"],
                        "record_hash": row["_record_hash"],
                        "part": f"{kind} {position}",
                        "raw_record": row["raw"],
                    }
                )
                continue
            texts.append(text)
            meta.append(
                {
                    "note_key": pseudo.record("Note", f"{control}#{position}"),
                    "person_key": person,
                    "encounter_key": pseudo.record("Encounter", visit) if visit else None,
                    "resource_type": f"HL7v2:{kind}",
                    "resource_key": pseudo.record(f"HL7v2:{kind}", f"{control}#{position}"),
                    "note_path": path,
                    "_record_hash": row["_record_hash"],
                    "_source_kind": SOURCE_KIND,
                    "_run_id": row["_run_id"],
                }
            )
    return Split(
        deidentified_notes(meta, texts, deny_lists, key=key, workers=workers, ages=ages),
        _quarantined(bad, table_name=SILVER_NOTES.name),
    )
