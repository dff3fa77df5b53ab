"""A landing of hostile files, one folder per source: what a broken or malicious feed sends.

For tests (small sizes, small limits) and ``bench/hostile.py`` (a gigabyte field, a gzip bomb):
every file mixes good records with bad ones, so a run over it shows each bad record quarantined
under its rule, the good ones in bronze, and the ledger adding up. No real patient data: names and
ids are made up.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

#: a made-up value planted in the huge fields: a reason that repeats it leaks a field
FILLER = "QZXHOSTILEQZX"
#: a bomb member: this many line breaks compress to about a thousandth of their size
_BOMB_MEMBER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How hostile the landing is."""

    huge_field: int = 100_000  # bytes of the one huge field per line-oriented file
    bomb: int = 1_000_000  # bytes the gzip bomb inflates to
    depth: int = 10_000  # nesting of the deep JSON records
    fields: int = 2_000  # fields of the wide HL7 v2 segment


OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/pat-1"},
    "effectiveDateTime": "2024-03-01T10:00:00Z",
    "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
}
MSH = "MSH|^~\\&|LAB|HOSP|LAKE|LAKE|20240105093000||ORU^R01^ORU_R01|{control}|P|2.5.1"
PID = "PID|1||MRN-1^^^&http://hospital.example.org/mrn&URI^MR||Doe^Jane||19500315|F"
OBR = "OBR|1||F-1^LAB|2345-7^Glucose^LN|||20240105080000"
OBX = "OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL|||||F|||20240105080000"
LABS_MAPPING = """\
name: labs
files: "labs*.csv"
target: observations
delimiter: ";"
timezone: "-05:00"
patient: {column: MRN, authority: "http://hospital.example.org/mrn"}
record_id: [ResultID]
fields:
  code: {column: TestCode, system: LOINC}
  value_num: {column: Result}
  value_unit: {column: Units}
  effective_at: {column: Collected, format: "%d/%m/%Y %H:%M", required: true}
"""
VCF_HEADER = [
    "##fileformat=VCFv4.2",
    "##contig=<ID=chr1,length=248956422>",
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1",
]


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _vitals(value: object, ts: str = "2024-03-01T10:00:00+00:00") -> str:
    return json.dumps(
        {"device_id": "MON-1", "mrn": "MRN-1", "mrn_system": "http://hospital.example.org/mrn",
         "metric": "heart_rate", "value": value, "unit": "/min", "ts": ts}
    )


