"""The sample hospital's CSV extracts: a lab system's results and a billing system's diagnoses.

Every second person (``index % 2 == 0``, see :func:`in_csv`) is in the extracts, with the MRN of
their primary record, so their rows join the same person_key as their FHIR and HL7 v2 records.
Layout under ``out/csv/`` (mapping files next to the extracts, as medlake reads them):

- ``labs.mapping.yaml`` + ``labs/lab_results.csv``: UTF-8, ``;``-delimited, one row per lab
  result: result id, MRN, patient name, test code with its coding system (``LN`` for LOINC, ``L``
  for the lab's local codes), value, unit, collection time as ``%d/%m/%Y %H:%M`` in the
  hospital's zone, status. Some values are in other units than the canonical one (glucose and
  cholesterol in mmol/L, creatinine in µmol/L): each is listed in the truth file's ``csv_unit_mix``.
  Local codes are listed in ``csv_local_coded``.
- ``diagnoses.mapping.yaml`` + ``diagnoses/diagnoses.csv``: Latin-1 (declared in its mapping),
  ``,``-delimited with quoted descriptions, ICD-10-CM codes, diagnosis dates as ``%d.%m.%Y``, and
  patient names with non-ASCII letters (a name Latin-1 cannot spell is written with ``?``, as
  such exports do).

Once the hospital has :data:`~medlake.sample.people.MIN_POPULATION_FOR_MESS` people, bad rows are
planted in the lab extract (see :data:`DEFECT_RULES`), plus a resent lab file written with tabs
(its header does not split on ``;``) and an extract no mapping file matches; each is recorded
in the truth file's ``malformed`` list with its 1-based line (0 for a whole file) and rule.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from medlake.sample.people import HOSPITAL_TZ, Hospital, Measurement, Person, plants_every_kind
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import LOCAL_LAB, MRN_SYSTEM

CSV = "csv"
HOSPITAL_OFFSET = "-05:00"  # people.HOSPITAL_TZ, as the mappings write it
LABS_FILE = "labs/lab_results.csv"
LABS_RESENT_FILE = "labs/lab_results_resent.csv"
DIAGNOSES_FILE = "diagnoses/diagnoses.csv"
UNMAPPED_FILE = "exports/pharmacy_stock.csv"
LAB_HEADER = (
    "ResultID",
    "MRN",
    "PatientName",
    "TestCode",
    "CodeSystem",
    "TestName",
    "Result",
    "Units",
    "Collected",
    "Status",
)
DIAGNOSIS_HEADER = (
    "DiagnosisID",
    "MRN",
    "PatientName",
    "ICD10",
    "Description",
    "DiagnosedOn",
    "Status",
)
#: lab kind → (unit, factor from the canonical unit, decimals) the lab system sometimes reports in
OTHER_UNITS: dict[str, tuple[str, float, int]] = {
    "glucose": ("mmol/L", 1 / 18.016, 2),
    "cholesterol": ("mmol/L", 1 / 38.665, 2),
    "creatinine": ("umol/L", 88.42, 0),
}
OTHER_UNIT_SHARE = 0.3
LOCAL_CODE_SHARE = 0.2
#: planted defects in the lab extract, one row each: rule and the reason written to the truth file
DEFECT_RULES: dict[str, tuple[str, str]] = {
    "ragged": ("parse.csv_ragged_row", "a result comment holds an unquoted ';'"),
    "bad_date": ("parse.csv_bad_date", "Collected names 31 February"),
    "bad_number": ("parse.csv_bad_number", "Result is 'pending'"),
    "bad_encoding": (
        "parse.csv_bad_encoding",
        "the patient name is Latin-1 bytes in the UTF-8 extract",
    ),
    "unknown_system": ("parse.csv_unknown_code_system", "CodeSystem is 'XYZ'"),
    "missing_mrn": ("parse.csv_missing_field", "MRN is empty"),
}

LABS_MAPPING = f"""\
# The lab system's nightly results extract (one row per result).
name: labs
files: "labs/*.csv"
target: observations
encoding: utf-8
delimiter: ";"
header_row: 1
timezone: "{HOSPITAL_OFFSET}"
patient: {{column: MRN, authority: "{MRN_SYSTEM}"}}
record_id: [ResultID]
fields:
  code:
    column: TestCode
    system_column: CodeSystem
    systems: {{LN: LOINC, L: "{LOCAL_LAB}"}}
  code_display: {{column: TestName}}
  value_num: {{column: Result}}
  value_unit: {{column: Units}}
  effective_at: {{column: Collected, format: "%d/%m/%Y %H:%M", required: true}}
  status: {{column: Status, values: {{F: final, P: preliminary, C: corrected}}}}
  category: {{value: laboratory}}
