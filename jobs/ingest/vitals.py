"""IoT vital signs: device streams in ``landing/vitals/`` → ``bronze.vitals_samples`` →
``silver.vitals_raw`` and the resampled ``silver.vitals_1min`` / ``silver.vitals_1h``.

Layouts (one record per line; ``_source_offset`` is the 1-based line number in the file):

- ``*.jsonl`` / ``*.ndjson``: one JSON object per line, as a bedside gateway forwards samples:
  ``{"device_id": "ICU-MON-07", "mrn": "MRN-0012345", "mrn_system": "http://…/mrn",
  "metric": "heart_rate", "value": 72, "unit": "/min", "ts": "2024-03-01T10:00:03Z"}``
  (``unit`` optional: the metric's canonical unit).
- ``*.csv``: the same fields as columns, a header line first (line 1, not a record).
- ``physionet/**/*.txt``: the PhysioNet Challenge 2012 ICU layout ``Time,Parameter,Value``
  (see below).

Who a sample belongs to: each sample carries the patient's MRN with its assigning authority, as
the gateway stamps it from the ADT feed at the moment of measurement (the device is associated
with the patient in the bed). We chose this over a device-assignment file joined at ingest: an
assignment file is a second, separately delivered source whose validity intervals drift from
the device clocks, and a late or missing assignment would silently re-attribute samples; a
self-describing sample is attributed once, at the bedside, by the system that knew. The person
is then ``mrn_key(key, authority, mrn)`` — the key FHIR and HL7 v2 records with that MRN get —
and the sample's times shift by that person's ``date_shift_days``.

Incremental reading: ``reference.vitals_watermark`` keeps per file the bytes and lines consumed
and the SHA-256 of that prefix. A new file is read whole; a file that grew is read from where
the last run stopped (only complete, newline-terminated lines are consumed: a line being
written waits for the next run); a file whose consumed prefix changed (rewritten, truncated) is
read whole again, and the samples already in bronze merge on their ``_record_hash`` (the
sample's content: device, patient, metric, value, unit, time — not its file), so a file
delivered twice, under any name, never counts twice. Blank lines are not records.

Silver (``to_staging``): samples are typed (LOINC per metric), in the canonical UCUM unit of
``jobs/clean/units.py``, checked against the gate suite's impossible ranges
(``jobs/clean/ranges.py``: ``ranges.impossible`` with the range in the reason), date-shifted,
and de-duplicated on person, device, LOINC and time (merged, the last received wins).
``silver.vitals_raw`` keeps the device's clock; the per-device clock offset is applied by the
resampling (``jobs/clean/resample.py``), which recomputes only the grid buckets this run's
samples touch, from every sample they hold (promoted earlier or new), for the gate to upsert.
Its ledger entries (stage ``resample``) count samples: in = in a bucket + merged + quarantined.

PhysioNet 2012 (``landing/vitals/physionet/``): times are ``HH:MM`` since ICU admission and the
RecordID is the only key. Assumptions: admission is anchored at ``PHYSIONET_ADMISSION``
(2000-01-01T00:00Z, a nominal instant: the set has no dates), the RecordID is a local patient
id under the authority ``physionet2012`` and the person key is that record's ``source_key``
(no MRN, so it links to nobody else); ``HR``, ``Temp``, ``RespRate``, (``NI``)``SysABP``,
(``NI``)``DiasABP`` and (``NI``)``MAP`` are vital signs (``NI*`` from the non-invasive cuff,
the others from an arterial line, kept as two devices). The descriptors (RecordID, Age,
Gender, Height, ICUType, and Weight) and the labs, urine output, GCS, FiO2, MechVent and SaO2
are kept in bronze only: they belong to a lab or charting feed, not to a vitals stream. A value
of ``-1`` means missing: on a vital it is quarantined (``parse.vitals_missing_value``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from medlake import ledger
from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs.clean import resample as rs
from medlake.jobs.clean.config import VITALS_CLOCK_OFFSETS, VITALS_GRIDS
from medlake.jobs.clean.ranges import NORMAL_RANGES, RULE_IMPOSSIBLE, impossible_ranges
from medlake.jobs.clean.units import UnitProblem, canonical_conversion
from medlake.jobs.ingest import limits
from medlake.jobs.ingest.fhir import LOINC
from medlake.jobs.stage import StageResult, write_bronze
from medlake.lake import Lake, conform
from medlake.ledger import Entry
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split, quarantine_rows, silver_rejects, stamp_run
from medlake.registry import (
    BRONZE_VITALS,
    QUARANTINE,
    SILVER_VITALS_1H,
    SILVER_VITALS_1MIN,
    SILVER_VITALS_RAW,
    VITALS_WATERMARK,
    TableSpec,
    staging_name,
)

if TYPE_CHECKING:
    from medlake.engines import Engine

log = logging.getLogger(__name__)

SOURCE_KIND = "vitals"
Layout = Literal["jsonl", "csv", "physionet"]
FIELDS = ("device_id", "mrn", "mrn_system", "metric", "value", "ts")  # unit is optional


@dataclass(frozen=True)
class Metric:
    """A vital sign: its LOINC code and the unit devices send when they send none."""

    code: str
    unit: str


#: device metric names → LOINC (units in UCUM; ``jobs/clean/units.py`` makes them canonical)
METRICS: dict[str, Metric] = {
    "heart_rate": Metric("8867-4", "/min"),
    "spo2": Metric("59408-5", "%"),
    "resp_rate": Metric("9279-1", "/min"),
    "bp_systolic": Metric("8480-6", "mm[Hg]"),
    "bp_diastolic": Metric("8462-4", "mm[Hg]"),
    "bp_mean": Metric("8478-0", "mm[Hg]"),
    "temperature": Metric("8310-5", "Cel"),
}

PHYSIONET_DIR = "physionet"
PHYSIONET_ADMISSION = datetime(2000, 1, 1, tzinfo=UTC)
PHYSIONET_SYSTEM = "physionet2012"
PHYSIONET_HEADER = "Time,Parameter,Value"
#: PhysioNet parameter → (metric, device): the vital signs
PHYSIONET_VITALS: dict[str, tuple[str, str]] = {
    "HR": ("heart_rate", "monitor"),
    "Temp": ("temperature", "monitor"),
    "RespRate": ("resp_rate", "monitor"),
    "NISysABP": ("bp_systolic", "nibp_cuff"),
    "NIDiasABP": ("bp_diastolic", "nibp_cuff"),
    "NIMAP": ("bp_mean", "nibp_cuff"),
    "SysABP": ("bp_systolic", "arterial_line"),
    "DiasABP": ("bp_diastolic", "arterial_line"),
    "MAP": ("bp_mean", "arterial_line"),
}
#: PhysioNet parameters kept in bronze only: descriptors, labs and charting (Challenge 2012 list)
PHYSIONET_BRONZE_ONLY = frozenset(
    {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight"}
    | {"Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine"}
    | {"FiO2", "GCS", "Glucose", "HCO3", "HCT", "K", "Lactate", "Mg", "MechVent", "Na"}
    | {"PaCO2", "PaO2", "pH", "Platelets", "SaO2", "TroponinI", "TroponinT", "Urine", "WBC"}
)
#: the years a device sample's time may name: an impossible year is refused, not shifted off the calendar
SAMPLE_YEARS = (1900, 2199)
_HHMM = re.compile(r"(\d{1,3}):([0-5]\d)")


# ---------------------------------------------------------------------------------------------
# landing files and the watermark


def landing_files(vitals_dir: Path) -> list[tuple[Path, Layout]]:
    """The vitals files of a landing folder with their layout, in a stable order."""
    if not vitals_dir.is_dir():
        return []
    found: list[tuple[Path, Layout]] = []
    for path in sorted(p for p in vitals_dir.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if path.relative_to(vitals_dir).parts[0] == PHYSIONET_DIR and suffix == ".txt":
            found.append((path, "physionet"))
        elif suffix in (".jsonl", ".ndjson"):
            found.append((path, "jsonl"))
        elif suffix == ".csv":
            found.append((path, "csv"))
    return found


@dataclass(frozen=True)
class Watermark:
    """How far a file was read: bytes and lines consumed, and the hash of that prefix."""

    source_file: str
    bytes_consumed: int
    lines_consumed: int
    prefix_sha256: str


@dataclass(frozen=True)
class Delta:
    """The part of a file to read this run: lines after ``start_line`` up to ``end`` bytes."""

    start_byte: int
    start_line: int
    mark: Watermark


def plan(data: bytes, *, name: str, mark: Watermark | None) -> Delta:
    """What to read of a file's current content given its watermark (None: never read).

    Only complete lines count; the new watermark ends after the last newline. A prefix whose
    hash changed means the file was rewritten: read it whole again.
    """
    end = data.rfind(b"\n") + 1
    new = Watermark(name, end, data.count(b"\n", 0, end), hashlib.sha256(data[:end]).hexdigest())
    if (
        mark is not None
        and mark.bytes_consumed <= end
        and hashlib.sha256(data[: mark.bytes_consumed]).hexdigest() == mark.prefix_sha256
    ):
        return Delta(mark.bytes_consumed, mark.lines_consumed, new)
    return Delta(0, 0, new)


def watermarks(lake: Lake) -> dict[str, Watermark]:
    """The watermark of every file read before."""
    rows = lake.read(VITALS_WATERMARK.name).to_pylist()
    return {
        r["source_file"]: Watermark(
            r["source_file"], r["bytes_consumed"], r["lines_consumed"], r["prefix_sha256"]
        )
        for r in rows
    }


# ---------------------------------------------------------------------------------------------
# lines → bronze rows or quarantine records


class Rejected(Exception):
    """A line that is not a sample, with the rule it breaks."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


