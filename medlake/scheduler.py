"""A real local Airflow for `medlake run`: scheduler, DAG processor and API server (LocalExecutor,
SQLite metadata DB under ``$MEDLAKE_HOME/airflow``), started when none is up, stopped by
`medlake airflow stop`; DAG runs triggered and followed through the REST API (``/api/v2``).

The API server listens on 127.0.0.1 only. Its one user (``medlake``, admin) has the password
Airflow's simple auth manager generates into the Airflow home (0700): the service principal reads
it to get a JWT from ``/auth/token``. The scheduler and the API server share a JWT secret kept
there too (0600), so tasks the LocalExecutor starts can talk to the execution API.

With ``MEDLAKE__AIRFLOW__API_URL`` set, `medlake run` starts nothing: it triggers and follows the
DAG runs through that Airflow (a deployment's, e.g. the production profile's scheduler on
PostgreSQL, ``infra/prod.py``), as ``MEDLAKE__AIRFLOW__API_USER`` with the password in
``MEDLAKE__AIRFLOW__API_PASSWORD_FILE``. Its tasks read the lake named in the run's params, so
the deployment's workers must map an ``s3://`` lake to the same local folder (one
``MEDLAKE_HOME``) and hold the same keys.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlake.config import Settings
from medlake.orchestrator import DagRun, PipelineFailed, airflow_env, ensure_db

COMPONENTS = ("scheduler", "dag-processor", "api-server")
TERMINAL = ("success", "failed")


def _home(settings: Settings) -> Path:
    return settings.airflow.home.resolve()


def _services_file(settings: Settings) -> Path:
    return _home(settings) / "services.json"


def _secret(settings: Settings) -> str:
    path = _home(settings) / "jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def service_env(settings: Settings) -> dict[str, str]:
    """The Airflow environment of the local services (and the CLI talking to them)."""
    port = settings.airflow.api_port
    env = airflow_env(settings)
    secret = _secret(settings)
    env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow.api_user}:admin",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        }
    )
    return env


def _free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(settings: Settings) -> dict[str, int]:
    """The components this machine's medlake started and that still run: name → pid."""
    path = _services_file(settings)
    if not path.is_file():
        return {}
    pids: dict[str, int] = json.loads(path.read_text())
    return {name: pid for name, pid in pids.items() if _alive(pid)}


def start(settings: Settings, *, progress: Callable[[str], None] | None = None, timeout: float = 240) -> Client:
    """The API client of the local services, started first when they are not all up; of the
    deployment's Airflow (``MEDLAKE__AIRFLOW__API_URL``), started by nobody here, when one is set."""
    if settings.airflow.api_url:
        client = Client(settings)
        client.wait_healthy(timeout=timeout)
        return client
    up = running(settings)
    if set(up) != set(COMPONENTS):
        stop(settings)
        ensure_db(settings)
        env = service_env(settings)
        # the scheduler's log server and health check bind ports of their own (8793 and 8974 by
        # default): another Airflow on this machine holds them, so take free ones for this start
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(_free_port())
        env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(_free_port())
        logs = _home(settings) / "services"
        logs.mkdir(parents=True, exist_ok=True)
        exe = str(Path(sys.executable).with_name("airflow"))
        commands = {
            "scheduler": [exe, "scheduler"],
            "dag-processor": [exe, "dag-processor"],
            "api-server": [exe, "api-server", "--host", "127.0.0.1", "--port", str(settings.airflow.api_port)],
        }
        pids = {}
        for name, command in commands.items():
            with (logs / f"{name}.log").open("a") as log:
                proc = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            pids[name] = proc.pid
        _services_file(settings).write_text(json.dumps(pids))
        if progress:
            progress(f"started Airflow (scheduler, DAG processor, API server on 127.0.0.1:{settings.airflow.api_port}); logs in {logs}")
    client = Client(settings)
    client.wait_healthy(timeout=timeout)
    client.ensure_pools()
    return client


def stop(settings: Settings) -> list[str]:
    """Stop the components medlake started (their process groups); returns their names."""
    stopped = []
    for name, pid in running(settings).items():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped.append(name)
    for name, pid in running(settings).items():
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    _services_file(settings).unlink(missing_ok=True)
    return stopped


