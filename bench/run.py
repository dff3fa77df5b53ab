"""The foundation benchmark: landing FHIR → bronze → silver → gold, in-process, timed per stage.

    .venv/bin/python bench/run.py --patients 10000          # what `make bench` runs
    .venv/bin/python bench/run.py --landing /work/shared/corpus

Generates a sample hospital (or uses an existing landing folder), runs the pipeline's stages on
a fresh lake with a fixed run id, copies bronze with plain deltalake as the floor to compare
against, prints the figures and writes them to ``bench/out/foundation.json``. Exits 1 when the
run's ledger does not add up, 2 when a stage fails. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import deltalake
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from medlake import ledger
from medlake.jobs import pipeline
from medlake.lake import Lake
from medlake.registry import BRONZE_FHIR

RUN_ID = "bench__foundation"
BENCH_DIR = Path(__file__).resolve().parent
JSON_OUT = BENCH_DIR / "out" / "foundation.json"
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Stage:
    """One timed step: wall seconds, and resident memory at its start and at its peak (MiB)."""

    name: str
    seconds: float = 0.0
    rss_start_mib: float | None = None
    peak_rss_mib: float | None = None
    error: str | None = None


def _status_mib(field_name: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux ≥ 4.0); False if unsupported."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Meter:
    """Times steps; measures each step's peak RSS when the kernel lets us reset the peak mark."""

    process_peak_mib: float = field(default_factory=_ru_maxrss_mib)  # read before the first reset
    per_stage_peak: bool = field(default_factory=_reset_peak)
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def measure(self, name: str) -> Iterator[Stage]:
        gc.collect()
        stage = Stage(name)
        self.stages.append(stage)
        self.process_peak_mib = max(self.process_peak_mib, _ru_maxrss_mib())
        if self.per_stage_peak:
            _reset_peak()
        stage.rss_start_mib = _status_mib("VmRSS")
        start = time.perf_counter()
        try:
            yield stage
        except Exception as exc:
            stage.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            stage.seconds = time.perf_counter() - start
            if self.per_stage_peak:
                stage.peak_rss_mib = _status_mib("VmHWM")
            self.process_peak_mib = max(
                self.process_peak_mib, stage.peak_rss_mib or 0.0, _ru_maxrss_mib()
            )


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Result:
    """Everything the benchmark measured, as written to JSON."""

    started_at: str
    commit: str
    machine: dict[str, Any]
    patients: int | None
    seed: int | None
    landing: str
    lake: str
    run_id: str = RUN_ID
    records_read: int | None = None
    bronze_rows: int | None = None
    stages: list[Stage] = field(default_factory=list)
    per_stage_peak: bool = False
    process_peak_rss_mib: float | None = None
    ledger_balanced: bool | None = None
    ledger: list[dict[str, Any]] = field(default_factory=list)
    failed_stage: str | None = None

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def seconds(self, name: str) -> float | None:
        """A step's seconds; None when it did not run or failed."""
        found = self.stage(name)
        return found.seconds if found and not found.error else None

    def pipeline_done(self) -> list[Stage]:
        """The pipeline stages that completed, in order (all four unless one failed)."""
        return [s for s in self.stages if s.name in PIPELINE and not s.error]

    def figures(self) -> dict[str, Any]:
        """The headline figures: throughput and how far the pipeline is above the floor."""
        done = self.pipeline_done()
        pipeline_s = sum(s.seconds for s in done) if done else None
        floor = self.seconds("floor")
        return {
            "ingest_records_per_s": _rate(self.records_read, self.seconds("ingest")),
            "pipeline_stages": [s.name for s in done],
            "pipeline_complete": len(done) == len(PIPELINE),
            "pipeline_seconds": pipeline_s,
            "pipeline_records_per_s": _rate(self.records_read, pipeline_s),
            "floor_seconds": floor,
            "floor_records_per_s": _rate(self.bronze_rows, floor),
            "pipeline_over_floor": pipeline_s / floor if pipeline_s and floor else None,
        }

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["figures"] = self.figures()
        return doc


