"""Shared fixtures for the governance tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from medlake.commands.governance import audit_app, vault_app


@pytest.fixture
def cli(tmp_path, monkeypatch) -> Callable[..., Result]:
    """Invoke the audit and vault sub-apps, with keys in this test's own folder."""
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))
    for name in ("MEDLAKE_AUDIT_KEY", "MEDLAKE_VAULT_KEYS", "MEDLAKE_VAULT_ACTIVE_KEY"):
        monkeypatch.delenv(name, raising=False)
    root = typer.Typer()
    root.add_typer(audit_app, name="audit")
    root.add_typer(vault_app, name="vault")
    return lambda *args: CliRunner().invoke(root, list(args))
