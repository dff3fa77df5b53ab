"""Throughput of each cleaning step on generated observations: rows per second and peak memory.

    .venv/bin/python bench/clean_steps.py --rows 1000000
    .venv/bin/python bench/clean_steps.py --rows 100000 --mart-rows 10000 --json

Generates silver-shaped observation rows (a few people's vitals and labs over time, some in
other units, some with local codes, some impossible, some without a value), then runs each step
of the clean stage on them in one process, each timed on its own with its peak resident memory
(bench/run.py's Meter): terminology → units → ranges on the rows each accepted, then imputation
of ``value_num`` on the standardized rows (cohort median by code, LOCF per person and code, and
the silver vitals plan: LOCF then median), and multiple imputation of the ML mart's lab features
on a generated patient-feature table of ``--mart-rows`` people. Every step is checked to keep
its rows (in = out + quarantined); figures go to ``bench/out/clean_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

# bench/run.py's meter and machine description, so the figures compare with the foundation's
from run import Meter, _machine

from medlake.jobs.clean import ranges, standardize, terminology, units
from medlake.jobs.clean.config import (
    ML_FEATURE_IMPUTATION,
    VITALS_IMPUTATION,
    Imputation,
)
from medlake.jobs.clean.impute import impute
from medlake.quarantine import Split
from medlake.registry import SILVER_OBSERVATIONS
from medlake.sample.vocab import LOCAL_LAB

JSON_OUT = BENCH_DIR / "out" / "clean_steps.json"
LOINC = "http://loinc.org"

#: (code system, code, unit, mean, sd, share of rows): what the generator draws rows from
KINDS: tuple[tuple[str, str, str, float, float, float], ...] = (
    (LOINC, "8867-4", "/min", 75, 12, 0.22),  # heart rate
    (LOINC, "8480-6", "mm[Hg]", 125, 15, 0.15),  # systolic blood pressure
    (LOINC, "8310-5", "Cel", 37, 0.5, 0.12),  # body temperature
    (LOINC, "8310-5", "[degF]", 98.6, 0.9, 0.03),  # ... in Fahrenheit: converted
    (LOINC, "29463-7", "kg", 80, 14, 0.10),  # body weight
    (LOINC, "29463-7", "[lb_av]", 176, 30, 0.02),  # ... in pounds: converted
    (LOINC, "2339-0", "mg/dL", 100, 20, 0.12),  # glucose
    (LOCAL_LAB, "GLU", "mmol/L", 5.5, 1.1, 0.04),  # local glucose code: mapped and converted
    (LOINC, "4548-4", "%", 5.7, 0.7, 0.08),  # HbA1c
    (LOINC, "2160-0", "mg/dL", 0.9, 0.2, 0.11),  # creatinine
    (LOINC, "8867-5", "/min", 75, 12, 0.004),  # bad LOINC check digit: refused
    (LOCAL_LAB, "NOPE", "1", 1, 1, 0.004),  # local code no map knows: refused
)
MISSING_VALUE = 0.10  # rows without a numeric value (what imputation fills)
IMPOSSIBLE = 0.002  # heart rates of 900/min: refused by ranges


def observations(rows: int, *, seed: int) -> pa.Table:
    """``rows`` silver observation rows of ``rows // 100`` people over 30 days."""
    rng = np.random.default_rng(seed)
    shares = np.array([k[5] for k in KINDS])
    kind = rng.choice(len(KINDS), size=rows, p=shares / shares.sum())
    means = np.array([k[3] for k in KINDS])[kind]
    sds = np.array([k[4] for k in KINDS])[kind]
    values = np.round(rng.normal(means, sds), 2)
    values[(kind == 0) & (rng.random(rows) < IMPOSSIBLE / 0.22)] = 900.0
    missing = rng.random(rows) < MISSING_VALUE
    people = max(rows // 100, 1)
    seconds = rng.integers(0, 30 * 86400, size=rows)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    table = pa.table(
        {
            "observation_key": pa.array([f"o{i:08d}" for i in range(rows)]),
            "person_key": pa.array([f"p{p:07d}" for p in rng.integers(0, people, size=rows)]),
            "status": pa.array(np.full(rows, "final")),
            "code_system": pa.array([KINDS[k][0] for k in range(len(KINDS))]).take(kind),
            "code": pa.array([KINDS[k][1] for k in range(len(KINDS))]).take(kind),
            "value_num": pa.array(values, mask=missing),
            "value_unit": pa.array([KINDS[k][2] for k in range(len(KINDS))]).take(kind),
            "effective_at": pa.array(start + seconds.astype("timedelta64[s]")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "_record_hash": pa.array([f"h{i:08d}" for i in range(rows)]),
            "_source_kind": pa.array(np.full(rows, "fhir")),
            "_run_id": pa.array(np.full(rows, "bench")),
        }
    )
    full = pa.Table.from_pylist([], schema=SILVER_OBSERVATIONS.schema)
    for field in full.schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(rows, field.type))
    return standardize.with_observation_fields(table.select(full.schema.names).cast(full.schema))


def patient_features(rows: int, *, seed: int) -> pa.Table:
    """An ML-mart-shaped table: the lab features, related to each other, 20 % missing each."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(80, 14, rows)
    glucose = 60 + 0.5 * weight + rng.normal(0, 10, rows)
    base = {
        "heart_rate": rng.normal(75, 10, rows),
        "body_weight": weight,
        "systolic_bp": 90 + 0.4 * weight + rng.normal(0, 10, rows),
        "glucose": glucose,
        "creatinine": rng.normal(0.9, 0.2, rows),
        "hba1c": 3 + 0.025 * glucose + rng.normal(0, 0.3, rows),
    }
    columns: dict[str, pa.Array] = {"person_key": pa.array([f"p{i:07d}" for i in range(rows)])}
    for lab, values in base.items():
        for stat, noise in (("last", 1.0), ("mean", 0.5)):
            column = values + rng.normal(0, noise, rows)
            columns[f"{lab}_{stat}"] = pa.array(column, mask=rng.random(rows) < 0.2)
    return pa.table(columns)


@dataclass
class Figure:
    """One step: rows in, rows out and quarantined, seconds, rows/s, memory (MiB)."""

    step: str
    rows_in: int
    rows_out: int
    quarantined: int
    seconds: float
    rows_per_s: float
    rss_start_mib: float | None
    peak_rss_mib: float | None


def _timed(
    meter: Meter, name: str, rows: pa.Table, step: Callable[[pa.Table], Split]
) -> tuple[Split, Figure]:
    with meter.measure(name) as stage:
        split = step(rows)
    if split.good.num_rows + split.quarantined.num_rows != rows.num_rows:
        raise RuntimeError(f"{name} lost rows: {rows.num_rows} in, {split.good.num_rows} out")
    return split, Figure(
        name,
        rows.num_rows,
        split.good.num_rows,
        split.quarantined.num_rows,
        stage.seconds,
        rows.num_rows / stage.seconds if stage.seconds else 0.0,
        stage.rss_start_mib,
        stage.peak_rss_mib,
    )


def _imputing(plan: dict[str, Imputation]) -> Callable[[pa.Table], Split]:
    def step(rows: pa.Table) -> Split:
        return Split(impute(rows, plan).table, pa.table({}))

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    meter = Meter()
    concept_map = terminology.read_concept_maps(terminology.SHIPPED_MAPS)
    ranges.impossible_ranges()  # the gate suite, read once (not part of a step's time)
    rows = observations(args.rows, seed=args.seed)
    figures: list[Figure] = []

    split, figure = _timed(
        meter,
        "terminology",
        rows,
        lambda r: terminology.map_observation_codes(r, concept_map=concept_map),
    )
    figures.append(figure)
    split, figure = _timed(meter, "units", split.good, units.normalize_units)
    figures.append(figure)
    split, figure = _timed(meter, "ranges", split.good, ranges.check_plausibility)
    figures.append(figure)
    clean = split.good

    by_code = Imputation("median", cohort=("code",))
    locf = Imputation("locf", series=("person_key", "code"), max_age=timedelta(hours=4))
    for name, plan in (
        ("impute median (by code)", {"value_num": by_code}),
        ("impute locf (person, code; 4 h)", {"value_num": locf}),
        ("impute vitals (locf, then median)", dict(VITALS_IMPUTATION)),
    ):
        figures.append(_timed(meter, name, clean, _imputing(plan))[1])

    mart = patient_features(args.mart_rows, seed=args.seed)
    figures.append(
        _timed(
            meter,
            f"impute iterative (ML mart, {len(ML_FEATURE_IMPUTATION)} columns, 5 draws)",
            mart,
            _imputing(dict(ML_FEATURE_IMPUTATION)),
        )[1]
    )
    return {
        "rows": args.rows,
        "mart_rows": args.mart_rows,
        "seed": args.seed,
        "machine": _machine(),
        "per_step_peak": meter.per_stage_peak,
        "process_peak_rss_mib": meter.process_peak_mib,
        "steps": [asdict(f) for f in figures],
    }


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"clean steps on {doc['rows']:,} observations ({doc['mart_rows']:,} people for the ML mart)",
        (
            f"{'step':<45} {'rows in':>10} {'out':>10} {'quar.':>7} {'s':>7} {'rows/s':>11} "
            f"{'peak MiB':>9} {'+MiB':>7}"
        ),
    ]
    for s in doc["steps"]:
        peak, start = s["peak_rss_mib"], s["rss_start_mib"]
        grew = f"{peak - start:7.0f}" if peak is not None and start is not None else "      -"
        lines.append(
            f"{s['step']:<45} {s['rows_in']:>10,} {s['rows_out']:>10,} {s['quarantined']:>7,} "
            f"{s['seconds']:>7.2f} {s['rows_per_s']:>11,.0f} "
            f"{(peak or 0):>9.0f} {grew}"
        )
    lines.append(f"process peak RSS {doc['process_peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="observations to generate")
    parser.add_argument(
        "--mart-rows", type=int, default=50_000, help="people in the ML mart multiple imputation"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    doc = run(args)
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc, indent=2, default=str) if args.json else render(doc))
    print(f"figures written to {JSON_OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
