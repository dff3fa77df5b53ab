"""VCF: landing files → bronze.vcf_records/vcf_headers → staging.variants, on real files and Delta tables."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cyvcf2 import VCF, Writer

from medlake.expectations.gate import run_gate, suite_path, validate
from medlake.governance.pseudonyms import mrn_key, source_key
from medlake.jobs.ingest import fhir, vcf
from medlake.jobs.stage import StageResult
from medlake.lake import Lake
from medlake.registry import BRONZE_VCF, BRONZE_VCF_HEADERS, SILVER_VARIANTS, staging_name

KEY = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
AUTHORITY = "http://hospital.example.org/mrn"

META = [
    "##fileformat=VCFv4.2",
    '##FILTER=<ID=PASS,Description="All filters passed">',
    '##FILTER=<ID=q10,Description="Quality below 10">',
    "##contig=<ID=chr1,length=248956422>",
    "##contig=<ID=chr7,length=159345973>",
    "##contig=<ID=chrX,length=156040895>",
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
    '##INFO=<ID=AD_R,Number=R,Type=Integer,Description="Reads per allele">',
    '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
    '##INFO=<ID=DB,Number=0,Type=Flag,Description="dbSNP">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
    f"##SAMPLE=<ID=S1,MRN=MRN-0000001,MRNAuthority={AUTHORITY}>",
    f'##SAMPLE=<ID=S2,MRN=MRN-0000002,MRNAuthority="{AUTHORITY}">',
]
CHROM_LINE = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tCTRL"
LINES = [  # 5 data lines, 3 samples; ALT alleles 1 + 2 + 1 + 0 + 1 → 6 rows per sample
    "chr1\t11796321\trs1801133\tG\tA\t50\tPASS\tAF=0.5;DP=60;DB\tGT:DP:GQ\t0/1:20:99\t1|1:18:60\t0/0:22:80",
    "chr1\t11796400\t.\tC\tT,G\t30.5\tPASS\tAF=0.25,0.75;AD_R=3,4,5\tGT:DP:GQ\t1/2:15:40\t./.:.:.\t0|2:9:20",
    "chr7\t117559590\trs113993960\tATCT\tA\t.\tq10\t.\tGT:DP\t0/1:30\t0/0:25\t./.:.",
    "chr7\t117559700\t.\tA\t.\t.\tPASS\tDP=5\tGT\t0/0\t0/0\t0/0",
    "chrX\t31200000\t.\tC\tCA\t12\tPASS\t.\tGT:GQ\t1:50\t0/1:45\t0:30",
]


def vcf_text(lines: list[str] = LINES, meta: list[str] = META, chrom: str = CHROM_LINE) -> str:
    return "\n".join([*meta, chrom, *lines]) + "\n"


def land(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    landing = tmp_path / "landing"
    for name, content in files.items():
        path = landing / "vcf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return landing


def run(landing: Path, lake: Lake, run_id: str = "run-1") -> tuple[StageResult, StageResult]:
    ingested = vcf.ingest(landing, lake, run_id=run_id, now=NOW)
    staged = vcf.to_staging(
        lake, run_id=run_id, key=KEY, max_shift_days=365, versions=ingested.versions
    )
    return ingested, staged


def staged_rows(lake: Lake) -> list[dict[str, Any]]:
    return lake.read(staging_name(SILVER_VARIANTS.name)).to_pylist()


def bgzip(path: Path, text: str) -> None:
    """A bgzipped VCF written by htslib itself (cyvcf2 Writer, mode wz)."""
    header, *lines = text.rstrip("\n").split("\n#CHROM")
    body = ("#CHROM" + lines[0]).split("\n")
    writer = Writer.from_string(str(path), header + "\n" + body[0] + "\n", mode="wz")
    for line in body[1:]:
        writer.write_record(writer.variant_from_string(line))
    writer.close()


# --- parsing real files ---------------------------------------------------------------------


def test_a_multi_sample_vcf_gives_one_row_per_alt_allele_per_sample(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"lab/run1.vcf": vcf_text()}), lake)
    rows = staged_rows(lake)
    assert len(rows) == 6 * 3
    s1 = source_key(KEY, "vcf", "S1")
    by = {(r["sample_key"], r["pos"], r["allele_index"]): r for r in rows}
    multi_s1 = by[(s1, 11796400, 2)]
    assert (multi_s1["ref"], multi_s1["alt"], multi_s1["genotype"], multi_s1["alt_copies"]) == (
        "C",
        "G",
        "1/2",
        1,
    )
    assert dict(multi_s1["info"]) == {"AF": "0.75", "AD_R": "3,5"}  # Number=A / R narrowed
    assert dict(by[(s1, 11796321, 1)]["info"]) == {"AF": "0.5", "DP": "60", "DB": "true"}
    hom = by[(source_key(KEY, "vcf", "S2"), 11796321, 1)]
    assert (hom["genotype"], hom["phased"], hom["alt_copies"], hom["depth"]) == ("1|1", True, 2, 18)
    assert (hom["genotype_quality"], hom["qual"], hom["filter"], hom["variant_id"]) == (
        60,
        50.0,
        "PASS",
        "rs1801133",
    )
    deletion = by[(s1, 117559590, 1)]
    assert (deletion["ref"], deletion["alt"], deletion["qual"], deletion["filter"]) == (
        "ATCT",
        "A",
        None,
        "q10",
    )
    assert deletion["genotype_quality"] is None  # no GQ in this line's FORMAT
    no_alt = by[(s1, 117559700, 0)]
    assert (no_alt["alt"], no_alt["alt_copies"], no_alt["genotype"]) == (None, 0, "0/0")
    haploid = by[(s1, 31200000, 1)]
    assert (haploid["genotype"], haploid["alt_copies"], haploid["phased"]) == ("1", 1, False)


def test_no_calls_are_kept_as_rows_without_allele_counts(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"run1.vcf": vcf_text()}), lake)
    no_calls = [r for r in staged_rows(lake) if r["genotype"] == "./."]
    # S2 at the multi-allelic site (2 rows), CTRL at the deletion (1 row)
    assert len(no_calls) == 3
    assert {r["alt_copies"] for r in no_calls} == {None}
    assert {r["depth"] for r in no_calls} == {None}


def test_plain_and_bgzipped_files_parse_alike(tmp_path: Path) -> None:
    plain, packed = Lake(tmp_path / "plain"), Lake(tmp_path / "packed")
    run(land(tmp_path / "a", {"run1.vcf": vcf_text()}), plain)
    folder = tmp_path / "b" / "landing" / "vcf"
    folder.mkdir(parents=True)
    bgzip(folder / "run1.vcf.gz", vcf_text())
    assert (folder / "run1.vcf.gz").read_bytes()[
        :4
    ] == b"\x1f\x8b\x08\x04"  # BGZF: gzip + extra field
    assert len(list(VCF(str(folder / "run1.vcf.gz")))) == len(LINES)
    ingested, _ = run(folder.parent, packed)

    def facts(lake: Lake) -> set[tuple[Any, ...]]:
        return {
            (r["person_key"], r["chrom"], r["pos"], r["ref"], r["alt"], r["genotype"], r["depth"])
            for r in staged_rows(lake)
        }

    assert ingested.entries[1].records_in == len(LINES)
    assert facts(plain) == facts(packed)
    assert len(facts(packed)) == 6 * 3


# --- patients -------------------------------------------------------------------------------


def test_a_linked_sample_is_the_person_fhir_gives_the_same_mrn(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"run1.vcf": vcf_text()}), lake)
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": AUTHORITY,
                "value": "MRN-0000001",
            }
        ],
    }
    fhir_person = fhir.patient_aliases(
        pa.table({"resource_id": ["p1"], "raw": [json.dumps(patient)]}), key=KEY
    )["p1"]
    persons = {r["sample_key"]: r["person_key"] for r in staged_rows(lake)}
    assert {r["_prelink_key"] for r in staged_rows(lake)} == {None}  # set by a re-key, not by ingest
    assert persons[source_key(KEY, "vcf", "S1")] == fhir_person
    assert persons[source_key(KEY, "vcf", "S2")] == mrn_key(KEY, AUTHORITY, "MRN-0000002")
    control = source_key(KEY, "vcf", "CTRL")  # no ##SAMPLE MRN: its own pseudonym
    assert persons[control] == control
    text = json.dumps(staged_rows(lake), default=str)
    assert "MRN-000000" not in text and '"S1"' not in text and "CTRL" not in text


# --- malformed lines and files ----------------------------------------------------------------

GOOD = "chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT:DP:GQ\t0/1:3:20\t0/0:4:30\t0/0:5:40"


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (
            "chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT:DP:GQ\t0/1:3:20\t0/0:4:30",
            "parse.vcf_column_count",
        ),
        ("chr1 100 . A G 50 PASS DP=3 GT 0/1 0/0 0/0", "parse.vcf_column_count"),
        ("chr1\t1,234\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_pos"),
        ("chr1\tabc\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_pos"),
        ("\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_chrom"),
        ("chr1\t100\t.\tR\tG\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_ref"),
        ("chr1\t100\t.\tA\tA/G\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_alt"),
        ("chr1\t100\t.\tA\tA\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_alt"),
        ("chr1\t100\t.\tA\tG\thigh\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_qual"),
        ("chr1\t100\t.\tA\tG\t50\t\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_filter"),
        ("chr1\t100\t.\tA\tG\t50\tPASS\tDP=three\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_info"),
        ("chr1\t100\t.\tA\tG\t50\tPASS\t=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_bad_info"),
        ("chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tDP:GT\t3:0/1\t4:0/0\t5:0/0", "parse.vcf_bad_format"),
        (
            "chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT:DP\t0/1:3:99\t0/0:4\t0/0:5",
            "parse.vcf_format_mismatch",
        ),
        ("chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0/2\t0/0\t0/0", "parse.vcf_bad_genotype"),
        ("chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0-1\t0/0\t0/0", "parse.vcf_bad_genotype"),
        (
            "chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT:DP\t0/1:NA\t0/0:4\t0/0:5",
            "parse.vcf_bad_format_value",
        ),
        ("#chr1\t100\t.\tA\tG\t50\tPASS\tDP=3\tGT\t0/1\t0/0\t0/0", "parse.vcf_misplaced_header"),
    ],
)
def test_a_malformed_line_is_quarantined_with_its_rule_and_line_number(
    tmp_path: Path, line: str, rule: str
) -> None:
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(
        land(tmp_path, {"lab/bad.vcf": vcf_text([GOOD, line, GOOD.replace("100", "200")])}), lake
    )
    (quarantined,) = lake.read("quarantine").to_pylist()
    assert quarantined["rule_id"] == rule
    assert rule in vcf.LINE_RULES
    assert (quarantined["source_file"], quarantined["source_offset"]) == (
        "vcf/lab/bad.vcf",
        len(META) + 3,  # meta lines, #CHROM, the good line, then this one
    )
    assert quarantined["raw_record"] == line
    assert "vcf/lab/bad.vcf line" in quarantined["reason"] and "S1" not in quarantined["reason"]
    assert lake.read(BRONZE_VCF.name, columns=["_source_offset"]).column(0).to_pylist() == [
        len(META) + 2,
        len(META) + 4,
    ]
    records = ingested.entries[1]
    assert (records.records_in, records.records_out, records.quarantined) == (3, 2, 1)
    assert len(staged_rows(lake)) == 2 * 3
    assert staged.entries[0].records_in == 2


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (vcf_text(meta=META[1:]), "parse.vcf_no_fileformat"),
        (vcf_text(chrom="##no column line"), "parse.vcf_no_chrom_line"),
        (vcf_text(chrom=CHROM_LINE.replace("\t", " ")), "parse.vcf_bad_column_header"),
        (vcf_text(chrom=CHROM_LINE.replace("CTRL", "S1")), "parse.vcf_bad_column_header"),
        (vcf_text(chrom=CHROM_LINE.replace("FORMAT", "SAMPLES")), "parse.vcf_bad_column_header"),
        ("", "parse.vcf_no_fileformat"),
        (vcf_text().encode("utf-16"), "parse.vcf_bad_encoding"),
    ],
)
def test_a_broken_header_quarantines_the_whole_file_as_one_record(
    tmp_path: Path, content: str | bytes, rule: str
) -> None:
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(land(tmp_path, {"broken.vcf": content, "good.vcf": vcf_text()}), lake)
    (quarantined,) = lake.read("quarantine").to_pylist()
    assert (quarantined["rule_id"], quarantined["source_file"], quarantined["source_offset"]) == (
        rule,
        "vcf/broken.vcf",
        0,
    )
    assert rule in vcf.FILE_RULES
    headers, records = ingested.entries
    assert (headers.records_in, headers.records_out, headers.quarantined) == (2, 1, 1)
    assert records.records_in == len(LINES)  # only the readable file's lines are read
    files = set(lake.read(BRONZE_VCF.name, columns=["_source_file"]).column(0).to_pylist())
    assert files == {"vcf/good.vcf"}
    assert staged.entries[0].records_in == len(LINES)
    assert len(staged_rows(lake)) == 6 * 3


def test_a_vcf_gz_that_is_not_gzip_is_quarantined_whole(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"run.vcf.gz": vcf_text()}), lake)
    (quarantined,) = lake.read("quarantine").to_pylist()
    assert (quarantined["rule_id"], quarantined["source_offset"]) == ("parse.vcf_bad_gzip", 0)


def test_a_line_htslib_refuses_after_the_checks_is_quarantined_and_the_rest_read(
    tmp_path: Path,
) -> None:
    """The guard behind the Python checks: bronze rows that bypassed them (a line htslib rejects
    among good ones) are quarantined by line, not dropped, and the lines after it are still read."""
    header = vcf.parse_header([*META, CHROM_LINE], where="x.vcf")
    lines = [GOOD, GOOD.replace("100", "150").replace("0/1:3:20", "0/1:abc:20"), LINES[0]]
    records = pa.Table.from_pylist(
        [
            {
                "chrom": line.split("\t")[0],
                "pos": int(line.split("\t")[1]),
                "ref": line.split("\t")[3],
                "alt": line.split("\t")[4],
                "header_hash": header.hash,
                "raw": line,
                "_source_file": "x.vcf",
                "_source_offset": number,
                "_ingested_at": NOW,
                "_record_hash": vcf.record_hash(header.hash, line),
                "_run_id": "run-1",
            }
            for number, line in enumerate(lines, start=20)
        ],
        schema=BRONZE_VCF.schema,
    )
    headers = pa.table({"_record_hash": [header.hash], "raw": [header.text]})
    split, sites_only = vcf.variants_from_bronze(records, headers, key=KEY)
    (refused,) = split.quarantined.to_pylist()
    assert (refused["rule_id"], refused["source_offset"]) == (vcf.HTSLIB_RULE, 21)
    assert sorted(set(split.good.column("pos").to_pylist())) == [100, 11796321]
    assert sites_only == 0


# --- ledger, idempotence, partitions ---------------------------------------------------------

SITES_ONLY = "\n".join(
    [META[0], META[3], "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO", "chr1\t5\t.\tA\tG\t.\t.\t."]
)


def test_the_ledger_counts_lines_and_silver_rows_are_alleles_times_samples(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    ingested, staged = run(
        land(tmp_path, {"run1.vcf": vcf_text(), "sites.vcf": SITES_ONLY + "\n"}), lake
    )
    headers, records = ingested.entries
    assert (headers.records_in, headers.records_out) == (2, 2)
    assert (records.records_in, records.records_out) == (len(LINES) + 1, len(LINES) + 1)
    (silver,) = staged.entries
    assert (silver.records_in, silver.records_out, silver.bronze_only) == (
        len(LINES) + 1,
        len(LINES),
        1,
    )
    assert all(e.balanced for e in [*ingested.entries, *staged.entries])
    alleles = sum(
        max(1, len(line.split("\t")[4].split(","))) if line.split("\t")[4] != "." else 1
        for line in LINES
    )
    assert lake.count(staging_name(SILVER_VARIANTS.name)) == alleles * 3
    ledger_rows = lake.read("ledger").to_pylist()
    assert {(r["stage"], r["table_name"]) for r in ledger_rows} == {
        ("ingest", BRONZE_VCF.name),
        ("ingest", BRONZE_VCF_HEADERS.name),
        ("silver", SILVER_VARIANTS.name),
    }


def test_reingesting_a_file_adds_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    landing = land(
        tmp_path, {"run1.vcf": vcf_text([*LINES, "chr1\tx\t.\tA\tG\t.\t.\t.\tGT\t0\t0\t0"])}
    )
    run(landing, lake, "run-1")
    counts = {
        name: lake.count(name) for name in (BRONZE_VCF.name, BRONZE_VCF_HEADERS.name, "quarantine")
    }
    (landing / "vcf" / "copy.vcf").write_text(vcf_text())  # the same content under another name
    ingested, staged = run(landing, lake, "run-2")
    assert {name: lake.count(name) for name in counts} == counts
    headers, records = ingested.entries
    assert (headers.records_out, headers.merged) == (0, 2)
    assert (records.records_in, records.records_out, records.merged, records.quarantined) == (
        2 * len(LINES) + 1,
        0,
        2 * len(LINES),
        1,
    )
    assert staged.entries[0].records_in == 0
    assert staged_rows(lake) == []  # nothing new this run: staging overwritten empty


def test_silver_variants_are_partitioned_by_chromosome_on_disk(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"run1.vcf": vcf_text()}), lake)
    (entry,) = run_gate(lake, run_id="run-1", tables=[SILVER_VARIANTS.name])
    assert (entry.records_in, entry.records_out, entry.quarantined) == (18, 18, 0)
    folders = {p.name for p in lake.path(SILVER_VARIANTS.name).iterdir() if p.is_dir()}
    assert folders == {"_delta_log", "chrom=chr1", "chrom=chr7", "chrom=chrX"}
    assert lake.table(SILVER_VARIANTS.name).metadata().partition_columns == ["chrom"]
    chr7 = lake.read(SILVER_VARIANTS.name, where={"chrom": "chr7"})
    assert set(chr7.column("pos").to_pylist()) == {117559590, 117559700}


def test_gzip_members_are_read_like_bgzip(tmp_path: Path) -> None:
    """A .vcf.gz compressed with plain gzip (not bgzip) is still gzip: it is read."""
    lake = Lake(tmp_path / "lake")
    ingested, _ = run(land(tmp_path, {"run1.vcf.gz": gzip.compress(vcf_text().encode())}), lake)
    assert ingested.entries[1].records_out == len(LINES)


def test_the_shipped_suite_quarantines_a_row_with_a_malformed_genotype(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    run(land(tmp_path, {"run1.vcf": vcf_text()}), lake)
    rows = lake.read(staging_name(SILVER_VARIANTS.name))
    broken = rows.to_pylist()
    broken[0]["genotype"] = "0-1"  # a flattening bug, not a file defect: ingest checks GT
    result = validate(
        pa.Table.from_pylist(broken, schema=SILVER_VARIANTS.schema),
        suite_path(SILVER_VARIANTS.name),
        table_name=SILVER_VARIANTS.name,
    )
    (quarantined,) = result.split.quarantined.to_pylist()
    assert quarantined["rule_id"] == "gate.genotype_is_vcf_gt"
    assert quarantined["record_id"] == broken[0]["variant_key"]
    assert result.split.good.num_rows == rows.num_rows - 1


def test_staging_in_small_batches_gives_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, batched = Lake(tmp_path / "whole"), Lake(tmp_path / "batched")
    landing = land(
        tmp_path, {"run1.vcf": vcf_text([*LINES, "chr1\tx\t.\tA\tG\t.\t.\t.\tGT\t0\t0\t0"])}
    )
    _, one = run(landing, whole)
    monkeypatch.setattr(vcf, "ROWS_PER_BATCH", 6)  # 2 lines of 3 samples per batch
    _, many = run(landing, batched)
    assert (
        len(list(vcf.batches(batched.read(BRONZE_VCF.name), batched.read(BRONZE_VCF_HEADERS.name))))
        == 3
    )
    assert many.entries == one.entries
    assert sorted(staged_rows(batched), key=lambda r: r["variant_key"]) == sorted(
        staged_rows(whole), key=lambda r: r["variant_key"]
    )
    assert len(staged_rows(batched)) == 6 * 3
