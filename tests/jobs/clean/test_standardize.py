"""Standardization chains: hand-made rows, the sample hospital end to end (in memory), and a
property test that no step loses or invents a row."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake.jobs.clean import ranges, standardize, terminology, units
from medlake.jobs.clean.config import OnUnmapped
from medlake.jobs.ingest import fhir
from medlake.quarantine import by_rule
from medlake.registry import SILVER_CONDITIONS, SILVER_MEDICATIONS, SILVER_OBSERVATIONS
from medlake.sample import generate
from medlake.sample.vocab import LOCAL_LAB, MEASUREMENTS

KEY = bytes(range(32))
LOINC = "http://loinc.org"
CONCEPT_MAP = terminology.read_concept_maps(terminology.SHIPPED_MAPS)


def obs(*rows: dict[str, Any]) -> pa.Table:
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


def test_extra_fields() -> None:
    assert [(f.name, str(f.type)) for f in standardize.OBSERVATION_EXTRA_FIELDS] == [
        ("mapping_status", "string"),
        ("_mapped_from", "string"),
        ("_unit_converted_from", "string"),
        ("_value_original", "double"),
        ("_range_flag", "string"),
    ]
    assert [f.name for f in standardize.CONDITION_EXTRA_FIELDS] == [
        "mapping_status",
        "_mapped_from",
    ]
    assert [f.name for f in standardize.MEDICATION_EXTRA_FIELDS] == [
        "mapping_status",
        "_mapped_from",
    ]


def test_observations_chain_each_step_in_turn() -> None:
    split = standardize.standardize_observations(
        obs(
            {
                "observation_key": "local-mmol",
                "code_system": LOCAL_LAB,
                "code": "GLU",
                "value_num": 5.0,
                "value_unit": "mmol/L",
            },
            {
                "observation_key": "fahrenheit",
                "code": "8310-5",
                "value_num": 98.6,
                "value_unit": "[degF]",
            },
            # 113 °F is 45 Cel (possible); 122 °F is 50 Cel: impossible only once converted
            {
                "observation_key": "hot",
                "code": "8310-5",
                "value_num": 122.0,
                "value_unit": "[degF]",
            },
            {
                "observation_key": "bad-code",
                "code": "8867-5",
                "value_num": 72.0,
                "value_unit": "/min",
            },
            {
                "observation_key": "bad-unit",
                "code": "8867-4",
                "value_num": 72.0,
                "value_unit": "kg",
            },
            {"observation_key": "fine", "code": "8867-4", "value_num": 72.0, "value_unit": "/min"},
        ),
        concept_map=CONCEPT_MAP,
    )
    good = {r["observation_key"]: r for r in split.good.to_pylist()}
    assert set(good) == {"local-mmol", "fahrenheit", "fine"}
    glucose = good["local-mmol"]
    assert (glucose["code"], glucose["value_unit"], glucose["mapping_status"]) == (
        "2339-0",
        "mg/dL",
        "mapped",
    )
    assert (
        glucose["value_num"] == pytest.approx(90.08, abs=0.005)
        and glucose["_range_flag"] == "normal"
    )
    assert (
        good["fahrenheit"]["value_num"] == 37.0
        and good["fahrenheit"]["_unit_converted_from"] == "[degF]"
    )
    assert by_rule(split.quarantined) == {
        "terminology.invalid_code": 1,
        "units.incompatible": 1,
        "ranges.impossible": 1,
    }
    hot = next(r for r in split.quarantined.to_pylist() if r["rule_id"] == "ranges.impossible")
    assert (
        hot["record_id"] == "hot" and "value 50 Cel of LOINC 8310-5 is impossible" in hot["reason"]
    )


@pytest.mark.parametrize(
    ("spec", "extra", "step"),
    [
        (
            SILVER_OBSERVATIONS,
            standardize.OBSERVATION_EXTRA_FIELDS,
            standardize.standardize_observations,
        ),
        (SILVER_CONDITIONS, standardize.CONDITION_EXTRA_FIELDS, standardize.standardize_conditions),
        (
            SILVER_MEDICATIONS,
            standardize.MEDICATION_EXTRA_FIELDS,
            standardize.standardize_medications,
        ),
    ],
)
def test_the_good_rows_fit_the_registry_schema(spec: Any, extra: list[pa.Field], step: Any) -> None:
    """The registry's schema, plus the extra fields it does not carry yet (same types if it does)."""
    registered = spec.schema
    split = step(registered.empty_table(), concept_map=CONCEPT_MAP)
    missing = [f for f in extra if f.name not in registered.names]
    assert split.good.schema.equals(pa.schema(list(registered) + missing))
    for f in extra:
        if f.name in registered.names:
            assert registered.field(f.name).type == f.type, f.name


