"""Encryption at rest: the cost of sealing bronze's and the quarantine's PHI columns (and the
archived DICOM originals) on ingest, and of opening them on read.

    .venv/bin/python bench/at_rest.py --patients 200

Generates the sample hospital, then ingests its landing folder into fresh lakes — plain
(``Lake(root)``) and encrypted (``Lake(root, codec=EnvelopeCodec(...))``, as the pipeline's tasks
build it) — with every source's ingest stage, and reads every bronze table back; two rounds, the second warm. Prints wall and
CPU time per step (the machine may be shared) and the bytes the bronze tables take on disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from medlake.governance.at_rest import EnvelopeCodec, encrypted_columns
from medlake.governance.crypto import Keyring
from medlake.jobs import pipeline
from medlake.lake import Lake
from medlake.sample import generate


def ingest_all(landing: Path, lake: Lake) -> int:
    """Every source's ingest stage into ``lake``; returns the records read."""
    now, run_id = datetime.now(UTC), "bench"
    stages = [
        pipeline.ingest(landing, lake, run_id=run_id, now=now),
        pipeline.ingest_hl7v2(landing, lake, run_id=run_id, now=now),
        *(
            pipeline.source_module(k).ingest(landing, lake, run_id=run_id, now=now)
            for k in pipeline.SOURCES
        ),
    ]
    return sum(e.records_in for s in stages for e in s.entries)


def read_all(lake: Lake) -> int:
    return sum(lake.read(name).num_rows for name in encrypted_columns() if lake.exists(name))


def timed(step: Callable[[], int]) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def disk_bytes(root: Path) -> int:
    return sum(
        p.stat().st_size
        for d in ("bronze", "quarantine", "raw")
        for p in (root / d).rglob("*")
        if p.is_file()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "landing", patients=args.patients, seed=3)
        keys = root / "keys"
        for attempt in range(1, 3):  # the second round runs warm (imports, parsers loaded)
            lakes = {
                "plain": Lake(root / f"plain{attempt}"),
                "encrypted": Lake(
                    root / f"sealed{attempt}",
                    codec=EnvelopeCodec(root / f"sealed{attempt}", lambda: Keyring.from_dir(keys)),
                ),
            }
            for label, lake in lakes.items():
                records, wall, cpu = timed(lambda lake=lake: ingest_all(root / "landing", lake))
                print(
                    f"#{attempt} {label:9s} ingest {records:7d} records {wall:6.2f} s wall {cpu:6.2f} s CPU "
                    f"{records / cpu:7.0f} records/CPU-s {disk_bytes(lake.root) / 2**20:6.1f} MiB on disk"
                )
            for label, lake in lakes.items():
                rows, wall, cpu = timed(lambda lake=lake: read_all(lake))
                print(
                    f"#{attempt} {label:9s} read   {rows:7d} rows    {wall:6.2f} s wall {cpu:6.2f} s CPU"
                )


if __name__ == "__main__":
    main()
