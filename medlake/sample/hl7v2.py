"""The sample hospital as HL7 v2.5.1 messages from three interfaces, framed the ways feeds are.

Every third person (``index % 3 == 0``, see :func:`in_hl7`) also reaches the hospital's HL7
interfaces, so their primary record arrives both as FHIR and as HL7 with the same MRN (the
cross-source linkage case; a second registration of a person stays FHIR-only). Layout under
``out/hl7v2/``:

- ``adt/ADT_<nnnn>.hl7``: registration. ADT^A01 (inpatient) or ADT^A04 (outpatient, emergency)
  when a visit starts, ADT^A08 with the discharge time when it ends: EVN, PID, NK1 for some,
  PV1, and a DG1 per diagnosis made at the visit.
- ``lab/ORU_<nnnn>.hl7``: results. One ORU^R01 per visit with measurements: PID, PV1, then per
  measurement ORC + OBR + OBX (two OBX for a blood pressure panel; OBX-3 LOINC, or the lab's
  local code with coding system ``L``; UCUM units; reference range and H/L/N flag for most
  labs; OBX-11 ``X`` when no value was obtained), and an NTE holding the result-callback note.
- ``pharmacy/RDE_<nnnn>.hl7``: pharmacy orders. One RDE^O11 per prescription: PID, PV1, ORC
  (ORC-5 order status, ORC-9 when written), RXO and RXE (RxNorm), RXR.

Files hold up to :data:`MESSAGES_PER_FILE` messages. Their framing rotates per feed through
MLLP blocks, CR, LF (what editors and some interfaces write), FHS/BHS batches and CRLF.

PHI sits where real feeds carry it: names, MRN and SSN, birth date, address and phone in PID,
the next of kin's name and phone in NK1, and the callback notes in NTE; every value is added to
the truth file's ``phi`` lists. Once the hospital has :data:`~medlake.sample.people.MIN_POPULATION_FOR_MESS`
people, broken messages and files are planted too, each recorded in the truth file's
``malformed`` list with the rule ingest must quarantine it under (see :data:`DEFECT_RULES`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from medlake.sample.people import (
    Chart,
    Diagnosis,
    Hospital,
    Measurement,
    Person,
    Prescription,
    Visit,
    new_id,
    plants_every_kind,
)
from medlake.sample.truth import Truth, Where
from medlake.sample.vocab import BP_COMPONENTS, FEMALE_GIVEN, MALE_GIVEN, MRN_SYSTEM

HL7V2 = "hl7v2"
MESSAGES_PER_FILE = 10
VERSION = "2.5.1"
SENDING_FACILITY = "SAMPLE_HOSPITAL"
VISIT_SYSTEM = "http://hospital.example.org/visits"
SSN_OID = "2.16.840.1.113883.4.1"
LOCAL_CODING_SYSTEM = "L"  # HL7 table 0396: a locally defined code
CLASS = {"AMB": "O", "EMER": "E", "IMP": "I"}
GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
MARITAL = {"M": "M", "S": "S", "D": "D", "W": "W", "U": "B"}  # v3 code → HL7 table 0002
ORDER_STATUS = {"active": "IP", "completed": "CM", "stopped": "DC"}  # → HL7 table 0038
RELATIONS = (
    ("SPO", "Spouse"),
    ("MTH", "Mother"),
    ("FTH", "Father"),
    ("CHD", "Child"),
    ("SIB", "Sibling"),
)
LINE_BREAK = "\x00"  # stands for a raw segment separator inside a field until the file is framed

Framing = Literal["mllp", "cr", "lf", "batch", "crlf"]
FRAMINGS: tuple[Framing, ...] = ("mllp", "cr", "lf", "batch", "crlf")

Segment = list[str]  # field 0 is the segment name; MSH's field 1 is the field separator


@dataclass(frozen=True)
class Feed:
    """One interface: its folder, file prefix, sending application and first file's framing."""

    folder: str
    prefix: str
    application: str
    first_framing: int
    defects: tuple[str, ...]  # planted in the feed's first file, one per message from message 2 on


