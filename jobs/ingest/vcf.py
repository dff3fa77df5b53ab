"""VCF genomics: ``landing/vcf/`` → ``bronze.vcf_records`` + ``bronze.vcf_headers`` → ``silver.variants``.

A plug-in source (the contract of :mod:`medlake.jobs.stage`): :func:`ingest` and :func:`to_staging`.

Files: ``*.vcf`` and bgzipped ``*.vcf.gz`` (VCF 4.x), any number of samples.

Bronze. Every data line is one record of ``bronze.vcf_records``, kept verbatim (without its line
break) with its file and 1-based line number (``_source_offset``); blank lines are no records.
The header (the ``##`` meta lines and the ``#CHROM`` line) is one record of
``bronze.vcf_headers`` keyed by its hash, which every data line names (``header_hash``). A line's
``_record_hash`` covers its header hash and its text, so re-ingesting a file (plain or bgzipped)
adds nothing, and a line repeated verbatim in one file merges as a duplicate. The ledger counts
data lines for ``bronze.vcf_records`` and one header per readable file for ``bronze.vcf_headers``.

Bad input. Each data line is checked in Python before htslib ever sees it (column count, CHROM,
POS, REF, ALT, QUAL, FILTER, INFO, FORMAT and each sample's values against the header's declared
types, genotypes against the ALT count); a failing line is quarantined under ``parse.vcf_<rule>``
with its file and line number (:data:`LINE_RULES`). A file whose header cannot be read (no
``##fileformat``, no ``#CHROM`` line, a ``#CHROM`` line with wrong or duplicate columns, a header
htslib refuses, not gzip, not UTF-8) is quarantined whole as one record at offset 0 and none of
its lines are read. Only checked lines reach cyvcf2 (htslib): it cannot abort the interpreter or
skip a line unnoticed; a line it still refuses or skips is quarantined as ``silver.vcf_htslib``.

Silver (``silver.variants``, partitioned by ``chrom``). One row per ALT allele per sample: a
multi-allelic line ``A → G,T`` gives each sample a row for G (``allele_index`` 1) and one for T
(2), so "who carries chr7:117559590 ATCT>A" is a filter on ``alt`` and ``alt_copies``. A line
with no ALT (``.``) gives each sample one row with ``alt`` null and ``allele_index`` 0. Silver
rows per line = max(1, ALT alleles) × samples; a sites-only line (no samples) gives none and
counts as bronze-only. ``genotype`` is the GT text as written (``0/1``, phased ``0|1``, haploid
``1``); ``alt_copies`` counts this allele in it (from htslib's allele indices); no-calls (``./.``)
are kept as rows with ``alt_copies`` null, since "not covered" is information. ``depth`` and
``genotype_quality`` are FORMAT DP and GQ; ``qual`` and ``filter`` the line's QUAL and FILTER
(null for ``.``). ``info`` is INFO as a map of text values exactly as written (flags ``"true"``);
a field the header declares ``Number=A`` holds this allele's value only, ``Number=R`` the
reference's and this allele's.

Patients. A sample is linked to its patient by a ``##SAMPLE`` header line carrying the medical
record number and its assigning authority, as the lab's LIMS writes them::

    ##SAMPLE=<ID=GS-000123,MRN=MRN-0012345,MRNAuthority=http://hospital.example.org/mrn>

so ``person_key = mrn_key(key, authority, mrn)``, the person key FHIR and HL7 v2 give the same
MRN. ``sample_key`` is the keyed pseudonym of the sample id (``source_key(key, "vcf", id)``); a
sample without MRN and authority (a control such as NA12878, a research sample) keeps it as its
person key until entity resolution links it. No MRN or sample id reaches silver. VCF carries no
clinical dates, so nothing is date-shifted.

Ledger: ingest as above; ``silver`` → ``silver.variants`` counts this run's bronze lines (in =
staged + quarantined + bronze-only); the gate then counts rows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medlake import ledger
from medlake.governance.pseudonyms import mrn_key, record_key, source_key
from medlake.jobs.ingest import limits
from medlake.jobs.stage import StageResult, write_bronze
from medlake.lake import Lake, conform
from medlake.ledger import Entry
from medlake.quarantine import Split, quarantine_rows, stamp_run
from medlake.registry import (
    BRONZE_VCF,
    BRONZE_VCF_HEADERS,
    PRELINK_FIELD,
    QUARANTINE,
    SILVER_VARIANTS,
    staging_name,
)

if TYPE_CHECKING:
    from medlake.engines import Engine

log = logging.getLogger(__name__)

SOURCE_KIND = "vcf"
SOURCE_SYSTEM = "vcf"
FILE_SUFFIXES = (".vcf", ".vcf.gz")
FIXED_COLUMNS = ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")

#: what each line-level rule means (rule ids are ``parse.vcf_<name>``)
LINE_RULES: dict[str, str] = {
    "parse.vcf_column_count": "the line has more or fewer tab-separated columns than the header",
    "parse.vcf_misplaced_header": "a # header line after the first data line",
    "parse.vcf_bad_chrom": "CHROM is empty or not a valid contig name",
    "parse.vcf_bad_pos": "POS is not a non-negative whole number",
    "parse.vcf_bad_ref": "REF is not a sequence of A, C, G, T, N",
    "parse.vcf_bad_alt": "an ALT allele is not bases, *, <ID>, a breakend, or repeats REF",
    "parse.vcf_bad_qual": "QUAL is neither . nor a number",
    "parse.vcf_bad_filter": "FILTER is empty",
    "parse.vcf_bad_info": "an INFO entry is malformed or not of its declared type",
    "parse.vcf_bad_format": "FORMAT keys are malformed, repeated, or GT is not first",
    "parse.vcf_format_mismatch": "a sample has more values than FORMAT has keys",
    "parse.vcf_bad_genotype": "GT is malformed or names an allele the line does not have",
    "parse.vcf_bad_format_value": "a sample value is not of the type the header declares",
}
#: what each whole-file rule means
FILE_RULES: dict[str, str] = {
    "parse.vcf_bad_gzip": "a .vcf.gz file that is not gzip/bgzip data",
    "parse.vcf_bad_encoding": "the file is not UTF-8 text",
    "parse.vcf_no_fileformat": "the first line is not ##fileformat=VCFv4.x",
    "parse.vcf_no_chrom_line": "the header has no #CHROM column line",
    "parse.vcf_bad_column_header": "the #CHROM line's columns are not the VCF columns, or a sample repeats",
    "parse.vcf_bad_header": "htslib cannot read the header",
}
HTSLIB_RULE = "silver.vcf_htslib"

_CONTIG = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")
_POS = re.compile(r"\d{1,18}")
_BASES = re.compile(r"[ACGTNacgtn]+")
_SYMBOLIC = re.compile(r"<[^<>\s,]+>")
_BREAKEND = re.compile(
    r"[ACGTNacgtn]*[\[\]][^\[\]\s,]+[\[\]][ACGTNacgtn]*|\.[ACGTNacgtn]+|[ACGTNacgtn]+\."
)
_NUMBER = re.compile(
    r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE
)
_INTEGER = re.compile(r"[+-]?\d+")
_LONG_INTEGER = re.compile(r"\d{10}")  # a number that may not fit 32 bits: checked value by value
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
_KEY = re.compile(r"[A-Za-z_][0-9A-Za-z_.]*|1000G")
_GT = re.compile(r"(\.|\d+)([/|](\.|\d+))*")
_GT_ALLELES = re.compile(r"[/|]")
_FILEFORMAT = re.compile(r"##fileformat=VCFv4\.\d+")
_META = re.compile(r"##(?P<kind>INFO|FORMAT|SAMPLE)=<(?P<body>.*)>")
_META_FIELD = re.compile(r'(?P<k>[A-Za-z_][0-9A-Za-z_.]*)=(?P<v>"(?:[^"\\]|\\.)*"|[^,]*)')
_INT_MISSING = -2147483640  # htslib's int32 missing and vector-end markers are below this


# ---------------------------------------------------------------------------------------------
# the header


@dataclass(frozen=True)
class Field:
    """An INFO or FORMAT definition of the header: its Number and Type."""

    number: str
    type: str


@dataclass(frozen=True)
class Header:
    """What checking and reading a file's lines needs from its header."""

    text: str  # the header lines, joined by \n, verbatim
    fileformat: str
    samples: tuple[str, ...]
    has_format: bool
    info: Mapping[str, Field]
    format: Mapping[str, Field]
    mrns: Mapping[str, tuple[str, str]]  # sample id → (MRN, assigning authority), from ##SAMPLE

    @functools.cached_property
    def hash(self) -> str:
        """The header's content hash: its key in bronze.vcf_headers."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def columns(self) -> int:
        """Tab-separated columns of every data line."""
        return len(FIXED_COLUMNS) + (1 + len(self.samples) if self.has_format else 0)


class Rejected(Exception):
    """A file header or a data line that cannot be accepted, with the rule it breaks."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


