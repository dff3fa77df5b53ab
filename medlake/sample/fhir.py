"""The sample hospital as FHIR R4: transaction Bundles and bulk-data ndjson, defects included.

Layout under `out/fhir/`:

- `bundles/<uuid>.json`: one transaction Bundle per patient record for the even-indexed
  people (entries POST, fullUrl and references `urn:uuid:<id>`), plus the planted whole-file
  defects: one empty file, one truncated copy of a bundle, one JSON array of resources.
- `bulk/<Type>.000.ndjson`: one resource per line for the odd-indexed people (references
  `Patient/<id>`, `Encounter/<id>`), with planted bad lines.

A person registered twice has the second record on the other side. Every resource validates
against `fhir.resources.R4B` except those recorded in the truth file's `malformed` list.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

from medlake.sample.people import (
    Chart,
    Diagnosis,
    Hospital,
    Measurement,
    Note,
    Person,
    Prescription,
    Registration,
    Visit,
    new_id,
    plan_mess,
    plants_every_kind,
)
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import (
    BP_COMPONENTS,
    ICD10CM,
    LOCAL_LAB,
    LOINC,
    MARITAL_DISPLAY,
    MRN_SYSTEM,
    RXNORM,
    SITE_SYSTEM,
    SNOMED,
    SSN_SYSTEM,
    UCUM,
)

Resource = dict[str, Any]
Side = Literal["bundles", "bulk"]
Ref = Callable[[str, str], str]  # (resource type, id) -> reference string
Fact = Registration | Visit | Measurement | Diagnosis | Prescription

BUNDLES = "fhir/bundles"
BULK = "fhir/bulk"
BULK_TYPES = ("Patient", "Encounter", "Observation", "Condition", "MedicationRequest")

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
XHTML = "http://www.w3.org/1999/xhtml"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
CLASS_DISPLAY = {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency"}
CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}

# Defects in single records, on the share of eligible people given (>= 1 each once N >= 20).
BULK_LINE_DEFECTS: dict[str, float] = {  # odd-indexed (bulk) people only
    "bad_json": 0.01,
    "array_line": 0.005,
    "no_resource_type": 0.005,
    "unknown_resource_type": 0.005,
}
RECORD_DEFECTS: dict[str, float] = {  # anyone: an extra invalid Observation in their records
    "observation_no_status": 0.005,
    "observation_no_code": 0.005,
    "observation_bad_value": 0.005,
}


def write_fhir(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write every person's records under `out/fhir/` and record what was planted in `truth`."""
    bundles_dir, bulk_dir = out / BUNDLES, out / BULK
    bundles_dir.mkdir(parents=True, exist_ok=True)
    bulk_dir.mkdir(parents=True, exist_ok=True)
    defects = _plan_defects(hospital)
    first_bundle: str | None = None
    with BulkWriter(bulk_dir, truth) as bulk:
        sink = _Sink(bundles_dir, bulk, truth)
        for person in hospital.people():
            rng = hospital.rng("fhir", person.index)
            text = _write_person(sink, person, defects.get(person.index, frozenset()), rng)
            first_bundle = first_bundle or text
    if first_bundle is not None and plants_every_kind(hospital.patients):
        _write_file_defects(bundles_dir, first_bundle, hospital.rng("fhir", "files"), truth)


def _plan_defects(hospital: Hospital) -> dict[int, frozenset[str]]:
    """Which people get which record-level defects."""
    rng = hospital.rng("fhir", "plan")
    everyone = list(range(hospital.patients))
    bulk_people = [i for i in everyone if side_of(i) == "bulk"]
    every_kind = plants_every_kind(hospital.patients)
    plan = plan_mess(bulk_people, BULK_LINE_DEFECTS, rng, at_least_one=every_kind)
    for index, kinds in plan_mess(everyone, RECORD_DEFECTS, rng, at_least_one=every_kind).items():
        plan[index] = plan.get(index, frozenset()) | kinds
    return plan


def side_of(index: int) -> Side:
    """Even-indexed people arrive as bundles, odd-indexed as bulk ndjson."""
    return "bundles" if index % 2 == 0 else "bulk"


