"""The sample hospital's vital-sign streams: both layouts, the planted defects where the truth
file says, the same people (MRNs) as in FHIR, same seed → same bytes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from medlake.jobs.ingest import vitals
from medlake.sample.landing import SampleManifest, generate
from medlake.sample.vitals import GAP, SKEW, SKEWED_DEVICE

PATIENTS, SEED = 40, 11


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleManifest, dict[str, Any]]:
    manifest = generate(tmp_path_factory.mktemp("vitals") / "out", patients=PATIENTS, seed=SEED)
    return manifest, json.loads(manifest.truth.read_text())


def parsed(out: Path, name: str) -> dict[int, dict[str, Any]]:
    """Every record line of a file, parsed by the ingest, by line number."""
    data = (out / name).read_bytes()
    layout = "jsonl" if name.endswith(".jsonl") else "csv"
    records = vitals.parse_file(
        data, vitals.plan(data, name=name, mark=None), layout=layout, name=name
    )
    return {r.get("_source_offset") or r["source_offset"]: r for r in records}


def test_streams_in_both_layouts_counted_in_the_truth(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    manifest, truth = landing
    for layout in ("jsonl", "csv"):
        files = sorted((manifest.out / "vitals" / layout).iterdir())
        assert files and truth["files"][f"vitals/{layout}"]["files"] == len(files)
        lines = sum(len(parsed(manifest.out, f"vitals/{layout}/{p.name}")) for p in files)
        assert truth["files"][f"vitals/{layout}"]["records"] == lines


def test_samples_carry_the_mrn_of_a_person_in_fhir(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    manifest, truth = landing
    streams = [v for v in truth["vitals"] if v["kind"] == "stream"]
    for stream in streams:
        mrns = {
            r["patient_id"]
            for r in parsed(manifest.out, stream["file"]).values()
            if "patient_id" in r
        }
        assert len(mrns) == 1 and mrns <= set(truth["phi"]["mrns"])
    assert len({s["device"] for s in streams}) == len(streams)


def test_planted_defects_are_where_the_truth_says(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    manifest, truth = landing
    malformed = [m for m in truth["malformed"] if m["file"].startswith("vitals/")]
    assert {m["rule"] for m in malformed} == {
        "parse.vitals_bad_json",
        "parse.vitals_missing_field",
        "parse.vitals_bad_value",
        "parse.vitals_unknown_metric",
    }
    for m in malformed:
        assert parsed(manifest.out, m["file"])[m["offset"]]["rule_id"] == m["rule"]
    for planted in (v for v in truth["vitals"] if v["kind"] == "impossible"):
        row = parsed(manifest.out, planted["file"])[planted["offset"]]
        assert (row["metric"], row["value"]) == (planted["metric"], planted["value"])
    for planted in (v for v in truth["vitals"] if v["kind"] == "duplicate_line"):
        rows = parsed(manifest.out, planted["file"])
        same = [
            n
            for n, r in rows.items()
            if r.get("_record_hash") == rows[planted["offset"]]["_record_hash"]
        ]
        assert len(same) == 2


def test_the_skewed_monitor_and_the_gap(landing: tuple[SampleManifest, dict[str, Any]]) -> None:
    manifest, truth = landing
    (skewed,) = [
        v for v in truth["vitals"] if v["kind"] == "stream" and v["device"] == SKEWED_DEVICE
    ]
    assert skewed["clock_offset_s"] == -SKEW.total_seconds()
    (gap,) = [v for v in truth["vitals"] if v["kind"] == "gap"]
    start, end = (datetime.fromisoformat(gap[k]) for k in ("start", "end"))
    assert end - start == GAP[1] - GAP[0] == timedelta(minutes=20)
    times = [
        r["measured_at"] - SKEW
        for r in parsed(manifest.out, gap["file"]).values()
        if "measured_at" in r
    ]
    assert times and not [t for t in times if start <= t < end]


def test_a_small_hospital_has_clean_streams_and_generation_is_deterministic(tmp_path: Path) -> None:
    one = generate(tmp_path / "a", patients=12, seed=4)
    two = generate(tmp_path / "b", patients=12, seed=4)
    truth = json.loads(one.truth.read_text())
    assert not [m for m in truth["malformed"] if m["file"].startswith("vitals/")]
    assert [v["kind"] for v in truth["vitals"]] == ["stream"] * 3
    for path in sorted((one.out / "vitals").rglob("*.*")):
        assert path.read_bytes() == (two.out / path.relative_to(one.out)).read_bytes()


def test_defects_go_to_streams_long_enough_to_hold_them(tmp_path: Path) -> None:
    """At 10,000 patients (seed 7, ``make bench``) the first monitored stay is still open and
    has no samples: the defects go to the next long-enough streams instead of failing."""
    from medlake.sample.people import Hospital
    from medlake.sample.truth import Truth
    from medlake.sample.vitals import MIN_PLANTED_LINES, write_vitals

    truth = Truth(seed=7, patients=10_000)
    write_vitals(Hospital(patients=10_000, seed=7), tmp_path, truth)
    streams = [v for v in truth.as_dict()["vitals"] if v["kind"] == "stream"]
    assert streams[0]["samples"] == 0  # the open stay: nothing to plant in
    planted = {v["file"] for v in truth.as_dict()["vitals"] if v["kind"] not in ("stream", "gap")}
    assert len(planted) == 2 and streams[0]["file"] not in planted
    assert all(s["samples"] >= MIN_PLANTED_LINES for s in streams if s["file"] in planted)
