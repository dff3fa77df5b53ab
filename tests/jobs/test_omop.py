"""The OMOP CDM v5.4 gold marts: built by dbt from real silver Delta tables, written to the lake
as Delta, checked against OHDSI's field-level definition of every table."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.jobs.gold import GoldResult, build_gold
from medlake.lake import Lake
from medlake.registry import spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIELD_LEVEL_CSV = (
    Path(__file__).resolve().parents[1] / "corpus/standards/omop-cdm-5.4/OMOP_CDMv5.4_Field_Level.csv"
)
OMOP_TABLES = (
    "person",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "observation",
    "death",
    "observation_period",
)
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=UTC)


def write_silver(lake: Lake, table: str, rows: list[dict[str, Any]]) -> None:
    """Write silver rows in the registered schema, with lineage columns filled in."""
    name = f"silver.{table}"
    full = [
        {"_record_hash": f"{table}-{i}", "_source_kind": "fhir", "_run_id": "silver-run", **row}
        for i, row in enumerate(rows)
    ]
    lake.write(name, pa.Table.from_pylist(full, schema=spec(name).schema), mode="overwrite")


def field_level() -> dict[str, list[dict[str, str]]]:
    """OHDSI's definition of each OMOP table we build: its fields in CDM order."""
    assert FIELD_LEVEL_CSV.is_file(), (
        f"the vendored corpus is expected at {FIELD_LEVEL_CSV}"
    )
    # CRLF line endings and newlines inside quoted cells: csv with newline="" reads both right
    with FIELD_LEVEL_CSV.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return {t: [r for r in rows if r["cdmTableName"].lower() == t] for t in OMOP_TABLES}


def arrow_type_conforms(cdm_type: str) -> Callable[[pa.DataType], bool]:
    """Whether an Arrow type carries a CDM datatype (integer, bigint, date, datetime, float, varchar(n))."""
    cdm = cdm_type.lower()
    if cdm == "integer":
        return lambda t: t in (pa.int32(), pa.int64())
    if cdm == "bigint":
        return lambda t: t == pa.int64()
    if cdm == "date":
        return lambda t: t == pa.date32()
    if cdm == "datetime":
        return lambda t: bool(pa.types.is_timestamp(t))
    if cdm == "float":
        return lambda t: t == pa.float64()
    if cdm.startswith("varchar"):
        return lambda t: t in (pa.string(), pa.large_string(), pa.string_view())
    raise ValueError(f"unknown CDM datatype {cdm_type!r}")


# longer than race_source_value's varchar(50)
LONG_RACE = "Native Hawaiian or Other Pacific Islander; American Indian or Alaska Native"

PEOPLE: list[dict[str, Any]] = [
    # the diabetic: coded in both ICD-10-CM and SNOMED CT
    {
        "person_key": "p-diab",
        "source_key": "ehr-diab",
        "source_system": "ehr",
        "gender": "male",
        "birth_date": date(1970, 1, 15),
        "race": "White",
        "ethnicity": "Not Hispanic or Latino",
    },
    # two source records; the one with a birth date survives; she died
    {"person_key": "p-old", "source_key": "lab-old", "source_system": "lab", "gender": "female"},
    {
        "person_key": "p-old",
        "source_key": "ehr-old",
        "source_system": "ehr",
        "gender": "female",
        "birth_date": date(1920, 3, 10),
        "deceased": True,
        "deceased_date": date(2024, 2, 3),
    },
    {
        "person_key": "p-other",
        "source_key": "ehr-other",
        "source_system": "ehr",
        "gender": "other",
        "birth_date": date(2001, 7, 7),
        "race": LONG_RACE,
    },
    # no birth date on any record: OMOP cannot hold this person, nor their events
    {
        "person_key": "p-nobirth",
        "source_key": "ehr-nobirth",
        "source_system": "ehr",
        "gender": "female",
    },
]