def sample_hash(layout: str, *parts: object) -> str:
    """The content hash of a sample: the same sample in any file or format has one hash."""
    return hashlib.sha256("\x1f".join([layout, *map(str, parts)]).encode("utf-8")).hexdigest()


def read_lines(data: bytes, delta: Delta) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of the part to read."""
    text = data[delta.start_byte : delta.mark.bytes_consumed].decode("utf-8", errors="replace")
    for number, line in enumerate(text.split("\n")[:-1], start=delta.start_line + 1):
        if line.strip():
            yield number, line.rstrip("\r")


def parse_file(data: bytes, delta: Delta, *, layout: Layout, name: str) -> Iterator[dict[str, Any]]:
    """Bronze rows (without run stamps) or quarantine records, one per record line read."""
    context = _context(data, layout)
    with limits.clock() as clock:
        for number, line in read_lines(data, delta):
            where = f"{name} line {number}"
            locate = {"source_file": name, "source_offset": number, "raw_record": line}
            if number == 1 and layout == "csv" or (layout == "physionet" and line == PHYSIONET_HEADER):
                continue  # the header names the columns: not a record
            try:
                with clock.record(where):
                    limits.check_bytes(line, where=where)
                    if layout == "jsonl":
                        limits.check_json_depth(line, where=where)
                    row = _parse(line, layout=layout, context=context, where=where)
            except Rejected as rej:
                yield {**locate, "rule_id": rej.rule_id, "reason": rej.reason, "_bad": True}
                continue
            except limits.LimitExceeded as over:
                yield {**locate, "raw_record": limits.clip(line), "rule_id": over.rule_id,
                       "reason": over.reason, "_bad": True}
                continue
            yield {**row, "raw": line, "_source_file": name, "_source_offset": number}


def _context(data: bytes, layout: Layout) -> dict[str, Any]:
    """What a line needs from the rest of its file: the CSV header, the PhysioNet RecordID."""
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if layout == "csv":
        try:
            return {"header": next(csv.reader([first]), [])}
        except csv.Error:  # a CR inside the header: no line of the file can be read by it
            return {"header": None}
    if layout == "physionet":
        found = re.search(rb"^\d{1,3}:\d\d,RecordID,(\S+?)\r?$", data, re.MULTILINE)
        try:
            return {"record_id": found.group(1).decode() if found else None}
        except UnicodeDecodeError:
            return {"record_id": None, "record_problem": "the file's RecordID is not UTF-8"}
    return {}


def _parse(line: str, *, layout: Layout, context: Mapping[str, Any], where: str) -> dict[str, Any]:
    if layout == "physionet":
        return _physionet(line, context=context, where=where)
    if layout == "jsonl":
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Rejected(
                "parse.vitals_bad_json", f"{where}: not JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise Rejected(
                "parse.vitals_bad_json", f"{where}: a JSON {type(obj).__name__}, not an object"
            )
    else:
        header = context["header"]
        if header is None:
            raise Rejected(
                "parse.vitals_bad_csv",
                f"{where}: the header holds a carriage return (CR) and cannot be split into columns",
            )
        try:
            values = next(csv.reader([line]), [])
        except csv.Error:
            raise Rejected(
                "parse.vitals_bad_csv",
                f"{where}: a carriage return (CR) inside an unquoted field; the line cannot be split",
            ) from None
        if len(values) != len(header):
            raise Rejected(
                "parse.vitals_bad_csv",
                f"{where}: {len(values)} fields, the header names {len(header)}",
            )
        obj = dict(zip(header, values, strict=True))
    missing = [f for f in FIELDS if obj.get(f) in (None, "")]
    if missing:
        raise Rejected("parse.vitals_missing_field", f"{where}: no {', '.join(missing)}")
    metric = str(obj["metric"])
    if metric not in METRICS:
        raise Rejected(
            "parse.vitals_unknown_metric",
            f"{where}: unknown metric (known: {', '.join(sorted(METRICS))})",
        )
    value = _number(obj["value"], where=where)
    at = _timestamp(str(obj["ts"]), where=where)
    unit = str(obj.get("unit") or METRICS[metric].unit)
    device, mrn, system = str(obj["device_id"]), str(obj["mrn"]), str(obj["mrn_system"])
    return {
        "layout": layout,
        "device_id": device,
        "patient_id": mrn,
        "id_system": system,
        "metric": metric,
        "value": value,
        "unit": unit,
        "measured_at": at,
        "_record_hash": sample_hash(
            "device", device, system, mrn, metric, value, unit, at.isoformat()
        ),
    }


def _number(value: Any, *, where: str) -> float:
    if isinstance(value, bool):
        raise Rejected("parse.vitals_bad_value", f"{where}: the value is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Rejected("parse.vitals_bad_value", f"{where}: the value is not a number") from None
    if not math.isfinite(number):
        raise Rejected("parse.vitals_bad_value", f"{where}: the value is not a finite number")
    return number


def _timestamp(text: str, *, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected("parse.vitals_bad_time", f"{where}: ts is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise Rejected("parse.vitals_bad_time", f"{where}: ts has no UTC offset")
    if not SAMPLE_YEARS[0] <= at.year <= SAMPLE_YEARS[1]:  # year 9999 + offset overflowed UTC
        raise Rejected(
            "parse.vitals_bad_time",
            f"{where}: ts lies outside the years {SAMPLE_YEARS[0]}-{SAMPLE_YEARS[1]} a device sample can have",
        )
    return at.astimezone(UTC)


def _physionet(line: str, *, context: Mapping[str, Any], where: str) -> dict[str, Any]:
    parts = line.split(",")
    if len(parts) != 3:
        raise Rejected(
            "parse.vitals_bad_csv", f"{where}: {len(parts)} fields, expected Time,Parameter,Value"
        )
    time, parameter, value_text = (p.strip() for p in parts)
    record = context.get("record_id")
    if record is None:
        said = context.get("record_problem") or "the file has no RecordID line"
        raise Rejected("parse.vitals_no_patient", f"{where}: {said}")
    clock = _HHMM.fullmatch(time)
    if clock is None:
        raise Rejected("parse.vitals_bad_time", f"{where}: time is not HH:MM since admission")
    if parameter not in PHYSIONET_VITALS and parameter not in PHYSIONET_BRONZE_ONLY:
        raise Rejected("parse.vitals_unknown_metric", f"{where}: unknown PhysioNet parameter")
    value = _number(value_text, where=where)
    if value == -1 and parameter in PHYSIONET_VITALS:
        raise Rejected("parse.vitals_missing_value", f"{where}: -1 marks a missing value")
    at = PHYSIONET_ADMISSION + timedelta(hours=int(clock.group(1)), minutes=int(clock.group(2)))
    metric, device = PHYSIONET_VITALS.get(parameter, (parameter, None))
    return {
        "layout": "physionet",
        "device_id": device,
        "patient_id": record,
        "id_system": PHYSIONET_SYSTEM,
        "metric": parameter,
        "value": value,
        "unit": METRICS[metric].unit if parameter in PHYSIONET_VITALS else None,
        "measured_at": at,
        "_record_hash": sample_hash("physionet", record, time, parameter, value_text),
    }


def read_landing(
    landing: Path, *, marks: Mapping[str, Watermark]
) -> tuple[list[dict[str, Any]], list[Watermark]]:
    """This run's records of ``landing/vitals/`` (bronze rows and quarantine records, one per
    record line read) and the new watermarks of the files read."""
    records: list[dict[str, Any]] = []
    new_marks: list[Watermark] = []
    for path, layout in landing_files(landing / SOURCE_KIND):
        name = path.relative_to(landing).as_posix()
        data = limits.read_bounded(path, name=name)  # a line over the record limit: its marker
        delta = plan(data, name=name, mark=marks.get(name))
        if delta.mark == marks.get(name):
            continue
        records.extend(parse_file(data, delta, layout=layout, name=name))
        new_marks.append(delta.mark)
    return records, new_marks


def to_bronze(records: list[dict[str, Any]], *, run_id: str, ingested_at: datetime) -> Split:
    """The records as bronze rows and quarantine rows."""
    bad = [r for r in records if r.get("_bad")]
    good = [r for r in records if not r.get("_bad")]
    stamps = {"_ingested_at": ingested_at, "_run_id": run_id}
    columns = {  # column-wise: a million dicts through from_pylist cost ten times more
        f.name: pa.array(
            [stamps[f.name]] * len(good) if f.name in stamps else [r[f.name] for r in good], f.type
        )
        for f in BRONZE_VITALS.schema
    }
    return Split(
        pa.Table.from_pydict(columns, schema=BRONZE_VITALS.schema),
        quarantine_rows(bad, table_name=BRONZE_VITALS.name, run_id=run_id, now=ingested_at),
    )


def ingest(
    landing: Path,
    lake: Lake,
    *,
    run_id: str,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """New vitals lines → bronze (MERGE on the sample hash), then the watermarks move on."""
    now = now or datetime.now(UTC)
    records, marks = read_landing(landing, marks=watermarks(lake))
    split = to_bronze(records, run_id=run_id, ingested_at=now)
    entry = write_bronze(
        lake,
        BRONZE_VITALS,
        split,
        pa.table({"n": pa.nulls(len(records))}),
        run_id=run_id,
        engine=engine,
    )
    if marks:  # after bronze: a crash in between re-reads lines that then merge as duplicates
        rows = [{**m.__dict__, "run_id": run_id, "updated_at": now} for m in marks]
        lake.upsert(
            VITALS_WATERMARK.name, pa.Table.from_pylist(rows, schema=VITALS_WATERMARK.schema)
        )
    ledger.record(lake, run_id, [entry])
    log.info(
        "ingest: %d vitals lines from %d new or grown files, %d new samples in bronze",
        len(records),
        len(marks),
        entry.records_out,
    )
    return StageResult({BRONZE_VITALS.name: lake.version(BRONZE_VITALS.name)}, [entry])


# ---------------------------------------------------------------------------------------------
# bronze → silver.vitals_raw


@dataclass(frozen=True)
class Samples:
    """What the silver step did with a run's bronze samples."""

    split: Split  # silver rows, quarantined samples
    records_in: int
    merged: int  # same person, device, metric and time as a sample kept
    bronze_only: int  # PhysioNet descriptors, labs and charting