# -- the sample hospital -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, dict[str, Any]]:
    """Bronze rows and the truth of a 40-patient sample hospital, in memory."""
    landing = tmp_path_factory.mktemp("landing")
    generate(landing, patients=40, seed=3)
    raw = fhir.read_files(fhir.landing_files(landing / "fhir"), root=landing)
    bronze = fhir.to_bronze(raw, run_id="run", ingested_at=datetime(2026, 1, 1, tzinfo=UTC)).good
    return bronze, json.loads((landing / "_truth.json").read_text())


def test_sample_hospital_observations(sample: tuple[pa.Table, dict[str, Any]]) -> None:
    bronze, truth = sample
    pseudo = fhir.Pseudonymizer(key=KEY)
    flat = fhir.observations_from_bronze(bronze, key=KEY).good
    split = standardize.standardize_observations(flat, concept_map=CONCEPT_MAP)
    assert split.good.num_rows + split.quarantined.num_rows == flat.num_rows
    good = {r["observation_key"]: r for r in split.good.to_pylist()}

    # every local code maps to the truth's LOINC
    assert truth["local_coded"]
    for planted in truth["local_coded"]:
        row = good[pseudo.record("Observation", planted["observation_id"])]
        assert (row["code_system"], row["code"]) == (LOINC, planted["loinc"])
        assert row["mapping_status"] == "mapped"
        assert row["_mapped_from"] == f"{LOCAL_LAB}|{planted['local_code']}"
    assert not any(r["code_system"] == LOCAL_LAB for r in good.values())

    # every mixed unit comes out canonical, with the truth's canonical value (up to the rounding
    # of the value as the generator recorded it in the other unit)
    assert truth["unit_mix"]
    by_loinc = {m.loinc: m for m in MEASUREMENTS.values()}
    for planted in truth["unit_mix"]:
        row = good[pseudo.record("Observation", planted["observation_id"])]
        alt = by_loinc[planted["loinc"]].alt_unit
        assert alt is not None
        tolerance = 0.5 * 10**-alt.decimals / alt.scale + 0.01
        assert row["value_unit"] == planted["canonical_unit"]
        assert row["value_num"] == pytest.approx(planted["canonical_value"], abs=tolerance)
        assert (row["_unit_converted_from"], row["_value_original"]) == (
            planted["unit"],
            planted["value"],
        )

    # the planted impossible values, and nothing else, are refused
    impossible = {
        pseudo.record("Observation", p["observation_id"]) for p in truth["impossible_values"]
    }
    assert by_rule(split.quarantined) == {"ranges.impossible": len(impossible)}
    assert set(split.quarantined.column("record_id").to_pylist()) == impossible
    # a value with a normal range is flagged against it; weight and height have none
    for row in good.values():
        flagged = row["value_num"] is not None and row["code"] in ranges.NORMAL_RANGES
        assert (row["_range_flag"] in {"normal", "low", "high"}) is flagged, row["code"]


def test_sample_hospital_conditions_and_medications(
    sample: tuple[pa.Table, dict[str, Any]],
) -> None:
    bronze, _ = sample
    conditions = fhir.conditions_from_bronze(bronze, key=KEY).good
    meds = fhir.medications_from_bronze(bronze, key=KEY).good
    for split, rows in (
        (standardize.standardize_conditions(conditions, concept_map=CONCEPT_MAP), conditions),
        (standardize.standardize_medications(meds, concept_map=CONCEPT_MAP), meds),
    ):
        assert rows.num_rows > 0
        assert split.quarantined.num_rows == 0
        assert terminology.mapping_counts(split.good) == {"standard": rows.num_rows}


# -- no step loses or invents a row --------------------------------------------------------------

_CODES = st.sampled_from(
    [
        (LOINC, "8867-4"),
        (LOINC, "8310-5"),
        (LOINC, "2339-0"),
        (LOINC, "59408-5"),
        (LOINC, "8867-5"),
        (LOINC, "39156-5"),
        (LOCAL_LAB, "GLU"),
        (LOCAL_LAB, "NOPE"),
        ("urn:x", "1"),
        (None, None),
    ]
)
_UNITS = st.one_of(
    st.sampled_from(
        ["/min", "Cel", "[degF]", "mg/dL", "mmol/L", "%", "1", "kg", "mmHg", "foo", "10*3/uL"]
    ),
    st.none(),
    st.text(max_size=6),
)
_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))


