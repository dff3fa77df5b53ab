"""CSV extracts: mapping validation, bronze with line numbers, per-line and per-file quarantine,
staging rows keyed and standardized like FHIR's, on hand-made extracts and the real Synthea CSV."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs.ingest import csv
from medlake.jobs.ingest.fhir import patient_mrn_key
from medlake.jobs.stage import StageResult
from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.registry import BRONZE_CSV, SILVER_OBSERVATIONS, staging_name

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_SHIFT = 30
MRN_SYSTEM = "http://hospital.example.org/mrn"
CORPUS = (
    Path(__file__).resolve().parents[2] / "corpus"
    / "csv_ehr"
    / "synthea_csv_sweden_13pt"
)

LABS_MAPPING = f"""\
name: labs
files: "labs*.csv"
target: observations
delimiter: ";"
timezone: "-05:00"
patient: {{column: MRN, authority: "{MRN_SYSTEM}"}}
record_id: [ResultID]
fields:
  code: {{column: TestCode, system_column: CodeSystem, systems: {{LN: LOINC, L: "http://hospital.example.org/lab-codes"}}}}
  value_num: {{column: Result}}
  value_unit: {{column: Units}}
  effective_at: {{column: Collected, format: "%d/%m/%Y %H:%M", required: true}}
  status: {{column: Status, values: {{F: final, P: preliminary}}}}
  category: {{value: laboratory}}
