"""Processes of the production profile: started detached with a pid file, stopped by that pid only.

A service is started as the leader of its own session (``start_new_session``), so stopping it
signals that process group — the service and the workers it forked — and the processes of its
session that made a group of their own (Airflow's task runners), and nothing else. A pid file
also records the command's first words; a pid reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class ServiceFailed(RuntimeError):
    """A service did not come up; the message names its log."""


def start(
    name: str,
    argv: Sequence[str],
    *,
    pids: Path,
    logs: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached; its output goes to ``<logs>/<name>.log``; returns its pid."""
    if running(name, pids=pids):
        raise ServiceFailed(f"{name} is already running (pid file {pids / (name + '.pid')})")
    pids.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        log.close()
    record(name, proc.pid, argv, pids=pids)
    return proc.pid


def record(name: str, pid: int, argv: Sequence[str], *, pids: Path) -> None:
    """Remember a started process: its pid and what it was started as."""
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"{name}.pid").write_text(json.dumps({"pid": pid, "argv0": Path(argv[0]).name}) + "\n")


def pid_of(name: str, *, pids: Path) -> int | None:
    """The recorded pid of ``name`` if that process still runs, else None."""
    path = pids / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(json.loads(path.read_text())["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return None if state == "Z" else pid


def running(name: str, *, pids: Path) -> bool:
    return pid_of(name, pids=pids) is not None


def stop(name: str, *, pids: Path, sig: int = signal.SIGTERM, grace: float = 30.0) -> bool:
    """Signal the recorded process (and its group when it leads one); SIGKILL after ``grace`` s.
    Returns whether something was stopped."""
    pid = pid_of(name, pids=pids)
    path = pids / f"{name}.pid"
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    group = os.getpgid(pid) == pid
    strays = _outside_group(pid) if group else []
    _signal(pid, sig, group=group)
    for stray in strays:
        _signal(stray, sig, group=False)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (_alive(pid) or any(_alive(s) for s in strays)):
        time.sleep(0.2)
    if _alive(pid) or (group and _group_alive(pid)):
        _signal(pid, signal.SIGKILL, group=group)
        time.sleep(0.5)
    for stray in _outside_group(pid) if group else []:
        _signal(stray, signal.SIGKILL, group=False)
    path.unlink(missing_ok=True)
    return True


def _outside_group(sid: int) -> list[int]:
    """Processes of the session ``sid`` leads that left its process group: Airflow's task
    supervisor puts each task in a group of its own, which signalling the scheduler's group misses."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == sid:
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and int(fields[2]) != sid:
            found.append(int(proc.name))
    return found


def _signal(pid: int, sig: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(what: str, ready: Callable[[], bool], *, log: Path, timeout: float = 180.0) -> None:
    """Poll ``ready`` until it holds; raise naming the log when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    raise ServiceFailed(f"{what} not ready after {timeout:.0f} s; see {log}:\n{tail}")


def http_ok(url: str, *, context: object | None = None) -> bool:
    """Whether ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return 200 <= int(response.status) < 300
    except OSError:
        return False