"""

DIAGNOSES_MAPPING = f"""\
# The billing system's diagnosis extract (ICD-10-CM), written in Latin-1.
name: diagnoses
files: "diagnoses/*.csv"
target: conditions
encoding: latin-1
delimiter: ","
quote_char: '"'
header_row: 1
patient: {{column: MRN, authority: "{MRN_SYSTEM}"}}
record_id: [DiagnosisID]
fields:
  code: {{column: ICD10, system: ICD10CM, required: true}}
  code_display: {{column: Description}}
  onset_at: {{column: DiagnosedOn, format: "%d.%m.%Y"}}
  clinical_status: {{column: Status, values: {{A: active, R: resolved}}}}
"""


def in_csv(index: int) -> bool:
    """Whether person `index` is in the lab and billing extracts."""
    return index % 2 == 0


def write_csv(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write the CSV extracts and their mapping files under `out/csv/`; record them in `truth`."""
    root = out / CSV
    for folder in ("labs", "diagnoses"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "labs.mapping.yaml").write_text(LABS_MAPPING, encoding="utf-8")
    (root / "diagnoses.mapping.yaml").write_text(DIAGNOSES_MAPPING, encoding="utf-8")
    plant = plants_every_kind(hospital.patients)
    people = [p for p in hospital.people() if in_csv(p.index)]
    for person in people:
        truth.registration(person.chart.registration)
    labs = list(_lab_lines(people, hospital.rng(CSV, "labs"), truth))
    if plant:
        labs = _plant(labs, hospital.rng(CSV, "defects"), truth)
    _write(root / LABS_FILE, [_line(LAB_HEADER, ";"), *labs], "utf-8")
    truth.file_read(f"{CSV}/labs", len(labs))
    diagnoses = list(_diagnosis_lines(people, truth))
    _write(root / DIAGNOSES_FILE, [_line(DIAGNOSIS_HEADER, ","), *diagnoses], "latin-1")
    truth.file_read(f"{CSV}/diagnoses", len(diagnoses))
    if plant:
        _write_file_defects(root, labs, truth)


def _lab_lines(people: list[Person], rng: random.Random, truth: Truth) -> Iterator[bytes]:
    """One line per lab result of the people, in UTF-8; unit mix and local codes recorded."""
    number = 2  # line 1 is the header
    for person in people:
        reg = person.chart.registration
        for m in person.chart.measurements:
            if m.kind.category != "laboratory":
                continue
            where = Where(f"{CSV}/{LABS_FILE}", number)
            code, system = m.kind.loinc, "LN"
            if m.kind.local_code and (m.local_code_only or rng.random() < LOCAL_CODE_SHARE):
                code, system = m.kind.local_code, "L"
                truth.add(
                    "csv_local_coded", where, result_id=m.id, local_code=code, loinc=m.kind.loinc
                )
            value, unit = _reported(m, rng, where, truth)
            fields = (
                m.id,
                reg.mrn,
                reg.display_name,
                code,
                system,
                m.kind.local_display if system == "L" else m.kind.display,
                value,
                unit,
                f"{m.taken_at.astimezone(HOSPITAL_TZ):%d/%m/%Y %H:%M}",
                "F",
            )
            yield _line(fields, ";").encode("utf-8")
            number += 1


