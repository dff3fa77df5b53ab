"""The sample hospital's genomics lab: germline VCFs on GRCh38 for some of its patients.

Every fourth person (``index % 4 == 0``, see :func:`in_vcf`) was sequenced; a sample is named by
the lab's accession id (``GS-nnnnnn``) and linked to the patient by a ``##SAMPLE`` header line
carrying the primary record's MRN and the hospital's MRN system (the design
:mod:`medlake.jobs.ingest.vcf` reads). Layout under ``out/vcf/``:

- ``cohort/cohort_<nn>.vcf.gz``: multi-sample VCFs of :data:`COHORT_SIZE` patients each (people
  with ``index % 8 == 0``) plus the lab's positive control ``NA12878``, which has no MRN; bgzipped
  by htslib (cyvcf2 ``Writer`` mode ``wz``). Every site, every sample: hom-ref calls, no-calls
  (``./.``), phased calls, haploid chrX calls for men.
- ``single/<accession>.vcf``: single-sample plain VCFs of the others (``index % 8 == 4``),
  listing the sites where the patient carries an ALT allele or was not called.

Sites are real GRCh38 contigs and positions: six well-known clinical variants with their dbSNP
ids (APOE ε4/ε2, HFE C282Y, MTHFR C677T, factor V Leiden, CFTR F508del) and further SNVs,
insertions, deletions and multi-allelic sites drawn inside the same genes. Reference bases of the
drawn sites are invented (no reference genome is bundled), so only the known sites match GRCh38.

Once the hospital has :data:`~medlake.sample.people.MIN_POPULATION_FOR_MESS` people, the first
single-sample file gets one malformed line of each kind in :data:`DEFECT_RULES` and one more
single-sample file arrives with a truncated header (no ``#CHROM`` line); each is recorded in the
truth file's ``malformed`` list. ``vcf_samples`` records every sample with its MRN (null for the
control) and the silver rows it must produce (max(1, ALT alleles) per valid line).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medlake.sample.people import Hospital, Person, plants_every_kind
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import MRN_SYSTEM

VCF = "vcf"
COHORT_SIZE = 8
CONTROL = "NA12878"
ACCESSION_STRIDE = 7919  # prime, so accession ids of distinct people never collide below 10**6
CONTIGS = {
    "chr1": 248956422,
    "chr6": 170805979,
    "chr7": 159345973,
    "chr17": 83257441,
    "chr19": 58617616,
    "chrX": 156040895,
}
#: genes (GRCh38 chrom, start, end) the drawn sites fall in
GENES = {
    "MTHFR": ("chr1", 11785723, 11806455),
    "F5": ("chr1", 169511878, 169586630),
    "HFE": ("chr6", 26087281, 26098343),
    "CFTR": ("chr7", 117480025, 117668665),
    "BRCA1": ("chr17", 43044295, 43125483),
    "TP53": ("chr17", 7661779, 7687538),
    "APOE": ("chr19", 44905796, 44909393),
    "LDLR": ("chr19", 11089462, 11133820),
    "DMD": ("chrX", 31097677, 33339441),
}
#: well-known clinical variants: chrom, pos, dbSNP id, REF, ALT (GRCh38)
KNOWN_SITES = (
    ("chr1", 11796321, "rs1801133", "G", "A"),  # MTHFR C677T
    ("chr1", 169549811, "rs6025", "C", "T"),  # factor V Leiden
    ("chr6", 26092913, "rs1800562", "G", "A"),  # HFE C282Y
    ("chr7", 117559590, "rs113993960", "ATCT", "A"),  # CFTR F508del
    ("chr19", 44908684, "rs429358", "T", "C"),  # APOE ε4
    ("chr19", 44908822, "rs7412", "C", "T"),  # APOE ε2
)
DRAWN_SITES = 34
#: every planted defect kind: the rule ingest quarantines it under and the truth file's reason
DEFECT_RULES: dict[str, tuple[str, str]] = {
    "column_count": ("parse.vcf_column_count", "the sample column was cut off"),
    "bad_pos": ("parse.vcf_bad_pos", "POS written with a thousands separator"),
    "bad_ref": ("parse.vcf_bad_ref", "REF is an IUPAC ambiguity code"),
    "bad_alt": ("parse.vcf_bad_alt", "ALT written as REF/ALT"),
    "format_mismatch": ("parse.vcf_format_mismatch", "a sample has one value more than FORMAT"),
    "bad_genotype": ("parse.vcf_bad_genotype", "GT names allele 2 on a line with one ALT"),
    "bad_format_value": ("parse.vcf_bad_format_value", "DP is NA, not an Integer"),
    "no_chrom_line": ("parse.vcf_no_chrom_line", "the header was truncated before #CHROM"),
}
HEADER = (
    "##fileformat=VCFv4.2",
    '##FILTER=<ID=PASS,Description="All filters passed">',
    '##FILTER=<ID=LowQual,Description="QUAL below 30">',
    "##source=SampleHospitalGenomicsLab-GATK4.5",
    "##reference=GRCh38",
    *(f"##contig=<ID={name},length={length}>" for name, length in CONTIGS.items()),
    '##INFO=<ID=AC,Number=A,Type=Integer,Description="Allele count in genotypes">',
    '##INFO=<ID=AN,Number=1,Type=Integer,Description="Total number of alleles called">',
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
    '##INFO=<ID=DP,Number=1,Type=Integer,Description="Combined depth">',
    '##INFO=<ID=DB,Number=0,Type=Flag,Description="In dbSNP">',
    '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene symbol">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">',
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
)


@dataclass(frozen=True)
class Site:
    """A variant site: where, its dbSNP id (or '.'), the bases, and the gene it lies in."""

    chrom: str
    pos: int
    id: str
    ref: str
    alts: tuple[str, ...]
    gene: str


@dataclass(frozen=True)
class Sample:
    """A sequenced sample: accession id, the patient's MRN (None for the control), haploid X."""

    id: str
    mrn: str | None
    haploid_x: bool


