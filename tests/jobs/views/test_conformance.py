"""The SQL-on-FHIR v2 conformance suite, run through `medlake views test`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from medlake.commands.views import test as views_test

SUITE = (
    Path(__file__).resolve().parents[2] / "corpus"
    / "standards"
    / "sql-on-fhir-v2"
    / "tests"
)


def _tags() -> dict[tuple[str, str], list[str]]:
    return {
        (path.name, case["title"]): case.get("tags", [])
        for path in sorted(SUITE.glob("*.json"))
        for case in json.loads(path.read_text())["tests"]
    }


def test_every_shareable_case_passes(tmp_path: Path) -> None:
    report_path = tmp_path / "test_report.json"
    views_test(SUITE, report=report_path)  # exits 1 if a shareable case fails
    report = json.loads(report_path.read_text())
    tags = _tags()
    results = {
        (file, t["name"]): t["result"] for file, part in report.items() for t in part["tests"]
    }
    assert set(results) == set(tags), "the report names every case of the suite"
    shareable = {k: r for k, r in results.items() if "shareable" in tags[k]}
    assert len(shareable) == 123
    failed = {k: r.get("error") for k, r in shareable.items() if not r["passed"]}
    assert failed == {}
    experimental = {k: r for k, r in results.items() if "experimental" in tags[k]}
    assert len(experimental) == 11 and all(r["passed"] for r in experimental.values())
    assert all(
        set(t["result"]) <= {"passed", "error"} for part in report.values() for t in part["tests"]
    )


def test_a_failing_case_is_reported_and_exits_1(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    case = {
        "title": "wrong expectation",
        "tags": ["shareable"],
        "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
        "expect": [{"id": "someone-else"}],
    }
    (suite / "mine.json").write_text(
        json.dumps({"resources": [{"resourceType": "Patient", "id": "p1"}], "tests": [case]})
    )
    with pytest.raises(typer.Exit) as exc:
        views_test(suite, report=tmp_path / "report.json")
    assert exc.value.exit_code == 1
    result = json.loads((tmp_path / "report.json").read_text())["mine.json"]["tests"][0]["result"]
    assert result["passed"] is False
    assert "someone-else" in result["error"]