def _other(side: Side) -> Side:
    """Where a second registration of the same person arrives."""
    return "bulk" if side == "bundles" else "bundles"


@dataclass(frozen=True)
class Defect:
    """A planted bad record: the raw line or resource, where it goes and the rule it breaks."""

    resource_type: str  # bulk file it goes to, or bundle entry type
    content: Resource | str  # a resource (possibly invalid) or raw text for a line
    rule: str
    reason: str
    parses_as_resource: bool  # counts in truth "resources" (valid JSON with a FHIR type)


class BulkWriter:
    """Append-only ndjson files, one per resource type, opened on first use."""

    def __init__(self, folder: Path, truth: Truth) -> None:
        self.folder = folder
        self.truth = truth
        self.lines: dict[str, int] = {}
        self._files: dict[str, IO[str]] = {}
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        for resource_type in BULK_TYPES:
            if resource_type in self.lines:
                self.truth.file_read(BULK, self.lines[resource_type])

    def path(self, resource_type: str) -> str:
        """The file of `resource_type`, relative to the landing folder."""
        return f"{BULK}/{resource_type}.000.ndjson"

    def write_line(self, resource_type: str, line: str) -> Where:
        """Append one line to the file of `resource_type`; where it landed."""
        if resource_type not in self._files:
            target = self.folder / f"{resource_type}.000.ndjson"
            handle = target.open("w", encoding="utf-8", newline="\n")
            self._files[resource_type] = self._stack.enter_context(handle)
            self.lines[resource_type] = 0
        self._files[resource_type].write(line + "\n")
        self.lines[resource_type] += 1
        return Where(self.path(resource_type), self.lines[resource_type])

    def write(self, resource: Resource) -> Where:
        """Append one resource to its type's file and count it."""
        resource_type = resource["resourceType"]
        self.truth.resource(BULK, resource_type)
        return self.write_line(resource_type, _compact(resource))


@dataclass
class _Sink:
    """Where a person's records go: the bundles folder or the bulk files."""

    bundles_dir: Path
    bulk: BulkWriter
    truth: Truth


def _write_person(
    sink: _Sink, person: Person, defects: frozenset[str], rng: random.Random
) -> str | None:
    """Write a person's chart (and duplicate chart); the primary bundle text if it is one."""
    side = side_of(person.index)
    ref = bundle_reference if side == "bundles" else bulk_reference
    planted = _defects(person.chart, defects, ref, rng)
    primary, text = _write_chart(sink, person.chart, side, planted, rng)
    if person.duplicate is not None:
        twin, _ = _write_chart(sink, person.duplicate, _other(side), [], rng)
        sink.truth.duplicate(
            person.index,
            person.duplicate.registration.variations,
            [
                {**primary.as_dict(), "patient_id": person.chart.registration.id},
                {**twin.as_dict(), "patient_id": person.duplicate.registration.id},
            ],
        )
    return text


def _write_chart(
    sink: _Sink, chart: Chart, side: Side, defects: list[Defect], rng: random.Random
) -> tuple[Where, str | None]:
    """Write one chart on one side; where its Patient landed, and the bundle text if any."""
    sink.truth.registration(chart.registration)
    if side == "bulk":
        return _write_bulk(sink, chart, defects), None
    return _write_bundle(sink, chart, defects, new_id(rng))


def _write_bulk(sink: _Sink, chart: Chart, defects: list[Defect]) -> Where:
    """Append a chart's resources, then its defects, to the bulk files."""
    patient_at = None
    for resource, fact in chart_resources(chart, bulk_reference):
        where = sink.bulk.write(resource)
        record_facts(sink.truth, fact, resource, where)
        patient_at = patient_at or where
    for defect in defects:
        content = defect.content if isinstance(defect.content, str) else _compact(defect.content)
        where = sink.bulk.write_line(defect.resource_type, content)
        sink.truth.malformed(where, defect.rule, defect.reason)
        if defect.parses_as_resource:
            sink.truth.resource(BULK, defect.resource_type)
    assert patient_at is not None
    return patient_at


