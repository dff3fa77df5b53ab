"""The vitals benchmark: device samples → bronze → silver.vitals_raw → 1-min / 1-h grids.

    .venv/bin/python bench/ingest_vitals.py --samples 1000000

Writes ``--samples`` JSONL samples (``--patients`` people, five metrics, a sample every ~15 s
per metric, irregular; not timed) into a temporary landing folder, then times on a fresh lake:
ingest (lines → bronze, MERGE on the sample hash: samples/s), the silver step with the
resampling of the touched buckets (``to_staging``: samples/s), and the pure resampling function
alone on the same samples (grid rows/s and samples/s, per grid). Prints peak RSS at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medlake.jobs.clean.config import VITALS_GRIDS
from medlake.jobs.clean.resample import resample
from medlake.jobs.ingest import vitals
from medlake.lake import Lake
from medlake.registry import SILVER_VITALS_RAW, staging_name
from medlake.sample.vocab import MRN_SYSTEM

METRICS = {"heart_rate": 78, "spo2": 97, "resp_rate": 16, "bp_systolic": 124, "bp_diastolic": 78}
START = datetime(2024, 3, 1, tzinfo=UTC)


def write_landing(landing: Path, *, samples: int, patients: int, seed: int) -> None:
    """One JSONL file per patient, samples interleaved by time as a gateway would send them."""
    rng = random.Random(seed)
    folder = landing / "vitals" / "jsonl"
    folder.mkdir(parents=True)
    per_patient = samples // patients
    for patient in range(patients):
        count = per_patient + (samples % patients if patient == 0 else 0)
        clocks = {m: rng.uniform(0, 15) for m in METRICS}
        lines = []
        for i in range(count):
            metric = list(METRICS)[i % len(METRICS)]
            clocks[metric] += rng.uniform(10, 20)
            at = START + timedelta(seconds=round(clocks[metric]))
            value = round(rng.gauss(METRICS[metric], 3))
            lines.append(
                json.dumps(
                    {
                        "device_id": f"MON-{patient:03d}",
                        "mrn": f"MRN-{patient:07d}",
                        "mrn_system": MRN_SYSTEM,
                        "metric": metric,
                        "value": value,
                        "ts": at.isoformat(),
                    }
                )
            )
        (folder / f"patient-{patient:03d}.jsonl").write_text("\n".join(lines) + "\n")


def timed(label: str, count: int, unit: str, work):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:8.2f} s  {count / seconds:12,.0f} {unit}/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="medlake-bench-vitals-"))
    try:
        landing, lake = root / "landing", Lake(root / "lake")
        write_landing(landing, samples=args.samples, patients=args.patients, seed=args.seed)
        print(f"{args.samples:,} samples, {args.patients} patients, {len(METRICS)} metrics")
        ingested = timed(
            "ingest (lines → bronze)",
            args.samples,
            "samples",
            lambda: vitals.ingest(landing, lake, run_id="bench"),
        )
        timed(
            "silver + resample touched (to_staging)",
            args.samples,
            "samples",
            lambda: vitals.to_staging(
                lake,
                run_id="bench",
                key=b"bench" * 8,
                max_shift_days=365,
                versions=ingested.versions,
            ),
        )
        raw = lake.read(staging_name(SILVER_VITALS_RAW.name))
        for name, (every, max_gap) in VITALS_GRIDS.items():
            start = time.perf_counter()
            result = resample(raw, every=every, max_gap=max_gap)
            seconds = time.perf_counter() - start
            print(
                f"{'resample alone → ' + name:<44} {seconds:8.2f} s  "
                f"{raw.num_rows / seconds:12,.0f} samples/s  "
                f"{result.buckets.num_rows / seconds:12,.0f} rows/s ({result.buckets.num_rows:,} rows)"
            )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak:,.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