def write_planted_silver(lake: Lake) -> None:
    """Four people with visits, diagnoses, orders and measurements."""
    write_silver(lake, "patients", PEOPLE)
    write_silver(
        lake,
        "encounters",
        [
            {
                "encounter_key": "e-diab",
                "person_key": "p-diab",
                "status": "finished",
                "class_code": "AMB",
                "start_at": at("2023-03-01T08:00:00"),
                "end_at": at("2023-03-01T09:00:00"),
            },
            {
                "encounter_key": "e-old-clinic",
                "person_key": "p-old",
                "status": "finished",
                "class_code": "AMB",
                "start_at": at("2023-12-01T09:00:00"),
                "end_at": at("2023-12-01T09:30:00"),
            },
            {
                "encounter_key": "e-old",
                "person_key": "p-old",
                "status": "finished",
                "class_code": "IMP",
                "start_at": at("2024-01-28T09:00:00"),
                "end_at": at("2024-02-02T12:00:00"),
            },
            {
                "encounter_key": "e-er",
                "person_key": "p-other",
                "status": "in-progress",
                "class_code": "EMER",
                "start_at": at("2025-05-20T22:00:00"),
            },
            {
                "encounter_key": "e-cancelled",
                "person_key": "p-other",
                "status": "cancelled",
                "class_code": "AMB",
                "start_at": at("2025-06-01T08:00:00"),
            },
            {
                "encounter_key": "e-nobirth",
                "person_key": "p-nobirth",
                "status": "finished",
                "class_code": "AMB",
                "start_at": at("2025-01-01T08:00:00"),
            },
        ],
    )
    write_silver(
        lake,
        "conditions",
        [
            {
                "condition_key": "c-diab",
                "person_key": "p-diab",
                "encounter_key": "e-diab",
                "verification_status": "confirmed",
                "code_system": ICD10CM,
                "code": "E11.9",
                "icd10cm_code": "E11.9",
                "snomed_code": "44054006",
                "onset_at": at("2023-03-01T08:30:00"),
            },
            # ICD-10-CM only, without the dot: no shipped mapping -> concept 0, code kept
            {
                "condition_key": "c-ckd",
                "person_key": "p-old",
                "encounter_key": "e-old",
                "verification_status": "confirmed",
                "icd10cm_code": "N1830",
                "recorded_date": date(2024, 1, 29),
            },
            {
                "condition_key": "c-refuted",
                "person_key": "p-other",
                "verification_status": "refuted",
                "icd10cm_code": "E10.9",
                "recorded_date": date(2025, 5, 20),
            },
            {
                "condition_key": "c-nobirth",
                "person_key": "p-nobirth",
                "snomed_code": "195967001",
                "recorded_date": date(2025, 1, 1),
            },
        ],
    )
    write_silver(
        lake,
        "observations",
        [
            {
                "observation_key": "o-weight",
                "person_key": "p-diab",
                "encounter_key": "e-diab",
                "status": "final",
                "category": "vital-signs",
                "code_system": LOINC,
                "code": "29463-7",
                "value_num": 92.5,
                "value_unit": "kg",
                "effective_at": at("2023-03-01T08:10:00"),
            },
            {
                "observation_key": "o-a1c",
                "person_key": "p-diab",
                "status": "final",
                "category": "laboratory",
                "code_system": LOINC,
                "code": "4548-4",
                "value_num": 7.4,
                "value_unit": "%",
                "ref_low": 4.0,
                "ref_high": 5.6,
                "effective_at": at("2023-06-01T08:00:00"),
            },
            # a lab whose concept we do not ship: measurement with concept 0
            {
                "observation_key": "o-glu",
                "person_key": "p-diab",
                "status": "final",
                "category": "laboratory",
                "code_system": LOINC,
                "code": "2339-0",
                "value_num": 140.0,
                "value_unit": "mg/dL",
                "effective_at": at("2023-06-01T08:00:00"),
            },
            {
                "observation_key": "o-error",
                "person_key": "p-diab",
                "status": "entered-in-error",
                "category": "laboratory",
                "code_system": LOINC,
                "code": "2339-0",
                "value_num": 999.0,
                "value_unit": "mg/dL",
                "effective_at": at("2023-06-02T08:00:00"),
            },
            # a coded social-history answer: observation, not measurement
            {
                "observation_key": "o-smoking",
                "person_key": "p-old",
                "status": "final",
                "category": "social-history",
                "code_system": LOINC,
                "code": "72166-2",
                "value_code": "8517006",
                "value_text": "Ex-smoker",
                "effective_at": at("2024-01-28T10:00:00"),
            },
        ],
    )
    write_silver(
        lake,
        "medications",
        [
            {
                "medication_key": "m-metformin",
                "person_key": "p-diab",
                "encounter_key": "e-diab",
                "status": "active",
                "intent": "order",
                "code_system": RXNORM,
                "code": "860975",
                "rxnorm_code": "860975",
                "authored_at": at("2023-03-01T08:45:00"),
                "dosage_text": "Take 1 tablet by mouth once daily with the evening meal",
            },
            {
                "medication_key": "m-cancelled",
                "person_key": "p-diab",
                "status": "cancelled",
                "rxnorm_code": "314076",
                "authored_at": at("2023-03-02T08:45:00"),
            },
        ],
    )


