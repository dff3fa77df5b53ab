"""FHIR R4 bundles and bulk ndjson: landing files → ``bronze.fhir_resources`` → silver rows.

Reading a landing file yields one raw record per ndjson line or bundle entry (a file that cannot
be read at all yields one whole-file record at offset 0). :func:`to_bronze` parses those records;
the ``*_from_bronze`` functions validate bronze rows with ``fhir.resources`` and flatten them into
the silver tables' schemas, pseudonymized and date-shifted. Which element fills which column is
not code: it is the table's SQL-on-FHIR ViewDefinition in ``jobs/views/definitions/``; the
flatteners only key, shift and type what the view gives. All of them are pure Arrow functions
that return a :class:`~medlake.quarantine.Split`, so the embedded and Spark engines run them alike.

Offsets: the 1-based line of an ndjson file, the 1-based entry of a bundle, 0 for a whole file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from medlake.config import AgePolicy
from medlake.governance.deid import date_shift_days, shift_date, shift_datetime, zip3
from medlake.governance.pseudonyms import mrn_key, record_key, source_key
from medlake.jobs.ingest import limits
from medlake.jobs.stage import reader_of
from medlake.jobs.views import coverage
from medlake.jobs.views.engine import View, ViewError, load_views
from medlake.quarantine import Split, quarantine_rows
from medlake.registry import (
    BRONZE_FHIR,
    FHIR_SILVER,
    SILVER_NOTES,
    TableSpec,
)

SOURCE_KIND = "fhir"
SOURCE_SYSTEM = "fhir"
FILE_SUFFIXES = (".ndjson", ".json")
#: The ViewDefinitions of the FHIR-fed silver tables (SQL-on-FHIR v2, one file per table).
VIEW_DEFINITIONS = Path(__file__).resolve().parents[1] / "views" / "definitions"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: The resource types of FHIR R4 (4.0.1). A resourceType outside this set is not FHIR R4.
R4_RESOURCE_TYPES = frozenset(
    """Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
    AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement
    CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse
    ClinicalImpression CodeSystem Communication CommunicationRequest CompartmentDefinition
    Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest
    DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
    Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal
    GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
    ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice
    Library Linkage List Location Measure MeasureReport Media Medication MedicationAdministration
    MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
    MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
    MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
    Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner
    PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
    RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
    SpecimenDefinition StructureDefinition StructureMap Subscription Substance
    SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
    SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
    TerminologyCapabilities TestReport TestScript ValueSet VerificationResult VisionPrescription""".split()  # noqa: SIM905
)

#: what a landing file yields before parsing: the record text, or why the file gave none
RAW_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("text", pa.large_string()),
        pa.field("error_rule", pa.string()),
        pa.field("error_reason", pa.string()),
    ]
)


# ---------------------------------------------------------------------------------------------
# landing files → raw records


def landing_files(fhir_dir: Path) -> list[Path]:
    """The FHIR files of a landing folder, in a stable order."""
    if not fhir_dir.is_dir():
        return []
    return sorted(p for p in fhir_dir.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)


def read_file(path: Path, *, name: str) -> Iterator[dict[str, Any]]:
    """Raw records of one landing file; ``name`` is how the file is named in bronze and quarantine.

    An ndjson file is read a chunk at a time, line by line (memory holds a chunk and a line, not
    the file; a line over the record limit is read as its marker); a JSON file (a Bundle or one
    resource) is one document, read whole and held to the record limit, then cut into entries.
    """
    if path.suffix.lower() == ".ndjson":
        empty = True
        lines = limits.bounded_lines(limits.file_chunks(path), line_bytes=limits.current().record_bytes)
        for record in _ndjson_records(lines, name=name):
            empty = False
            yield record
        if empty:
            yield _file_error(name, "parse.empty_file", f"{name}: the file is empty")
        return
    size, limit = path.stat().st_size, limits.current().record_bytes
    if limit and size > limit:
        yield _file_error(
            name, "limit.record_bytes",
            f"{name}: the file is {size} bytes, over the limit of {limit} bytes per record "
            "(MEDLAKE__LIMITS__RECORD_BYTES); a .json file is read whole: send bulk data as ndjson",
        )
        return
    data = path.read_bytes()
    if not data.strip():
        yield _file_error(name, "parse.empty_file", f"{name}: the file is empty")
        return
    yield from _json_records(data, name=name)


#: the reader both engines stream FHIR landing files through: ``(path, name) -> record batches``
#: of :data:`RAW_SCHEMA` (see :func:`medlake.jobs.stage.read_batches`)
read_records = reader_of(read_file, RAW_SCHEMA)


def read_files(paths: list[Path], *, root: Path) -> pa.Table:
    """Raw records of many landing files, named relative to the landing root."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(read_file(path, name=str(path.relative_to(root))))
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def _ndjson_records(data: bytes | Iterable[bytes], *, name: str) -> Iterator[dict[str, Any]]:
    lines = data.split(b"\n") if isinstance(data, bytes) else data
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            yield {
                "source_file": name,
                "source_offset": number,
                "text": line.decode("utf-8", errors="replace"),
                "error_rule": "parse.bad_encoding",
                "error_reason": f"{name} line {number}: not UTF-8 ({exc.reason} at byte {exc.start})",
            }
            continue
        try:
            limits.check_bytes(text, where=f"{name} line {number}")
        except limits.LimitExceeded as over:
            yield {"source_file": name, "source_offset": number, "text": limits.clip(text),
                   "error_rule": over.rule_id, "error_reason": over.reason}
            continue
        yield {"source_file": name, "source_offset": number, "text": text, "error_rule": None, "error_reason": None}


