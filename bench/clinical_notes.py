"""A generator of ICU nursing and clinical-note style text with planted, labelled PHI.

Written once to measure ``governance.text_deid`` on text shaped like real notes (upper-case
notes, telegraphic lines, abbreviations, lower-case names, dates without a year, pagers and
extensions, record numbers with letters and hyphens, hospital acronyms, towns) and on the
clinical shorthand a de-identifier must leave alone ("CV:", "Neuro", "abd", "Foley",
"5 FiO2 40", clock times "1800", all-caps findings). Every planted value is a labelled span.

Three sets, never mixed:

- **dev** (:data:`DEV_SEED`): what a developer may read while writing recognizers;
- **held-out** (:data:`HELD_OUT_SEED`): never read, never tuned on. Its names, surnames, towns
  and hospitals are the other half of every value list (split by a hash of the value, so the
  held-out set plants values the dev set never shows), and it draws from its own seed.
- **held-out 2** (:data:`HELD_OUT_2_SEED`, built after the first held-out set was used up):
  never read, never tuned on. Its names and towns come from another source, ``mimesis``'s
  English data (``bench/data/held_out_2_values.json``, :mod:`build_held_out_2`), with every
  Synthea value removed; its hospitals are made from those surnames and towns. A planted name
  with a word the recognizers' name lists do not hold is labelled ``PERSON_UNLISTED``.
- **dev 2** (:data:`DEV_2_SEED`): read and tuned on, like dev, with values of the same kind as
  held-out 2 (mimesis's other European locales, ``bench/data/dev_2_values.json``, less every
  held-out 2 value), so the unlisted names' misses can be studied without reading held-out 2.

- **dev 3 / held-out 3** (:func:`generate_kinds`): documents of seven other kinds (discharge
  summaries, radiology and pathology reports, ED triage in capitals, portal messages, consult
  letters, clinician questions), written once; values from held-out 2's lists split in halves
  by hash. Held-out 3 is never read, never tuned on.

The values come from the corpus' Synthea records (patients', practitioners' names, towns,
organisations; digits stripped) and from the short lists below (common-word first names, the
failure cases of issue 16); the note lines are this module's templates. Nothing here is
imported by production code: it is a benchmark tool.

    .venv/bin/python bench/clinical_notes.py --set dev --n 3     # print three dev notes
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"

DEV_SEED = 20261207
HELD_OUT_SEED = 91173
HELD_OUT_2_SEED = 640297
DEV_2_SEED = 318844
NOTES_PER_SET = 400
DATA = Path(__file__).resolve().parent / "data"

Split = Literal["dev", "held_out", "held_out_2", "dev_2"]
SEEDS: dict[str, int] = {
    "dev": DEV_SEED,
    "held_out": HELD_OUT_SEED,
    "held_out_2": HELD_OUT_2_SEED,
    "dev_2": DEV_2_SEED,
}
#: The sets whose values come from ``bench/data/<set>_values.json`` (not from Synthea).
OTHER_SOURCE = ("held_out_2", "dev_2")

#: Gold types: what a planted value is.
#: A planted name with a word no name list of the recognizers holds (held-out 2 only).
UNLISTED_NAME = "PERSON_UNLISTED"
NAME, DATE, PHONE, ID, HOSPITAL, LOCATION, ADDRESS, AGE = (
    "PERSON",
    "DATE",
    "PHONE",
    "RECORD_ID",
    "HOSPITAL",
    "LOCATION",
    "STREET_ADDRESS",
    "AGE_OVER_89",
)

#: First names that are also common English words ("son bill called").
WORD_FIRST_NAMES = [
    "Bill",
    "Will",
    "Rose",
    "Mark",
    "Grace",
    "Hope",
    "Art",
    "Bob",
    "June",
    "Faith",
    "Joy",
    "Dawn",
    "Ray",
    "Jack",
    "Frank",
    "Sue",
    "Pat",
    "Ruby",
    "Holly",
    "Amber",
    "Jean",
    "Gene",
    "Buck",
    "Sandy",
    "Rusty",
    "Penny",
    "Earl",
    "Glen",
    "Dale",
    "Lane",
    "Drew",
    "Chase",
    "Grant",
    "Wade",
]
#: Lower-case kin words a nurse writes before a name.
KIN = ("son", "daughter", "wife", "husband", "brother", "sister", "niece", "nephew", "friend")
STREETS = ("Main St", "Elm Street", "Oak Ave", "Maple Rd", "Pleasant St", "Highland Ave", "Park Dr")


@dataclass
class Note:
    """One generated note and its gold PHI spans (start, end, type) into ``text``."""

    id: str
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# value lists, from the corpus' Synthea records


@cache
def _synthea_values() -> dict[str, list[str]]:
    """First names, surnames, towns and organisation names of the corpus' Synthea records."""
    first: set[str] = set()
    last: set[str] = set()
    towns: set[str] = set()
    orgs: set[str] = set()
    fhir = CORPUS / "fhir"
    for path in glob.glob(str(fhir / "synthea_*" / "*.ndjson")):
        kind = Path(path).name.split(".")[0]
        if kind not in ("Patient", "Practitioner", "Organization"):
            continue
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            res = json.loads(line)
            for name in res.get("name") if kind != "Organization" else []:
                first.update(re.sub(r"\d", "", g) for g in name.get("given") or [])
                if name.get("family"):
                    last.add(re.sub(r"\d", "", name["family"]))
            for address in res.get("address") or []:
                if address.get("city"):
                    towns.add(address["city"].title())
            if kind == "Organization" and isinstance(res.get("name"), str):
                orgs.add(res["name"])
    clean = lambda values: sorted(v for v in values if re.fullmatch(r"[A-Za-z' .-]{2,}", v))
    return {
        "first": clean(first) + WORD_FIRST_NAMES,
        "last": clean(last),
        "town": clean(towns),
        "org": sorted(orgs),
    }


