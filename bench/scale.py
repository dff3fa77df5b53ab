"""The data plane at hospital scale: the pipeline over Synthea-shaped FHIR bulk ndjson of growing
size, next to the performance floor measured in the same run, on the files the floor measured.

    .venv/bin/python bench/scale.py                                   # what `make bench-scale` runs
    .venv/bin/python bench/scale.py --sizes 100000 --spark-sizes ""   # one quick point

For every size: the floor script (``../shared/bench/floor_bench.py``) generates the data set and
times its three floor steps (bronze with a per-row sha256, Observation flatten, a Delta copy);
then the pipeline's stages (the DAG's task functions: ingest, clean, gate, gold) run on a fresh
lake in a child process, whose whole process tree (worker processes, Spark's JVM) is sampled for
its resident memory every 0.1 s. Printed: wall time per stage, records/s, the ratio to the floor,
and the peak RSS of the tree; written: ``bench/out/scale.json`` and ``bench/out/scale.png`` (time
and memory against size). Exits 1 when a run fails or its ledger does not add up. No figure here
is asserted anywhere: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
FLOOR = Path(os.environ.get("MEDLAKE_FLOOR_BENCH", REPO.parent / "shared" / "bench" / "floor_bench.py"))
FLOOR_STEPS = ("bronze_sha256", "flatten_obs_hand", "silver_copy")
OUT = BENCH_DIR / "out"
STAGES = ("ingest", "clean", "gate", "gold")
RUN_ID = "bench__scale"


# ---------------------------------------------------------------------------------------------
# the child: the pipeline's stages, timed


def child(args: argparse.Namespace) -> int:
    """Run the DAG's task functions on ``--landing`` into ``--lake``; print one JSON line."""
    os.environ["MEDLAKE__KEYS__DIR"] = str(Path(args.lake).parent / "keys")
    os.environ["MEDLAKE__ENGINE"] = args.engine
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from medlake import ledger
    from medlake.jobs import pipeline
    from medlake.lake import Lake

    times: dict[str, float] = {}
    xcom: dict[str, Any] = {}
    error = None
    stages = [s for s in STAGES if s in args.stages.split(",")]
    marker = Path(args.lake).parent / f"{Path(args.lake).name}.stage"
    for stage in stages:
        marker.write_text(stage)  # the parent attributes its memory samples to the stage
        start = time.perf_counter()
        try:
            if stage == "ingest":
                xcom = pipeline.task_ingest(args.landing, args.lake, run_id=RUN_ID)
            elif stage == "clean":
                versions = xcom.get("versions", {})
                assert isinstance(versions, dict)
                pipeline.task_clean(
                    args.lake,
                    run_id=RUN_ID,
                    bronze_version=versions.get("bronze.fhir_resources"),
                    hl7v2_version=versions.get("bronze.hl7v2_messages"),
                    versions=versions,
                )
            elif stage == "gate":
                pipeline.task_gate(args.lake, run_id=RUN_ID)
            elif stage == "gold":
                pipeline.task_gold(args.lake, run_id=RUN_ID)
        except Exception as exc:  # noqa: BLE001 - reported with the figures measured so far
            error = f"{stage}: {type(exc).__name__}: {str(exc)[:300]}"
            times[stage] = time.perf_counter() - start
            break
        times[stage] = time.perf_counter() - start
    rows = ledger.for_run(Lake(Path(args.lake)), RUN_ID)
    print(
        json.dumps(
            {
                "stages": times,
                "error": error,
                "records_read": sum(int(r["records_in"]) for r in rows if r["stage"] == "ingest"),
                "ledger_balanced": bool(rows) and all(bool(r["balanced"]) for r in rows),
            }
        )
    )
    return 0 if error is None else 2


# ---------------------------------------------------------------------------------------------
# the parent: floor, pipeline, memory


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_pipeline(landing: Path, lake: Path, *, engine: str, stages: str) -> dict[str, Any]:
    """The child run, its tree's peak RSS sampled every 0.1 s, and its wall time."""
    command = [
        sys.executable, __file__, "--child", "--landing", str(landing), "--lake", str(lake),
        "--engine", engine, "--stages", stages,
    ]
    start = time.perf_counter()
    marker = lake.parent / f"{lake.name}.stage"
    marker.unlink(missing_ok=True)
    by_stage: dict[str, int] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        peak = 0
        while proc.poll() is None:
            rss = tree_rss(proc.pid)
            peak = max(peak, rss)
            stage = marker.read_text() if marker.exists() else "start"
            by_stage[stage] = max(by_stage.get(stage, 0), rss)
            time.sleep(0.1)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        stderr = err.read().decode(errors="replace")
    OUT.mkdir(exist_ok=True)  # the child's log: each step's time (e.g. "clean: flatten_resources …")
    (OUT / f"{lake.name}.log").write_text(stderr)
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": stderr[-2000:]}
    result.update(
        wall=wall,
        peak_rss_mb=peak / 1e6,
        peak_rss_mb_by_stage={k: v / 1e6 for k, v in by_stage.items()},
        engine=engine,
    )
    return result


