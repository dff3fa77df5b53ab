"""The compliance report of a run, built from a real lake: the pipeline's stages run in-process on a
generated sample hospital, then the report is gathered, rendered and checked against the lake."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medlake import ledger
from medlake.commands.report import landing_record_hash, report_path
from medlake.commands.report import report as report_command
from medlake.config import load_settings
from medlake.governance import report
from medlake.governance.at_rest import lake_for
from medlake.governance.lineage import lineage_graph, stage_run
from medlake.jobs import pipeline
from medlake.keys import audit_key, project_key
from medlake.lake import Lake
from medlake.registry import QUARANTINE
from medlake.sample import generate

pytestmark = pytest.mark.slow

RUN, RERUN = "r1", "r2"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lake after run r1 (every stage) and r2 (ingest, clean, gate) over the same landing folder
    plus two copies: one file holding r1's records again (duplicates), one empty file named after
    a planted patient, as Synthea names its bundles (a quarantined file whose name is PHI)."""
    root = tmp_path_factory.mktemp("report")
    landing, lake = root / "landing", root / "lake"
    generate(landing, patients=30, seed=5)
    truth = json.loads((landing / "_truth.json").read_text())
    written = pipeline.task_ingest(str(landing), str(lake), run_id=RUN)
    versions = written["versions"]
    assert isinstance(versions, dict)
    pipeline.task_clean(str(lake), run_id=RUN, bronze_version=versions["bronze.fhir_resources"])
    pipeline.task_gate(str(lake), run_id=RUN)
    pipeline.task_gold(str(lake), run_id=RUN)
    pipeline.task_summary(str(lake), run_id=RUN)

    bulk = landing / "fhir" / "bulk"
    original = min(bulk.glob("Observation*.ndjson"))
    duplicate = bulk / "Observation.resent.ndjson"
    shutil.copy(original, duplicate)
    given, family = truth["phi"]["names"][0], truth["phi"]["names"][-1]
    phi_named = landing / "fhir" / "bundles" / f"{given}_{family}_0001.json"
    phi_named.write_text("")
    pipeline.task_ingest(str(landing), str(lake), run_id=RERUN)
    pipeline.task_clean(str(lake), run_id=RERUN, bronze_version=None)
    pipeline.task_gate(str(lake), run_id=RERUN)
    return {
        "root": root,
        "landing": landing,
        "lake": lake_for(load_settings(), lake),  # bronze and quarantine PHI is encrypted at rest
        "truth": truth,
        "original": original.relative_to(landing).as_posix(),
        "duplicate": duplicate.relative_to(landing).as_posix(),
        "phi_named": phi_named.relative_to(landing).as_posix(),
    }


def _key() -> bytes:
    return audit_key(load_settings(), create=False)


def _ref() -> bytes:
    """The project key, which names files by keyed reference."""
    return project_key(load_settings())


@pytest.fixture(scope="module")
def run_report(built: dict[str, Any]) -> report.RunReport:
    return report.gather(built["lake"], run_id=RUN, audit_key=_key(), reference_key=_ref())


@pytest.fixture(scope="module")
def page(run_report: report.RunReport) -> str:
    return report.render_html(run_report)


