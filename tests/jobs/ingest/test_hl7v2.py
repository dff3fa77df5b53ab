"""HL7 v2 reading, bronze checks and silver flattening, on the real corpus and hand-made messages."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import source_key
from medlake.jobs.ingest import hl7v2
from medlake.quarantine import Split, by_rule
from medlake.registry import QUARANTINE

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "hl7v2"
LOINC = "http://loinc.org"

MSH = "MSH|^~\\&|LAB|GOOD_HOSP^1.2.3^ISO|LAKE|LAKE|20240105093000-0500||{type}|{control}|P|2.5.1"
PID = (
    "PID|1||MRN-1^^^&http://hospital.example.org/mrn&URI^MR~900-01-0001^^^SSA^SS||Lindqvist^Astrid||19500315"
    "|F|||12 Elm St^Apt 2^Boston^MA^02115^USA^H||(555) 201-0101^PRN^PH|||M|||900-01-0001"
)
PV1 = (  # PV1-19 visit number, PV1-44 admit date/time
    "PV1|1|I|^^^Riverside General Hospital||||||||||||||||V-1^^^&http://hospital.example.org/visits&URI^VN"
    + "|" * 25
    + "20240104080000-0500"
)
OBR = "OBR|1||F-1^LAB|2345-7^Glucose^LN|||20240105080000-0500" + "|" * 17 + "LAB|F"  # OBR-7, OBR-24


def seg(name: str, values: dict[int, str]) -> str:
    """A segment from its valued fields, by field number."""
    fields = [name] + [""] * max(values)
    for number, value in values.items():
        fields[number] = value
    return "|".join(fields)


def message(*segments: str, type_: str = "ORU^R01^ORU_R01", control: str = "C1") -> str:
    return "\r".join([MSH.format(type=type_, control=control), *segments])


def ingest(tmp_path: Path, files: dict[str, str | bytes]) -> tuple[pa.Table, Split]:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    raw = hl7v2.read_files(hl7v2.landing_files(tmp_path), root=tmp_path)
    return raw, hl7v2.to_bronze(raw, run_id="r1", ingested_at=NOW)


def silver(bronze: pa.Table) -> dict[str, hl7v2.Flattened]:
    return {name.split(".")[1]: f for name, f in hl7v2.silver_from_bronze(bronze, key=KEY).items()}


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def shift_of(person_key: str) -> timedelta:
    return timedelta(days=date_shift_days(KEY, person_key, max_days=365))


# ------------------------------------------------------------------ reading files


@pytest.mark.parametrize(
    ("framing", "join"),
    [
        ("cr", lambda msgs: "\r".join(msgs) + "\r"),
        ("lf", lambda msgs: "\n".join(m.replace("\r", "\n") for m in msgs) + "\n"),
        ("crlf", lambda msgs: "\r\n".join(m.replace("\r", "\r\n") for m in msgs) + "\r\n"),
        ("mllp", lambda msgs: "".join(f"\x0b{m}\r\x1c\r" for m in msgs)),
        (
            "batch",
            lambda msgs: "FHS|^~\\&\rBHS|^~\\&\r" + "\r".join(msgs) + f"\rBTS|{len(msgs)}\rFTS|1\r",
        ),
    ],
)
def test_every_framing_splits_into_the_same_messages_with_the_same_hashes(tmp_path, framing, join):
    messages = [
        message(PID, OBR, f"OBX|1|NM|2345-7^Glucose^LN||{v}|mg/dL^^UCUM", control=f"C{v}")
        for v in (90, 91, 92)
    ]
    raw, split = ingest(tmp_path, {f"{framing}.hl7": join(messages)})
    assert raw.column("source_offset").to_pylist() == [1, 2, 3]
    assert split.quarantined.num_rows == 0
    assert split.good.column("_record_hash").to_pylist() == [hl7v2.record_hash(m) for m in messages]
    assert split.good.column("message_control_id").to_pylist() == ["C90", "C91", "C92"]


def test_messages_are_kept_verbatim_with_their_own_line_breaks(tmp_path):
    text = message(PID, OBR).replace("\r", "\n")
    _, split = ingest(tmp_path, {"a.hl7": "\ufeff" + text + "\n\n"})
    assert split.good.column("raw").to_pylist() == [
        text
    ]  # BOM and trailing blank lines are not message


def test_a_file_declaring_latin1_in_msh18_is_decoded_with_it(tmp_path):
    text = message(PID.replace("Astrid", "Åsa"), OBR).replace("|P|2.5.1", "|P|2.5.1||||||8859/1")
    _, split = ingest(tmp_path, {"latin.hl7": text.encode("latin-1")})
    assert split.quarantined.num_rows == 0 and "Åsa" in split.good.column("raw")[0].as_py()


@pytest.mark.parametrize(
    ("content", "rule", "offset"),
    [
        ("", "parse.hl7_empty_file", 0),
        (" \r\n\x0b\x1c\r", "parse.hl7_empty_file", 0),
        ("FHS|^~\\&\rBHS|^~\\&\rBTS|0\rFTS|1\r", "parse.hl7_empty_file", 0),
        (
            "MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1||Ö".encode("latin-1"),
            "parse.hl7_bad_encoding",
            0,
        ),
        ("<html><body>502 Bad Gateway</body></html>", "parse.hl7_no_msh", 1),
        (
            "BHS|^~\\&\rMSH|^~\\&|A|B|C|D|2024||ADT^A04|1|P|2.5\rBHS|^~\\&\rPID|1||1\rBTS|1",
            "parse.hl7_bad_batch",
            0,
        ),
        (
            "FHS|^~\\&\rMSH|^~\\&|A|B|C|D|2024||ADT^A04|1|P|2.5\rFHS|^~\\&\rFTS|1",
            "parse.hl7_bad_batch",
            0,
        ),
        ("MSH|\r", "parse.hl7_bad_msh", 1),
        ("MSH||A|B|C|D|2024||ADT^A04|1|P|2.5\rPID|1||1", "parse.hl7_bad_msh", 1),
        (message(PID, OBR, type_=""), "parse.hl7_bad_msh", 1),
        (message(PID, OBR, control=""), "parse.hl7_bad_msh", 1),
        (message(PID, OBR).replace("|2.5.1", "|"), "parse.hl7_bad_msh", 1),
        (message(PID, OBR).replace("|2.5.1", "|v2"), "parse.hl7_bad_msh", 1),
        (
            message(PID, OBR).replace("20240105093000-0500", "2024-01-05 09:30"),
            "parse.hl7_bad_datetime",
            1,
        ),
        (message(PID, "NTE|1||called back\rat noon", OBR), "parse.hl7_bad_segment", 1),
        (message(PID, "  OBR|1"), "parse.hl7_bad_segment", 1),
        (message(PID, "OBX|1|NM|2345-7^Glucose^LN||90"), "parse.hl7_missing_segment", 1),
        (message(PID, type_="RDE^O11^RDE_O11"), "parse.hl7_missing_segment", 1),
    ],
)
def test_malformed_input_is_quarantined_with_its_rule_and_where(tmp_path, content, rule, offset):
    _, split = ingest(tmp_path, {"feed/x.hl7": content})
    assert split.good.num_rows == 0
    assert [
        (q["rule_id"], q["source_file"], q["source_offset"]) for q in rows(split.quarantined)
    ] == [(rule, "feed/x.hl7", offset)]
    reason = split.quarantined.column("reason")[0].as_py()
    assert reason.startswith("feed/x.hl7") and "Lindqvist" not in reason and "MRN-1" not in reason


def test_a_bad_message_does_not_take_its_neighbours_with_it(tmp_path):
    good = message(PID, OBR, "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL", control="A")
    bad = message(PID, OBR, control="")
    _, split = ingest(tmp_path, {"x.hl7": "\r".join([good, bad, good.replace("|A|", "|B|")])})
    assert split.good.column("_source_offset").to_pylist() == [1, 3]
    assert rows(split.quarantined)[0]["source_offset"] == 2


def test_the_same_message_in_two_files_has_one_hash(tmp_path):
    text = message(PID, OBR)
    _, split = ingest(
        tmp_path, {"a.hl7": text, "b.hl7": "\x0b" + text.replace("\r", "\n") + "\x1c\r"}
    )
    assert len(set(split.good.column("_record_hash").to_pylist())) == 1


# ------------------------------------------------------------------ the real corpus


def corpus() -> tuple[pa.Table, Split]:
    raw = hl7v2.read_files(hl7v2.landing_files(CORPUS), root=CORPUS)
    return raw, hl7v2.to_bronze(raw, run_id="corpus", ingested_at=NOW)


@pytest.fixture(scope="module")
def corpus_lake() -> tuple[pa.Table, Split, dict[str, hl7v2.Flattened]]:
    assert CORPUS.is_dir(), f"the vendored corpus is expected at {CORPUS}"
    raw, split = corpus()
    return raw, split, silver(split.good)


def test_every_corpus_file_and_message_is_accounted_for(corpus_lake):
    raw, split, _ = corpus_lake
    files = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.hl7")}
    assert (
        set(raw.column("source_file").to_pylist()) == files == {r["source_file"] for r in rows(raw)}
    )
    assert len(files) == 77
    seen = Counter(
        zip(
            split.good.column("_source_file").to_pylist(),
            split.good.column("_source_offset").to_pylist(),
        )
    )
    seen.update((q["source_file"], q["source_offset"]) for q in rows(split.quarantined))
    assert seen == Counter(
        zip(raw.column("source_file").to_pylist(), raw.column("source_offset").to_pylist())
    )
    assert set(seen.values()) == {1}
    assert raw.num_rows == split.good.num_rows + split.quarantined.num_rows == 82
    assert by_rule(split.quarantined) == {
        "parse.hl7_bad_msh": 4,
        "parse.hl7_missing_segment": 3,
        "parse.hl7_no_msh": 3,
        "parse.hl7_bad_batch": 3,
        "parse.hl7_empty_file": 1,
    }


def test_lf_separated_files_split_into_segments_like_cr_ones(corpus_lake):
    _, split, _ = corpus_lake
    name = "cdc_trusted_intermediary/CA__002_CA_ORU_R01.hl7"
    text = (CORPUS / name).read_text()
    assert "\r" not in text and text.count("\nOBX|") > 50
    raw = (
        split.good.filter(pc.equal(split.good.column("_source_file"), name))
        .column("raw")[0]
        .as_py()
    )
    assert len(hl7v2.segment_lines(raw)) == len([line for line in text.split("\n") if line.strip()])


def test_message_splitting_agrees_with_python_hl7_on_every_file_it_accepts(corpus_lake):
    """python-hl7's parse_file is the reference for batch files: where it accepts a file we find
    the same messages; where it rejects one (all or nothing), ingest quarantines a record of it."""
    _, split, _ = corpus_lake
    quarantined = set(split.quarantined.column("source_file").to_pylist())
    agreed = rejected = 0
    for path in sorted(CORPUS.rglob("*.hl7")):
        text = path.read_bytes().decode("utf-8-sig")
        ours, _ = hl7v2.split_messages(text)
        try:
            parsed = (
                hl7.parse_file(text.replace("\r\n", "\r").replace("\n", "\r"))
                if text.strip()
                else None
            )
        except (hl7.ParseException, IndexError):  # IndexError: python-hl7 on "MSH|" with no MSH-2
            rejected += 1
            assert path.relative_to(CORPUS).as_posix() in quarantined, path.name
            continue
        if parsed is None:
            continue
        theirs = [str(m) for batch in parsed for m in batch]
        assert [_segments(m) for m in ours] == [_segments(m) for m in theirs], path.name
        agreed += 1
    assert agreed > 50 and rejected == 7


def _segments(message: str) -> list[str]:
    return [line.strip() for line in hl7v2.segment_lines(message)]


MALFORMED = {
    "cdc_empty.hl7": {"parse.hl7_empty_file"},
    "cdc_msh_present_but_missing_all_fields.hl7": {"parse.hl7_bad_msh"},
    "cdc_msh_present_but_missing_msh-2.hl7": {"parse.hl7_bad_msh"},
    "cdc_msh_present_but_missing_msh-9.hl7": {"parse.hl7_bad_msh"},
    "cdc_msh_present_but_missing_msh-10.hl7": {"parse.hl7_bad_msh"},
    # MSH-6 is optional in v2.5.1, but the file is a bare MSH: an ORM^O01 without the ORC order
    "cdc_msh_present_but_missing_msh-6.hl7": {"parse.hl7_missing_segment"},
    # v2.3 is a valid version (FHIR-Converter's samples use it); the message is a bare MSH too
    "cdc_msh-12_has_value_2_3.hl7": {"parse.hl7_missing_segment"},
    "cdc_orm_obx-5_is_not_a_numeric_value.hl7": {"parse.hl7_bad_value"},
    "cdc_011_AL_ORM_O01_malformed_DTM_datatype_0_initial_message.hl7": {"parse.hl7_bad_datetime"},
    "cdc_013_AL_ORM_O01_invalid_text_as_txt_datatype_0_initial_message.hl7": {
        "parse.hl7_bad_value"
    },
    # an XAD holding the whole address in its first component is valid ER7; nothing to reject
    "cdc_012_AL_ORM_O01_malformed_XAD_datatype_0_initial_message.hl7": set(),
    "python_hl7_sample_bad_batch.hl7": {"parse.hl7_no_msh"},
    "python_hl7_sample_bad_batch1.hl7": {"parse.hl7_bad_batch"},
    "python_hl7_sample_bad_file.hl7": {"parse.hl7_no_msh"},
    "python_hl7_sample_bad_file1.hl7": {"parse.hl7_bad_batch"},
    "python_hl7_sample_bad_file2.hl7": {"parse.hl7_bad_batch"},
    "python_hl7_sample_bad_file3.hl7": {"parse.hl7_no_msh"},
}


def test_every_malformed_corpus_file_is_quarantined_with_a_sensible_rule(corpus_lake):
    _, split, tables = corpus_lake
    assert set(MALFORMED) == {p.name for p in (CORPUS / "malformed").iterdir()}
    found: dict[str, set[str]] = {name: set() for name in MALFORMED}
    for table in [split.quarantined] + [f.split.quarantined for f in tables.values()]:
        for q in rows(table):
            if q["source_file"].startswith("malformed/"):
                found[q["source_file"].split("/", 1)[1]].add(q["rule_id"])
    assert found == MALFORMED


def test_silver_accounts_for_every_corpus_segment(corpus_lake):
    _, split, tables = corpus_lake
    for name, flat in tables.items():
        assert flat.balanced, name
        assert flat.split.good.schema.equals(hl7v2.TABLES[name].schema), name  # type: ignore[index]
        assert flat.split.quarantined.schema.equals(QUARANTINE.schema), name
        assert flat.split.good.num_rows >= flat.records_out
    assert {n: (f.records_in, f.records_out) for n, f in tables.items()} == {
        "patients": (67, 63),
        "encounters": (38, 18),
        "observations": (885, 619),
        "medications": (4, 4),
        "conditions": (9, 9),
    }
    only = hl7v2.bronze_only_from_bronze(split.good)
    assert only.good.column("message_type").to_pylist() == ["ACK"]


def test_corpus_traps_are_caught_where_they_are(corpus_lake):
    _, _, tables = corpus_lake
    observations = rows(tables["observations"].split.quarantined)
    leap = [
        q
        for q in observations
        if "NewSTEPs" in q["source_file"] and q["rule_id"] == "parse.hl7_bad_datetime"
    ]
    assert leap and all("OBX-14" in q["reason"] for q in leap)  # 2017-02-29 does not exist
    patients = {
        (q["source_file"].split("/")[-1], q["rule_id"])
        for q in rows(tables["patients"].split.quarantined)
    }
    assert (
        "Epic__001_Epic_ORM_O01.hl7",
        "parse.hl7_bad_datetime",
    ) in patients  # PID-7 is the text "DOB"
    assert ("sample_hl7.hl7", "parse.hl7_bad_datetime") in patients  # 196203520 has nine digits
    assert ("CA__002_CA_ORU_R01.hl7", "silver.missing_id") in patients  # PID-3 is ^^^NPI^MR, no id


def _bronze_of(split: Split, name: str) -> pa.Table:
    return split.good.filter(pc.match_substring(split.good.column("_source_file"), name))


def test_lab_results_match_fhir_converters_expected_observations(corpus_lake):
    """Microsoft FHIR-Converter's own expected output for LAB-ORU-1 is the oracle."""
    _, split, _ = corpus_lake
    got = rows(
        hl7v2.observations_from_bronze(_bronze_of(split, "LAB-ORU-1.hl7"), key=KEY).split.good
    )
    expected = json.loads(
        (CORPUS / "ms_fhir_converter/expected_fhir_r4/LAB-ORU-1-expected.json").read_text()
    )
    observations = [
        e["resource"] for e in expected["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert len(got) == len(observations) == 10
    by_code = {r["code"]: r for r in got}
    for obs in observations:
        coding = obs["code"]["coding"][0]
        row = by_code[coding["code"]]
        assert (row["code_system"], row["code_display"], row["status"]) == (
            LOINC,
            coding["display"],
            obs["status"],
        )
        quantity = obs.get("valueQuantity")
        assert (row["value_num"], row["value_unit"]) == (
            (quantity["value"], quantity["unit"]) if quantity else (None, None)
        )
        flags = [c["code"] for i in obs.get("interpretation", []) for c in i["coding"]]
        assert row["interpretation"] == (flags[0] if flags else None)
        if "effectiveDateTime" in obs:
            true_time = row["effective_at"] - shift_of(row["person_key"])
            assert true_time == datetime.fromisoformat(obs["effectiveDateTime"])
        else:
            assert row["effective_at"] is None


def test_lab_patient_is_keyed_by_mrn_and_dates_shift_with_it(corpus_lake):
    _, split, _ = corpus_lake
    (patient,) = rows(
        hl7v2.patients_from_bronze(_bronze_of(split, "LAB-ORU-1.hl7"), key=KEY).split.good
    )
    expected = json.loads(
        (CORPUS / "ms_fhir_converter/expected_fhir_r4/LAB-ORU-1-expected.json").read_text()
    )
    fhir_patient = next(
        e["resource"] for e in expected["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    mrn = next(
        i["value"] for i in fhir_patient["identifier"] if i["type"]["coding"][0]["code"] == "MR"
    )
    assert patient["person_key"] == source_key(
        KEY, "mrn:1", mrn
    )  # PID-3 10006579^^^1^MR: authority "1"
    assert patient["source_key"] == source_key(
        KEY, "hl7v2:SomeSystem", f"{mrn}^1"
    )  # no MSH-4: MSH-3
    assert patient["birth_date"] - shift_of(patient["person_key"]) == date.fromisoformat(
        fhir_patient["birthDate"]
    )
    assert patient["gender"] == fhir_patient["gender"]


def test_pharmacy_order_matches_fhir_converters_expected_medication(corpus_lake):
    _, split, _ = corpus_lake
    (order,) = rows(
        hl7v2.medications_from_bronze(_bronze_of(split, "RDE-O11-01.hl7"), key=KEY).split.good
    )
    expected = json.loads(
        (CORPUS / "ms_fhir_converter/expected_fhir_r4/RDE-O11-01-expected.json").read_text()
    )
    resources = [e["resource"] for e in expected["entry"]]
    filler = next(
        r
        for r in resources
        if r["resourceType"] == "MedicationRequest" and r["intent"] == "filler-order"
    )
    medication_id = filler["medicationReference"]["reference"].split("/")[1]
    drug = next(
        r for r in resources if r["resourceType"] == "Medication" and r["id"] == medication_id
    )
    coding = drug["code"]["coding"][0]
    assert (order["code_system"], order["code"], order["code_display"]) == (
        coding["system"],
        coding["code"],
        coding["display"],
    )
    assert (order["intent"], order["status"]) == (filler["intent"], filler["status"])
    assert order["authored_at"] - shift_of(order["person_key"]) == datetime.fromisoformat(
        filler["authoredOn"]
    )


# ------------------------------------------------------------------ silver, hand-made


def test_patient_is_keyed_by_mrn_and_loses_direct_identifiers(tmp_path):
    _, split = ingest(
        tmp_path,
        {"a.hl7": message(PID, "NK1|1|Lindqvist^Nils|SPO^Spouse^HL70063||(555) 201-0202", OBR)},
    )
    (row,) = rows(silver(split.good)["patients"].split.good)
    person = source_key(
        KEY, "mrn:http://hospital.example.org/mrn", "MRN-1"
    )  # what FHIR with that MRN gets
    record = source_key(KEY, "hl7v2:GOOD_HOSP", "MRN-1^http://hospital.example.org/mrn")
    assert (row["person_key"], row["source_key"], row["source_system"]) == (
        person,
        record,
        "hl7v2:GOOD_HOSP",
    )
    assert row["birth_date"] == date(1950, 3, 15) + shift_of(person)
    assert (row["gender"], row["zip3"], row["state"], row["country"], row["marital_status"]) == (
        "female",
        "021",
        "MA",
        "USA",
        "M",
    )
    text = json.dumps(row, default=str)
    for phi in (
        "Lindqvist",
        "Astrid",
        "Nils",
        "MRN-1",
        "900-01-0001",
        "Elm",
        "201-0101",
        "201-0202",
        "02115",
    ):
        assert phi not in text


def test_the_identities_silver_drops_go_to_the_vault_under_the_same_keys(tmp_path):
    older = message(PID.replace("Astrid", "Astri"), OBR, control="C0").replace(
        "20240105093000-0500", "20240101000000-0500"
    )
    _, split = ingest(tmp_path, {"a.hl7": f"{message(PID, OBR)}\r{older}"})
    (identity,) = hl7v2.patient_identities(split.good, key=KEY)
    row = rows(silver(split.good)["patients"].split.good)[0]
    assert (identity["person_key"], identity["source_key"]) == (
        row["person_key"],
        row["source_key"],
    )
    assert identity["names"] == [
        {"family": "Lindqvist", "given": ["Astrid"], "suffix": None, "prefix": None, "use": None}
    ]  # the newest message's spelling
    assert {i["value"] for i in identity["identifiers"]} == {"MRN-1", "900-01-0001"}
    assert identity["address"][0]["line"] == ["12 Elm St", "Apt 2"]
    assert identity["telecom"][0]["value"] == "(555) 201-0101"
    assert (identity["birth_date"], identity["local_id"]) == (
        "19500315",
        "MRN-1^http://hospital.example.org/mrn",
    )


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        ("PID|1||P-7^^^HOSP^PI", lambda: source_key(KEY, "hl7v2:GOOD_HOSP", "P-7^HOSP")),
        ("PID|1|P-8||", lambda: source_key(KEY, "hl7v2:GOOD_HOSP", "P-8")),  # PID-2, v2.3 style
        ("PID|1||P-9^^^&1.2.840.1&ISO^MR", lambda: source_key(KEY, "mrn:urn:oid:1.2.840.1", "P-9")),
        (
            "PID|1||P-5^^^^MR",
            lambda: source_key(KEY, "hl7v2:GOOD_HOSP", "P-5"),
        ),  # an MRN of no authority
    ],
)
def test_patient_keys_fall_back_to_the_facility_without_a_qualified_mrn(tmp_path, pid, expected):
    _, split = ingest(tmp_path, {"a.hl7": message(pid, OBR)})
    (row,) = rows(silver(split.good)["patients"].split.good)
    assert row["person_key"] == expected()
    if "&ISO^MR" not in pid:  # no qualified MRN: the person is the record until entity resolution
        assert row["source_key"] == row["person_key"]


def test_observation_values_units_ranges_and_flags(tmp_path):
    segments = [
        PID,
        PV1,
        "ORC|RE||F-1^LAB",
        OBR,
        "OBX|1|NM|2345-7^Glucose^LN||182|mg/dL^milligram per deciliter^UCUM|70-99|H|||F|||20240105081500-0500",
        "OBX|2|SN|2093-3^Cholesterol^LN||<^200|mg/dL|<200|N|||C",
        "OBX|3|CWE|94558-4^SARS-CoV-2 Ag^LN||260373001^Detected^SCT||||||P",
        "OBX|4|ST|8251-1^Service comment^LN||patient Astrid called at home||||||F",
        "OBX|5|NM|GLU^Glucose^L||5.5~5.7|mmol/L||||||F",
        "OBX|6|NM|2345-7^Glucose^LN||||||||X",
    ]
    _, split = ingest(tmp_path, {"a.hl7": message(*segments)})
    flat = silver(split.good)
    got = rows(flat["observations"].split.good)
    assert flat["observations"].balanced and (flat["observations"].records_in, len(got)) == (6, 7)
    glucose, cholesterol, covid, comment, local_1, local_2, absent = got
    assert (
        glucose["value_num"],
        glucose["value_unit"],
        glucose["ref_low"],
        glucose["ref_high"],
    ) == (182, "mg/dL", 70, 99)
    assert (
        glucose["interpretation"],
        glucose["status"],
        glucose["category"],
        glucose["panel_code"],
    ) == ("H", "final", "laboratory", None)
    assert glucose["effective_at"] == datetime(2024, 1, 5, 13, 15, tzinfo=UTC) + shift_of(
        glucose["person_key"]
    )
    assert cholesterol["effective_at"] == datetime(2024, 1, 5, 13, 0, tzinfo=UTC) + shift_of(
        glucose["person_key"]
    )
    assert (
        cholesterol["value_num"],
        cholesterol["value_text"],
        cholesterol["ref_high"],
        cholesterol["status"],
    ) == (None, "<200", 200, "corrected")
    assert (covid["value_code"], covid["value_text"], covid["status"], covid["panel_code"]) == (
        "260373001",
        "Detected",
        "preliminary",
        "2345-7",
    )
    assert (comment["value_text"], comment["value_num"], comment["code"]) == (None, None, "8251-1")
    assert [(r["code_system"], r["code"], r["value_num"]) for r in (local_1, local_2)] == [
        ("L", "GLU", 5.5),
        ("L", "GLU", 5.7),
    ]
    assert local_1["observation_key"] != local_2["observation_key"]
    assert (absent["status"], absent["value_num"]) == ("cancelled", None)
    encounter = rows(flat["encounters"].split.good)[0]
    assert {r["encounter_key"] for r in got} == {encounter["encounter_key"]}


@pytest.mark.parametrize(
    ("segment", "rule", "words"),
    [
        (
            "OBX|1|NM|2345-7^Glucose^LN||see note|mg/dL",
            "parse.hl7_bad_value",
            ["OBX 4", "2345-7", "NM"],
        ),
        ("OBX|1|SN|2345-7^Glucose^LN||~^abc", "parse.hl7_bad_value", ["SN"]),
        ("OBX|1|TX|8251-1^Comment^LN||Astrid^Lindqvist", "parse.hl7_bad_value", ["components"]),
        (
            "OBX|1|DTM|62317-3^Transfusion date^LN||February 2 2024",
            "parse.hl7_bad_datetime",
            ["OBX-5"],
        ),
        ("OBX|1|TM|1-1^Time^LN||2561", "parse.hl7_bad_datetime", ["TM"]),
        (
            seg(
                "OBX",
                {1: "1", 2: "NM", 3: "2345-7^Glucose^LN", 5: "90", 11: "F", 14: "2024-01-05T08:00"},
            ),
            "parse.hl7_bad_datetime",
            ["OBX-14"],
        ),
        ("OBX|1|NM|||90", "parse.hl7_bad_segment", ["OBX-3"]),
    ],
)
def test_a_bad_observation_is_quarantined_alone_without_its_value_in_the_reason(
    tmp_path, segment, rule, words
):
    good = "OBX|2|NM|2345-7^Glucose^LN||90|mg/dL"
    _, split = ingest(tmp_path, {"a.hl7": message(PID, OBR, segment, good)})
    flat = silver(split.good)["observations"]
    assert flat.balanced and flat.records_out == 1 and flat.split.good.num_rows == 1
    (q,) = rows(flat.split.quarantined)
    assert (q["rule_id"], q["source_file"], q["source_offset"], q["record_id"]) == (
        rule,
        "a.hl7",
        1,
        "C1",
    )
    assert q["record_hash"] == split.good.column("_record_hash")[0].as_py()
    for word in words:
        assert word in q["reason"]
    for value in ("see note", "abc", "Astrid", "February", "2561", "2024-01-05T08:00"):
        assert value not in q["reason"]


def test_silver_rules_for_patients_visits_and_orders(tmp_path):
    segments = [
        "PID|1||MRN-2^^^&http://hospital.example.org/mrn&URI^MR||Doe^Jane||19800230",  # 30 February
        "PV1|1|O",  # no visit number, no admit time
        "DG1|1||",
    ]
    _, split = ingest(tmp_path, {"a.hl7": message(*segments, type_="ADT^A01^ADT_A01")})
    flat = silver(split.good)
    assert [(q["rule_id"]) for q in rows(flat["patients"].split.quarantined)] == [
        "parse.hl7_bad_datetime"
    ]
    assert [(q["rule_id"]) for q in rows(flat["encounters"].split.quarantined)] == [
        "silver.missing_id"
    ]
    assert [(q["rule_id"]) for q in rows(flat["conditions"].split.quarantined)] == [
        "parse.hl7_bad_segment"
    ]
    _, split = ingest(
        tmp_path / "b", {"b.hl7": message("PID|1|||", OBR, "OBX|1|NM|2345-7^Glucose^LN||90")}
    )
    flat = silver(split.good)
    assert [q["rule_id"] for q in rows(flat["patients"].split.quarantined)] == ["silver.missing_id"]
    assert [q["rule_id"] for q in rows(flat["observations"].split.quarantined)] == [
        "silver.missing_subject"
    ]


def test_two_bad_segments_of_one_message_are_two_quarantine_records(tmp_path):
    _, split = ingest(
        tmp_path, {"a.hl7": message(PID, OBR, "OBX|1|NM|1-1^A^LN||x", "OBX|2|NM|1-2^B^LN||y")}
    )
    quarantined = rows(silver(split.good)["observations"].split.quarantined)
    assert [q["reason"].split(" (")[1].split(")")[1].strip()[:5] for q in quarantined] == [
        "OBX 4",
        "OBX 5",
    ]
    assert (
        len({q["quarantine_id"] for q in quarantined}) == 2
    )  # the quarantine table is keyed by it
    again = rows(silver(split.good)["observations"].split.quarantined)
    assert [q["quarantine_id"] for q in again] == [
        q["quarantine_id"] for q in quarantined
    ]  # stable


def test_encounter_from_pv1_and_the_newest_adt_outranks_other_messages(tmp_path):
    admit = message("EVN|A01", PID, PV1, type_="ADT^A01^ADT_A01", control="A")
    discharge = message(
        "EVN|A08", PID, PV1 + "|20240106120000-0500", type_="ADT^A08^ADT_A01", control="B"
    )
    discharge = discharge.replace("20240105093000-0500", "20240106120100-0500")
    result = message(PID, PV1, OBR, "OBX|1|NM|2345-7^Glucose^LN||90", control="C").replace(
        "20240105093000-0500", "20240107000000-0500"
    )
    _, split = ingest(tmp_path, {"a.hl7": f"{admit}\r{result}\r{discharge}"})
    encounters = rows(silver(split.good)["encounters"].split.good)
    assert len({e["encounter_key"] for e in encounters}) == 1 and len(encounters) == 3
    newest = encounters[0]  # the gate promotes the first row of each key
    person = newest["person_key"]
    assert (newest["status"], newest["class_code"], newest["site"]) == (
        "finished",
        "IMP",
        "Riverside General Hospital",
    )
    assert newest["start_at"] == datetime(2024, 1, 4, 13, tzinfo=UTC) + shift_of(person)
    assert newest["end_at"] == datetime(2024, 1, 6, 17, tzinfo=UTC) + shift_of(person)
    assert [e["status"] for e in encounters] == ["finished", "in-progress", "in-progress"]


def test_a_patient_repeated_in_one_message_is_counted_as_merged(tmp_path):
    _, split = ingest(tmp_path, {"a.hl7": message(PID, OBR, PID, OBR)})
    flat = silver(split.good)["patients"]
    assert (flat.records_in, flat.records_out, flat.merged, flat.split.good.num_rows) == (
        2,
        1,
        1,
        1,
    )


def test_pharmacy_order_with_rxnorm_status_and_sig(tmp_path):
    segments = [
        PID,
        PV1,
        "ORC|NW|ORD-1^EHR|||CM||||20240105094500-0500",
        "RXO|860975^metformin 500 MG^RXNORM|1||TAB",
        "RXE||860975^24 HR metformin hydrochloride 500 MG^RXNORM|1||TAB||^Take 1 tablet daily",
        "RXR|PO",
        "ORC|NW|ORD-2^EHR",
        "RXO|00047040230^Ampicillin 250 mg caps^NDC",
    ]
    _, split = ingest(tmp_path, {"a.hl7": message(*segments, type_="RDE^O11^RDE_O11")})
    first, second = rows(silver(split.good)["medications"].split.good)
    person = first["person_key"]
    assert (
        first["code"],
        first["rxnorm_code"],
        first["code_system"],
        first["intent"],
        first["status"],
    ) == (
        "860975",
        "860975",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "filler-order",
        "completed",
    )
    assert first["authored_at"] == datetime(2024, 1, 5, 14, 45, tzinfo=UTC) + shift_of(person)
    assert first["dosage_text"] == "Take 1 tablet daily"
    assert (second["code_system"], second["rxnorm_code"], second["intent"], second["status"]) == (
        "http://hl7.org/fhir/sid/ndc",
        None,
        "original-order",
        "active",
    )
    assert first["medication_key"] != second["medication_key"]


def test_diagnosis_codes_in_icd10cm_and_snomed(tmp_path):
    segments = [
        PID,
        PV1,
        "DG1|1||E11.9^Type 2 diabetes^I10C^44054006^Diabetes type 2^SCT||20240101|F",
    ]
    _, split = ingest(tmp_path, {"a.hl7": message("EVN|A01", *segments, type_="ADT^A01^ADT_A01")})
    (row,) = rows(silver(split.good)["conditions"].split.good)
    assert (row["code"], row["icd10cm_code"], row["snomed_code"], row["code_display"]) == (
        "E11.9",
        "E11.9",
        "44054006",
        "Type 2 diabetes",
    )
    # no offset in DG1-5: the time is in the sender's zone, the one MSH-7 states (-05:00)
    assert row["onset_at"] == datetime(2024, 1, 1, 5, tzinfo=UTC) + shift_of(row["person_key"])


def test_messages_with_nothing_for_silver_stay_in_bronze_only(tmp_path):
    ack = message("MSA|AA|C0", type_="ACK")
    _, split = ingest(tmp_path, {"a.hl7": ack + "\r" + message(PID, OBR, control="C2")})
    only = hl7v2.bronze_only_from_bronze(split.good)
    assert only.good.column("message_control_id").to_pylist() == ["C1"]


# ------------------------------------------------------------------ dates and codes


@pytest.mark.parametrize(
    ("text", "naive", "zone"),
    [
        ("2014", datetime(2014, 1, 1), None),
        ("201410", datetime(2014, 10, 1), None),
        ("20141006064500+0700", datetime(2014, 10, 6, 6, 45), timezone(timedelta(hours=7))),
        (
            "20210622131413.8343-0400",
            datetime(2021, 6, 22, 13, 14, 13, 834300),
            timezone(timedelta(hours=-4)),
        ),
        ("202402210152-0000", datetime(2024, 2, 21, 1, 52), UTC),
    ],
)
def test_hl7_datetimes(text, naive, zone):
    assert hl7v2.parse_dtm(text) == (naive, zone)


@pytest.mark.parametrize(
    "text",
    ["DOB", "196203520", "20170229", "2024-01-05", "20240105 0930", "20240105+2500", "20241301"],
)
def test_bad_hl7_datetimes(text):
    with pytest.raises(hl7v2.BadDatetime):
        hl7v2.parse_dtm(text)


def test_times_without_offset_are_in_the_senders_zone():
    minus5 = timezone(timedelta(hours=-5))
    assert hl7v2.to_utc("20240105093000", minus5) == datetime(2024, 1, 5, 14, 30, tzinfo=UTC)
    assert hl7v2.to_utc("20240105093000", None) == datetime(2024, 1, 5, 9, 30, tzinfo=UTC)
    assert hl7v2.to_date("198808181126+0215") == date(
        1988, 8, 18
    )  # a birth date keeps its calendar day


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.5-5.0", (3.5, 5.0)),
        (" 70 - 99 ", (70, 99)),
        ("<200", (None, 200)),
        (">=60", (60, None)),
        ("-1.0-1.0", (-1.0, 1.0)),
        ("70_105", (None, None)),
        ("negative", (None, None)),
    ],
)
def test_reference_ranges(text, expected):
    assert hl7v2.reference_range(text) == expected