def _write_huge_line(handle: object, prefix: bytes, size: int, suffix: bytes) -> None:
    """A line whose field is ``size`` bytes, written in pieces (never held in memory)."""
    write = handle.write  # type: ignore[attr-defined]
    write(prefix)
    piece = (FILLER * (1024 * 1024 // len(FILLER) + 1)).encode()[: 1024 * 1024]
    left = size
    while left > 0:
        write(piece[: min(left, len(piece))])
        left -= len(piece)
    write(suffix)


def _bomb(path: Path, size: int) -> None:
    """A gzip file of line breaks inflating to ``size`` bytes, as repeated gzip members (BGZF-like)."""
    header = ("\n".join(VCF_HEADER) + "\n").encode()
    member = gzip.compress(b"\n" * min(size, _BOMB_MEMBER), compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(header))
        written = 0
        while written < size:
            out.write(member)
            written += min(size, _BOMB_MEMBER)


def hostile_landing(root: Path, *, sizes: Sizes = Sizes(), dicom_seed: Path | None = None) -> dict[str, int]:
    """Write the landing under ``root``; returns the records each source should read (for tests)."""
    for kind in ("fhir", "hl7v2", "csv", "vitals", "vcf", "dicom"):
        (root / kind).mkdir(parents=True, exist_ok=True)

    # FHIR: a good line, a deep one, NaN, a truncated one, a huge one; a bundle with Infinity
    with (root / "fhir" / "feed.ndjson").open("wb") as out:
        out.write((json.dumps(OBSERVATION) + "\n").encode())
        out.write((json.dumps(OBSERVATION)[:-1] + f', "extension": {_deep(sizes.depth)}}}\n').encode())
        out.write((json.dumps({**OBSERVATION, "id": "obs-nan"}).replace("72", "NaN") + "\n").encode())
        out.write((json.dumps({**OBSERVATION, "id": "obs-cut"})[:50] + "\n").encode())
        _write_huge_line(out, b'{"resourceType": "Observation", "id": "obs-huge", "note": [{"text": "', sizes.huge_field, b'"}]}\n')
    (root / "fhir" / "bundle.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": OBSERVATION}]}).replace("72", "Infinity")
    )

    # HL7 v2: a good message, a huge OBX-5, a wide segment, a truncated message, NUL bytes
    good = "\r".join([MSH.format(control="C1"), PID, OBR, OBX.format(value="95")])
    wide = "\r".join([MSH.format(control="C3"), PID, OBR, OBX.format(value="1") + "|" * sizes.fields])
    with (root / "hl7v2" / "feed.hl7").open("wb") as out:
        out.write((good + "\n").encode())
        head = "\r".join([MSH.format(control="C2"), PID, OBR, "OBX|1|ST|2345-7^Glucose^LN||"])
        _write_huge_line(out, head.encode(), sizes.huge_field, b"|mg/dL\n")
        out.write((wide + "\n").encode())
        out.write((MSH.format(control="C4")[:30] + "\n").encode())
        out.write(("\r".join([MSH.format(control="C5"), PID.replace("Doe", "D\x00oe"), OBR]) + "\n").encode())

    # CSV: a good line, a huge field, a CR inside a field, NaN, year 9999
    (root / "csv" / "labs.mapping.yaml").write_text(LABS_MAPPING)
    with (root / "csv" / "labs.csv").open("wb") as out:
        out.write(b"ResultID;MRN;TestCode;Result;Units;Collected\n")
        out.write(b"R1;MRN-1;2345-7;95;mg/dL;05/03/2024 08:30\n")
        _write_huge_line(out, b"R2;MRN-1;2345-7;", sizes.huge_field, b";mg/dL;05/03/2024 08:30\n")
        out.write(b"R3;MRN-1;23\r45-7;95;mg/dL;05/03/2024 08:30\n")
        out.write(b"R4;MRN-1;2345-7;NaN;mg/dL;05/03/2024 08:30\n")
        out.write(b"R5;MRN-1;2345-7;95;mg/dL;31/12/9999 23:59\n")

    # vitals: good, NaN, year 9999, deep, huge
    with (root / "vitals" / "feed.jsonl").open("wb") as out:
        out.write((_vitals(72) + "\n").encode())
        out.write((_vitals(72).replace("72", "NaN") + "\n").encode())
        out.write((_vitals(72, "9999-12-31T23:59:59-14:00") + "\n").encode())
        out.write((_vitals(72)[:-1] + f', "x": {_deep(sizes.depth)}}}\n').encode())
        _write_huge_line(out, _vitals(72)[:-1].encode() + b', "note": "', sizes.huge_field, b'"}\n')

    # VCF: a gzip bomb, and a file with a good line, QUAL=1e308 and a huge line
    _bomb(root / "vcf" / "bomb.vcf.gz", sizes.bomb)
    with (root / "vcf" / "calls.vcf").open("wb") as out:
        out.write(("\n".join(VCF_HEADER) + "\n").encode())
        out.write(b"chr1\t100\t.\tG\tA\t50\tPASS\t.\tGT\t0/1\n")
        out.write(b"chr1\t200\t.\tG\tA\t1e308\tPASS\t.\tGT\t0/1\n")
        _write_huge_line(out, b"chr1\t300\t.\tG\tA\t50\tPASS\tNOTE=", sizes.huge_field, b"\tGT\t0/1\n")

    # DICOM: a good file, its pixel data claiming 4 GB, and noise
    if dicom_seed is not None:
        seed = dicom_seed.read_bytes()
        shutil.copy(dicom_seed, root / "dicom" / "good.dcm")
        at = seed.index(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
        (root / "dicom" / "lying.dcm").write_bytes(seed[:at] + struct.pack("<I", 0xFFFFFFF0) + seed[at + 4 :])
    (root / "dicom" / "noise.dcm").write_bytes(bytes(range(256)) * 8)
    return {"fhir": 6, "hl7v2": 5, "csv": 5, "vitals": 5, "vcf": 4, "dicom": 3 if dicom_seed else 1}