def _half(values: list[str], split: Split) -> list[str]:
    """The half of ``values`` a split may use (by a hash of the value: stable, disjoint)."""
    want = 0 if split == "dev" else 1
    return [v for v in values if hashlib.sha256(v.encode()).digest()[0] % 2 == want]


def _hospital_names(orgs: list[str]) -> list[str]:
    """Care-site names from organisation names, legal suffixes dropped, title-cased."""
    out = []
    for org in orgs:
        name = re.sub(r",?\s+(INC\.?|LLC|PA|P\.A\.)$", "", org.strip(), flags=re.IGNORECASE)
        if 2 <= len(name.split()) <= 6:
            out.append(name.title())
    return out


@cache
def _values(split: Split) -> dict[str, list[str]]:
    """A set's value lists from another source (``bench/data/<split>_values.json``)."""
    values: dict[str, list[str]] = json.loads(
        (DATA / f"{split}_values.json").read_text(encoding="utf-8")
    )
    return values


def _made_hospitals(values: dict[str, list[str]], seed: int, n: int = 300) -> list[str]:
    """``n`` care-site names made from the set's surnames and towns (its own seeded draw)."""
    rng = random.Random(seed + 1)
    return sorted(
        {
            rng.choice(values["site_forms"]).format(
                first=rng.choice(values["first"]),
                last=rng.choice(values["last"]),
                town=rng.choice(values["town"]),
            )
            for _ in range(n)
        }
    )


def _unlisted(value: str, split: Split) -> bool:
    """Whether a planted name has a word the recognizers' name lists do not hold."""
    values = _values(split)
    unlisted = {v.casefold() for v in values["unlisted_first"] + values["unlisted_last"]}
    return any(w.casefold() in unlisted for w in re.findall(r"[A-Za-z'-]+", value))


def _acronym(name: str) -> str:
    """ "Hutchinson Regional Medical Center" -> "HRMC"."""
    return "".join(w[0] for w in name.split() if w[0].isalpha() and w.lower() not in ("of", "and"))


# ---------------------------------------------------------------------------------------------
# slot fillers: each returns the planted value


