"""Units: every quantitative observation in the UCUM canonical unit of its LOINC code.

Units are parsed as UCUM with ``ucumvert`` (a UCUM grammar whose registry is a pint
``UnitRegistry`` with the UCUM definitions), and converted with pint: lb → kg, in → cm,
°F → Cel (an affine conversion), mmol/L ↔ mg/dL through the analyte's molar mass, a fraction
→ %. A full UCUM grammar matters: pint alone reads ``10*3/uL`` as 30/µL and knows neither
``[lb_av]`` nor ``mm[Hg]``; a hand-made definitions file would have to reproduce the grammar.

``LOINC_CANONICAL`` is the one table of canonical units (and molar masses). A LOINC code not in
it keeps its unit, checked to be UCUM. A unit that is not UCUM (nor a listed spelling of one) is
quarantined as ``units.unknown``; a unit that cannot express the LOINC's quantity as
``units.incompatible``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medlake.jobs.clean.config import (
    OBSERVATIONS,
    UNIT_FIELDS,
    distinct,
    quarantine,
    reasons_for,
    replace,
    with_fields,
)
from medlake.jobs.ingest.fhir import LOINC
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split

RULE_UNKNOWN = "units.unknown"
RULE_INCOMPATIBLE = "units.incompatible"

#: decimals kept after a conversion: drops binary noise (36.99999999999999) but no precision any
#: instrument has; the canonical units hold values far above 1e-9 (no mol/L, no g/L of traces)
CONVERTED_DECIMALS = 9
#: values below this size are rounded to CONVERTED_DECIMALS after a conversion
_ROUNDABLE = 1e15


@dataclass(frozen=True)
class Canonical:
    """The UCUM unit silver stores a LOINC code's values in."""

    unit: str
    #: g/mol of the analyte, so substance concentrations (mmol/L) convert to mass ones (mg/dL)
    molar_mass: float | None = None
    #: for a dimensionless unit (%): the other units that mean the same quantity, e.g. '1' for
    #: saturation as a fraction. Any other ratio (mmol/mol HbA1c is IFCC, not NGSP %) is refused.
    also: tuple[str, ...] = ()


#: LOINC code → canonical unit. The units agree with the dbt var ``key_labs``, the gate's suite
#: and the units Synthea writes for the same codes (checked by tests).
LOINC_CANONICAL: dict[str, Canonical] = {
    # vital signs
    "8867-4": Canonical("/min"),  # heart rate
    "9279-1": Canonical("/min"),  # respiratory rate
    "8310-5": Canonical("Cel"),  # body temperature
    "8331-1": Canonical("Cel"),  # oral temperature
    "29463-7": Canonical("kg"),  # body weight
    "8302-2": Canonical("cm"),  # body height
    "39156-5": Canonical("kg/m2"),  # body mass index
    "8480-6": Canonical("mm[Hg]"),  # systolic blood pressure
    "8462-4": Canonical("mm[Hg]"),  # diastolic blood pressure
    "59408-5": Canonical("%", also=("1",)),  # SpO2 by pulse oximetry
    "2708-6": Canonical("%", also=("1",)),  # oxygen saturation in arterial blood
    # laboratory
    "2339-0": Canonical("mg/dL", molar_mass=180.156),  # glucose in blood
    "2345-7": Canonical("mg/dL", molar_mass=180.156),  # glucose in serum or plasma
    "2160-0": Canonical("mg/dL", molar_mass=113.12),  # creatinine (µmol/L abroad)
    "2093-3": Canonical("mg/dL", molar_mass=386.65),  # total cholesterol
    "4548-4": Canonical("%"),  # hemoglobin A1c (NGSP)
    # hemoglobin in mmol/L is reported per haem monomer (NL, DK): 16114.5 g/mol, 1 g/dL = 0.6206 mmol/L
    "718-7": Canonical("g/dL", molar_mass=16114.5),
}

#: spellings sources use for a UCUM unit (FHIR Quantity.unit when no UCUM code was sent)
UNIT_SYNONYMS: dict[str, str] = {
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "in": "[in_i]",
    "°F": "[degF]",
    "degF": "[degF]",
    "°C": "Cel",
    "degC": "Cel",
    "mmHg": "mm[Hg]",
    "beats/minute": "/min",
    "breaths/minute": "/min",
    "bpm": "/min",
}