@dataclass
class Client:
    """Airflow's REST API (v2) on the local API server, as the ``medlake`` admin user."""

    settings: Settings
    token: str | None = None

    @property
    def base(self) -> str:
        return (self.settings.airflow.api_url or f"http://127.0.0.1:{self.settings.airflow.api_port}").rstrip("/")

    def _password(self) -> str:
        if self.settings.airflow.api_password_file is not None:
            from medlake.storage import _read_secret

            return _read_secret(self.settings.airflow.api_password_file)
        path = _home(self.settings) / "simple_auth_manager_passwords.json.generated"
        passwords: dict[str, str] = json.loads(path.read_text())
        return passwords[self.settings.airflow.api_user]

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            if self.token is None:
                self.token = self._request(
                    "POST", "/auth/token", {"username": self.settings.airflow.api_user, "password": self._password()},
                    auth=False,
                )["access_token"]
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def wait_healthy(self, *, timeout: float) -> None:
        """Until the API answers, the scheduler is healthy and the DAG processor has parsed the DAGs."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                health = self._request("GET", "/api/v2/monitor/health", auth=False)
                if health["scheduler"]["status"] == "healthy" and self._request("GET", "/api/v2/dags?limit=1")["total_entries"]:
                    return
                last = json.dumps(health)
            except (urllib.error.URLError, ConnectionError, KeyError, FileNotFoundError, TimeoutError) as exc:
                last = repr(exc)
            time.sleep(1)
        if self.settings.airflow.api_url:
            raise PipelineFailed(f"the Airflow at {self.base} is not healthy after {timeout:.0f} s ({last})")
        raise PipelineFailed(f"the local Airflow did not come up in {timeout:.0f} s ({last}); logs in {_home(self.settings) / 'services'}")

    def wait_dags(self, dag_ids: Sequence[str], *, timeout: float = 120) -> None:
        """Until the DAG processor has parsed these DAGs; unpauses them."""
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while missing and time.monotonic() < deadline:
            for dag_id in list(missing):
                try:
                    self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
                    missing.remove(dag_id)
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:
                        raise
            if missing:
                time.sleep(1)
        if missing:
            raise PipelineFailed(f"Airflow has not parsed the DAGs {missing} in {timeout:.0f} s")

    def ensure_pools(self) -> None:
        """Each source's pool (medlake/sources.py), made or resized to ``MEDLAKE__AIRFLOW__POOL_SLOTS``."""
        from medlake.sources import pools

        for name, slots in pools(self.settings).items():
            body = {"name": name, "slots": slots, "description": "medlake: one source's tasks",
                    "include_deferred": False}
            try:
                self._request("POST", "/api/v2/pools", body)
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # exists already: set its slots
                    raise
                self._request("PATCH", f"/api/v2/pools/{name}", body)

    def asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset events that triggered a run (their ``extra`` included)."""
        quoted = urllib.parse.quote(run_id, safe="")
        found = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/upstreamAssetEvents")
        return list(found["asset_events"])

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> DagRun:
        quoted = urllib.parse.quote(run_id, safe="")
        found = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
        return DagRun(dag_id=dag_id, run_id=run_id, state=str(found["state"]))

    def runs(self, dag_id: str) -> list[DagRun]:
        found = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=-run_after")
        return [DagRun(dag_id, str(r["dag_run_id"]), str(r["state"])) for r in found["dag_runs"]]

    def follow(self, runs: Sequence[tuple[str, str]], *, progress: Callable[[str], None] | None = None,
               poll: float = 2.0) -> list[DagRun]:
        """Until every run is finished; reports each state change."""
        states: dict[tuple[str, str], str] = {}
        while True:
            for dag_id, run_id in runs:
                state = self.run(dag_id, run_id).state
                if states.get((dag_id, run_id)) != state and progress:
                    progress(f"{dag_id} {run_id}: {state}")
                states[(dag_id, run_id)] = state
            if all(s in TERMINAL for s in states.values()):
                return [DagRun(d, r, states[(d, r)]) for d, r in runs]
            time.sleep(poll)


CURATION = "medlake_curation"


@dataclass(frozen=True)
class ScheduledRun:
    """What one `medlake run` set off on the scheduler: its source DAG runs and the curation runs
    their bronze assets triggered."""

    sources: list[DagRun]
    curation: list[DagRun]

    @property
    def runs(self) -> list[DagRun]:
        return [*self.sources, *self.curation]


def run_scheduled(
    settings: Settings,
    *,
    landing: Path,
    lake: Path,
    progress: Callable[[str], None] | None = None,
    engine: str | None = None,
    timeout: float = 3600,
) -> ScheduledRun:
    """Trigger the source DAGs of every landing sub-folder at once through the REST API, follow
    them, then follow the curation runs their bronze assets trigger until nothing is pending in
    the lake (triggering one when the scheduler made none). Raises PipelineFailed on a failed run."""
    from medlake.governance.files import private_dir
    from medlake.lake import Lake
    from medlake.orchestrator import held, lake_lock
    from medlake.pending import pending_counts
    from medlake.registry import SOURCE_DAGS

    private_dir(lake.resolve())
    with held(lake_lock(lake), waiting=progress):
        client = start(settings, progress=progress)
        client.wait_dags([*SOURCE_DAGS, CURATION])
        earlier = {r.run_id for r in client.runs(CURATION)}
        kinds = [kind for kind in SOURCE_DAGS.values() if (landing / kind).is_dir()]
        # one delivery: each source run announces its bronze tables once all have reached bronze,
        # naming every source's versions, so the delivery is curated together (medlake/sources.py)
        conf = {"landing": str(landing.resolve()), "lake": str(lake.resolve()), "engine": engine or "",
                "delivery": f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}", "sources": ",".join(kinds)}
        (lake.resolve() / "_lineage").mkdir(parents=True, exist_ok=True)
        triggered = [
            (dag_id, client.trigger(dag_id, conf))
            for dag_id, kind in SOURCE_DAGS.items()
            if kind in kinds
        ]
        sources = client.follow(triggered, progress=progress)
        failed = [r for r in sources if r.state != "success"]
        if failed:
            raise PipelineFailed("source DAG runs failed: " + ", ".join(f"{r.dag_id} {r.run_id}" for r in failed))
        deadline = time.monotonic() + timeout
        asked = time.monotonic()
        while True:
            curation = [r for r in client.runs(CURATION) if r.run_id not in earlier]
            active = [r for r in curation if r.state not in TERMINAL]
            if not active and curation and not pending_counts(Lake(lake.resolve())):
                break
            if not curation and time.monotonic() - asked > settings.airflow.asset_grace:  # no asset-triggered run
                client.trigger(CURATION, {"lake": str(lake.resolve()), "engine": engine or ""})
                asked = time.monotonic()
            if time.monotonic() > deadline:
                raise PipelineFailed(f"curation did not finish in {timeout:.0f} s: {active}")
            time.sleep(2)
        for r in sorted(curation, key=lambda r: r.run_id):
            if progress:
                progress(f"{r.dag_id} {r.run_id}: {r.state}")
        failed = [r for r in curation if r.state != "success"]
        if failed:
            raise PipelineFailed("curation runs failed: " + ", ".join(r.run_id for r in failed))
        return ScheduledRun(sources=sources, curation=curation)