def _write_bundle(
    sink: _Sink, chart: Chart, defects: list[Defect], bundle_id: str
) -> tuple[Where, str]:
    """Write a chart as one transaction Bundle file; where its Patient is, and the file text."""
    file = f"{BUNDLES}/{bundle_id}.json"
    entries: list[Resource] = []
    for resource, fact in chart_resources(chart, bundle_reference):
        entries.append(_entry(resource))
        record_facts(sink.truth, fact, resource, Where(file, len(entries)))
        sink.truth.resource(BUNDLES, resource["resourceType"])
    for defect in defects:
        assert isinstance(defect.content, dict), "only whole resources are planted in bundles"
        entries.append(_entry(defect.content, defect.resource_type))
        sink.truth.malformed(Where(file, len(entries)), defect.rule, defect.reason)
        sink.truth.resource(BUNDLES, defect.resource_type)
    text = _bundle_text(bundle_id, entries)
    (sink.bundles_dir / f"{bundle_id}.json").write_text(text, encoding="utf-8")
    sink.truth.file_read(BUNDLES, len(entries))
    return Where(file, 1), text


def _bundle_text(bundle_id: str, entries: list[Resource]) -> str:
    """A transaction Bundle as JSON text, one entry per line (entry n on line n + 1)."""
    head = _compact({"resourceType": "Bundle", "id": bundle_id, "type": "transaction"})
    body = ",\n".join(_compact(entry) for entry in entries)
    return f'{head[:-1]},"entry":[\n{body}\n]}}\n'


def _entry(resource: Resource, resource_type: str | None = None) -> Resource:
    """A transaction entry creating `resource`."""
    return {
        "fullUrl": f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {"method": "POST", "url": resource_type or resource["resourceType"]},
    }


def _compact(resource: Resource | list[Any]) -> str:
    """One ndjson line."""
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


def bundle_reference(resource_type: str, resource_id: str) -> str:
    """Inside a transaction bundle, resources refer to each other by fullUrl."""
    return f"urn:uuid:{resource_id}"


def bulk_reference(resource_type: str, resource_id: str) -> str:
    """In bulk ndjson, resources refer to each other by type and id."""
    return f"{resource_type}/{resource_id}"


# ---------------------------------------------------------------- resources


def chart_resources(chart: Chart, ref: Ref) -> Iterator[tuple[Resource, Fact]]:
    """A chart's resources, Patient first, each with the fact it renders."""
    patient_ref = ref("Patient", chart.registration.id)
    yield patient(chart.registration), chart.registration
    for visit in chart.visits:
        yield encounter(visit, patient_ref), visit
    for measurement in chart.measurements:
        yield (
            observation(measurement, patient_ref, ref("Encounter", measurement.visit_id)),
            measurement,
        )
    for diagnosis in chart.diagnoses:
        yield condition(diagnosis, patient_ref, ref("Encounter", diagnosis.visit_id)), diagnosis
    for order in chart.prescriptions:
        reason = ref("Condition", order.reason_id) if order.reason_id else None
        yield (
            medication_request(order, patient_ref, ref("Encounter", order.visit_id), reason),
            order,
        )


def patient(registration: Registration) -> Resource:
    """A Patient: identifiers (MRN, SSN), name, phone, address and demographics."""
    mr = {"coding": [{"system": IDENTIFIER_TYPE, "code": "MR", "display": "Medical record number"}]}
    identifiers = [{"type": mr, "system": MRN_SYSTEM, "value": registration.mrn}]
    if registration.ssn:
        identifiers.append({"system": SSN_SYSTEM, "value": registration.ssn})
    resource: Resource = {
        "resourceType": "Patient",
        "id": registration.id,
        "identifier": identifiers,
        "name": [
            {"use": "official", "family": registration.family, "given": list(registration.given)}
        ],
        "telecom": [{"system": "phone", "value": registration.phone, "use": "home"}],
    }
    if registration.gender:
        resource["gender"] = registration.gender
    resource["birthDate"] = registration.birth_date.isoformat()
    if registration.deceased_at:
        resource["deceasedDateTime"] = registration.deceased_at.isoformat()
    if registration.address:
        address = registration.address
        resource["address"] = [
            {
                "use": "home",
                "line": list(address.lines),
                "city": address.city,
                "state": address.state,
                "postalCode": address.postal_code,
                "country": "US",
            }
        ]
    display = MARITAL_DISPLAY[registration.marital]
    resource["maritalStatus"] = {
        "coding": [{"system": MARITAL, "code": registration.marital, "display": display}],
        "text": display,
    }
    return resource