def person_key(key: bytes, layout: str, system: str, patient_id: str) -> str:
    """The sample's person: the MRN's key (PhysioNet: the RecordID's source key)."""
    if layout == "physionet":
        return str(source_key(key, PHYSIONET_SYSTEM, patient_id))
    return str(mrn_key(key, system, patient_id))


def samples_from_bronze(bronze: pa.Table, *, key: bytes, max_shift_days: int) -> Samples:
    """Typed, pseudonymized, date-shifted samples in canonical UCUM; impossible values refused.

    Decisions are taken once per distinct patient (keys, date shift) and per distinct (code,
    unit) (conversion, ranges), then applied column-wise: a run may bring millions of samples.
    The ``sample_key`` is ``person_key|device|LOINC|shifted time`` (no identifier in it); two
    samples with the same one are one sample, the last received (file, line) wins.
    """
    frame = pl.from_arrow(bronze)
    assert isinstance(frame, pl.DataFrame)
    names = {
        **{p: m for p, (m, _) in PHYSIONET_VITALS.items()},
        **{m: m for m in METRICS},
    }
    vital = (
        pl.when(pl.col("layout") == "physionet")
        .then(pl.col("metric").is_in(list(PHYSIONET_VITALS)))
        .otherwise(pl.col("metric").is_in(list(METRICS)))
    )
    rows = frame.filter(vital)
    bronze_only = frame.height - rows.height
    people = rows.select("layout", "id_system", "patient_id").unique()
    persons = [person_key(key, *who) for who in people.iter_rows()]
    people = people.with_columns(
        pl.Series("person_key", persons, pl.String),
        pl.Series(
            "_shift",
            [date_shift_days(key, pk, max_days=max_shift_days) for pk in persons],
            pl.Int64,
        ),
    )
    rows = rows.join(people, on=["layout", "id_system", "patient_id"], how="left")
    rows = rows.with_columns(
        pl.col("metric").replace_strict(names, return_dtype=pl.String).alias("_metric"),
        (pl.col("measured_at") + pl.duration(days=pl.col("_shift"))).alias("_at"),
    ).with_columns(
        pl.col("_metric")
        .replace_strict({m: v.code for m, v in METRICS.items()}, return_dtype=pl.String)
        .alias("code"),
    )
    combos = rows.select("code", "unit").unique()
    decided = pl.DataFrame(
        [_decide(code, unit) for code, unit in combos.iter_rows()],
        schema=_DECISION,
        orient="row",
    )
    rows = rows.join(decided, on=["code", "unit"], how="left", nulls_equal=True)
    converted = pl.col("_scale").is_not_null()
    value = (
        pl.when(converted)
        .then((pl.col("value") * pl.col("_scale") + pl.col("_offset")).round(9))
        .otherwise(pl.col("value"))
    )
    rows = rows.with_columns(value.alias("value_num"))
    low, high = pl.col("_low"), pl.col("_high")
    impossible = (
        pl.when(pl.col("_strict_low"))
        .then(pl.col("value_num") <= low)
        .otherwise(pl.col("value_num") < low)
        | pl.when(pl.col("_strict_high"))
        .then(pl.col("value_num") >= high)
        .otherwise(pl.col("value_num") > high)
    ).fill_null(False)
    flag = (
        pl.when(pl.col("_normal_low").is_null() & pl.col("_normal_high").is_null())
        .then(None)
        .when(pl.col("value_num") < pl.col("_normal_low"))
        .then(pl.lit("low"))
        .when(pl.col("value_num") > pl.col("_normal_high"))
        .then(pl.lit("high"))
        .otherwise(pl.lit("normal"))
    )
    silver = rows.with_columns(
        pl.concat_str(
            "person_key",
            "device_id",
            "code",
            pl.col("_at").dt.epoch("us").cast(pl.String),
            separator="|",
        ).alias("sample_key"),
        pl.col("_metric").alias("metric"),
        pl.lit(LOINC).alias("code_system"),
        pl.col("_unit_out").alias("value_unit"),
        pl.col("_at").alias("measured_at"),
        pl.when(converted).then(pl.col("unit")).otherwise(None).alias("_unit_converted_from"),
        pl.when(converted).then(pl.col("value")).otherwise(None).alias("_value_original"),
        flag.alias("_range_flag"),
        pl.lit(SOURCE_KIND).alias("_source_kind"),
        (pl.col("_rule").is_not_null() | impossible).alias("_refused"),
        pl.when(pl.col("_rule").is_not_null())
        .then(pl.col("_rule"))
        .when(impossible)
        .then(pl.lit(RULE_IMPOSSIBLE))
        .otherwise(None)
        .alias("_rule"),
    )
    good = silver.filter(~pl.col("_refused")).sort("_source_file", "_source_offset")
    kept = good.unique(subset=["sample_key"], keep="last", maintain_order=True)
    # the silver columns ingest knows; the rest (``_prelink_key``, set by a re-key) start null
    columns = [c for c in SILVER_VITALS_RAW.schema.names if c in silver.columns]
    bad = silver.filter(pl.col("_refused"))
    quarantined = _refused(bad, columns) if bad.height else QUARANTINE_SCHEMA.empty_table()
    table = conform(kept.select(columns).to_arrow(), SILVER_VITALS_RAW.schema)
    return Samples(
        Split(table, quarantined), bronze.num_rows, good.height - kept.height, bronze_only
    )


