"""Built-in vocabularies of the sample hospital: names, places, sites and clinical codes.

Every code here is real (LOINC, UCUM, ICD-10-CM FY2025, SNOMED CT, RxNorm SCD); the names,
streets and phone numbers are invented. Area code 555 is not a geographic code and SSN-like
numbers start with 9, which the SSA never issues, so no value can belong to a real person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL_LAB = "http://hospital.example.org/lab-codes"
MRN_SYSTEM = "http://hospital.example.org/mrn"
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
SITE_SYSTEM = "http://hospital.example.org/sites"

FEMALE_GIVEN: tuple[str, ...] = (
    "Maria",
    "Emma",
    "Olivia",
    "Sophia",
    "Zoë",
    "Chloé",
    "Aisha",
    "Mei",
    "Ingrid",
    "Fatima",
    "Elizabeth",
    "Katherine",
    "Margaret",
    "Jennifer",
    "Susan",
    "Patricia",
    "Ana",
    "Priya",
    "Noor",
    "Yuki",
    "Agnieszka",
    "Siobhán",
)
MALE_GIVEN: tuple[str, ...] = (
    "José",
    "Søren",
    "James",
    "William",
    "Robert",
    "Michael",
    "Thomas",
    "Daniel",
    "Joseph",
    "Christopher",
    "Alexander",
    "Mohammed",
    "Wei",
    "Kwame",
    "Björn",
    "François",
    "Luis",
    "Hiroshi",
    "Arjun",
    "Łukasz",
    "Dmitri",
    "Omar",
)
FAMILY: tuple[str, ...] = (
    "Smith",
    "Johnson",
    "García",
    "Müller",
    "Nguyen",
    "O'Brien",
    "Kowalski",
    "Andersen",
    "Østergaard",
    "Rossi",
    "Dubois",
    "Papadopoulos",
    "Yamamoto",
    "Kim",
    "Patel",
    "Okafor",
    "Haddad",
    "Silva",
    "Novák",
    "Schröder",
    "Fernández",
    "Lindqvist",
    "MacDonald",
    "Chen",
    "Cohen",
    "Mensah",
    "Jankowski",
    "Eriksson",
    "Brown",
    "Taylor",
    "Walker",
    "Hernández",
)
NICKNAMES: dict[str, str] = {
    "William": "Liam",
    "Robert": "Bobby",
    "Elizabeth": "Liz",
    "Katherine": "Kate",
    "Margaret": "Peggy",
    "James": "Jim",
    "Alexander": "Alex",
    "Jennifer": "Jenny",
    "Michael": "Mike",
    "Thomas": "Tom",
    "Susan": "Susie",
    "Christopher": "Chris",
    "Daniel": "Danny",
    "Joseph": "Joe",
    "Patricia": "Trish",
    "José": "Pepe",
    "Dmitri": "Dima",
}
STREETS: tuple[str, ...] = (
    "Maple",
    "Oak",
    "Elm",
    "Cedar",
    "Willow",
    "Birch",
    "Harbor",
    "Summit",
    "Mill",
    "River",
    "Chestnut",
    "Highland",
    "Prospect",
    "Lincoln",
    "Washington",
    "Forest",
)
STREET_SUFFIXES: tuple[str, ...] = ("Street", "Avenue", "Road", "Lane", "Drive", "Court", "Way")
# (city, state, first three ZIP digits)
CITIES: tuple[tuple[str, str, str], ...] = (
    ("Springfield", "MA", "011"),
    ("Worcester", "MA", "016"),
    ("Cambridge", "MA", "021"),
    ("Lowell", "MA", "018"),
    ("Providence", "RI", "029"),
    ("Nashua", "NH", "030"),
    ("Hartford", "CT", "061"),
)

MaritalCode = Literal["M", "S", "D", "W", "U"]
MARITAL_DISPLAY: dict[str, str] = {
    "M": "Married",
    "S": "Never Married",
    "D": "Divorced",
    "W": "Widowed",
    "U": "unmarried",
}


@dataclass(frozen=True)
class Site:
    """A hospital site where encounters happen; per-site metrics group by its id."""

    id: str
    name: str


SITES: tuple[Site, ...] = (
    Site("riverside", "Riverside General Hospital"),
    Site("northgate", "Northgate Community Clinic"),
    Site("st-agnes", "St. Agnes Medical Center"),
)

Category = Literal["vital-signs", "laboratory"]


@dataclass(frozen=True)
class AltUnit:
    """A non-canonical unit some sources record in: alt = canonical * scale + offset."""

    code: str
    display: str
    scale: float
    offset: float = 0.0
    decimals: int = 1


@dataclass(frozen=True)
class MeasurementKind:
    """A measurement the hospital records: its LOINC code, canonical UCUM unit and normal range."""

    key: str
    loinc: str
    display: str
    category: Category
    unit: str
    unit_display: str
    normal: tuple[float, float]
    decimals: int
    alt_unit: AltUnit | None = None
    local_code: str | None = None
    local_display: str | None = None


MEASUREMENTS: dict[str, MeasurementKind] = {
    m.key: m
    for m in (
        MeasurementKind(
            "heart_rate",
            "8867-4",
            "Heart rate",
            "vital-signs",
            "/min",
            "beats/minute",
            (60, 100),
            0,
        ),
        MeasurementKind(
            "temperature",
            "8310-5",
            "Body temperature",
            "vital-signs",
            "Cel",
            "°C",
            (36.1, 37.8),
            1,
            AltUnit("[degF]", "°F", 1.8, 32.0),
        ),
        MeasurementKind(
            "weight",
            "29463-7",
            "Body weight",
            "vital-signs",
            "kg",
            "kg",
            (50, 110),
            1,
            AltUnit("[lb_av]", "lb", 1 / 0.45359237),
        ),
        MeasurementKind(
            "height",
            "8302-2",
            "Body height",
            "vital-signs",
            "cm",
            "cm",
            (150, 195),
            1,
            AltUnit("[in_i]", "in", 1 / 2.54),
        ),
        MeasurementKind(
            "blood_pressure",
            "85354-9",
            "Blood pressure panel with all children optional",
            "vital-signs",
            "mm[Hg]",
            "mmHg",
            (90, 140),
            0,
        ),
        MeasurementKind(
            "spo2",
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
            "vital-signs",
            "%",
            "%",
            (94, 100),
            0,
        ),
        MeasurementKind(
            "respiratory_rate",
            "9279-1",
            "Respiratory rate",
            "vital-signs",
            "/min",
            "breaths/minute",
            (12, 20),
            0,
        ),
        MeasurementKind(
            "glucose",
            "2339-0",
            "Glucose [Mass/volume] in Blood",
            "laboratory",
            "mg/dL",
            "mg/dL",
            (70, 99),
            0,
            AltUnit("mmol/L", "mmol/L", 1 / 18.016, 0.0, 2),
            "GLU",
            "Glucose",
        ),
        MeasurementKind(
            "creatinine",
            "2160-0",
            "Creatinine [Mass/volume] in Serum or Plasma",
            "laboratory",
            "mg/dL",
            "mg/dL",
            (0.6, 1.3),
            2,
            None,
            "CREAT",
            "Creatinine",
        ),
        MeasurementKind(
            "cholesterol",
            "2093-3",
            "Cholesterol [Mass/volume] in Serum or Plasma",
            "laboratory",
            "mg/dL",
            "mg/dL",
            (0, 200),
            0,
            None,
            "CHOL",
            "Cholesterol",
        ),
        MeasurementKind(
            "hba1c",
            "4548-4",
            "Hemoglobin A1c/Hemoglobin.total in Blood",
            "laboratory",
            "%",
            "%",
            (4.0, 5.6),
            1,
            None,
            "A1C",
            "Hemoglobin A1c",
        ),
        MeasurementKind(
            "hemoglobin",
            "718-7",
            "Hemoglobin [Mass/volume] in Blood",
            "laboratory",
            "g/dL",
            "g/dL",
            (12.0, 17.5),
            1,
            None,
            "HGB",
            "Hemoglobin",
        ),
    )
}
VITALS: tuple[str, ...] = tuple(k for k, m in MEASUREMENTS.items() if m.category == "vital-signs")
LABS: tuple[str, ...] = tuple(k for k, m in MEASUREMENTS.items() if m.category == "laboratory")
BP_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("8480-6", "Systolic blood pressure"),
    ("8462-4", "Diastolic blood pressure"),
)
# hospital-local lab code -> LOINC, the map a terminology step needs to recode local labs
LOCAL_LAB_TO_LOINC: dict[str, str] = {
    m.local_code: m.loinc for m in MEASUREMENTS.values() if m.local_code is not None
}


@dataclass(frozen=True)
class Problem:
    """A diagnosis in both ICD-10-CM and SNOMED CT, with the drugs that treat it (RxNorm keys)."""

    key: str
    icd10: str
    icd10_display: str
    snomed: str
    snomed_display: str
    chronic: bool
    min_age: int
    drugs: tuple[str, ...]


PROBLEMS: dict[str, Problem] = {
    p.key: p
    for p in (
        Problem(
            "diabetes",
            "E11.9",
            "Type 2 diabetes mellitus without complications",
            "44054006",
            "Diabetes mellitus type 2",
            True,
            25,
            ("metformin",),
        ),
        Problem(
            "hypertension",
            "I10",
            "Essential (primary) hypertension",
            "38341003",
            "Hypertensive disorder, systemic arterial",
            True,
            25,
            ("lisinopril", "amlodipine", "hctz"),
        ),
        Problem(
            "asthma",
            "J45.909",
            "Unspecified asthma, uncomplicated",
            "195967001",
            "Asthma",
            True,
            2,
            ("albuterol", "fluticasone"),
        ),
        Problem(
            "ckd3",
            "N18.30",
            "Chronic kidney disease, stage 3 unspecified",
            "433144002",
            "Chronic kidney disease stage 3",
            True,
            40,
            (),
        ),
        Problem(
            "hyperlipidemia",
            "E78.5",
            "Hyperlipidemia, unspecified",
            "55822004",
            "Hyperlipidemia",
            True,
            30,
            ("simvastatin",),
        ),
        Problem(
            "copd",
            "J44.9",
            "Chronic obstructive pulmonary disease, unspecified",
            "13645005",
            "Chronic obstructive lung disease",
            True,
            45,
            ("albuterol",),
        ),
        Problem(
            "afib",
            "I48.91",
            "Unspecified atrial fibrillation",
            "49436004",
            "Atrial fibrillation",
            True,
            50,
            ("warfarin",),
        ),
        Problem(
            "depression",
            "F32.9",
            "Major depressive disorder, single episode, unspecified",
            "370143000",
            "Major depressive disorder",
            True,
            14,
            (),
        ),
        Problem("obesity", "E66.9", "Obesity, unspecified", "414916001", "Obesity", True, 5, ()),
        Problem(
            "gerd",
            "K21.9",
            "Gastro-esophageal reflux disease without esophagitis",
            "235595009",
            "Gastroesophageal reflux disease",
            True,
            18,
            (),
        ),
        Problem(
            "low_back_pain",
            "M54.50",
            "Low back pain, unspecified",
            "279039007",
            "Low back pain",
            False,
            16,
            ("ibuprofen", "acetaminophen"),
        ),
        Problem(
            "uri",
            "J06.9",
            "Acute upper respiratory infection, unspecified",
            "54150009",
            "Upper respiratory infection",
            False,
            0,
            ("acetaminophen",),
        ),
        Problem(
            "hypothyroidism",
            "E03.9",
            "Hypothyroidism, unspecified",
            "40930008",
            "Hypothyroidism",
            True,
            20,
            ("levothyroxine",),
        ),
        Problem("anemia", "D64.9", "Anemia, unspecified", "271737000", "Anemia", False, 0, ()),
    )
}


@dataclass(frozen=True)
class Drug:
    """A prescribable drug: its RxNorm clinical drug code and the sig a prescriber writes."""

    key: str
    rxnorm: str
    display: str
    sig: str


DRUGS: dict[str, Drug] = {
    d.key: d
    for d in (
        Drug(
            "metformin",
            "860975",
            "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
            "Take 1 tablet by mouth once daily with the evening meal",
        ),
        Drug(
            "lisinopril",
            "314076",
            "lisinopril 10 MG Oral Tablet",
            "Take 1 tablet by mouth once daily",
        ),
        Drug(
            "amlodipine",
            "197361",
            "amlodipine 5 MG Oral Tablet",
            "Take 1 tablet by mouth once daily",
        ),
        Drug(
            "hctz",
            "310798",
            "hydrochlorothiazide 25 MG Oral Tablet",
            "Take 1 tablet by mouth every morning",
        ),
        Drug(
            "simvastatin",
            "314231",
            "simvastatin 10 MG Oral Tablet",
            "Take 1 tablet by mouth at bedtime",
        ),
        Drug(
            "albuterol",
            "745679",
            "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            "Inhale 2 puffs every 4 to 6 hours as needed for wheezing",
        ),
        Drug(
            "fluticasone",
            "895994",
            "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
            "Inhale 2 puffs twice daily; rinse mouth after use",
        ),
        Drug(
            "warfarin",
            "855332",
            "warfarin sodium 5 MG Oral Tablet",
            "Take 1 tablet by mouth once daily in the evening; INR check in 1 week",
        ),
        Drug(
            "levothyroxine",
            "966222",
            "levothyroxine sodium 0.075 MG Oral Tablet",
            "Take 1 tablet by mouth every morning on an empty stomach",
        ),
        Drug(
            "ibuprofen",
            "310965",
            "ibuprofen 200 MG Oral Tablet",
            "Take 2 tablets by mouth every 6 hours as needed for pain",
        ),
        Drug(
            "acetaminophen",
            "313782",
            "acetaminophen 325 MG Oral Tablet",
            "Take 2 tablets by mouth every 6 hours as needed; max 3 g per day",
        ),
    )
}
