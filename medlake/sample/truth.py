"""The answer key of a generated landing folder: `out/_truth.json`.

Ingest never reads it (it sits outside every source folder); tests compare the lake with it.
Paths are relative to `out`; an offset is where bronze's `_source_offset` points: the
1-based line of an ndjson file, the 1-based entry of a bundle, the 1-based message of an HL7 v2
file, 0 for a whole-file problem.

Schema (version 1)::

    {
      "schema_version": 1,
      "seed": 7,                         # generate(seed=...)
      "patients": 50,                    # distinct people (duplicates not counted twice)
      "reference_date": "2025-06-30",    # nothing in the data is later than this day
      "total_records": 812,              # every line, bundle entry and whole-file unit ingest reads
      "files": {"fhir/bundles": {"files": 29, "records": 402},    # per source folder
                "fhir/bulk": {"files": 5, "records": 410},
                "hl7v2/adt": {"files": 8, "records": 72}, ...},
      "resources": {"fhir/bundles": {"Patient": 27, "Observation": 190, ...},
                    "fhir/bulk": {...}},   # records that parse to a known FHIR resourceType,
                                           # valid or not (validate.fhir_r4 ones included)
      "resources_total": {"Patient": 53, ...},
      "malformed": [{"file": "fhir/bulk/Observation.000.ndjson", "offset": 17,
                     "rule": "validate.fhir_r4", "reason": "Observation.status missing"}],
      "duplicates": [{"person": 12, "variations": ["nickname", "phone_format"],
                      "records": [{"file": ..., "offset": 1, "patient_id": ...},   # primary
                                  {"file": ..., "offset": 40, "patient_id": ...}]}],
      "impossible_values": [{"file", "offset", "observation_id", "loinc", "value", "unit"}],
      "unit_mix": [{"file", "offset", "observation_id", "loinc", "value", "unit",
                    "canonical_value", "canonical_unit"}],
      "local_codes": {"system": "http://hospital.example.org/lab-codes",
                      "to_loinc": {"GLU": "2339-0", ...}},
      "local_coded": [{"file", "offset", "observation_id", "local_code", "loinc"}],
      "missing_values": [{"file", "offset", "resource_type", "id",
                          "field": "Patient.gender" | "Patient.address" |
                                   "Encounter.period.end" | "Observation.value[x]"}],
      "free_text": [{"file", "offset", "resource_type", "id",
                     "path": "Observation.note.text" | "Condition.note.text" | "Encounter.text.div",
                     "phi": ["Zoë Müller", "MRN-0012345", "(555) 234-5678", "03/05/2024"]}],
      "phi": {"names": [...], "phones": [...], "mrns": [...], "ssns": [...], "streets": [...]}
    }

Vitals streams (`vitals/jsonl`, `vitals/csv`: one record per line, the CSV header is none) add
to `files`, `total_records`, `malformed` (`parse.vitals_*`) and `phi` (MRNs), and list in
`vitals` each stream (`kind` "stream": file at offset 0, device, person, samples,
clock_offset_s), the planted gap (`kind` "gap": start, end) and each planted sample (`kind`
"duplicate_line" | "duplicate_time" | "impossible", at its line). See medlake/sample/vitals.py.

DICOM files (`dicom`, every file below `landing/dicom/` at any depth, one record each) add to
`files`, `total_records`, `malformed` and `phi`, and list each study in `imaging`:
`{"file", "offset": 0, "person", "mrn", "study_uid", "modality", "files", "compressed"}`
(the study's original UID, before de-identification remaps it).

VCF files (`vcf/cohort`, `vcf/single`, see `medlake.sample.vcf`) add to `files` (a file's
records are its data lines plus its header; a file with a broken header is one record),
`total_records`, `malformed` (offset: the 1-based line, 0 for the header) and `phi` (the MRNs in
`##SAMPLE` lines), and list every sample in `vcf_samples`: `{"file", "offset": 0, "sample",
"mrn" (null when the sample is linked to no patient), "genotype_rows"}` (the silver.variants rows
it must produce: max(1, ALT alleles) per valid data line).

HL7 v2 files (`hl7v2/adt`, `hl7v2/lab`, `hl7v2/pharmacy`) add to `files`, `total_records`,
`malformed` and `phi`; the data-level sections (`duplicates` to `free_text`) point at FHIR
records only, though the HL7 messages render the same people's facts. `hl7_free_text` lists the
patient-level NTE comments of ORU messages ({file, offset, path, phi}), whose PHI silver.notes
must not keep.

CSV extracts (`csv/labs`, `csv/diagnoses`, `csv/exports`) add to `files`, `total_records`,
`malformed` (offset = 1-based line, 0 for a whole file) and `phi`, and list their own facts:
`csv_unit_mix` [{file, offset, result_id, loinc, value, unit, canonical_value, canonical_unit}] and
`csv_local_coded` [{file, offset, result_id, local_code, loinc}].

`phi` lists every value planted anywhere in the folder (sorted, de-duplicated): each given
and family name as spelled in each record, each phone as formatted, each MRN, SSN and street
line. A leak test scans silver and gold for them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlake.sample.people import REFERENCE_DATE, Registration
from medlake.sample.vocab import LOCAL_LAB, LOCAL_LAB_TO_LOINC

SCHEMA_VERSION = 1
PHI_KINDS = ("names", "phones", "mrns", "ssns", "streets")


@dataclass(frozen=True)
class Where:
    """Where a record sits: a file relative to the landing folder and bronze's offset in it."""

    file: str
    offset: int

    def as_dict(self) -> dict[str, Any]:
        """The location as truth-file fields."""
        return {"file": self.file, "offset": self.offset}


