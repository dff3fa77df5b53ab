"""Terminology: local codes mapped to the standard ones (labs → LOINC, diagnoses → ICD-10-CM and
SNOMED CT, drugs → RxNorm) through concept maps, and every standard code checked structurally.

Concept maps are CSV files (``source_system, source_code, target_system, target_code,
target_display``) a hospital keeps next to its data; :func:`load_concept_maps` loads a folder of
them into the Delta table ``reference.concept_maps`` (each load a new Delta version, so a run can
name the map version it used). The mapping steps are pure: they take the map as an Arrow table.

Structural checks: LOINC by its mod-10 check digit, SNOMED CT by its Verhoeff check digit and
concept partition, ICD-10-CM against the April 2026 code list shipped by ``simple-icd-10-cm``
(dotted or undotted; chapters and blocks are not codes), RxNorm as a numeric RxCUI.

A code that cannot be mapped (``terminology.unmapped``) or fails its check
(``terminology.invalid_code``) is quarantined, or kept with ``mapping_status`` 'unmapped' or
'invalid' when the table is configured ``on_unmapped="keep"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from medlake.jobs.clean.config import (
    CONDITIONS,
    MEDICATIONS,
    OBSERVATIONS,
    TERMINOLOGY_FIELDS,
    OnUnmapped,
    distinct,
    quarantine,
    reasons_for,
    replace,
    with_fields,
)
from medlake.jobs.ingest.fhir import ICD10CM, LOINC, RXNORM, SNOMED
from medlake.lake import Lake
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split
from medlake.registry import TableSpec

#: the concept maps shipped with medlake (the sample hospital's local lab codes)
SHIPPED_MAPS = Path(__file__).parent / "concept_maps"

MAP_COLUMNS = ("source_system", "source_code", "target_system", "target_code", "target_display")

CONCEPT_MAPS = TableSpec(
    name="reference.concept_maps",
    schema=pa.schema(
        [
            pa.field("source_system", pa.string(), nullable=False),
            pa.field("source_code", pa.string(), nullable=False),
            pa.field("target_system", pa.string(), nullable=False),
            pa.field("target_code", pa.string(), nullable=False),
            pa.field("target_display", pa.string()),
            pa.field("map_file", pa.string(), nullable=False),
        ]
    ),
    key=("source_system", "source_code", "target_system"),
    description="Local code → standard code, one row per source code and target system; loaded from CSV.",
)

STANDARD = "standard"
MAPPED = "mapped"
UNMAPPED = "unmapped"
INVALID = "invalid"
RULE_UNMAPPED = "terminology.unmapped"
RULE_INVALID = "terminology.invalid_code"


# ---------------------------------------------------------------------------------------------
# concept maps: CSV → Arrow → Delta


def read_concept_maps(csv_dir: Path) -> pa.Table:
    """Every ``*.csv`` concept map in a folder as one table, checked (see :func:`check_concept_map`)."""
    files = sorted(csv_dir.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no concept map CSV files in {csv_dir}")
    tables = []
    for path in files:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in MAP_COLUMNS}, strings_can_be_null=False
            ),
        )
        missing = [c for c in MAP_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"concept map {path.name}: missing column(s) {', '.join(missing)}")
        table = table.select(list(MAP_COLUMNS))
        for column in ("source_system", "source_code", "target_system", "target_code"):
            values = pc.utf8_trim_whitespace(table.column(column))
            empty = pc.equal(pc.utf8_length(values), 0).to_pylist()
            if any(empty):
                line = empty.index(True) + 2  # 1-based, after the header line
                raise ValueError(f"concept map {path.name} line {line}: {column} is empty")
            table = replace(table, column, values)
        display = table.column("target_display")
        table = replace(table, "target_display", pc.if_else(pc.equal(display, ""), None, display))
        tables.append(
            table.append_column("map_file", pa.array([path.name] * table.num_rows, pa.string()))
        )
    combined = pa.concat_tables(tables).cast(CONCEPT_MAPS.schema)
    check_concept_map(combined)
    return combined


def check_concept_map(concept_map: pa.Table) -> None:
    """Raise when the map is ambiguous or points at codes that fail their structural check."""
    missing = [c for c in MAP_COLUMNS if c not in concept_map.column_names]
    if missing:
        raise ValueError(f"the concept map lacks column(s) {', '.join(missing)}")
    targets: dict[tuple[str, str, str], str] = {}
    problems: list[str] = []
    for row in concept_map.select(list(MAP_COLUMNS)).to_pylist():
        where = f"{row['source_system']}|{row['source_code']} → {row['target_system']}"
        key = (row["source_system"], row["source_code"], row["target_system"])
        if key in targets and targets[key] != row["target_code"]:
            problems.append(f"{where} maps to both {targets[key]} and {row['target_code']}")
        targets[key] = row["target_code"]
        problem = code_problem(row["target_system"], row["target_code"])
        if problem:
            problems.append(f"{where}: target {problem}")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        )
        raise ValueError(f"the concept map is not usable: {shown}")


def load_concept_maps(lake: Lake, csv_dir: Path = SHIPPED_MAPS) -> int:
    """Load a folder of concept-map CSVs into ``reference.concept_maps``; returns its Delta version.

    Each load that changes the maps is a new Delta version (the previous maps stay readable by
    time travel); loading the same maps again writes nothing and returns the current version.
    """
    maps = read_concept_maps(csv_dir)
    if lake.exists(CONCEPT_MAPS.name):
        current = lake.read(CONCEPT_MAPS.name)
        if _sorted(current) == _sorted(maps):
            version = lake.version(CONCEPT_MAPS.name)
            assert version is not None
            return version
    return lake.write(CONCEPT_MAPS.name, maps, mode="overwrite", spec=CONCEPT_MAPS)


def concept_maps(
    lake: Lake, *, version: int | None = None, default_dir: Path = SHIPPED_MAPS
) -> tuple[pa.Table, int]:
    """The concept maps a run uses and their Delta version (``version`` pins one).

    A lake without ``reference.concept_maps`` gets the shipped maps loaded first; a lake that has
    the table keeps the maps the hospital loaded (a run never overwrites them).
    """
    if not lake.exists(CONCEPT_MAPS.name):
        load_concept_maps(lake, default_dir)
    current = lake.version(CONCEPT_MAPS.name)
    assert current is not None
    pinned = current if version is None else version
    maps = lake.read(CONCEPT_MAPS.name, version=pinned).select(CONCEPT_MAPS.schema.names)
    return maps.cast(CONCEPT_MAPS.schema), pinned  # delta-rs may read strings as string_view


def _sorted(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.select(list(CONCEPT_MAPS.schema.names)).to_pylist()
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


# ---------------------------------------------------------------------------------------------
# structural checks


_LOINC = re.compile(r"^(\d{1,5})-(\d)$")
_SNOMED = re.compile(r"^[1-9]\d{5,17}$")
_RXCUI = re.compile(r"^[1-9]\d{0,7}$")

# Verhoeff's dihedral-group tables (multiplication, permutation)
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def loinc_check_digit(base: str) -> int:
    """The LOINC check digit of the digits before the dash (LOINC's mod-10 algorithm, as Luhn)."""
    total = 0
    for position, char in enumerate(reversed(base)):
        digit = int(char)
        if position % 2 == 0:  # the rightmost digit and every second one to its left are doubled
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return (10 - total % 10) % 10


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the ones before it."""
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _D[check][_P[position % 8][int(char)]]
    return check == 0


def loinc_problem(code: str) -> str | None:
    """Why the code is not a well-formed LOINC code, or None."""
    match = _LOINC.match(code)
    if not match:
        return f"LOINC code {code!r} is not of the form NNNNN-C"
    expected = loinc_check_digit(match.group(1))
    if int(match.group(2)) != expected:
        return f"LOINC code {code!r} fails its check digit (expected {match.group(1)}-{expected})"
    return None


def snomed_problem(code: str) -> str | None:
    """Why the code is not a well-formed SNOMED CT concept id, or None."""
    if not _SNOMED.match(code):
        return f"SNOMED CT code {code!r} is not an id of 6 to 18 digits"
    if not verhoeff_valid(code):
        return f"SNOMED CT code {code!r} fails its Verhoeff check digit"
    if code[-3] not in "01" or code[-2] != "0":  # partition: [0 core | 1 extension][0 concept]
        return f"SNOMED CT code {code!r} is not a concept id (partition {code[-3:-1]})"
    return None


def icd10cm_problem(code: str) -> str | None:
    """Why the code is not an ICD-10-CM diagnosis code (dotted or undotted), or None."""
    icd = _icd10cm()
    if not icd.is_valid_item(code):
        return f"ICD-10-CM code {code!r} is not in the ICD-10-CM code list"
    if not (icd.is_category(code) or icd.is_subcategory(code) or icd.is_extended_subcategory(code)):
        return f"ICD-10-CM code {code!r} names a chapter or block, not a diagnosis"
    return None


def rxnorm_problem(code: str) -> str | None:
    """Why the code is not an RxNorm concept id (a number), or None."""
    if not _RXCUI.match(code):
        return f"RxNorm code {code!r} is not a numeric RxCUI"
    return None


_CHECKS = {
    LOINC: loinc_problem,
    SNOMED: snomed_problem,
    ICD10CM: icd10cm_problem,
    RXNORM: rxnorm_problem,
}


def code_problem(system: str, code: str) -> str | None:
    """Why a code of a standard system fails its structural check, or None (other systems: None)."""
    check = _CHECKS.get(system)
    return check(code) if check else None


def is_valid_loinc(code: str) -> bool:
    return loinc_problem(code) is None


def is_valid_snomed(code: str) -> bool:
    return snomed_problem(code) is None


def is_valid_icd10cm(code: str) -> bool:
    return icd10cm_problem(code) is None


def is_valid_rxnorm(code: str) -> bool:
    return rxnorm_problem(code) is None


@cache
def _icd10cm() -> Any:
    """The ICD-10-CM code list (imported on first use: loading it takes about a second)."""
    import simple_icd_10_cm

    return simple_icd_10_cm


# ---------------------------------------------------------------------------------------------
# the mapping steps


@dataclass(frozen=True)
class _Outcome:
    """What happens to every row of one distinct code combination."""

    status: str  # standard | mapped | unmapped | invalid
    problem: str | None = None  # the reason, for unmapped/invalid
    mapped_from: str | None = None
    #: column → new value for the row (e.g. code → the LOINC code); only for mapped rows
    sets: tuple[tuple[str, str | None], ...] = ()


class _Maps:
    """A concept map as lookups: (source system, source code) → {target system: (code, display)}."""

    def __init__(self, concept_map: pa.Table) -> None:
        check_concept_map(concept_map)
        self.targets: dict[tuple[str, str], dict[str, tuple[str, str | None]]] = {}
        for row in concept_map.select(list(MAP_COLUMNS)).to_pylist():
            entry = self.targets.setdefault((row["source_system"], row["source_code"]), {})
            entry[row["target_system"]] = (row["target_code"], row["target_display"])

    def lookup(self, system: str | None, code: str | None) -> dict[str, tuple[str, str | None]]:
        if system is None or code is None:
            return {}
        return self.targets.get((system, code), {})


def _source(system: str | None, code: str | None) -> str:
    if system is None and code is None:
        return "no code"
    return f"code {code!r} of system {system or '(none)'}"


def map_observation_codes(
    obs: pa.Table, *, concept_map: pa.Table, on_unmapped: OnUnmapped = "quarantine"
) -> Split:
    """Observation codes as LOINC: valid LOINC kept, local codes mapped, the rest refused or kept."""
    maps = _Maps(concept_map)

    def decide(system: str | None, code: str | None) -> _Outcome:
        target = maps.lookup(system, code).get(LOINC)
        if target is not None:
            display = (("code_display", target[1]),) if target[1] is not None else ()
            return _Outcome(
                MAPPED,
                mapped_from=f"{system}|{code}",
                sets=(("code_system", LOINC), ("code", target[0]), *display),
            )
        if system == LOINC and code is not None:
            problem = loinc_problem(code)
            return _Outcome(INVALID, problem) if problem else _Outcome(STANDARD)
        return _Outcome(
            UNMAPPED, f"{_source(system, code)} has no LOINC mapping in the concept map"
        )

    return _apply(
        obs, ("code_system", "code"), decide, table_name=OBSERVATIONS, on_unmapped=on_unmapped
    )


def map_condition_codes(
    conditions: pa.Table, *, concept_map: pa.Table, on_unmapped: OnUnmapped = "quarantine"
) -> Split:
    """Diagnoses with ICD-10-CM and SNOMED CT codes: the codes sent are checked, missing ones mapped.

    'standard' when the source sent a valid ICD-10-CM or SNOMED CT code (a missing one of the
    two is still filled from the map when it has it), 'mapped' when both came from the map.
    """
    maps = _Maps(concept_map)

    def decide(
        system: str | None, code: str | None, icd: str | None, snomed: str | None
    ) -> _Outcome:
        sent = {ICD10CM: icd, SNOMED: snomed}
        problems = [p for s, c in sent.items() if c is not None and (p := code_problem(s, c))]
        if problems:
            return _Outcome(INVALID, "; ".join(problems))
        targets = maps.lookup(system, code)
        column = {ICD10CM: "icd10cm_code", SNOMED: "snomed_code"}
        sets = tuple(
            (column[s], targets[s][0])
            for s in (ICD10CM, SNOMED)
            if sent[s] is None and s in targets
        )
        mapped_from = f"{system}|{code}" if sets else None
        if icd is not None or snomed is not None:
            return _Outcome(STANDARD, mapped_from=mapped_from, sets=sets)
        if sets:
            return _Outcome(MAPPED, mapped_from=mapped_from, sets=sets)
        return _Outcome(
            UNMAPPED,
            f"{_source(system, code)} has no ICD-10-CM or SNOMED CT mapping in the concept map",
        )

    columns = ("code_system", "code", "icd10cm_code", "snomed_code")
    return _apply(conditions, columns, decide, table_name=CONDITIONS, on_unmapped=on_unmapped)


def map_medication_codes(
    meds: pa.Table, *, concept_map: pa.Table, on_unmapped: OnUnmapped = "quarantine"
) -> Split:
    """Medication orders with an RxNorm code: the one sent is checked, a local drug code mapped."""
    maps = _Maps(concept_map)

    def decide(system: str | None, code: str | None, rxnorm: str | None) -> _Outcome:
        if rxnorm is not None:
            problem = rxnorm_problem(rxnorm)
            return _Outcome(INVALID, problem) if problem else _Outcome(STANDARD)
        target = maps.lookup(system, code).get(RXNORM)
        if target is not None:
            return _Outcome(
                MAPPED, mapped_from=f"{system}|{code}", sets=(("rxnorm_code", target[0]),)
            )
        return _Outcome(
            UNMAPPED, f"{_source(system, code)} has no RxNorm mapping in the concept map"
        )

    columns = ("code_system", "code", "rxnorm_code")
    return _apply(meds, columns, decide, table_name=MEDICATIONS, on_unmapped=on_unmapped)


def _apply(
    rows: pa.Table,
    columns: tuple[str, ...],
    decide: Callable[..., _Outcome],
    *,
    table_name: str,
    on_unmapped: OnUnmapped,
) -> Split:
    """Decide once per distinct code combination, then split and rewrite the rows."""
    if on_unmapped not in ("quarantine", "keep"):
        raise ValueError(f"on_unmapped must be 'quarantine' or 'keep', not {on_unmapped!r}")
    rows = with_fields(rows, TERMINOLOGY_FIELDS)
    combos, index = distinct(rows, columns)
    outcomes: list[_Outcome] = [decide(*combo) for combo in combos]
    status = pa.array([o.status for o in outcomes], pa.string()).take(index)
    rows = replace(rows, "mapping_status", status)
    rows = replace(
        rows, "_mapped_from", pa.array([o.mapped_from for o in outcomes], pa.string()).take(index)
    )
    for column in sorted({c for o in outcomes for c, _ in o.sets}):
        new = [dict(o.sets).get(column) for o in outcomes]
        has = pa.array([column in dict(o.sets) for o in outcomes], pa.bool_()).take(index)
        rows = replace(
            rows,
            column,
            pc.if_else(has, pa.array(new, pa.string()).take(index), rows.column(column)),
        )

    if on_unmapped == "keep":
        return Split(rows, QUARANTINE_SCHEMA.empty_table())
    problem = pa.array([o.problem for o in outcomes], pa.string()).take(index)
    refused: list[pa.Table] = []
    for state, rule in ((INVALID, RULE_INVALID), (UNMAPPED, RULE_UNMAPPED)):
        mask = pc.equal(status, state)
        bad = rows.filter(mask)
        reasons = reasons_for(bad, problem.filter(mask), table_name=table_name)
        refused.append(quarantine(bad, rule_id=rule, reasons=reasons, table_name=table_name))
    good = rows.filter(pc.is_in(status, pa.array([STANDARD, MAPPED])))
    return Split(good, pa.concat_tables(refused))


def mapping_counts(rows: pa.Table) -> Mapping[str, int]:
    """Rows per ``mapping_status``: how many codes were standard, mapped, kept unmapped or invalid."""
    if rows.num_rows == 0 or "mapping_status" not in rows.column_names:
        return {}
    return {
        c["values"]: c["counts"] for c in pc.value_counts(rows.column("mapping_status")).to_pylist()
    }
