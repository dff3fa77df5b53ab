"""Run the pipeline DAG through a real local Airflow (SQLite metadata DB, no scheduler needed).

`medlake run` calls :func:`run_pipeline`, which migrates the metadata DB on first use and runs
``airflow dags test`` with the landing and lake folders as params: a real DAG run, recorded in
the metadata DB and listed afterwards by ``airflow dags list-runs``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from medlake.config import Settings


class PipelineFailed(RuntimeError):
    """The DAG run did not succeed."""


@contextlib.contextmanager
def held(path: Path, *, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive lock on ``path`` (flock) for as long as the block runs; waits for it.

    The kernel drops the lock with its process, so a run killed with SIGKILL never leaves it
    behind. ``waiting`` hears once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting(f"waiting for {path} (another run holds it)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lake_lock(lake: Path) -> Path:
    """The lock one run on a lake holds from its ingest to its summary: curation (clean → gate)
    is one run at a time per lake, and the Airflow DAGs say the same with ``max_active_runs``."""
    return lake.resolve() / "_locks" / "run.lock"


@dataclass(frozen=True)
class DagRun:
    """A finished DAG run as the metadata DB records it."""

    dag_id: str
    run_id: str
    state: str


def airflow_env(settings: Settings, *, lake: Path | None = None) -> dict[str, str]:
    """The environment for the airflow CLI: local home, SQLite DB, our DAGs, no examples.

    Airflow's OpenLineage provider writes its task-level events to ``<lake>/_lineage/airflow.ndjson``
    (``lake``: this run's lake, else the configured lake root), next to medlake's ``events.ndjson``.
    An operator's own ``AIRFLOW__OPENLINEAGE__TRANSPORT`` / ``__NAMESPACE`` in the environment win.
    """
    home = settings.airflow.home.resolve()
    lineage_file = (lake or settings.lake.root).resolve() / "_lineage" / "airflow.ndjson"
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.airflow.dags_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "GX_ANALYTICS_ENABLED": "false",
            "PYSPARK_PYTHON": sys.executable,
            "NO_PROXY": "*",
            # standalone starts its components as `airflow ...` subprocesses: find ours first
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    env.setdefault(
        "AIRFLOW__OPENLINEAGE__TRANSPORT",
        json.dumps({"type": "file", "log_file_path": str(lineage_file), "append": True}),
    )
    env.setdefault("AIRFLOW__OPENLINEAGE__NAMESPACE", settings.lineage.airflow_namespace)
    return env


def _airflow(settings: Settings, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("airflow")
    return subprocess.run(
        [str(exe), *args],
        env=airflow_env(settings),
        text=True,
        capture_output=capture,
        check=False,
    )


def ensure_db(settings: Settings) -> None:
    """Create or upgrade the Airflow metadata DB (idempotent)."""
    home = settings.airflow.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    marker = home / ".migrated"
    if marker.exists():
        return
    done = _airflow(settings, "db", "migrate", capture=True)
    if done.returncode != 0:
        raise PipelineFailed(f"airflow db migrate failed:\n{done.stderr[-2000:]}")
    marker.touch()


#: bumped when the DAGs' asset names or URIs change (a new marker makes an old Airflow home forget
#: the assets it holds as active once); 2: assets named and addressed by the table (issue #14)
ASSET_SCHEME = 2

_FORGET_ACTIVE_ASSETS = """
from sqlalchemy import delete
from airflow.models.asset import AssetActive
from airflow.utils.session import create_session
with create_session() as session:
    print(session.execute(delete(AssetActive)).rowcount)
"""


def forget_stale_assets(settings: Settings) -> None:
    """Once per asset scheme, empty the Airflow home's list of active assets, so the next parse
    activates the DAGs' assets afresh. An Airflow home from before a rename held the old assets
    active, the new ones (same names, other URIs) could not be activated, and every task with
    such an outlet failed (``AirflowInactiveAssetInInletOrOutletException``). Inline runs never
    run the scheduler's orphanage pass that would fix it. Asset events and history are kept."""
    marker = settings.airflow.home.resolve() / f".asset-scheme-{ASSET_SCHEME}"
    if marker.exists():
        return
    done = subprocess.run(
        [sys.executable, "-c", _FORGET_ACTIVE_ASSETS],
        env=airflow_env(settings),
        text=True,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise PipelineFailed(f"could not reset the Airflow home's active assets:\n{done.stderr[-2000:]}")
    marker.touch()


def list_runs(settings: Settings, dag_id: str | None = None) -> list[DagRun]:
    """The DAG runs in the metadata DB, newest first."""
    dag_id = dag_id or settings.airflow.pipeline_dag_id
    done = _airflow(settings, "dags", "list-runs", dag_id, "-o", "json", capture=True)
    if done.returncode != 0:
        raise PipelineFailed(f"airflow dags list-runs failed:\n{done.stderr[-2000:]}")
    # the CLI may print warnings before the JSON: take the line that holds the JSON array
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("[{") or ln.strip() == "[]"]
    rows = json.loads(lines[-1]) if lines else []
    return [DagRun(dag_id=r["dag_id"], run_id=r["run_id"], state=r["state"]) for r in rows]


_TASK_EVENT = re.compile(r"\[DAG TEST\] (starting|end) task(?:_id=| task_id=)(\w+)")
_LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T|^\[|^\x1b")
_FAILURE = re.compile(r"^[\w.]+(Error|Exception|Failed|Imbalance|NotFound): ")


class FailureLines:
    """The lines of a run's output that say why it failed: each exception line and up to six
    lines of its message below it. Airflow's own exceptions (``airflow.…``) mostly wrap the
    task's, so they are kept apart and only reported when nothing else was raised (e.g. an
    asset Airflow refused)."""

    def __init__(self) -> None:
        self._ours: list[str] = []
        self._airflow: list[str] = []
        self._into: list[str] | None = None
        self._follow = 0

    def see(self, text: str) -> None:
        if _FAILURE.search(text):
            self._into = self._airflow if text.startswith("airflow.") else self._ours
            self._into.append(text)
            self._follow = 6
        elif self._follow and self._into is not None and text and not _LOG_LINE.match(text):
            self._into.append(text)
            self._follow -= 1
        else:
            self._follow = 0

    def reasons(self, last: int = 14) -> list[str]:
        """The last ``last`` distinct lines: the task's own, else Airflow's."""
        return list(dict.fromkeys((self._ours or self._airflow)[-last:]))


def run_pipeline(
    settings: Settings,
    *,
    landing: Path,
    lake: Path,
    progress: Callable[[str], None] | None = None,
    engine: str | None = None,
) -> DagRun:
    """Run the pipeline DAG once on these folders; raise PipelineFailed unless it succeeded.
    ``engine`` (embedded or spark) reaches the tasks as the run's ``engine`` param.

    Airflow's own output goes to a log file under the Airflow home; ``progress`` receives one
    line per task start and end.
    """
    from medlake.config import STATE_DIR
    from medlake.governance.files import private_dir

    for folder in (STATE_DIR, settings.airflow.home, lake):  # nobody but the service principal reads under them
        private_dir(folder.resolve())
    # one run per lake at a time; one inline `airflow dags test` per metadata DB (SQLite)
    with held(lake_lock(lake), waiting=progress), held(
        settings.airflow.home.resolve() / "inline-run.lock", waiting=progress
    ):
        return _run_inline(settings, landing=landing, lake=lake, progress=progress, engine=engine)


def _run_inline(
    settings: Settings,
    *,
    landing: Path,
    lake: Path,
    progress: Callable[[str], None] | None,
    engine: str | None,
) -> DagRun:
    ensure_db(settings)
    forget_stale_assets(settings)
    parsed = _airflow(settings, "dags", "reserialize", capture=True)  # Airflow 3 runs DAGs from the DB
    if parsed.returncode != 0:
        raise PipelineFailed(f"airflow could not parse the DAG files:\n{parsed.stderr[-2000:]}")
    before = {r.run_id for r in list_runs(settings)}
    conf = json.dumps(
        {"landing": str(landing.resolve()), "lake": str(lake.resolve()), "engine": engine or ""}
    )
    (lake.resolve() / "_lineage").mkdir(parents=True, exist_ok=True)  # the provider's file transport appends there
    log_dir = settings.airflow.home.resolve() / "run-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}.log"
    failures = FailureLines()
    exe = Path(sys.executable).with_name("airflow")
    with log_path.open("w") as log, subprocess.Popen(
        [str(exe), "dags", "test", settings.airflow.pipeline_dag_id, "--conf", conf],
        env=airflow_env(settings, lake=lake),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            event = _TASK_EVENT.search(line)
            if event and progress:
                progress(f"{'started ' if event.group(1) == 'starting' else 'finished'} {event.group(2)}")
            failures.see(line.strip())
        returncode = proc.wait()
    new = [r for r in list_runs(settings) if r.run_id not in before]
    if not new:
        raise PipelineFailed(
            f"airflow recorded no run of {settings.airflow.pipeline_dag_id} (exit {returncode}); log: {log_path}"
        )
    run = new[0]
    if run.state != "success" or returncode != 0:
        detail = "\n  ".join(failures.reasons())
        raise PipelineFailed(f"DAG run {run.run_id} ended {run.state} (exit {returncode}):\n  {detail}\nlog: {log_path}")
    return run


def standalone(settings: Settings) -> int:
    """Start Airflow standalone (API server, scheduler, DAG processor) on this machine, with each
    source's pool (medlake/sources.py) made first."""
    from medlake.sources import pools

    ensure_db(settings)
    spec = settings.airflow.home.resolve() / "pools.json"
    spec.write_text(json.dumps({name: {"slots": slots, "description": "medlake: one source's tasks",
                                       "include_deferred": False} for name, slots in pools(settings).items()}))
    done = _airflow(settings, "pools", "import", str(spec), capture=True)
    if done.returncode != 0:
        raise PipelineFailed(f"airflow pools import failed:\n{done.stderr[-2000:]}")
    return _airflow(settings, "standalone").returncode


def _asset_names(items: object) -> list[str]:
    """Names of the assets in a list of inlets/outlets or an asset condition (AND/OR of assets)."""
    if items is None:
        return []
    nested = getattr(items, "objects", None)
    if nested is not None:
        return [n for item in nested for n in _asset_names(item)]
    if isinstance(items, list | tuple):
        return [n for item in items for n in _asset_names(item)]
    name = getattr(items, "name", None)
    return [str(name)] if name is not None and hasattr(items, "uri") else []


def list_dags(settings: Settings) -> list[dict[str, object]]:
    """Every DAG in the DAG folder: schedule, tags, max active runs, the assets it consumes (its
    schedule) and the assets its tasks read and write. Parses the files; touches no database."""
    for name, value in airflow_env(settings).items():
        if name.startswith("AIRFLOW"):
            os.environ.setdefault(name, value)
    from airflow.dag_processing.dagbag import DagBag

    with contextlib.redirect_stdout(sys.stderr):  # Airflow logs while it parses; stdout stays JSON
        bag = DagBag(dag_folder=str(settings.airflow.dags_folder.resolve()))
    if bag.import_errors:
        raise PipelineFailed(f"DAG files that do not import: {sorted(bag.import_errors)}")
    rows: list[dict[str, object]] = []
    for dag_id, dag in sorted(bag.dags.items()):
        condition = getattr(dag.timetable, "asset_condition", None)
        schedule = "assets" if condition is not None else str(getattr(dag.timetable, "summary", None) or "manual")
        reads = sorted({n for t in dag.tasks for n in _asset_names(t.inlets)})
        writes = sorted({n for t in dag.tasks for n in _asset_names(t.outlets)})
        rows.append(
            {
                "dag_id": dag_id,
                "schedule": schedule,
                "tags": sorted(dag.tags),
                "max_active_runs": dag.max_active_runs,
                "consumes": sorted(set(_asset_names(condition))),
                "reads": reads,
                "produces": writes,
                "tasks": [t.task_id for t in dag.topological_sort()],  # type: ignore[no-untyped-call]
            }
        )
    return rows
