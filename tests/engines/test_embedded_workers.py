"""The embedded engine's worker processes: which steps run in them, and what they do there.

A parallel step opens its source's sealed columns, transforms and seals its target's and its side
outputs' columns in the worker (the main process only reads, spools and writes): what lands on disk is ciphertext,
and what it opens is what one process would have written. Workers start for a step of
``parallel_min_rows`` rows; once started, any later step of two batches or more uses them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from medlake.config import load_settings
from medlake.engines import DeltaSource, QuarantineSink, Target
from medlake.engines.embedded import EmbeddedEngine
from medlake.governance.at_rest import PREFIX, lake_for
from medlake.lake import Lake
from medlake.registry import BRONZE_FHIR

ROWS = 30


def _bronze_rows() -> pa.Table:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    return pa.Table.from_pylist(
        [
            {
                "_record_hash": f"h{i:03d}",
                "resource_type": "Patient",
                "resource_id": f"p{i}",
                "raw": f'{{"resourceType": "Patient", "id": "p{i}", "name": [{{"family": "Okafor{i}"}}]}}',
                "_source_file": f"patients-{i % 3}.ndjson",
                "_source_offset": i,
                "_run_id": "r",
                "_ingested_at": now,
            }
            for i in range(ROWS)
        ],
        schema=BRONZE_FHIR.schema,
    )


def _copy(engine: EmbeddedEngine, lake: Lake, out: Path) -> dict[str, int]:
    from engine_probe import copied_in  # on sys.path by the fixture: the workers import it by name

    applied = engine.batch_local(
        copied_in,
        source=DeltaSource(lake.uri(BRONZE_FHIR.name), decode=lake.decoder(BRONZE_FHIR.name)),
        target=Target(str(out), BRONZE_FHIR.schema, encode=lake.encoder(BRONZE_FHIR.name)),
        quarantine=QuarantineSink(str(out.parent / f"{out.name}-quarantine"), run_id="r"),
        sides={
            "copy": Target(
                str(out.parent / f"{out.name}-side"), BRONZE_FHIR.schema, encode=lake.encoder(BRONZE_FHIR.name)
            )
        },
    )
    assert applied.rows_in == applied.good == applied.sides["copy"] == ROWS
    return dict(applied.counters)


def _processes(counters: dict[str, int]) -> set[int]:
    return {int(name.removeprefix("pid:")) for name in counters if name.startswith("pid:")}


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned workers inherit sys.path
    lake = lake_for(load_settings(), tmp_path / "lake")
    lake.insert_new(BRONZE_FHIR.name, _bronze_rows())
    assert all(r.startswith(PREFIX) for r in Lake(lake.root).read(BRONZE_FHIR.name).column("raw").to_pylist())
    return lake


def test_workers_open_transform_and_seal_what_one_process_would(sealed: Lake, tmp_path: Path) -> None:
    engine = EmbeddedEngine(batch_rows=7, workers=2, parallel_min_rows=0)
    try:
        counters = _copy(engine, sealed, tmp_path / "copy")
    finally:
        engine.close()
    assert os.getpid() not in _processes(counters) and len(_processes(counters)) >= 1
    assert counters["plain"] == ROWS  # the step saw the opened records
    opened = sealed.decoder(BRONZE_FHIR.name)
    assert opened is not None
    for written in ("copy", "copy-side"):  # the target's rows and the side output's alike
        on_disk = DeltaTable(str(tmp_path / written)).to_pyarrow_table()
        assert all(r.startswith(PREFIX) for r in on_disk.column("raw").to_pylist())  # sealed there
        assert opened(on_disk).sort_by("_record_hash").to_pylist() == _bronze_rows().to_pylist()


def test_started_workers_take_later_steps_of_two_batches_or_more(sealed: Lake, tmp_path: Path) -> None:
    engine = EmbeddedEngine(batch_rows=7, workers=2, parallel_min_rows=10**9)
    try:
        assert _processes(_copy(engine, sealed, tmp_path / "before")) == {os.getpid()}
        engine.pool()  # as an earlier, larger step of the same process would have
        assert os.getpid() not in _processes(_copy(engine, sealed, tmp_path / "after"))
        one_batch = EmbeddedEngine(batch_rows=ROWS, workers=2, parallel_min_rows=10**9)
        one_batch._pool = engine.pool()
        assert _processes(_copy(one_batch, sealed, tmp_path / "one-batch")) == {os.getpid()}
    finally:
        engine.close()


def test_side_outputs_are_sealed_in_the_workers(
    sealed: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine_probe import MAIN_PID, copied_in, sealed_in_a_worker

    monkeypatch.setenv(MAIN_PID, str(os.getpid()))  # the spawned workers inherit it
    engine = EmbeddedEngine(batch_rows=7, workers=2, parallel_min_rows=0)
    try:
        applied = engine.batch_local(
            copied_in,
            source=DeltaSource(sealed.uri(BRONZE_FHIR.name), decode=sealed.decoder(BRONZE_FHIR.name)),
            target=Target(str(tmp_path / "copy"), BRONZE_FHIR.schema),
            quarantine=QuarantineSink(str(tmp_path / "quarantine"), run_id="r"),
            sides={"copy": Target(str(tmp_path / "side"), BRONZE_FHIR.schema, encode=sealed_in_a_worker)},
        )
    finally:
        engine.close()
    assert applied.sides["copy"] == ROWS
    assert DeltaTable(str(tmp_path / "side")).to_pyarrow_dataset().count_rows() == ROWS


def test_a_keyed_step_cuts_a_larger_source_into_more_buckets_with_the_same_result(tmp_path: Path) -> None:
    """A bucket holds about ``bucket_rows`` rows: the bucket count grows with the source, not
    the memory of one bucket; every key's rows still arrive in one call."""
    from engine_probe import per_key

    keys = [f"k{i % 37}" for i in range(1_000)]
    write_deltalake(str(tmp_path / "src"), pa.table({"k": keys, "v": list(range(1_000))}))
    schema = pa.schema([pa.field("k", pa.string()), pa.field("n", pa.int64())])
    source = DeltaSource(str(tmp_path / "src"))
    written = {}
    for bucket_rows in (10_000, 50):
        engine = EmbeddedEngine(batch_rows=64, buckets=4, bucket_rows=bucket_rows)
        written[bucket_rows] = engine.buckets_for(source)
        engine.keyed(
            per_key,
            source=source,
            keys=("k",),
            target=Target(str(tmp_path / f"out-{bucket_rows}"), schema),
            quarantine=QuarantineSink(str(tmp_path / f"q-{bucket_rows}"), run_id="r"),
        )
    assert written == {10_000: 4, 50: 20}  # at least ``buckets``; else rows / bucket_rows
    few, many = (
        sorted(DeltaTable(str(tmp_path / f"out-{b}")).to_pyarrow_table().to_pylist(), key=str)
        for b in (10_000, 50)
    )
    assert many == few and len(few) == 37 and sum(r["n"] for r in few) == 1_000