FEEDS = {
    "adt": Feed("adt", "ADT", "REG_ADT", 0, ("bad_msh", "bad_birth_date", "no_msh")),
    "lab": Feed(
        "lab",
        "ORU",
        "LAB_LIS",
        2,
        ("bad_value", "bad_observation_time", "bad_segment", "missing_segment"),
    ),
    "pharmacy": Feed("pharmacy", "RDE", "RX_PHARM", 3, ("missing_rxe",)),
}
#: every defect kind: the rule ingest quarantines it under and the reason written to the truth file
DEFECT_RULES: dict[str, tuple[str, str]] = {
    "bad_msh": ("parse.hl7_bad_msh", "MSH-10 (message control id) is empty"),
    "bad_birth_date": (
        "parse.hl7_bad_datetime",
        "PID-7 (date of birth) names a day that does not exist",
    ),
    "no_msh": ("parse.hl7_no_msh", "the MLLP block lost its MSH segment"),
    "bad_value": ("parse.hl7_bad_value", "OBX-5 is 'pending' under OBX-2 NM"),
    "bad_observation_time": (
        "parse.hl7_bad_datetime",
        "OBX-14 is written as ISO 8601, not an HL7 DTM",
    ),
    "bad_segment": ("parse.hl7_bad_segment", "an NTE comment holds a raw line break"),
    "missing_segment": ("parse.hl7_missing_segment", "an ORU^R01 lost its OBR segments"),
    "missing_rxe": ("parse.hl7_missing_segment", "an RDE^O11 without its RXE segment"),
    "empty_file": ("parse.hl7_empty_file", "file is empty"),
    "not_hl7": ("parse.hl7_no_msh", "file is an HTML error page saved by the interface engine"),
    "nested_batch": ("parse.hl7_bad_batch", "a BHS batch opened inside another batch"),
}
#: a further defect is planted in every DEFECT_EVERY-th file after the first, kinds in rotation
DEFECT_EVERY = 8
#: every PATIENT_NOTE_EVERY-th person's ORU messages carry a patient-level NTE after PID naming
#: the patient, MRN, phone and a date (listed in the truth file's ``hl7_free_text``)
PATIENT_NOTE_EVERY = 9


def in_hl7(index: int) -> bool:
    """Whether person `index` also reaches the HL7 interfaces."""
    return index % 3 == 0


def write_hl7v2(hospital: Hospital, out: Path, truth: Truth) -> None:
    """Write the HL7 v2 feeds of the people in HL7 under `out/hl7v2/` and record them in `truth`."""
    writers = {
        name: FeedWriter(out, feed, truth, plant=plants_every_kind(hospital.patients))
        for name, feed in FEEDS.items()
    }
    nested: list[list[Segment]] = []
    for person in hospital.people():
        if not in_hl7(person.index):
            continue
        rng = hospital.rng(HL7V2, person.index)
        truth.registration(person.chart.registration)
        messages = PersonMessages(person, rng, truth)
        for visit in person.chart.visits:
            for message in messages.adt(visit):
                writers["adt"].add(message)
                if len(nested) < 2:
                    nested.append([list(segment) for segment in message])
            for message in messages.oru(visit):
                writers["lab"].add(message, free_text=messages.note_phi(message))
        for order in person.chart.prescriptions:
            writers["pharmacy"].add(messages.rde(order))
    for writer in writers.values():
        writer.close()
    if plants_every_kind(hospital.patients) and nested:
        _write_file_defects(out, nested, hospital.rng(HL7V2, "files"), truth)


# ---------------------------------------------------------------- messages