def encounter(visit: Visit, patient_ref: str) -> Resource:
    """An Encounter at a site, with a narrative summary when one was written."""
    resource: Resource = {"resourceType": "Encounter", "id": visit.id}
    if visit.narrative:
        resource["text"] = {"status": "generated", "div": _xhtml(visit.narrative)}
    period = {"start": visit.start.isoformat()}
    if visit.end:
        period["end"] = visit.end.isoformat()
    resource.update(
        {
            "status": "finished",
            "class": {
                "system": ACT_CODE,
                "code": visit.visit_class,
                "display": CLASS_DISPLAY[visit.visit_class],
            },
            "subject": {"reference": patient_ref},
            "period": period,
            "serviceProvider": {
                "identifier": {"system": SITE_SYSTEM, "value": visit.site.id},
                "display": visit.site.name,
            },
        }
    )
    return resource


def _xhtml(note: Note) -> str:
    """A note as FHIR narrative XHTML."""
    text = note.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<div xmlns="{XHTML}"><p>{text}</p></div>'


def observation(measurement: Measurement, patient_ref: str, encounter_ref: str) -> Resource:
    """An Observation: LOINC (or local) code, quantity in UCUM, or why no value was recorded."""
    kind = measurement.kind
    resource: Resource = {
        "resourceType": "Observation",
        "id": measurement.id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": kind.category,
                        "display": CATEGORY_DISPLAY[kind.category],
                    }
                ]
            }
        ],
        "code": _observation_code(measurement),
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
        "effectiveDateTime": measurement.taken_at.isoformat(),
    }
    if measurement.value is not None:
        resource["valueQuantity"] = _quantity(measurement.value, measurement)
    elif measurement.absent_reason:
        resource["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": measurement.absent_reason}]
        }
    if measurement.components:
        resource["component"] = [
            _component(loinc, value, measurement) for loinc, value in measurement.components
        ]
    if kind.category == "laboratory" and measurement.value is not None:
        resource.update(_lab_context(measurement))
    if measurement.note:
        resource["note"] = [{"text": measurement.note.text}]
    return resource


def _observation_code(measurement: Measurement) -> Resource:
    """LOINC, or only the hospital's own lab code when the result came from the local system."""
    kind = measurement.kind
    if measurement.local_code_only:
        return {
            "coding": [
                {"system": LOCAL_LAB, "code": kind.local_code, "display": kind.local_display}
            ],
            "text": kind.local_code,
        }
    return {
        "coding": [{"system": LOINC, "code": kind.loinc, "display": kind.display}],
        "text": kind.display,
    }


def _quantity(value: float, measurement: Measurement) -> Resource:
    """A UCUM quantity in the unit the measurement was recorded in."""
    return {
        "value": value,
        "unit": measurement.unit_display,
        "system": UCUM,
        "code": measurement.unit,
    }


def _component(loinc: str, value: float, measurement: Measurement) -> Resource:
    """One part of a panel, e.g. the systolic pressure of a blood pressure."""
    display = dict(BP_COMPONENTS)[loinc]
    return {
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
        "valueQuantity": _quantity(value, measurement),
    }


def _lab_context(measurement: Measurement) -> Resource:
    """Reference range and H/L/N flag, which most (not all) lab systems send."""
    if not _sometimes(measurement.id, 0.7):
        return {}
    kind, alt = measurement.kind, measurement.kind.alt_unit
    low, high = kind.normal
    if alt is not None and measurement.unit == alt.code:
        low, high = (round(v * alt.scale + alt.offset, alt.decimals) for v in (low, high))
    value = measurement.value
    assert value is not None
    flag = "H" if value > high else "L" if value < low else "N"
    flag_display = {"H": "High", "L": "Low", "N": "Normal"}[flag]
    reference: Resource = {}
    if low > 0:
        reference["low"] = _quantity(low, measurement)
    reference["high"] = _quantity(high, measurement)
    return {
        "interpretation": [
            {"coding": [{"system": INTERPRETATION, "code": flag, "display": flag_display}]}
        ],
        "referenceRange": [reference],
    }


