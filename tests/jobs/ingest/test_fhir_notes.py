"""silver.notes: every planted free-text field of the sample hospital, with no planted PHI left."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute
import pytest

from medlake.jobs.ingest import fhir
from medlake.registry import SILVER_NOTES
from medlake.sample import generate

KEY = b"notes-test-key"


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("landing") / "hospital"
    generate(out, patients=200, seed=1)
    return out


@pytest.fixture(scope="module")
def bronze(landing: Path) -> pa.Table:
    raw = fhir.read_files(fhir.landing_files(landing / "fhir"), root=landing)
    return fhir.to_bronze(raw, run_id="r1", ingested_at=datetime(2025, 7, 1, tzinfo=UTC)).good


def test_every_planted_note_lands_without_its_phi(landing: Path, bronze: pa.Table) -> None:
    truth = json.loads((landing / "_truth.json").read_text())
    split = fhir.notes_from_bronze(bronze, key=KEY)
    assert split.good.schema == SILVER_NOTES.schema
    assert split.quarantined.num_rows == 0
    assert split.good.num_rows == len(truth["free_text"])
    notes = "\n".join(split.good.column("note_text_deid").to_pylist())
    planted = {p for item in truth["free_text"] for p in item["phi"]}
    anywhere = {v for values in truth["phi"].values() for v in values if len(v) > 3}
    assert not [p for p in planted if p in notes]
    assert not [v for v in anywhere if re.search(rf"\b{re.escape(v)}\b", notes)]
    assert all(json.loads(e) for e in split.good.column("phi_entities").to_pylist())


def test_an_undecodable_attachment_is_quarantined_with_a_reason() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "not base64!!"}}],
    }
    raw = json.dumps(doc)
    bronze = pa.Table.from_pylist(
        [
            {
                "resource_type": "DocumentReference",
                "resource_id": "d1",
                "raw": raw,
                "_source_file": "fhir/bulk/DocumentReference.ndjson",
                "_source_offset": 1,
                "_record_hash": fhir.record_hash(doc),
                "_run_id": "r1",
            }
        ]
    )
    split = fhir.notes_from_bronze(bronze, key=KEY, deny_lists={})
    assert split.good.num_rows == 0
    [reason] = split.quarantined.column("reason").to_pylist()
    assert "DocumentReference.content[0].attachment" in reason and "not valid base64" in reason
    assert split.quarantined.column("rule_id").to_pylist() == ["deid.attachment_undecodable"]


def _bronze_row(resource: dict, offset: int) -> dict:
    return {
        "resource_type": resource["resourceType"],
        "resource_id": resource["id"],
        "raw": json.dumps(resource),
        "_source_file": "fhir/extra.ndjson",
        "_source_offset": offset,
        "_record_hash": fhir.record_hash(resource),
        "_run_id": "r1",
    }


def test_the_clean_steps_find_the_same_notes_where_they_parse_each_resource(bronze: pa.Table) -> None:
    """The pipeline takes notes from the parse its steps already make (the flattener, the
    bronze-only validation, an extra view's type): together the same notes as one pass over
    every resource, each exactly once."""
    import base64

    from medlake.jobs.clean import fhir_steps

    patient = "Patient/" + bronze.filter(pa.compute.equal(bronze.column("resource_type"), "Patient")).column("resource_id")[0].as_py()
    note = base64.b64encode(b"Seen today by Dr. Alice Smith, follow up in 2 weeks.").decode()
    extra = [
        {"resourceType": "DocumentReference", "id": "doc-1", "status": "current", "subject": {"reference": patient},
         "content": [{"attachment": {"contentType": "text/plain", "data": note}}]},
        {"resourceType": "Procedure", "id": "proc-1", "status": "completed", "subject": {"reference": patient},
         "code": {"text": "x"}, "note": [{"text": "Patient tolerated the procedure well."}]},
    ]
    bronze = pa.concat_tables(
        [bronze, pa.Table.from_pylist([_bronze_row(r, i) for i, r in enumerate(extra)], schema=bronze.schema)]
    ).combine_chunks()
    options = fhir.NoteOptions(key=KEY, deny_lists=fhir.record_terms(bronze, key=KEY))
    expected = fhir.notes_from_bronze(bronze, key=KEY).good
    found = []
    for rtype in sorted(set(fhir.NOTE_SOURCES) & set(fhir.FHIR_SILVER)):
        split = fhir.flatten_resources(bronze, resource_type=rtype, key=KEY, notes=options)
        found.append(split.sides[fhir.NOTES_SIDE])
    types = bronze.column("resource_type")
    docs = bronze.filter(pa.compute.equal(types, "DocumentReference")).to_batches()[0]
    procedures = bronze.filter(pa.compute.equal(types, "Procedure")).to_batches()[0]
    found.append(fhir_steps.notes_only(docs, notes=options).sides[fhir.NOTES_SIDE])  # a viewed type
    found.append(
        fhir_steps.bronze_only(procedures, viewed=("DocumentReference",), notes=options).sides[fhir.NOTES_SIDE]
    )
    got = pa.concat_tables(found)
    assert {"DocumentReference", "Procedure"} <= set(got.column("resource_type").to_pylist())
    assert got.num_rows == expected.num_rows
    by_key = sorted(got.to_pylist(), key=lambda r: r["note_key"])
    assert by_key == sorted(expected.to_pylist(), key=lambda r: r["note_key"])
    assert "Alice Smith" not in "\n".join(got.column("note_text_deid").to_pylist())