@dataclass
class PersonMessages:
    """Builds one person's messages from their chart; control ids are filled in by the feed."""

    person: Person
    rng: random.Random
    truth: Truth
    next_of_kin: Segment | None = None

    def __post_init__(self) -> None:
        self.next_of_kin = self.nk1()

    @property
    def chart(self) -> Chart:
        return self.person.chart

    def pid(self) -> Segment:
        """PID: MRN (typed MR, authority = the FHIR MRN system) and SSN, name, birth, sex,
        address, phone, marital status and death, as the registration desk typed them."""
        reg = self.chart.registration
        ids = [f"{esc(reg.mrn)}^^^&{MRN_SYSTEM}&URI^MR"]
        if reg.ssn:
            ids.append(f"{esc(reg.ssn)}^^^&{SSN_OID}&ISO^SS")
        address = ""
        if reg.address:
            lines = [*reg.address.lines, ""][:2]
            address = "^".join(
                esc(v)
                for v in (
                    *lines,
                    reg.address.city,
                    reg.address.state,
                    reg.address.postal_code,
                    "USA",
                    "H",
                )
            )
        pid = fields(
            "PID",
            {
                1: "1",
                3: "~".join(ids),
                5: "^".join(esc(v) for v in (reg.family, *reg.given[:2])),
                7: f"{reg.birth_date:%Y%m%d}",
                8: GENDER.get(reg.gender or "", ""),
                11: address,
                13: f"{esc(reg.phone)}^PRN^PH",
                16: MARITAL[reg.marital],
                19: esc(reg.ssn or ""),
            },
        )
        if reg.deceased_at:
            pid += [""] * (31 - len(pid))
            pid[29], pid[30] = dtm(reg.deceased_at), "Y"
        return pid

    def nk1(self) -> Segment | None:
        """NK1 for about half the people: a relative's name and phone (more PHI)."""
        if self.rng.random() >= 0.5:
            return None
        reg = self.chart.registration
        given = self.rng.choice(FEMALE_GIVEN + MALE_GIVEN)
        code, text = self.rng.choice(RELATIONS)
        phone = f"(555) {self.rng.randint(200, 999)}-{self.rng.randint(0, 9999):04d}"
        self.truth.phi["names"].update((given, reg.family))
        self.truth.phi["phones"].add(phone)
        return fields(
            "NK1",
            {
                1: "1",
                2: f"{esc(reg.family)}^{esc(given)}",
                3: f"{code}^{text}^HL70063",
                5: f"{esc(phone)}^PRN^PH",
            },
        )

    def pv1(self, visit: Visit, *, discharged: bool) -> Segment:
        """PV1: patient class, the site as the facility of the location, visit number, admit and
        (once discharged) discharge times."""
        values = {
            1: "1",
            2: CLASS[visit.visit_class],
            3: f"^^^{esc(visit.site.name)}",
            19: f"{visit.id}^^^&{VISIT_SYSTEM}&URI^VN",
            44: dtm(visit.start),
        }
        if discharged and visit.end:
            values[45] = dtm(visit.end)
        return fields("PV1", values)

    def dg1(self, number: int, diagnosis: Diagnosis) -> Segment:
        """DG1: ICD-10-CM and/or SNOMED CT as the primary and alternate coding, onset, type final."""
        problem = diagnosis.problem
        triplets = []
        if diagnosis.coded_as in ("both", "icd10"):
            triplets.append(f"{problem.icd10}^{esc(problem.icd10_display)}^I10C")
        if diagnosis.coded_as in ("both", "snomed"):
            triplets.append(f"{problem.snomed}^{esc(problem.snomed_display)}^SCT")
        return fields(
            "DG1", {1: str(number), 3: "^".join(triplets), 5: dtm(diagnosis.onset), 6: "F"}
        )

    def adt(self, visit: Visit) -> Iterator[list[Segment]]:
        """ADT^A01/A04 when the visit starts, ADT^A08 with the discharge when it has ended."""
        event = "A01" if visit.visit_class == "IMP" else "A04"
        diagnoses = [d for d in self.chart.diagnoses if d.visit_id == visit.id]
        nk1 = self.next_of_kin
        for trigger, sent, discharged in ((event, visit.start, False), ("A08", visit.end, True)):
            if sent is None:
                continue
            message = [
                msh(FEEDS["adt"], sent, "ADT", trigger, "ADT_A01"),
                fields("EVN", {1: trigger, 2: dtm(sent)}),
                self.pid(),
            ]
            if nk1:
                message.append(nk1)
            message.append(self.pv1(visit, discharged=discharged))
            message += [self.dg1(n, d) for n, d in enumerate(diagnoses, start=1)]
            yield message

    def oru(self, visit: Visit) -> Iterator[list[Segment]]:
        """One ORU^R01 with the visit's measurements, sent after the last one was taken."""
        taken = [m for m in self.chart.measurements if m.visit_id == visit.id]
        if not taken:
            return
        sent = max(m.taken_at for m in taken)
        message = [msh(FEEDS["lab"], sent, "ORU", "R01", "ORU_R01"), self.pid()]
        if self.person.index % PATIENT_NOTE_EVERY == 0:
            message.append(fields("NTE", {1: "1", 2: "L", 3: esc(self.patient_note(sent))}))
        message.append(self.pv1(visit, discharged=False))
        for number, measurement in enumerate(taken, start=1):
            message += self.result(number, measurement)
        yield message

    def patient_note(self, sent: datetime) -> str:
        """A registration comment naming the patient, MRN, phone and the day (no randomness)."""
        reg = self.chart.registration
        return (
            f"Patient {reg.display_name} (MRN {reg.mrn}) asks to be called at {reg.phone} "
            f"about the results of {sent:%m/%d/%Y}."
        )

    def note_phi(self, message: list[Segment]) -> tuple[str, ...]:
        """The PHI of the message's patient-level NTE (after PID); none when it has none."""
        names = [segment[0] for segment in message]
        if "NTE" not in names or names[names.index("NTE") - 1] != "PID":
            return ()
        reg = self.chart.registration
        day = re.search(r"\d\d/\d\d/\d{4}", message[names.index("NTE")][3])
        return (reg.display_name, reg.mrn, reg.phone, *([day.group(0)] if day else []))

    def result(self, number: int, m: Measurement) -> list[Segment]:
        """ORC + OBR (filler order number = the measurement id) + OBX per value (+ NTE)."""
        kind = m.kind
        lab = kind.category == "laboratory"
        if m.local_code_only:
            test = f"{kind.local_code}^{esc(kind.local_display or '')}^{LOCAL_CODING_SYSTEM}"
        else:
            test = f"{kind.loinc}^{esc(kind.display)}^LN"
        when = dtm(m.taken_at)
        segments = [
            fields("ORC", {1: "RE", 3: f"{m.id}^LAB"}),
            fields(
                "OBR",
                {
                    1: str(number),
                    3: f"{m.id}^LAB",
                    4: test,
                    7: when,
                    24: "LAB" if lab else "",
                    25: "F",
                },
            ),
        ]
        unit = f"{esc(m.unit)}^{esc(m.unit_display)}^UCUM"
        if m.components:
            for n, (loinc, value) in enumerate(m.components, start=1):
                display = dict(BP_COMPONENTS)[loinc]
                segments.append(
                    fields(
                        "OBX",
                        {
                            1: str(n),
                            2: "NM",
                            3: f"{loinc}^{display}^LN",
                            5: number_text(value),
                            6: unit,
                            11: "F",
                            14: when,
                        },
                    )
                )
        elif m.value is None:
            segments.append(fields("OBX", {1: "1", 2: "NM", 3: test, 11: "X", 14: when}))
        else:
            low_high, flag = reference(m)
            segments.append(
                fields(
                    "OBX",
                    {
                        1: "1",
                        2: "NM",
                        3: test,
                        5: number_text(m.value),
                        6: unit,
                        7: low_high,
                        8: flag,
                        11: "F",
                        14: when,
                    },
                )
            )
        if m.note:
            segments.append(fields("NTE", {1: "1", 2: "L", 3: esc(m.note.text)}))
        return segments

    def rde(self, order: Prescription) -> list[Segment]:
        """RDE^O11: the order (ORC), the prescriber's request (RXO) and the pharmacy's encoding (RXE)."""
        visit = next(v for v in self.chart.visits if v.id == order.visit_id)
        drug = f"{order.drug.rxnorm}^{esc(order.drug.display)}^RXNORM"
        return [
            msh(FEEDS["pharmacy"], order.authored_at, "RDE", "O11", "RDE_O11"),
            self.pid(),
            self.pv1(visit, discharged=False),
            fields(
                "ORC",
                {
                    1: "NW",
                    2: f"{order.id}^EHR",
                    5: ORDER_STATUS[order.status],
                    9: dtm(order.authored_at),
                },
            ),
            fields("RXO", {1: drug, 2: "1", 4: "TAB^tablet^HL70292"}),
            fields("RXE", {2: drug, 3: "1", 5: "TAB^tablet^HL70292", 7: f"^{esc(order.drug.sig)}"}),
            fields("RXR", {1: "PO^Oral^HL70162"}),
        ]


