"""Running the production profile (infra/prod.py) in a test: its own folder and ports, stopped by
pid afterwards, and nothing of it left running."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "infra" / "prod.py"
#: every port offset the profile listens on (infra/prod.py, Profile.port; the second worker's UI is 92)
PORT_OFFSETS = (2, 32, 40, 50, 70, 77, 80, 81, 82, 92, 93)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command's exit code and output, for assertions that show them."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


def processes_under(home: Path) -> list[str]:
    """Command lines of running processes that name the profile's folder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(home) in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def free_port_base() -> int:
    sys.path.insert(0, str(REPO / "infra"))
    import procs

    for _ in range(50):
        base = random.randrange(20000, 40000, 100)
        if all(procs.free_port(base + offset) for offset in PORT_OFFSETS):
            return base
    raise RuntimeError("no free port range")


@contextlib.contextmanager
def running_profile(name: str, only: str, **settings: str) -> Iterator[dict[str, Any]]:
    """``prod.py up --only <only>`` in ``build/test-<name>-<pid>`` (PostgreSQL's user must traverse
    to its data folder, which pytest's 0700 temporary folders do not allow); yields its folder, the
    environment it was started with, the client settings ``prod.py env`` prints and ``up``'s output."""
    home = REPO / "build" / f"test-{name}-{os.getpid()}"
    env = {**os.environ, "MEDLAKE_PROD_HOME": str(home), "MEDLAKE_PROD_PORT_BASE": str(free_port_base()), **settings}
    up = run([sys.executable, str(PROD), "up", "--only", only], env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        client = run([sys.executable, str(PROD), "env"], env)
        assert client.returncode == 0, client.stderr
        found = dict(line.removeprefix("export ").split("=", 1) for line in client.stdout.splitlines())
        yield {"home": home, "env": env, "settings": found, "up": up.stdout}
    finally:
        down = run([sys.executable, str(PROD), "down"], env)
        leftover = processes_under(home)
        shutil.rmtree(home, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not leftover, f"processes left running: {leftover}"


@pytest.fixture(scope="session")
def start_profile() -> Callable[..., contextlib.AbstractContextManager[dict[str, Any]]]:
    """``with start_profile(name, "pg,s3", **MEDLAKE_PROD_settings) as profile``: see running_profile."""
    return running_profile


@pytest.fixture(scope="session")
def run_command() -> Callable[[list[str], dict[str, str]], subprocess.CompletedProcess[str]]:
    """``run_command(argv, env)``: a command's exit code and output, nothing raised."""
    return run