"""
LAB_HEADER = "ResultID;MRN;Name;TestCode;CodeSystem;Result;Units;Collected;Status"


def lab(
    rid: str,
    *,
    mrn: str = "MRN-1",
    name: str = "Zoë Müller",
    code: str = "2339-0",
    system: str = "LN",
    value: str = "95",
    unit: str = "mg/dL",
    at: str = "05/03/2024 08:30",
    status: str = "F",
) -> str:
    return f"{rid};{mrn};{name};{code};{system};{value};{unit};{at};{status}"


def landing(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    """A landing folder holding these files under csv/."""
    root = tmp_path / "landing"
    for name, content in files.items():
        path = root / "csv" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def run(root: Path, lake: Lake, run_id: str = "r1") -> tuple[StageResult, StageResult]:
    ingested = csv.ingest(root, lake, run_id=run_id, now=NOW)
    staged = csv.to_staging(
        lake, run_id=run_id, key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    return ingested, staged


def quarantined(lake: Lake) -> dict[tuple[str, int], dict[str, Any]]:
    return {(q["source_file"], q["source_offset"]): q for q in lake.read("quarantine").to_pylist()}


def entry(result: StageResult, stage: str, table: str) -> Entry:
    return next(e for e in result.entries if (e.stage, e.table_name) == (stage, table))


# -- the mapping file itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (('delimiter: ";"', 'delimiter: ";;"'), "delimiter"),
        (("target: observations", "target: allergies"), "target"),
        (("name: labs", "name: Lab Results"), "name"),
        (('delimiter: ";"', "encoding: utf-16"), "encoding"),
        (('delimiter: ";"', "encoding: no-such-codec"), "encoding"),
        (('timezone: "-05:00"', "timezone: Mars/Olympus"), "timezone"),
        (("record_id: [ResultID]", "record_id: []"), "record_id"),
        (("  category: {value: laboratory}", "  colour: {value: red}"), "fields.colour"),
        (("  category: {value: laboratory}", "  person_key: {column: MRN}"), "fields.person_key"),
        (
            ("  category: {value: laboratory}", '  category: {column: Cat, format: "%Y"}'),
            "fields.category",
        ),
        (("  category: {value: laboratory}", "  category: {}"), "fields.category"),
        (("LN: LOINC", "LN: LOINK"), "LOINK"),
        (("record_id:", "recordid:"), "recordid"),
    ],
)
def test_a_bad_mapping_is_refused_naming_the_file_and_the_field(tmp_path, change, named):
    old, new = change
    assert old in LABS_MAPPING
    root = landing(tmp_path, {"labs.mapping.yaml": LABS_MAPPING.replace(old, new, 1)})
    with pytest.raises(csv.MappingError) as err:
        csv.load_mappings(root / "csv")
    assert "labs.mapping.yaml" in str(err.value) and named in str(err.value)


def test_a_mapping_that_is_not_yaml_or_not_a_mapping_is_refused(tmp_path):
    for text in ("name: [unclosed", "- just\n- a list\n"):
        with pytest.raises(csv.MappingError, match="x.mapping.yaml"):
            csv.parse_mapping(text, name="x.mapping.yaml")


def test_two_mapping_files_for_one_extract_name_are_refused(tmp_path):
    root = landing(tmp_path, {"a.mapping.yaml": LABS_MAPPING, "b.mapping.yaml": LABS_MAPPING})
    with pytest.raises(csv.MappingError, match="labs"):
        csv.load_mappings(root / "csv")


def test_the_shipped_mappings_are_valid():
    names = {
        m.mapping.name for m in map(csv.mapping_file, sorted(csv.SHIPPED_MAPPINGS.glob("*.yaml")))
    }
    assert names == {"synthea_patients", "synthea_allergies"}


# -- landing → bronze → staging -----------------------------------------------------------------


def test_good_lines_reach_staging_keyed_shifted_and_typed(tmp_path):
    text = "\n".join([LAB_HEADER, lab("R1"), lab("R2", value="5.5", unit="mmol/L"), ""])
    root = landing(tmp_path, {"labs.mapping.yaml": LABS_MAPPING, "labs_2024.csv": text})
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(root, lake)
    bronze = lake.read(BRONZE_CSV.name).sort_by("_source_offset").to_pylist()
    assert [(b["_source_file"], b["_source_offset"]) for b in bronze] == [
        ("csv/labs_2024.csv", 2),
        ("csv/labs_2024.csv", 3),
    ]
    assert bronze[0]["raw"] == lab("R1") and bronze[0]["header"] == LAB_HEADER
    assert bronze[0]["extract"] == "labs"
    [used] = lake.read("bronze.csv_mappings").to_pylist()
    assert (used["mapping_hash"], used["mapping"]) == (bronze[0]["mapping_hash"], LABS_MAPPING)
    rows = {
        r["observation_key"]: r
        for r in lake.read(staging_name(SILVER_OBSERVATIONS.name)).to_pylist()
    }
    person = mrn_key(KEY, MRN_SYSTEM, "MRN-1")
    shift = date_shift_days(KEY, person, max_days=MAX_SHIFT)
    first = next(r for r in rows.values() if r["value_num"] == 95)
    assert (
        first["person_key"] == person
        and first["status"] == "final"
        and first["category"] == "laboratory"
    )
    assert first["effective_at"] == datetime(2024, 3, 5, 13, 30, tzinfo=UTC) + timedelta(days=shift)
    assert first["_source_kind"] == "csv" and first["code_system"] == "http://loinc.org"
    assert not any("Zoë" in str(v) or "MRN-1" in str(v) for r in rows.values() for v in r.values())
    assert ingested.versions == {
        n: lake.version(n) for n in (BRONZE_CSV.name, "bronze.csv_mappings")
    }
    assert staged.versions == {
        staging_name(SILVER_OBSERVATIONS.name): lake.version(staging_name(SILVER_OBSERVATIONS.name))
    }


def test_units_and_local_codes_are_standardized_like_fhir(tmp_path):
    text = "\n".join(
        [
            LAB_HEADER,
            lab("R1", value="5.5", unit="mmol/L"),  # glucose in mmol/L → mg/dL
            lab("R2", code="GLU", system="L", value="90"),  # the lab's local code → LOINC
            lab("R3", code="9999-0", value="1"),  # not a LOINC code (check digit): quarantined
        ]
    )
    root = landing(tmp_path, {"labs.mapping.yaml": LABS_MAPPING, "labs.csv": text})
    lake = Lake(tmp_path / "lake")
    _, staged = run(root, lake)
    rows = sorted(lake.read("staging.observations").to_pylist(), key=lambda r: r["value_num"])
    assert [(r["code"], r["mapping_status"], r["value_unit"]) for r in rows] == [
        ("2339-0", "mapped", "mg/dL"),
        ("2339-0", "standard", "mg/dL"),
    ]
    assert rows[1]["value_num"] == pytest.approx(5.5 * 18.0156, rel=1e-3)
    assert (rows[1]["_unit_converted_from"], rows[1]["_value_original"]) == ("mmol/L", 5.5)
    assert rows[0]["_mapped_from"] == "http://hospital.example.org/lab-codes|GLU"
    assert entry(staged, "standardize", "silver.observations#csv") == Entry(
        "standardize", "silver.observations#csv", records_in=3, records_out=2, quarantined=1
    )
    refused = [
        q for q in lake.read("quarantine").to_pylist() if q["table_name"] == "silver.observations"
    ]
    assert [q["rule_id"] for q in refused] == ["terminology.invalid_code"]


def test_each_malformed_line_is_quarantined_with_its_rule_and_line_number(tmp_path):
    lines = [
        LAB_HEADER,  # 1
        lab("R1"),  # 2 good
        lab("R2") + ";extra",  # 3 ragged
        lab("R3", at="31/02/2024 08:30"),  # 4 bad date
        lab("R4", value="pending"),  # 5 bad number
        lab("R5", system="XYZ"),  # 6 unknown code system
        lab("R6", mrn=""),  # 7 missing id
        lab("R7", at=""),  # 8 missing required field
        lab("R8", status="Q"),  # 9 outside the value map
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    data += lab("R9", name="Søren").encode("latin-1") + b"\n"  # 10 Latin-1 bytes in a UTF-8 extract
    data += lab("R10", name='"unclosed').encode("utf-8") + b"\n"  # 11 a quote never closed
    data += lab("R11").encode("utf-8") + b"\n"  # 12 good: the stray quote did not swallow it
    root = landing(tmp_path, {"labs.mapping.yaml": LABS_MAPPING, "labs.csv": data})
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(root, lake)
    found = {offset: q["rule_id"] for (file, offset), q in quarantined(lake).items()}
    assert found == {
        3: "parse.csv_ragged_row",
        4: "parse.csv_bad_date",
        5: "parse.csv_bad_number",
        6: "parse.csv_unknown_code_system",
        7: "parse.csv_missing_field",
        8: "parse.csv_missing_field",
        9: "parse.csv_bad_value",
        10: "parse.csv_bad_encoding",
        11: "parse.csv_unclosed_quote",
    }
    for q in quarantined(lake).values():
        assert q["source_file"] == "csv/labs.csv" and f"line {q['source_offset']}" in q["reason"]
        assert not any(phi in q["reason"] for phi in ("MRN-1", "Zoë", "Søren", "pending", "31/02"))
    assert entry(ingested, "ingest", BRONZE_CSV.name) == Entry(
        "ingest", BRONZE_CSV.name, records_in=11, records_out=8, quarantined=3
    )
    assert entry(staged, "silver", "silver.observations#csv") == Entry(
        "silver", "silver.observations#csv", records_in=8, records_out=2, quarantined=6
    )
    assert lake.count("staging.observations") == 2


def test_whole_files_are_quarantined_when_their_header_or_mapping_does_not_fit(tmp_path):
    good = "\n".join([LAB_HEADER, lab("R1")])
    root = landing(
        tmp_path,
        {
            "labs.mapping.yaml": LABS_MAPPING,
            "labs_tabs.csv": good.replace(";", "\t"),
            "labs_renamed.csv": good.replace("Collected", "Taken"),
            "labs_empty.csv": "",
            "stock.csv": "item,quantity\ngauze,12\n",
            "other.mapping.yaml": LABS_MAPPING.replace("name: labs", "name: other").replace(
                "labs*", "*stock*"
            ),
            "labs_stock.csv": good,
        },
    )
    lake = Lake(tmp_path / "lake")
    ingested, _ = run(root, lake)
    found = quarantined(lake)
    assert {(f, o): q["rule_id"] for (f, o), q in found.items()} == {
        ("csv/labs_tabs.csv", 0): "parse.csv_wrong_delimiter",
        ("csv/labs_renamed.csv", 0): "parse.csv_header_mismatch",
        ("csv/labs_empty.csv", 0): "parse.csv_empty_file",
        ("csv/stock.csv", 0): "parse.csv_header_mismatch",
        ("csv/labs_stock.csv", 0): "ingest.csv_ambiguous_mapping",
    }
    assert "tab" in found[("csv/labs_tabs.csv", 0)]["reason"]
    assert "'Collected'" in found[("csv/labs_renamed.csv", 0)]["reason"]
    assert entry(ingested, "ingest", BRONZE_CSV.name).records_in == 5  # one record per whole file
    assert lake.count(BRONZE_CSV.name) == 0


def test_a_file_no_mapping_matches_is_quarantined_and_read_once_a_mapping_exists(tmp_path):
    root = landing(tmp_path, {"labs.csv": "\n".join([LAB_HEADER, lab("R1"), lab("R2")])})
    lake = Lake(tmp_path / "lake")
    ingested, _ = run(root, lake)
    assert [q["rule_id"] for q in quarantined(lake).values()] == ["ingest.no_mapping"]
    assert (root / "csv" / "labs.csv").is_file()
    assert entry(ingested, "ingest", BRONZE_CSV.name) == Entry(
        "ingest", BRONZE_CSV.name, 1, quarantined=1
    )
    (root / "csv" / "labs.mapping.yaml").write_text(LABS_MAPPING)
    ingested, _ = run(root, lake, run_id="r2")
    assert entry(ingested, "ingest", BRONZE_CSV.name) == Entry(
        "ingest", BRONZE_CSV.name, 2, records_out=2
    )
    assert lake.count("staging.observations") == 2


def test_reingesting_adds_nothing_and_the_ledger_adds_up(tmp_path):
    text = "\n".join([LAB_HEADER, lab("R1"), lab("R2") + ";x", lab("R3", value="?")])
    root = landing(tmp_path, {"labs.mapping.yaml": LABS_MAPPING, "labs.csv": text})
    lake = Lake(tmp_path / "lake")
    run(root, lake)
    before = {n: lake.count(n) for n in (BRONZE_CSV.name, "quarantine")}
    ingested, staged = run(root, lake, run_id="r2")
    assert {n: lake.count(n) for n in before} == before
    assert entry(ingested, "ingest", BRONZE_CSV.name) == Entry(
        "ingest", BRONZE_CSV.name, records_in=3, quarantined=1, merged=2
    )
    assert staged.entries == []  # nothing new in bronze this run: nothing staged
    shutil.copy(
        root / "csv" / "labs.csv", root / "csv" / "labs_resent.csv"
    )  # the extract sent again
    ingested, _ = run(root, lake, run_id="r3")
    assert lake.count(BRONZE_CSV.name) == before[BRONZE_CSV.name]
    assert entry(ingested, "ingest", BRONZE_CSV.name).merged == 4
    rows = lake.read("ledger").to_pylist()
    assert rows and all(r["balanced"] for r in rows)


def test_staging_rows_of_fhir_and_hl7_are_kept_and_csv_rows_appended(tmp_path):
    root = landing(
        tmp_path,
        {"labs.mapping.yaml": LABS_MAPPING, "labs.csv": "\n".join([LAB_HEADER, lab("R1")])},
    )
    lake = Lake(tmp_path / "lake")
    earlier = pa.Table.from_pylist(
        [
            {
                "observation_key": "fhir-1",
                "person_key": "p",
                "_record_hash": "h",
                "_source_kind": "fhir",
                "_run_id": "r1",
            }
        ]
    )
    lake.write(
        staging_name(SILVER_OBSERVATIONS.name), earlier, mode="overwrite", spec=SILVER_OBSERVATIONS
    )
    run(root, lake)
    kinds = sorted(
        lake.read("staging.observations", columns=["_source_kind"]).column(0).to_pylist()
    )
    assert kinds == ["csv", "fhir"]


def test_the_same_mrn_is_the_same_person_as_in_fhir(tmp_path):
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": MRN_SYSTEM,
                "value": "MRN-1",
            }
        ],
    }
    root = landing(
        tmp_path,
        {"labs.mapping.yaml": LABS_MAPPING, "labs.csv": "\n".join([LAB_HEADER, lab("R1")])},
    )
    lake = Lake(tmp_path / "lake")
    run(root, lake)
    [row] = lake.read("staging.observations").to_pylist()
    assert row["person_key"] == patient_mrn_key(KEY, patient)


def test_latin1_extract_multiline_quotes_and_bom(tmp_path):
    mapping = f"""\
