"""The sample hospital's HL7 v2 feeds: deterministic, truthful, PHI-bearing, and linked to FHIR by MRN."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.governance.pseudonyms import source_key
from medlake.jobs.ingest import fhir, hl7v2
from medlake.quarantine import Split
from medlake.sample.fhir import write_fhir
from medlake.sample.hl7v2 import DEFECT_RULES, FEEDS, in_hl7, write_hl7v2
from medlake.sample.people import Hospital
from medlake.sample.truth import Truth
from medlake.sample.vocab import MRN_SYSTEM

PATIENTS = 40
SEED = 9  # a seed whose HL7 people include result-callback notes and a duplicate registration
KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Landing:
    out: Path
    truth: dict[str, Any]
    raw: pa.Table
    bronze: Split
    silver: dict[str, hl7v2.Flattened]


def build(
    out: Path, *, patients: int = PATIENTS, seed: int = SEED, with_fhir: bool = True
) -> Landing:
    """A landing folder the way `medlake sample` writes it, read by HL7 v2 ingest."""
    hospital, truth = Hospital(patients=patients, seed=seed), Truth(seed=seed, patients=patients)
    if with_fhir:
        write_fhir(hospital, out, truth)
    write_hl7v2(hospital, out, truth)
    (out / "_truth.json").write_text(
        json.dumps(truth.as_dict(), ensure_ascii=False), encoding="utf-8"
    )
    raw = hl7v2.read_files(hl7v2.landing_files(out / "hl7v2"), root=out)
    bronze = hl7v2.to_bronze(raw, run_id="r1", ingested_at=NOW)
    silver = {n.split(".")[1]: f for n, f in hl7v2.silver_from_bronze(bronze.good, key=KEY).items()}
    return Landing(out, truth.as_dict(), raw, bronze, silver)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Landing:
    return build(tmp_path_factory.mktemp("sample") / "landing")


def hl7_files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted((out / "hl7v2").rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ files


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = build(tmp_path / "a", with_fhir=False)
    again = build(tmp_path / "b", with_fhir=False)
    other = build(tmp_path / "c", seed=SEED + 1, with_fhir=False)
    assert hl7_files(first.out) == hl7_files(again.out)
    assert hl7_files(first.out) != hl7_files(other.out)


def test_feeds_carry_adt_oru_and_rde_messages_in_every_framing(landing: Landing) -> None:
    types = Counter(landing.bronze.good.column("message_type").to_pylist())
    assert {"ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "RDE^O11"} <= set(types)
    framings = set()
    for data in hl7_files(landing.out).values():
        if not data.startswith(b"MSH") and not data.startswith((b"\x0b", b"FHS")):
            continue
        framings.add(
            "mllp"
            if data.startswith(b"\x0b")
            else "batch"
            if data.startswith(b"FHS")
            else "crlf"
            if b"\r\n" in data
            else "lf"
            if b"\n" in data
            else "cr"
        )
    assert framings == {"mllp", "batch", "crlf", "lf", "cr"}
    segments = {
        line[:3]
        for raw in landing.bronze.good.column("raw").to_pylist()
        for line in hl7v2.segment_lines(raw)
    }
    assert {
        "MSH",
        "EVN",
        "PID",
        "NK1",
        "PV1",
        "DG1",
        "ORC",
        "OBR",
        "OBX",
        "NTE",
        "RXO",
        "RXE",
        "RXR",
    } <= segments
    assert not segments & {"FHS", "BHS", "BTS", "FTS"}  # batch envelopes belong to no message


def test_truth_counts_every_file_and_message(landing: Landing) -> None:
    names = landing.raw.column("source_file").to_pylist()
    files: dict[str, dict[str, int]] = {}
    for folder in {name.rsplit("/", 1)[0] for name in names}:
        inside = [name for name in names if name.rsplit("/", 1)[0] == folder]
        files[folder] = {"files": len(set(inside)), "records": len(inside)}
    assert {k: v for k, v in landing.truth["files"].items() if k.startswith("hl7v2/")} == files
    assert set(files) == {f"hl7v2/{feed.folder}" for feed in FEEDS.values()}


def test_only_the_planted_defects_are_quarantined_each_with_its_rule(landing: Landing) -> None:
    planted = {
        (m["file"], m["offset"], m["rule"])
        for m in landing.truth["malformed"]
        if m["file"].startswith("hl7v2/")
    }
    quarantined = [landing.bronze.quarantined] + [
        f.split.quarantined for f in landing.silver.values()
    ]
    found = [
        (q["source_file"], q["source_offset"], q["rule_id"])
        for t in quarantined
        for q in t.to_pylist()
    ]
    assert Counter(found) == Counter(planted)
    assert {rule for _, _, rule in planted} == {rule for rule, _ in DEFECT_RULES.values()}


def test_every_kind_of_defect_is_planted_once_the_hospital_is_big_enough(landing: Landing) -> None:
    reasons = {m["reason"] for m in landing.truth["malformed"] if m["file"].startswith("hl7v2/")}
    assert reasons == {reason for _, reason in DEFECT_RULES.values()}


def test_a_small_sample_is_clean(tmp_path: Path) -> None:
    small = build(tmp_path / "small", patients=6, seed=3, with_fhir=False)
    assert small.truth["malformed"] == []
    assert small.bronze.quarantined.num_rows == 0
    assert all(f.split.quarantined.num_rows == 0 for f in small.silver.values())
    assert small.bronze.good.num_rows > 0


def test_every_silver_table_balances(landing: Landing) -> None:
    for name, flat in landing.silver.items():
        assert flat.balanced and flat.records_in > 0, name


# ------------------------------------------------------------------ PHI


def test_phi_is_planted_in_pid_and_nk1(landing: Landing) -> None:
    raw = "\n".join(landing.bronze.good.column("raw").to_pylist())
    phi = landing.truth["phi"]
    nk1 = [
        line for line in raw.splitlines() for line in line.split("\r") if line.startswith("NK1|")
    ]
    assert nk1, "no next of kin was written"
    for line in nk1[:5]:
        name, phone = line.split("|")[2], line.split("|")[5].split("^")[0]
        assert set(name.split("^")) <= set(phi["names"]) and phone in phi["phones"]
    for kind in ("mrns", "phones", "ssns", "streets"):
        assert sum(1 for value in phi[kind] if value in raw) > 5, kind


def test_result_callback_notes_travel_in_nte(landing: Landing) -> None:
    hospital = Hospital(patients=PATIENTS, seed=SEED)
    notes = [
        m.note.text
        for p in hospital.people()
        if in_hl7(p.index)
        for m in p.chart.measurements
        if m.note
    ]
    segments = [
        s for raw in landing.raw.column("text").to_pylist() if raw for s in hl7v2.segment_lines(raw)
    ]
    written = [
        s.split("|", 3)[3].replace("\\F\\", "|").replace("\\E\\", "\\")
        for s in segments
        if s.startswith("NTE|")
    ]
    callbacks = [n for n in written if not n.startswith(("Specimen", "Patient "))]  # not PID's NTE
    assert notes and Counter(callbacks) == Counter(notes)


def _strings(table: pa.Table) -> list[str]:
    values: list[str] = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values.extend(v for v in column.to_pylist() if v)
    return values


def test_no_planted_phi_reaches_silver(landing: Landing) -> None:
    phi = landing.truth["phi"]
    cells = [cell for flat in landing.silver.values() for cell in _strings(flat.split.good)]
    words = {w for cell in cells for w in re.findall(r"[^\W\d_]+", cell)}
    blob = "\n".join(cells)
    assert cells
    assert [n for n in phi["names"] if n in words] == []
    assert [
        v for kind in ("phones", "mrns", "ssns", "streets") for v in phi[kind] if v in blob
    ] == []


# ------------------------------------------------------------------ one person, two sources


@dataclass(frozen=True)
class MrnPseudonymizer(fhir.Pseudonymizer):
    """The proposed FHIR change, locally: a patient whose record carries the hospital MRN is keyed
    by it (``mrn_key``), and references to that patient resolve through ``aliases``."""

    aliases: Mapping[str, str] = field(default_factory=dict)

    def person(self, patient_id: str) -> str:
        return self.aliases.get(patient_id) or super().person(patient_id)


def _fhir_silver(out: Path) -> dict[str, list[dict[str, Any]]]:
    raw = fhir.read_files(fhir.landing_files(out / "fhir"), root=out)
    bronze = fhir.to_bronze(raw, run_id="r1", ingested_at=NOW).good
    aliases = {}
    for row in bronze.to_pylist():
        if row["resource_type"] == "Patient":
            resource = json.loads(row["raw"])
            mrn = next(
                (
                    i["value"]
                    for i in resource.get("identifier", [])
                    if i.get("system") == MRN_SYSTEM
                ),
                None,
            )
            if mrn and resource.get("id"):
                aliases[resource["id"]] = hl7v2.mrn_key(KEY, MRN_SYSTEM, mrn)
    pseudo = MrnPseudonymizer(key=KEY, aliases=aliases)
    tables = {}
    for resource_type, name in (
        ("Patient", "patients"),
        ("Observation", "observations"),
        ("Encounter", "encounters"),
    ):
        rows = bronze.filter(pa.compute.equal(bronze.column("resource_type"), resource_type))
        split = fhir.flatten_split(
            rows,
            flatten=fhir.FLATTEN[resource_type],
            target=fhir.FHIR_SILVER[resource_type],
            pseudo=pseudo,
        )
        tables[name] = split.good.to_pylist()
    return tables


def test_a_person_in_fhir_and_hl7_has_one_person_key_and_one_date_shift(landing: Landing) -> None:
    hospital = Hospital(patients=PATIENTS, seed=SEED)
    fhir_tables = _fhir_silver(landing.out)
    fhir_patients = {r["person_key"]: r for r in fhir_tables["patients"]}
    hl7_patients = {r["person_key"]: r for r in landing.silver["patients"].split.good.to_pylist()}
    expected = {
        hl7v2.mrn_key(KEY, MRN_SYSTEM, p.chart.registration.mrn)
        for p in hospital.people()
        if in_hl7(p.index)
    }
    assert set(hl7_patients) == expected
    assert expected <= set(fhir_patients)
    for person in hospital.people():
        if not in_hl7(person.index):
            continue
        mrn = person.chart.registration.mrn
        key = hl7v2.mrn_key(KEY, MRN_SYSTEM, mrn)
        ours, theirs = hl7_patients[key], fhir_patients[key]
        shared = (
            "person_key",
            "gender",
            "birth_date",
            "deceased",
            "deceased_date",
            "zip3",
            "state",
            "marital_status",
        )
        assert {c: ours[c] for c in shared} == {c: theirs[c] for c in shared}, key
        # one row per patient record per source: the HL7 record has its own source key
        assert (
            ours["source_key"]
            == source_key(KEY, "hl7v2:SAMPLE_HOSPITAL", f"{mrn}^{MRN_SYSTEM}")
            != key
        )
        assert (ours["source_system"], theirs["source_system"]) == ("hl7v2:SAMPLE_HOSPITAL", "fhir")


def test_a_measurement_in_both_feeds_has_the_same_values_and_shifted_time(landing: Landing) -> None:
    def facts(row: dict[str, Any]) -> tuple[Any, ...]:
        return (
            row["person_key"],
            row["code_system"],
            row["code"],
            row["effective_at"],
            row["value_num"],
            row["value_unit"],
            row["ref_low"],
            row["ref_high"],
            row["interpretation"],
        )

    fhir_rows = {facts(r) for r in _fhir_silver(landing.out)["observations"]}
    hl7_rows = [r for r in landing.silver["observations"].split.good.to_pylist()]
    matched = [r for r in hl7_rows if facts(r) in fhir_rows]
    assert len(matched) >= 0.95 * len(hl7_rows)
    unmatched = [r for r in hl7_rows if facts(r) not in fhir_rows]
    assert all(r["value_num"] is None for r in unmatched)  # results sent without a value (OBX-11 X)
    for row in matched[:50]:
        assert row["category"] in ("vital-signs", "laboratory")