def parse_header(lines: Sequence[str], *, where: str) -> Header:
    """The header of a file from its leading ``#`` lines; raises :class:`Rejected` naming the problem."""
    if not lines or not _FILEFORMAT.fullmatch(lines[0].strip()):
        raise Rejected(
            "parse.vcf_no_fileformat",
            f"{where}: the first line is not ##fileformat=VCFv4.x, so this is no VCF 4 file",
        )
    if not lines[-1].startswith("#CHROM"):
        raise Rejected(
            "parse.vcf_no_chrom_line",
            f"{where}: the header ends without a #CHROM column line, so the samples are unknown",
        )
    columns = lines[-1].split("\t")
    fixed, rest = tuple(columns[: len(FIXED_COLUMNS)]), columns[len(FIXED_COLUMNS) :]
    if fixed != FIXED_COLUMNS or (rest and rest[0] != "FORMAT"):
        raise Rejected(
            "parse.vcf_bad_column_header",
            f"{where}: the #CHROM line's columns are not {' '.join(FIXED_COLUMNS)} [FORMAT samples…] "
            "separated by tabs",
        )
    samples = tuple(rest[1:])
    if len(set(samples)) != len(samples) or any(not s.strip() for s in samples):
        raise Rejected(
            "parse.vcf_bad_column_header",
            f"{where}: the #CHROM line names a sample column twice or leaves one empty",
        )
    info: dict[str, Field] = {}
    fmt: dict[str, Field] = {}
    mrns: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(lines[1:-1], start=2):
        if not line.startswith("##"):
            raise Rejected(
                "parse.vcf_no_chrom_line",
                f"{where}: header line {number} is neither a ## meta line nor the #CHROM line",
            )
        meta = _META.fullmatch(line.strip())
        if meta is None:
            continue
        values = {
            m.group("k"): m.group("v").strip('"') for m in _META_FIELD.finditer(meta.group("body"))
        }
        if "ID" not in values:
            raise Rejected("parse.vcf_bad_header", f"{where}: header line {number} has no ID")
        if meta.group("kind") == "SAMPLE":
            if values.get("MRN") and values.get("MRNAuthority"):
                mrns[values["ID"]] = (values["MRN"], values["MRNAuthority"])
            continue
        target = info if meta.group("kind") == "INFO" else fmt
        target[values["ID"]] = Field(values.get("Number", "."), values.get("Type", "String"))
    return Header(
        text="\n".join(lines),
        fileformat=lines[0].split("=", 1)[1].strip(),
        samples=samples,
        has_format=bool(rest),
        info=info,
        format=fmt,
        mrns=mrns,
    )