def _json_records(data: bytes, *, name: str) -> Iterator[dict[str, Any]]:
    try:  # FHIR JSON is UTF-8 (json.loads would also take bytes in UTF-16 or UTF-32)
        text = data.decode("utf-8-sig")
        limits.check_json_depth(text, where=name)
        doc = limits.loads(text)
    except limits.LimitExceeded as over:
        yield _file_error(name, over.rule_id, over.reason, text=limits.clip(text))
        return
    except limits.NonFiniteNumber:
        yield _file_error(
            name, "parse.bad_json", f"{name}: not valid JSON (NaN, Infinity or a number beyond a double)",
            text=text,
        )
        return
    except UnicodeDecodeError as exc:
        yield _file_error(name, "parse.bad_encoding", f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})")
        return
    except json.JSONDecodeError as exc:
        yield _file_error(
            name, "parse.bad_json", f"{name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            text=text,
        )
        return
    if not isinstance(doc, dict) or "resourceType" not in doc:
        kind = type(doc).__name__ if not isinstance(doc, dict) else "object without resourceType"
        yield _file_error(
            name, "parse.not_a_resource", f"{name}: expected a FHIR Bundle or resource, found a JSON {kind}",
            text=text,
        )
        return
    if doc["resourceType"] != "Bundle":
        yield {"source_file": name, "source_offset": 1, "text": text, "error_rule": None, "error_reason": None}
        return
    entries = doc.get("entry") or []
    if not isinstance(entries, list) or not entries:
        yield _file_error(name, "parse.empty_bundle", f"{name}: Bundle {doc.get('id', '')} has no entries",
                          text=text)
        return
    for position, entry in enumerate(entries, start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            yield {
                "source_file": name,
                "source_offset": position,
                "text": json.dumps(entry, ensure_ascii=False),
                "error_rule": "parse.bundle_entry_without_resource",
                "error_reason": f"{name} entry {position}: the Bundle entry holds no resource object",
            }
            continue
        text = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        yield {"source_file": name, "source_offset": position, "text": text, "error_rule": None, "error_reason": None}


def _file_error(name: str, rule: str, reason: str, *, text: str | None = None) -> dict[str, Any]:
    return {"source_file": name, "source_offset": 0, "text": text, "error_rule": rule, "error_reason": reason}


# ---------------------------------------------------------------------------------------------
# raw records → bronze


def record_hash(resource: dict[str, Any]) -> str:
    """The content hash of a resource: the same resource in two files has the same hash (its
    canonical JSON: keys sorted, no whitespace, UTF-8)."""
    try:
        canonical = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        canonical = json.dumps(
            resource, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def to_bronze(raw: pa.Table | pa.RecordBatch, *, run_id: str, ingested_at: datetime) -> Split:
    """Bronze rows for the records that are FHIR R4 resources; the others quarantined, with why."""
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    with limits.clock() as clock:
        for rec in raw.to_pylist():
            where = f"{rec['source_file']} {'line' if rec['source_file'].endswith('.ndjson') else 'entry'} {rec['source_offset']}"
            locate = {"source_file": rec["source_file"], "source_offset": rec["source_offset"], "raw_record": rec["text"]}
            if rec["error_rule"]:
                bad.append({**locate, "rule_id": rec["error_rule"], "reason": rec["error_reason"]})
                continue
            try:
                with clock.record(where):
                    limits.check_json(rec["text"], where=where)
                    resource = limits.loads(rec["text"])
                    hashed = record_hash(resource) if isinstance(resource, dict) else None
            except limits.LimitExceeded as over:
                bad.append({**locate, "raw_record": limits.clip(rec["text"]), "rule_id": over.rule_id, "reason": over.reason})
                continue
            except limits.NonFiniteNumber:
                bad.append({**locate, "rule_id": "parse.bad_json",
                            "reason": f"{where}: not valid JSON (NaN, Infinity or a number beyond a double)"})
                continue
            except json.JSONDecodeError as exc:
                bad.append({**locate, "rule_id": "parse.bad_json",
                            "reason": f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"})
                continue
            if not isinstance(resource, dict) or "resourceType" not in resource:
                found = "object without resourceType" if isinstance(resource, dict) else type(resource).__name__
                bad.append({**locate, "rule_id": "parse.not_a_resource",
                            "reason": f"{where}: expected a FHIR resource, found a JSON {found}"})
                continue
            rtype = resource["resourceType"]
            rid = resource.get("id") if isinstance(resource.get("id"), str) else None
            if not isinstance(rtype, str) or rtype not in R4_RESOURCE_TYPES:
                bad.append({**locate, "rule_id": "parse.unknown_resource_type", "record_id": rid,
                            "reason": f"{where}: resourceType {str(rtype)[:40]!r} is not a FHIR R4 resource type"})
                continue
            good.append(
                {
                    "resource_type": rtype,
                    "resource_id": rid,
                    "raw": rec["text"],
                    "_source_file": rec["source_file"],
                    "_source_offset": rec["source_offset"],
                    "_ingested_at": ingested_at,
                    "_record_hash": hashed,
                    "_run_id": run_id,
                }
            )
    return Split(
        pa.Table.from_pylist(good, schema=BRONZE_FHIR.schema),
        quarantine_rows(bad, table_name=BRONZE_FHIR.name, run_id=run_id, now=ingested_at),
    )


# ---------------------------------------------------------------------------------------------
# bronze → silver


@dataclass(frozen=True)
class Pseudonymizer:
    """Turns source ids into keyed pseudonyms and shifts a patient's dates by their offset.

    ``source`` names a patient record of this source; ``person`` the person it belongs to: the
    person key its Patient's MRN gives (``aliases``, see :func:`patient_aliases`), else the
    record's own source key.
    """

    key: bytes
    max_shift_days: int = 365
    source_system: str = SOURCE_SYSTEM
    aliases: Mapping[str, str] = field(default_factory=dict)

    def source(self, patient_id: str) -> str:
        return str(source_key(self.key, self.source_system, patient_id))

    def person(self, patient_id: str) -> str:
        return self.aliases.get(patient_id) or self.source(patient_id)

    def record(self, kind: str, local_id: str) -> str:
        return str(record_key(self.key, kind, self.source_system, local_id))

    def shift(self, person_key: str) -> int:
        return _shift_days(self.key, person_key, self.max_shift_days)


@cache
def _shift_days(key: bytes, person_key: str, max_days: int) -> int:
    return int(date_shift_days(key, person_key, max_days=max_days))


class Reject(Exception):
    """A resource that validates but cannot be placed in silver (e.g. no patient reference)."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


Flatten = Callable[[dict[str, Any], Pseudonymizer], list[dict[str, Any]]]


def flatten_split(
    bronze: pa.Table | pa.RecordBatch,
    *,
    flatten: Flatten,
    target: TableSpec,
    pseudo: Pseudonymizer,
    on_parsed: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> Split:
    """Validate each bronze row as FHIR R4 and flatten it into ``target`` rows; quarantine the rest.
    ``on_parsed(row, resource)`` sees every resource that parsed, with its bronze row (what else
    the step wants from the one parse)."""
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row in bronze.to_pylist():
        rtype, rid = row["resource_type"], row["resource_id"]
        label = f"{row['_source_file']} record {row['_source_offset']} ({rtype}/{rid or '?'})"
        locate = {
            "source_file": row["_source_file"],
            "source_offset": row["_source_offset"],
            "record_id": rid,
            "record_hash": row["_record_hash"],
            "raw_record": row["raw"],
        }
        try:
            resource = limits.loads(row["raw"])
        except json.JSONDecodeError as exc:
            bad.append({**locate, "rule_id": "parse.bad_json", "reason": f"{label}: not valid JSON ({exc.msg})"})
            continue
        if on_parsed is not None and isinstance(resource, dict):
            on_parsed(row, resource)
        problem = validation_problem(resource)
        if problem:
            bad.append({**locate, "rule_id": "validate.fhir_r4", "reason": f"{label}: {problem}"})
            continue
        try:
            rows = flatten(resource, pseudo)
        except Reject as rej:
            bad.append({**locate, "rule_id": rej.rule_id, "reason": f"{label}: {rej.reason}"})
            continue
        except OverflowError:  # a date at the calendar's edge (year 1, 9999) that the shift moves off it
            bad.append({**locate, "rule_id": "silver.date_out_of_range",
                        "reason": f"{label}: a date the patient's date shift moves off the calendar (year 1 or 9999)"})
            continue
        lineage = {"_record_hash": row["_record_hash"], "_source_kind": SOURCE_KIND, "_run_id": row["_run_id"]}
        good.extend({**r, **lineage} for r in rows)
    return Split(
        pa.Table.from_pylist(good, schema=target.schema),
        quarantine_rows(bad, table_name=target.name),
    )


def validation_problem(resource: dict[str, Any]) -> str | None:
    """Why the resource is not valid FHIR (R4B models, the closest R4 validator), or None.

    The message names the element paths and the rule, never the offending values (they may be PHI).
    """
    model = _model_class(resource["resourceType"])
    if model is None:
        return None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        parts = [f"{_element_path(err['loc'])}: {err['msg']}" for err in errors[:5]]
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        return "fails FHIR validation: " + "; ".join(parts) + more
    except (ValueError, TypeError) as exc:
        return f"fails FHIR validation: {type(exc).__name__}"
    return None


#: the longest element name a reason repeats (an element name is a JSON key: a sender's text)
ELEMENT_NAME_CHARS = 64


def _element_path(location: tuple[int | str, ...]) -> str:
    """An error's element path, each name cut to :data:`ELEMENT_NAME_CHARS` characters."""
    names = [
        str(p) if len(str(p)) <= ELEMENT_NAME_CHARS else f"{str(p)[:ELEMENT_NAME_CHARS]}…"
        for p in location
    ]
    return ".".join(names) or "(resource)"


@cache
def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        return None  # an R4 type R4B dropped (e.g. MedicinalProduct): checked structurally only


# -- small readers of FHIR datatypes ------------------------------------------------------------


def reference_id(ref: dict[str, Any] | None) -> str | None:
    """The local id a Reference points at: ``Patient/1``, ``urn:uuid:1`` and absolute URLs alike."""
    if not ref or not isinstance(ref.get("reference"), str):
        return None
    text = str(ref["reference"])
    if text.startswith(("urn:uuid:", "urn:oid:")):
        return text.split(":", 2)[2]
    parts = [p for p in text.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else None


def parse_datetime(value: str | None) -> datetime | None:
    """A FHIR date/dateTime/instant as a UTC timestamp; partial dates start at their first day."""
    if not value:
        return None
    if len(value) == 4:
        value = value + "-01-01"
    elif len(value) == 7:
        value = value + "-01"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_date(value: str | None) -> date | None:
    stamp = parse_datetime(value)
    return stamp.date() if stamp else None


def _subject(resource: dict[str, Any], pseudo: Pseudonymizer) -> tuple[str, int]:
    patient = reference_id(resource.get("subject") or resource.get("patient"))
    if not patient:
        raise Reject("silver.missing_subject", f"{resource['resourceType']} has no subject reference to a Patient")
    person = pseudo.person(patient)
    return person, pseudo.shift(person)


def _encounter_key(resource: dict[str, Any], pseudo: Pseudonymizer) -> str | None:
    enc = reference_id(resource.get("encounter") or resource.get("context"))
    return pseudo.record("Encounter", enc) if enc else None


# -- one flatten function per resource type: its view's raw columns, keyed, shifted, typed ------
#
# The columns each table reads from a resource are the ViewDefinitions in jobs/views/definitions
# (SQL-on-FHIR v2): a hospital changes a column by editing a view file. What stays here is what a
# view cannot do: pseudonymize ids, shift dates, cut zips, pick value_num/value_unit.


@cache
def silver_views() -> dict[str, View]:
    """The ViewDefinition of each FHIR-fed silver table, by resource type."""
    views = load_views(VIEW_DEFINITIONS)
    by_type = {view.resource: view for view in views.values()}
    missing = set(FHIR_SILVER) - set(by_type)
    if missing:
        raise ViewError(f"{VIEW_DEFINITIONS}: no ViewDefinition for {sorted(missing)}")
    return by_type


def view_rows(res: dict[str, Any], *, view: View | None = None) -> list[dict[str, Any]]:
    """The raw rows of a resource's silver view (or of ``view``); a path that fails on it
    rejects the resource."""
    try:
        chosen = view or silver_views()[res["resourceType"]]
        rows: list[dict[str, Any]] = chosen.resource_rows(res)
    except ViewError as exc:
        raise Reject("silver.view_failed", str(exc)) from exc
    return rows


def one_view_row(res: dict[str, Any]) -> dict[str, Any]:
    """The one row a resource gives in its table's view; a view edited to give none or several
    (a where, a forEach) quarantines the resource rather than losing or duplicating it."""
    rows = view_rows(res)
    if len(rows) != 1:
        raise Reject(
            "silver.view_rows", f"the {res['resourceType']} view gave {len(rows)} rows, expected one"
        )
    return rows[0]


def _person(raw: dict[str, Any], pseudo: Pseudonymizer, resource_type: str) -> tuple[str, int]:
    patient = reference_id({"reference": raw["subject_reference"]})
    if not patient:
        raise Reject(
            "silver.missing_subject", f"{resource_type} has no subject reference to a Patient"
        )
    person = pseudo.person(patient)
    return person, pseudo.shift(person)


def _record(raw: dict[str, Any], pseudo: Pseudonymizer, kind: str, res: dict[str, Any]) -> str:
    return pseudo.record(kind, raw["id"] or record_hash(res))


def _encounter(raw: dict[str, Any], pseudo: Pseudonymizer) -> str | None:
    enc = reference_id({"reference": raw["encounter_reference"]})
    return pseudo.record("Encounter", enc) if enc else None


def _at(value: str | None, shift: int) -> datetime | None:
    shifted: datetime | None = shift_datetime(parse_datetime(value), shift)
    return shifted


def _on(value: str | None, shift: int) -> date | None:
    shifted: date | None = shift_date(parse_date(value), shift)
    return shifted


def flatten_patient(res: dict[str, Any], pseudo: Pseudonymizer) -> list[dict[str, Any]]:
    """A patient without direct identifiers: no name, telecom, street, exact dates or ids."""
    raw = one_view_row(res)
    if not raw["id"]:
        raise Reject("silver.missing_id", "Patient has no id, so nothing can refer to it")
    person = _mrn_person(pseudo.key, raw) or pseudo.person(raw["id"])
    shift = pseudo.shift(person)
    deceased_at = parse_date(raw["deceased_date_time"])
    return [
        {
            "person_key": person,
            "source_key": pseudo.source(raw["id"]),
            "source_system": pseudo.source_system,
            "gender": raw["gender"],
            "birth_date": _on(raw["birth_date"], shift),
            "deceased": bool(raw["deceased_boolean"]) or deceased_at is not None,
            "deceased_date": shift_date(deceased_at, shift),
            "zip3": zip3(raw["postal_code"]),
            "state": raw["state"],
            "country": raw["country"],
            "marital_status": raw["marital_status"],
            "race": raw["race_text"] or raw["race_category"],
            "ethnicity": raw["ethnicity_text"] or raw["ethnicity_category"],
            "language": raw["language"],
        }
    ]


def _mrn_person(key: bytes, raw: dict[str, Any]) -> str | None:
    if not raw["mrn_system"] or not raw["mrn_value"]:
        return None
    return str(mrn_key(key, str(raw["mrn_system"]), str(raw["mrn_value"])))


def patient_mrn_key(key: bytes, patient: dict[str, Any]) -> str | None:
    """The person key of a Patient's medical record number: its first identifier typed MR
    (v2-0203) with a system (the MRN's assigning authority); None without one, or when the
    resource is too broken for its view (the flattener quarantines it)."""
    try:
        rows = silver_views()["Patient"].resource_rows(patient)
    except ViewError:
        return None
    return _mrn_person(key, rows[0]) if rows else None


def patient_aliases(patients: pa.Table, *, key: bytes) -> dict[str, str]:
    """Patient id → the person key of its MRN, for every Patient row with an MRN (columns
    ``resource_id``, ``raw``). Resources refer to patients by id; through this map they reach the
    person key that HL7 v2 messages naming the same MRN get."""
    aliases: dict[str, str] = {}
    for row in patients.select(["resource_id", "raw"]).to_pylist():
        try:
            resource = json.loads(row["raw"])
        except json.JSONDecodeError:
            continue  # quarantined by the flattener
        person = patient_mrn_key(key, resource) if isinstance(resource, dict) else None
        if person and row["resource_id"]:
            aliases[row["resource_id"]] = person
    return aliases


def patient_identities(
    bronze: pa.Table, *, key: bytes, aliases: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The direct identifiers of each Patient row, keyed by its pseudonyms, for the encrypted vault.

    This is the only place identities leave a FHIR resource; silver never sees them.
    """
    pseudo = Pseudonymizer(key=key, aliases=aliases or {})
    identities: dict[str, dict[str, Any]] = {}  # one per source record: a later version replaces an earlier
    patients = bronze.filter(pc.equal(bronze.column("resource_type"), "Patient"))
    for raw in patients.column("raw").to_pylist():
        try:
            res = json.loads(raw)
        except json.JSONDecodeError:
            continue  # quarantined by the flattener
        if not isinstance(res.get("id"), str):
            continue
        person = patient_mrn_key(key, res) or pseudo.person(res["id"])
        identities[pseudo.source(res["id"])] = (
            {
                "person_key": person,
                "source_key": pseudo.source(res["id"]),
                "source_system": pseudo.source_system,
                "local_id": res["id"],
                "names": res.get("name") or [],
                "birth_date": res.get("birthDate"),
                "deceased": res.get("deceasedDateTime") or res.get("deceasedBoolean"),
                "telecom": res.get("telecom") or [],
                "address": res.get("address") or [],
                "identifiers": res.get("identifier") or [],
            }
        )
    return list(identities.values())


def flatten_encounter(res: dict[str, Any], pseudo: Pseudonymizer) -> list[dict[str, Any]]:
    """An encounter with its class, type, site and shifted period."""
    raw = one_view_row(res)
    person, shift = _person(raw, pseudo, "Encounter")
    return [
        {
            "encounter_key": _record(raw, pseudo, "Encounter", res),
            "person_key": person,
            "status": raw["status"],
            "class_code": raw["class_code"],
            "type_system": raw["type_system"],
            "type_code": raw["type_code"],
            "type_display": raw["type_display"],
            "site": raw["site"],
            "start_at": _at(raw["start"], shift),
            "end_at": _at(raw["end"], shift),
        }
    ]


def value_columns(raw: dict[str, Any]) -> dict[str, Any]:
    """value_num/unit/code/text from a view row's value[x] columns (a resource has one value[x]);
    free text is not kept. A UCUM quantity gives its code as the unit, another its unit text."""
    numbers = (raw["quantity_value"], raw["integer_value"], raw["boolean_value"])
    number = next((n for n in numbers if n is not None), None)
    ucum = raw["quantity_system"] == UCUM and raw["quantity_code"]
    return {
        "value_num": float(number) if number is not None else None,
        "value_unit": raw["quantity_code"] if ucum else raw["quantity_unit"],
        "value_code": raw["concept_code"],
        "value_text": raw["concept_display"],
    }


def preferred_coding(raw: dict[str, Any], prefix: str, preferred: str) -> dict[str, Any]:
    """system/code/display of the coding of the preferred system when the view found one
    (columns ``<prefix>_<preferred>_*``), else of the first coding (``<prefix>_first_*``)."""
    chosen = preferred if raw[f"{prefix}_{preferred}_system"] is not None else "first"
    return {part: raw[f"{prefix}_{chosen}_{part}"] for part in ("system", "code", "display")}


def flatten_observation(res: dict[str, Any], pseudo: Pseudonymizer) -> list[dict[str, Any]]:
    """One row for the observation's value and one per component (blood pressure panels)."""
    rows: list[dict[str, Any]] = []
    for raw in view_rows(res):
        person, shift = _person(raw, pseudo, "Observation")
        local_id = raw["id"] or record_hash(res)
        component = raw["component"]
        code = preferred_coding(raw, "code", "loinc")
        effective = (
            raw["effective_date_time"]
            or raw["effective_instant"]
            or raw["effective_period_start"]
            or raw["issued"]
        )
        rows.append(
            {
                "person_key": person,
                "encounter_key": _encounter(raw, pseudo),
                "status": raw["status"],
                "category": raw["category"],
                "interpretation": raw["interpretation"],
                "effective_at": _at(effective, shift),
                "observation_key": pseudo.record(
                    "Observation", local_id if component is None else f"{local_id}#{component}"
                ),
                "code_system": code["system"],
                "code": code["code"],
                "code_display": code["display"],
                "panel_code": (
                    None if component is None else preferred_coding(raw, "panel", "loinc")["code"]
                ),
                "data_absent_reason": raw["data_absent_reason"],
                "ref_low": raw["ref_low"],
                "ref_high": raw["ref_high"],
                **value_columns(raw),
            }
        )
    return rows


def flatten_condition(res: dict[str, Any], pseudo: Pseudonymizer) -> list[dict[str, Any]]:
    """A diagnosis with its ICD-10-CM and SNOMED CT codes (dotted ICD kept as the source sent it)."""
    raw = one_view_row(res)
    person, shift = _person(raw, pseudo, "Condition")
    return [
        {
            "condition_key": _record(raw, pseudo, "Condition", res),
            "person_key": person,
            "encounter_key": _encounter(raw, pseudo),
            "clinical_status": raw["clinical_status"],
            "verification_status": raw["verification_status"],
            "code_system": raw["code_system"],
            "code": raw["code_code"],
            "code_display": raw["code_display"],
            "icd10cm_code": raw["icd10cm_code"],
            "snomed_code": raw["snomed_code"],
            "onset_at": _at(raw["onset"], shift),
            "abatement_at": _at(raw["abatement"], shift),
            "recorded_date": _on(raw["recorded_date"], shift),
        }
    ]


def flatten_medication_request(res: dict[str, Any], pseudo: Pseudonymizer) -> list[dict[str, Any]]:
    """A medication order with its RxNorm code when the source sent one."""
    raw = one_view_row(res)
    person, shift = _person(raw, pseudo, "MedicationRequest")
    code = preferred_coding(raw, "code", "rxnorm")
    return [
        {
            "medication_key": _record(raw, pseudo, "MedicationRequest", res),
            "person_key": person,
            "encounter_key": _encounter(raw, pseudo),
            "status": raw["status"],
            "intent": raw["intent"],
            "code_system": code["system"],
            "code": code["code"],
            "code_display": code["display"],
            "rxnorm_code": raw["code_rxnorm_code"],
            "authored_at": _at(raw["authored_on"], shift),
            "dosage_text": raw["dosage_text"],
        }
    ]


def flatten_resources(
    bronze: pa.Table | pa.RecordBatch,
    *,
    resource_type: str,
    key: bytes,
    max_shift_days: int = 365,
    aliases: Mapping[str, str] | None = None,
    notes: NoteOptions | None = None,
) -> Split:
    """The ``resource_type`` rows of a bronze batch validated and flattened into its silver table
    (the batch-local step the engines run), each resource parsed once; the elements no view
    reads come back as counters ``drift|<type>|<path>`` (see :func:`unread_elements`).

    With ``notes``, the free text of the same parsed resources comes back de-identified as the
    side output ``notes`` (``silver.notes`` rows on the patient's own key, not yet re-keyed to its
    resolved person), its undecodable attachments quarantined beside the flattener's refusals."""
    rows = bronze.filter(pc.equal(bronze.column("resource_type"), resource_type))
    pseudo = Pseudonymizer(key=key, max_shift_days=max_shift_days, aliases=aliases or {})
    parsed: list[dict[str, Any]] = []
    found = NoteFields(pseudo) if notes is not None else None

    def seen(row: dict[str, Any], resource: dict[str, Any]) -> None:
        parsed.append(resource)
        if found is not None:
            found.add(row, resource)

    split = flatten_split(
        rows,
        flatten=FLATTEN[resource_type],
        target=FHIR_SILVER[resource_type],
        pseudo=pseudo,
        on_parsed=seen,
    )
    drift = coverage.unread_elements(parsed, silver_views().values())
    counters = {
        f"{DRIFT}|{rtype}|{path}": count
        for rtype, paths in drift.items()
        for path, count in paths.items()
    }
    if found is None or notes is None:
        return Split(split.good, split.quarantined, counters)
    texts = found.split(notes)
    return Split(
        split.good,
        pa.concat_tables([split.quarantined, texts.quarantined]),
        counters,
        sides={NOTES_SIDE: texts.good},
    )


#: the counter prefix of schema drift (an element path no view reads, per resource type)
DRIFT = "drift"


def drift_of(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Schema drift (type → path → resources) from a step's ``drift|<type>|<path>`` counters."""
    drift: dict[str, dict[str, int]] = {}
    for name, count in counters.items():
        prefix, _, rest = name.partition("|")
        if prefix == DRIFT:
            rtype, _, path = rest.partition("|")
            drift.setdefault(rtype, {})[path] = drift.get(rtype, {}).get(path, 0) + count
    return drift


def unread_elements(bronze: pa.Table) -> dict[str, dict[str, int]]:
    """Schema drift in bronze rows: per resource type with a silver view, the element paths no
    view reads (a new extension, an unexpected element), each with the number of resources
    carrying it. They stay in bronze; the clean stage logs them and the run summary can list them."""
    rows = bronze.filter(pc.is_in(bronze.column("resource_type"), pa.array(sorted(FHIR_SILVER))))
    resources = []
    for raw in rows.column("raw").to_pylist():
        try:
            resource = json.loads(raw)
        except json.JSONDecodeError:
            continue  # quarantined by the flattener
        if isinstance(resource, dict):
            resources.append(resource)
    unread: dict[str, dict[str, int]] = coverage.unread_elements(resources, silver_views().values())
    return unread


FLATTEN: dict[str, Flatten] = {
    "Patient": flatten_patient,
    "Encounter": flatten_encounter,
    "Observation": flatten_observation,
    "Condition": flatten_condition,
    "MedicationRequest": flatten_medication_request,
}
assert set(FLATTEN) == set(FHIR_SILVER)


def _by_type(resource_type: str) -> Callable[..., Split]:
    def transform(
        bronze: pa.Table, *, key: bytes, max_shift_days: int = 365, aliases: Mapping[str, str] | None = None
    ) -> Split:
        rows = bronze.filter(pc.equal(bronze.column("resource_type"), resource_type))
        pseudo = Pseudonymizer(key=key, max_shift_days=max_shift_days, aliases=aliases or {})
        return flatten_split(rows, flatten=FLATTEN[resource_type], target=FHIR_SILVER[resource_type], pseudo=pseudo)

    transform.__name__ = f"{FHIR_SILVER[resource_type].name.split('.')[1]}_from_bronze"
    transform.__doc__ = f"``{FHIR_SILVER[resource_type].name}`` rows from the {resource_type} rows of bronze."
    return transform


patients_from_bronze = _by_type("Patient")
encounters_from_bronze = _by_type("Encounter")
observations_from_bronze = _by_type("Observation")
conditions_from_bronze = _by_type("Condition")
medications_from_bronze = _by_type("MedicationRequest")


def bronze_only_from_bronze(
    bronze: pa.Table,
    *,
    viewed: Iterable[str] = (),
    on_parsed: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> Split:
    """Resources of types with no silver table yet: validated, then kept in bronze only.
    ``viewed``: resource types that extra views (medlake.jobs.views.tables) put in silver;
    ``on_parsed(row, resource)`` sees every resource that parsed (e.g. for its free text)."""
    silver_types = pa.array(sorted({*FHIR_SILVER, *viewed}))
    rows = bronze.filter(pc.invert(pc.is_in(bronze.column("resource_type"), silver_types)))
    valid: list[int] = []
    bad: list[dict[str, Any]] = []
    for i, row in enumerate(rows.to_pylist()):
        try:
            resource = json.loads(row["raw"])
            if on_parsed is not None and isinstance(resource, dict):
                on_parsed(row, resource)
            problem = validation_problem(resource)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg})"
        if problem is None:
            valid.append(i)
            continue
        bad.append(
            {
                "rule_id": "validate.fhir_r4",
                "reason": f"{row['_source_file']} record {row['_source_offset']} "
                f"({row['resource_type']}/{row['resource_id'] or '?'}): {problem}",
                "source_file": row["_source_file"],
                "source_offset": row["_source_offset"],
                "record_id": row["resource_id"],
                "record_hash": row["_record_hash"],
                "raw_record": row["raw"],
            }
        )
    return Split(rows.take(pa.array(valid, pa.int64())), quarantine_rows(bad, table_name=BRONZE_FHIR.name))


# ---------------------------------------------------------------------------------------------
# free text → silver.notes (de-identified)

#: Resource types whose free text we keep, and where it sits.
NOTE_SOURCES = ("Encounter", "Observation", "Condition", "Procedure", "DocumentReference", "DiagnosticReport")


def free_text_fields(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(path, text or base64 attachment) for each free-text field of a resource.

    Narratives are kept for encounters only: elsewhere Synthea generates them from the coded data.
    """
    rtype = resource.get("resourceType")
    if rtype == "Encounter" and (resource.get("text") or {}).get("div"):
        yield "Encounter.text.div", resource["text"]["div"]
    for i, note in enumerate(resource.get("note") or []):
        if isinstance(note, dict) and note.get("text"):
            yield f"{rtype}.note[{i}].text", note["text"]
    if rtype == "DocumentReference":
        for i, content in enumerate(resource.get("content") or []):
            attachment = (content or {}).get("attachment") or {}
            if attachment.get("data"):
                yield f"DocumentReference.content[{i}].attachment", attachment
    if rtype == "DiagnosticReport":
        for i, attachment in enumerate(resource.get("presentedForm") or []):
            if (attachment or {}).get("data"):
                yield f"DiagnosticReport.presentedForm[{i}]", attachment
    if rtype == "DiagnosticReport" and resource.get("conclusion"):
        yield "DiagnosticReport.conclusion", resource["conclusion"]


def record_terms(
    bronze: pa.Table, *, key: bytes, aliases: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Per person key, the names, address lines, phones and identifiers of this run's Patient rows:
    the deny list of that patient's notes (governance.text_deid.record_deny_list)."""
    from medlake.governance.text_deid import record_deny_list

    identities = patient_identities(bronze, key=key, aliases=aliases)
    return {identity["person_key"]: record_deny_list(identity) for identity in identities}


#: the side output a FHIR step gives its notes under (:attr:`Split.sides`)
NOTES_SIDE = "notes"


@dataclass(frozen=True)
class NoteOptions:
    """How a step keys and de-identifies the free text it finds: the project key (pseudonyms and
    surrogates), the date shift, the patient aliases, the patients' deny lists (person key →
    names and identifiers) and the age policy."""

    key: bytes
    max_shift_days: int = 365
    aliases: Mapping[str, str] = field(default_factory=dict)
    deny_lists: Mapping[str, list[str]] = field(default_factory=dict)
    ages: AgePolicy = "over_89"

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(key=self.key, max_shift_days=self.max_shift_days, aliases=self.aliases)


class NoteFields:
    """The free-text fields of the resources a step parsed, gathered one resource at a time and
    de-identified in one batch (:meth:`split`)."""

    def __init__(self, pseudo: Pseudonymizer) -> None:
        self.pseudo = pseudo
        self.meta: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.bad: list[dict[str, Any]] = []

    def add(self, row: Mapping[str, Any], resource: dict[str, Any]) -> None:
        """The fields of one parsed resource (with its bronze row); a resource with no subject
        gives none (its own table's flattener quarantines it)."""
        if row["resource_type"] not in NOTE_SOURCES:
            return
        try:
            person, _ = _subject(resource, self.pseudo)
        except Reject:
            return
        rtype, local_id = row["resource_type"], resource.get("id") or row["_record_hash"]
        from medlake.governance.text_deid import AttachmentError, decode_attachment, narrative_text

        for path, value in free_text_fields(resource):
            try:
                if isinstance(value, dict):
                    text = decode_attachment(value)
                else:
                    text = narrative_text(value) if path.endswith(".div") else value
            except AttachmentError as exc:
                self.bad.append(
                    {
                        "rule_id": "deid.attachment_undecodable",
                        "reason": f"{row['_source_file']} record {row['_source_offset']} ({rtype}/{local_id}) {path}: {exc}",
                        "source_file": row["_source_file"],
                        "source_offset": row["_source_offset"],
                        "record_id": row["resource_id"],
                        "record_hash": row["_record_hash"],
                        "raw_record": row["raw"],
                    }
                )
                continue
            self.texts.append(text)
            self.meta.append(
                {
                    "note_key": self.pseudo.record("Note", f"{rtype}/{local_id}#{path}"),
                    "person_key": person,
                    "encounter_key": _encounter_key(resource, self.pseudo),
                    "resource_type": rtype,
                    "resource_key": self.pseudo.record(rtype, local_id),
                    "note_path": path,
                    "_record_hash": row["_record_hash"],
                    "_source_kind": SOURCE_KIND,
                    "_run_id": row["_run_id"],
                }
            )

    def split(self, options: NoteOptions, *, workers: int = 1) -> Split:
        """``silver.notes`` rows for every field gathered, de-identified in one batch; the
        undecodable attachments quarantined."""
        return Split(
            deidentified_notes(
                self.meta,
                self.texts,
                options.deny_lists,
                key=options.key,
                workers=workers,
                ages=options.ages,
            ),
            quarantine_rows(self.bad, table_name=SILVER_NOTES.name),
        )


def notes_from_bronze(
    bronze: pa.Table,
    *,
    key: bytes,
    deny_lists: dict[str, list[str]] | None = None,
    max_shift_days: int = 365,
    aliases: Mapping[str, str] | None = None,
    workers: int = 1,
    ages: AgePolicy = "over_89",
) -> Split:
    """``silver.notes``: every free-text field of this run's resources, de-identified in one batch
    (by ``workers`` processes when the batch is large: see ``text_deid.deidentify_batch``).

    ``deny_lists`` maps a person key to the patient's known names and identifiers (this run's
    Patient rows by default). Undecodable attachments are quarantined
    (``deid.attachment_undecodable``); resources that do not parse or have no subject are
    quarantined by their own table's flattener, not here. The pipeline gathers the same fields
    while it flattens (:func:`flatten_resources` with ``notes``), parsing each resource once.
    """
    deny_lists = record_terms(bronze, key=key, aliases=aliases) if deny_lists is None else deny_lists
    options = NoteOptions(
        key=key,
        max_shift_days=max_shift_days,
        aliases=aliases or {},
        deny_lists=deny_lists,
        ages=ages,
    )
    found = NoteFields(options.pseudonymizer())
    rows = bronze.filter(pc.is_in(bronze.column("resource_type"), pa.array(NOTE_SOURCES)))
    for row in rows.to_pylist():
        try:
            resource = json.loads(row["raw"])
        except json.JSONDecodeError:
            continue
        if isinstance(resource, dict):
            found.add(row, resource)
    return found.split(options, workers=workers)


def deidentified_notes(
    meta: list[dict[str, Any]],
    texts: list[str],
    deny_lists: Mapping[str, list[str]],
    *,
    key: bytes,
    workers: int = 1,
    ages: AgePolicy = "over_89",
) -> pa.Table:
    """``silver.notes`` rows: each note's ``meta`` with its text de-identified in one batch (its
    patient's deny list and surrogates) and what was replaced, by type and count only."""
    from medlake.governance.text_deid import deidentify_batch

    persons = [m["person_key"] for m in meta]
    done = (
        deidentify_batch(
            texts,
            deny_lists=[deny_lists.get(p, []) for p in persons],
            surrogate_key=key,
            person_keys=persons,
            workers=workers,
            ages=ages,
        )
        if texts
        else []
    )
    rows = [
        {
            **m,
            "note_text_deid": d.text,
            "phi_replaced": d.replaced,
            "phi_entities": json.dumps(d.summary()["entities"], sort_keys=True),
        }
        for m, d in zip(meta, done, strict=True)
    ]
    return pa.Table.from_pylist(rows, schema=SILVER_NOTES.schema)
