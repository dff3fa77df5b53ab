"""Ledger arithmetic: in = out + quarantined + merged + bronze_only, or the run fails loudly."""

from __future__ import annotations

import pytest

from medlake import ledger
from medlake.lake import Lake
from medlake.ledger import Entry, LedgerImbalance


@pytest.mark.parametrize(
    ("entry", "balanced"),
    [
        (Entry("ingest", "bronze.fhir_resources", records_in=10, records_out=7, quarantined=2, merged=1), True),
        (Entry("silver", "bronze.fhir_resources", records_in=5, bronze_only=4, quarantined=1), True),
        (Entry("gate", "silver.observations", records_in=0), True),
        (Entry("ingest", "bronze.fhir_resources", records_in=10, records_out=7, quarantined=2), False),
        (Entry("gate", "silver.observations", records_in=3, records_out=4), False),
    ],
)
def test_balance(entry, balanced):
    assert entry.balanced is balanced


def test_imbalance_names_the_stage_and_the_numbers(tmp_path):
    lost = Entry("silver", "silver.patients", records_in=10, records_out=8, quarantined=1)
    with pytest.raises(LedgerImbalance, match=r"silver → silver.patients: in 10 ≠ out 8 \+ quarantined 1"):
        ledger.record(Lake(tmp_path), "run-1", [lost])
    # the imbalance is still written, so the report can show it
    (row,) = ledger.for_run(Lake(tmp_path), "run-1")
    assert row["balanced"] is False


def test_rerecording_a_stage_replaces_its_entry(tmp_path):
    lake = Lake(tmp_path)
    ledger.record(lake, "run-1", [Entry("ingest", "bronze.fhir_resources", records_in=3, records_out=3)])
    ledger.record(lake, "run-1", [Entry("ingest", "bronze.fhir_resources", records_in=3, merged=3)])
    ledger.record(lake, "run-2", [Entry("ingest", "bronze.fhir_resources", records_in=1, records_out=1)])
    rows = ledger.for_run(lake, "run-1")
    assert [(r["records_out"], r["merged"]) for r in rows] == [(0, 3)]
    assert ledger.runs(lake) == ["run-1", "run-2"]
    assert ledger.for_run(lake)[0]["run_id"] == "run-2"


def test_the_run_summary_lists_deliveries_outside_their_volume_band(tmp_path) -> None:
    import json

    from medlake.ledger import Entry, record
    from medlake.summary import summarize

    lake = Lake(tmp_path / "lake")
    low = {"table": "silver.observations", "source": "fhir", "rows": 10, "low": 900.0, "high": 1100.0,
           "basis": "all days", "deliveries": 5, "verdict": "low"}
    fine = {**low, "source": "csv", "rows": 1000, "verdict": "in band"}
    gate = Entry("gate", "silver.observations", 1010, records_out=1010,
                 details=json.dumps({"volume": {"fhir": 10, "csv": 1000}, "volume_findings": [low, fine]}))
    record(lake, "run-1", [gate])

    summary = summarize(lake, run_id="run-1")

    assert summary["volume_warnings"] == [low]
    assert summary["pending"] == {}
