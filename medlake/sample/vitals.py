"""The sample hospital's bedside monitors: vital-sign streams under ``out/vitals/``.

Some inpatients (every person with an inpatient stay among those with ``in_vitals(index)``,
at most ``MAX_STREAMS`` stays) are on a monitor for the first hours of their stay. Each stay is
one file, alternately JSONL (``vitals/jsonl/``) and CSV (``vitals/csv/``), with the fields a
gateway forwards: device, the patient's MRN and its authority, metric, value, unit, time.
Sampling is irregular (jittered intervals per metric). From ``MIN_POPULATION_FOR_MESS``
patients on, the streams carry planted defects, all recorded in the truth file (section
``vitals``, and ``malformed`` for lines ingest must quarantine):

- the first stream's monitor ``SKEWED_DEVICE`` runs ``SKEW`` fast (configured in
  ``jobs/clean/config.py`` ``VITALS_CLOCK_OFFSETS``);
- exact re-sent lines (merged in bronze) and one re-sent sample with another value (same
  device, metric and time: merged in silver);
- a 20-minute gap with no samples at all;
- impossible values (heart rate 400/min, SpO2 140 %), quarantined as ``ranges.impossible``;
- malformed lines: bad JSON and a missing field (JSONL), a non-numeric value and an unknown
  metric (CSV).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from medlake.sample.people import Hospital, Person, Visit, plants_every_kind
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import MRN_SYSTEM

VITALS = "vitals"
MAX_STREAMS = 6
STREAM_HOURS = 3
#: Lines a stream needs before defects are planted in it (8 picks, 10 lines clear of each end).
MIN_PLANTED_LINES = 40
SKEWED_DEVICE = "ICU-MON-07"
SKEW = timedelta(seconds=95)
GAP = (timedelta(minutes=60), timedelta(minutes=80))  # from the stream's start: no samples
CSV_FIELDS = ("device_id", "mrn", "mrn_system", "metric", "value", "unit", "ts")


@dataclass(frozen=True)
class Signal:
    """A metric: its unit, typical period in seconds, baseline and spread, decimals."""

    unit: str
    period: int
    mean: float
    sd: float
    decimals: int


SIGNALS: dict[str, Signal] = {
    "heart_rate": Signal("/min", 60, 78, 6, 0),
    "spo2": Signal("%", 60, 97, 1.2, 0),
    "resp_rate": Signal("/min", 120, 16, 2, 0),
    "bp_systolic": Signal("mm[Hg]", 900, 124, 8, 0),
    "bp_diastolic": Signal("mm[Hg]", 900, 78, 6, 0),
    "temperature": Signal("Cel", 3600, 36.9, 0.3, 1),
}


def in_vitals(index: int) -> bool:
    """Whether person `index` may be monitored (when they have an inpatient stay)."""
    return index % 2 == 0


def write_vitals(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write the monitored stays' streams under `out/vitals/` and record them in `truth`."""
    stays = [
        (person, visit)
        for person in hospital.people()
        if in_vitals(person.index)
        for visit in person.chart.visits
        if visit.visit_class == "IMP"
    ][:MAX_STREAMS]
    plant = plants_every_kind(hospital.patients)
    planted = 0  # streams with planted lines: the first two long enough to hold them
    for number, (person, visit) in enumerate(stays):
        layout = "jsonl" if number % 2 == 0 else "csv"
        device = SKEWED_DEVICE if number == 0 else f"ICU-MON-{11 + number:02d}"
        rng = hospital.rng(VITALS, person.index, visit.id)
        samples = _stream(rng, visit, gap=plant and number == 0)
        if plant and number == 0:
            begin = visit.start.astimezone(UTC)
            truth.add(
                "vitals",
                Where(f"{VITALS}/{layout}/stay-{number + 1:03d}.{layout}", 0),
                kind="gap",
                device=device,
                start=(begin + GAP[0]).isoformat(),
                end=(begin + GAP[1]).isoformat(),
            )
        # a stay still open (no end) or shorter than its first samples has too few lines
        plant_lines = plant and planted < 2 and len(samples) >= MIN_PLANTED_LINES
        planted += plant_lines
        stream = _Stream(person, device, layout, truth, plant=plant_lines)
        stream.write(
            samples, out, name=f"{VITALS}/{layout}/stay-{number + 1:03d}.{layout}", rng=rng
        )
        truth.add(
            "vitals",
            Where(stream.name, 0),
            kind="stream",
            device=device,
            person=person.index,
            samples=len(samples),
            clock_offset_s=-SKEW.total_seconds() if device == SKEWED_DEVICE else 0,
        )