def htslib_reads_header(header_text: str) -> str | None:
    """None when htslib (cyvcf2) accepts the header, else its complaint's type."""
    from cyvcf2 import VCF

    with tempfile.NamedTemporaryFile("w", suffix=".vcf", encoding="utf-8") as tmp:
        tmp.write(header_text + "\n")
        tmp.flush()
        try:
            reader = VCF(tmp.name)
            reader.close()
        except Exception as exc:  # noqa: BLE001 - cyvcf2 raises plain Exception/OSError on bad headers
            return type(exc).__name__
    return None


# ---------------------------------------------------------------------------------------------
# landing files → raw records

#: one raw record per header (kind 'header', offset 0) or data line, or a whole-file error
RAW_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("text", pa.large_string()),
        pa.field("error_rule", pa.string()),
        pa.field("error_reason", pa.string()),
    ]
)


def landing_files(vcf_dir: Path) -> list[Path]:
    """The VCF files of a landing folder, in a stable order."""
    if not vcf_dir.is_dir():
        return []
    return sorted(
        p for p in vcf_dir.rglob("*") if p.is_file() and p.name.lower().endswith(FILE_SUFFIXES)
    )


def read_files(paths: Sequence[Path], *, root: Path) -> pa.Table:
    """Raw records of many landing files, named relative to the landing root."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        name = path.relative_to(root).as_posix()
        try:  # decompressed as it is read, stopped at the limit; lines over the record limit cut
            data = limits.read_bounded(path, name=name, gzipped=name.lower().endswith(".gz"))
        except limits.LimitExceeded as over:
            rows.append(_record(name, 0, "header", None, over.rule_id, over.reason))
            continue
        except (OSError, EOFError, zlib.error) as exc:
            rows.append(_record(name, 0, "header", None, "parse.vcf_bad_gzip", _not_gzip(name, exc)))
            continue
        rows.extend(_text_records(data, name=name))
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def _not_gzip(name: str, exc: Exception) -> str:
    return f"{name}: not gzip data ({type(exc).__name__}: {str(exc)[:120]})"


def read_bytes(data: bytes, *, name: str) -> Iterator[dict[str, Any]]:
    """A file's header record (offset 0) and one record per non-blank data line (its line number),
    or one whole-file error record at offset 0."""
    if name.lower().endswith(".gz"):
        try:
            data = limits.gunzip_bounded(data, name=name)  # BGZF is multi-member gzip
        except limits.LimitExceeded as over:
            yield _record(name, 0, "header", None, over.rule_id, over.reason)
            return
        except (OSError, EOFError, zlib.error) as exc:
            yield _record(name, 0, "header", None, "parse.vcf_bad_gzip", _not_gzip(name, exc))
            return
    yield from _text_records(data, name=name)


def _text_records(data: bytes, *, name: str) -> Iterator[dict[str, Any]]:
    """The records of a file's decompressed bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reason = f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})"
        yield _record(name, 0, "header", None, "parse.vcf_bad_encoding", reason)
        return
    lines = [line.rstrip("\r") for line in text.split("\n")]
    ends = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header_lines = lines[:ends]
    try:
        limits.check_bytes("\n".join(header_lines), where=f"{name} header")
        header = parse_header(header_lines, where=name)
        limits.check_samples(len(header.samples), where=name)
    except limits.LimitExceeded as over:
        yield _record(name, 0, "header", limits.clip("\n".join(header_lines)), over.rule_id, over.reason)
        return
    except Rejected as rej:
        yield _record(name, 0, "header", "\n".join(header_lines), rej.rule_id, rej.reason)
        return
    problem = htslib_reads_header(header.text)
    if problem:
        reason = f"{name}: htslib cannot read the header ({problem})"
        yield _record(name, 0, "header", header.text, "parse.vcf_bad_header", reason)
        return
    yield _record(name, 0, "header", header.text, None, None)
    for number in range(ends, len(lines)):
        if lines[number].strip():
            yield _record(name, number + 1, "line", lines[number], None, None)


