"""Run the SQL-on-FHIR v2 conformance suite against :mod:`medlake.jobs.views.engine`.

Each suite file holds fixture resources and test cases ``{title, tags, view, expect |
expectCount | expectError, expectColumns?}``. Rows are compared as multisets (the spec defines no
row order); ``expectColumns`` checks the column order. The result is the suite's
``test_report.json`` shape: ``{file: {tests: [{name, result: {passed, error?}}]}}``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlake.jobs.views.engine import ViewError, compile_view


@dataclass(frozen=True)
class CaseResult:
    file: str
    name: str
    tags: tuple[str, ...]
    passed: bool
    error: str | None = None

    @property
    def shareable(self) -> bool:
        return "shareable" in self.tags


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(_normalize(row), sort_keys=True)


def _normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)  # 1 and 1.0 are the same decimal
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return str(value)


def run_case(case: dict[str, Any], resources: list[dict[str, Any]]) -> str | None:
    """Why the case fails, or None when it passes."""
    try:
        view = compile_view(case["view"])
        rows = view.rows(resources)
    except ViewError as exc:
        return None if case.get("expectError") else f"the view failed: {exc}"
    if case.get("expectError"):
        return "expected an error, but the view ran"
    if "expectColumns" in case and view.column_names != case["expectColumns"]:
        return f"columns {view.column_names}, expected {case['expectColumns']}"
    if "expectCount" in case:
        return (
            None
            if len(rows) == case["expectCount"]
            else f"{len(rows)} rows, expected {case['expectCount']}"
        )
    expected = case.get("expect", [])
    got, want = Counter(map(_canonical, rows)), Counter(map(_canonical, expected))
    if got == want:
        return None
    missing = list((want - got).elements())[:3]
    extra = list((got - want).elements())[:3]
    return f"{len(rows)} rows, expected {len(expected)}; missing {missing}; unexpected {extra}"


def run_suite(folder: Path) -> list[CaseResult]:
    """Every case of every ``*.json`` suite file in ``folder``."""
    results: list[CaseResult] = []
    for path in sorted(folder.glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"))
        resources = suite.get("resources") or []
        for case in suite.get("tests") or []:
            try:
                error = run_case(case, resources)
            except Exception as exc:  # noqa: BLE001 - a crash is a failed case, reported with its reason
                error = f"crashed: {type(exc).__name__}: {exc}"
            results.append(
                CaseResult(
                    path.name,
                    case.get("title", "?"),
                    tuple(case.get("tags") or ()),
                    error is None,
                    error,
                )
            )
    return results


def test_report(results: list[CaseResult]) -> dict[str, Any]:
    """The results in the suite's ``test-report.schema.json`` shape."""
    report: dict[str, Any] = {}
    for r in results:
        result: dict[str, Any] = {"passed": r.passed}
        if r.error:
            result["error"] = r.error
        report.setdefault(r.file, {"tests": []})["tests"].append({"name": r.name, "result": result})
    return report
