"""Terminology: structural code checks, concept maps (CSV → Arrow → Delta) and the mapping steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.jobs.clean import terminology as t
from medlake.lake import Lake
from medlake.quarantine import by_rule
from medlake.registry import SILVER_CONDITIONS, SILVER_MEDICATIONS, SILVER_OBSERVATIONS
from medlake.sample import vocab

LOINC, SNOMED, ICD, RXNORM = t.LOINC, t.SNOMED, t.ICD10CM, t.RXNORM
LOCAL_LAB = vocab.LOCAL_LAB
LOCAL_DX = "http://hospital.example.org/dx-codes"
LOCAL_RX = "http://hospital.example.org/formulary"
HEADER = "source_system,source_code,target_system,target_code,target_display\n"


def table(schema: pa.Schema, key: str, *rows: dict[str, Any]) -> pa.Table:
    filled = [
        {
            "person_key": "p1",
            "_record_hash": f"h-{r[key]}",
            "_source_kind": "fhir",
            "_run_id": "run",
            **r,
        }
        for r in rows
    ]
    return pa.Table.from_pylist(filled, schema=schema)


def concept_map(*rows: tuple[str, str, str, str]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            dict(zip(t.MAP_COLUMNS, (*r, None), strict=True)) | {"map_file": "test.csv"}
            for r in rows
        ],
        schema=t.CONCEPT_MAPS.schema,
    )


@pytest.fixture(scope="module")
def shipped() -> pa.Table:
    return t.read_concept_maps(t.SHIPPED_MAPS)


# -- structural checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("8867-4", True),
        ("8867-5", False),
        ("12345-5", True),
        ("2339-0", True),
        ("718-7", True),
        ("8867", False),
        ("LP1234-5", False),
        ("123456-7", False),
    ],
)
def test_loinc_check_digit(code: str, valid: bool) -> None:
    assert t.is_valid_loinc(code) is valid


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("44054006", True),
        ("44054007", False),
        ("38341003", True),
        ("195967001", True),
        ("4405400", False),
        ("044054006", False),
        ("12345", False),
    ],
)
def test_snomed_verhoeff(code: str, valid: bool) -> None:
    assert t.is_valid_snomed(code) is valid


def test_snomed_ids_of_other_partitions_are_not_concepts() -> None:
    # a description id (partition 01) with a correct Verhoeff check digit
    description = next(f"12345601{d}" for d in range(10) if t.verhoeff_valid(f"12345601{d}"))
    problem = t.snomed_problem(description)
    assert problem is not None and "not a concept id" in problem


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("E11.9", True),
        ("E119", True),
        ("E11.99", False),
        ("E11", True),
        ("I10", True),
        ("E08-E13", False),
        ("e11.9", False),
        ("S72.001A", True),
        ("XYZ", False),
    ],
)
def test_icd10cm_against_the_code_list(code: str, valid: bool) -> None:
    assert t.is_valid_icd10cm(code) is valid


@pytest.mark.parametrize(
    ("code", "valid"), [("860975", True), ("86O975", False), ("0860975", False), ("", False)]
)
def test_rxnorm_is_numeric(code: str, valid: bool) -> None:
    assert t.is_valid_rxnorm(code) is valid


def test_every_code_the_sample_hospital_uses_is_valid() -> None:
    for kind in vocab.MEASUREMENTS.values():
        assert t.is_valid_loinc(kind.loinc), kind.key
    for loinc, _ in vocab.BP_COMPONENTS:
        assert t.is_valid_loinc(loinc)
    for problem in vocab.PROBLEMS.values():
        assert t.is_valid_icd10cm(problem.icd10), problem.key
        assert t.is_valid_snomed(problem.snomed), problem.key
    for drug in vocab.DRUGS.values():
        assert t.is_valid_rxnorm(drug.rxnorm), drug.key


# -- concept maps ------------------------------------------------------------------------------


def test_shipped_maps_cover_the_sample_local_codes(shipped: pa.Table) -> None:
    pairs = {
        (r["source_code"], r["target_code"])
        for r in shipped.to_pylist()
        if r["source_system"] == LOCAL_LAB
    }
    assert pairs == set(vocab.LOCAL_LAB_TO_LOINC.items())
    assert set(shipped.column("target_system").to_pylist()) == {LOINC}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "s,A,http://loinc.org,8867-4,x\ns,A,http://loinc.org,8310-5,y\n",
            "maps to both 8867-4 and 8310-5",
        ),
        ("s,A,http://loinc.org,8867-5,x\n", "fails its check digit"),
        (
            "s,A,http://loinc.org,8867-4,x\ns, ,http://loinc.org,8310-5,y\n",
            "bad.csv line 3: source_code is empty",
        ),
    ],
)
def test_unusable_maps_are_refused(tmp_path: Path, lines: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(HEADER + lines)
    with pytest.raises(ValueError, match=message):
        t.read_concept_maps(tmp_path)


def test_concept_maps_load_into_a_versioned_delta_table(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "labs.csv").write_text(HEADER + f"{LOCAL_LAB},GLU,{LOINC},2339-0,Glucose\n")
    lake = Lake(tmp_path / "lake")
    assert t.load_concept_maps(lake, maps) == 0
    assert t.load_concept_maps(lake, maps) == 0  # same maps: no new version
    (maps / "drugs.csv").write_text(HEADER + f"{LOCAL_RX},MET500,{RXNORM},860975,\n")
    assert t.load_concept_maps(lake, maps) == 1
    current = lake.read(t.CONCEPT_MAPS.name).to_pylist()
    assert {(r["source_code"], r["map_file"]) for r in current} == {
        ("GLU", "labs.csv"),
        ("MET500", "drugs.csv"),
    }
    assert next(r for r in current if r["source_code"] == "MET500")["target_display"] is None
    assert lake.read(t.CONCEPT_MAPS.name, version=0).num_rows == 1


# -- mapping steps -----------------------------------------------------------------------------


def observations(*rows: dict[str, Any]) -> pa.Table:
    return table(SILVER_OBSERVATIONS.schema, "observation_key", *rows)


def test_observation_codes(shipped: pa.Table) -> None:
    rows = observations(
        {
            "observation_key": "loinc",
            "code_system": LOINC,
            "code": "8867-4",
            "code_display": "Heart rate",
        },
        {
            "observation_key": "local",
            "code_system": LOCAL_LAB,
            "code": "GLU",
            "code_display": "Glucose",
        },
        {"observation_key": "bad", "code_system": LOINC, "code": "8867-5"},
        {"observation_key": "other", "code_system": LOCAL_LAB, "code": "NOPE"},
        {"observation_key": "none", "code_system": None, "code": None},
    )
    split = t.map_observation_codes(rows, concept_map=shipped)
    good = {r["observation_key"]: r for r in split.good.to_pylist()}
    assert set(good) == {"loinc", "local"}
    assert good["loinc"]["mapping_status"] == "standard" and good["loinc"]["_mapped_from"] is None
    assert (good["local"]["code_system"], good["local"]["code"]) == (LOINC, "2339-0")
    assert good["local"]["code_display"] == "Glucose [Mass/volume] in Blood"
    assert good["local"]["mapping_status"] == "mapped"
    assert good["local"]["_mapped_from"] == f"{LOCAL_LAB}|GLU"
    assert by_rule(split.quarantined) == {"terminology.invalid_code": 1, "terminology.unmapped": 2}
    reasons = {r["record_id"]: r["reason"] for r in split.quarantined.to_pylist()}
    assert (
        reasons["bad"]
        == "observation_key bad: LOINC code '8867-5' fails its check digit (expected 8867-4)"
    )
    assert reasons["other"] == (
        f"observation_key other: code 'NOPE' of system {LOCAL_LAB} has no LOINC mapping in the concept map"
    )
    assert (
        reasons["none"] == "observation_key none: no code has no LOINC mapping in the concept map"
    )


def test_kept_when_configured_and_counted(shipped: pa.Table) -> None:
    rows = observations(
        {"observation_key": "bad", "code_system": LOINC, "code": "8867-5"},
        {"observation_key": "other", "code_system": LOCAL_LAB, "code": "NOPE"},
        {"observation_key": "loinc", "code_system": LOINC, "code": "8867-4"},
    )
    split = t.map_observation_codes(rows, concept_map=shipped, on_unmapped="keep")
    assert split.quarantined.num_rows == 0
    assert split.good.column("code").to_pylist() == ["8867-5", "NOPE", "8867-4"]
    assert t.mapping_counts(split.good) == {"invalid": 1, "unmapped": 1, "standard": 1}


def test_condition_codes() -> None:
    cmap = concept_map(
        (LOCAL_DX, "DM2", ICD, "E11.9"),
        (LOCAL_DX, "DM2", SNOMED, "44054006"),
        (SNOMED, "38341003", ICD, "I10"),
    )
    rows = table(
        SILVER_CONDITIONS.schema,
        "condition_key",
        {
            "condition_key": "both",
            "code_system": ICD,
            "code": "E11.9",
            "icd10cm_code": "E11.9",
            "snomed_code": "44054006",
        },
        {"condition_key": "badicd", "code_system": ICD, "code": "E11.99", "icd10cm_code": "E11.99"},
        {
            "condition_key": "badsct",
            "code_system": SNOMED,
            "code": "44054007",
            "snomed_code": "44054007",
        },
        {"condition_key": "local", "code_system": LOCAL_DX, "code": "DM2"},
        {
            "condition_key": "sct",
            "code_system": SNOMED,
            "code": "38341003",
            "snomed_code": "38341003",
        },
        {"condition_key": "unknown", "code_system": LOCAL_DX, "code": "ZZZ"},
    )
    split = t.map_condition_codes(rows, concept_map=cmap)
    good = {r["condition_key"]: r for r in split.good.to_pylist()}
    assert good["both"]["mapping_status"] == "standard" and good["both"]["_mapped_from"] is None
    assert (good["local"]["icd10cm_code"], good["local"]["snomed_code"]) == ("E11.9", "44054006")
    assert (
        good["local"]["mapping_status"] == "mapped"
        and good["local"]["_mapped_from"] == f"{LOCAL_DX}|DM2"
    )
    assert (good["local"]["code_system"], good["local"]["code"]) == (LOCAL_DX, "DM2")  # as sent
    # a standard code sent, the other filled from the map
    assert good["sct"]["icd10cm_code"] == "I10" and good["sct"]["mapping_status"] == "standard"
    assert good["sct"]["_mapped_from"] == f"{SNOMED}|38341003"
    assert by_rule(split.quarantined) == {"terminology.invalid_code": 2, "terminology.unmapped": 1}
    reasons = {r["record_id"]: r["reason"] for r in split.quarantined.to_pylist()}
    assert "ICD-10-CM code 'E11.99' is not in the ICD-10-CM code list" in reasons["badicd"]
    assert "SNOMED CT code '44054007' fails its Verhoeff check digit" in reasons["badsct"]


def test_medication_codes() -> None:
    cmap = concept_map((LOCAL_RX, "MET500", RXNORM, "860975"))
    rows = table(
        SILVER_MEDICATIONS.schema,
        "medication_key",
        {"medication_key": "rx", "code_system": RXNORM, "code": "314076", "rxnorm_code": "314076"},
        {"medication_key": "local", "code_system": LOCAL_RX, "code": "MET500"},
        {"medication_key": "bad", "code_system": RXNORM, "code": "31407X", "rxnorm_code": "31407X"},
        {"medication_key": "unknown", "code_system": LOCAL_RX, "code": "ASA81"},
    )
    split = t.map_medication_codes(rows, concept_map=cmap)
    good = {r["medication_key"]: r for r in split.good.to_pylist()}
    assert good["rx"]["mapping_status"] == "standard"
    assert good["local"]["rxnorm_code"] == "860975" and good["local"]["mapping_status"] == "mapped"
    assert by_rule(split.quarantined) == {"terminology.invalid_code": 1, "terminology.unmapped": 1}


def test_an_ambiguous_map_is_refused_by_the_step() -> None:
    cmap = concept_map((LOCAL_LAB, "GLU", LOINC, "2339-0"), (LOCAL_LAB, "GLU", LOINC, "2345-7"))
    with pytest.raises(ValueError, match="maps to both"):
        t.map_observation_codes(observations(), concept_map=cmap)


def test_a_run_reads_the_loaded_maps_or_the_shipped_ones(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    maps, version = t.concept_maps(lake)  # nothing loaded yet: the shipped maps
    assert version == 0 and maps.num_rows == t.read_concept_maps(t.SHIPPED_MAPS).num_rows
    own = tmp_path / "own"
    own.mkdir()
    (own / "labs.csv").write_text(HEADER + f"{LOCAL_LAB},K,{LOINC},2823-3,Potassium\n")
    assert t.load_concept_maps(lake, own) == 1
    maps, version = t.concept_maps(lake)  # the hospital's maps stay
    assert version == 1 and maps.column("source_code").to_pylist() == ["K"]
    assert t.concept_maps(lake, version=0)[0].num_rows == maps.num_rows + 4