@st.composite
def observation_tables(draw: st.DrawFn) -> pa.Table:
    rows = []
    for i in range(draw(st.integers(min_value=0, max_value=25))):
        system, code = draw(_CODES)
        low = draw(st.one_of(st.none(), st.floats(-10, 10)))
        rows.append(
            {
                "observation_key": f"o{i}",
                "code_system": system,
                "code": code,
                "value_num": draw(_VALUES),
                "value_unit": draw(_UNITS),
                "ref_low": low,
                "_record_hash": draw(st.sampled_from(["h1", "h2", f"h{i}"])),
            }
        )
    return obs(*rows)


@st.composite
def condition_tables(draw: st.DrawFn) -> pa.Table:
    codes = st.sampled_from([None, "E11.9", "E11.99", "I10", "E08-E13", "xx"])
    snomeds = st.sampled_from([None, "44054006", "44054007", "1"])
    rows = [
        {
            "condition_key": f"c{i}",
            "person_key": "p",
            "code_system": draw(st.sampled_from([None, "urn:dx"])),
            "code": draw(st.sampled_from([None, "A"])),
            "icd10cm_code": draw(codes),
            "snomed_code": draw(snomeds),
            "_record_hash": "h",
            "_source_kind": "fhir",
            "_run_id": "r",
        }
        for i in range(draw(st.integers(min_value=0, max_value=15)))
    ]
    return pa.Table.from_pylist(rows, schema=SILVER_CONDITIONS.schema)


@st.composite
def medication_tables(draw: st.DrawFn) -> pa.Table:
    rows = [
        {
            "medication_key": f"m{i}",
            "person_key": "p",
            "code_system": "urn:rx",
            "code": draw(st.sampled_from([None, "MET500"])),
            "rxnorm_code": draw(st.sampled_from([None, "860975", "86O975", ""])),
            "_record_hash": "h",
            "_source_kind": "fhir",
            "_run_id": "r",
        }
        for i in range(draw(st.integers(min_value=0, max_value=15)))
    ]
    return pa.Table.from_pylist(rows, schema=SILVER_MEDICATIONS.schema)


def _conserves(split_rows: int, good: pa.Table, quarantined: pa.Table) -> None:
    assert good.num_rows + quarantined.num_rows == split_rows
    # every quarantine row is a distinct record: nothing collapses when inserted on its id
    ids = quarantined.column("quarantine_id").to_pylist()
    assert len(set(ids)) == len(ids)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(observation_tables(), st.sampled_from(["quarantine", "keep"]))
def test_observation_steps_conserve_rows(rows: pa.Table, on_unmapped: OnUnmapped) -> None:
    steps = [
        lambda r: terminology.map_observation_codes(
            r, concept_map=CONCEPT_MAP, on_unmapped=on_unmapped
        ),
        units.normalize_units,
        ranges.check_plausibility,
        lambda r: standardize.standardize_observations(
            r, concept_map=CONCEPT_MAP, on_unmapped=on_unmapped
        ),
    ]
    for step in steps:
        split = step(rows)
        _conserves(rows.num_rows, split.good, split.quarantined)
    # each good value is a number in its canonical unit when its LOINC has one
    for row in split.good.to_pylist():
        canonical = units.LOINC_CANONICAL.get(row["code"])
        if canonical and row["value_num"] is not None:
            assert row["value_unit"] == canonical.unit
            assert (
                not math.isnan(row["value_num"])
                or (row["code"], row["value_unit"]) not in ranges.impossible_ranges()
            )


@SETTINGS
@given(condition_tables(), medication_tables(), st.sampled_from(["quarantine", "keep"]))
def test_condition_and_medication_steps_conserve_rows(
    conditions: pa.Table, meds: pa.Table, on_unmapped: OnUnmapped
) -> None:
    cmap = pa.Table.from_pylist(
        [
            {
                "source_system": "urn:dx",
                "source_code": "A",
                "target_system": terminology.ICD10CM,
                "target_code": "I10",
                "target_display": None,
                "map_file": "t.csv",
            },
            {
                "source_system": "urn:rx",
                "source_code": "MET500",
                "target_system": terminology.RXNORM,
                "target_code": "860975",
                "target_display": None,
                "map_file": "t.csv",
            },
        ],
        schema=terminology.CONCEPT_MAPS.schema,
    )
    for split, rows in (
        (
            standardize.standardize_conditions(
                conditions, concept_map=cmap, on_unmapped=on_unmapped
            ),
            conditions,
        ),
        (
            standardize.standardize_medications(meds, concept_map=cmap, on_unmapped=on_unmapped),
            meds,
        ),
    ):
        _conserves(rows.num_rows, split.good, split.quarantined)
        if on_unmapped == "keep":
            assert split.quarantined.num_rows == 0
