"""Generate a complete landing folder for the sample hospital, with its truth file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from medlake.sample.csv import write_csv
from medlake.sample.dicom import write_dicom
from medlake.sample.fhir import write_fhir
from medlake.sample.hl7v2 import write_hl7v2
from medlake.sample.people import Hospital
from medlake.sample.truth import Truth
from medlake.sample.vcf import write_vcf
from medlake.sample.vitals import write_vitals

# One sub-folder per source kind, each with its writer below.
SOURCE_KINDS = ("fhir", "hl7v2", "csv", "dicom", "vitals", "vcf")
TRUTH_FILE = "_truth.json"


@dataclass(frozen=True)
class SampleManifest:
    """What `generate` wrote: where, from which inputs, and how much."""

    out: Path
    patients: int
    seed: int
    counts: Mapping[str, int]  # resources written per FHIR type, all files
    total_records: int  # records ingest will read (lines, bundle entries, messages, whole bad files)
    truth: Path


def generate(out: Path, *, patients: int, seed: int) -> SampleManifest:
    """Write the sample hospital's landing folder to `out`; same inputs, same bytes."""
    out = Path(out)
    _require_empty(out)
    for kind in SOURCE_KINDS:
        (out / kind).mkdir(parents=True, exist_ok=True)
    hospital = Hospital(patients=patients, seed=seed)
    truth = Truth(seed=seed, patients=patients)
    write_fhir(hospital, out, truth)
    write_hl7v2(hospital, out, truth)
    write_csv(hospital, out, truth)
    write_vitals(hospital, out, truth)
    write_dicom(hospital, out, truth)
    write_vcf(hospital, out, truth)
    truth_path = out / TRUTH_FILE
    truth.write(truth_path)
    return SampleManifest(
        out=out,
        patients=patients,
        seed=seed,
        counts=MappingProxyType(truth.resources_total()),
        total_records=truth.total_records,
        truth=truth_path,
    )


def _require_empty(out: Path) -> None:
    """Refuse to mix a new sample with old files, which would break determinism and truth."""
    if out.exists() and any(p.is_file() for p in out.rglob("*")):
        raise FileExistsError(f"{out} already holds files; generate into an empty folder")
