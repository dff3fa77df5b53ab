"""silver.notes from HL7 v2: NTE comments and OBX text values, de-identified with the patient's
own record as the deny list."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from medlake.governance.pseudonyms import mrn_key
from medlake.jobs.ingest import hl7v2
from medlake.registry import SILVER_NOTES
from medlake.sample import generate

KEY = b"hl7-notes-test-key"
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "hl7v2" / "cdc_trusted_intermediary"


def message(*segments: str) -> str:
    """An HL7 v2 message of these segments, CR-separated."""
    return "\r".join(segments)


ORU = message(
    "MSH|^~\\&|LAB|GOODHEALTH|EHR|GOODHEALTH|20240305101500||ORU^R01^ORU_R01|CTRL-1|P|2.5.1",
    (
        "PID|1||MRN-0012345^^^GOODHEALTH^MR||Quackenbush^Zebulon^^^^^L||19600101|M|||"
        "12 Larkspur Lane^^Springfield^IL^62704^USA||^PRN^PH^^^555^2345678"
    ),
    "PV1|1|O|CLINIC^^^GOODHEALTH||||||||||||||||V-77^^^GOODHEALTH",
    "ORC|RE|ORD-1",
    "OBR|1|ORD-1|FIL-1|2345-7^Glucose^LN|||20240305090000",
    "OBX|1|NM|2345-7^Glucose^LN||105|mg/dL^mg/dL^UCUM|||||F",
    (
        "NTE|1|L|Called Zebulon Quackenbush (MRN-0012345) at (555) 234-5678 on 03/05/2024; "
        "Quackenbush confirmed the fasting state."
    ),
    "OBX|2|TX|11526-1^Pathology study^LN||Specimen from Zebulon Quackenbush received intact.||||||F",
    "OBX|3|ST|8251-1^Service comment^LN||no comment||||||F",
    "OBX|4|CE|8251-1^Service comment^LN||N^Normal^HL70078||||||F",
)
ADT = message(
    "MSH|^~\\&|REG|GOODHEALTH|EHR|GOODHEALTH|20240305101500||ADT^A01^ADT_A01|CTRL-2|P|2.5.1",
    "PID|1||MRN-0099999^^^GOODHEALTH^MR||Doe^Jane||19700101|F",
    "PV1|1|I|WARD^^^GOODHEALTH||||||||||||||||V-88^^^GOODHEALTH",
)
NO_PID = message(
    "MSH|^~\\&|LAB|GOODHEALTH|EHR|GOODHEALTH|20240305101500||ORU^R01^ORU_R01|CTRL-3|P|2.5.1",
    "ORC|RE|ORD-9",
    "OBR|1|ORD-9|FIL-9|2345-7^Glucose^LN",
    "NTE|1|L|Result phoned to the ward.",
)


def bronze_of(*files: tuple[str, bytes]) -> pa.Table:
    raw = pa.Table.from_pylist(
        [r for name, data in files for r in hl7v2.read_bytes(data, name=name)],
        schema=hl7v2.RAW_SCHEMA,
    )
    split = hl7v2.to_bronze(raw, run_id="r1", ingested_at=datetime(2025, 7, 1, tzinfo=UTC))
    assert split.quarantined.num_rows == 0
    return split.good


def test_an_nte_with_the_patients_phi_lands_without_it_with_consistent_surrogates() -> None:
    notes = hl7v2.notes_from_bronze(bronze_of(("lab.hl7", ORU.encode())), key=KEY).good
    assert notes.schema == SILVER_NOTES.schema
    rows = {r["note_path"]: r for r in notes.to_pylist()}
    assert sorted(rows) == ["ORU^R01/OBX[1]/NTE[1]", "ORU^R01/OBX[2]", "ORU^R01/OBX[3]"]
    nte, tx = rows["ORU^R01/OBX[1]/NTE[1]"], rows["ORU^R01/OBX[2]"]
    assert nte["resource_type"] == "HL7v2:NTE" and tx["resource_type"] == "HL7v2:OBX"
    person = mrn_key(KEY, "GOODHEALTH", "MRN-0012345")
    assert {r["person_key"] for r in rows.values()} == {person}
    assert nte["encounter_key"] is not None and nte["encounter_key"] == tx["encounter_key"]
    text = nte["note_text_deid"]
    for phi in ("Zebulon", "Quackenbush", "0012345", "234-5678", "03/05/2024", "2024"):
        assert phi not in text
    assert "fasting state" in text and "[DATE]" in text
    surrogates = re.findall(r"\[PERSON-[0-9a-f]+\]", text)
    assert len(surrogates) == 2  # the full name, then the surname alone
    assert "Zebulon" not in tx["note_text_deid"] and "Quackenbush" not in tx["note_text_deid"]
    assert surrogates[0] in tx["note_text_deid"]  # the same name, the same surrogate
    assert rows["ORU^R01/OBX[3]"]["note_text_deid"] == "no comment"
    assert nte["phi_replaced"] >= 5 and json.loads(nte["phi_entities"])
    assert len({r["note_key"] for r in rows.values()}) == 3


def test_an_adt_without_text_gives_no_note() -> None:
    split = hl7v2.notes_from_bronze(bronze_of(("adt.hl7", ADT.encode())), key=KEY)
    assert split.good.num_rows == 0 and split.quarantined.num_rows == 0


def test_a_note_before_any_patient_is_quarantined_without_its_text() -> None:
    split = hl7v2.notes_from_bronze(bronze_of(("lab.hl7", NO_PID.encode())), key=KEY)
    assert split.good.num_rows == 0
    [bad] = split.quarantined.to_pylist()
    assert bad["rule_id"] == "deid.note_missing_subject"
    assert "NTE 4" in bad["reason"] and "phoned" not in bad["reason"]


def test_the_cdc_corpus_free_text_lands_without_the_patients_names() -> None:
    files = sorted(CORPUS.glob("*.hl7"))
    if not files:
        pytest.skip("corpus not present")
    bronze = bronze_of(*((p.name, p.read_bytes()) for p in files))
    split = hl7v2.notes_from_bronze(bronze, key=KEY)
    free_text = sum(
        1
        for raw in bronze.column("raw").to_pylist()
        for line in hl7v2.segment_lines(raw)
        if line.startswith("NTE|") or re.match(r"OBX\|[^|]*\|(TX|FT|ST)\|", line)
    )
    assert split.good.num_rows > 0
    assert split.good.num_rows + split.quarantined.num_rows <= free_text
    names: dict[str, set[str]] = {}
    for identity in hl7v2.patient_identities(bronze, key=KEY):
        for name in identity["names"]:
            words = re.findall(r"[^\W\d_]+", " ".join([name["family"], *name["given"]]))
            names.setdefault(identity["person_key"], set()).update(w for w in words if len(w) > 2)
    assert names
    left = [
        (
            note["note_path"],
            names[note["person_key"]] & set(re.findall(r"[^\W\d_]+", note["note_text_deid"])),
        )
        for note in split.good.to_pylist()
    ]
    assert not [found for found in left if found[1]]
    every_name = set().union(*names.values())
    paths = split.good.column("note_path").to_pylist()
    assert not [p for p in paths if "|" in p or every_name & set(re.findall(r"[^\W\d_]+", p))]


def test_the_sample_hospitals_callback_notes_land_without_planted_phi(tmp_path: Path) -> None:
    landing = tmp_path / "hospital"
    generate(landing, patients=60, seed=3)
    truth = json.loads((landing / "_truth.json").read_text())
    raw = hl7v2.read_files(hl7v2.landing_files(landing / "hl7v2"), root=landing)
    bronze = hl7v2.to_bronze(raw, run_id="r1", ingested_at=datetime(2025, 7, 1, tzinfo=UTC)).good
    split = hl7v2.notes_from_bronze(bronze, key=KEY)
    planted_ntes = sum(
        1
        for text in bronze.column("raw").to_pylist()
        for line in hl7v2.segment_lines(text)
        if line.startswith("NTE|")
    )
    assert planted_ntes > 0
    assert split.good.num_rows + split.quarantined.num_rows == planted_ntes
    assert set(split.good.column("resource_type").to_pylist()) == {"HL7v2:NTE"}
    patient_level = split.good.filter(pc.equal(split.good["note_path"], "ORU^R01/PID[1]/NTE[1]"))
    assert patient_level.num_rows > 0 and len(truth["hl7_free_text"]) >= patient_level.num_rows
    planted = {p for item in truth["hl7_free_text"] for p in item["phi"]}
    assert not [p for p in planted if p in "\n".join(patient_level["note_text_deid"].to_pylist())]
    notes = "\n".join(split.good.column("note_text_deid").to_pylist())
    words = set(re.findall(r"[^\W\d_]+", notes))
    assert not [n for n in truth["phi"]["names"] if n in words]
    phi = [v for kind in ("phones", "mrns", "ssns", "streets") for v in truth["phi"][kind]]
    assert not [v for v in phi if v in notes]
