"""Shared fixtures for the governance tests."""

from __future__ import annotations

import pwd
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
import yaml  # type: ignore[import-untyped]
from click.testing import Result
from typer.testing import CliRunner

from medlake.commands.governance import audit_app, vault_app
from medlake.governance.access import DEFAULT_POLICY

ME = pwd.getpwuid(__import__("os").getuid()).pw_name


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """Write the shipped policy plus extra ``principals`` to this test's folder; returns the path."""
    return lambda **principals: policy_file(tmp_path, **principals)


@pytest.fixture
def me() -> str:
    """The OS login running the tests, as the policy names it."""
    return f"user:{ME}"


def policy_file(folder: Path, **principals: list[str]) -> Path:
    """The shipped policy with ``principals`` added (``user:<login>`` names), written to ``folder``."""
    raw = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    raw["principals"] = {**raw.get("principals", {}), **principals}
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def cli(tmp_path, monkeypatch) -> Callable[..., Result]:
    """Invoke the audit and vault sub-apps, with keys in this test's own folder."""
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))
    # this test's OS user holds reidentifier (besides the local owner's roles)
    monkeypatch.setenv("MEDLAKE__ACCESS__POLICY_FILE", str(policy_file(tmp_path, **{f"user:{ME}": ["reidentifier"]})))
    for name in ("MEDLAKE_AUDIT_KEY", "MEDLAKE_VAULT_KEYS", "MEDLAKE_VAULT_ACTIVE_KEY"):
        monkeypatch.delenv(name, raising=False)
    root = typer.Typer()
    root.add_typer(audit_app, name="audit")
    root.add_typer(vault_app, name="vault")
    return lambda *args: CliRunner().invoke(root, list(args))
