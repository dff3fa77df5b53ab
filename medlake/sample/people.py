"""The sample hospital's people, what was recorded about them, and the mess planted in it.

A `Hospital` is fixed by `(patients, seed)`. `Hospital.person(i)` is a pure function of
`(seed, i)` (its own `random.Random`), so every format writer (FHIR now; HL7 v2, CSV, vitals,
DICOM, VCF later) can stream the same people one at a time in bounded memory and render the
same facts in its own format. The facts are format-neutral: a `Visit` becomes a FHIR
Encounter or an HL7 PV1, a `Measurement` an Observation or an OBX.

Data-level mess (missing values, mixed units, local lab codes, notes with PHI, impossible
values, people registered twice) is planned here, once per person, so all formats agree on
it; each planted fact names its mess in `.mess`. File-level mess (broken JSON, truncated
files, ...) belongs to the writer of each format.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal

from medlake.sample.vocab import (
    CITIES,
    DRUGS,
    FAMILY,
    FEMALE_GIVEN,
    LABS,
    MALE_GIVEN,
    MEASUREMENTS,
    NICKNAMES,
    PROBLEMS,
    SITES,
    STREET_SUFFIXES,
    STREETS,
    VITALS,
    Drug,
    MeasurementKind,
    Problem,
    Site,
)

REFERENCE_DATE = date(2025, 6, 30)  # the day the hospital's extract was taken; nothing is later
EARLIEST_VISIT = date(2019, 1, 1)
HOSPITAL_TZ = timezone(timedelta(hours=-5))
MIN_POPULATION_FOR_MESS = 20  # from this many patients on, every kind of mess is planted
# Identifiers are serial numbers scrambled by a stride coprime with the size of their space,
# so they look random yet never collide (up to 10**7 MRNs, 8*10**6 phones).
ID_STRIDE = 48271
MRN_SPACE = 10**7
PHONE_SPACE = 800 * 10**4  # (555) 200-0000 .. (555) 999-9999; 555 is no real area code
SSN_SPACE = 100 * 99 * 9999  # 9AA-GG-SSSS, area 900-999 is never issued as an SSN
MAX_PATIENTS = MRN_SPACE // 2  # each person may use two MRNs (a duplicate registration)

Gender = Literal["female", "male", "other", "unknown"]
VisitClass = Literal["AMB", "IMP", "EMER"]
CodedAs = Literal["both", "icd10", "snomed"]
RxStatus = Literal["active", "completed", "stopped"]

# Share of people carrying each data-level defect (at least one each once N >= 20).
MESS_RATES: dict[str, float] = {
    "gender_missing": 0.02,
    "address_missing": 0.02,
    "visit_end_missing": 0.03,
    "value_absent": 0.03,
    "duplicate": 0.05,
    "unit_weight_lb": 0.03,
    "unit_height_in": 0.03,
    "unit_temperature_degf": 0.03,
    "unit_glucose_mmol": 0.03,
    "local_lab_code": 0.04,
    "note_measurement": 0.04,
    "note_diagnosis": 0.03,
    "note_visit": 0.03,
    "impossible_heart_rate": 0.005,
    "impossible_temperature": 0.005,
    "impossible_weight": 0.005,
}
# mess kind -> (measurement kind or None for "pick one", what is planted on it)
MEASUREMENT_MESS: dict[str, tuple[str | None, str]] = {
    "unit_weight_lb": ("weight", "unit_mix"),
    "unit_height_in": ("height", "unit_mix"),
    "unit_temperature_degf": ("temperature", "unit_mix"),
    "unit_glucose_mmol": ("glucose", "unit_mix"),
    "local_lab_code": (None, "local_code"),
    "value_absent": (None, "value_absent"),
    "note_measurement": (None, "note"),
    "impossible_heart_rate": ("heart_rate", "impossible"),
    "impossible_temperature": ("temperature", "impossible"),
    "impossible_weight": ("weight", "impossible"),
}
IMPOSSIBLE_VALUES: dict[str, float] = {"heart_rate": 900, "temperature": 60.0}  # weight: negated
ABSENT_REASONS: tuple[str, ...] = ("not-performed", "unknown", "error")


@dataclass(frozen=True)
class Address:
    """A home address as registered."""

    lines: tuple[str, ...]
    city: str
    state: str
    postal_code: str


@dataclass(frozen=True)
class Registration:
    """One patient record as a registration desk typed it: identifiers and demographics."""

    id: str
    mrn: str
    ssn: str | None
    given: tuple[str, ...]
    family: str
    phone: str
    gender: Gender | None
    birth_date: date
    address: Address | None
    marital: str
    deceased_at: datetime | None
    variations: tuple[str, ...] = ()  # how this record's spelling differs from the person's

    @property
    def display_name(self) -> str:
        """First given name and family name, as staff write it in notes."""
        return f"{self.given[0]} {self.family}"


@dataclass(frozen=True)
class Note:
    """Free text a clinician wrote, and the PHI strings it contains, verbatim."""

    text: str
    phi: tuple[str, ...]


@dataclass(frozen=True)
class Visit:
    """An encounter at one site: ambulatory, inpatient or emergency."""

    id: str
    site: Site
    visit_class: VisitClass
    start: datetime
    end: datetime | None
    narrative: Note | None
    mess: tuple[str, ...]


@dataclass(frozen=True)
class Measurement:
    """A vital sign or lab result as recorded: value in the recorded unit, or why it is absent."""

    id: str
    visit_id: str
    kind: MeasurementKind
    taken_at: datetime
    value: float | None
    unit: str  # UCUM code as recorded
    unit_display: str
    components: tuple[tuple[str, float], ...]  # (LOINC, value) for panels such as blood pressure
    canonical_value: float | None  # the value in the kind's canonical unit
    absent_reason: str | None
    local_code_only: bool
    note: Note | None
    mess: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    """A problem diagnosed at a visit, coded in ICD-10-CM, SNOMED CT or both."""

    id: str
    visit_id: str
    problem: Problem
    onset: datetime
    abated: datetime | None
    coded_as: CodedAs
    note: Note | None
    mess: tuple[str, ...]


@dataclass(frozen=True)
class Prescription:
    """A drug ordered at a visit, possibly for one of the diagnoses."""

    id: str
    visit_id: str
    drug: Drug
    authored_at: datetime
    status: RxStatus
    reason_id: str | None


@dataclass(frozen=True)
class Chart:
    """Everything one source system holds about one patient record."""

    registration: Registration
    visits: tuple[Visit, ...]
    measurements: tuple[Measurement, ...]
    diagnoses: tuple[Diagnosis, ...]
    prescriptions: tuple[Prescription, ...]


@dataclass(frozen=True)
class Person:
    """A synthetic person: their chart, and a second chart when they were registered twice."""

    index: int
    chart: Chart
    duplicate: Chart | None
    mess: frozenset[str]


def plants_every_kind(patients: int) -> bool:
    """Whether a hospital this large carries at least one defect of every kind."""
    return patients >= MIN_POPULATION_FOR_MESS


def planted_count(candidates: int, rate: float, *, at_least_one: bool) -> int:
    """How many of `candidates` records get a defect: rate x N, or one if that rounds to 0."""
    count = round(rate * candidates)
    if at_least_one:
        count = max(1, count)
    return min(candidates, count)


def plan_mess(
    candidates: list[int], rates: Mapping[str, float], rng: random.Random, *, at_least_one: bool
) -> dict[int, frozenset[str]]:
    """Which candidates carry which defects, each kind on planted_count(...) of them."""
    marks: dict[int, set[str]] = {}
    for kind, rate in rates.items():
        count = planted_count(len(candidates), rate, at_least_one=at_least_one)
        for index in rng.sample(candidates, count):
            marks.setdefault(index, set()).add(kind)
    return {index: frozenset(kinds) for index, kinds in marks.items()}


class Hospital:
    """The sample hospital: `patients` people, all facts derived from `seed`."""

    def __init__(self, *, patients: int, seed: int) -> None:
        if not 1 <= patients <= MAX_PATIENTS:
            raise ValueError(f"patients must be between 1 and {MAX_PATIENTS}, got {patients}")
        self.patients = patients
        self.seed = seed
        self.plan = plan_mess(
            list(range(patients)),
            MESS_RATES,
            self.rng("mess"),
            at_least_one=plants_every_kind(patients),
        )
        ids = self.rng("ids")
        self._offsets = {
            space: ids.randrange(space) for space in (MRN_SPACE, PHONE_SPACE, SSN_SPACE)
        }

    def rng(self, *scope: object) -> random.Random:
        """A random stream private to one purpose, e.g. rng("person", 7) or rng("fhir")."""
        return random.Random("/".join(["medlake-sample", str(self.seed), *map(str, scope)]))

    def _scrambled(self, serial: int, space: int) -> int:
        """The serial-th number of an identifier space, distinct for distinct serials."""
        return (serial * ID_STRIDE + self._offsets[space]) % space

    def mrn(self, serial: int) -> str:
        """The medical record number of the serial-th registration."""
        return f"MRN-{self._scrambled(serial, MRN_SPACE):07d}"

    def phone(self, index: int) -> str:
        """Person `index`'s home phone, as the registration desk formats it."""
        n = self._scrambled(index, PHONE_SPACE)
        return f"(555) {200 + n // 10**4}-{n % 10**4:04d}"

    def ssn(self, index: int) -> str:
        """Person `index`'s SSN-like number (area 9xx, group and serial never zero)."""
        n = self._scrambled(index, SSN_SPACE)
        area, rest = divmod(n, 99 * 9999)
        group, serial = divmod(rest, 9999)
        return f"{900 + area}-{group + 1:02d}-{serial + 1:04d}"

    def people(self) -> Iterator[Person]:
        """Every person, in index order, built one at a time."""
        for index in range(self.patients):
            yield self.person(index)

    def person(self, index: int) -> Person:
        """Person `index`, identical on every call and in every writer."""
        rng = self.rng("person", index)
        mess = self.plan.get(index, frozenset())
        registration = _registration(
            rng,
            new_id(rng),
            mess,
            mrn=self.mrn(index),
            phone=self.phone(index),
            ssn=self.ssn(index),
        )
        # death dates stay off people registered twice, so no record outlives its owner
        mortal = "duplicate" not in mess
        chart = _chart(rng, registration, mess, visits=(1, 3), measurements=(5, 10), mortal=mortal)
        duplicate = None
        if "duplicate" in mess:
            twin = _variant(rng, chart.registration, self.mrn(self.patients + index))
            duplicate = _chart(
                rng, twin, frozenset(), visits=(1, 2), measurements=(2, 6), mortal=False
            )
        return Person(index=index, chart=chart, duplicate=duplicate, mess=mess)