def in_vcf(index: int) -> bool:
    """Whether person `index` was sequenced."""
    return index % 4 == 0


def in_cohort(index: int) -> bool:
    """Whether person `index`'s sample went into a multi-sample cohort file."""
    return index % 8 == 0


def accession(hospital: Hospital, index: int) -> str:
    """The lab's accession id of person `index`'s sample."""
    return f"GS-{(index * ACCESSION_STRIDE + hospital.seed) % 10**6:06d}"


def write_vcf(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write the lab's VCFs under `out/vcf/` and record them in `truth`."""
    sites = draw_sites(hospital.rng(VCF, "sites"))
    cohort: list[tuple[Sample, random.Random]] = []
    single: list[Person] = []
    for person in hospital.people():
        if not in_vcf(person.index):
            continue
        if in_cohort(person.index):
            cohort.append((sample_of(hospital, person), hospital.rng(VCF, person.index)))
        else:
            single.append(person)
    for number in range(0, len(cohort), COHORT_SIZE):
        members = cohort[number : number + COHORT_SIZE]
        control = (Sample(CONTROL, None, haploid_x=False), hospital.rng(VCF, "control", number))
        write_cohort(
            out,
            f"{VCF}/cohort/cohort_{number // COHORT_SIZE:02d}.vcf.gz",
            [*members, control],
            sites,
            truth,
        )
    plant = plants_every_kind(hospital.patients)
    for position, person in enumerate(single):
        sample = sample_of(hospital, person)
        defects = (
            tuple(k for k in DEFECT_RULES if k != "no_chrom_line")
            if plant and position == 0
            else ()
        )
        write_single(out, sample, hospital.rng(VCF, person.index), sites, truth, defects=defects)
    if plant and single:
        write_truncated(
            out, sample_of(hospital, single[-1]), hospital.rng(VCF, "truncated"), sites, truth
        )


def sample_of(hospital: Hospital, person: Person) -> Sample:
    registration = person.chart.registration
    return Sample(
        accession(hospital, person.index), registration.mrn, registration.gender == "male"
    )


def draw_sites(rng: random.Random) -> list[Site]:
    """The known sites and DRAWN_SITES more in the genes: SNVs, insertions, deletions, multi-allelic."""
    sites = [
        Site(chrom, pos, rsid, ref, (alt,), gene_at(chrom, pos))
        for chrom, pos, rsid, ref, alt in KNOWN_SITES
    ]
    genes = sorted(GENES)
    for _ in range(DRAWN_SITES):
        gene = rng.choice(genes)
        chrom, start, end = GENES[gene]
        pos = rng.randint(start, end)
        ref = rng.choice("ACGT")
        kind = rng.choices(("snv", "insertion", "deletion", "multi"), (60, 15, 15, 10))[0]
        if kind == "snv":
            alts: tuple[str, ...] = (rng.choice([b for b in "ACGT" if b != ref]),)
        elif kind == "insertion":
            alts = (ref + "".join(rng.choice("ACGT") for _ in range(rng.randint(1, 6))),)
        elif kind == "deletion":
            ref += "".join(rng.choice("ACGT") for _ in range(rng.randint(1, 5)))
            alts = (ref[0],)
        else:
            alts = tuple(rng.sample([b for b in "ACGT" if b != ref], 2))
        sites.append(Site(chrom, pos, ".", ref, alts, gene))
    unique = {(s.chrom, s.pos): s for s in sites}  # one record per position
    order = list(CONTIGS)
    return sorted(unique.values(), key=lambda s: (order.index(s.chrom), s.pos))


def gene_at(chrom: str, pos: int) -> str:
    return next(g for g, (c, start, end) in GENES.items() if c == chrom and start <= pos <= end)


@dataclass(frozen=True)
class Call:
    """One sample's call at one site."""

    alleles: tuple[int | None, ...]  # None: not called
    phased: bool
    depth: int
    quality: int

    @property
    def gt(self) -> str:
        sep = "|" if self.phased else "/"
        return sep.join("." if a is None else str(a) for a in self.alleles)

    def fields(self, alts: int) -> str:
        if all(a is None for a in self.alleles):
            return f"{self.gt}:.:.:."
        counts = [sum(1 for a in self.alleles if a == i) for i in range(alts + 1)]
        share = max(1, sum(counts))
        depths = [self.depth * c // share for c in counts]
        return f"{self.gt}:{','.join(map(str, depths))}:{self.depth}:{self.quality}"


def call(rng: random.Random, site: Site, *, haploid: bool) -> Call:
    """A genotype: mostly hom-ref, some het and hom-alt, a few no-calls, some phased."""
    ploidy = 1 if haploid and site.chrom == "chrX" else 2
    depth, quality = rng.randint(8, 60), rng.randint(5, 99)
    if rng.random() < 0.06:
        return Call((None,) * ploidy, False, depth, quality)
    weights = [70] + [30 // len(site.alts)] * len(site.alts)
    alleles = tuple(rng.choices(range(len(site.alts) + 1), weights)[0] for _ in range(ploidy))
    phased = ploidy == 2 and rng.random() < 0.2
    return Call(tuple(sorted(alleles)) if not phased else alleles, phased, depth, quality)


def line(site: Site, calls: list[Call]) -> str:
    """A data line for the calls of every sample at a site."""
    called = [a for c in calls for a in c.alleles if a is not None]
    counts = [called.count(i) for i in range(1, len(site.alts) + 1)]
    an = len(called)
    freqs = ",".join(f"{c / an:.3g}" if an else "0" for c in counts)
    depth = sum(c.depth for c in calls)
    qual = max((c.quality for c in calls if any(a for a in c.alleles if a)), default=0) * 3
    info = f"AC={','.join(map(str, counts))};AN={an};AF={freqs};DP={depth}"
    info += ";DB" if site.id != "." else ""
    info += f";GENE={site.gene}"
    columns = [
        site.chrom,
        str(site.pos),
        site.id,
        site.ref,
        ",".join(site.alts),
        str(qual) if qual else ".",
        "PASS" if qual >= 30 else "LowQual",
        info,
        "GT:AD:DP:GQ",
    ]
    return "\t".join(columns + [c.fields(len(site.alts)) for c in calls])


def header(samples: list[Sample]) -> list[str]:
    """Header lines, ##SAMPLE links for the samples with an MRN, and the #CHROM line."""
    links = [
        f"##SAMPLE=<ID={s.id},MRN={s.mrn},MRNAuthority={MRN_SYSTEM}>" for s in samples if s.mrn
    ]
    columns = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT"
    return [*HEADER, *links, "\t".join([columns, *(s.id for s in samples)])]


def _record_sample(truth: Truth, name: str, sample: Sample, rows: int) -> None:
    truth.add("vcf_samples", Where(name, 0), sample=sample.id, mrn=sample.mrn, genotype_rows=rows)
    if sample.mrn:
        truth.phi["mrns"].add(sample.mrn)


def write_cohort(
    out: Path,
    name: str,
    members: list[tuple[Sample, random.Random]],
    sites: list[Site],
    truth: Truth,
) -> None:
    """A bgzipped multi-sample VCF, written through htslib."""
    from cyvcf2 import Writer

    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [sample for sample, _ in members]
    writer = Writer.from_string(str(path), "\n".join(header(samples)) + "\n", mode="wz")
    for site in sites:
        calls = [call(rng, site, haploid=sample.haploid_x) for sample, rng in members]
        writer.write_record(writer.variant_from_string(line(site, calls)))
    writer.close()
    truth.file_read(f"{VCF}/cohort", len(sites) + 1)
    rows = sum(max(1, len(s.alts)) for s in sites)
    for sample in samples:
        _record_sample(truth, name, sample, rows)


def write_single(
    out: Path,
    sample: Sample,
    rng: random.Random,
    sites: list[Site],
    truth: Truth,
    *,
    defects: tuple[str, ...] = (),
) -> None:
    """A plain single-sample VCF of the sites where the sample carries an ALT or was not called;
    `defects` are planted one per line, from the second data line on."""
    name = f"{VCF}/single/{sample.id}.vcf"
    head = header([sample])
    lines: list[str] = []
    rows = 0
    for site in sites:
        c = call(rng, site, haploid=sample.haploid_x)
        if not any(c.alleles) and None not in c.alleles:
            continue  # hom-ref: a single-sample caller does not list it
        lines.append(line(site, [c]))
        rows += max(1, len(site.alts))
    planted: list[int] = []
    for kind in defects:
        for number in range(1, len(lines)):
            if number not in planted and PLANTERS[kind](lines, number):
                planted.append(number)
                truth.malformed(Where(name, len(head) + number + 1), *DEFECT_RULES[kind])
                rows -= max(1, len(lines[number].split("\t")[4].split(",")))
                lines[number] = _planted(lines[number], kind)
                break
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*head, *lines]) + "\n", encoding="utf-8")
    truth.file_read(f"{VCF}/single", len(lines) + 1)
    _record_sample(truth, name, sample, rows)