PIPELINE = ("ingest", "clean", "gate", "gold")


def _rate(records: int | None, seconds: float | None) -> float | None:
    return records / seconds if records is not None and seconds else None


def _int(value: object) -> int:
    """A ledger count (the ledger's rows are typed ``object``)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer count in the ledger, found {type(value).__name__}")
    return value


def _commit() -> str:
    """The short commit measured, marked ``-dirty`` when the work tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "deltalake": deltalake.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def floor_copy(lake: Lake, dest: Path) -> int:
    """The least any stage could cost: read bronze whole with delta-rs and write it back as is."""
    rows: pa.Table = DeltaTable(lake.uri(BRONZE_FHIR.name)).to_pyarrow_dataset().to_table(use_threads=False)
    write_deltalake(str(dest), rows)
    return int(rows.num_rows)


def run(args: argparse.Namespace, meter: Meter, workdir: Path) -> Result:
    """Generate (unless given a landing folder), run the stages, copy the floor, read the ledger."""
    landing = args.landing.resolve() if args.landing else workdir / "landing"
    lake = Lake(workdir / "lake")
    result = Result(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=_commit(),
        machine=_machine(),
        patients=None if args.landing else args.patients,
        seed=None if args.landing else args.seed,
        landing=str(landing),
        lake=str(lake.root),
        stages=meter.stages,
        per_stage_peak=meter.per_stage_peak,
    )
    # Importing the gate (Great Expectations) and gold (dbt) costs seconds once per process,
    # as it does once per Airflow task: measured on its own, not charged to the first stage.
    with meter.measure("imports"):
        for module in ("great_expectations", "dbt.cli.main", "duckdb"):
            importlib.import_module(module)

    if not args.landing:
        from medlake.sample import generate

        with meter.measure("generate"):
            generate(landing, patients=args.patients, seed=args.seed)

    # the pipeline DAG's own tasks, every source, keys generated for this lake alone
    os.environ["MEDLAKE__KEYS__DIR"] = str(workdir / "keys")
    ingested: dict[str, Any] = {}

    def clean() -> object:
        versions = ingested["versions"]
        return pipeline.task_clean(
            str(lake.root),
            run_id=RUN_ID,
            bronze_version=versions["bronze.fhir_resources"],
            hl7v2_version=versions.get("bronze.hl7v2_messages"),
            versions=versions,
        )

    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "ingest",
            lambda: ingested.update(pipeline.task_ingest(str(landing), str(lake.root), run_id=RUN_ID)),
        ),
        ("clean", clean),
        ("gate", lambda: pipeline.task_gate(str(lake.root), run_id=RUN_ID)),
        ("gold", lambda: pipeline.task_gold(str(lake.root), run_id=RUN_ID)),
    ]
    for name, step in steps:
        try:
            # dbt and the stages' own output go to stderr: stdout holds only the figures
            with redirect_stdout(sys.stderr), meter.measure(name):
                step()
        except Exception:  # noqa: BLE001 - reported below, with the figures measured so far
            traceback.print_exc()
            result.failed_stage = name
            break

    if lake.exists(BRONZE_FHIR.name):
        with meter.measure("floor"):
            result.bronze_rows = floor_copy(lake, workdir / "floor" / "fhir_resources")

    rows = ledger.for_run(lake, RUN_ID)
    result.ledger = [{k: v for k, v in r.items() if k != "recorded_at"} for r in rows]
    result.ledger_balanced = bool(rows) and all(bool(r["balanced"]) for r in rows)
    result.records_read = sum(_int(r["records_in"]) for r in rows if r["stage"] == "ingest") or None
    result.process_peak_rss_mib = meter.process_peak_mib
    result.machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return result


