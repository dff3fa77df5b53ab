"""Pending batches read at the bronze versions a curation run's trigger names (issue #14)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pyarrow as pa
import pytest

from medlake import pending
from medlake.lake import Lake
from medlake.registry import BRONZE_FHIR, BRONZE_HL7V2, CURATION
from medlake.sources import last_versions, trigger_versions

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def fhir_batch(run_id: str, n: int = 2) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "resource_type": "Observation",
                "resource_id": f"{run_id}-{i}",
                "raw": json.dumps({"resourceType": "Observation", "id": f"{run_id}-{i}"}),
                "_source_file": "fhir/Observation.ndjson",
                "_source_offset": i + 1,
                "_ingested_at": NOW,
                "_record_hash": f"{run_id}-{i}",
                "_run_id": run_id,
            }
            for i in range(n)
        ],
        schema=BRONZE_FHIR.schema,
    )


def test_a_triggered_run_takes_the_batches_committed_by_the_versions_its_trigger_names(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    lake.write(BRONZE_FHIR.name, fhir_batch("killed"), mode="append")  # a killed run's batch
    named = lake.write(BRONZE_FHIR.name, fhir_batch("ehr_fhir-1"), mode="append")  # the trigger's
    lake.write(BRONZE_FHIR.name, fhir_batch("ehr_fhir-2"), mode="append")  # a run still ingesting
    hl7 = BRONZE_HL7V2.schema.empty_table()
    lake.write(BRONZE_HL7V2.name, hl7, mode="append")

    assert pending.pending(lake, versions={BRONZE_FHIR.name: named}) == {
        BRONZE_FHIR.name: ["ehr_fhir-1", "killed"]
    }
    taken = pending.take(lake, run_id="asset_triggered__1", now=NOW, versions={BRONZE_FHIR.name: named})
    assert taken == {BRONZE_FHIR.name: ["ehr_fhir-1", "killed"]}
    staged = {r["batch_run_id"]: r for r in lake.read(CURATION.name).to_pylist()}
    assert set(staged) == {"ehr_fhir-1", "killed"} and staged["killed"]["records"] == 2
    # a run by hand (no trigger) takes every pending batch at the current version
    assert pending.pending(lake) == {BRONZE_FHIR.name: ["ehr_fhir-1", "ehr_fhir-2", "killed"]}


class Named(NamedTuple):
    name: str


def test_the_trigger_versions_are_the_highest_each_table_names_for_the_lake():
    def event(version: object, lake: str = "/lake") -> SimpleNamespace:
        return SimpleNamespace(extra={"lake": lake, "version": version, "run_id": "r"})

    events = {
        Named(BRONZE_FHIR.name): [event(3), event(5), event(9, lake="/other")],
        Named(BRONZE_HL7V2.name): [event(None)],
    }
    assert trigger_versions(events, "/lake") == {BRONZE_FHIR.name: 5}


def test_a_run_announces_the_last_version_its_batches_left():
    ingested = [{"versions": {BRONZE_FHIR.name: 4, "ledger": None}}, {"versions": {BRONZE_FHIR.name: 6}}]
    assert last_versions(ingested) == {BRONZE_FHIR.name: 6}


def test_a_delivery_is_announced_with_every_source_that_reached_bronze(tmp_path: Path):
    from medlake.sources import announce, bronze_events

    lake = tmp_path / "lake"
    # csv finishes first and waits; fhir publishes; then csv names both (here: in turn, no threads)
    first = announce(lake, "csv", {"bronze.csv_rows": 2}, delivery="d1", sources=["csv", "fhir"], timeout=0.01)
    assert first == {"bronze.csv_rows": 2}  # fhir had not published: it named its own only
    both = announce(lake, "fhir", {BRONZE_FHIR.name: 7}, delivery="d1", sources=["csv", "fhir"], timeout=5)
    assert both == {"bronze.csv_rows": 2, BRONZE_FHIR.name: 7}
    alone = announce(lake, "fhir", {BRONZE_FHIR.name: 8}, delivery="", sources=[], timeout=5)
    assert alone == {BRONZE_FHIR.name: 8}
    extra = bronze_events(lake, {BRONZE_FHIR.name: 7}, run_id="r", named=both)[BRONZE_FHIR.name]
    assert extra["version"] == 7 and extra["versions"] == both and extra["lake"] == str(lake.resolve())
    # the curation run an event of the delivery triggers reads every version it names
    events = {Named(BRONZE_FHIR.name): [SimpleNamespace(extra=extra)]}
    assert trigger_versions(events, str(lake.resolve())) == both


def test_the_curation_run_runs_on_the_engine_its_triggering_source_runs_were_asked_for(
    tmp_path: Path,
) -> None:
    from medlake.sources import bronze_events, trigger_engine

    on_spark = bronze_events(tmp_path, {BRONZE_FHIR.name: 3}, "r1", engine="spark")[BRONZE_FHIR.name]
    unset = bronze_events(tmp_path, {BRONZE_HL7V2.name: 4}, "r2")[BRONZE_HL7V2.name]
    assert trigger_engine({Named(BRONZE_FHIR.name): [SimpleNamespace(extra=on_spark)]}) == "spark"
    # a source run without --engine names none: the setting's engine, not a conflict
    both = {Named(BRONZE_FHIR.name): [SimpleNamespace(extra=on_spark)],
            Named(BRONZE_HL7V2.name): [SimpleNamespace(extra=unset)]}
    assert trigger_engine(both) == "spark"
    assert trigger_engine({Named(BRONZE_HL7V2.name): [SimpleNamespace(extra=unset)]}) is None
    embedded = {**on_spark, "engine": "embedded"}
    with pytest.raises(ValueError, match="one engine"):
        trigger_engine({Named(BRONZE_FHIR.name): [SimpleNamespace(extra=on_spark), SimpleNamespace(extra=embedded)]})