class _Cells(HTMLParser):
    """Ledger rows (data-stage/data-table with data-k cells) and quarantine rows (data-rule) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger: dict[tuple[str, str], dict[str, int]] = {}
        self.rules: dict[str, int] = {}
        self._row: tuple[str, ...] | None = None
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-stage"):
            self._row = ("ledger", str(a["data-stage"]), str(a["data-table"]))
            self.ledger[(str(a["data-stage"]), str(a["data-table"]))] = {}
        elif tag == "tr" and a.get("data-rule"):
            self._row = ("rule", str(a["data-rule"]))
        elif tag == "tr":
            self._row = None
        elif tag == "td" and self._row and a.get("data-k"):
            self._key = a["data-k"]

    def handle_data(self, data: str) -> None:
        if self._key and self._row and data.strip():
            if self._row[0] == "ledger":
                self.ledger[(self._row[1], self._row[2])][self._key] = int(data)
            elif self._key == "count":
                self.rules[self._row[1]] = int(data)
            self._key = None


def _cells(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser


def test_every_section_is_on_the_page(page: str, run_report: report.RunReport) -> None:
    for section, _title in report.SECTIONS:
        assert f'<section id="{section}"' in page, section
    assert '<header id="header">' in page
    assert f'<dd id="run-id">{RUN}</dd>' in page
    assert run_report.status == "success"
    assert [t["task"] for t in run_report.tasks] == [
        "ingest",
        "clean",
        "gate",
        "dbt_gold",
        "summary",
    ]
    assert all(t["state"] == "COMPLETE" for t in run_report.tasks)
    # self-contained: no scripts, no stylesheets or images fetched, links only within the page
    assert "<script" not in page.lower() and "<link" not in page.lower() and " src=" not in page
    assert re.findall(r'href="([^"]*)"', page) and all(
        h.startswith("#") for h in re.findall(r'href="([^"]*)"', page)
    )


def test_ledger_numbers_on_the_page_are_the_ledger_table(built: dict[str, Any], page: str) -> None:
    rows = ledger.for_run(built["lake"], RUN)
    shown = _cells(page).ledger
    assert len(shown) == len(rows) > 5
    for row in rows:
        cells = shown[(str(row["stage"]), str(row["table_name"]))]
        assert cells == {c: row[c] for c in report.LEDGER_COLUMNS}
    assert "every row adds up" in page


def test_pending_records_are_shown_and_none_are_left_after_curated_runs(
    run_report: report.RunReport, page: str
) -> None:
    assert run_report.pending == {}
    assert 'id="pending">pending: none' in page
    waiting = report.RunReport(**{**run_report.as_dict(), "pending": {"bronze.fhir_resources": 1234}})
    html = report.render_html(waiting)
    assert "not yet curated by any run" in html and "<code>bronze.fhir_resources</code> 1,234" in html


def test_an_unbalanced_ledger_row_is_flagged(run_report: report.RunReport) -> None:
    row = dict(run_report.ledger[0], records_in=run_report.ledger[0]["records_in"] + 1)
    row["adds_up"] = False
    broken = report.RunReport(**{**run_report.as_dict(), "ledger": [row], "ledger_balanced": False})
    html = report.render_html(broken)
    assert "does not add up" in html and "the ledger DOES NOT add up" in html


def test_quarantine_counts_are_the_quarantine_table(
    built: dict[str, Any], page: str, run_report: report.RunReport
) -> None:
    rows = built["lake"].read(QUARANTINE.name, where={"run_id": RUN}).to_pylist()
    expected = Counter(r["rule_id"] for r in rows)
    assert _cells(page).rules == dict(expected)
    assert run_report.quarantine_total == len(rows) == sum(expected.values())
    planted = Counter(m["rule"] for m in built["truth"]["malformed"])
    for rule, count in planted.items():
        assert expected[rule] >= count
    for rule in run_report.quarantine:
        assert 1 <= len(rule["examples"]) <= report.EXAMPLES_PER_RULE
        assert all(set(ex) == {"table", "reason", "file", "offset"} for ex in rule["examples"])


def _phi_values(truth: dict[str, Any]) -> list[str]:
    return [value for values in truth["phi"].values() for value in values]


def _leaks(text: str, values: list[str]) -> list[str]:
    return [v for v in values if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text)]


def test_no_planted_phi_or_file_name_on_the_page(
    built: dict[str, Any], page: str, run_report: report.RunReport
) -> None:
    phi = _phi_values(built["truth"])
    assert len(phi) > 100
    as_json = json.dumps(run_report.as_dict(), ensure_ascii=False)
    assert _leaks(page, phi) == [] and _leaks(as_json, phi) == []
    files = {
        r["source_file"]
        for r in built["lake"].read(QUARANTINE.name, where={"run_id": RUN}).to_pylist()
    } - {None}
    assert files and not [f for f in files if f in page or f in as_json]
    assert all(report.file_hash(f, reference_key=_ref()) in page for f in files)


def given_family_absent(text: str, name: str) -> bool:
    given, family = Path(name).stem.split("_")[:2]
    return given not in text and family not in text


def test_a_file_named_after_a_patient_is_shown_as_a_hash(built: dict[str, Any]) -> None:
    rerun = report.gather(built["lake"], run_id=RERUN, audit_key=_key(), reference_key=_ref())
    html = report.render_html(rerun)
    name = built["phi_named"]
    quarantined = (
        built["lake"]
        .read(QUARANTINE.name, where={"run_id": RERUN, "source_file": name})
        .to_pylist()
    )
    # the quarantine's reason names the file by keyed reference; the name is only in the encrypted source_file
    assert quarantined and name not in quarantined[0]["reason"] and "file:" in quarantined[0]["reason"]
    assert given_family_absent(quarantined[0]["reason"], name)
    given, family = Path(name).stem.split("_")[:2]
    assert _leaks(html, [given, family, name]) == []
    assert _leaks(json.dumps(rerun.as_dict(), ensure_ascii=False), [given, family, name]) == []
    assert f"file#{report.file_hash(name, reference_key=_ref())}" in html


def test_deidentification_summary_and_k_anonymity(
    built: dict[str, Any], run_report: report.RunReport
) -> None:
    handled = " ".join(i["identifier"] for i in run_report.deid["identifiers"])
    for identifier in (
        "Names",
        "Telephone",
        "Street address",
        "ZIP",
        "Dates",
        "identifiers",
        "Free text",
    ):
        assert identifier in handled
    k = run_report.deid["k_anonymity"]
    gold = built["lake"].read("gold.ml_patient_features").num_rows
    assert k["available"] and k["population"] == gold
    assert 1 <= k["smallest_class"] <= gold
    assert k["classes_below_k"] <= k["classes"] <= gold
    # 30 synthetic patients over age band x gender x ZIP3: most people are alone in their class
    assert k["smallest_class"] < report.K_ANONYMITY and k["classes_below_k"] > 0


def test_quality_results_come_from_the_gates_assertions(
    run_report: report.RunReport, page: str
) -> None:
    q = run_report.quality
    rules = {a["rule"] for a in q["assertions"]}
    assert "gate.heart_rate_range" in rules and "gate.person_key_not_null" in rules
    assert q["passed"] + q["failed"] == len(q["assertions"]) and q["failed"] == 0
    assert {g["table"] for g in q["gate_ledger"]} == set(report.SILVER_TABLES)
    assert "gate.heart_rate_range" in page


def test_the_lineage_svg_is_xml_and_draws_the_run(
    built: dict[str, Any], page: str, run_report: report.RunReport
) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    assert len(svgs) >= 2  # the lineage graph and the sparklines
    for svg in svgs:
        ET.fromstring(svg)
    graph = ET.fromstring(next(s for s in svgs if 'id="lineage-svg"' in s))
    ns = "{http://www.w3.org/2000/svg}"
    drawn = {g.get("data-table") for g in graph.iter(f"{ns}g")}
    assert {
        "landing/fhir",
        "bronze.fhir_resources",
        "staging.observations",
        "silver.observations",
        "gold.ml_patient_features",
    } <= drawn
    edges = {(e["from"], e["to"]) for e in run_report.lineage["edges"]}
    assert ("bronze.fhir_resources", "staging.patients") in edges
    assert ("staging.observations", "silver.observations") in edges
    assert (
        "staging.patients",
        "silver.observations",
    ) not in edges  # column lineage, not every input
    assert ("silver.observations", "gold.ml_patient_features") in edges
    assert len(graph.findall(f".//{ns}path")) >= len(edges)
    versions = {n["name"]: n["version"] for n in run_report.lineage["nodes"]}
    for table in ("bronze.fhir_resources", "silver.observations", "gold.ml_patient_features"):
        assert (
            versions[table] == lineage_graph(built["lake"], table, run_id=RUN).version is not None
        )


def test_audit_chain_intact_and_a_wrong_key_shows_broken(
    built: dict[str, Any], run_report: report.RunReport, page: str
) -> None:
    assert run_report.audit["intact"] and run_report.audit["run_entries"] == 1
    assert 'id="audit-result"><span class="ok">intact</span>' in page
    wrong = report.gather(built["lake"], run_id=RUN, audit_key=b"\x01" * 32, reference_key=_ref())
    assert not wrong.audit["intact"] and "wrong audit key" in wrong.audit["problem"]
    assert "BROKEN" in report.render_html(wrong)


def test_dp_budget_without_releases_says_so(run_report: report.RunReport, page: str) -> None:
    assert run_report.dp_budget == {"releases": [], "status": "no releases"}
    assert 'id="dp-status">no releases' in page


def test_quality_over_time_covers_the_runs(built: dict[str, Any]) -> None:
    rerun = report.gather(built["lake"], run_id=RERUN, audit_key=_key(), reference_key=_ref())
    by_table = {t["table"]: t["runs"] for t in rerun.quality_over_time}
    assert set(by_table) == set(report.SILVER_TABLES)
    obs = by_table["silver.observations"]
    assert [p["run_id"] for p in obs] == [RUN, RERUN]
    first = {
        r["stage"]: r
        for r in ledger.for_run(built["lake"], RUN)
        if r["table_name"] == "silver.observations"
    }
    assert obs[0]["records_in"] == first["silver"]["records_in"]
    assert obs[0]["quarantined"] == sum(r["quarantined"] for r in first.values())
    assert (
        obs[1]["records_in"] == 0 and obs[1]["rate"] is None
    )  # r2 re-read the same files: all merged
    assert obs[0]["rate"] == round(obs[0]["quarantined"] / obs[0]["records_in"], 4) > 0
    assert 'id="trend-table"' in report.render_html(rerun)


def test_json_holds_what_the_page_shows(run_report: report.RunReport, page: str) -> None:
    data = json.loads(json.dumps(run_report.as_dict(), default=str))
    k = data["deid"]["k_anonymity"]
    assert f'data-k="smallest_class">{k["smallest_class"]}<' in page
    assert f'data-k="classes_below_k" class="bad">{k["classes_below_k"]}<' in page
    assert data["notes"] and "HMAC" in data["notes"][0]


# --- tracing one record ---------------------------------------------------------------------------


def test_trace_a_malformed_record_to_its_quarantine_reason(built: dict[str, Any]) -> None:
    planted = next(
        m for m in built["truth"]["malformed"] if m["rule"] == "parse.bad_json" and m["offset"] > 0
    )
    found = report.trace_record(built["lake"], planted["file"], planted["offset"], reference_key=_ref())
    assert found["outcome"] == "quarantined"
    assert [q["rule_id"] for q in found["quarantined"]] == ["parse.bad_json"]
    assert planted["file"] not in json.dumps(found)


def test_trace_an_invalid_resource_to_validation(built: dict[str, Any]) -> None:
    planted = next(m for m in built["truth"]["malformed"] if m["rule"] == "validate.fhir_r4")
    found = report.trace_record(built["lake"], planted["file"], planted["offset"], reference_key=_ref())
    assert found["outcome"] == "quarantined"
    assert found["quarantined"][0]["rule_id"] == "validate.fhir_r4"
    assert [r["table"] for r in found["reached"]] == ["bronze.fhir_resources"]


def test_trace_a_good_record_to_silver_and_gold(built: dict[str, Any]) -> None:
    found = report.trace_record(built["lake"], built["original"], 1, reference_key=_ref())
    tables = [r["table"] for r in found["reached"]]
    assert tables[0] == "bronze.fhir_resources" and "silver.observations" in tables
    assert "gold.ml_patient_features" in tables
    assert found["quarantined"] == [] and found["merged_into"] is None


def test_trace_a_duplicate_to_its_merge(built: dict[str, Any]) -> None:
    content = landing_record_hash(built["landing"], built["duplicate"], 1)
    assert content is not None
    found = report.trace_record(built["lake"], built["duplicate"], 1, record_hash=content, reference_key=_ref())
    assert found["outcome"] == "merged as a duplicate"
    assert found["merged_into"] == {
        "file": report.file_hash(built["original"], reference_key=_ref()),
        "offset": 1,
        "run_id": RUN,
        "resource_type": "Observation",
    }


# --- the command ----------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(report_command)
    return app


def test_command_writes_html_and_json(built: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    result = CliRunner().invoke(
        _cli(), ["--lake", str(built["lake"].root), "--run", RUN, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert json.loads(out.with_suffix(".json").read_text())["run_id"] == RUN
    printed = CliRunner().invoke(_cli(), ["--lake", str(built["lake"].root), "--json"])
    assert printed.exit_code == 0
    assert json.loads(printed.stdout)["run_id"] == RERUN  # the latest run by default
    assert not report_path(built["lake"], RERUN).exists()  # --json alone writes no file


def test_command_traces_a_record(built: dict[str, Any]) -> None:
    result = CliRunner().invoke(
        _cli(), ["--lake", str(built["lake"].root), "--record", f"{built['duplicate']}:1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.stdout)["outcome"] == "merged as a duplicate"
    )  # landing found from lineage
    missing = CliRunner().invoke(
        _cli(), ["--lake", str(built["lake"].root), "--record", "fhir/nowhere.ndjson:3"]
    )
    assert missing.exit_code == 1 and "not found" in missing.stdout
    bad = CliRunner().invoke(_cli(), ["--lake", str(built["lake"].root), "--record", "no-offset"])
    assert bad.exit_code == 2


# --- the page in a real browser ---------------------------------------------------------------------


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(profile)},
    )


@pytest.mark.e2e
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium package is not installed"
)
def test_headless_chromium_renders_the_sections_and_ledger(
    built: dict[str, Any], page: str, tmp_path: Path
) -> None:
    html = tmp_path / "report.html"
    html.write_text(page, encoding="utf-8")
    dom = _chromium("--dump-dom", html.as_uri(), profile=tmp_path / "profile").stdout
    for section, _title in report.SECTIONS:
        assert f'id="{section}"' in dom, section
    shown = _cells(dom).ledger
    for row in ledger.for_run(built["lake"], RUN):
        assert shown[(str(row["stage"]), str(row["table_name"]))] == {
            c: row[c] for c in report.LEDGER_COLUMNS
        }
    assert 'id="lineage-svg"' in dom
    shot = tmp_path / "report.png"
    _chromium(
        f"--screenshot={shot}",
        "--window-size=1280,4200",
        html.as_uri(),
        profile=tmp_path / "profile",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_records_quarantined_again_are_reconciled_with_the_ledger(built: dict[str, Any]) -> None:
    rerun = report.gather(built["lake"], run_id=RERUN, audit_key=_key(), reference_key=_ref())
    new = built["lake"].read(QUARANTINE.name, where={"run_id": RERUN}).num_rows
    counted = sum(int(r["quarantined"]) for r in ledger.for_run(built["lake"], RERUN))
    assert rerun.quarantine_total == new < counted == rerun.quarantine_ledger_total
    assert f"the other {counted - new} were read again" in report.render_html(rerun)


def test_a_run_that_failed_before_its_ledger_is_reported_failed(
    built: dict[str, Any], tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    shutil.copytree(built["lake"].root, lake.root)
    with pytest.raises(RuntimeError), stage_run(lake, job="medlake_pipeline.ingest", run_id="r3"):
        raise RuntimeError("landing folder unreadable")
    failed = report.gather(lake, audit_key=_key(), reference_key=_ref())  # the latest run, though no ledger row names it
    assert failed.run_id == "r3" and failed.status == "failed"
    assert failed.tasks[0]["state"] == "FAIL"
    assert failed.tasks[0]["error"] == "RuntimeError in medlake_pipeline.ingest"  # never the exception's text
    html = report.render_html(failed)
    assert 'id="run-status">failed<' in html and "no ledger entries for this run" in html
    with pytest.raises(report.RunNotFound, match="r9"):
        report.gather(lake, run_id="r9", audit_key=_key(), reference_key=_ref())