def _reported(m: Measurement, rng: random.Random, where: Where, truth: Truth) -> tuple[str, str]:
    """The value and unit the lab system writes: the recorded ones (a unit mix when the recorded
    unit is not canonical), or another unit for a share of the canonical ones."""
    if m.value is None:
        return "", m.unit
    other = OTHER_UNITS.get(m.kind.key)
    if m.unit != m.kind.unit:
        value, unit, decimals = m.value, m.unit, m.kind.alt_unit.decimals if m.kind.alt_unit else 2
    elif other is None or rng.random() >= OTHER_UNIT_SHARE:
        return f"{m.value:.{m.kind.decimals}f}", m.unit
    else:
        unit, factor, decimals = other
        value = round(m.value * factor, decimals)
    truth.add(
        "csv_unit_mix",
        where,
        result_id=m.id,
        loinc=m.kind.loinc,
        value=value,
        unit=unit,
        canonical_value=m.canonical_value,
        canonical_unit=m.kind.unit,
    )
    return f"{value:.{decimals}f}", unit


def _diagnosis_lines(people: list[Person], truth: Truth) -> Iterator[bytes]:
    """One Latin-1 line per diagnosis; names Latin-1 cannot spell are written with '?'."""
    for person in people:
        reg = person.chart.registration
        written = reg.display_name.encode("latin-1", errors="replace")
        truth.phi["names"].update(written.decode("latin-1").split(" "))
        for d in person.chart.diagnoses:
            fields = (
                d.id,
                reg.mrn,
                written.decode("latin-1"),
                d.problem.icd10,
                d.problem.icd10_display,
                f"{d.onset:%d.%m.%Y}",
                "R" if d.abated else "A",
            )
            yield _line(fields, ",", quote_all=True).encode("latin-1", errors="replace")


def _plant(lines: list[bytes], rng: random.Random, truth: Truth) -> list[bytes]:
    """Spoil one line per defect kind (lines 2, 4, 6, …), in place; each recorded in `truth`."""
    kinds = list(DEFECT_RULES)
    if len(lines) < 2 * len(kinds):
        return lines
    for position, kind in enumerate(kinds):
        index = 1 + 2 * position
        fields = lines[index].decode("utf-8").split(";")
        if kind == "ragged":
            fields[-1] = "F;see comment"
        elif kind == "bad_date":
            fields[8] = "31/02/2025 09:30"
        elif kind == "bad_number":
            fields[6] = "pending"
        elif kind == "unknown_system":
            fields[4] = "XYZ"
        elif kind == "missing_mrn":
            fields[1] = ""
        if kind == "bad_encoding":
            fields[2] = rng.choice(("Zoë Müller", "Søren Østergaard", "José García"))
            truth.phi["names"].update(fields[2].split(" "))
            lines[index] = ";".join(fields).encode("latin-1")
        else:
            lines[index] = ";".join(fields).encode("utf-8")
        rule, reason = DEFECT_RULES[kind]
        truth.malformed(Where(f"{CSV}/{LABS_FILE}", index + 2), rule, reason)
    return lines


def _write_file_defects(root: Path, labs: list[bytes], truth: Truth) -> None:
    """A resent lab file written with tabs, and an extract no mapping matches: each quarantined whole."""
    resent = [_line(LAB_HEADER, "\t").encode(), *(line.replace(b";", b"\t") for line in labs[-3:])]
    _write(root / LABS_RESENT_FILE, resent, None)
    truth.file_read(f"{CSV}/labs", 1)
    truth.malformed(
        Where(f"{CSV}/{LABS_RESENT_FILE}", 0),
        "parse.csv_wrong_delimiter",
        "the resent file is tab-delimited; the labs mapping declares ';'",
    )
    (root / "exports").mkdir(exist_ok=True)
    _write(root / UNMAPPED_FILE, [b"item,quantity", b"gauze,120", b"saline 0.9%,48"], None)
    truth.file_read(f"{CSV}/exports", 1)
    truth.malformed(
        Where(f"{CSV}/{UNMAPPED_FILE}", 0),
        "ingest.no_mapping",
        "no mapping file matches the extract",
    )


def _line(fields: Sequence[object], delimiter: str, *, quote_all: bool = False) -> str:
    """One CSV line; fields holding the delimiter or a quote are quoted (all of them with quote_all)."""
    out = []
    for value in fields:
        text = str(value)
        if quote_all or delimiter in text or '"' in text:
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return delimiter.join(out)


def _write(path: Path, lines: Sequence[bytes | str], encoding: str | None) -> None:
    data = [line if isinstance(line, bytes) else line.encode(encoding or "utf-8") for line in lines]
    path.write_bytes(b"\r\n".join(data) + b"\r\n")