name: diagnoses
files: "dx.csv"
target: conditions
encoding: latin-1
patient: {{column: MRN, authority: "{MRN_SYSTEM}"}}
record_id: [ID]
fields:
  code: {{column: ICD10, system: ICD10CM}}
  code_display: {{column: Description}}
  onset_at: {{column: Date, format: "%d.%m.%Y"}}
"""
    text = (
        "ID,MRN,Name,ICD10,Description,Date\r\n"
        'D1,MRN-1,"Søren Østergaard",E11.9,"Type 2 diabetes mellitus,\r\nwithout complications",01.02.2024\r\n'
        'D2,MRN-2,"Zoë",I10,"Essential (primary) hypertension",31.12.2023\r\n'
    )
    root = landing(tmp_path, {"dx.mapping.yaml": mapping, "dx.csv": text.encode("latin-1")})
    lake = Lake(tmp_path / "lake")
    run(root, lake)
    bronze = lake.read(BRONZE_CSV.name).sort_by("_source_offset").to_pylist()
    assert [b["_source_offset"] for b in bronze] == [2, 4]  # D1 spans lines 2-3
    assert "Søren Østergaard" in bronze[0]["raw"]
    rows = sorted(lake.read("staging.conditions").to_pylist(), key=lambda r: r["code"])
    assert [(r["code"], r["icd10cm_code"], r["mapping_status"]) for r in rows] == [
        ("E11.9", "E11.9", "standard"),
        ("I10", "I10", "standard"),
    ]
    assert rows[0]["code_display"] == "Type 2 diabetes mellitus,\nwithout complications"
    bom = landing(
        tmp_path / "bom",
        {
            "labs.mapping.yaml": LABS_MAPPING,
            "labs.csv": b"\xef\xbb\xbf" + "\n".join([LAB_HEADER, lab("R1")]).encode(),
        },
    )
    _, staged = run(bom, Lake(tmp_path / "bom" / "lake"))
    assert entry(staged, "silver", "silver.observations#csv").records_out == 1


# -- the real corpus: Synthea's CSV export --------------------------------------------------------


def test_every_line_of_the_synthea_corpus_is_accounted_for(tmp_path):
    root = tmp_path / "landing"
    (root / "csv").mkdir(parents=True)
    for name in ("patients.csv", "allergies.csv"):
        shutil.copy(CORPUS / name, root / "csv" / name)
    mappings = [csv.mapping_file(p) for p in sorted(csv.SHIPPED_MAPPINGS.glob("synthea_*.yaml"))]
    lake = Lake(tmp_path / "lake")
    ingested = csv.ingest(root, lake, run_id="r1", now=NOW, mappings=mappings)
    staged = csv.to_staging(
        lake, run_id="r1", key=KEY, max_shift_days=MAX_SHIFT, versions=ingested.versions
    )
    lines = {
        n: len((CORPUS / n).read_text(encoding="utf-8").splitlines()) - 1
        for n in ("patients.csv", "allergies.csv")
    }
    bronze = lake.read(BRONZE_CSV.name).to_pylist()
    for name, count in lines.items():
        offsets = sorted(b["_source_offset"] for b in bronze if b["_source_file"] == f"csv/{name}")
        assert offsets == list(range(2, count + 2)), name
    assert entry(ingested, "ingest", BRONZE_CSV.name) == Entry(
        "ingest", BRONZE_CSV.name, sum(lines.values()), records_out=sum(lines.values())
    )
    assert entry(staged, "silver", "silver.patients#csv") == Entry(
        "silver", "silver.patients#csv", lines["patients.csv"], records_out=lines["patients.csv"]
    )
    assert entry(staged, "silver", BRONZE_CSV.name) == Entry(
        "silver", BRONZE_CSV.name, lines["allergies.csv"], bronze_only=lines["allergies.csv"]
    )
    assert lake.count("quarantine") == 0
    assert any("Södertälje" in b["raw"] for b in bronze)  # non-ASCII birthplaces decoded
    patients = lake.read("staging.patients").to_pylist()
    source = source_key(KEY, "csv:synthea", "4491801b-0532-adef-781c-07640bfe6f17")
    deceased = next(p for p in patients if p["source_key"] == source)
    shift = date_shift_days(KEY, source, max_days=MAX_SHIFT)
    assert deceased["person_key"] == source  # a Synthea Id is no MRN: the record is the person
    assert deceased["deceased"] is True
    assert deceased["deceased_date"] == date(1985, 4, 11) + timedelta(days=shift)
    assert deceased["birth_date"] == date(1974, 6, 28) + timedelta(days=shift)
    assert sum(p["deceased"] for p in patients) == sum(
        1 for line in (CORPUS / "patients.csv").read_text().splitlines()[1:] if line.split(",")[2]
    )
    assert {p["zip3"] for p in patients} == {"141"}  # Swedish "141 34" → its first three digits
    assert {(p["gender"], p["country"]) for p in patients} <= {("female", "SE"), ("male", "SE")}
    text = " ".join(str(v) for p in patients for v in p.values())
    assert "999-" not in text and "Padberg" not in text and "Eustolia" not in text


def test_a_preamble_above_the_header_and_decimal_commas(tmp_path):
    mapping = LABS_MAPPING.replace(
        'delimiter: ";"', 'delimiter: ";"\nheader_row: 3\ndecimal_separator: ","'
    )
    text = "\n".join(
        ["Extract of 2024-03-05", "", LAB_HEADER, lab("R1", value="5,5", unit="mmol/L")]
    )
    root = landing(tmp_path, {"labs.mapping.yaml": mapping, "labs.csv": text})
    lake = Lake(tmp_path / "lake")
    ingested, _ = run(root, lake)
    [bronze] = lake.read(BRONZE_CSV.name).to_pylist()
    assert (bronze["_source_offset"], bronze["header"]) == (4, LAB_HEADER)
    assert entry(ingested, "ingest", BRONZE_CSV.name).records_in == 1  # the preamble is no record
    [row] = lake.read("staging.observations").to_pylist()
    assert row["_value_original"] == 5.5


def test_a_landing_without_csv_extracts_ingests_and_stages_nothing(tmp_path):
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(tmp_path / "landing", lake)
    assert ingested.entries == [Entry("ingest", BRONZE_CSV.name, 0)]
    assert staged.entries == [] and staged.versions == {}
    assert lake.count(BRONZE_CSV.name) == 0 and not lake.exists("staging.observations")