# ---------------------------------------------------------------------------------------------
# report


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)


def render(result: Result) -> str:
    """The figures as a plain-text table."""
    figs = result.figures()
    source = (
        f"{result.patients:,} generated patients (seed {result.seed})"
        if result.patients is not None
        else f"landing {result.landing}"
    )
    lines = [
        f"medlake foundation benchmark — {source}",
        (
            f"commit {result.commit} · {result.machine['cpus']} CPUs · "
            f"Python {result.machine['python']} · deltalake {result.machine['deltalake']}"
        ),
        "",
        f"records read (ingest records_in)   {_num(result.records_read)}",
        f"rows in bronze (floor copies them) {_num(result.bronze_rows)}",
        "",
        f"{'step':<34}{'seconds':>9}{'records/s':>12}{'RSS start':>11}{'RSS peak':>10}",
    ]
    rates = {"ingest": figs["ingest_records_per_s"], "floor": figs["floor_records_per_s"]}

    def row(
        label: str,
        seconds: float | None,
        rate: float | None,
        start: float | None,
        peak: float | None,
    ) -> str:
        return (
            f"{label:<34}{_num(seconds, '.2f'):>9}{_num(rate):>12}{_num(start):>11}{_num(peak):>10}"
        )

    labels = {
        "imports": "imports (GE + dbt, once/process)",
        "generate": "generate sample (not pipeline)",
        "floor": "floor: bronze read + write",
    }
    done = result.pipeline_done()
    span = f"ingest→{done[-1].name}" if done else "—"
    total = f"pipeline {span}" + ("" if figs["pipeline_complete"] else " (partial)")
    for name in ("imports", "generate", *PIPELINE, "pipeline", "floor"):
        if name == "pipeline":
            lines.append(
                row(total, figs["pipeline_seconds"], figs["pipeline_records_per_s"], None, None)
            )
        elif s := result.stage(name):
            label = labels.get(name, name) + (" FAILED" if s.error else "")
            lines.append(row(label, s.seconds, rates.get(name), s.rss_start_mib, s.peak_rss_mib))
    lines += [
        "",
        f"pipeline / floor                   {_num(figs['pipeline_over_floor'], '.1f')}×",
        f"process peak RSS (MiB)             {_num(result.process_peak_rss_mib)}"
        + ("" if result.per_stage_peak else "   (per-step peaks unavailable: whole process only)"),
        f"ledger                             {_ledger_line(result)}",
    ]
    if result.failed_stage:
        failed = result.stage(result.failed_stage)
        lines.append(f"FAILED at {result.failed_stage}: {failed.error if failed else '?'}")
    return "\n".join(lines)


def _ledger_line(result: Result) -> str:
    if not result.ledger:
        return "NO ENTRIES for this run"
    bad = [r for r in result.ledger if not r["balanced"]]
    if not bad:
        return f"balanced ({len(result.ledger)} entries)"
    return "DOES NOT ADD UP: " + "; ".join(f"{r['stage']} → {r['table_name']}" for r in bad)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--patients", type=int, default=10_000, help="patients to generate (default 10000)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument(
        "--landing", type=Path, help="use this landing folder (holding fhir/) instead of generating"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary landing folder and lake"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON document instead of the table"
    )
    args = parser.parse_args(argv)
    if args.landing and not (args.landing / "fhir").is_dir():
        parser.error(f"--landing {args.landing}: no fhir/ folder in it")
    if args.patients < 1:
        parser.error("--patients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    meter = Meter()
    workdir = Path(tempfile.mkdtemp(prefix="medlake-bench-"))
    try:
        result = run(args, meter, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = result.as_json()
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc, indent=2, default=str) if args.json else render(result))
    print(f"figures written to {JSON_OUT}", file=sys.stderr)
    if not result.ledger_balanced:
        return 1
    return 2 if result.failed_stage else 0


if __name__ == "__main__":
    sys.exit(main())