def new_id(rng: random.Random) -> str:
    """A random-looking but reproducible UUID v4 drawn from rng."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _registration(
    rng: random.Random, record_id: str, mess: frozenset[str], *, mrn: str, phone: str, ssn: str
) -> Registration:
    """Demographics a registration desk captured, minus what the mess plan removes."""
    gender: Gender = rng.choices(("female", "male", "other", "unknown"), (49, 49, 1, 1))[0]
    pool = {"female": FEMALE_GIVEN, "male": MALE_GIVEN}.get(gender, FEMALE_GIVEN + MALE_GIVEN)
    given = [rng.choice(pool)]
    if rng.random() < 0.4:
        given.append(rng.choice([name for name in pool if name != given[0]]))
    birth_date = _birth_date(rng)
    return Registration(
        id=record_id,
        mrn=mrn,
        ssn=ssn,
        given=tuple(given),
        family=rng.choice(FAMILY),
        phone=phone,
        gender=None if "gender_missing" in mess else gender,
        birth_date=birth_date,
        address=None if "address_missing" in mess else _address(rng),
        marital=_marital(rng, birth_date),
        deceased_at=None,
    )


def _birth_date(rng: random.Random) -> date:
    """A birth date giving ages 0-98, most people middle-aged."""
    age_days = int(rng.triangular(0, 98, 55) * 365.25)
    return REFERENCE_DATE - timedelta(days=age_days)


def _address(rng: random.Random) -> Address:
    """A street address in a New England city; one in six has an apartment line."""
    city, state, zip3 = rng.choice(CITIES)
    line = f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_SUFFIXES)}"
    lines = (
        (line, f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}") if rng.random() < 1 / 6 else (line,)
    )
    return Address(
        lines=lines, city=city, state=state, postal_code=f"{zip3}{rng.randrange(100):02d}"
    )


def _marital(rng: random.Random, birth_date: date) -> str:
    """HL7 v3 marital status: children are never married."""
    if age_on(birth_date, REFERENCE_DATE) < 18:
        return "S"
    return rng.choices(("M", "S", "D", "W", "U"), (45, 30, 12, 8, 5))[0]


def age_on(birth_date: date, day: date) -> int:
    """Age in whole years on `day`."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def _variant(rng: random.Random, original: Registration, mrn: str) -> Registration:
    """The same person registered a second time: new id and MRN, small spelling differences."""
    applicable = ["typo", "swapped_letters", "phone_format"]
    if original.given[0] in NICKNAMES:
        applicable.append("nickname")
    if len(original.given) > 1:
        applicable.append("missing_middle")
    variations = sorted(rng.sample(applicable, rng.choice((1, 2))))
    given, family, phone = list(original.given), original.family, original.phone
    for variation in variations:
        if variation in ("typo", "swapped_letters"):
            change = _typo if variation == "typo" else _swap_letters
            if rng.random() < 0.5 or "nickname" in variations:  # a nickname stays recognizable
                family = change(rng, family)
            else:
                given[0] = change(rng, given[0])
        elif variation == "nickname":
            given[0] = NICKNAMES[given[0]]
        elif variation == "missing_middle":
            del given[1:]
        elif variation == "phone_format":
            phone = _reformat_phone(rng, phone)
    ssn = original.ssn if rng.random() < 0.5 else None
    if ssn is None:
        variations.append("ssn_missing")
    return dataclasses.replace(
        original,
        id=new_id(rng),
        mrn=mrn,
        ssn=ssn,
        given=tuple(given),
        family=family,
        phone=phone,
        variations=tuple(variations),
    )