def test_coding_systems_map_to_fhir_uris_and_local_ones_are_kept():
    assert hl7v2.coding_system("LN") == LOINC
    assert hl7v2.coding_system("I10C") == "http://hl7.org/fhir/sid/icd-10-cm"
    assert hl7v2.coding_system("HL70078") == "http://terminology.hl7.org/CodeSystem/v2-0078"
    assert hl7v2.coding_system("99LAB") == "99LAB" and hl7v2.coding_system("") is None


def test_bronze_spec_names_every_column_the_rows_have(tmp_path):
    _, split = ingest(tmp_path, {"a.hl7": message(PID, OBR)})
    assert split.good.schema.equals(hl7v2.BRONZE_HL7V2.schema)
    assert hl7v2.BRONZE_HL7V2.key == ("_record_hash",) and "raw" in hl7v2.BRONZE_HL7V2.phi_columns
    row = rows(split.good)[0]
    assert (row["message_type"], row["version"], row["sending_facility"]) == (
        "ORU^R01",
        "2.5.1",
        "GOOD_HOSP",
    )
    assert re.fullmatch(r"[0-9a-f]{64}", row["_record_hash"])


def refused(split: Split) -> list[dict[str, Any]]:
    """Quarantine rows without the time they were made."""
    return rows(split.quarantined.drop_columns(["quarantined_at"]))


def test_one_parse_of_each_message_serves_silver_identities_and_notes(corpus_lake):
    """The pipeline parses each message once (``parse_messages``) and hands the parse to every
    step: the same silver rows, identities and notes as each step parsing bronze itself."""
    _, split, _ = corpus_lake
    bronze = split.good
    parsed = hl7v2.parse_messages(bronze)
    assert len(parsed) == bronze.num_rows > 20
    from_rows = hl7v2.silver_from_bronze(bronze, key=KEY)
    from_parse = hl7v2.silver_from_bronze(parsed, key=KEY)
    assert from_parse.keys() == from_rows.keys()
    for name, flat in from_rows.items():
        assert rows(from_parse[name].split.good) == rows(flat.split.good), name
        assert refused(from_parse[name].split) == refused(flat.split), name
    assert hl7v2.patient_identities(parsed, key=KEY) == hl7v2.patient_identities(bronze, key=KEY)
    notes = hl7v2.notes_from_bronze(parsed, key=KEY)
    assert notes.good.num_rows > 0
    assert rows(notes.good) == rows(hl7v2.notes_from_bronze(bronze, key=KEY).good)
