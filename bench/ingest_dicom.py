"""DICOM source benchmark: files per second and peak memory of ingest + to_staging.

    .venv/bin/python bench/ingest_dicom.py --files 500
    .venv/bin/python bench/ingest_dicom.py --files 2000 --keep   # keep the landing and lake folders

Generates the sample hospital's PACS export (``medlake.sample.dicom``: tiny CT and MR studies, one
RLE-compressed instance per MR) with enough patients for ``--files`` instances, keeps the first
``--files`` files, then times, on a fresh lake in this process: ``ingest`` (read, hash, archive,
DICOM JSON header, MERGE into ``bronze.dicom_files``) and ``to_staging`` (silver rows, PS3.15
de-identified copy of every instance, staging tables). Peak RSS is the process's high-water mark
(``getrusage``), printed before the stages (after generating) and after them. Wall time is what
a run takes on this machine; CPU time (this process) is less disturbed by neighbours.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from medlake.jobs.ingest import dicom
from medlake.lake import Lake
from medlake.sample.dicom import write_dicom
from medlake.sample.people import Hospital
from medlake.sample.truth import Truth

KEY = bytes(range(32))
FILES_PER_PATIENT = 0.8  # a quarter of the people are imaged, ~3.5 instances each


def generate(landing: Path, files: int, *, seed: int) -> int:
    """A PACS export of at least ``files`` instances, cut down to exactly ``files``; files kept."""
    patients = max(8, math.ceil(files / FILES_PER_PATIENT))
    write_dicom(
        Hospital(patients=patients, seed=seed), landing, Truth(seed=seed, patients=patients)
    )
    paths = sorted(
        p for p in (landing / "dicom").rglob("IM*") if p.is_file() and "broken" not in p.parts
    )
    for path in paths[files:]:
        path.unlink()
    shutil.rmtree(landing / "dicom" / "broken", ignore_errors=True)
    return min(files, len(paths))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=500, help="DICOM instances to ingest")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    landing, lake = root / "landing", Lake(root / "lake")
    started = time.perf_counter()
    files = generate(landing, args.files, seed=args.seed)
    generated = time.perf_counter() - started
    rss_before = peak_rss_mib()
    now = datetime.now(UTC)

    started, cpu = time.perf_counter(), time.process_time()
    ingested = dicom.ingest(landing, lake, run_id="bench", now=now)
    ingest_s = time.perf_counter() - started
    ingest_cpu = time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    staged = dicom.to_staging(
        lake, run_id="bench", key=KEY, max_shift_days=365, versions=ingested.versions
    )
    staging_s = time.perf_counter() - started
    staging_cpu = time.process_time() - cpu
    rss_after = peak_rss_mib()

    size = sum(p.stat().st_size for p in (landing / "dicom").rglob("*") if p.is_file())
    instances = next(e for e in staged.entries if e.table_name == "silver.imaging_instances")
    print(
        f"medlake DICOM benchmark — {platform.python_version()}, {platform.machine()}, seed {args.seed}"
    )
    print(f"files                 {files} ({size / 1e6:.2f} MB), generated in {generated:.1f} s")
    print(
        f"ingest                {ingest_s:7.2f} s  {files / ingest_s:8.1f} files/s  "
        f"(CPU {ingest_cpu:.2f} s; bronze rows {ingested.entries[0].records_out})"
    )
    print(
        f"to_staging (+de-id)   {staging_s:7.2f} s  {files / staging_s:8.1f} files/s  "
        f"(CPU {staging_cpu:.2f} s; instances {instances.records_out}, "
        f"quarantined {instances.quarantined})"
    )
    total, total_cpu = ingest_s + staging_s, ingest_cpu + staging_cpu
    print(
        f"ingest + to_staging   {total:7.2f} s  {files / total:8.1f} files/s  "
        f"({files / total_cpu:.1f} files per CPU second)"
    )
    print(
        f"peak RSS              {rss_before:7.1f} MiB after generating, {rss_after:7.1f} MiB after the stages"
    )
    if args.keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
