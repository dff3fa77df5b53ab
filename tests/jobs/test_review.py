"""Quarantine review: a steward's accept / correct / reject, audited, applied at the next run."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from medlake import ledger
from medlake.expectations.gate import run_gate
from medlake.governance import audit
from medlake.jobs import pipeline, review
from medlake.lake import Lake
from medlake.quarantine import quarantine_rows
from medlake.registry import SILVER_OBSERVATIONS, SILVER_PATIENTS, staging_name

KEY = b"\x05" * 32
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def observation(key: str, value: float, code: str = "8867-4", unit: str = "/min") -> dict:
    return {"observation_key": key, "person_key": "p1", "status": "final", "code_system": "http://loinc.org",
            "code": code, "value_num": value, "value_unit": unit, "effective_at": T0,
            "_record_hash": f"h-{key}", "_source_kind": "fhir", "_run_id": "run-1"}


@pytest.fixture
def gated(tmp_path) -> Lake:
    """A lake where run-1's gate quarantined two impossible heart rates and promoted one normal one."""
    lake = Lake(tmp_path)
    patient = {"person_key": "p1", "source_key": "s1", "source_system": "fhir", "_record_hash": "h-p1",
               "_source_kind": "fhir", "_run_id": "run-0"}
    lake.write(SILVER_PATIENTS.name, pa.Table.from_pylist([patient], schema=SILVER_PATIENTS.schema), mode="overwrite")
    rows = pa.Table.from_pylist([observation("ok", 72), observation("high", 900), observation("typo", 720)],
                                schema=SILVER_OBSERVATIONS.schema)
    lake.write(staging_name("silver.observations"), rows, mode="overwrite", spec=SILVER_OBSERVATIONS)
    ledger.record(lake, "run-1", run_gate(lake, run_id="run-1", tables=["silver.observations"]))
    return lake


def ids_by_record(lake: Lake) -> dict[str, str]:
    return {r["record_id"]: r["quarantine_id"] for r in lake.read("quarantine").to_pylist()}


def test_accepted_and_corrected_records_reenter_silver_at_the_next_run(gated):
    ids = ids_by_record(gated)
    assert gated.read("silver.observations").column("observation_key").to_pylist() == ["ok"]
    review.resolve(gated, [ids["high"]], action="accept", reason="confirmed with the lab", actor="sam", audit_key=KEY)
    review.resolve(gated, [ids["typo"]], action="correct", value=72.0, reason="typo in the device export",
                   actor="sam", audit_key=KEY)
    assert gated.read("silver.observations").num_rows == 1  # nothing moves before the next run
    entries = pipeline.release_resolved(gated, run_id="run-2")
    assert [(e.stage, e.records_in, e.records_out) for e in entries] == [("release", 2, 2)]
    silver = {r["observation_key"]: r for r in gated.read("silver.observations").to_pylist()}
    assert silver["high"]["value_num"] == 900 and silver["high"]["_run_id"] == "run-2"
    assert silver["typo"]["value_num"] == 72.0 and silver["typo"]["_value_original"] == 720
    statuses = {r["record_id"]: (r["status"], r["released_run_id"]) for r in gated.read("quarantine").to_pylist()}
    assert statuses == {"high": ("released", "run-2"), "typo": ("released", "run-2")}
    assert [(e["stage"], e["records_out"]) for e in ledger.for_run(gated, "run-2")] == [("release", 2)]
    assert pipeline.release_resolved(gated, run_id="run-3") == []  # released once


def test_rejection_is_recorded_and_audited_and_stays_out_of_silver(gated):
    ids = ids_by_record(gated)
    review.resolve(gated, [ids["high"]], action="reject", reason="sensor artefact", actor="kim", audit_key=KEY)
    pipeline.release_resolved(gated, run_id="run-2")
    row = next(r for r in gated.read("quarantine").to_pylist() if r["record_id"] == "high")
    assert (row["status"], row["resolution_reason"], row["resolved_by"]) == ("rejected", "sensor artefact", "kim")
    assert "high" not in gated.read("silver.observations").column("observation_key").to_pylist()
    entries = audit.read(gated)
    assert [(e.action, e.actor, e.object) for e in entries] == [("quarantine.resolve", "kim", ids["high"])]
    assert audit.verify(gated, key=KEY).ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "accept", "reason": " "}, "needs a reason"),
        ({"action": "correct", "reason": "x"}, "needs --value"),
        ({"action": "accept", "reason": "x", "value": 1.0}, "goes with --action correct"),
        ({"action": "delete", "reason": "x"}, "accept, correct or reject"),
    ],
)
def test_bad_resolutions_are_refused(gated, kwargs, message):
    with pytest.raises(review.ResolutionRefused, match=message):
        review.resolve(gated, [ids_by_record(gated)["high"]], actor="sam", audit_key=KEY, **kwargs)


def test_a_record_that_never_became_a_silver_row_can_only_be_rejected(tmp_path):
    lake = Lake(tmp_path)
    bad = quarantine_rows([{"rule_id": "parse.bad_json", "reason": "x.ndjson line 2: not valid JSON",
                            "source_file": "x.ndjson", "source_offset": 2, "raw_record": "{oops"}],
                          table_name="bronze.fhir_resources", run_id="run-1")
    lake.insert_new("quarantine", bad)
    qid = bad.column("quarantine_id")[0].as_py()
    with pytest.raises(review.ResolutionRefused, match="fix it at the source"):
        review.resolve(lake, [qid], action="accept", reason="looks fine", actor="sam", audit_key=KEY)
    review.resolve(lake, [qid], action="reject", reason="garbage line", actor="sam", audit_key=KEY)
    with pytest.raises(review.ResolutionRefused, match="already rejected"):
        review.resolve(lake, [qid], action="reject", reason="again", actor="sam", audit_key=KEY)
    with pytest.raises(review.ResolutionRefused, match="no quarantined record"):
        review.resolve(lake, ["nope"], action="reject", reason="x", actor="sam", audit_key=KEY)