def reference(m: Measurement) -> tuple[str, str]:
    """OBX-7 and OBX-8 for the results the FHIR feed gives a range (the same ~70% of labs)."""
    kind, alt = m.kind, m.kind.alt_unit
    if kind.category != "laboratory" or m.value is None or not int(m.id[:4], 16) < 0.7 * 0x10000:
        return "", ""
    low, high = kind.normal
    if alt is not None and m.unit == alt.code:
        low, high = (round(v * alt.scale + alt.offset, alt.decimals) for v in (low, high))
    flag = "H" if m.value > high else "L" if m.value < low else "N"
    text = f"{number_text(low)}-{number_text(high)}" if low > 0 else f"<{number_text(high)}"
    return text, flag


def msh(feed: Feed, sent: datetime, code: str, trigger: str, structure: str) -> Segment:
    """An MSH; MSH-10 (control id) is filled in when the feed writes the message."""
    return fields(
        "MSH",
        {
            1: "|",
            2: "^~\\&",
            3: feed.application,
            4: SENDING_FACILITY,
            5: "MEDLAKE",
            6: "MEDLAKE",
            7: dtm(sent),
            9: f"{code}^{trigger}^{structure}",
            10: "",
            11: "P",
            12: VERSION,
            15: "AL",
            16: "NE",
            17: "USA",
            18: "UNICODE UTF-8",
        },
    )


