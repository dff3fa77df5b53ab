"""VCF source benchmark: variants/s and genotype rows/s through ingest + to_staging, and peak RSS.

    .venv/bin/python bench/ingest_vcf.py --variants 100000 --samples 10
    .venv/bin/python bench/ingest_vcf.py --variants 20000 --samples 50 --plain   # a plain .vcf

Writes one synthetic multi-sample VCF on GRCh38 contigs (SNVs, indels, 10 % multi-allelic
sites, 5 % no-calls, bgzipped by htslib unless ``--plain``) into a temporary landing folder, then
times, in this process, on a fresh lake: ``jobs.ingest.vcf.ingest`` (read, check every line in
Python, write bronze.vcf_headers + bronze.vcf_records) and ``jobs.ingest.vcf.to_staging``
(cyvcf2/htslib parse, one row per ALT allele per sample, write staging.variants partitioned by
chromosome). Writing the input file is not timed. Peak RSS is the process's maximum resident
set (``getrusage``), input generation included. Prints a table and writes
``bench/out/ingest_vcf.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medlake.jobs.ingest import vcf
from medlake.lake import Lake
from medlake.registry import SILVER_VARIANTS, staging_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "ingest_vcf.json"
CONTIGS = {
    f"chr{n}": length
    for n, length in enumerate(
        (
            248956422,
            242193529,
            198295559,
            190214555,
            181538259,
            170805979,
            159345973,
            145138636,
            138394717,
            133797422,
            135086622,
            133275309,
            114364328,
            107043718,
            101991189,
            90338345,
            83257441,
            80373285,
            58617616,
            64444167,
            46709983,
            50818468,
        ),
        start=1,
    )
}
HEADER = [
    "##fileformat=VCFv4.2",
    '##FILTER=<ID=PASS,Description="All filters passed">',
    *(f"##contig=<ID={name},length={length}>" for name, length in CONTIGS.items()),
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
    '##INFO=<ID=DP,Number=1,Type=Integer,Description="Combined depth">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
]


def synthetic_lines(variants: int, samples: int, rng: random.Random) -> list[str]:
    """`variants` data lines with `samples` genotype columns, sorted by contig and position."""
    per_contig = max(1, variants // len(CONTIGS) + 1)
    lines: list[str] = []
    for chrom, length in CONTIGS.items():
        positions = sorted(rng.sample(range(10_000, length - 10_000), per_contig))
        for pos in positions:
            if len(lines) == variants:
                return lines
            ref = rng.choice("ACGT")
            kind = rng.random()
            if kind < 0.1:
                alts = rng.sample([b for b in "ACGT" if b != ref], 2)
            elif kind < 0.2:
                alts = [ref + rng.choice("ACGT") * rng.randint(1, 4)]
            else:
                alts = [rng.choice([b for b in "ACGT" if b != ref])]
            calls = []
            for _ in range(samples):
                if rng.random() < 0.05:
                    calls.append("./.:.:.")
                    continue
                a, b = sorted(rng.choices(range(len(alts) + 1), [70] + [30] * len(alts), k=2))
                calls.append(f"{a}/{b}:{rng.randint(5, 80)}:{rng.randint(1, 99)}")
            af = ",".join(f"{rng.random():.3f}" for _ in alts)
            lines.append(
                "\t".join(
                    [
                        chrom,
                        str(pos),
                        ".",
                        ref,
                        ",".join(alts),
                        str(rng.randint(10, 900)),
                        "PASS",
                        f"AF={af};DP={rng.randint(50, 4000)}",
                        "GT:DP:GQ",
                        *calls,
                    ]
                )
            )
    return lines


def write_input(folder: Path, variants: int, samples: int, *, plain: bool, seed: int) -> Path:
    """The input VCF under `folder`/vcf/, bgzipped by htslib unless `plain`."""
    rng = random.Random(seed)
    names = [f"S{n:05d}" for n in range(samples)]
    header = "\n".join(
        [
            *HEADER,
            "\t".join(
                ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *names]
            ),
        ]
    )
    lines = synthetic_lines(variants, samples, rng)
    target = folder / "vcf" / ("bench.vcf" if plain else "bench.vcf.gz")
    target.parent.mkdir(parents=True)
    if plain:
        target.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
        return target
    from cyvcf2 import Writer

    writer = Writer.from_string(str(target), header + "\n", mode="wz")
    for line in lines:
        writer.write_record(writer.variant_from_string(line))
    writer.close()
    return target


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", type=int, default=100_000, help="data lines in the input VCF")
    parser.add_argument("--samples", type=int, default=10, help="genotype columns in the input VCF")
    parser.add_argument(
        "--plain", action="store_true", help="a plain .vcf instead of bgzipped .vcf.gz"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medlake-bench-vcf-") as tmp:
        landing, lake = Path(tmp) / "landing", Lake(Path(tmp) / "lake")
        started = time.perf_counter()
        path = write_input(landing, args.variants, args.samples, plain=args.plain, seed=args.seed)
        generated = time.perf_counter() - started
        size = path.stat().st_size
        run_id, key = "bench__vcf", bytes(range(32))
        started = time.perf_counter()
        ingested = vcf.ingest(landing, lake, run_id=run_id, now=datetime.now(UTC))
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        staged = vcf.to_staging(
            lake, run_id=run_id, key=key, max_shift_days=365, versions=ingested.versions
        )
        staging_s = time.perf_counter() - started
        rows = lake.count(staging_name(SILVER_VARIANTS.name))
        lines = ingested.entries[1].records_out
    total = ingest_s + staging_s
    figures: dict[str, Any] = {
        "variants": lines,
        "samples": args.samples,
        "genotype_rows": rows,
        "input": {
            "format": "vcf" if args.plain else "vcf.gz (bgzip)",
            "bytes": size,
            "generate_s": round(generated, 2),
        },
        "ingest_s": round(ingest_s, 2),
        "to_staging_s": round(staging_s, 2),
        "total_s": round(total, 2),
        "variants_per_s": round(lines / total),
        "genotype_rows_per_s": round(rows / total),
        "ingest_variants_per_s": round(lines / ingest_s),
        "to_staging_genotype_rows_per_s": round(rows / staging_s),
        "peak_rss_mib": round(peak_rss_mib()),
        "ledger_balanced": all(e.balanced for e in [*ingested.entries, *staged.entries]),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    print(
        f"VCF ingest + to_staging: {lines} variants × {args.samples} samples = {rows} genotype rows"
    )
    print(
        f"  input      {figures['input']['format']}, {size / 2**20:.1f} MiB (written in {generated:.1f} s, untimed)"
    )
    print(f"  ingest     {ingest_s:8.2f} s   {figures['ingest_variants_per_s']:>10,} variants/s")
    print(
        f"  to_staging {staging_s:8.2f} s   {figures['to_staging_genotype_rows_per_s']:>10,} genotype rows/s"
    )
    print(
        f"  total      {total:8.2f} s   {figures['variants_per_s']:>10,} variants/s   "
        f"{figures['genotype_rows_per_s']:>10,} genotype rows/s"
    )
    print(
        f"  peak RSS   {figures['peak_rss_mib']:,} MiB   ledger balanced: {figures['ledger_balanced']}"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