@pytest.fixture(scope="module")
def omop_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, GoldResult]:
    """The planted silver, built once."""
    lake = Lake(tmp_path_factory.mktemp("omop"))
    write_planted_silver(lake)
    return lake, build_gold(lake.root, run_id="run-omop")


def rows(lake: Lake, table: str) -> list[dict[str, Any]]:
    """The rows of gold.omop_<table>."""
    table_rows: list[dict[str, Any]] = lake.read(f"gold.omop_{table}").to_pylist()
    return table_rows


def person_ids(lake: Lake) -> dict[str, int]:
    """person_key -> person_id, through person_source_value (the person key)."""
    return {r["person_source_value"]: r["person_id"] for r in rows(lake, "person")}


def test_every_omop_table_is_built(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, result = omop_lake
    for table in OMOP_TABLES:
        assert lake.exists(f"gold.omop_{table}"), table
        assert result.table(f"omop_{table}").rows == lake.count(f"gold.omop_{table}")
    assert (result.tests_failed, result.tests_warned) == (0, 0)


@pytest.mark.parametrize("table", OMOP_TABLES)
def test_columns_and_types_are_ohdsi_s(omop_lake: tuple[Lake, GoldResult], table: str) -> None:
    lake, _ = omop_lake
    schema = lake.read(f"gold.omop_{table}").schema
    fields = field_level()[table]
    # exactly OHDSI's columns, in OHDSI's order
    assert schema.names == [f["cdmFieldName"] for f in fields]
    wrong = {
        f["cdmFieldName"]: (f["cdmDatatype"], str(schema.field(f["cdmFieldName"]).type))
        for f in fields
        if not arrow_type_conforms(f["cdmDatatype"])(schema.field(f["cdmFieldName"]).type)
    }
    assert wrong == {}


@pytest.mark.parametrize("table", OMOP_TABLES)
def test_text_fits_the_cdm_length(omop_lake: tuple[Lake, GoldResult], table: str) -> None:
    lake, _ = omop_lake
    data = lake.read(f"gold.omop_{table}")
    too_long = {
        f["cdmFieldName"]: f["cdmDatatype"]
        for f in field_level()[table]
        if f["cdmDatatype"].lower().startswith("varchar(")
        and f["cdmDatatype"].lower() != "varchar(max)"
        and max(
            (len(v) for v in data.column(f["cdmFieldName"]).to_pylist() if v is not None),
            default=0,
        )
        > int(f["cdmDatatype"][len("varchar(") : -1])
    }
    assert too_long == {}


@pytest.mark.parametrize("table", OMOP_TABLES)
def test_required_fields_are_never_null(omop_lake: tuple[Lake, GoldResult], table: str) -> None:
    lake, _ = omop_lake
    data = lake.read(f"gold.omop_{table}")
    assert data.num_rows > 0
    required = [f["cdmFieldName"] for f in field_level()[table] if f["isRequired"] == "Yes"]
    assert {name: data.column(name).null_count for name in required} == dict.fromkeys(required, 0)


@pytest.mark.parametrize("table", OMOP_TABLES)
def test_required_fields_are_not_null_in_the_delta_schema(
    omop_lake: tuple[Lake, GoldResult], table: str
) -> None:
    lake, _ = omop_lake
    schema = lake.read(f"gold.omop_{table}").schema
    fields = field_level()[table]
    assert {f["cdmFieldName"]: not schema.field(f["cdmFieldName"]).nullable for f in fields} == {
        f["cdmFieldName"]: f["isRequired"] == "Yes" for f in fields
    }


@pytest.mark.parametrize("table", OMOP_TABLES)
def test_primary_key_is_unique(omop_lake: tuple[Lake, GoldResult], table: str) -> None:
    lake, _ = omop_lake
    keys = [f["cdmFieldName"] for f in field_level()[table] if f["isPrimaryKey"] == "Yes"]
    # DEATH has no primary key in the CDM; it holds one row per person
    key = keys[0] if keys else "person_id"
    assert len(keys) <= 1
    values = lake.read(f"gold.omop_{table}").column(key).to_pylist()
    assert len(values) == len(set(values)) and None not in values


def test_ids_are_stable_across_builds(omop_lake: tuple[Lake, GoldResult], tmp_path: Path) -> None:
    lake, _ = omop_lake
    # the same silver in a second lake, with one more person sorted first: no id moves
    other = Lake(tmp_path)
    write_silver(
        other,
        "patients",
        [
            {
                "person_key": "a-first",
                "source_key": "ehr-a",
                "source_system": "ehr",
                "birth_date": date(1990, 1, 1),
            },
            *PEOPLE,
        ],
    )
    build_gold(other.root, run_id="run-again")
    again = person_ids(other)
    assert {k: again[k] for k in person_ids(lake)} == person_ids(lake)


def test_person_demographics(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    people = {r["person_source_value"]: r for r in rows(lake, "person")}
    # no birth date anywhere: not an OMOP person
    assert set(people) == {"p-diab", "p-old", "p-other"}
    diab = people["p-diab"]
    assert (diab["gender_concept_id"], diab["gender_source_value"]) == (8507, "male")
    assert (diab["year_of_birth"], diab["month_of_birth"], diab["day_of_birth"]) == (1970, 1, 15)
    assert (diab["race_concept_id"], diab["race_source_value"]) == (0, "White")
    assert people["p-old"]["gender_concept_id"] == 8532
    assert people["p-old"]["year_of_birth"] == 1920  # from the surviving record
    assert people["p-other"]["gender_concept_id"] == 0
    assert people["p-other"]["race_source_value"] == LONG_RACE[:50]


def test_visits(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    ids = person_ids(lake)
    visits = {(r["person_id"], r["visit_source_value"]): r for r in rows(lake, "visit_occurrence")}
    # the cancelled encounter and the one of the person without a birth date are left out
    assert set(visits) == {
        (ids["p-diab"], "AMB"),
        (ids["p-old"], "AMB"),
        (ids["p-old"], "IMP"),
        (ids["p-other"], "EMER"),
    }
    assert visits[ids["p-diab"], "AMB"]["visit_concept_id"] == 9202
    inpatient = visits[ids["p-old"], "IMP"]
    assert inpatient["visit_concept_id"] == 9201
    assert (inpatient["visit_start_date"], inpatient["visit_end_date"]) == (
        date(2024, 1, 28),
        date(2024, 2, 2),
    )
    still_open = visits[ids["p-other"], "EMER"]
    assert still_open["visit_concept_id"] == 9203
    assert still_open["visit_end_date"] == date(2025, 5, 20)
    assert still_open["visit_end_datetime"] is None
    assert {r["visit_type_concept_id"] for r in visits.values()} == {32817}
    # the person's visit that started just before; none before their first
    clinic = visits[ids["p-old"], "AMB"]
    assert inpatient["preceding_visit_occurrence_id"] == clinic["visit_occurrence_id"]
    assert clinic["preceding_visit_occurrence_id"] is None


def test_diabetic_has_condition_occurrence(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    ids = person_ids(lake)
    conditions = {r["person_id"]: r for r in rows(lake, "condition_occurrence")}
    # the refuted one and the one of the person without a birth date are left out
    assert set(conditions) == {ids["p-diab"], ids["p-old"]}
    diabetes = conditions[ids["p-diab"]]
    assert diabetes["condition_concept_id"] == 201826  # SNOMED 44054006, type 2 diabetes
    assert diabetes["condition_source_value"] == "E11.9"
    assert diabetes["condition_source_concept_id"] == 0  # no ICD-10-CM concepts shipped
    assert diabetes["condition_start_date"] == date(2023, 3, 1)
    visit_ids = {r["visit_occurrence_id"] for r in rows(lake, "visit_occurrence")}
    assert diabetes["visit_occurrence_id"] in visit_ids
    ckd = conditions[ids["p-old"]]
    assert (ckd["condition_concept_id"], ckd["condition_source_value"]) == (0, "N18.30")
    assert ckd["condition_start_date"] == date(2024, 1, 29)


def test_weight_is_a_measurement_with_value_and_unit(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    ids = person_ids(lake)
    measurements = {r["measurement_source_value"]: r for r in rows(lake, "measurement")}
    # the value entered in error and the coded smoking answer are not measurements
    assert set(measurements) == {"29463-7", "4548-4", "2339-0"}
    weight = measurements["29463-7"]
    assert weight["person_id"] == ids["p-diab"]
    assert (weight["measurement_concept_id"], weight["value_as_number"]) == (3025315, 92.5)
    assert (weight["unit_concept_id"], weight["unit_source_value"]) == (9529, "kg")
    assert weight["measurement_date"] == date(2023, 3, 1)
    a1c = measurements["4548-4"]
    assert (a1c["measurement_concept_id"], a1c["unit_concept_id"]) == (3004410, 8554)
    assert (a1c["range_low"], a1c["range_high"]) == (4.0, 5.6)
    glucose = measurements["2339-0"]
    assert (glucose["measurement_concept_id"], glucose["value_as_number"]) == (0, 140.0)
    assert glucose["unit_concept_id"] == 8840


def test_coded_answer_is_an_observation(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    (smoking,) = rows(lake, "observation")
    assert smoking["person_id"] == person_ids(lake)["p-old"]
    assert (smoking["observation_source_value"], smoking["observation_concept_id"]) == (
        "72166-2",
        0,
    )
    assert (smoking["value_as_string"], smoking["value_source_value"]) == ("Ex-smoker", "8517006")


def test_drug_exposure_keeps_the_rxnorm_code(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    (metformin,) = rows(lake, "drug_exposure")  # the cancelled order is not an exposure
    assert metformin["person_id"] == person_ids(lake)["p-diab"]
    assert (metformin["drug_concept_id"], metformin["drug_source_value"]) == (0, "860975")
    assert metformin["drug_exposure_start_date"] == metformin["drug_exposure_end_date"]
    assert metformin["sig"].startswith("Take 1 tablet")


def test_death_and_observation_periods(omop_lake: tuple[Lake, GoldResult]) -> None:
    lake, _ = omop_lake
    ids = person_ids(lake)
    assert [(r["person_id"], r["death_date"]) for r in rows(lake, "death")] == [
        (ids["p-old"], date(2024, 2, 3))
    ]
    periods = {
        r["person_id"]: (r["observation_period_start_date"], r["observation_period_end_date"])
        for r in rows(lake, "observation_period")
    }
    assert periods == {
        ids["p-diab"]: (date(2023, 3, 1), date(2023, 6, 1)),
        ids["p-old"]: (date(2023, 12, 1), date(2024, 2, 3)),  # to the death date
        ids["p-other"]: (date(2025, 5, 20), date(2025, 5, 20)),
    }


def write_athena_vocabulary(folder: Path) -> Path:
    """A two-code OHDSI Athena vocabulary, tab-separated as Athena ships it. The concept ids are
    in OMOP's local range (2,000,000,000 and up), not real OHDSI concepts."""
    folder.mkdir(parents=True, exist_ok=True)
    valid = ["19700101", "20991231", ""]
    concepts = [
        [
            "concept_id",
            "concept_name",
            "domain_id",
            "vocabulary_id",
            "concept_class_id",
            "standard_concept",
            "concept_code",
            "valid_start_date",
            "valid_end_date",
            "invalid_reason",
        ],
        [
            "2000000101",
            'metformin ER 500 MG "source"',
            "Drug",
            "RxNorm",
            "Clinical Drug",
            "",
            "860975",
            *valid,
        ],
        [
            "2000000001",
            "metformin ER 500 MG",
            "Drug",
            "RxNorm Extension",
            "Clinical Drug",
            "S",
            "OMOP1",
            *valid,
        ],
        [
            "2000000102",
            "CKD stage 3",
            "Condition",
            "ICD10CM",
            "5-char billing code",
            "",
            "N18.30",
            *valid,
        ],
        [
            "2000000002",
            "Chronic kidney disease stage 3",
            "Condition",
            "SNOMED",
            "Clinical Finding",
            "S",
            "433144002",
            *valid,
        ],
    ]
    relationships = [
        [
            "concept_id_1",
            "concept_id_2",
            "relationship_id",
            "valid_start_date",
            "valid_end_date",
            "invalid_reason",
        ],
        ["2000000101", "2000000001", "Maps to", *valid],
        ["2000000102", "2000000002", "Maps to", *valid],
    ]
    for name, lines in (("CONCEPT.csv", concepts), ("CONCEPT_RELATIONSHIP.csv", relationships)):
        text = "".join("\t".join(line) + "\n" for line in lines)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_athena_vocabulary_maps_codes_the_seed_does_not(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write_planted_silver(lake)
    vocabulary = write_athena_vocabulary(tmp_path / "vocabulary")
    build_gold(lake.root, run_id="run-athena", vocabulary_dir=vocabulary)
    (metformin,) = rows(lake, "drug_exposure")
    assert (metformin["drug_concept_id"], metformin["drug_source_concept_id"]) == (
        2000000001,
        2000000101,
    )
    ckd = next(
        r for r in rows(lake, "condition_occurrence") if r["condition_source_value"] == "N18.30"
    )
    assert (ckd["condition_concept_id"], ckd["condition_source_concept_id"]) == (
        2000000002,
        2000000102,
    )
    # codes the vocabulary does not hold keep the shipped concepts
    weight = next(
        r for r in rows(lake, "measurement") if r["measurement_source_value"] == "29463-7"
    )
    assert weight["measurement_concept_id"] == 3025315