class Truth:
    """Collects what the writers planted, then writes it as `_truth.json`."""

    def __init__(self, *, seed: int, patients: int) -> None:
        self.seed = seed
        self.patients = patients
        self.files: dict[str, dict[str, int]] = {}
        self.resources: dict[str, Counter[str]] = {}
        self.sections: dict[str, list[dict[str, Any]]] = {
            name: []
            for name in (
                "malformed",
                "duplicates",
                "impossible_values",
                "unit_mix",
                "local_coded",
                "missing_values",
                "free_text",
                "csv_unit_mix",
                "csv_local_coded",
                "vitals",
                "imaging",
                "vcf_samples",
                "hl7_free_text",
            )
        }
        self.phi: dict[str, set[str]] = {kind: set() for kind in PHI_KINDS}

    def file_read(self, source: str, records: int) -> None:
        """A file in `source` that ingest reads as `records` records."""
        tally = self.files.setdefault(source, {"files": 0, "records": 0})
        tally["files"] += 1
        tally["records"] += records

    def resource(self, source: str, resource_type: str) -> None:
        """One record in `source` that parses to a FHIR resource of `resource_type`."""
        self.resources.setdefault(source, Counter())[resource_type] += 1

    def malformed(self, where: Where, rule: str, reason: str) -> None:
        """A record ingest must quarantine under `rule`."""
        self.sections["malformed"].append({**where.as_dict(), "rule": rule, "reason": reason})

    def add(self, section: str, where: Where, **fields: Any) -> None:
        """A planted fact of one record, e.g. add("unit_mix", where, observation_id=...)."""
        self.sections[section].append({**where.as_dict(), **fields})

    def duplicate(
        self, person: int, variations: tuple[str, ...], records: list[dict[str, Any]]
    ) -> None:
        """A person registered twice, with both patient records."""
        self.sections["duplicates"].append(
            {"person": person, "variations": list(variations), "records": records}
        )

    def registration(self, registration: Registration) -> None:
        """Remember every identifying value of a patient record that was written out."""
        self.phi["names"].update((*registration.given, registration.family))
        self.phi["phones"].add(registration.phone)
        self.phi["mrns"].add(registration.mrn)
        if registration.ssn:
            self.phi["ssns"].add(registration.ssn)
        if registration.address:
            self.phi["streets"].update(registration.address.lines)

    def planted(self, kind: str, *values: str) -> None:
        """PHI written somewhere besides a patient record (a clinician's name in a DICOM header)."""
        self.phi[kind].update(values)

    @property
    def total_records(self) -> int:
        """Every record ingest will read, over all sources."""
        return sum(tally["records"] for tally in self.files.values())

    def resources_total(self) -> dict[str, int]:
        """Resources written per type, over all sources."""
        total: Counter[str] = Counter()
        for counts in self.resources.values():
            total.update(counts)
        return dict(sorted(total.items()))

    def as_dict(self) -> dict[str, Any]:
        """The truth document (see the module docstring for its schema)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "seed": self.seed,
            "patients": self.patients,
            "reference_date": REFERENCE_DATE.isoformat(),
            "total_records": self.total_records,
            "files": self.files,
            "resources": {src: dict(sorted(c.items())) for src, c in self.resources.items()},
            "resources_total": self.resources_total(),
            **{name: entries for name, entries in self.sections.items() if name != "local_coded"},
            "local_codes": {"system": LOCAL_LAB, "to_loinc": LOCAL_LAB_TO_LOINC},
            "local_coded": self.sections["local_coded"],
            "phi": {kind: sorted(values) for kind, values in self.phi.items()},
        }

    def write(self, path: Path) -> None:
        """Write the truth document as UTF-8 JSON."""
        text = json.dumps(self.as_dict(), ensure_ascii=False, indent=2)
        path.write_text(text + "\n", encoding="utf-8")