def fields(name: str, values: dict[int, str]) -> Segment:
    """A segment from its valued fields, by field number."""
    segment = [name] + [""] * max(values)
    for number, value in values.items():
        segment[number] = value
    return segment


def esc(text: str) -> str:
    """Text with HL7's delimiters escaped (\\E\\ first, then \\F\\ \\S\\ \\R\\ \\T\\)."""
    for raw, escaped in (
        ("\\", "\\E\\"),
        ("|", "\\F\\"),
        ("^", "\\S\\"),
        ("~", "\\R\\"),
        ("&", "\\T\\"),
    ):
        text = text.replace(raw, escaped)
    return text


def dtm(value: datetime) -> str:
    """An HL7 DTM with seconds and the UTC offset."""
    return f"{value:%Y%m%d%H%M%S%z}"


def number_text(value: float) -> str:
    """A number as HL7 NM: no exponent, no trailing .0 on whole numbers."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(segments: list[Segment]) -> list[str]:
    """The segments as ER7 lines (MSH's field separator is its field 1)."""
    lines = []
    for segment in segments:
        if segment[0] == "MSH":
            lines.append("MSH|" + "|".join(segment[2:]))
        else:
            lines.append("|".join(segment).rstrip("|") or segment[0])
    return lines


# ---------------------------------------------------------------- files and defects


@dataclass
class FeedWriter:
    """Collects a feed's messages into files of MESSAGES_PER_FILE, framing and numbering them."""

    out: Path
    feed: Feed
    truth: Truth
    plant: bool
    pending: list[list[Segment]] = field(default_factory=list)
    pending_phi: list[tuple[str, ...]] = field(default_factory=list)
    files: int = 0
    sent: int = 0
    defects_planted: int = 0

    def add(self, message: list[Segment], *, free_text: tuple[str, ...] = ()) -> None:
        self.sent += 1
        message[0][10] = f"{self.feed.prefix}{self.sent:08d}"
        self.pending.append(message)
        self.pending_phi.append(free_text)
        if len(self.pending) == MESSAGES_PER_FILE:
            self.flush()

    def close(self) -> None:
        if self.pending:
            self.flush()

    def flush(self) -> None:
        framing = FRAMINGS[(self.feed.first_framing + self.files) % len(FRAMINGS)]
        name = f"{HL7V2}/{self.feed.folder}/{self.feed.prefix}_{self.files:04d}.hl7"
        messages, self.pending = self.pending, []
        for offset, phi in enumerate(self.pending_phi, start=1):
            if phi:
                self.truth.add(
                    "hl7_free_text",
                    Where(name, offset),
                    path="ORU^R01/PID[1]/NTE[1]",
                    phi=list(phi),
                )
        self.pending_phi = []
        if self.plant:
            for kind, offset in self.defects(messages, framing):
                rule, reason = DEFECT_RULES[kind]
                self.truth.malformed(Where(name, offset), rule, reason)
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(frame([render(m) for m in messages], framing, self.feed).encode("utf-8"))
        self.truth.file_read(f"{HL7V2}/{self.feed.folder}", len(messages))
        self.files += 1

    def defects(self, messages: list[list[Segment]], framing: Framing) -> Iterator[tuple[str, int]]:
        """Plant this file's defects: all the feed's kinds in its first file (from message 2 on),
        then one kind in rotation in every DEFECT_EVERY-th file. A lost MSH is planted only in
        MLLP files, where the block still marks where the message starts. Yields (kind, number)."""
        fitting = [k for k in self.feed.defects if k != "no_msh" or framing == "mllp"]
        if self.files == 0:
            kinds = fitting
        elif self.files % DEFECT_EVERY == 0 and fitting:
            kinds = [fitting[self.defects_planted % len(fitting)]]
        else:
            return
        used: set[int] = set()
        order = [*range(1, len(messages)), 0]
        for kind in kinds:
            for position in order:
                if position not in used and PLANTERS[kind](messages[position]):
                    used.add(position)
                    self.defects_planted += 1
                    yield kind, position + 1
                    break


def frame(messages: list[list[str]], framing: Framing, feed: Feed) -> str:
    """A file's text: the messages in MLLP blocks, CR, LF or CRLF lines, or a CR batch."""
    if framing == "mllp":
        return "".join(
            "\x0b" + "\r".join(lines).replace(LINE_BREAK, "\r") + "\r\x1c\r" for lines in messages
        )
    separator = {"cr": "\r", "lf": "\n", "crlf": "\r\n", "batch": "\r"}[framing]
    body = "".join(
        separator.join(lines).replace(LINE_BREAK, separator) + separator for lines in messages
    )
    if framing != "batch":
        return body
    stamp = messages[0][0].split("|")[6] if messages and messages[0] else ""
    head = f"FHS|^~\\&|{feed.application}|{SENDING_FACILITY}|MEDLAKE|MEDLAKE|{stamp}\r"
    batch = f"BHS|^~\\&|{feed.application}|{SENDING_FACILITY}|MEDLAKE|MEDLAKE|{stamp}\r"
    return head + batch + body + f"BTS|{len(messages)}\rFTS|1\r"


def _segment(message: list[Segment], name: str) -> Segment | None:
    return next((s for s in message if s[0] == name), None)


def _bad_msh(message: list[Segment]) -> bool:
    message[0][10] = ""
    return True


def _bad_birth_date(message: list[Segment]) -> bool:
    pid = _segment(message, "PID")
    if pid is None:
        return False
    pid[7] = pid[7][:4] + "0231"  # 31 February
    return True


def _no_msh(message: list[Segment]) -> bool:
    del message[0]
    return True


def _first_valued_nm(message: list[Segment]) -> Segment | None:
    return next(
        (s for s in message if s[0] == "OBX" and s[2] == "NM" and len(s) > 5 and s[5]), None
    )


def _bad_value(message: list[Segment]) -> bool:
    obx = _first_valued_nm(message)
    if obx is None:
        return False
    obx[5] = "pending"
    return True


def _bad_observation_time(message: list[Segment]) -> bool:
    obx = _first_valued_nm(message)
    if obx is None or len(obx) <= 14 or not obx[14]:
        return False
    stamp = datetime.strptime(obx[14][:14], "%Y%m%d%H%M%S")
    obx[14] = stamp.isoformat()
    return True


def _bad_segment(message: list[Segment]) -> bool:
    obx = next((i for i, s in enumerate(message) if s[0] == "OBX"), None)
    if obx is None:
        return False
    message.insert(
        obx + 1,
        fields(
            "NTE", {1: "1", 2: "L", 3: f"Specimen slightly hemolyzed{LINE_BREAK}redraw not needed"}
        ),
    )
    return True


def _missing_segment(message: list[Segment]) -> bool:
    if _segment(message, "OBR") is None:
        return False
    message[:] = [s for s in message if s[0] != "OBR"]
    return True


def _missing_rxe(message: list[Segment]) -> bool:
    if _segment(message, "RXE") is None:
        return False
    message[:] = [s for s in message if s[0] != "RXE"]
    return True


#: each defect kind's change to a message; False when the message cannot carry it
PLANTERS: dict[str, Callable[[list[Segment]], bool]] = {
    "bad_msh": _bad_msh,
    "bad_birth_date": _bad_birth_date,
    "no_msh": _no_msh,
    "bad_value": _bad_value,
    "bad_observation_time": _bad_observation_time,
    "bad_segment": _bad_segment,
    "missing_segment": _missing_segment,
    "missing_rxe": _missing_rxe,
}


NOT_HL7 = (
    "<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>The interface engine could not reach the upstream system.</p></body></html>\n"
)


def _write_file_defects(
    out: Path, nested: list[list[Segment]], rng: random.Random, truth: Truth
) -> None:
    """Whole files that are not a readable feed: empty, an error page, a batch inside a batch."""
    folder = out / HL7V2 / FEEDS["adt"].folder
    lines = [render(m) for m in nested]
    head = f"BHS|^~\\&|{FEEDS['adt'].application}|{SENDING_FACILITY}|MEDLAKE|MEDLAKE\r"
    batch = head + "\r".join(lines[0]) + "\r" + head + "\r".join(lines[-1]) + "\rBTS|1\rBTS|1\r"
    records = {"empty_file": (0, ""), "not_hl7": (1, NOT_HL7), "nested_batch": (0, batch)}
    for kind, (offset, text) in records.items():
        name = f"{new_id(rng)}.hl7"
        (folder / name).write_bytes(text.encode("utf-8"))
        truth.file_read(f"{HL7V2}/{FEEDS['adt'].folder}", 1)
        rule, reason = DEFECT_RULES[kind]
        truth.malformed(Where(f"{HL7V2}/{FEEDS['adt'].folder}/{name}", offset), rule, reason)
