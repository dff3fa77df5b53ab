"""Unit normalization: UCUM parsing with ucumvert/pint, conversions to each LOINC's canonical unit,
unknown and incompatible units quarantined, and the canonical table agreeing with its consumers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from medlake.jobs.clean import units
from medlake.jobs.clean.terminology import is_valid_loinc
from medlake.registry import SILVER_OBSERVATIONS

LOINC = "http://loinc.org"
REPO = Path(__file__).resolve().parents[3]
SYNTHEA_UNITS = REPO / "tests" / "corpus" / "terminology" / "derived_synthea_loinc_ucum.tsv"


def obs(*rows: dict[str, Any]) -> pa.Table:
    """Silver observation rows; each needs observation_key, code and value/unit."""
    filled = [
        {
            "person_key": "p1",
            "code_system": LOINC,
            "_record_hash": f"h-{r['observation_key']}",
            "_source_kind": "fhir",
            "_run_id": "run",
            **r,
        }
        for r in rows
    ]
    return pa.Table.from_pylist(filled, schema=SILVER_OBSERVATIONS.schema)


@pytest.mark.parametrize(
    ("value", "source", "target", "molar_mass", "expected", "tolerance"),
    [
        (98.6, "[degF]", "Cel", None, 37.0, 1e-9),
        (32.0, "[degF]", "Cel", None, 0.0, 1e-9),
        (176, "[lb_av]", "kg", None, 79.83, 0.005),
        (70, "[in_i]", "cm", None, 177.8, 1e-9),
        (5.0, "mmol/L", "mg/dL", 180.156, 90.08, 0.005),  # glucose
        (90, "mg/dL", "mmol/L", 180.156, 4.99, 0.01),  # glucose, the other way
        (88.4, "umol/L", "mg/dL", 113.12, 1.0, 0.001),  # creatinine
        (5.17, "mmol/L", "mg/dL", 386.65, 199.9, 0.05),  # cholesterol
        (0.97, "1", "%", None, 97.0, 1e-9),  # saturation as a fraction
        (120, "mm[Hg]", "mm[Hg]", None, 120.0, 0.0),
        (1.2, "Hz", "/min", None, 72.0, 1e-9),
    ],
)
def test_conversions(
    value: float,
    source: str,
    target: str,
    molar_mass: float | None,
    expected: float,
    tolerance: float,
) -> None:
    assert units.convert_value(value, source, target, molar_mass=molar_mass) == pytest.approx(
        expected, abs=tolerance
    )


def test_a_full_ucum_grammar_reads_powers_of_ten() -> None:
    # pint alone would read 10*3/uL as 30/µL; UCUM means thousands per microlitre
    assert units.convert_value(4.5, "10*3/uL", "10*9/L") == pytest.approx(4.5)


def test_converted_rows_keep_what_they_were() -> None:
    table = obs(
        {"observation_key": "temp", "code": "8310-5", "value_num": 98.6, "value_unit": "[degF]"},
        {
            "observation_key": "glu",
            "code": "2339-0",
            "value_num": 5.0,
            "value_unit": "mmol/L",
            "ref_low": 3.9,
            "ref_high": 5.5,
        },
        {"observation_key": "hr", "code": "8867-4", "value_num": 72.0, "value_unit": "/min"},
        {"observation_key": "bp", "code": "8480-6", "value_num": 120.0, "value_unit": "mmHg"},
    )
    split = units.normalize_units(table)
    assert split.quarantined.num_rows == 0
    rows = {r["observation_key"]: r for r in split.good.to_pylist()}
    assert rows["temp"]["value_num"] == 37.0 and rows["temp"]["value_unit"] == "Cel"
    assert (
        rows["temp"]["_unit_converted_from"] == "[degF]" and rows["temp"]["_value_original"] == 98.6
    )
    assert rows["glu"]["value_num"] == pytest.approx(90.08, abs=0.005)
    assert rows["glu"]["value_unit"] == "mg/dL"
    assert rows["glu"]["ref_low"] == pytest.approx(70.26, abs=0.01)
    assert rows["glu"]["ref_high"] == pytest.approx(99.09, abs=0.01)
    # already canonical: untouched, nothing recorded
    assert rows["hr"]["value_num"] == 72.0 and rows["hr"]["_unit_converted_from"] is None
    assert rows["hr"]["_value_original"] is None
    # a spelling of the canonical unit: rewritten, recorded, value unchanged
    assert rows["bp"]["value_unit"] == "mm[Hg]" and rows["bp"]["_unit_converted_from"] == "mmHg"
    assert rows["bp"]["value_num"] == 120.0


def test_a_huge_value_is_converted_unrounded_not_an_error_for_the_batch() -> None:
    """Rounding 3e299 degrees C to nine decimals overflows in Arrow: the value is converted and kept
    unrounded (the plausibility rules judge it), and the rest of the batch is rounded as before."""
    table = obs(
        {"observation_key": "huge", "code": "8310-5", "value_num": 5e299, "value_unit": "[degF]"},
        {"observation_key": "temp", "code": "8310-5", "value_num": 98.6, "value_unit": "[degF]"},
    )
    split = units.normalize_units(table)
    rows = {r["observation_key"]: r for r in split.good.to_pylist()}
    assert rows["huge"]["value_num"] == pytest.approx((5e299 - 32) * 5 / 9)
    assert rows["temp"]["value_num"] == 37.0


@pytest.mark.parametrize(
    ("code", "unit", "rule", "words"),
    [
        ("8867-4", "foo", "units.unknown", "unit 'foo' of LOINC 8867-4 is not a UCUM unit"),
        ("8867-4", None, "units.unknown", "has no unit (canonical /min)"),
        (
            "8867-4",
            "kg",
            "units.incompatible",
            "unit 'kg' cannot express LOINC 8867-4, stored in /min",
        ),
        ("4548-4", "mmol/mol", "units.incompatible", "stored in %"),  # IFCC HbA1c is not NGSP %
        ("2093-3", "g", "units.incompatible", "stored in mg/dL"),
        ("1234-5", "not a unit", "units.unknown", "is not a UCUM unit"),  # unlisted code, bad unit
    ],
)
def test_units_that_cannot_be_used_are_quarantined(
    code: str, unit: str | None, rule: str, words: str
) -> None:
    table = obs({"observation_key": "k1", "code": code, "value_num": 1.0, "value_unit": unit})
    split = units.normalize_units(table)
    assert split.good.num_rows == 0
    (row,) = split.quarantined.to_pylist()
    assert row["rule_id"] == rule and row["stage"] == "units"
    assert row["reason"].startswith("observation_key k1: ") and words in row["reason"]
    assert row["record_id"] == "k1" and row["record_hash"] == "h-k1"
    assert row["table_name"] == "silver.observations"


def test_rows_without_a_number_or_a_listed_code_pass() -> None:
    table = obs(
        {"observation_key": "absent", "code": "8867-4", "value_num": None, "value_unit": "junk!"},
        {"observation_key": "bmi", "code": "39156-5", "value_num": 24.1, "value_unit": "kg/m2"},
        {"observation_key": "pain", "code": "72514-3", "value_num": 4.0, "value_unit": None},
        {
            "observation_key": "local",
            "code_system": "urn:local",
            "code": "X",
            "value_num": 1.0,
            "value_unit": "10*3/uL",
        },
    )
    split = units.normalize_units(table)
    assert split.quarantined.num_rows == 0
    assert split.good.column("value_unit").to_pylist() == ["junk!", "kg/m2", None, "10*3/uL"]
    assert split.good.column("_unit_converted_from").null_count == 4


def test_canonical_units_are_ucum_and_loinc_codes_valid() -> None:
    for loinc, canonical in units.LOINC_CANONICAL.items():
        assert is_valid_loinc(loinc), loinc
        units.ucum(canonical.unit)
        for other in canonical.also:
            assert units.convert_value(1.0, other, canonical.unit) > 0
    for spelling, code in units.UNIT_SYNONYMS.items():
        units.ucum(code)
        with pytest.raises(units.UnitProblem):
            units.ucum(spelling)  # otherwise it would not need a synonym


def test_canonical_units_agree_with_the_gold_marts_and_the_gate() -> None:
    project = yaml.safe_load((REPO / "dbt" / "dbt_project.yml").read_text())
    for loinc, lab in project["vars"]["key_labs"].items():
        assert units.LOINC_CANONICAL[loinc].unit == lab["unit"], loinc
    suite = json.loads((REPO / "expectations" / "suites" / "silver_observations.json").read_text())
    for exp in suite["expectations"]:
        meta = exp.get("meta", {})
        if "loinc" in meta:
            assert units.LOINC_CANONICAL[meta["loinc"]].unit == meta["ucum"], meta["rule"]


@pytest.mark.skipif(not SYNTHEA_UNITS.exists(), reason="vendored corpus not present")
def test_canonical_units_are_the_ones_synthea_writes() -> None:
    with SYNTHEA_UNITS.open(newline="") as f:
        used = {
            r["loinc"]: r["ucum_code"] for r in csv.DictReader(f, delimiter="\t") if r["ucum_code"]
        }
    assert used
    for loinc, unit in used.items():
        if loinc in units.LOINC_CANONICAL:
            assert units.LOINC_CANONICAL[loinc].unit == unit, loinc
        # every unit Synthea writes converts to itself: no units.unknown on real data
        assert units.canonical_conversion(loinc, unit) == (unit, None)
    assert {"8867-4", "8310-5", "29463-7", "59408-5", "8480-6"} <= set(used) & set(
        units.LOINC_CANONICAL
    )


def test_sample_generator_alt_units_convert_back() -> None:
    from medlake.sample.vocab import MEASUREMENTS

    for kind in MEASUREMENTS.values():
        if kind.alt_unit is None:
            continue
        alt = kind.alt_unit
        canonical = units.LOINC_CANONICAL[kind.loinc]
        assert canonical.unit == kind.unit
        recorded = 100 * alt.scale + alt.offset
        back = units.convert_value(recorded, alt.code, kind.unit, molar_mass=canonical.molar_mass)
        assert back == pytest.approx(100, rel=1e-3), kind.key


def test_ucum_that_pint_cannot_model() -> None:
    table = obs(
        {"observation_key": "ph", "code": "2744-1", "value_num": 7.4, "value_unit": "[pH]"},
        {"observation_key": "score", "code": "72514-3", "value_num": 4.0, "value_unit": "{score}"},
        {"observation_key": "hr-ph", "code": "8867-4", "value_num": 7.4, "value_unit": "[pH]"},
    )
    split = units.normalize_units(table)
    # a code without a canonical unit keeps valid UCUM it cannot convert; a listed code refuses it
    assert split.good.column("observation_key").to_pylist() == ["ph", "score"]
    assert split.quarantined.column("rule_id").to_pylist() == ["units.incompatible"]
    assert units.convert_value(0.5, "{fraction}", "%") == 50.0  # annotations are unity


def test_a_missing_unit_library_fails_loudly_instead_of_quarantining(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    units._registry.cache_clear()
    units.ucum.cache_clear()
    monkeypatch.setitem(sys.modules, "ucumvert", None)
    table = obs(
        {"observation_key": "k", "code": "8310-5", "value_num": 98.6, "value_unit": "[degF]"}
    )
    try:
        with pytest.raises(ImportError):
            units.normalize_units(table)
    finally:
        units._registry.cache_clear()
        units.ucum.cache_clear()