class UnitProblem(ValueError):
    """A unit that cannot be used: ``rule`` is units.unknown or units.incompatible."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class Conversion:
    """value in the target unit = scale × value + offset (offset only for °F/°C)."""

    scale: float
    offset: float = 0.0

    def __call__(self, value: float) -> float:
        return self.scale * value + self.offset

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


#: the longest unit text read as UCUM: a longer one is refused unparsed and is not echoed in reasons
MAX_UNIT_CHARS = 64


@cache
def _registry() -> Any:
    """The UCUM unit registry (built on first use: about half a second)."""
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@cache
def ucum(unit: str) -> Any:
    """The unit as a pint quantity of magnitude 1 (or a UCUM factor such as 10*3), else UnitProblem:
    units.unknown when it is not UCUM, units.incompatible when it is UCUM that pint cannot model
    (the logarithmic [pH]). A missing ucumvert raises ImportError: never a quarantine."""
    from lark.exceptions import LarkError
    from pint.errors import PintError
    from ucumvert import InvalidUcumError

    registry = _registry()
    try:
        parsed = registry.from_ucum(unit)
    except InvalidUcumError as exc:
        raise UnitProblem(RULE_UNKNOWN, f"unit {unit!r} is not a UCUM unit") from exc
    except (LarkError, PintError) as exc:
        raise UnitProblem(
            RULE_INCOMPATIBLE, f"unit {unit!r} is UCUM but has no conversion"
        ) from exc
    if isinstance(parsed, str):  # a bare annotation such as {score}: UCUM's unity
        return registry.Quantity(1, "dimensionless")
    return parsed


#: the second point of the two-point fit of a conversion: far from 0 so that the slope of an
#: affine conversion (°F → Cel) is not lost to rounding of its offset
_FAR = 1e6


@cache
def conversion(from_unit: str, to_unit: str, *, molar_mass: float | None = None) -> Conversion:
    """How to convert values between two UCUM units; through ``molar_mass`` (g/mol) when one is
    a substance and the other a mass concentration. Raises UnitProblem."""
    source, target = ucum(from_unit), ucum(to_unit)
    registry = _registry()

    def convert(value: float) -> float:
        quantity = registry.Quantity(value * source.magnitude, source.units)
        if quantity.dimensionality != target.dimensionality and molar_mass is not None:
            mass = registry.Quantity(molar_mass, "g/mol")
            for candidate in (quantity * mass, quantity / mass):
                if candidate.dimensionality == target.dimensionality:
                    quantity = candidate
                    break
        return float(quantity.to(target.units).magnitude) / float(target.magnitude)

    from pint.errors import PintError

    try:
        zero, far = convert(0.0), convert(_FAR)
    except PintError as exc:  # DimensionalityError, OffsetUnitCalculusError
        through = f" (molar mass {molar_mass:g} g/mol)" if molar_mass else ""
        raise UnitProblem(
            RULE_INCOMPATIBLE, f"{from_unit!r} cannot be converted to {to_unit!r}{through}"
        ) from exc
    return Conversion(scale=(far - zero) / _FAR, offset=zero)


def canonical_conversion(
    loinc: str | None,
    unit: str | None,
    *,
    canonical: Mapping[str, Canonical] = LOINC_CANONICAL,
    synonyms: Mapping[str, str] = UNIT_SYNONYMS,
) -> tuple[str | None, Conversion | None]:
    """The unit a value of this LOINC code and unit is stored in, and how to convert it there
    (None: kept as received). Raises UnitProblem naming the code, the unit and the target."""
    target = canonical.get(loinc) if loinc is not None else None
    if unit is None:
        if target is None:
            return None, None
        raise UnitProblem(
            RULE_UNKNOWN, f"a value of LOINC {loinc} has no unit (canonical {target.unit})"
        )
    if len(unit) > MAX_UNIT_CHARS:  # never parsed (time) nor echoed (a reason repeats no field)
        raise UnitProblem(
            RULE_UNKNOWN, f"a unit of {len(unit)} characters is not a UCUM unit (at most {MAX_UNIT_CHARS})"
        )
    code = synonyms.get(unit, unit)
    try:
        ucum(code)
    except UnitProblem as exc:
        where = f" of LOINC {loinc}" if loinc else ""
        if exc.rule == RULE_UNKNOWN:
            raise UnitProblem(exc.rule, f"unit {unit!r}{where} is not a UCUM unit") from None
        if target is not None:
            raise UnitProblem(
                exc.rule, f"unit {unit!r} cannot express LOINC {loinc}, stored in {target.unit}"
            ) from None
        # UCUM that pint cannot model ([pH]) on a code without a canonical unit: kept as it is
    if target is None:
        return (code, None if code == unit else Conversion(1.0))
    if code == target.unit:
        return target.unit, None if code == unit else Conversion(1.0)
    if ucum(target.unit).dimensionless and code not in target.also:
        raise UnitProblem(
            RULE_INCOMPATIBLE,
            f"unit {unit!r} cannot express LOINC {loinc}, stored in {target.unit}"
            + (f" (or {', '.join(target.also)})" if target.also else ""),
        )
    try:
        return target.unit, conversion(code, target.unit, molar_mass=target.molar_mass)
    except UnitProblem as exc:
        raise UnitProblem(
            exc.rule, f"unit {unit!r} cannot express LOINC {loinc}, stored in {target.unit}"
        ) from None


def normalize_units(
    obs: pa.Table,
    *,
    canonical: Mapping[str, Canonical] = LOINC_CANONICAL,
    synonyms: Mapping[str, str] = UNIT_SYNONYMS,
) -> Split:
    """Observation values (and their reference ranges) in the canonical UCUM unit of their LOINC code.

    A converted row keeps what it was: ``_unit_converted_from`` (the unit as received) and
    ``_value_original``. Rows without a numeric value pass unchanged.
    """
    obs = with_fields(obs, UNIT_FIELDS)
    if obs.num_rows == 0:
        return Split(obs, QUARANTINE_SCHEMA.empty_table())
    has_value = pc.is_valid(obs.column("value_num"))
    loinc = pc.if_else(pc.equal(obs.column("code_system"), LOINC), obs.column("code"), None)
    keys = pa.table(
        {
            "loinc": pc.if_else(has_value, loinc, None),
            "unit": pc.if_else(has_value, obs.column("value_unit"), None),
            "valued": pc.if_else(has_value, "y", "n"),
        }
    )
    combos, index = distinct(keys, ["loinc", "unit", "valued"])
    units: list[str | None] = []
    scales: list[float | None] = []
    offsets: list[float | None] = []
    rules: list[str | None] = []
    problems: list[str | None] = []
    for code, unit, valued in combos:
        outcome: tuple[str | None, Conversion | None] = (unit, None)
        rule = problem = None
        if valued == "y":
            try:
                outcome = canonical_conversion(code, unit, canonical=canonical, synonyms=synonyms)
            except UnitProblem as exc:
                rule, problem = exc.rule, exc.message
        target, conv = outcome
        units.append(target)
        scales.append(conv.scale if conv else None)
        offsets.append(conv.offset if conv else None)
        rules.append(rule)
        problems.append(problem)

    rule = pa.array(rules, pa.string()).take(index)
    scale = pa.array(scales, pa.float64()).take(index)
    offset = pa.array(offsets, pa.float64()).take(index)
    converted = pc.is_valid(scale)
    value = obs.column("value_num")

    def apply(column: pa.ChunkedArray) -> pa.Array:
        raw = pc.add(pc.multiply(column, scale), offset)
        # rounding a value past 1e15 to decimals overflows in Arrow (and means nothing): such a
        # value is kept unrounded, for the plausibility rules to judge, not an error for the step
        small = pc.fill_null(pc.less(pc.abs(raw), _ROUNDABLE), False)
        rounded = pc.round(pc.if_else(small, raw, 0.0), CONVERTED_DECIMALS)
        return pc.if_else(converted, pc.if_else(small, rounded, raw), column)

    out = replace(
        obs, "_unit_converted_from", pc.if_else(converted, obs.column("value_unit"), None)
    )
    out = replace(out, "_value_original", pc.if_else(converted, value, None))
    out = replace(out, "value_num", apply(value))
    for bound in ("ref_low", "ref_high"):
        out = replace(out, bound, apply(out.column(bound)))
    out = replace(
        out,
        "value_unit",
        pc.if_else(converted, pa.array(units, pa.string()).take(index), out.column("value_unit")),
    )

    problem = pa.array(problems, pa.string()).take(index)
    refused: list[pa.Table] = []
    for name in (RULE_UNKNOWN, RULE_INCOMPATIBLE):
        mask = pc.fill_null(pc.equal(rule, name), False)
        bad = obs.filter(mask)  # as received: the quarantined row shows the unit that failed
        refused.append(
            quarantine(
                bad,
                rule_id=name,
                reasons=reasons_for(bad, problem.filter(mask), table_name=OBSERVATIONS),
                table_name=OBSERVATIONS,
            )
        )
    good = out.filter(pc.is_null(rule))
    return Split(good, pa.concat_tables(refused))


def convert_value(
    value: float, from_unit: str, to_unit: str, *, molar_mass: float | None = None
) -> float:
    """One value converted between UCUM units (for checks and tests; steps use Arrow)."""
    result = conversion(from_unit, to_unit, molar_mass=molar_mass)(value)
    return round(result, CONVERTED_DECIMALS) if math.isfinite(result) else result