class Slots:
    """Random PHI values of one split."""

    def __init__(self, rng: random.Random, split: Split) -> None:
        self.rng = rng
        if split in OTHER_SOURCE:
            values = _values(split)
            self.first, self.last, self.town = values["first"], values["last"], values["town"]
            self.hospital = _made_hospitals(values, SEEDS[split])
            return
        values = _synthea_values()
        self.first = _half(values["first"], split)
        self.last = _half(values["last"], split)
        self.town = _half(values["town"], split)
        self.hospital = _half(_hospital_names(values["org"]), split)

    def pick(self, items: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(items)

    def full_name(self) -> str:
        return f"{self.pick(self.first)} {self.pick(self.last)}"

    def date(self) -> str:
        r = self.rng
        m, d, y = r.randint(1, 12), r.randint(1, 28), r.randint(1990, 2025)
        month = [
            "Jan",
            "Feb",
            "Mar",
            "Apr",
            "May",
            "Jun",
            "Jul",
            "Aug",
            "Sep",
            "Oct",
            "Nov",
            "Dec",
        ][m - 1]
        full = ["January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December"][m - 1]  # fmt: skip
        return r.choice(
            [
                f"{m}/{d}",
                f"{m}/{d}",
                f"{m:02d}/{d:02d}",
                f"{m}-{d}",
                f"{m}/{d}/{y % 100:02d}",
                f"{m}/{d}/{y}",
                f"{y}-{m:02d}-{d:02d}",
                f"{full} {d}",
                f"{month} {d}",
                f"{d}-{month}",
                f"{month} {d}, {y}",
                f"{d} {month} {y}",
                f"{month}-{y}",
            ]
        )

    def year2(self) -> str:
        return f"'{self.rng.randint(0, 99):02d}"

    def phone(self) -> str:
        r = self.rng
        a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        return r.choice(
            [
                f"({a}) {b}-{c:04d}",
                f"{a}-{b}-{c:04d}",
                f"{a} {b} {c:04d}",
                f"{a}.{b}.{c:04d}",
                f"{a}-{b}-{c:04d} x{r.randint(100, 9999)}",
                f"{b}-{c:04d}",
            ]
        )

    def pager(self) -> str:
        r = self.rng
        return r.choice(
            [f"{r.randint(10000, 99999)}", f"{r.randint(1000, 9999)}", f"#{r.randint(1000, 99999)}"]
        )

    def extension(self) -> str:
        r = self.rng
        return r.choice(
            [
                f"{r.randint(1, 9)}-{r.randint(1000, 9999)}",
                f"{r.randint(10000, 99999)}",
                f"{r.randint(1000, 9999)}",
            ]
        )

    def record_number(self) -> str:
        r = self.rng
        letters = "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(r.randint(1, 3)))
        return r.choice(
            [
                f"{r.randint(1000000, 99999999)}",
                f"{letters}{r.randint(100000, 9999999)}",
                f"{letters}-{r.randint(100000, 999999)}",
                f"{r.randint(10, 99)}-{r.randint(100, 999)}-{r.randint(10, 99)}",
                f"{r.randint(100, 999)}-{r.randint(10, 99)}-{r.randint(10, 99)}-{r.randint(0, 9)}",
                f"{letters}{r.randint(10, 99)}-{r.randint(1000, 9999)}",
            ]
        )

    def street(self) -> str:
        return f"{self.rng.randint(2, 998)} {self.pick(STREETS)}"


# ---------------------------------------------------------------------------------------------
# templates: a line is a list of literal strings and (type, filler) slots

Piece = str | tuple[str, Callable[[Slots], str]]


def _lines(s: Slots) -> list[list[Piece]]:
    """Every line template, with PHI slots bound to ``s``'s fillers."""
    last = lambda x: x.pick(x.last)
    first = lambda x: x.pick(x.first)
    lower_last = lambda x: x.pick(x.last).lower()
    lower_first = lambda x: x.pick(x.first).lower()
    kin = s.pick(KIN)
    return [
        ["Pt seen by Dr. ", (NAME, last), " this am, aware of K 3.2, repleted."],
        ["dr ", (NAME, lower_last), " paged re: hypotension, pager ", (PHONE, Slots.pager), "."],
        [f"pt's {kin} ", (NAME, lower_first), " called at 1800, updated on plan of care."],
        [f"{kin} ", (NAME, first), " at bedside, very supportive."],
        [
            "Admitted ",
            (DATE, Slots.date),
            " from ",
            (HOSPITAL, lambda x: _acronym(x.pick(x.hospital))),
            " ED w/ SOB.",
        ],
        ["Hx: CABG in ", (DATE, Slots.year2), ", DM2, HTN, CKD III."],
        [
            "transferred from ",
            (HOSPITAL, lambda x: x.pick(x.hospital)),
            " on ",
            (DATE, Slots.date),
            ".",
        ],
        ["MRN: ", (ID, Slots.record_number)],
        ["Unit No: ", (ID, Slots.record_number), "   Acct #: ", (ID, Slots.record_number)],
        [
            "MR# ",
            (ID, Slots.record_number),
            " / ",
            (NAME, lambda x: f"{x.pick(x.last)}, {x.pick(x.first)}"),
        ],
        ["Family: ", (NAME, Slots.full_name), " (", kin, ") cell ", (PHONE, Slots.phone), "."],
        ["for questions call RN ", (NAME, first), " at ext. ", (PHONE, Slots.extension), "."],
        ["call ", (PHONE, Slots.phone), " w/ results."],
        [
            "pt lives in ",
            (LOCATION, lambda x: x.pick(x.town)),
            " w/ ",
            kin,
            ", independent at baseline.",
        ],
        ["lives at ", (ADDRESS, Slots.street), ", ", (LOCATION, lambda x: x.pick(x.town)), "."],
        ["f/u w/ PCP Dr ", (NAME, Slots.full_name), " on ", (DATE, Slots.date), "."],
        ["Last BM ", (DATE, Slots.date), ". Plan to rpt lytes in am."],
        [
            "s/p lap chole ",
            (DATE, Slots.date),
            " at ",
            (HOSPITAL, lambda x: x.pick(x.hospital)),
            ".",
        ],
        ["Discussed w/ ", (NAME, Slots.full_name), ", MD (cardiology fellow)."],
        ["Reviewed with attending ", (NAME, lower_first), " ", (NAME, lower_last), "."],
        ["Pt is a ", (AGE, lambda x: str(x.rng.randint(90, 104))), " yo female w/ dementia."],
        [(NAME, Slots.full_name), " RN"],
        [
            "Signed: ",
            (NAME, lambda x: f"{x.pick(x.first)[0]}. {x.pick(x.last)}"),
            ", NP  pgr ",
            (PHONE, Slots.pager),
        ],
        [
            "Seen in ",
            (LOCATION, lambda x: x.pick(x.town)),
            " clinic ",
            (DATE, Slots.date),
            " for same.",
        ],
    ]


#: Clinical lines with no PHI: what must survive (shorthand, clock times, all-caps findings).
CLINICAL = [
    "Neuro: A&Ox3, MAE, PERRLA 3mm brisk. No sedation.",
    "CV: NSR 70s-80s, no ectopy. SBP 100-120s. +2 pulses x4.",
    "Resp: on 5 FiO2 40, LS clear/dim bases. Sx for small amts thick tan sputum.",
    "GI: abd soft, NT/ND, +BS. TF at goal 60cc/hr. Last BM today.",
    "GU: Foley draining clear yellow urine 40-60cc/hr.",
    "ID: Tmax 101.2, pan cx sent at 0400. On vanc/zosyn.",
    "Skin: intact, turned q2h. Heels offloaded.",
    "Endo: FS 140s-180s, covered per RISS.",
    "Heme: Hct 28.1 stable, no s/s bleeding. Heparin sq.",
    "Social: pt full code. Plan to call HCP w/ any changes.",
    "CXR: NO ACUTE CARDIOPULMONARY PROCESS. ETT 4 CM ABOVE CARINA.",
    "IMPRESSION: LEFT LOWER LOBE CONSOLIDATION, SMALL LEFT PLEURAL EFFUSION.",
    "CT HEAD: NO ACUTE INTRACRANIAL HEMORRHAGE.",
    "Vent: AC 500 x 14, PEEP 5, FiO2 40%. ABG 7.38/40/90.",
    "Pain 3/10, medicated w/ morphine 2mg IV at 1400 w/ good effect.",
    "K 3.8, Mg 2.1, Phos 3.0. Lytes repleted per sliding scale.",
    "Gtts: levophed 0.05 mcg/kg/min, weaned off at 2200.",
    "Access: R IJ TLC, L radial A-line, PIV x2.",
    "NPO after MN for IR procedure, consent on chart.",
    "SBT this am, RSBI 45, tolerated 30 min. Plan extubation.",
    "Activity: OOB to chair w/ PT, tolerated well.",
    "Plan: cont abx, wean vent as tol, monitor UO, rpt CBC/BMP in am.",
    "A/P: 68M w/ CHF exac, diuresing well. Cont lasix 40 IV BID.",
    "ROS: neg for CP, SOB, N/V/D. Pt denies pain.",
    "MICU nursing progress note 0700-1900.",
    "Code status: DNR/DNI, confirmed w/ HCP.",
    "WBC 14.2 (up from 11), lactate 2.1. Blood cx pending.",
    "Echo: EF 35%, mod MR, no effusion.",
]


def _render(
    pieces: list[Piece], s: Slots, text: list[str], spans: list[tuple[int, int, str]], pos: int
) -> int:
    for piece in pieces:
        if isinstance(piece, str):
            value = piece
        else:
            kind, fill = piece
            value = fill(s)
            spans.append((pos, pos + len(value), kind))
        text.append(value)
        pos += len(value)
    return pos


def generate(split: Split, n: int = NOTES_PER_SET) -> list[Note]:
    """``n`` notes of ``split``: seeded, so the same notes on every run."""
    rng = random.Random(SEEDS[split])
    slots = Slots(rng, split)
    notes: list[Note] = []
    for index in range(n):
        lines: list[list[Piece]] = []
        with_phi = rng.random() < 0.8  # a fifth of the notes hold no PHI at all
        for _ in range(rng.randint(4, 12)):
            if with_phi and rng.random() < 0.4:
                lines.append(rng.choice(_lines(slots)))
            else:
                lines.append([rng.choice(CLINICAL)])
        text: list[str] = []
        spans: list[tuple[int, int, str]] = []
        pos = 0
        sep = rng.choice(["\n", "\n", " ", "  "])  # telegraphic run-on notes too
        for i, line in enumerate(lines):
            if i:
                text.append(sep)
                pos += len(sep)
            pos = _render(line, slots, text, spans, pos)
        body = "".join(text)
        case = rng.random()
        if case < 0.3 and len(body.upper()) == len(body):
            body = body.upper()
        elif case < 0.45 and len(body.lower()) == len(body):
            body = body.lower()
        if split in OTHER_SOURCE:
            spans = [
                (a, b, UNLISTED_NAME if kind == NAME and _unlisted(body[a:b], split) else kind)
                for a, b, kind in spans
            ]
        notes.append(Note(id=f"{split}-{index:04d}", text=body, spans=spans))
    return notes


# ---------------------------------------------------------------------------------------------
# documents of other kinds: dev 3 and held-out 3


#: Seeds of the documents of other kinds (discharge summaries, radiology, pathology, triage,
#: portal messages, consult letters, clinician questions).
DEV_3_SEED = 552019
HELD_OUT_3_SEED = 806623
KINDS_SEEDS: dict[str, int] = {"dev_3": DEV_3_SEED, "held_out_3": HELD_OUT_3_SEED}
#: Where the documents' values come from: held-out 2's mimesis English lists, halved by hash.
KINDS_VALUES = "held_out_2"


class DocSlots(Slots):
    """The values of one document: a patient, clinicians, a relative, sites and a town, each
    drawn once so that a document names the same people throughout, as a real one does."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        values = _values(KINDS_VALUES)
        want = "dev" if split == "dev_3" else "held_out"
        self.first = _half(values["first"], want)  # type: ignore[arg-type]
        self.last = _half(values["last"], want)  # type: ignore[arg-type]
        self.town = _half(values["town"], want)  # type: ignore[arg-type]
        self.hospital = _half(_made_hospitals(values, KINDS_SEEDS[split], 400), want)  # type: ignore[arg-type]

    def person(self) -> tuple[str, str]:
        return self.pick(self.first), self.pick(self.last)

    def long_date(self) -> str:
        r = self.rng
        m, d, y = r.randint(1, 12), r.randint(1, 28), r.randint(1998, 2026)
        return r.choice([f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{y}-{m:02d}-{d:02d}",
                         f"{_MONTHS[m - 1]} {d}, {y}", f"{d} {_MONTHS[m - 1][:3]} {y}"])  # fmt: skip

    def accession(self) -> str:
        r = self.rng
        return r.choice([
            f"S{r.randint(10, 26)}-{r.randint(1000, 99999)}",
            f"{r.choice('ACEFRX')}{r.randint(100000000, 999999999)}",
            f"{r.randint(10000000, 99999999)}",
            f"RAD-{r.randint(2019, 2026)}-{r.randint(100000, 999999)}",
        ])  # fmt: skip


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip


def _fixed(value: str) -> Callable[[Slots], str]:
    return lambda _s: value


def _documents(s: DocSlots) -> list[list[list[Piece]]]:
    """One document of each kind, its lines as pieces; the cast drawn here."""
    r = s.rng
    (pf, pl), (af, al), (cf, cl), (kf, _kl) = s.person(), s.person(), s.person(), s.person()
    site, other_site, town = s.pick(s.hospital), s.pick(s.hospital), s.pick(s.town)
    sex = r.choice(["male", "female"])
    title, pronoun = ("Mr.", "He") if sex == "male" else ("Ms.", "She")
    kin = r.choice(["wife", "husband", "daughter", "son", "mother", "sister"])
    age = str(r.randint(19, 88))
    old = str(r.randint(90, 103))

    def n(value: str) -> Piece:
        return (NAME, _fixed(value))

    def d() -> Piece:
        return (DATE, Slots.date)

    def dd() -> Piece:
        return (DATE, lambda _x: s.long_date())

    def ph() -> Piece:
        return (PHONE, Slots.phone)

    def rid() -> Piece:
        return (ID, Slots.record_number)

    def acc() -> Piece:
        return (ID, lambda _x: s.accession())

    discharge: list[list[Piece]] = [
        ["DISCHARGE SUMMARY"],
        ["Patient: ", n(f"{pl}, {pf}"), "    MRN: ", rid(), "    DOB: ", dd()],
        ["Admission date: ", dd(), "    Discharge date: ", dd()],
        ["Attending: ", n(f"{af} {al}"), ", MD    Service: Medicine"],
        [f"Brief hospital course: {title} ", n(pl), (f" is a {age} y/o {sex} with HFrEF (EF 30%), "
         "AFib on apixaban and CKD 3b admitted with volume overload.")],
        ["Diuresed with IV furosemide, net -6 L; creatinine peaked at 2.1 and returned to 1.6."],
        [f"{pronoun} will follow up with Dr. ", n(cl), " in the ", (HOSPITAL, _fixed(site)),
         " heart failure clinic on ", d(), "; call ", ph(), " with weight gain > 3 lb."],
        [("Discharge medications: furosemide 40 mg PO BID, metoprolol succinate 50 mg daily, "
         "apixaban 5 mg BID, spironolactone 25 mg daily.")],
        ["Disposition: home with services. ", kin.capitalize(), " ", n(kf),
         " will drive. Code status: full."],
    ]
    radiology: list[list[Piece]] = [
        ["EXAM: CT CHEST WITH CONTRAST    ACCESSION: ", acc()],
        ["DATE OF SERVICE: ", dd(), "    ORDERING: ", n(f"{cf.upper()} {cl.upper()}"), ", MD"],
        ["COMPARISON: ", d(), "."],
        [("FINDINGS: 6 MM RIGHT UPPER LOBE NODULE, UNCHANGED. NO PLEURAL EFFUSION. "
         "MILD CENTRILOBULAR EMPHYSEMA. HEART SIZE NORMAL.")],
        ["IMPRESSION: STABLE PULMONARY NODULE. FLEISCHNER FOLLOW-UP IN 12 MONTHS."],
        ["Critical result called to ", n(f"{af} {al}"), " at 14:32 on ", d(), " by ",
         n(f"{cf[0]}. {cl}"), ", MD."],
        ["Electronically signed: ", n(f"{cl}, {cf}"), " MD ", dd(), " 15:07"],
    ]
    pathology: list[list[Piece]] = [
        ["SURGICAL PATHOLOGY REPORT    Accession #: ", acc()],
        ["Patient: ", n(f"{pl.upper()}, {pf.upper()}"), "    Med Rec #: ", rid()],
        ["Collected: ", dd(), "    Received: ", dd()],
        ["Submitting physician: ", n(f"{af} {al}"), ", MD (", (HOSPITAL, _fixed(site)), ")"],
        ["SPECIMEN: Prostate, needle core biopsies x 12."],
        [("DIAGNOSIS: Prostatic adenocarcinoma, Gleason score 3+4=7 (Grade Group 2), "
         "in 4 of 12 cores. Perineural invasion present.")],
        ["Case reviewed at intradepartmental consensus conference with Dr. ", n(cl), "."],
        ["Pathologist: ", n(f"{cf} {cl}"), ", MD    Signed out ", d()],
    ]
    triage: list[list[Piece]] = [
        ["ED TRIAGE ", d(), " 0342"],
        ["CC: CP X 2H, RADIATES TO L ARM. BIBA FROM ", (LOCATION, _fixed(town.upper())), "."],
        ["ACCOMPANIED BY ", kin.upper(), " ", n(kf.upper()), ", CELL ", ph(), "."],
        ["PCP DR ", n(al.upper()), ". PMH HTN, HLD, DM2. NKDA."],
        ["VS: BP 162/94 HR 104 RR 20 SPO2 95% RA T 98.4. ESI 2."],
        ["ECG AT 0345 READ BY DR ", n(cl.upper()), ", NO STEMI. TO BED 14."],
    ]
    portal: list[list[Piece]] = [
        ["Subject: question about my dad's meds"],
        ["Hi Dr. ", n(al), ","],
        ["This is ", n(kf), ", ", n(f"{pf} {pl}"), (f"'s {kin}. Since the new lisinopril dose he "
         "has been dizzy when he stands up, and his BP this morning was 98/60.")],
        ["Should he keep taking it until his appointment on ", d(), ("? He also asked if the "
         "cardiology referral to "), (HOSPITAL, _fixed(other_site)), " went through."],
        ["You can reach me at ", ph(), " or on his line ", ph(), "."],
        ["Thank you,"],
        [n(kf)],
    ]
    consult: list[list[Piece]] = [
        [(HOSPITAL, _fixed(site)), " Neurology"],
        [(ADDRESS, Slots.street), ", ", (LOCATION, _fixed(town))],
        ["Tel ", ph(), "    Fax ", ph()],
        [dd()],
        ["Dear Dr. ", n(al), ","],
        ["Thank you for referring ", n(f"{pf} {pl}"), (f", a {age}-year-old right-handed {sex}, "
         "whom I saw in clinic today for episodic vertigo.")],
        ["Exam showed a positive Dix-Hallpike to the right; Romberg negative; gait normal."],
        ["Impression: right posterior canal BPPV. Epley maneuver performed with relief."],
        ["Please do not hesitate to contact me with any questions."],
        ["Sincerely,"],
        [n(f"{cf} {r.choice('ABCDEFGHJKLMNPRSTW')}. {cl}"), ", MD, PhD"],
        ["cc: ", n(f"{af} {al}"), ", MD"],
    ]
    question: list[list[Piece]] = [
        r.choice([
            ["What was the last potassium for ", n(f"{pf} {pl}"), " (MRN ", rid(), ")?"],
            ["Did ", n(f"{pl}, {pf}"), " get the vancomycin dose due on ", d(), "?"],
            ["pt ", n(f"{pf.lower()} {pl.lower()}"), " in bed 12 - any imaging since ", d(), "?"],
            ["Is the ", (AGE, _fixed(old)), "-year-old in room 4 (", n(f"{title} {pl}"),
             ") still on the heparin drip? Pharmacy asking."],
            ["Can you page Dr. ", n(cl), " at ", (PHONE, Slots.pager),
             " about the troponin for MRN ", rid(), "?"],
            ["When is ", n(pf), "'s follow-up at ", (HOSPITAL, _fixed(other_site)), "? Her ",
             kin, " ", n(kf), " keeps calling ", ph(), "."],
            ["Summarize the hospital course for ", n(f"{pf} {pl}"), " admitted ", d(), "."],
        ]),
    ]
    return [discharge, radiology, pathology, triage, portal, consult, question]


def _ages(pieces: list[Piece]) -> list[Piece]:
    """A stated age over 89 is PHI: its number is planted as a value."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and (m := re.search(r"\b(9\d|1[01]\d)-year-old", piece)):
            out += [piece[: m.start(1)], (AGE, _fixed(m.group(1))), piece[m.end(1) :]]
        else:
            out.append(piece)
    return out


#: Documents of these kinds with no PHI at all: what must come through untouched.
CLEAN_DOCUMENTS = [
    ("CHEST X-RAY, PORTABLE AP\nFINDINGS: ENDOTRACHEAL TUBE 4 CM ABOVE THE CARINA. RIGHT IJ "
    "CATHETER TIP IN THE SVC. NO PNEUMOTHORAX.\nIMPRESSION: LINES AND TUBES IN STANDARD POSITION."),
    ("Nursing: Foley draining amber urine. Bair Hugger on for T 35.6. Turned q2h, Braden 14.\n"
    "Plan: wean FiO2 as tolerated, SBT in AM."),
    ("Pathology addendum: Immunostains for p63 and CK5/6 show loss of basal cells in the "
    "atypical glands, supporting the diagnosis. Gleason pattern 4 comprises 20%."),
    ("Hi, I picked up the new inhaler but the pharmacy said prior authorization is needed. "
    "Should I keep using the old one until then? Thanks."),
    "What is the recommended dose of ceftriaxone for bacterial meningitis in adults?",
    ("Discharge instructions: Take all medications as prescribed. Call your doctor for fever "
    "over 101, chest pain, or shortness of breath. Low salt diet, 2 g sodium."),
    ("Triage: L ankle inversion injury playing basketball. Ottawa rules negative. Ice, "
    "elevation, ibuprofen. ESI 5."),
]


def generate_kinds(split: str, n: int = NOTES_PER_SET) -> list[Note]:
    """``n`` documents of the other kinds for ``dev_3`` or ``held_out_3``: seeded; about one in
    eight holds no PHI."""
    rng = random.Random(KINDS_SEEDS[split])
    slots = DocSlots(rng, split)
    notes: list[Note] = []
    for index in range(n):
        if rng.random() < 0.125:
            notes.append(Note(id=f"{split}-{index:04d}", text=rng.choice(CLEAN_DOCUMENTS)))
            continue
        document = rng.choice(_documents(slots))
        text: list[str] = []
        spans: list[tuple[int, int, str]] = []
        pos = 0
        for i, line in enumerate(document):
            if i:
                text.append("\n")
                pos += 1
            pos = _render(_ages(line), slots, text, spans, pos)
        body = "".join(text)
        spans = [
            (a, b, UNLISTED_NAME if kind == NAME and _unlisted(body[a:b], KINDS_VALUES) else kind)  # type: ignore[arg-type]
            for a, b, kind in spans
        ]
        notes.append(Note(id=f"{split}-{index:04d}", text=body, spans=spans))
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print generated notes with their PHI marked.")
    parser.add_argument("--set", choices=[*SEEDS, *KINDS_SEEDS], default="dev")
    parser.add_argument("--n", type=int, default=3)
    args = parser.parse_args(argv)
    if args.set.startswith("held_out"):
        print("the held-out sets are not for reading while tuning; printing counts only")
        notes = generate_kinds(args.set) if args.set in KINDS_SEEDS else generate(args.set)
        print(len(notes), "notes,", sum(len(n.spans) for n in notes), "PHI spans")
        return 0
    made = generate_kinds(args.set) if args.set in KINDS_SEEDS else generate(args.set)
    for note in made[: args.n]:
        marked = note.text
        for start, end, kind in sorted(note.spans, reverse=True):
            marked = f"{marked[:start]}[[{kind}:{marked[start:end]}]]{marked[end:]}"
        print(f"--- {note.id}\n{marked}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