_DECISION = {
    "code": pl.String,
    "unit": pl.String,
    "_unit_out": pl.String,
    "_scale": pl.Float64,
    "_offset": pl.Float64,
    "_rule": pl.String,
    "_problem": pl.String,
    "_low": pl.Float64,
    "_high": pl.Float64,
    "_strict_low": pl.Boolean,
    "_strict_high": pl.Boolean,
    "_bound": pl.String,
    "_normal_low": pl.Float64,
    "_normal_high": pl.Float64,
}


def _decide(code: str, unit: str | None) -> tuple[Any, ...]:
    """For one (LOINC, unit): the canonical unit and conversion (jobs/clean/units.py), or the
    unit problem; the impossible bounds (the gate suite's, via jobs/clean/ranges.py) and the
    normal range, both in the canonical unit."""
    try:
        target, conversion = canonical_conversion(code, unit)
    except UnitProblem as exc:
        return (code, unit, unit, None, None, exc.rule, exc.message, *([None] * 7))
    scale = offset = None
    if conversion is not None and not conversion.identity:
        scale, offset = conversion.scale, conversion.offset
    bound = impossible_ranges().get((code, target or ""))
    normal = NORMAL_RANGES.get(code)
    normal = normal if normal is not None and normal.unit == target else None
    return (
        code,
        unit,
        target,
        scale,
        offset,
        None,
        None,
        bound.low if bound else None,
        bound.high if bound else None,
        bool(bound and bound.strict_low),
        bool(bound and bound.strict_high),
        str(bound) if bound else None,
        normal.low if normal else None,
        normal.high if normal else None,
    )


