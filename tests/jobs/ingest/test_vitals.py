"""Vitals ingest: device lines → bronze (watermark, MERGE on the sample hash) → silver.vitals_raw
and the resampled grids, on real Delta tables; the PhysioNet 2012 corpus line by line."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import mrn_key
from medlake.jobs.clean.resample import resample
from medlake.jobs.ingest import vitals
from medlake.lake import Lake
from medlake.ledger import for_run
from medlake.registry import (
    BRONZE_VITALS,
    QUARANTINE,
    SILVER_VITALS_1MIN,
    SILVER_VITALS_RAW,
    VITALS_WATERMARK,
    staging_name,
)
from medlake.sample.landing import generate
from medlake.sample.vocab import MRN_SYSTEM

KEY = b"k" * 32
MAX_SHIFT = 365
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "vitals" / "physionet2012_icu"
T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def line(
    seconds: int,
    value: Any,
    *,
    metric: str = "heart_rate",
    device: str = "MON-1",
    mrn: str = "MRN-1",
    **extra: Any,
) -> str:
    fields = {
        "device_id": device,
        "mrn": mrn,
        "mrn_system": MRN_SYSTEM,
        "metric": metric,
        "value": value,
        "ts": (T0 + timedelta(seconds=seconds)).isoformat(),
        **extra,
    }
    return json.dumps({k: v for k, v in fields.items() if v is not None})


def write(landing: Path, name: str, lines: list[str], *, mode: str = "w") -> Path:
    path = landing / "vitals" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as handle:
        handle.write("".join(f"{x}\n" for x in lines))
    return path


def run(landing: Path, lake: Lake, run_id: str) -> dict[str, Any]:
    """ingest + to_staging, then promote staging as the gate would (upsert on the silver key)."""
    ingested = vitals.ingest(landing, lake, run_id=run_id)
    staged = vitals.to_staging(
        lake, run_id=run_id, key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    for name in ("silver.vitals_raw", "silver.vitals_1min", "silver.vitals_1h"):
        lake.upsert(name, lake.read(staging_name(name)))
    entries = {(e.stage, e.table_name): e for e in ingested.entries + staged.entries}
    assert all(e.balanced for e in entries.values())
    return entries


# --- parsing ----------------------------------------------------------------------------------


def test_malformed_lines_are_quarantined_naming_file_line_and_rule(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.jsonl",
        [
            line(0, 72),
            '{"device_id": "MON-1", "mrn": ',
            line(1, 72, ts=None),
            line(2, "n/a"),
            line(3, 1.0, metric="glucose_cgm"),
            line(4, 72, ts="2024-03-01T10:00:04"),
            "[1, 2]",
            "",
        ],
    )
    write(
        tmp_path,
        "b.csv",
        [
            "device_id,mrn,mrn_system,metric,value,unit,ts",
            f"MON-2,MRN-1,{MRN_SYSTEM},spo2,97,%,2024-03-01T10:00:00Z",
            f"MON-2,MRN-1,{MRN_SYSTEM},spo2,97",
        ],
    )
    lake = Lake(tmp_path / "lake")
    (entry,) = vitals.ingest(tmp_path, lake, run_id="r1").entries
    assert (entry.records_in, entry.records_out, entry.quarantined) == (9, 2, 7)
    found = {
        (q["source_file"], q["source_offset"]): (q["rule_id"], q["reason"])
        for q in lake.read(QUARANTINE.name).to_pylist()
    }
    assert {k: v[0] for k, v in found.items()} == {
        ("vitals/a.jsonl", 2): "parse.vitals_bad_json",
        ("vitals/a.jsonl", 3): "parse.vitals_missing_field",
        ("vitals/a.jsonl", 4): "parse.vitals_bad_value",
        ("vitals/a.jsonl", 5): "parse.vitals_unknown_metric",
        ("vitals/a.jsonl", 6): "parse.vitals_bad_time",
        ("vitals/a.jsonl", 7): "parse.vitals_bad_json",
        ("vitals/b.csv", 3): "parse.vitals_bad_csv",
    }
    assert found[("vitals/a.jsonl", 3)][1] == "vitals/a.jsonl line 3: no ts"
    assert "MRN-1" not in " ".join(reason for _, reason in found.values())
    bronze = lake.read(BRONZE_VITALS.name).to_pylist()
    assert sorted((r["_source_file"], r["_source_offset"]) for r in bronze) == [
        ("vitals/a.jsonl", 1),
        ("vitals/b.csv", 2),
    ]
    assert bronze[0]["raw"] in (
        line(0, 72),
        f"MON-2,MRN-1,{MRN_SYSTEM},spo2,97,%,2024-03-01T10:00:00Z",
    )


# --- the watermark ----------------------------------------------------------------------------


def test_an_appended_file_is_read_from_the_watermark(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write(tmp_path, "s.jsonl", [line(i, 70 + i) for i in range(3)])
    first = run(tmp_path, lake, "r1")
    write(tmp_path, "s.jsonl", [line(i, 70 + i) for i in range(3, 5)], mode="a")
    second = run(tmp_path, lake, "r2")
    assert first[("ingest", BRONZE_VITALS.name)].records_in == 3
    assert second[("ingest", BRONZE_VITALS.name)].records_in == 2
    offsets = lake.read(BRONZE_VITALS.name, where={"_run_id": "r2"}).column("_source_offset")
    assert sorted(offsets.to_pylist()) == [4, 5]
    (mark,) = lake.read(VITALS_WATERMARK.name).to_pylist()
    assert (mark["lines_consumed"], mark["run_id"]) == (5, "r2")
    assert mark["bytes_consumed"] == (tmp_path / "vitals/s.jsonl").stat().st_size


def test_a_line_being_written_waits_for_the_next_run(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = write(tmp_path, "s.jsonl", [line(0, 70)])
    with path.open("a") as handle:
        handle.write(line(1, 71)[:20])  # no newline yet
    assert run(tmp_path, lake, "r1")[("ingest", BRONZE_VITALS.name)].records_in == 1
    with path.open("a") as handle:
        handle.write(line(1, 71)[20:] + "\n")
    second = run(tmp_path, lake, "r2")[("ingest", BRONZE_VITALS.name)]
    assert (second.records_in, second.records_out, second.quarantined) == (1, 1, 0)


def test_the_same_file_twice_never_double_counts(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lines = [line(i * 30, 70 + i) for i in range(6)]
    write(tmp_path, "a.jsonl", lines)
    run(tmp_path, lake, "r1")
    again = run(tmp_path, lake, "r2")  # unchanged: nothing read
    assert again[("ingest", BRONZE_VITALS.name)].records_in == 0
    write(tmp_path, "copy/a-resent.jsonl", lines)  # delivered again under another name
    resent = run(tmp_path, lake, "r3")[("ingest", BRONZE_VITALS.name)]
    assert (resent.records_in, resent.records_out, resent.merged) == (6, 0, 6)
    assert lake.count(BRONZE_VITALS.name) == 6
    silver = lake.read(SILVER_VITALS_1MIN.name).to_pylist()
    assert sum(r["sample_count"] for r in silver) == 6


def test_a_rewritten_file_is_read_whole_and_its_old_samples_merge(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write(tmp_path, "a.jsonl", [line(0, 70), line(30, 71)])
    run(tmp_path, lake, "r1")
    write(tmp_path, "a.jsonl", [line(0, 70), line(30, 99), line(60, 72)])  # line 2 corrected
    entries = run(tmp_path, lake, "r2")
    ingest = entries[("ingest", BRONZE_VITALS.name)]
    assert (ingest.records_in, ingest.records_out, ingest.merged) == (3, 2, 1)
    raw = {r["measured_at"]: r["value_num"] for r in lake.read(SILVER_VITALS_RAW.name).to_pylist()}
    assert sorted(raw.values()) == [70, 72, 99]  # the corrected sample replaced the old one


def test_rerunning_after_a_lost_watermark_adds_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write(tmp_path, "a.jsonl", [line(i * 20, 70) for i in range(4)])
    first = run(tmp_path, lake, "r1")
    before = {n: lake.read(n).num_rows for n in (BRONZE_VITALS.name, SILVER_VITALS_1MIN.name)}
    shutil.rmtree(lake.path(VITALS_WATERMARK.name))  # as if the run crashed before moving it
    assert run(tmp_path, lake, "r1") == first  # the task retried: the same counts, once
    assert {n: lake.read(n).num_rows for n in before} == before
    assert all(r["balanced"] for r in for_run(lake, "r1"))


# --- silver -----------------------------------------------------------------------------------


def test_silver_samples_are_the_mrn_person_shifted_typed_and_deduplicated(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write(
        tmp_path,
        "a.jsonl",
        [
            line(0, 70),
            line(0, 71),  # same device, metric and time: merged
            line(0, 98.6, metric="temperature", unit="[degF]"),
            line(0, 400),  # impossible
            line(0, 97, metric="spo2", unit="%", device="OXI"),
        ],
    )
    entries = run(tmp_path, lake, "r1")
    silver = entries[("silver", SILVER_VITALS_RAW.name)]
    assert (silver.records_in, silver.records_out, silver.quarantined, silver.merged) == (
        5,
        3,
        1,
        1,
    )
    person = mrn_key(KEY, MRN_SYSTEM, "MRN-1")
    shift = date_shift_days(KEY, person, max_days=MAX_SHIFT)
    rows = {r["code"]: r for r in lake.read(SILVER_VITALS_RAW.name).to_pylist()}
    assert {r["person_key"] for r in rows.values()} == {person}
    # a silver column ingest does not fill (the provenance a re-key sets) is there, null
    assert {r["_prelink_key"] for r in rows.values()} == {None}
    assert rows["8867-4"]["measured_at"] == T0 + timedelta(days=shift)
    assert rows["8867-4"]["value_num"] == 71  # the last one received
    assert (rows["8310-5"]["value_unit"], rows["8310-5"]["value_num"]) == ("Cel", 37)
    assert rows["8310-5"]["_unit_converted_from"] == "[degF]"
    assert rows["59408-5"]["_range_flag"] == "normal"
    (refused,) = lake.read(QUARANTINE.name).to_pylist()
    assert refused["rule_id"] == "ranges.impossible"
    assert "between 0 and 300 /min (gate rule heart_rate_range)" in refused["reason"]
    assert "MRN-1" not in refused["raw_record"]


def test_an_incremental_run_recomputes_only_the_touched_buckets(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write(tmp_path, "a.jsonl", [line(0, 60), line(30, 62), line(30 * 60, 80)])
    run(tmp_path, lake, "r1")
    write(tmp_path, "a.jsonl", [line(45, 70), line(10 * 60, 75)], mode="a")
    entries = run(tmp_path, lake, "r2")
    staged = lake.read(staging_name(SILVER_VITALS_1MIN.name)).to_pylist()
    person = mrn_key(KEY, MRN_SYSTEM, "MRN-1")
    shift = timedelta(days=date_shift_days(KEY, person, max_days=MAX_SHIFT))
    minutes = sorted(int((r["bucket_start"] - T0 - shift) / timedelta(minutes=1)) for r in staged)
    assert minutes == list(range(31))  # from the first new sample's bucket to the next old one
    first = next(r for r in staged if r["bucket_start"] == T0 + shift)
    assert (first["sample_count"], first["value_mean"]) == (3, 64)  # old and new samples
    assert entries[("resample", SILVER_VITALS_1MIN.name)].records_in == 5
    every = lake.read(SILVER_VITALS_RAW.name)
    once = resample(every, every=timedelta(minutes=1), max_gap=timedelta(minutes=5))
    promoted = lake.read(SILVER_VITALS_1MIN.name).to_pylist()
    columns = ("bucket_start", "value_mean", "value_last", "sample_count", "filled")
    assert sorted(tuple(r[c] for c in columns) for r in promoted) == sorted(
        tuple(r[c] for c in columns) for r in once.buckets.to_pylist()
    )


def test_the_sample_hospital_streams(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "landing", patients=40, seed=11)
    truth = json.loads(manifest.truth.read_text())
    lake = Lake(tmp_path / "lake")
    entries = run(manifest.out, lake, "r1")
    ingest = entries[("ingest", BRONZE_VITALS.name)]
    planted = [m for m in truth["malformed"] if m["file"].startswith("vitals/")]
    assert ingest.records_in == sum(
        t["records"] for s, t in truth["files"].items() if s.startswith("vitals/")
    )
    duplicates = [v for v in truth["vitals"] if v["kind"] == "duplicate_line"]
    assert (ingest.quarantined, ingest.merged) == (len(planted), len(duplicates))
    quarantined = {
        (q["source_file"], q["source_offset"], q["rule_id"])
        for q in lake.read(QUARANTINE.name).to_pylist()
    }
    for m in planted:
        assert (m["file"], m["offset"], m["rule"]) in quarantined
    silver = entries[("silver", SILVER_VITALS_RAW.name)]
    impossible = [v for v in truth["vitals"] if v["kind"] == "impossible"]
    assert silver.quarantined == len(impossible)
    assert silver.merged == sum(1 for v in truth["vitals"] if v["kind"] == "duplicate_time")
    rules = Counter(
        q["rule_id"] for q in lake.read(QUARANTINE.name, where={"stage": "ranges"}).to_pylist()
    )
    assert rules == {"ranges.impossible": len(impossible)}
    streams = [v for v in truth["vitals"] if v["kind"] == "stream"]
    persons = set(lake.read(SILVER_VITALS_RAW.name, columns=["person_key"]).column(0).to_pylist())
    assert len(persons) == len({s["person"] for s in streams})
    # the skewed monitor's grid starts 95 s earlier than its clock says, and its gap stays empty
    skewed = next(s["device"] for s in streams if s["clock_offset_s"])
    raw = lake.read(SILVER_VITALS_RAW.name, where={"device_id": skewed, "code": "8867-4"})
    grid = lake.read(SILVER_VITALS_1MIN.name, where={"device_id": skewed, "code": "8867-4"})
    first = min(raw.column("measured_at").to_pylist()) - timedelta(seconds=95)
    assert min(grid.column("bucket_start").to_pylist()) == first.replace(second=0)
    last = [r["value_last"] for r in sorted(grid.to_pylist(), key=lambda r: r["bucket_start"])]
    longest = max(len(run) for run in "".join("x" if v is None else "." for v in last).split("."))
    assert longest >= 18  # 20 minutes without a sample: no value carried, none interpolated


# --- PhysioNet 2012 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def physionet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not CORPUS.is_dir():
        pytest.skip("the PhysioNet 2012 corpus is not on this machine")
    root = tmp_path_factory.mktemp("physionet")
    folder = root / "landing" / "vitals" / vitals.PHYSIONET_DIR
    folder.mkdir(parents=True)
    for path in sorted(CORPUS.glob("1*.txt")):
        shutil.copy(path, folder / path.name)
    lake = Lake(root / "lake")
    entries = run(root / "landing", lake, "r1")
    return {"folder": folder, "lake": lake, "entries": entries}


def test_every_physionet_line_is_accounted_for(physionet: dict[str, Any]) -> None:
    lake, folder = physionet["lake"], physionet["folder"]
    files = sorted(folder.glob("*.txt"))
    assert len(files) == 100
    lines = {
        (f"vitals/physionet/{p.name}", n): text
        for p in files
        for n, text in enumerate(p.read_text().splitlines(), start=1)
        if n > 1 or text != vitals.PHYSIONET_HEADER
    }
    assert all(p.read_text().splitlines()[0] == vitals.PHYSIONET_HEADER for p in files)
    ingest = physionet["entries"][("ingest", BRONZE_VITALS.name)]
    assert ingest.records_in == len(lines)
    bronze = lake.read(BRONZE_VITALS.name).to_pylist()
    kept = {(r["_source_file"], r["_source_offset"]) for r in bronze}
    refused = {
        (q["source_file"], q["source_offset"])
        for q in lake.read(QUARANTINE.name, where={"stage": "parse"}).to_pylist()
    }
    # a line neither kept nor refused repeats a kept line of its file verbatim (a merged duplicate)
    texts = {(r["_source_file"], r["raw"]) for r in bronze}
    merged = [k for k in lines if k not in kept and k not in refused]
    assert all((k[0], lines[k]) in texts for k in merged)
    assert len(merged) == ingest.merged and len(refused) == ingest.quarantined


def test_physionet_vitals_reach_silver_labs_stay_in_bronze(physionet: dict[str, Any]) -> None:
    lake, entries = physionet["lake"], physionet["entries"]
    silver = entries[("silver", SILVER_VITALS_RAW.name)]
    bronze = lake.read(BRONZE_VITALS.name, columns=["metric"]).column(0).to_pylist()
    params = Counter(bronze)
    assert silver.bronze_only == sum(
        c for p, c in params.items() if p not in vitals.PHYSIONET_VITALS
    )
    assert params["HR"] > 0 and params["pH"] > 0
    rows = lake.read(SILVER_VITALS_RAW.name, columns=["code", "device_id"]).to_pylist()
    assert {r["code"] for r in rows} == {"8867-4", "8310-5", "9279-1", "8480-6", "8462-4", "8478-0"}
    assert {r["device_id"] for r in rows} == {"monitor", "nibp_cuff", "arterial_line"}
    assert lake.count(SILVER_VITALS_1MIN.name) > 0
    # the 1-hour grid counts each kept sample once
    hourly = lake.read("silver.vitals_1h", columns=["sample_count"]).column(0).to_pylist()
    assert (
        sum(hourly) == entries[("resample", "silver.vitals_1h")].records_out == silver.records_out
    )


def test_a_physionet_value_of_minus_one_is_missing() -> None:
    data = b"Time,Parameter,Value\n00:00,RecordID,1\n00:05,HR,-1\n00:05,Weight,-1\n"
    delta = vitals.plan(data, name="x.txt", mark=None)
    out = list(vitals.parse_file(data, delta, layout="physionet", name="x.txt"))
    assert [o.get("rule_id") for o in out] == [None, "parse.vitals_missing_value", None]
    assert out[0]["patient_id"] == "1" and out[2]["metric"] == "Weight"


def test_the_gate_promotes_staged_vitals_with_their_suites(tmp_path: Path) -> None:
    from medlake.expectations.gate import run_gate

    lake = Lake(tmp_path / "lake")
    write(tmp_path, "a.jsonl", [line(i * 40, 70 + i % 5) for i in range(30)])
    write(tmp_path, "b.jsonl", [line(i * 40, 97, metric="spo2", device="OXI") for i in range(30)])
    ingested = vitals.ingest(tmp_path, lake, run_id="r1")
    vitals.to_staging(
        lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    tables = [SILVER_VITALS_RAW.name, SILVER_VITALS_1MIN.name, "silver.vitals_1h"]
    entries = {e.table_name: e for e in run_gate(lake, run_id="r1", tables=tables)}
    assert entries[SILVER_VITALS_RAW.name].records_out == 60
    assert all(e.quarantined == 0 and e.balanced for e in entries.values())
    assert (
        lake.count(SILVER_VITALS_1MIN.name) == lake.count(staging_name(SILVER_VITALS_1MIN.name)) > 0
    )