def _record(
    name: str, offset: int, kind: str, text: str | None, rule: str | None, reason: str | None
) -> dict[str, Any]:
    return {
        "source_file": name,
        "source_offset": offset,
        "kind": kind,
        "text": text,
        "error_rule": rule,
        "error_reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# raw records → bronze


def record_hash(header_hash: str, line: str) -> str:
    """A data line's content hash: the same line under the same header is the same record."""
    return hashlib.sha256(f"{header_hash}\n{line}".encode()).hexdigest()


@dataclass(frozen=True)
class BronzeSplits:
    """Bronze rows and quarantine of both VCF tables, and the raw records each one counts."""

    records: Split
    headers: Split
    raw_records: pa.Table
    raw_headers: pa.Table


def to_bronze(raw: pa.Table, *, run_id: str, ingested_at: datetime) -> BronzeSplits:
    """Bronze rows for the checked headers and data lines; the rest quarantined.

    Raw records come file by file, each file's header record before its lines.
    """
    lines: list[dict[str, Any]] = []
    headers: list[dict[str, Any]] = []
    bad_lines: list[dict[str, Any]] = []
    bad_headers: list[dict[str, Any]] = []
    current: Header | None = None
    with limits.clock() as clock:
        for rec in raw.to_pylist():
            locate = {
                "source_file": rec["source_file"],
                "source_offset": rec["source_offset"],
                "raw_record": rec["text"],
            }
            if rec["kind"] == "header":
                current = None
                if rec["error_rule"]:
                    bad_headers.append(
                        {**locate, "rule_id": rec["error_rule"], "reason": rec["error_reason"]}
                    )
                    continue
                current = parse_header(rec["text"].split("\n"), where=rec["source_file"])
                headers.append(
                    {
                        "fileformat": current.fileformat,
                        "samples": list(current.samples),
                        "raw": current.text,
                        "_source_file": rec["source_file"],
                        "_source_offset": 0,
                        "_ingested_at": ingested_at,
                        "_record_hash": current.hash,
                        "_run_id": run_id,
                    }
                )
                continue
            if current is None:
                raise ValueError(
                    f"{rec['source_file']}: data line {rec['source_offset']} before its header"
                )
            where = f"{rec['source_file']} line {rec['source_offset']}"
            try:
                with clock.record(where):
                    limits.check_bytes(rec["text"], where=where)
                    cols = check_line(rec["text"], current, where=where)
            except Rejected as rej:
                bad_lines.append({**locate, "rule_id": rej.rule_id, "reason": rej.reason})
                continue
            except limits.LimitExceeded as over:
                bad_lines.append(
                    {**locate, "raw_record": limits.clip(rec["text"]), "rule_id": over.rule_id, "reason": over.reason}
                )
                continue
            lines.append(
                {
                    "chrom": cols[0],
                    "pos": int(cols[1]),
                    "ref": cols[3],
                    "alt": cols[4],
                    "header_hash": current.hash,
                    "raw": rec["text"],
                    "_source_file": rec["source_file"],
                    "_source_offset": rec["source_offset"],
                    "_ingested_at": ingested_at,
                    "_record_hash": record_hash(current.hash, rec["text"]),
                    "_run_id": run_id,
                }
            )
    kinds = raw.column("kind")
    return BronzeSplits(
        records=Split(
            pa.Table.from_pylist(lines, schema=BRONZE_VCF.schema),
            quarantine_rows(bad_lines, table_name=BRONZE_VCF.name, run_id=run_id, now=ingested_at),
        ),
        headers=Split(
            pa.Table.from_pylist(headers, schema=BRONZE_VCF_HEADERS.schema),
            quarantine_rows(
                bad_headers, table_name=BRONZE_VCF_HEADERS.name, run_id=run_id, now=ingested_at
            ),
        ),
        raw_records=raw.filter(pc.equal(kinds, "line")),
        raw_headers=raw.filter(pc.equal(kinds, "header")),
    )


def check_line(line: str, header: Header, *, where: str) -> list[str]:
    """The line's columns, checked against the VCF 4 grammar and its header's declarations;
    raises :class:`Rejected` naming the column (never a sample's id or value)."""
    if line.startswith("#"):
        raise Rejected(
            "parse.vcf_misplaced_header", f"{where}: a # header line among the data lines"
        )
    cols = line.split("\t")
    if len(cols) != header.columns:
        raise Rejected(
            "parse.vcf_column_count",
            f"{where}: {len(cols)} tab-separated columns, the header has {header.columns}",
        )
    chrom, pos, _id, ref, alt, qual, filt, info = cols[:8]
    if not _CONTIG.fullmatch(chrom):
        raise Rejected("parse.vcf_bad_chrom", f"{where}: CHROM is empty or not a contig name")
    if not _POS.fullmatch(pos):
        raise Rejected("parse.vcf_bad_pos", f"{where}: POS is not a whole number")
    if not _BASES.fullmatch(ref):
        raise Rejected("parse.vcf_bad_ref", f"{where}: REF is not a sequence of A, C, G, T, N")
    alts = [] if alt == "." else alt.split(",")
    for number, allele in enumerate(alts, start=1):
        valid = (
            (_BASES.fullmatch(allele) and allele.upper() != ref.upper())
            or allele == "*"
            or _SYMBOLIC.fullmatch(allele)
            or _BREAKEND.fullmatch(allele)
        )
        if not valid:
            raise Rejected(
                "parse.vcf_bad_alt",
                f"{where}: ALT allele {number} is not bases (other than REF), *, <ID> or a breakend",
            )
    if qual != "." and not _NUMBER.fullmatch(qual):
        raise Rejected("parse.vcf_bad_qual", f"{where}: QUAL is neither . nor a number")
    if qual != "." and math.isinf(float(qual)) or qual != "." and abs(float(qual)) > FLOAT32_MAX:
        raise Rejected(  # htslib stores QUAL as a 32-bit float: it would become infinity
            "parse.vcf_bad_qual", f"{where}: QUAL is infinite or beyond a 32-bit float"
        )
    if not filt:
        raise Rejected("parse.vcf_bad_filter", f"{where}: FILTER is empty")
    _check_info(info, header, where=where)
    if header.has_format:
        _check_samples(cols[8], cols[9:], header, alleles=len(alts), where=where)
    return cols


def _check_info(info: str, header: Header, *, where: str) -> None:
    """Raise naming the first malformed INFO entry or the field not of its declared type."""
    if info == ".":
        return
    for number, entry in enumerate(info.split(";"), start=1):
        name, eq, value = entry.partition("=")
        if not _KEY.fullmatch(name) or (eq and not value):
            raise Rejected(
                "parse.vcf_bad_info",
                f"{where}: INFO entry {number} has no valid key or an empty value",
            )
        declared = header.info.get(name)
        if declared and eq and not _typed(value.split(","), declared.type):
            raise Rejected(
                "parse.vcf_bad_info",
                f"{where}: INFO {name} is not of its declared Type={declared.type}",
            )


def _check_samples(
    fmt: str, samples: Sequence[str], header: Header, *, alleles: int, where: str
) -> None:
    """Raise naming the first bad sample column; one regex over all samples when they are fine."""
    keys = fmt.split(":")
    types = tuple(header.format[k].type if k in header.format else None for k in keys)
    fast = _samples_pattern(fmt, types, alleles)
    joined = "\t".join(samples)
    if fast is not None and fast.fullmatch(joined) and not _LONG_INTEGER.search(joined):
        return
    if (
        not all(_KEY.fullmatch(k) for k in keys)
        or len(set(keys)) != len(keys)
        or ("GT" in keys and keys[0] != "GT")
    ):
        raise Rejected(
            "parse.vcf_bad_format",
            f"{where}: FORMAT keys are malformed or repeated, or GT is not first",
        )
    for column, sample in enumerate(samples, start=10):
        values = sample.split(":")
        if len(values) > len(keys):
            raise Rejected(
                "parse.vcf_format_mismatch",
                f"{where}: sample column {column} has {len(values)} values for {len(keys)} FORMAT keys",
            )
        for k, value in zip(keys, values, strict=False):
            if k == "GT":
                if not _GT.fullmatch(value) or any(
                    a != "." and int(a) > alleles for a in _GT_ALLELES.split(value)
                ):
                    raise Rejected(
                        "parse.vcf_bad_genotype",
                        f"{where}: sample column {column}: GT is malformed or names an allele "
                        f"beyond the line's {alleles} ALT allele(s)",
                    )
                continue
            declared = header.format.get(k)
            if declared and value != "." and not _typed(value.split(","), declared.type):
                raise Rejected(
                    "parse.vcf_bad_format_value",
                    f"{where}: sample column {column}: {k} is not of its declared Type={declared.type}",
                )


@functools.lru_cache(maxsize=1024)
def _samples_pattern(
    fmt: str, types: tuple[str | None, ...], alleles: int
) -> re.Pattern[str] | None:
    """A regex every sample column of a line with this FORMAT (declared types, ALT count) matches
    when it is valid (trailing values may be dropped); None when only the slow path can tell."""
    keys = fmt.split(":")
    if (
        alleles > 9
        or not all(_KEY.fullmatch(k) for k in keys)
        or len(set(keys)) != len(keys)
        or ("GT" in keys and keys[0] != "GT")
    ):
        return None
    allele = f"[0-{alleles}]"
    gt = rf"(?:\.|{allele})(?:[/|](?:\.|{allele}))*"
    values = []
    for k, type_ in zip(keys, types, strict=True):
        if k == "GT":
            values.append(gt)
        elif type_ in ("Integer", "Float"):
            one = rf"(?:\.|{(_INTEGER if type_ == 'Integer' else _NUMBER).pattern})"
            values.append(rf"{one}(?:,{one})*")
        else:
            values.append(r"[^:\t]*")
    sample = values[-1]
    for value in reversed(values[:-1]):
        sample = rf"{value}(?::{sample})?"
    return re.compile(rf"(?:{sample})(?:\t(?:{sample}))*", re.IGNORECASE)


def _typed(values: Sequence[str], type_: str) -> bool:
    """Whether every value (or ``.``) is of the declared VCF type; an Integer fits htslib's 32 bits
    (beyond them htslib silently reads it as missing)."""
    pattern = {"Integer": _INTEGER, "Float": _NUMBER}.get(type_)
    if pattern is None:
        return True
    return all(
        v == "."
        or pattern.fullmatch(v) is not None
        and (type_ != "Integer" or _INT_MISSING < int(v) <= INT32_MAX)
        for v in values
    )


# ---------------------------------------------------------------------------------------------
# bronze → silver rows


def variants_from_bronze(records: pa.Table, headers: pa.Table, *, key: bytes) -> tuple[Split, int]:
    """Silver rows of bronze data lines, read with cyvcf2 under their file's header; the lines
    htslib refused or skipped quarantined. Also returns how many lines had no sample (bronze-only).
    """
    by_hash = {
        row["_record_hash"]: row["raw"]
        for row in headers.select(["_record_hash", "raw"]).to_pylist()
    }
    out = _Rows()
    bad: list[dict[str, Any]] = []
    sites_only = 0
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in records.to_pylist():
        groups.setdefault(row["header_hash"], []).append(row)
    for header_hash, rows in groups.items():
        if header_hash not in by_hash:
            raise ValueError(
                f"bronze.vcf_records names header {header_hash}, which bronze.vcf_headers lacks"
            )
        header = parse_header(by_hash[header_hash].split("\n"), where=rows[0]["_source_file"])
        if not header.samples:
            sites_only += len(rows)
            continue
        people = _sample_keys(header, key=key)
        for row, variant in read_with_htslib(header, rows):
            if variant is None:
                bad.append(
                    {
                        "rule_id": HTSLIB_RULE,
                        "reason": f"{row['_source_file']} line {row['_source_offset']}: htslib "
                        "refused or skipped a line that passed the VCF checks",
                        "source_file": row["_source_file"],
                        "source_offset": row["_source_offset"],
                        "record_hash": row["_record_hash"],
                        "raw_record": row["raw"],
                    }
                )
                continue
            try:
                _add_rows(out, row, variant, header, people, key=key)
            except Rejected as rej:  # htslib read the line otherwise than its checks did
                bad.append(
                    {
                        "rule_id": rej.rule_id,
                        "reason": f"{row['_source_file']} line {row['_source_offset']}: {rej.reason}",
                        "source_file": row["_source_file"],
                        "source_offset": row["_source_offset"],
                        "record_hash": row["_record_hash"],
                        "raw_record": row["raw"],
                    }
                )
    return Split(out.table(), quarantine_rows(bad, table_name=SILVER_VARIANTS.name)), sites_only


NUMERIC_FORMAT = {"depth": "DP", "genotype_quality": "GQ"}
#: silver.variants columns no VCF line fills: the provenance a re-key sets (null at ingest)
FILLED_LATER = (PRELINK_FIELD.name,)


@dataclass
class _Rows:
    """silver.variants columns being built: Python lists, FORMAT numbers as NumPy chunks (NaN:
    missing), and INFO maps once per line and allele (``info`` holds an index into ``infos``)."""

    columns: dict[str, list[Any]] = field(
        default_factory=lambda: {
            name: [] for name in SILVER_VARIANTS.schema.names if name not in NUMERIC_FORMAT and name not in FILLED_LATER
        }
    )
    numbers: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {name: [] for name in NUMERIC_FORMAT}
    )
    infos: list[list[tuple[str, str]]] = field(default_factory=list)

    def table(self) -> pa.Table:
        schema = SILVER_VARIANTS.schema
        arrays: dict[str, pa.Array] = {}
        for name in schema.names:
            type_ = schema.field(name).type
            if name == "info":
                maps = pa.array(self.infos, type_)
                arrays[name] = maps.take(pa.array(self.columns[name], pa.int64()))
            elif name in NUMERIC_FORMAT:
                chunks = self.numbers[name]
                values = np.concatenate(chunks) if chunks else np.empty(0)
                arrays[name] = pa.array(values, mask=np.isnan(values)).cast(type_)
            elif name in self.columns:
                arrays[name] = pa.array(self.columns[name], type_)
        return conform(pa.table(arrays), schema)  # columns ingest does not fill (_prelink_key): null