def _typo(rng: random.Random, name: str) -> str:
    """The name with one inner letter mistyped."""
    position = rng.randrange(1, len(name))
    replacement = rng.choice([c for c in "aeinorstl" if c != name[position].lower()])
    return name[:position] + replacement + name[position + 1 :]


def _swap_letters(rng: random.Random, name: str) -> str:
    """The name with two different adjacent inner letters swapped."""
    positions = [i for i in range(1, len(name) - 1) if name[i] != name[i + 1]]
    if not positions:
        return _typo(rng, name)
    i = rng.choice(positions)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :]


def _reformat_phone(rng: random.Random, phone: str) -> str:
    """The same phone number written in another common format."""
    digits = "".join(c for c in phone if c.isdigit())
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    formats = (
        f"{area}-{exchange}-{line}",
        f"{area}.{exchange}.{line}",
        f"+1 {area} {exchange} {line}",
        digits,
    )
    return rng.choice(formats)


def _chart(
    rng: random.Random,
    registration: Registration,
    mess: frozenset[str],
    *,
    visits: tuple[int, int],
    measurements: tuple[int, int],
    mortal: bool,
) -> Chart:
    """A patient record's visits, diagnoses, measurements and prescriptions."""
    visit_list = _visits(rng, registration, mess, rng.randint(*visits))
    diagnoses = _diagnoses(rng, registration, visit_list, mess)
    problems = {d.problem.key for d in diagnoses}
    taken = _measurements(rng, registration, visit_list, problems, mess, rng.randint(*measurements))
    prescriptions = _prescriptions(rng, visit_list, diagnoses)
    if mortal:
        registration = _maybe_deceased(rng, registration, visit_list)
    return Chart(
        registration=registration,
        visits=tuple(visit_list),
        measurements=tuple(taken),
        diagnoses=tuple(diagnoses),
        prescriptions=tuple(prescriptions),
    )


