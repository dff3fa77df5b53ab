"""The sample hospital's FHIR landing files: deterministic, valid where not planted, truth exact."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from medlake.sample import SampleManifest, generate
from medlake.sample.people import planted_count, plants_every_kind
from medlake.sample.vocab import LOCAL_LAB, LOINC, MEASUREMENTS, NICKNAMES, UCUM

PATIENTS = 40
SEED = 20240601
UNPARSEABLE = object()


@dataclass(frozen=True)
class Record:
    """One unit the ingest reads: an ndjson line, a bundle entry, or a whole unreadable file."""

    file: str
    offset: int
    raw: str | None  # the text, except for bundle entries (already parsed with their bundle)
    value: Any  # parsed JSON, or UNPARSEABLE


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleManifest, dict[str, Any]]:
    """A 40-patient landing folder and its truth document."""
    manifest = generate(tmp_path_factory.mktemp("sample") / "landing", patients=PATIENTS, seed=SEED)
    return manifest, json.loads(manifest.truth.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def records(landing: tuple[SampleManifest, dict[str, Any]]) -> dict[tuple[str, int], Record]:
    """Every record of the landing folder by (file, offset)."""
    manifest, _ = landing
    return {(r.file, r.offset): r for r in read_records(manifest.out)}


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return UNPARSEABLE


def read_records(out: Path) -> Iterator[Record]:
    """Read the landing folder the way ingest does, with the offset convention of bronze."""
    for path in sorted((out / "fhir" / "bulk").glob("*.ndjson")):
        file = path.relative_to(out).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            yield Record(file, number, line, _parse(line))
    for path in sorted((out / "fhir" / "bundles").glob("*.json")):
        file = path.relative_to(out).as_posix()
        text = path.read_text(encoding="utf-8")
        value = _parse(text)
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for number, entry in enumerate(value["entry"], start=1):
                yield Record(file, number, None, entry["resource"])
        else:
            yield Record(file, 0, text, value)


def is_fhir_type(name: object) -> bool:
    """True when `name` is a FHIR R4 resource type."""
    if not isinstance(name, str):
        return False
    try:
        get_fhir_model_class(name)
    except ValueError:
        return False
    return True


def validation_error(resource: dict[str, Any]) -> ValidationError | None:
    """The R4B validation error of a resource, or None when it is valid."""
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as error:
        return error
    return None


def fhir_malformed(truth: dict[str, Any]) -> list[dict[str, Any]]:
    """Planted malformed FHIR records (the HL7 v2 ones are tested in test_sample_hl7v2)."""
    return [m for m in truth["malformed"] if m["file"].startswith("fhir/")]


def malformed_at(truth: dict[str, Any]) -> dict[tuple[str, int], str]:
    """Planted malformed FHIR records: (file, offset) -> rule."""
    return {(m["file"], m["offset"]): m["rule"] for m in fhir_malformed(truth)}


def resource_at(records: dict[tuple[str, int], Record], entry: dict[str, Any]) -> dict[str, Any]:
    """The resource a truth entry points at."""
    value = records[(entry["file"], entry["offset"])].value
    assert isinstance(value, dict), entry
    return value


# ------------------------------------------------------------------ determinism and layout


def test_same_inputs_write_identical_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", patients=30, seed=5)
    second = generate(tmp_path / "b", patients=30, seed=5)

    def snapshot(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert snapshot(first.out) == snapshot(second.out)
    assert first.counts == second.counts


def test_another_seed_writes_other_people(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", patients=30, seed=5)
    second = generate(tmp_path / "b", patients=30, seed=6)
    mrns = [json.loads(m.truth.read_text())["phi"]["mrns"] for m in (first, second)]
    assert mrns[0] != mrns[1]


def test_landing_has_a_folder_per_source_and_truth_outside_them(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    manifest, truth = landing
    for kind in ("fhir", "hl7v2", "csv", "dicom", "vitals", "vcf"):
        assert (manifest.out / kind).is_dir()
    assert manifest.truth == manifest.out / "_truth.json"
    assert (truth["seed"], truth["patients"]) == (SEED, PATIENTS)
    assert (manifest.seed, manifest.patients) == (SEED, PATIENTS)


def test_refuses_a_folder_that_already_holds_files(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(FileExistsError):
        generate(tmp_path, patients=3, seed=1)


def test_defect_counts_grow_with_population_and_start_at_twenty() -> None:
    assert planted_count(10_000, 0.05, at_least_one=True) == 500
    assert planted_count(10, 0.004, at_least_one=True) == 1
    assert planted_count(10, 0.004, at_least_one=False) == 0
    assert plants_every_kind(20) and not plants_every_kind(19)


def test_a_small_sample_is_clean(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "small", patients=6, seed=3)
    truth = json.loads(manifest.truth.read_text())
    assert truth["malformed"] == []
    for record in read_records(manifest.out):
        assert isinstance(record.value, dict) and validation_error(record.value) is None


# ------------------------------------------------------------------ validity and shape


def test_every_unplanted_record_is_a_valid_r4_resource(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    planted = malformed_at(truth)
    checked = 0
    for key, record in records.items():
        if key in planted:
            continue
        assert isinstance(record.value, dict), key
        error = validation_error(record.value)
        assert error is None, f"{key}: {error}"
        checked += 1
    assert checked > 10 * PATIENTS


def test_bundles_are_transactions_referring_by_urn_uuid(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    manifest, truth = landing
    bad_files = {m["file"] for m in truth["malformed"] if m["offset"] == 0}
    bundles = [
        p
        for p in (manifest.out / "fhir" / "bundles").glob("*.json")
        if p.relative_to(manifest.out).as_posix() not in bad_files
    ]
    assert len(bundles) >= PATIENTS // 2
    for path in bundles:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
        assert path.stem == bundle["id"]
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
            for reference in _references(resource):
                assert reference in full_urls, (path.name, reference)


def test_bulk_lines_refer_by_type_and_id(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    planted = malformed_at(truth)
    bulk = [r for k, r in records.items() if r.file.startswith("fhir/bulk/") and k not in planted]
    known = {f"{r.value['resourceType']}/{r.value['id']}" for r in bulk}
    for record in bulk:
        assert record.file == f"fhir/bulk/{record.value['resourceType']}.000.ndjson"
        for reference in _references(record.value):
            assert re.fullmatch(r"(Patient|Encounter|Condition)/[0-9a-f-]{36}", reference)
            assert reference in known, (record.file, record.offset, reference)


def _references(value: Any) -> Iterator[str]:
    """Every Reference.reference inside a resource."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def test_resources_carry_the_required_codes_and_sites(
    records: dict[tuple[str, int], Record],
) -> None:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for record in records.values():
        if isinstance(record.value, dict) and "resourceType" in record.value:
            by_type.setdefault(record.value["resourceType"], []).append(record.value)
    patients = by_type["Patient"]
    assert all(
        any(
            i["system"] == "http://hospital.example.org/mrn"
            and re.fullmatch(r"MRN-\d{7}", i["value"])
            for i in p["identifier"]
        )
        for p in patients
        if p["resourceType"] == "Patient"
    )
    sites = {e["serviceProvider"]["display"] for e in by_type["Encounter"]}
    assert 2 <= len(sites) <= 3
    assert {e["class"]["code"] for e in by_type["Encounter"]} == {"AMB", "IMP", "EMER"}
    loincs = {
        c["code"]
        for o in by_type["Observation"]
        if "code" in o
        for c in o["code"]["coding"]
        if c["system"] == LOINC
    }
    assert {"8867-4", "85354-9", "29463-7"} <= loincs
    systems = {c["system"] for cond in by_type["Condition"] for c in cond["code"]["coding"]}
    assert systems == {"http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct"}
    assert all(
        m["intent"] == "order" and m["dosageInstruction"][0]["text"]
        for m in by_type["MedicationRequest"]
    )


