"""Plausibility: impossible values (the gate suite's ranges) quarantined, normal ranges flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.jobs.clean import ranges
from medlake.registry import SILVER_OBSERVATIONS

LOINC = "http://loinc.org"
SUITE = Path(__file__).resolve().parents[3] / "expectations" / "suites" / "silver_observations.json"


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


def hr(key: str, value: float | None, unit: str = "/min", **more: Any) -> dict[str, Any]:
    return {
        "observation_key": key,
        "code": "8867-4",
        "value_num": value,
        "value_unit": unit,
        **more,
    }


def test_impossible_ranges_are_the_gate_suites() -> None:
    found = ranges.impossible_ranges()
    suite = json.loads(SUITE.read_text())
    between = [
        e
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between"
        and e["kwargs"].get("column") == "value_num"
    ]
    assert len(found) == len(between) > 0
    heart = found[("8867-4", "/min")]
    assert (heart.low, heart.high, heart.source) == (0, 300, "heart_rate_range")
    assert (found[("8310-5", "Cel")].low, found[("8310-5", "Cel")].high) == (25, 45)


def test_impossible_values_are_quarantined_with_the_range() -> None:
    split = ranges.check_plausibility(
        obs(
            hr("ok-top", 300),
            hr("ok-zero", 0),
            hr("high", 900),
            hr("neg", -1),
            hr("nan", math.nan),
            hr("other-unit", 900, unit="/h"),
            hr("absent", None),
        )
    )
    assert sorted(split.good.column("observation_key").to_pylist()) == [
        "absent",
        "ok-top",
        "ok-zero",
        "other-unit",
    ]
    reasons = {r["record_id"]: r["reason"] for r in split.quarantined.to_pylist()}
    assert set(reasons) == {"high", "neg", "nan"}
    assert reasons["high"] == (
        "observation_key high: value 900 /min of LOINC 8867-4 is impossible: "
        "expected between 0 and 300 /min (gate rule heart_rate_range)"
    )
    assert "value NaN /min" in reasons["nan"]
    assert set(split.quarantined.column("rule_id").to_pylist()) == {"ranges.impossible"}


def test_outside_the_normal_range_is_only_flagged() -> None:
    split = ranges.check_plausibility(
        obs(
            hr("fast", 110),
            hr("slow", 50),
            hr("normal", 72),
            hr("absent", None),
            # the lab's own reference range wins over the default (70–99 mg/dL)
            {
                "observation_key": "glu-own",
                "code": "2339-0",
                "value_num": 105.0,
                "value_unit": "mg/dL",
                "ref_high": 110.0,
            },
            {
                "observation_key": "glu-default",
                "code": "2339-0",
                "value_num": 105.0,
                "value_unit": "mg/dL",
            },
            {
                "observation_key": "chol",
                "code": "2093-3",
                "value_num": 150.0,
                "value_unit": "mg/dL",
            },
            {
                "observation_key": "weight",
                "code": "29463-7",
                "value_num": 140.0,
                "value_unit": "kg",
            },
            {"observation_key": "unit", "code": "2339-0", "value_num": 5.0, "value_unit": "mmol/L"},
        )
    )
    assert split.quarantined.num_rows == 0
    flags = dict(
        zip(
            split.good.column("observation_key").to_pylist(),
            split.good.column("_range_flag").to_pylist(),
            strict=True,
        )
    )
    assert flags == {
        "fast": "high",
        "slow": "low",
        "normal": "normal",
        "absent": None,
        "glu-own": "normal",
        "glu-default": "high",
        "chol": "normal",
        "weight": None,  # no default normal weight
        "unit": None,  # a default range applies in its own unit only
    }


def test_strict_bounds_and_a_suite_given_as_data() -> None:
    suite = {
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {
                    "column": "value_num",
                    "min_value": 0,
                    "max_value": 300,
                    "strict_min": True,
                    "row_condition": {
                        "type": "and",
                        "conditions": [
                            {
                                "type": "comparison",
                                "column": {"name": "code"},
                                "operator": "==",
                                "parameter": "8867-4",
                            },
                            {
                                "type": "comparison",
                                "column": {"name": "value_unit"},
                                "operator": "==",
                                "parameter": "/min",
                            },
                        ],
                    },
                },
                "meta": {"rule": "hr"},
            }
        ]
    }
    bounds = ranges.impossible_ranges(suite)
    split = ranges.check_plausibility(obs(hr("zero", 0), hr("one", 1)), impossible=bounds)
    assert split.quarantined.column("record_id").to_pylist() == ["zero"]
    assert (
        "expected > 0 and ≤ 300 /min (gate rule hr)"
        in split.quarantined.column("reason")[0].as_py()
    )


def test_a_suite_range_this_step_cannot_read_is_an_error() -> None:
    suite = {
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {
                    "column": "value_num",
                    "min_value": 0,
                    "max_value": 1,
                    "row_condition": {
                        "type": "comparison",
                        "column": {"name": "code"},
                        "operator": "==",
                        "parameter": "8867-4",
                    },
                },
                "meta": {"rule": "no_unit"},
            }
        ]
    }
    with pytest.raises(ValueError, match="suite rule no_unit"):
        ranges.impossible_ranges(suite)


def test_normal_ranges_are_in_canonical_units() -> None:
    from medlake.jobs.clean.units import LOINC_CANONICAL

    for loinc, normal in ranges.NORMAL_RANGES.items():
        assert LOINC_CANONICAL[loinc].unit == normal.unit, loinc
    for loinc, unit in ranges.impossible_ranges():
        assert LOINC_CANONICAL[loinc].unit == unit, loinc