def _visits(
    rng: random.Random, registration: Registration, mess: frozenset[str], count: int
) -> list[Visit]:
    """`count` visits in time order, mostly at the person's home site."""
    home = rng.choice(SITES)
    first_day = max(EARLIEST_VISIT, registration.birth_date + timedelta(days=1))
    last_day = REFERENCE_DATE - timedelta(days=10)
    span = max(0, (last_day - first_day).days)
    visits = sorted(
        (_visit(rng, home, first_day + timedelta(days=rng.randint(0, span))) for _ in range(count)),
        key=lambda v: v.start,
    )
    if "visit_end_missing" in mess:
        i = rng.randrange(len(visits))
        visits[i] = dataclasses.replace(visits[i], end=None, mess=("visit_end_missing",))
    if "note_visit" in mess:
        i = rng.randrange(len(visits))
        visits[i] = dataclasses.replace(
            visits[i],
            narrative=_visit_note(rng, registration, visits[i]),
            mess=(*visits[i].mess, "note_visit"),
        )
    return visits


def _visit(rng: random.Random, home: Site, day: date) -> Visit:
    """One visit starting on `day`: ambulatory in office hours, emergency or inpatient any time."""
    visit_class: VisitClass = rng.choices(("AMB", "EMER", "IMP"), (70, 20, 10))[0]
    site = home if rng.random() < 0.8 else rng.choice(SITES)
    if visit_class == "AMB":
        start = _at(day, rng.randint(8 * 60, 17 * 60))
        length = timedelta(minutes=rng.randint(15, 90))
    elif visit_class == "EMER":
        start = _at(day, rng.randrange(24 * 60))
        length = timedelta(minutes=rng.randint(60, 600))
    else:
        start = _at(day, rng.randrange(24 * 60))
        length = timedelta(hours=rng.randint(24, 8 * 24))
    return Visit(
        id=new_id(rng),
        site=site,
        visit_class=visit_class,
        start=start,
        end=start + length,
        narrative=None,
        mess=(),
    )