def _sample_keys(header: Header, *, key: bytes) -> list[tuple[str, str]]:
    """(person_key, sample_key) of each sample column: the MRN's key when ##SAMPLE links it."""
    keys = []
    for sample in header.samples:
        sample_key = source_key(key, SOURCE_SYSTEM, sample)
        linked = header.mrns.get(sample)
        keys.append((mrn_key(key, linked[1], linked[0]) if linked else sample_key, sample_key))
    return keys


def read_with_htslib(
    header: Header, rows: Sequence[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each bronze line with its cyvcf2 Variant, or None when htslib refused or skipped it.

    The lines go to htslib as one VCF (header + lines); a variant matches its line by CHROM, POS,
    REF and ALT in order. After a refusal the remaining lines are read again from a new file, so
    one bad line costs one re-read, not the group.
    """
    from cyvcf2 import VCF

    start = 0
    while start < len(rows):
        pending = rows[start:]
        with tempfile.NamedTemporaryFile("w", suffix=".vcf", encoding="utf-8") as tmp:
            tmp.write(header.text + "\n")
            tmp.writelines(row["raw"] + "\n" for row in pending)
            tmp.flush()
            reader = VCF(tmp.name)
            position = 0
            failed = False
            iterator = iter(reader)
            while position < len(pending):
                try:
                    variant = next(iterator)
                except StopIteration:
                    break
                except Exception:  # noqa: BLE001 - cyvcf2 raises a bare Exception for an htslib error
                    failed = True
                    break
                while position < len(pending) and not _same_site(pending[position], variant):
                    yield pending[position], None  # htslib skipped this line
                    position += 1
                if position < len(pending):
                    yield pending[position], variant
                    position += 1
            reader.close()
        if failed:  # the line after the last one read is the one htslib refused
            yield pending[position], None
            position += 1
        elif position < len(pending):  # htslib stopped early without a word: the rest is unread
            for row in pending[position:]:
                yield row, None
            position = len(pending)
        start += position


def _same_site(row: Mapping[str, Any], variant: Any) -> bool:
    alt = "." if not variant.ALT else ",".join(variant.ALT)
    return bool(
        variant.CHROM == row["chrom"]
        and variant.POS == row["pos"]
        and variant.REF == row["ref"]
        and alt == row["alt"]
    )


def _add_rows(
    out: _Rows,
    row: Mapping[str, Any],
    variant: Any,
    header: Header,
    people: Sequence[tuple[str, str]],
    *,
    key: bytes,
) -> None:
    """Append one row per ALT allele per sample of one line, a column at a time.

    ``variant_key`` is the line's keyed pseudonym with the sample's column and the allele's index.
    """
    columns = out.columns
    cols = row["raw"].split("\t")
    keys = cols[8].split(":")
    samples = len(people)
    texts = (
        [sample.split(":", 1)[0] for sample in cols[9:]] if keys[0] == "GT" else [None] * samples
    )
    try:
        called = (
            [[a for a in call[:-1] if a >= 0] for call in variant.genotypes]
            if keys[0] == "GT"
            else [[] for _ in range(samples)]
        )
    except Exception as exc:  # noqa: BLE001 - cyvcf2 raises a bare Exception ("error parsing genotypes")
        raise Rejected(
            HTSLIB_RULE, f"htslib cannot read the line's genotypes ({type(exc).__name__})"
        ) from None
    if len(called) != samples or len(texts) != samples:  # e.g. a NUL byte htslib stops at
        raise Rejected(
            HTSLIB_RULE,
            f"htslib reads {len(called)} sample column(s) and the line holds {len(texts)}, "
            f"where the header names {samples}",
        )
    phased = [None if gt is None else "|" in gt for gt in texts]
    qual = variant.QUAL
    qual = None if qual is None or (isinstance(qual, float) and math.isnan(qual)) else float(qual)
    line_key = record_key(key, "variant", SOURCE_SYSTEM, row["_record_hash"])
    alts: list[str | None] = list(variant.ALT) or [None]
    numbers = {
        column: format_numbers(variant, name, keys, header, samples)
        for column, name in NUMERIC_FORMAT.items()
    }
    constant = {
        "chrom": variant.CHROM,
        "pos": variant.POS,
        "variant_id": None if cols[2] == "." else cols[2],
        "ref": variant.REF,
        "qual": qual,
        "filter": None if cols[6] == "." else cols[6],
        "_record_hash": row["_record_hash"],
        "_source_kind": SOURCE_KIND,
        "_run_id": row["_run_id"],
    }
    persons = [person for person, _ in people]
    sample_keys = [sample_key for _, sample_key in people]
    for index, alt in enumerate(alts, start=1 if variant.ALT else 0):
        columns["variant_key"].extend(f"{line_key}:{sample}:{index}" for sample in range(samples))
        columns["person_key"].extend(persons)
        columns["sample_key"].extend(sample_keys)
        columns["alt"].extend([alt] * samples)
        columns["allele_index"].extend([index] * samples)
        columns["genotype"].extend(texts)
        columns["phased"].extend(phased)
        columns["alt_copies"].extend(
            None if not c else (c.count(index) if index else 0) for c in called
        )
        columns["info"].extend([len(out.infos)] * samples)
        out.infos.append(info_map(cols[7], header, allele=index, alleles=len(variant.ALT)))
        for column, values in numbers.items():
            out.numbers[column].append(values)
        for name, value in constant.items():
            columns[name].extend([value] * samples)


def format_numbers(
    variant: Any, name: str, keys: Sequence[str], header: Header, samples: int
) -> np.ndarray:
    """A numeric FORMAT field's first value per sample, rounded to whole numbers; NaN where
    missing, not given, or not declared Integer/Float."""
    declared = header.format.get(name)
    values = (
        variant.format(name)
        if name in keys and declared is not None and declared.type in ("Integer", "Float")
        else None
    )
    if values is None:
        return np.full(samples, np.nan)
    if values.ndim != 2 or values.dtype.kind not in "iuf":  # htslib did not read the header line
        assert declared is not None
        raise Rejected(
            HTSLIB_RULE,
            f"htslib reads FORMAT {name} as text, not the {declared.type} its ##FORMAT header line "
            "declares (htslib could not parse that line)",
        )
    first: np.ndarray = values[:, 0]
    if first.dtype.kind == "f":
        return np.round(first.astype(np.float64))
    return np.where(first < _INT_MISSING, np.nan, first.astype(np.float64))


def info_map(info: str, header: Header, *, allele: int, alleles: int) -> list[tuple[str, str]]:
    """INFO as (key, text) pairs as written; Number=A values narrowed to ``allele`` (1-based),
    Number=R to the reference's and its. Flags are ``"true"``."""
    if info == ".":
        return []
    pairs = []
    for entry in info.split(";"):
        name, eq, value = entry.partition("=")
        if not eq:
            pairs.append((name, "true"))
            continue
        number = header.info[name].number if name in header.info else "."
        parts = value.split(",")
        if allele and number == "A" and len(parts) == alleles:
            value = parts[allele - 1]
        elif allele and number == "R" and len(parts) == alleles + 1:
            value = f"{parts[0]},{parts[allele]}"
        pairs.append((name, value))
    return pairs


# ---------------------------------------------------------------------------------------------
# stage functions (jobs/stage.py contract)


def ingest(
    landing: Path,
    lake: Lake,
    *,
    run_id: str,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """landing/vcf → bronze.vcf_headers + bronze.vcf_records (raw kept) + quarantine + ledger."""
    files = landing_files(landing / SOURCE_KIND)
    raw = read_files(files, root=landing)
    splits = to_bronze(raw, run_id=run_id, ingested_at=now or datetime.now(UTC))
    entries = [
        write_bronze(lake, BRONZE_VCF_HEADERS, splits.headers, splits.raw_headers, run_id=run_id, engine=engine),
        write_bronze(lake, BRONZE_VCF, splits.records, splits.raw_records, run_id=run_id, engine=engine),
    ]
    ledger.record(lake, run_id, entries)
    log.info(
        "ingest: %d VCF data lines from %d files, %d new in bronze",
        splits.raw_records.num_rows,
        len(files),
        entries[1].records_out,
    )
    return StageResult(
        {name: lake.version(name) for name in (BRONZE_VCF_HEADERS.name, BRONZE_VCF.name)}, entries
    )


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
    """This run's bronze VCF lines → staging.variants (overwritten, possibly empty) + quarantine +
    ledger. ``max_shift_days`` is unused: VCF lines carry no clinical dates; ``engine`` too: the
    lines are flattened in memory batches (the data plane's next step).

    Lines are flattened in batches of about :data:`ROWS_PER_BATCH` silver rows, each appended to
    staging as it is made, so memory follows the batch, not the run.
    """
    records = lake.read(
        BRONZE_VCF.name,
        version=versions.get(BRONZE_VCF.name),
        where={"_run_id": list((bronze_batches or {}).get(BRONZE_VCF.name) or [run_id])},
    )
    headers = lake.read(BRONZE_VCF_HEADERS.name, version=versions.get(BRONZE_VCF_HEADERS.name))
    name = staging_name(SILVER_VARIANTS.name)
    staged = quarantined = sites_only = 0
    version: int | None = None
    for number, batch in enumerate(batches(records, headers)):
        split, only = variants_from_bronze(batch, headers, key=key)
        lake.insert_new(QUARANTINE.name, stamp_run(split.quarantined, run_id))
        staged += len(set(split.good.column("_record_hash").to_pylist()))
        quarantined += split.quarantined.num_rows
        sites_only += only
        mode: Literal["append", "overwrite"] = "overwrite" if number == 0 else "append"
        version = lake.write(name, split.good, mode=mode, spec=SILVER_VARIANTS)
    entry = Entry(
        stage="silver",
        table_name=SILVER_VARIANTS.name,
        records_in=records.num_rows,
        records_out=staged,
        quarantined=quarantined,
        bronze_only=sites_only,
    )
    ledger.record(lake, run_id, [entry])
    return StageResult({name: version}, [entry])


#: silver rows flattened at a time by :func:`to_staging`
ROWS_PER_BATCH = 200_000


def batches(records: pa.Table, headers: pa.Table) -> Iterator[pa.Table]:
    """Slices of the bronze lines giving about ROWS_PER_BATCH silver rows each (by the widest
    header's sample count); one empty slice when there are no lines."""
    widest = max((len(s) for s in headers.column("samples").to_pylist()), default=1)
    size = max(1, ROWS_PER_BATCH // max(1, widest))
    yield records.slice(0, size)
    for start in range(size, records.num_rows, size):
        yield records.slice(start, size)