def _stream(rng: random.Random, visit: Visit, *, gap: bool) -> list[tuple[datetime, str, float]]:
    """(true time, metric, value) samples over the stay's first hours, irregularly spaced."""
    start = visit.start.astimezone(UTC)
    end = min(
        visit.end.astimezone(UTC) if visit.end else start, start + timedelta(hours=STREAM_HOURS)
    )
    samples: list[tuple[datetime, str, float]] = []
    for metric, signal in SIGNALS.items():
        at = start + timedelta(seconds=rng.uniform(0, signal.period))
        while at < end:
            skipped = gap and GAP[0] <= at - start < GAP[1]
            if not skipped:
                value = round(rng.gauss(signal.mean, signal.sd), signal.decimals)
                value = min(value, 100) if signal.unit == "%" else value  # a saturation
                samples.append(
                    (at.replace(microsecond=0), metric, value if signal.decimals else int(value))
                )
            at += timedelta(seconds=signal.period * rng.uniform(0.7, 1.3))
    samples.sort()
    return samples


@dataclass
class _Stream:
    """One stay's file being written, with what was planted in it."""

    person: Person
    device: str
    layout: str
    truth: Truth
    plant: bool
    name: str = ""

    def write(
        self,
        samples: list[tuple[datetime, str, float]],
        out: Path,
        *,
        name: str,
        rng: random.Random,
    ) -> None:
        self.name = name
        lines = [self._line(at, metric, value) for at, metric, value in samples]
        if self.plant:
            lines = self._planted(lines, samples, rng)
        header = [",".join(CSV_FIELDS)] if self.layout == "csv" else []
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
        self.truth.file_read(f"{VITALS}/{self.layout}", len(lines))
        self.truth.registration(self.person.chart.registration)

    def _fields(self, at: datetime, metric: str, value: Any) -> dict[str, Any]:
        reported = at + SKEW if self.device == SKEWED_DEVICE else at
        return {
            "device_id": self.device,
            "mrn": self.person.chart.registration.mrn,
            "mrn_system": MRN_SYSTEM,
            "metric": metric,
            "value": value,
            "unit": SIGNALS[metric].unit if metric in SIGNALS else "mg/dL",
            "ts": reported.isoformat().replace("+00:00", "Z"),
        }

    def _line(self, at: datetime, metric: str, value: Any, **override: Any) -> str:
        fields = {**self._fields(at, metric, value), **override}
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.layout == "jsonl":
            return json.dumps(fields)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow([fields.get(k, "") for k in CSV_FIELDS])
        return buffer.getvalue()

    def _planted(
        self, lines: list[str], samples: list[tuple[datetime, str, float]], rng: random.Random
    ) -> list[str]:
        """The lines with duplicates, impossible values and malformed lines inserted; each
        planted line's final line number goes into the truth file."""
        first = 2 if self.layout == "csv" else 1  # line number of lines[0]
        picks = sorted(rng.sample(range(10, len(lines) - 10), 8))
        plan: list[tuple[int, str, str, dict[str, Any]]] = []  # (after index, kind, line, facts)
        for position in picks[:2]:  # a gateway re-sends a line verbatim
            plan.append((position, "duplicate_line", lines[position], {}))
        at, metric, value = samples[picks[2]]
        plan.append(
            (picks[2], "duplicate_time", self._line(at, metric, value + 1), {"metric": metric})
        )
        at, _, _ = samples[picks[3]]
        plan.append(
            (
                picks[3],
                "impossible",
                self._line(at, "heart_rate", 400),
                {"metric": "heart_rate", "value": 400},
            )
        )
        plan.append(
            (picks[4], "impossible", self._line(at, "spo2", 140), {"metric": "spo2", "value": 140})
        )
        if self.layout == "jsonl":
            bad = [
                (
                    "parse.vitals_bad_json",
                    "a line cut short",
                    self._line(at, "heart_rate", 77)[:-9],
                ),
                ("parse.vitals_missing_field", "no ts", self._line(at, "heart_rate", 77, ts=None)),
            ]
        else:
            bad = [
                (
                    "parse.vitals_bad_value",
                    "value is not a number",
                    self._line(at, "heart_rate", "n/a"),
                ),
                (
                    "parse.vitals_unknown_metric",
                    "unknown metric",
                    self._line(at, "glucose_cgm", 110),
                ),
            ]
        for position, (rule, reason, line) in zip(picks[5:7], bad, strict=True):
            plan.append((position, rule, line, {"reason": reason}))
        result: list[tuple[str, tuple[str, dict[str, Any]] | None]] = [(x, None) for x in lines]
        for position, kind, line, facts in sorted(plan, key=lambda p: p[0], reverse=True):
            result.insert(position + 1, (line, (kind, facts)))
        for number, (_, tag) in enumerate(result, start=first):
            if tag is None:
                continue
            kind, facts = tag
            where = Where(self.name, number)
            if kind.startswith("parse."):
                self.truth.malformed(where, kind, facts["reason"])
            else:
                self.truth.add("vitals", where, kind=kind, device=self.device, **facts)
        return [line for line, _ in result]