def run_floor(size: int, data: Path, work: Path) -> dict[str, Any]:
    """The floor script on ``size`` resources (it generates ``data`` first); its step times."""
    report = work / "floor.json"
    subprocess.run(
        [
            sys.executable, str(FLOOR), "--resources", str(size), "--data", str(data),
            "--work", str(work), "--repeats", "1", "--steps", ",".join(FLOOR_STEPS),
            "--json", str(report),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = json.loads(report.read_text())
    # both cores (the floor also times some steps on one core: "cores" set)
    steps = {r["step"]: r for r in found["results"] if not r.get("cores")}
    seconds = {s: float(steps[s]["sec_min"]) for s in FLOOR_STEPS if s in steps}
    return {"steps": seconds, "seconds": sum(seconds.values())}


def landing_for(data: Path, folder: Path) -> Path:
    """A landing folder whose fhir/ holds the floor's files (links, not copies)."""
    fhir = folder / "fhir"
    fhir.mkdir(parents=True, exist_ok=True)
    for path in sorted(data.glob("*.ndjson")):
        link = fhir / path.name
        if not link.exists():
            link.symlink_to(path)
    return folder


def measure(size: int, work: Path, *, engines: list[str], stages: str) -> dict[str, Any]:
    data, floor_work = work / f"data-{size}", work / f"floor-{size}"
    floor = run_floor(size, data, floor_work)
    landing = landing_for(data, work / f"landing-{size}")
    point: dict[str, Any] = {"resources": size, "floor": floor, "runs": []}
    for engine in engines:
        lake = work / f"lake-{size}-{engine}"
        subprocess.run(["rm", "-rf", str(lake), str(work / "keys")], check=True)
        run = run_pipeline(landing, lake, engine=engine, stages=stages)
        seconds = sum(run.get("stages", {}).values())
        run["seconds"] = seconds
        run["records_per_s"] = size / seconds if seconds else None
        run["ratio_to_floor"] = seconds / floor["seconds"] if floor["seconds"] else None
        point["runs"].append(run)
        print(render_run(size, floor, run), flush=True)
    return point


def render_run(size: int, floor: dict[str, Any], run: dict[str, Any]) -> str:
    stages = "  ".join(f"{k} {v:,.1f}s" for k, v in run.get("stages", {}).items())
    ratio = run.get("ratio_to_floor")
    memory = "  ".join(
        f"{k} {v:,.0f} MB" for k, v in run.get("peak_rss_mb_by_stage", {}).items() if k != "start"
    )
    return (
        f"{size:>10,} {run['engine']:<9} pipeline {run['seconds']:>8,.1f}s "
        f"({run['records_per_s'] or 0:>8,.0f} rec/s)  floor {floor['seconds']:>6,.1f}s  "
        f"ratio {ratio or 0:>5.1f}x  peak RSS {run['peak_rss_mb']:>7,.0f} MB  "
        f"ledger {'adds up' if run.get('ledger_balanced') else 'DOES NOT ADD UP'}  [{stages}]"
        f"  [peak RSS by stage: {memory}]"
        + (f"  ERROR {run['error']}" if run.get("error") else "")
    )


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    engines = sorted({r["engine"] for p in points for r in p["runs"]})
    for engine in engines:
        xs = [p["resources"] for p in points for r in p["runs"] if r["engine"] == engine]
        ts = [r["seconds"] for p in points for r in p["runs"] if r["engine"] == engine]
        ms = [r["peak_rss_mb"] / 1000 for p in points for r in p["runs"] if r["engine"] == engine]
        ax_t.plot(xs, ts, "o-", label=f"pipeline ({engine})")
        ax_m.plot(xs, ms, "o-", label=f"peak RSS ({engine})")
    xs = [p["resources"] for p in points]
    ax_t.plot(xs, [p["floor"]["seconds"] for p in points], "s--", label="floor")
    ax_t.plot(xs, [10 * p["floor"]["seconds"] for p in points], ":", label="10× floor (target)")
    ax_m.axhline(3.0, linestyle=":", color="grey", label="3 GB (target)")
    ax_t.set(xlabel="FHIR resources", ylabel="seconds", title="wall time", xscale="log", yscale="log")
    ax_m.set(xlabel="FHIR resources", ylabel="GB", title="peak RSS of the process tree", xscale="log")
    for ax in (ax_t, ax_m):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000", help="embedded engine sizes")
    parser.add_argument("--spark-sizes", default="100000,1000000", help="Spark local[2] sizes")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run (default all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="embedded", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    spark_sizes = {int(s) for s in args.spark_sizes.split(",") if s}
    work = args.work or Path(tempfile.mkdtemp(prefix="medlake-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}; work folder {work}", flush=True)
    points = []
    for size in sorted({*sizes, *spark_sizes}):
        engines = [e for e, wanted in (("embedded", size in sizes), ("spark", size in spark_sizes)) if wanted]
        points.append(measure(size, work, engines=engines, stages=args.stages))
    OUT.mkdir(exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps({"points": points}, indent=2))
    plot(points, OUT / "scale.png")
    print(f"written: {OUT / 'scale.json'}, {OUT / 'scale.png'}")
    failed = [r for p in points for r in p["runs"] if r.get("error") or not r.get("ledger_balanced")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
