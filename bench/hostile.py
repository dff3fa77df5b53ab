"""Peak memory of ingest over a landing of hostile files (issue #19).

Builds a landing (``medlake.sample.hostile``) with a gigabyte-ish field in every line-oriented
source, a gzip bomb, deeply nested JSON, NaN and year-9999 values, a lying DICOM length; runs every
source's real ingest stage into a fresh Delta lake in a child process under the default limits
(``MEDLAKE__LIMITS__*`` apply), and prints the peak RSS of that process tree (sampled every 20 ms,
children included), the child's own ru_maxrss, the records quarantined per rule, and whether every
ledger entry adds up.

    .venv/bin/python bench/hostile.py                     # 1 GiB fields, a 6 GiB bomb
    .venv/bin/python bench/hostile.py --field-mb 64 --bomb-gb 1

The landing is written under --workdir (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil


def child(landing: Path, lake_dir: Path) -> None:
    """Run every ingest stage (as the pipeline's ingest task does) and print the outcome as JSON."""
    from medlake.config import Settings
    from medlake.jobs import pipeline
    from medlake.jobs.ingest import csv, dicom, limits, vcf, vitals
    from medlake.lake import Lake
    from medlake.ledger import for_run

    lake, now = Lake(lake_dir), datetime.now(UTC)
    started = time.monotonic()
    with limits.using(Settings().limits):
        pipeline.ingest(landing, lake, run_id="hostile", now=now)
        pipeline.ingest_hl7v2(landing, lake, run_id="hostile", now=now)
        for module in (csv, vitals, dicom, vcf):
            module.ingest(landing, lake, run_id="hostile", now=now)
    entries = for_run(lake, "hostile")
    quarantine = lake.read("quarantine", columns=["rule_id"]).column("rule_id").to_pylist()
    print(
        json.dumps(
            {
                "seconds": round(time.monotonic() - started, 1),
                "ledger_balanced": all(e["balanced"] for e in entries),
                "records_in": sum(int(e["records_in"]) for e in entries),  # type: ignore[call-overload]
                "quarantined": dict(sorted(Counter(quarantine).items())),
                "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants now."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--field-mb", type=int, default=1024, help="size of the huge field per source (MiB)")
    parser.add_argument("--bomb-gb", type=float, default=6.0, help="what the gzip bomb inflates to (GiB)")
    parser.add_argument("--depth", type=int, default=1_000_000, help="nesting of the deep JSON records")
    parser.add_argument("--workdir", type=Path, default=None, help="where the landing and lake go (kept)")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import pydicom

    from medlake.sample.hostile import Sizes, hostile_landing

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medlake-hostile-"))
    landing, lake_dir = work / "landing", work / "lake"
    sizes = Sizes(huge_field=args.field_mb * 1024 * 1024, bomb=int(args.bomb_gb * 1024**3), depth=args.depth)
    built = time.monotonic()
    hostile_landing(landing, sizes=sizes, dicom_seed=Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm")
    on_disk = sum(p.stat().st_size for p in landing.rglob("*") if p.is_file())
    print(f"landing: {on_disk / 1024**2:,.0f} MiB on disk in {time.monotonic() - built:.0f} s "
          f"(fields {args.field_mb} MiB, bomb {args.bomb_gb:g} GiB inflated, depth {args.depth:,})")

    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(landing), str(lake_dir)], stdout=subprocess.PIPE, text=True
    )
    watched, peak, done = psutil.Process(proc.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.Error:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"ingest failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    print(f"ingest: {result['seconds']} s, {result['records_in']} records, ledger balanced: {result['ledger_balanced']}")
    print(f"quarantined by rule: {result['quarantined']}")
    print(f"peak RSS of the ingest process tree: {peak / 1024**2:,.0f} MiB "
          f"(child ru_maxrss {result['ru_maxrss_mib']:,} MiB)")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
