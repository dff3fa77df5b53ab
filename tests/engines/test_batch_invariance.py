"""Batch invariance: the FHIR chain's batch-local steps give the same rows whatever the batch cuts.

The engines cut a source wherever their batch size falls (the embedded engine's ``batch_rows``,
Spark's Arrow batches per partition); a step that depended on its neighbours in the batch
would give other rows on the other engine. Hypothesis re-cuts real Synthea resources (and two
broken records) at random points.
"""

from __future__ import annotations

import functools
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake.engines import DeltaSource, FileSource, QuarantineSink, Target
from medlake.engines.embedded import EmbeddedEngine
from medlake.jobs.clean import fhir_steps
from medlake.jobs.ingest import fhir
from medlake.quarantine import Split
from medlake.registry import BRONZE_FHIR, SILVER_OBSERVATIONS

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "fhir"
KEY = bytes(range(32))
NOW = datetime(2026, 1, 2, tzinfo=UTC)


@functools.cache
def raw_records() -> pa.Table:
    """Raw records of three Synthea bundles and a bulk file, plus a broken line."""
    rows: list[dict[str, Any]] = []
    for path in sorted((CORPUS / "synthea_bundles_covid_r4").glob("*.json"))[:3]:
        rows += list(fhir.read_file(path, name=path.name))
    for path in sorted((CORPUS / "synthea_bulk_10pt").glob("Condition*.ndjson"))[:1]:
        rows += list(fhir.read_file(path, name=path.name))
    rows.append({"source_file": "broken.ndjson", "source_offset": 1, "text": '{"resourceType": "Obs',
                 "error_rule": None, "error_reason": None})
    return pa.Table.from_pylist(rows, schema=fhir.RAW_SCHEMA)


@functools.cache
def bronze_rows() -> pa.Table:
    return fhir.to_bronze(raw_records(), run_id="r", ingested_at=NOW).good


def cut(table: pa.Table, points: list[int]) -> list[pa.RecordBatch]:
    """The table as record batches cut at ``points`` (offsets, any order, repeats allowed)."""
    edges = sorted({0, table.num_rows, *(p % (table.num_rows + 1) for p in points)})
    return [
        batch
        for start, end in itertools.pairwise(edges)
        for batch in table.slice(start, end - start).combine_chunks().to_batches()
    ]


def canonical(splits: list[Split]) -> tuple[list[str], list[str]]:
    good = [json.dumps(r, sort_keys=True, default=str) for s in splits for r in s.good.to_pylist()]
    bad = [
        json.dumps({k: v for k, v in r.items() if k != "quarantined_at"}, sort_keys=True, default=str)
        for s in splits
        for r in s.quarantined.to_pylist()
    ]
    return sorted(good), sorted(bad)


STEPS = {
    "to_bronze": (raw_records, functools.partial(fhir.to_bronze, run_id="r", ingested_at=NOW)),
    "flatten_observations": (
        bronze_rows,
        functools.partial(fhir.flatten_resources, resource_type="Observation", key=KEY),
    ),
    "flatten_conditions": (
        bronze_rows,
        functools.partial(fhir.flatten_resources, resource_type="Condition", key=KEY),
    ),
    "bronze_only": (bronze_rows, functools.partial(fhir_steps.bronze_only, viewed=())),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.sampled_from(sorted(STEPS)),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_a_step_gives_the_same_rows_whatever_the_batch_cuts(step: str, points: list[int]) -> None:
    rows, fn = STEPS[step]
    table = rows()
    whole = fn(table.combine_chunks().to_batches()[0])
    pieces = [fn(batch) for batch in cut(table, points)]
    assert canonical(pieces) == canonical([whole])
    assert sum(p.counters.get(k, 0) for p in pieces for k in p.counters) == sum(whole.counters.values())


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch_rows=st.integers(min_value=1, max_value=400))
def test_the_embedded_engine_writes_the_same_table_whatever_its_batch_size(
    tmp_path_factory: Any, batch_rows: int
) -> None:
    root = tmp_path_factory.mktemp("invariance")
    files = [
        (str(p), p.name) for p in sorted((CORPUS / "synthea_bundles_covid_r4").glob("*.json"))[:2]
    ]
    engine = EmbeddedEngine(batch_rows=batch_rows)
    source = FileSource(files, reader=fhir.read_records, schema=fhir.RAW_SCHEMA)
    sink = QuarantineSink(str(root / "quarantine"), run_id="r")
    read = engine.batch_local(
        functools.partial(fhir.to_bronze, run_id="r", ingested_at=NOW),
        source=source,
        target=Target(str(root / "bronze"), BRONZE_FHIR.schema),
        quarantine=sink,
    )
    flat = engine.batch_local(
        functools.partial(fhir.flatten_resources, resource_type="Observation", key=KEY),
        source=DeltaSource(str(root / "bronze")),
        target=Target(str(root / "observations"), SILVER_OBSERVATIONS.schema),
        quarantine=sink,
    )
    reference = EmbeddedEngine(batch_rows=100_000).batch_local(
        functools.partial(fhir.flatten_resources, resource_type="Observation", key=KEY),
        source=DeltaSource(str(root / "bronze")),
        target=Target(str(root / "reference"), SILVER_OBSERVATIONS.schema),
        quarantine=sink,
    )
    assert read.rows_in == read.good + read.quarantined > 0
    assert (flat.good, flat.quarantined, flat.counters) == (
        reference.good,
        reference.quarantined,
        reference.counters,
    )

    def table(name: str) -> list[str]:
        rows = DeltaTable(str(root / name)).to_pyarrow_dataset().to_table().to_pylist()
        return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)

    assert table("observations") == table("reference")
    assert len(table("observations")) == flat.good > 0


def test_worker_processes_write_what_one_process_writes(tmp_path: Path) -> None:
    bronze = bronze_rows()
    source = str(tmp_path / "bronze")
    from deltalake import write_deltalake

    write_deltalake(source, bronze)
    step = functools.partial(fhir.flatten_resources, resource_type="Observation", key=KEY)
    written = {}
    for label, engine in (
        ("workers", EmbeddedEngine(batch_rows=37, workers=2, parallel_min_rows=0)),
        ("in-process", EmbeddedEngine(batch_rows=37, workers=1)),
    ):
        applied = engine.batch_local(
            step,
            source=DeltaSource(source),
            target=Target(str(tmp_path / label), SILVER_OBSERVATIONS.schema),
            quarantine=QuarantineSink(str(tmp_path / f"{label}-quarantine"), run_id="r"),
        )
        engine.close()
        rows = DeltaTable(str(tmp_path / label)).to_pyarrow_dataset().to_table().to_pylist()
        written[label] = (applied.good, applied.counters, sorted(json.dumps(r, default=str) for r in rows))
    assert written["workers"] == written["in-process"]
    assert written["workers"][0] > 0
