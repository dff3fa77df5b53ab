"""Plausibility: values that cannot be physiological are quarantined, values outside the normal
range only flagged.

The impossible ranges are not kept here: they are the row-level ``value_num`` between-rules of
the gate's suite ``expectations/suites/silver_observations.json`` (each conditioned on a LOINC
code and its canonical unit), read by :func:`impossible_ranges`. Clean and gate therefore cannot
disagree; clean runs first, so the reason a row gets is ``ranges.impossible`` with the range and
the gate rule it breaks, and the gate finds nothing left to quarantine for those rules.

Normal ranges: the lab's own reference range on the row when it sent one (``ref_low``/``ref_high``,
already in the canonical unit after :mod:`units`), else the adult default in ``NORMAL_RANGES``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medlake.jobs.clean.config import (
    OBSERVATIONS,
    RANGE_FIELDS,
    distinct,
    quarantine,
    reasons_for,
    replace,
    with_fields,
)
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split

RULE_IMPOSSIBLE = "ranges.impossible"

#: the gate's suite for silver.observations, which holds the impossible ranges
OBSERVATIONS_SUITE = "suites/silver_observations.json"


@dataclass(frozen=True)
class Range:
    """Values between low and high (inclusive unless strict); a missing bound is open."""

    low: float | None
    high: float | None
    unit: str
    strict_low: bool = False
    strict_high: bool = False
    #: where the range comes from, e.g. the gate rule "heart_rate_range"
    source: str = ""

    def __str__(self) -> str:
        lo = f"{'>' if self.strict_low else '≥'} {self.low:g}" if self.low is not None else None
        hi = f"{'<' if self.strict_high else '≤'} {self.high:g}" if self.high is not None else None
        if lo and hi and not (self.strict_low or self.strict_high):
            text = f"between {self.low:g} and {self.high:g} {self.unit}"
        else:
            text = " and ".join(p for p in (lo, hi) if p) + f" {self.unit}"
        return text + (f" (gate rule {self.source})" if self.source else "")


#: LOINC → adult normal range in the canonical unit (``units.LOINC_CANONICAL``); flags only.
#: No default for weight, height and BMI: what is normal depends on the person.
NORMAL_RANGES: dict[str, Range] = {
    "8867-4": Range(60, 100, "/min"),
    "9279-1": Range(12, 20, "/min"),
    "8310-5": Range(36.1, 37.8, "Cel"),
    "8331-1": Range(36.1, 37.8, "Cel"),
    "8480-6": Range(90, 139, "mm[Hg]"),
    "8462-4": Range(60, 89, "mm[Hg]"),
    "59408-5": Range(95, 100, "%"),
    "2708-6": Range(95, 100, "%"),
    "2339-0": Range(70, 99, "mg/dL"),
    "2345-7": Range(70, 99, "mg/dL"),
    "2160-0": Range(0.6, 1.3, "mg/dL"),
    "2093-3": Range(None, 199, "mg/dL"),
    "4548-4": Range(4.0, 5.6, "%"),
    "718-7": Range(12.0, 17.5, "g/dL"),
}


def impossible_ranges(
    suite: Path | Mapping[str, Any] | None = None,
) -> dict[tuple[str, str], Range]:
    """(LOINC, UCUM unit) → the impossible-value bounds of the gate's suite.

    Read: ``expect_column_values_to_be_between`` on ``value_num`` that must hold for every row
    (no ``mostly`` below 1), whose row condition is ``code == <LOINC> and value_unit == <unit>``.
    A ``value_num`` rule of any other shape raises, so the suite cannot grow a range this step
    silently ignores.
    """
    data = _suite_json() if suite is None else _load(suite)
    found: dict[tuple[str, str], Range] = {}
    for exp in data.get("expectations", []):
        kw = exp.get("kwargs", {})
        if (
            exp.get("type") != "expect_column_values_to_be_between"
            or kw.get("column") != "value_num"
        ):
            continue
        rule = (exp.get("meta") or {}).get("rule", "?")
        if kw.get("mostly", 1) != 1:
            continue  # a table-level rule in the gate, not a per-value bound
        condition = _equalities(kw.get("row_condition"))
        if condition is None or set(condition) != {"code", "value_unit"}:
            raise ValueError(
                f"suite rule {rule}: a value_num range needs the row condition "
                "code == <LOINC> and value_unit == <UCUM unit>"
            )
        key = (condition["code"], condition["value_unit"])
        if key in found:
            raise ValueError(f"suite rule {rule}: a second range for LOINC {key[0]} in {key[1]}")
        found[key] = Range(
            _number(kw.get("min_value")),
            _number(kw.get("max_value")),
            key[1],
            strict_low=bool(kw.get("strict_min")),
            strict_high=bool(kw.get("strict_max")),
            source=rule,
        )
    return found


def _load(suite: Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(suite, Path):
        data: dict[str, Any] = json.loads(suite.read_text(encoding="utf-8"))
        return data
    return dict(suite)


@cache
def _suite_json() -> dict[str, Any]:
    text = (
        resources.files("medlake.expectations")
        .joinpath(OBSERVATIONS_SUITE)
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    return data


def _equalities(cond: Any) -> dict[str, str] | None:
    """A GX 1.x row condition of ``column == value`` comparisons joined by 'and', as a dict."""
    if not isinstance(cond, Mapping):
        return None
    if cond.get("type") == "comparison" and cond.get("operator") == "==":
        return {cond["column"]["name"]: str(cond["parameter"])}
    if cond.get("type") == "and":
        merged: dict[str, str] = {}
        for part in cond.get("conditions", []):
            found = _equalities(part)
            if found is None:
                return None
            merged.update(found)
        return merged
    return None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def check_plausibility(
    obs: pa.Table,
    *,
    impossible: Mapping[tuple[str, str], Range] | None = None,
    normal: Mapping[str, Range] = NORMAL_RANGES,
) -> Split:
    """Impossible values quarantined (``ranges.impossible``); the rest flagged in ``_range_flag``.

    ``impossible`` defaults to the gate suite's ranges. A range applies to rows of its LOINC code
    in its unit; a value that is not a number (NaN) where a range applies is impossible too.
    """
    bounds = impossible_ranges() if impossible is None else impossible
    obs = with_fields(obs, RANGE_FIELDS)
    if obs.num_rows == 0:
        return Split(obs, QUARANTINE_SCHEMA.empty_table())
    combos, index = distinct(obs, ["code", "value_unit"])
    value = obs.column("value_num")

    # impossible: per-row bounds from the (code, unit) the row has
    ranges = [bounds.get((c, u)) if c is not None and u is not None else None for c, u in combos]
    low, high, strict_low, strict_high = _bound_arrays(ranges, index)
    below = pc.if_else(strict_low, pc.less_equal(value, low), pc.less(value, low))
    above = pc.if_else(strict_high, pc.greater_equal(value, high), pc.greater(value, high))
    applies = pa.array([r is not None for r in ranges], pa.bool_()).take(index)
    nan = pc.and_(applies, pc.fill_null(pc.is_nan(value), False))
    bad = pc.or_(pc.fill_null(pc.or_(below, above), False), nan)

    # normal: the row's reference range when it has one, else the default for its code and unit
    defaults = [
        normal.get(c) if c is not None and c in normal and normal[c].unit == u else None
        for c, u in combos
    ]
    d_low, d_high, _, _ = _bound_arrays(defaults, index)
    own = pc.or_(pc.is_valid(obs.column("ref_low")), pc.is_valid(obs.column("ref_high")))
    n_low = pc.if_else(own, obs.column("ref_low"), d_low)
    n_high = pc.if_else(own, obs.column("ref_high"), d_high)
    known = pc.and_(pc.is_valid(value), pc.or_(pc.is_valid(n_low), pc.is_valid(n_high)))
    is_low = pc.fill_null(pc.less(value, n_low), False)
    is_high = pc.fill_null(pc.greater(value, n_high), False)
    flag = pc.if_else(is_low, "low", pc.if_else(is_high, "high", "normal"))
    flag = pc.if_else(pc.and_(known, pc.invert(pc.fill_null(pc.is_nan(value), False))), flag, None)
    out = replace(obs, "_range_flag", flag)

    refused = out.filter(bad)
    reasons = _impossible_reasons(refused, ranges, index.filter(bad))
    quarantined = quarantine(
        refused, rule_id=RULE_IMPOSSIBLE, reasons=reasons, table_name=OBSERVATIONS
    )
    return Split(out.filter(pc.invert(bad)), quarantined)


def _bound_arrays(
    ranges: list[Range | None], index: pa.Array
) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Per-row low, high and strictness from per-combination ranges."""
    low = pa.array([r.low if r else None for r in ranges], pa.float64()).take(index)
    high = pa.array([r.high if r else None for r in ranges], pa.float64()).take(index)
    s_low = pa.array([bool(r and r.strict_low) for r in ranges], pa.bool_()).take(index)
    s_high = pa.array([bool(r and r.strict_high) for r in ranges], pa.bool_()).take(index)
    return low, high, s_low, s_high


def _impossible_reasons(rows: pa.Table, ranges: list[Range | None], index: pa.Array) -> list[str]:
    problems = []
    for row, position in zip(rows.to_pylist(), index.to_pylist(), strict=True):
        bound = ranges[position]
        value = row["value_num"]
        shown = "NaN" if math.isnan(value) else f"{value:.10g}"
        problems.append(
            f"value {shown} {row['value_unit']} of LOINC {row['code']} is impossible: expected {bound}"
        )
    reasons: list[str] = reasons_for(rows, pa.array(problems, pa.string()), table_name=OBSERVATIONS)
    return reasons