def write_truncated(
    out: Path, sample: Sample, rng: random.Random, sites: list[Site], truth: Truth
) -> None:
    """A single-sample VCF whose header lost its #CHROM line: quarantined whole."""
    name = f"{VCF}/single/{sample.id}_rerun.vcf"
    calls = [call(rng, site, haploid=sample.haploid_x) for site in sites[:5]]
    lines = [line(site, [c]) for site, c in zip(sites, calls, strict=False)]
    (out / name).write_text("\n".join([*header([sample])[:-1], *lines]) + "\n", encoding="utf-8")
    truth.file_read(f"{VCF}/single", 1)
    truth.malformed(Where(name, 0), *DEFECT_RULES["no_chrom_line"])


def _planted(text: str, kind: str) -> str:
    cols = text.split("\t")
    if kind == "column_count":
        cols = cols[:-1]
    elif kind == "bad_pos":
        cols[1] = f"{int(cols[1]):,}"
    elif kind == "bad_ref":
        cols[3] = "R" + cols[3][1:]
    elif kind == "bad_alt":
        cols[4] = f"{cols[3]}/{cols[4]}"
    elif kind == "format_mismatch":
        cols[9] += ":0"
    elif kind == "bad_genotype":
        cols[9] = "0/2" + cols[9][3:]
    elif kind == "bad_format_value":
        parts = cols[9].split(":")
        cols[9] = ":".join([*parts[:2], "NA", *parts[3:]])
    return "\t".join(cols)


def _fits_any(lines: list[str], number: int) -> bool:
    return True


def _biallelic_diploid(lines: list[str], number: int) -> bool:
    cols = lines[number].split("\t")
    return (
        "," not in cols[4] and len(cols[9].split(":")[0]) == 3 and "." not in cols[9].split(":")[0]
    )


def _large_pos(lines: list[str], number: int) -> bool:
    return int(lines[number].split("\t")[1]) >= 1000


#: which line can carry each defect kind
PLANTERS: dict[str, Callable[[list[str], int], bool]] = {
    "column_count": _fits_any,
    "bad_pos": _large_pos,
    "bad_ref": _fits_any,
    "bad_alt": _fits_any,
    "format_mismatch": _fits_any,
    "bad_genotype": _biallelic_diploid,
    "bad_format_value": _biallelic_diploid,
}