def _at(day: date, minute_of_day: int) -> datetime:
    """`day` at a minute of the day, hospital local time."""
    return datetime.combine(day, time(minute_of_day // 60, minute_of_day % 60), HOSPITAL_TZ)


def _visit_note(rng: random.Random, registration: Registration, visit: Visit) -> Note:
    """An encounter summary naming the patient, MRN, phone and visit date."""
    day = f"{visit.start:%m/%d/%Y}"
    name = registration.display_name
    text = rng.choice(
        (
            (
                f"{name} (MRN {registration.mrn}) seen at {visit.site.name} on {day}. "
                f"Callback number {registration.phone}."
            ),
            (
                f"Visit {day}: patient {name}, {registration.mrn}, arrived with family. "
                f"Reachable at {registration.phone} for follow-up."
            ),
        )
    )
    return Note(text=text, phi=(name, registration.mrn, registration.phone, day))


def _diagnoses(
    rng: random.Random, registration: Registration, visits: list[Visit], mess: frozenset[str]
) -> list[Diagnosis]:
    """0-3 distinct problems fitting the person's age, each diagnosed at one visit."""
    count = rng.choices((0, 1, 2, 3), (30, 35, 22, 13))[0]
    if "note_diagnosis" in mess:
        count = max(1, count)
    diagnoses: list[Diagnosis] = []
    for _ in range(count):
        visit = rng.choice(visits)
        age = age_on(registration.birth_date, visit.start.date())
        seen = {d.problem.key for d in diagnoses}
        fitting = [p for p in PROBLEMS.values() if p.min_age <= age and p.key not in seen]
        if not fitting:
            break
        diagnoses.append(_diagnosis(rng, rng.choice(fitting), visit, registration))
    if "note_diagnosis" in mess and diagnoses:
        i = rng.randrange(len(diagnoses))
        note = _diagnosis_note(rng, registration, diagnoses[i])
        diagnoses[i] = dataclasses.replace(diagnoses[i], note=note, mess=("note_diagnosis",))
    return diagnoses


def _diagnosis(
    rng: random.Random, problem: Problem, visit: Visit, registration: Registration
) -> Diagnosis:
    """A chronic problem began before the visit; an acute one began days before and resolved."""
    if problem.chronic:
        earliest = datetime.combine(registration.birth_date, time(0), HOSPITAL_TZ)
        onset = max(earliest, visit.start - timedelta(days=rng.randint(0, 3 * 365)))
        abated = None
    else:
        onset = visit.start - timedelta(days=rng.randint(0, 10))
        abated = visit.start + timedelta(days=rng.randint(5, 30)) if rng.random() < 0.7 else None
    coded_as: CodedAs = rng.choices(("both", "icd10", "snomed"), (60, 25, 15))[0]
    return Diagnosis(
        id=new_id(rng),
        visit_id=visit.id,
        problem=problem,
        onset=onset.replace(hour=0, minute=0),
        abated=abated,
        coded_as=coded_as,
        note=None,
        mess=(),
    )


def _diagnosis_note(rng: random.Random, registration: Registration, diagnosis: Diagnosis) -> Note:
    """A clinician's note naming the patient, birth date, MRN and phone."""
    name = registration.display_name
    born = f"{registration.birth_date:%m/%d/%Y}"
    since = f"{diagnosis.onset:%B %d, %Y}"
    text = rng.choice(
        (
            (
                f"{name}, DOB {born}, {registration.mrn}: symptoms since {since}. "
                f"Best number {registration.phone}."
            ),
            (
                f"Discussed {diagnosis.problem.snomed_display.lower()} with {name} ({registration.mrn}, "
                f"born {born}); onset {since}. Will call {registration.phone} with results."
            ),
        )
    )
    return Note(text=text, phi=(name, registration.mrn, registration.phone, since, born))


def _measurements(
    rng: random.Random,
    registration: Registration,
    visits: list[Visit],
    problems: set[str],
    mess: frozenset[str],
    count: int,
) -> list[Measurement]:
    """Vitals and labs across the visits: the planted ones first, then clean ones up to count."""
    baseline = _Baseline.draw(rng, registration, problems)
    specs: list[tuple[str, str | None]] = []
    for kind_of_mess, (kind, planted) in MEASUREMENT_MESS.items():
        if kind_of_mess in mess:
            specs.append((kind or _pick_kind(rng, planted), planted))
    while len(specs) < count:
        specs.append((_pick_kind(rng, None), None))
    taken = [
        _measurement(rng, registration, rng.choice(visits), kind, planted, baseline)
        for kind, planted in specs
    ]
    return sorted(taken, key=lambda m: m.taken_at)


def _pick_kind(rng: random.Random, planted: str | None) -> str:
    """A measurement kind fit to carry `planted` (labs for local codes, no panels for values)."""
    if planted == "local_code":
        return rng.choice(LABS)
    choices = VITALS if rng.random() < 0.7 else LABS
    if planted == "value_absent":
        choices = tuple(k for k in choices if k != "blood_pressure")
    return rng.choice(choices)


@dataclass(frozen=True)
class _Baseline:
    """A person's stable physiology that their measurements scatter around."""

    age: int
    female: bool
    height_cm: float
    weight_kg: float
    problems: frozenset[str]

    @staticmethod
    def draw(rng: random.Random, registration: Registration, problems: set[str]) -> _Baseline:
        """Height and weight fitting age and sex; problems shift the labs."""
        age = age_on(registration.birth_date, REFERENCE_DATE)
        female = registration.gender == "female"
        adult_height = rng.gauss(163 if female else 177, 7)
        height = adult_height if age >= 18 else 50 + (adult_height - 50) * min(age, 18) / 18
        bmi = rng.gauss(31 if "obesity" in problems else 26, 3.5) if age >= 18 else rng.gauss(17, 2)
        weight = max(3.0, bmi * (height / 100) ** 2)
        return _Baseline(age, female, height, weight, frozenset(problems))

    def value(self, rng: random.Random, kind: str) -> float:
        """A plausible reading of `kind` in its canonical unit."""
        has = self.problems.__contains__
        draws: dict[str, tuple[float, float]] = {
            "heart_rate": (95 if self.age < 12 else 76, 10),
            "temperature": (36.8, 0.35),
            "weight": (self.weight_kg, 1.2),
            "height": (self.height_cm, 0.4),
            "spo2": (94 if has("copd") else 97.5, 1.5),
            "respiratory_rate": (22 if self.age < 12 else 16, 2),
            "glucose": (165, 35) if has("diabetes") else (92, 10),
            "creatinine": (1.8, 0.3) if has("ckd3") else (0.9, 0.15),
            "cholesterol": (240, 25) if has("hyperlipidemia") else (185, 25),
            "hba1c": (7.6, 1.0) if has("diabetes") else (5.3, 0.3),
            "hemoglobin": (10.5, 0.8) if has("anemia") else (13.5 if self.female else 15.0, 1.0),
        }
        mean, sd = draws[kind]
        value = rng.gauss(mean, sd)
        return min(value, 100.0) if kind == "spo2" else max(value, 0.1)

    def blood_pressure(self, rng: random.Random) -> tuple[float, float]:
        """Systolic and diastolic pressure, higher with hypertension."""
        systolic = rng.gauss(142 if "hypertension" in self.problems else 120, 12)
        diastolic = min(systolic - 20, rng.gauss(88 if "hypertension" in self.problems else 76, 8))
        return round(systolic), round(diastolic)


def _measurement(
    rng: random.Random,
    registration: Registration,
    visit: Visit,
    key: str,
    planted: str | None,
    baseline: _Baseline,
) -> Measurement:
    """One reading taken during `visit`, carrying the planted defect if any."""
    kind = MEASUREMENTS[key]
    stay = (visit.end - visit.start) if visit.end else timedelta(hours=2)
    minutes = rng.randrange(max(1, int(stay.total_seconds() // 60)))
    reading = Measurement(
        id=new_id(rng),
        visit_id=visit.id,
        kind=kind,
        taken_at=visit.start + timedelta(minutes=minutes),
        value=None,
        unit=kind.unit,
        unit_display=kind.unit_display,
        components=(),
        canonical_value=None,
        absent_reason=None,
        local_code_only=False,
        note=None,
        mess=(planted,) if planted else (),
    )
    if key == "blood_pressure":
        systolic, diastolic = baseline.blood_pressure(rng)
        return dataclasses.replace(
            reading, components=(("8480-6", systolic), ("8462-4", diastolic))
        )
    canonical = _rounded(baseline.value(rng, key), kind.decimals)
    if planted == "impossible":
        canonical = -canonical if key == "weight" else IMPOSSIBLE_VALUES[key]
    elif planted == "value_absent":
        return dataclasses.replace(reading, absent_reason=rng.choice(ABSENT_REASONS))
    reading = dataclasses.replace(
        reading,
        value=canonical,
        canonical_value=canonical,
        local_code_only=planted == "local_code",
    )
    if planted == "unit_mix" and kind.alt_unit is not None:
        alt = kind.alt_unit
        return dataclasses.replace(
            reading,
            value=_rounded(canonical * alt.scale + alt.offset, alt.decimals),
            unit=alt.code,
            unit_display=alt.display,
        )
    if planted == "note":
        return dataclasses.replace(
            reading, note=_measurement_note(rng, registration, reading.taken_at)
        )
    return reading


def _rounded(value: float, decimals: int) -> float:
    """A reading rounded as the instrument reports it (whole numbers stay integers)."""
    return round(value) if decimals == 0 else round(value, decimals)


def _measurement_note(rng: random.Random, registration: Registration, taken_at: datetime) -> Note:
    """A result-callback note naming the patient, phone, MRN and date."""
    name = registration.display_name
    day = f"{taken_at:%Y-%m-%d}" if rng.random() < 0.5 else f"{taken_at:%m/%d/%Y}"
    text = rng.choice(
        (
            f"Result called to {name} at {registration.phone} on {day}; MRN {registration.mrn}.",
            f"Spoke with {name} ({registration.mrn}) on {day}, callback {registration.phone}.",
        )
    )
    return Note(text=text, phi=(name, registration.phone, registration.mrn, day))


def _prescriptions(
    rng: random.Random, visits: list[Visit], diagnoses: list[Diagnosis]
) -> list[Prescription]:
    """0-3 orders: drugs treating the diagnoses first, otherwise an as-needed analgesic."""
    count = rng.choices((0, 1, 2, 3), (35, 35, 20, 10))[0]
    indicated = [(d, DRUGS[key]) for d in diagnoses for key in d.problem.drugs]
    rng.shuffle(indicated)
    orders: list[Prescription] = []
    used: set[str] = set()
    for diagnosis, drug in indicated:
        if len(orders) < count and drug.key not in used:
            visit = next(v for v in visits if v.id == diagnosis.visit_id)
            orders.append(_prescription(rng, visit, drug, diagnosis.id))
            used.add(drug.key)
    while len(orders) < count:
        drug = DRUGS[rng.choice(("acetaminophen", "ibuprofen"))]
        if drug.key in used:
            break
        orders.append(_prescription(rng, rng.choice(visits), drug, None))
        used.add(drug.key)
    return orders


def _prescription(
    rng: random.Random, visit: Visit, drug: Drug, reason_id: str | None
) -> Prescription:
    """An order written near the start of the visit."""
    status: RxStatus = rng.choices(("active", "completed", "stopped"), (60, 30, 10))[0]
    return Prescription(
        id=new_id(rng),
        visit_id=visit.id,
        drug=drug,
        authored_at=visit.start + timedelta(minutes=rng.randint(5, 60)),
        status=status,
        reason_id=reason_id,
    )


def _maybe_deceased(
    rng: random.Random, registration: Registration, visits: list[Visit]
) -> Registration:
    """About 2% of records carry a death after the last visit (never after the extract)."""
    if rng.random() >= 0.02:
        return registration
    last = max((v.end or v.start) for v in visits)
    died = last + timedelta(hours=rng.randint(1, 24 * 30))
    if died.date() >= REFERENCE_DATE:
        return registration
    return dataclasses.replace(registration, deceased_at=died)