def _sometimes(resource_id: str, share: float) -> bool:
    """A stable yes for about `share` of ids."""
    return int(resource_id[:4], 16) < share * 0x10000


def condition(diagnosis: Diagnosis, patient_ref: str, encounter_ref: str) -> Resource:
    """A Condition coded in ICD-10-CM and/or SNOMED CT."""
    problem = diagnosis.problem
    codings = []
    if diagnosis.coded_as in ("both", "icd10"):
        codings.append({"system": ICD10CM, "code": problem.icd10, "display": problem.icd10_display})
    if diagnosis.coded_as in ("both", "snomed"):
        codings.append(
            {"system": SNOMED, "code": problem.snomed, "display": problem.snomed_display}
        )
    status = "resolved" if diagnosis.abated else "active"
    resource: Resource = {
        "resourceType": "Condition",
        "id": diagnosis.id,
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": status}]},
        "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]},
        "category": [
            {
                "coding": [
                    {
                        "system": CONDITION_CATEGORY,
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": {"coding": codings, "text": problem.snomed_display},
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
        "onsetDateTime": diagnosis.onset.isoformat(),
    }
    if diagnosis.abated:
        resource["abatementDateTime"] = diagnosis.abated.isoformat()
    if diagnosis.note:
        resource["note"] = [{"text": diagnosis.note.text}]
    return resource


def medication_request(
    order: Prescription, patient_ref: str, encounter_ref: str, reason_ref: str | None
) -> Resource:
    """A MedicationRequest for an RxNorm clinical drug, with the prescriber's sig."""
    drug = order.drug
    resource: Resource = {
        "resourceType": "MedicationRequest",
        "id": order.id,
        "status": order.status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": drug.rxnorm, "display": drug.display}],
            "text": drug.display,
        },
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
        "authoredOn": order.authored_at.isoformat(),
    }
    if reason_ref:
        resource["reasonReference"] = [{"reference": reason_ref}]
    resource["dosageInstruction"] = [{"text": drug.sig}]
    return resource


# ---------------------------------------------------------------- truth


def record_facts(truth: Truth, fact: Fact, resource: Resource, where: Where) -> None:
    """Tell the truth file what was planted in one written resource."""
    resource_type, resource_id = resource["resourceType"], resource["id"]

    def missing(field: str) -> None:
        truth.add("missing_values", where, resource_type=resource_type, id=resource_id, field=field)

    def free_text(path: str, note: Note) -> None:
        truth.add(
            "free_text",
            where,
            resource_type=resource_type,
            id=resource_id,
            path=path,
            phi=list(note.phi),
        )

    if isinstance(fact, Registration):
        if fact.gender is None:
            missing("Patient.gender")
        if fact.address is None:
            missing("Patient.address")
    elif isinstance(fact, Visit):
        if fact.end is None:
            missing("Encounter.period.end")
        if fact.narrative:
            free_text("Encounter.text.div", fact.narrative)
    elif isinstance(fact, Measurement):
        _record_measurement(truth, fact, where)
        if fact.absent_reason:
            missing("Observation.value[x]")
        if fact.note:
            free_text("Observation.note.text", fact.note)
    elif isinstance(fact, Diagnosis) and fact.note:
        free_text("Condition.note.text", fact.note)


def _record_measurement(truth: Truth, measurement: Measurement, where: Where) -> None:
    """Impossible values, unit mix and local codes of one observation."""
    kind = measurement.kind
    ids = {"observation_id": measurement.id, "loinc": kind.loinc}
    if "impossible" in measurement.mess:
        truth.add("impossible_values", where, **ids, value=measurement.value, unit=measurement.unit)
    if measurement.unit != kind.unit:
        truth.add(
            "unit_mix",
            where,
            **ids,
            value=measurement.value,
            unit=measurement.unit,
            canonical_value=measurement.canonical_value,
            canonical_unit=kind.unit,
        )
    if measurement.local_code_only:
        truth.add(
            "local_coded",
            where,
            observation_id=measurement.id,
            local_code=kind.local_code,
            loinc=kind.loinc,
        )


# ---------------------------------------------------------------- defects


def _defects(chart: Chart, kinds: frozenset[str], ref: Ref, rng: random.Random) -> list[Defect]:
    """The bad records planted next to a chart, in a fixed order."""
    base = _clean_observation(chart, ref)
    planted: list[Defect] = []
    for kind in (*BULK_LINE_DEFECTS, *RECORD_DEFECTS):
        if kind in kinds:
            planted.append(_defect(kind, chart, base, ref, new_id(rng)))
    return planted


def _clean_observation(chart: Chart, ref: Ref) -> Resource:
    """The chart's first unremarkable quantity observation, the template of planted ones."""
    plain = [m for m in chart.measurements if not m.mess and m.value is not None]
    measurement = (plain or list(chart.measurements))[0]
    patient_ref = ref("Patient", chart.registration.id)
    return observation(measurement, patient_ref, ref("Encounter", measurement.visit_id))


def _defect(kind: str, chart: Chart, base: Resource, ref: Ref, new: str) -> Defect:
    """One planted bad record of `kind`, with a fresh resource id `new`."""
    obs = {**copy.deepcopy(base), "id": new}
    if kind == "bad_json":
        text = _compact(obs)
        return Defect(
            "Observation",
            text[: len(text) // 2],
            "parse.bad_json",
            "line is cut off mid-object",
            False,
        )
    if kind == "array_line":
        visit = {**encounter(chart.visits[0], ref("Patient", chart.registration.id)), "id": new}
        return Defect(
            "Encounter",
            _compact([visit]),
            "parse.not_a_resource",
            "line is a JSON array, not a resource",
            False,
        )
    if kind == "no_resource_type":
        del obs["resourceType"]
        return Defect(
            "Observation", obs, "parse.not_a_resource", "object has no resourceType", False
        )
    if kind == "unknown_resource_type":
        typo = {**patient(chart.registration), "id": new, "resourceType": "Patinet"}
        return Defect(
            "Patient",
            typo,
            "parse.unknown_resource_type",
            "resourceType 'Patinet' is not a FHIR R4 type",
            False,
        )
    if kind == "observation_no_status":
        del obs["status"]
        return _invalid(obs, "Observation.status missing")
    if kind == "observation_no_code":
        del obs["code"]
        return _invalid(obs, "Observation.code missing")
    if kind == "observation_bad_value":
        obs.pop("dataAbsentReason", None)
        obs["valueQuantity"] = {**obs.get("valueQuantity", {}), "value": "abc"}
        return _invalid(obs, "Observation.valueQuantity.value 'abc' is not a decimal")
    raise ValueError(f"unknown FHIR defect kind {kind!r}")


def _invalid(obs: Resource, reason: str) -> Defect:
    """An Observation that parses but breaks the FHIR R4 model."""
    return Defect("Observation", obs, "validate.fhir_r4", reason, True)


def _write_file_defects(folder: Path, bundle_text: str, rng: random.Random, truth: Truth) -> None:
    """Whole files that cannot be read: empty, truncated in transfer, and an array of resources."""
    bundle = json.loads(bundle_text)
    files: list[tuple[str, str, str]] = [
        ("", "parse.empty_file", "file is empty"),
        (bundle_text[: len(bundle_text) // 2], "parse.bad_json", "file is cut off mid-document"),
        (
            json.dumps([e["resource"] for e in bundle["entry"]], ensure_ascii=False, indent=2)
            + "\n",
            "parse.not_a_resource",
            "file is a JSON array, neither a Bundle nor a resource",
        ),
    ]
    for text, rule, reason in files:
        name = f"{new_id(rng)}.json"
        (folder / name).write_text(text, encoding="utf-8")
        truth.file_read(BUNDLES, 1)
        truth.malformed(Where(f"{BUNDLES}/{name}", 0), rule, reason)
