"""CSV extract benchmark: rows per second through ingest (landing → bronze.csv_rows) and
to_staging (bronze → standardized staging.observations), with the process's peak RSS.

    .venv/bin/python bench/ingest_csv.py --rows 100000

The extract is a lab-results file like the sample hospital's (``;``-delimited, ``%d/%m/%Y %H:%M``
times, LOINC and local codes, a share in mmol/L), ``--rows`` lines for ``--rows / 20`` patients,
written into a temporary landing folder with its mapping. A second ingest of the same file shows
the cost of re-ingesting (every line merged as a duplicate). The UCUM unit registry is loaded
before timing, as the pipeline's clean stage has loaded it before CSV's to_staging runs.
Prints one line per stage: wall time, and CPU time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medlake.jobs.clean import units
from medlake.jobs.ingest import csv
from medlake.lake import Lake
from medlake.sample.csv import LABS_MAPPING

KEY = bytes(range(32))
TESTS = (
    ("2339-0", "LN", "Glucose", "mg/dL", 95.0),
    ("GLU", "L", "Glucose", "mg/dL", 95.0),
    ("2160-0", "LN", "Creatinine", "mg/dL", 0.9),
    ("2093-3", "LN", "Cholesterol", "mg/dL", 180.0),
    ("718-7", "LN", "Hemoglobin", "g/dL", 14.0),
    ("2339-0", "LN", "Glucose", "mmol/L", 5.3),
)


def write_extract(folder: Path, rows: int, *, seed: int = 1) -> None:
    """A landing/csv folder with the labs mapping and one extract of ``rows`` lines."""
    rng = random.Random(seed)
    (folder / "labs").mkdir(parents=True)
    (folder / "labs.mapping.yaml").write_text(LABS_MAPPING, encoding="utf-8")
    start = datetime(2024, 1, 1, 8, 0)
    lines = ["ResultID;MRN;PatientName;TestCode;CodeSystem;TestName;Result;Units;Collected;Status"]
    for n in range(rows):
        code, system, name, unit, typical = TESTS[n % len(TESTS)]
        taken = start + timedelta(minutes=17 * n)
        value = typical * rng.uniform(0.8, 1.2)
        lines.append(
            f"R{n:09d};MRN-{n // 20:07d};Zoë Müller;{code};{system};{name};{value:.2f};{unit};"
            f"{taken:%d/%m/%Y %H:%M};F"
        )
    (folder / "labs" / "lab_results.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="data lines in the extract")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medlake-bench-csv-") as tmp:
        landing, lake = Path(tmp) / "landing", Lake(Path(tmp) / "lake")
        write_extract(landing / "csv", args.rows)
        print(
            f"CSV extract: {args.rows:,} lines, {(landing / 'csv' / 'labs' / 'lab_results.csv').stat().st_size / 2**20:.1f} MiB"
        )
        units.ucum("mg/dL")  # the UCUM registry loads once per process (~2 s); clean has loaded it
        before = peak_rss_mib()
        now = datetime.now(UTC)
        marks = [(time.perf_counter(), time.process_time())]
        ingested = csv.ingest(landing, lake, run_id="bench-1", now=now)
        marks.append((time.perf_counter(), time.process_time()))
        staged = csv.to_staging(
            lake, run_id="bench-1", key=KEY, max_shift_days=365, versions=ingested.versions
        )
        marks.append((time.perf_counter(), time.process_time()))
        csv.ingest(landing, lake, run_id="bench-2", now=now)
        marks.append((time.perf_counter(), time.process_time()))
        out = lake.count("staging.observations")
        spans = {
            "ingest": (0, 1),
            "to_staging": (1, 2),
            "ingest + to_staging": (0, 2),
            "re-ingest (all merged)": (2, 3),
        }
        print(f"  {'stage':<24} {'wall s':>7} {'rows/s':>10} {'cpu s':>7} {'rows/cpu-s':>10}")
        for label, (a, b) in spans.items():
            wall, cpu = marks[b][0] - marks[a][0], marks[b][1] - marks[a][1]
            print(
                f"  {label:<24} {wall:7.2f} {args.rows / wall:>10,.0f} {cpu:7.2f} {args.rows / cpu:>10,.0f}"
            )
        print(
            f"  staged rows: {out:,}  ledger: {[(e.stage, e.table_name, e.records_in, e.records_out, e.quarantined) for e in ingested.entries + staged.entries]}"
        )
        print(
            f"  peak RSS: {peak_rss_mib():,.0f} MiB ({before:,.0f} MiB after imports and the unit registry)"
        )


if __name__ == "__main__":
    main()
