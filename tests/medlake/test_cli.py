"""Every CLI command has help text with an example."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from medlake.cli import app


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    click_group = typer.main.get_command(group)
    found = []
    for name, command in click_group.commands.items():  # type: ignore[attr-defined]
        if hasattr(command, "commands"):
            found.extend((*prefix, name, sub) for sub in command.commands)
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    commands = _commands(app)
    assert {("run",), ("sample",), ("tables",), ("ledger",), ("quarantine", "list"), ("quarantine", "resolve"),
            ("demo",)} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Example:" in result.output, command


def test_tables_json_on_an_empty_lake(tmp_path):
    result = CliRunner().invoke(app, ["tables", "--lake", str(tmp_path), "--json"])
    assert result.exit_code == 0 and result.output.strip() == "[]"


def test_whoami_names_the_os_principal_and_its_roles(tmp_path, monkeypatch):
    import json
    import os
    import pwd

    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "keys"))
    (tmp_path / "keys").mkdir(mode=0o700)
    result = CliRunner().invoke(app, ["whoami", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["principal"] == f"user:{pwd.getpwuid(os.getuid()).pw_name}"
    assert data["service_principal"] and data["roles"] == ["data_engineer", "compliance", "ml"]