def _refused(bad: pl.DataFrame, columns: list[str]) -> pa.Table:
    """Quarantine rows for refused samples: the silver-shaped row (no identifiers) and why."""
    rows = bad.select(*columns, "_rule", "_problem", "_bound").to_dicts()
    reasons = [
        f"sample_key {r['sample_key']}: "
        + (
            r["_problem"]
            if r["_rule"] != RULE_IMPOSSIBLE
            else f"value {r['value_num']:.10g} {r['value_unit']} of LOINC {r['code']} is "
            f"impossible: expected {r['_bound']}"
        )
        for r in rows
    ]
    return silver_rejects(
        [{c: r[c] for c in columns} for r in rows],
        rule_ids=[r["_rule"] for r in rows],
        reasons=reasons,
        table_name=SILVER_VITALS_RAW.name,
        key=SILVER_VITALS_RAW.key,
    )


# ---------------------------------------------------------------------------------------------
# silver.vitals_raw → the resampled grids (only the buckets this run's samples touch)


def resample_touched(
    previous: pa.Table,
    new: pa.Table,
    *,
    spec: TableSpec,
    run_id: str,
    every: timedelta,
    max_gap: timedelta,
    clock_offsets: Mapping[str, timedelta] = VITALS_CLOCK_OFFSETS,
) -> tuple[pa.Table, Entry, pa.Table]:
    """The grid rows the new samples touch, recomputed from all their samples (promoted earlier
    or new, a new sample replacing a promoted one of the same key); its ledger entry, counted in
    samples; and quarantine rows."""
    columns = [*rs.KEY, "sample_key", "value_num", "value_unit", "measured_at"]
    new = new.select(columns)
    previous = previous.select(columns).cast(new.schema)
    replaced = pc.is_in(previous.column("sample_key"), value_set=new.column("sample_key"))
    everything = pa.concat_tables([previous.filter(pc.invert(replaced)), new])
    window = rs.touched_window(everything, new, every=every, clock_offsets=clock_offsets)
    result = rs.resample(
        window, every=every, max_gap=max_gap, clock_offsets=clock_offsets, table_name=spec.name
    )
    assert result.balanced
    rows = result.buckets.append_column(
        "_source_kind", pa.array([SOURCE_KIND] * result.buckets.num_rows, pa.string())
    ).append_column("_run_id", pa.array([run_id] * result.buckets.num_rows, pa.string()))
    entry = Entry(
        stage="resample",
        table_name=spec.name,
        records_in=result.samples_in,
        records_out=result.counted,
        quarantined=result.quarantined.num_rows,
        merged=result.merged,
    )
    return rows, entry, result.quarantined


