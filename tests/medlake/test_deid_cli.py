"""`medlake deid text`: JSON lines in, de-identified JSON lines with input offsets out; a
malformed row is reported by line number and skipped, the others go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlake.cli import app

NOTES = [
    {
        "id": "n1",
        "text": "PT SEEN BY DR. ABBOTT. SON BILL CALLED AT 1800. ADMITTED 7/22 FROM VIHC.",
    },
    {
        "id": 2,
        "text": "dr smith paged re: hypotension, pager 47321. MRN: W80-3459. CV: NSR, Foley in place.",
    },
    {"id": "n3", "text": "Neuro: A&Ox3. Resp: on 5 FiO2 40. abd soft."},
]
PHI = {"n1": ["ABBOTT", "BILL", "7/22", "VIHC"], 2: ["smith", "47321", "W80-3459"], "n3": []}
KEPT = {
    "n1": ["1800"],
    2: ["CV: NSR", "Foley"],
    "n3": ["Neuro: A&Ox3. Resp: on 5 FiO2 40. abd soft."],
}


@pytest.fixture()
def jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDLAKE_PROJECT_KEY", "11" * 32)
    lines = [json.dumps(NOTES[0]), "{not json", json.dumps(NOTES[1]), "", '{"id": "x", "text": 7}']
    lines += ['["a list"]', json.dumps(NOTES[2]), '{"text": "no id"}']
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_deid_text_writes_spans_and_skips_malformed_rows(jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "notes.deid.jsonl"
    result = CliRunner().invoke(
        app, ["deid", "text", "--in", str(jsonl), "--out", str(out), "--workers", "1"]
    )
    assert result.exit_code == 1, result.output  # rows were skipped
    for number in (2, 5, 6, 8):
        assert f"line {number}: skipped" in result.output
    assert "line 1:" not in result.output and "line 3:" not in result.output
    assert "{not json" not in result.output and "a list" not in result.output  # rows never quoted
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["n1", 2, "n3"]
    for note, row in zip(NOTES, rows):
        source = note["text"]
        removed = [source[s["start"] : s["end"]] for s in row["spans"]]
        for phi in PHI[note["id"]]:
            assert phi not in row["text"], (phi, row["text"])
            assert any(phi in r for r in removed), (phi, removed)
        for kept in KEPT[note["id"]]:
            assert kept in row["text"]
        assert all(set(s) == {"start", "end", "type"} for s in row["spans"])
    assert rows[2]["spans"] == [] and rows[2]["text"] == NOTES[2]["text"]


def test_deid_text_help_has_an_example() -> None:
    result = CliRunner().invoke(app, ["deid", "text", "--help"])
    assert result.exit_code == 0
    assert "Example: medlake deid text --in" in result.output