# ------------------------------------------------------------------ planted defects


def test_every_planted_malformed_record_is_malformed_that_way(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    manifest, truth = landing
    for entry in fhir_malformed(truth):
        key = (entry["file"], entry["offset"])
        assert key in records, entry
        record, rule = records[key], entry["rule"]
        if rule == "parse.empty_file":
            assert entry["offset"] == 0 and (manifest.out / entry["file"]).stat().st_size == 0
        elif rule == "parse.bad_json":
            assert record.raw and record.value is UNPARSEABLE, entry
        elif rule == "parse.not_a_resource":
            assert isinstance(record.value, list) or (
                isinstance(record.value, dict) and "resourceType" not in record.value
            ), entry
        elif rule == "parse.unknown_resource_type":
            assert isinstance(record.value, dict) and not is_fhir_type(record.value["resourceType"])
        elif rule == "validate.fhir_r4":
            assert is_fhir_type(record.value["resourceType"])
            assert validation_error(record.value) is not None, entry
        else:
            pytest.fail(f"unexpected rule {rule}")


def test_every_kind_of_defect_is_planted(landing: tuple[SampleManifest, dict[str, Any]]) -> None:
    _, truth = landing
    planted = Counter(
        (m["file"].split("/")[1], m["rule"], m["offset"] == 0) for m in fhir_malformed(truth)
    )
    assert planted[("bundles", "parse.empty_file", True)] == 1
    assert planted[("bundles", "parse.bad_json", True)] == 1
    assert planted[("bundles", "parse.not_a_resource", True)] == 1
    for rule in (
        "parse.bad_json",
        "parse.not_a_resource",
        "parse.unknown_resource_type",
        "validate.fhir_r4",
    ):
        assert planted[("bulk", rule, False)] >= 1, rule
    reasons = " ".join(m["reason"] for m in fhir_malformed(truth))
    for defect in ("status missing", "code missing", "not a decimal", "array", "no resourceType"):
        assert defect in reasons
    for section in (
        "impossible_values",
        "unit_mix",
        "local_coded",
        "missing_values",
        "free_text",
        "duplicates",
    ):
        assert truth[section], section


def test_duplicate_people_appear_on_both_sides_with_small_differences(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    assert truth["duplicates"]
    for pair in truth["duplicates"]:
        first, second = (resource_at(records, r) for r in pair["records"])
        assert [first["id"], second["id"]] == [r["patient_id"] for r in pair["records"]]
        assert {r["file"].split("/")[1] for r in pair["records"]} == {"bundles", "bulk"}
        assert first["resourceType"] == second["resourceType"] == "Patient"
        assert first["birthDate"] == second["birthDate"]
        assert _mrn(first) != _mrn(second)
        a, b = first["name"][0], second["name"][0]
        phones = first["telecom"][0]["value"], second["telecom"][0]["value"]
        assert (a["given"], a["family"], phones[0]) != (b["given"], b["family"], phones[1])
        if "phone_format" in pair["variations"]:
            assert phones[0] != phones[1] and _digits(phones[0]) == _digits(phones[1])
        if "nickname" in pair["variations"]:
            assert NICKNAMES[a["given"][0]] == b["given"][0]
        if "missing_middle" in pair["variations"]:
            assert len(b["given"]) == 1 < len(a["given"])


def _mrn(patient: dict[str, Any]) -> str:
    return str(next(i["value"] for i in patient["identifier"] if i["system"].endswith("/mrn")))


def _digits(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit())[-10:]


def test_units_are_mixed_and_convert_back_to_canonical(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    assert {u["unit"] for u in truth["unit_mix"]} == {"[lb_av]", "[in_i]", "[degF]", "mmol/L"}
    for entry in truth["unit_mix"]:
        obs = resource_at(records, entry)
        quantity = obs["valueQuantity"]
        assert (quantity["system"], quantity["code"], quantity["value"]) == (
            UCUM,
            entry["unit"],
            entry["value"],
        )
        kind = next(k for k in MEASUREMENTS.values() if k.loinc == entry["loinc"])
        assert kind.alt_unit is not None and entry["canonical_unit"] == kind.unit
        expected = entry["canonical_value"] * kind.alt_unit.scale + kind.alt_unit.offset
        assert quantity["value"] == pytest.approx(expected, abs=0.06)


def test_local_lab_codes_carry_no_loinc_and_map_to_one(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    mapping = truth["local_codes"]["to_loinc"]
    assert truth["local_codes"]["system"] == LOCAL_LAB
    assert set(mapping) == {"GLU", "CREAT", "CHOL", "HGB", "A1C"}
    for entry in truth["local_coded"]:
        codings = resource_at(records, entry)["code"]["coding"]
        assert [(c["system"], c["code"]) for c in codings] == [(LOCAL_LAB, entry["local_code"])]
        assert mapping[entry["local_code"]] == entry["loinc"]


def test_impossible_values_are_planted_as_recorded(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    seen = set()
    for entry in truth["impossible_values"]:
        obs = resource_at(records, entry)
        assert obs["id"] == entry["observation_id"]
        assert obs["code"]["coding"][0]["code"] == entry["loinc"]
        value, unit = obs["valueQuantity"]["value"], obs["valueQuantity"]["code"]
        assert (value, unit) == (entry["value"], entry["unit"])
        seen.add(entry["loinc"])
        assert (entry["loinc"], value, unit) in {
            ("8867-4", 900, "/min"),
            ("8310-5", 60, "Cel"),
        } or (entry["loinc"] == "29463-7" and value < 0 and unit == "kg")
    assert seen == {"8867-4", "8310-5", "29463-7"}


def test_missing_values_are_missing(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    fields = set()
    for entry in truth["missing_values"]:
        resource = resource_at(records, entry)
        assert resource["id"] == entry["id"]
        fields.add(entry["field"])
        if entry["field"] == "Patient.gender":
            assert "gender" not in resource
        elif entry["field"] == "Patient.address":
            assert "address" not in resource
        elif entry["field"] == "Encounter.period.end":
            assert "end" not in resource["period"]
        else:
            assert "valueQuantity" not in resource and resource["dataAbsentReason"]
    assert fields == {
        "Patient.gender",
        "Patient.address",
        "Encounter.period.end",
        "Observation.value[x]",
    }


def test_free_text_names_the_patient(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    paths = set()
    for entry in truth["free_text"]:
        resource = resource_at(records, entry)
        paths.add(entry["path"])
        text = (
            resource["text"]["div"]
            if entry["path"] == "Encounter.text.div"
            else " ".join(n["text"] for n in resource["note"])
        )
        for value in entry["phi"]:
            assert value in text, (entry["id"], value)
        given, family = entry["phi"][0].split(" ", 1)
        assert given in truth["phi"]["names"] and family in truth["phi"]["names"]
    assert paths == {"Observation.note.text", "Condition.note.text", "Encounter.text.div"}


def test_phi_lists_cover_every_patient_record(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    phi = {kind: set(values) for kind, values in truth["phi"].items()}
    patients = [
        r.value
        for r in records.values()
        if isinstance(r.value, dict) and r.value.get("resourceType") == "Patient"
    ]
    assert len(patients) == truth["resources_total"]["Patient"]
    for patient in patients:
        name = patient["name"][0]
        assert {*name["given"], name["family"]} <= phi["names"]
        assert patient["telecom"][0]["value"] in phi["phones"]
        assert _mrn(patient) in phi["mrns"]
        ssns = {i["value"] for i in patient["identifier"] if i["system"].endswith("us-ssn")}
        assert ssns <= phi["ssns"]
        for address in patient.get("address", []):
            assert set(address["line"]) <= phi["streets"]
    assert any(not name.isascii() for name in phi["names"])


# ------------------------------------------------------------------ counts


def test_truth_counts_match_the_files(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    manifest, truth = landing
    fhir_records = sum(t["records"] for source, t in truth["files"].items() if source.startswith("fhir/"))
    assert fhir_records == len(records)
    assert truth["total_records"] == sum(t["records"] for t in truth["files"].values()) == manifest.total_records
    resources: dict[str, Counter[str]] = {}
    files: dict[str, set[str]] = {}
    for record in records.values():
        source = record.file.rsplit("/", 1)[0]
        files.setdefault(source, set()).add(record.file)
        value = record.value
        if isinstance(value, dict) and is_fhir_type(value.get("resourceType")):
            resources.setdefault(source, Counter())[value["resourceType"]] += 1
    assert {s: dict(c) for s, c in resources.items()} == truth["resources"]
    for source, names in files.items():
        on_disk = sum(1 for p in (manifest.out / source).iterdir() if p.is_file())
        assert len(names) == on_disk == truth["files"][source]["files"]
        assert (
            sum(1 for r in records.values() if r.file.rsplit("/", 1)[0] == source)
            == truth["files"][source]["records"]
        )
    assert dict(manifest.counts) == truth["resources_total"]


def test_each_patient_has_a_realistic_amount_of_data(
    landing: tuple[SampleManifest, dict[str, Any]],
) -> None:
    _, truth = landing
    per_patient = {
        t: n / truth["resources_total"]["Patient"] for t, n in truth["resources_total"].items()
    }
    assert 5 <= per_patient["Observation"] <= 10.5
    assert 1 <= per_patient["Encounter"] <= 3
    assert per_patient["Condition"] <= 3 and per_patient["MedicationRequest"] <= 3


def test_timeline_is_consistent(
    landing: tuple[SampleManifest, dict[str, Any]], records: dict[tuple[str, int], Record]
) -> None:
    _, truth = landing
    planted = malformed_at(truth)
    resources: list[dict[str, Any]] = [r.value for k, r in records.items() if k not in planted]
    by_id = {r["id"]: r for r in resources}

    def target(resource: dict[str, Any], field: str) -> dict[str, Any]:
        return by_id[resource[field]["reference"].rsplit("/", 1)[-1].rsplit(":", 1)[-1]]

    latest = truth["reference_date"]
    for resource in resources:
        if resource["resourceType"] == "Encounter":
            start = resource["period"]["start"]
            assert target(resource, "subject")["birthDate"] <= start[:10] <= latest
            assert resource["period"].get("end", start) >= start
        elif resource["resourceType"] == "Observation":
            visit = target(resource, "encounter")
            assert target(resource, "subject") is target(visit, "subject")
            assert resource["effectiveDateTime"] >= visit["period"]["start"]
        elif resource["resourceType"] == "Patient" and "deceasedDateTime" in resource:
            assert resource["birthDate"] <= resource["deceasedDateTime"][:10] <= latest