#: the column of a resampling window row saying it is one of this run's new samples
NEW_SAMPLE = "_new"
#: counters of the keyed resampling step (summed over every person)
SAMPLES_IN, COUNTED, MERGED = "resample.samples_in", "resample.counted", "resample.merged"


def resample_person(
    key: tuple[Any, ...],
    rows: pa.Table,
    *,
    table_name: str,
    run_id: str,
    every: timedelta,
    max_gap: timedelta,
    clock_offsets: Mapping[str, timedelta] = VITALS_CLOCK_OFFSETS,
) -> Split:
    """The keyed step of resampling: one person's promoted and new samples (``_new``) → the grid
    rows their new samples touch, the samples refused, and the counts of the ledger entry."""
    del key  # the rows are the person's: every grid key is (person, device, code)
    is_new = rows.column(NEW_SAMPLE)
    new = rows.filter(is_new).drop_columns([NEW_SAMPLE])
    previous = rows.filter(pc.invert(is_new)).drop_columns([NEW_SAMPLE])
    spec = SILVER_VITALS_1MIN if table_name == SILVER_VITALS_1MIN.name else SILVER_VITALS_1H
    grid, entry, refused = resample_touched(
        previous,
        new,
        spec=spec,
        run_id=run_id,
        every=every,
        max_gap=max_gap,
        clock_offsets=clock_offsets,
    )
    counters = {SAMPLES_IN: entry.records_in, COUNTED: entry.records_out, MERGED: entry.merged}
    return Split(grid, refused, counters)


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
    """This run's bronze samples → staging.vitals_raw, and the grid buckets they touch →
    staging.vitals_1min / staging.vitals_1h (overwritten every run; the gate upserts them).

    Resampling is keyed by person on ``engine`` (embedded: hash buckets, one in memory at a time;
    Spark: ``applyInArrow``): each person's promoted samples and new ones, from the run's
    scratch window, give the buckets the new ones touch."""
    from deltalake import write_deltalake

    from medlake.engines import DeltaSource, QuarantineSink, Target
    from medlake.engines.embedded import EmbeddedEngine

    engine = engine or EmbeddedEngine()
    bronze = lake.read(
        BRONZE_VITALS.name,
        version=versions.get(BRONZE_VITALS.name),
        where={"_run_id": list((bronze_batches or {}).get(BRONZE_VITALS.name) or [run_id])},
    )
    samples = samples_from_bronze(bronze, key=key, max_shift_days=max_shift_days)
    new = samples.split.good
    lake.insert_new(QUARANTINE.name, stamp_run(samples.split.quarantined, run_id))
    entries = [
        Entry(
            stage="silver",
            table_name=SILVER_VITALS_RAW.name,
            records_in=samples.records_in,
            records_out=new.num_rows,
            quarantined=samples.split.quarantined.num_rows,
            merged=samples.merged,
            bronze_only=samples.bronze_only,
        )
    ]
    out: dict[str, int | None] = {
        staging_name(SILVER_VITALS_RAW.name): lake.write(
            staging_name(SILVER_VITALS_RAW.name), new, mode="overwrite", spec=SILVER_VITALS_RAW
        )
    }
    window = lake.scratch_uri("vitals_window", run_id=run_id)
    write_deltalake(window, resampling_window(_promoted_samples(lake, new), new), mode="overwrite")
    for spec in (SILVER_VITALS_1MIN, SILVER_VITALS_1H):
        every, max_gap = VITALS_GRIDS[spec.name]
        name = staging_name(spec.name)
        applied = engine.keyed(
            functools.partial(
                resample_person,
                table_name=spec.name,
                run_id=run_id,
                every=every,
                max_gap=max_gap,
            ),
            source=DeltaSource(window),
            keys=("person_key",),
            target=Target(lake.uri(name), spec.schema, encode=lake.encoder(name)),
            quarantine=QuarantineSink(
                lake.uri(QUARANTINE.name), run_id=run_id, encode=lake.encoder(QUARANTINE.name)
            ),
        )
        entries.append(
            Entry(
                stage="resample",
                table_name=spec.name,
                records_in=applied.counters.get(SAMPLES_IN, 0),
                records_out=applied.counters.get(COUNTED, 0),
                quarantined=applied.quarantined,
                merged=applied.counters.get(MERGED, 0),
            )
        )
        out[name] = applied.target_version
    lake.drop_scratch_table("vitals_window", run_id=run_id)
    ledger.record(lake, run_id, entries)
    return StageResult(out, entries)


def resampling_window(previous: pa.Table, new: pa.Table) -> pa.Table:
    """The samples resampling reads: the promoted ones of the people with new samples and the new
    ones, marked (``_new``)."""
    columns = [*rs.KEY, "sample_key", "value_num", "value_unit", "measured_at"]
    new = new.select(columns)
    previous = previous.select(columns).cast(new.schema)
    return pa.concat_tables(
        [
            previous.append_column(NEW_SAMPLE, pa.array([False] * previous.num_rows, pa.bool_())),
            new.append_column(NEW_SAMPLE, pa.array([True] * new.num_rows, pa.bool_())),
        ]
    )


def _promoted_samples(lake: Lake, new: pa.Table) -> pa.Table:
    """The samples in silver.vitals_raw of the people the new samples belong to."""
    people = pc.unique(new.column("person_key"))
    if len(people) == 0:
        return SILVER_VITALS_RAW.schema.empty_table()
    wanted = pc.field("person_key").cast(pa.string()).isin(people.to_pylist())
    return conform(lake.read(SILVER_VITALS_RAW.name, filter=wanted), SILVER_VITALS_RAW.schema)
