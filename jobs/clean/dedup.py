"""Entity resolution: which patient records, across sources and registrations, are one person.

Three pure steps and one persistent table:

1. :func:`features`: the identities the vault receives (``fhir.patient_identities``,
   ``hl7v2.patient_identities``: FHIR-shaped names, telecom, address) → one row per source record
   of normalized linkage fields (first given name and its formal form, family name, generational
   suffix (Sr, Jr, II…), birth date, sex, street line, city, ZIP5, phone as 10 digits, SSN), plus its
   ``prelink_key``: the person key the ingest gave it (the MRN's key when the record carries an
   MRN with its authority, else its source key). This PHI table lives in memory only (DuckDB in-memory), never in the lake.
2. :func:`link`: Splink 5 on DuckDB (on Spark, in the Spark engine's session: :func:`splink_session`)
   scores candidate pairs (Fellegi-Sunter); records sharing a
   prelink key are linked deterministically (probability 1: same MRN under the same authority).
   Each scored pair falls in one of three zones (:func:`zones`): **merge** at or above
   ``threshold``; **review** from ``review_threshold`` up, or whenever a review rule fires
   (:data:`REVIEW_REASONS`: same birth date with two real first names, a possible twin; birth
   years ten or more apart by one digit; birth dates two slips or days apart without the same name
   and home; two full SSNs that differ; no phone or street in common), and below it from
   ``name_change_floor`` up for a possible name change (:func:`name_change`); **apart** below, or
   whenever a hard non-match rule fires (:data:`NONMATCH_RULES`: generational suffixes differ;
   sex and first name both differ; birth dates neither one slip, two slips in one year, nor a
   month apart). Clusters are built from
   the merge links in order of probability (:func:`cluster`), refusing a link that would put two
   records a rule or a steward (``apart``) keeps apart into one person: the refused link goes to
   review. Review pairs go to ``reference.identity_review`` (:mod:`.identity`: a steward
   approves, rejects, or splits a person).
3. :func:`assign`: clusters + the crosswalk (``reference.person_crosswalk``: source_key →
   person_key) → this run's crosswalk rows and events (``reference.person_events``). A record
   keeps its person_key forever; a new record joining an existing person takes its key; when a
   run links records of two existing persons, the older key survives, the younger person's
   records are re-pointed and a ``merge`` event names both keys. Nothing is split automatically:
   a steward's correction is a ``split`` event (:func:`medlake.jobs.clean.identity.split`).

Earlier runs: a second registration may arrive runs after its first, alone. Each run therefore
links its records together with the identities of the earlier records they could match
(``prior``, as *anchors*: scored like the rest, but links between two anchors are dropped, since
earlier runs decided them). Those identities exist only in the encrypted vault; the run finds
them without decrypting it (:func:`earlier_identities`): every record's **keyed blocking
tokens** (HMAC under the project key of the normalized values of each blocking rule: birth
date, phone, family + formal given name, ZIP + street) are kept in
``reference.identity_tokens``, and only the vault records whose tokens equal one of this run's
are decrypted (:func:`medlake.governance.vault.linkage_candidates`: in memory, never written,
audited once per run as ``vault.link`` with counts only). The tokens only find candidates,
exactly as the blocking rules do within a run; every comparison level (Jaro-Winkler, one-slip
birth dates, nicknames, same last 7 phone digits) still runs on the decrypted candidates. A token
compares equal or not and cannot be reversed without the key.

Merges re-key earlier rows: :func:`rekey` moves every silver row still under an absorbed person
to the survivor (key and date shift, :func:`remap`), one MERGE per table, after the gate. A row
that moves keeps the key ingest gave it in ``_prelink_key``, so a split can move it back.

Model: the m probabilities are documented priors (:data:`M_PRIORS`, what fraction of true
duplicates fall in each level); with at least ``u_min_records`` records the u probabilities are
estimated by random sampling (fallback: :data:`U_PRIORS` when a level is never seen, and for a
smaller run, whose few records and their token candidates, all alike, say nothing about
strangers); with at least ``em_min_records`` records the m probabilities are re-estimated by EM
on two blocking rules and exact agreement on given name, family name and city is adjusted for
how common the value is (term frequencies); an EM session Splink refuses (an m underflowed to 0)
changes nothing (:func:`trained_linker`). :attr:`Linkage.model` says which, in words; the
resolve ledger entry carries it. The prior match probability is
``expected_matches_per_record / (population - 1)``, the population being every record the lake
knows, not only those linked in this run.

Twins: siblings born the same day share family name, birth date, address, phone and ZIP: under
independence those agreements outweigh anything. A given name that is neither similar nor a
nickname of the other (nor one edit away) is therefore a veto: its m is fixed at
``GIVEN_VETO_M`` and EM never raises it. Twins with similar names are caught by the rules: of
opposite sex by the sex-and-name rule, of one sex by the possible-twin review rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medlake.governance import vault
from medlake.governance.crypto import Keyring
from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import keyed_hash
from medlake.jobs.clean import config
from medlake.lake import Lake, conform
from medlake.ledger import Entry
from medlake.registry import (
    IDENTITY_REVIEW,
    IDENTITY_TOKENS,
    PERSON_CROSSWALK,
    PERSON_EVENTS,
    PRELINK_FIELD,
    SILVER_PATIENT_LINKS,
    SILVER_PATIENTS,
    SILVER_PERSONS,
    TABLES,
    TableSpec,
)

log = logging.getLogger(__name__)

#: common English given-name nicknames → the formal name; both spellings compare as one
NICKNAMES: dict[str, str] = {
    nick: formal
    for formal, nicks in {
        "ALEXANDER": ("ALEX", "AL", "XANDER", "SASHA"),
        "ANTHONY": ("TONY",),
        "BENJAMIN": ("BEN", "BENNY"),
        "CATHERINE": ("CATHY", "CATE", "KATE", "KATIE"),
        "CHARLES": ("CHARLIE", "CHUCK"),
        "CHRISTOPHER": ("CHRIS", "KIT"),
        "DANIEL": ("DAN", "DANNY"),
        "DMITRI": ("DIMA",),
        "EDWARD": ("ED", "EDDIE", "TED"),
        "ELIZABETH": ("LIZ", "BETH", "BETTY", "LIZZIE", "ELIZA"),
        "JAMES": ("JIM", "JIMMY", "JAMIE"),
        "JENNIFER": ("JEN", "JENNY"),
        "JOHN": ("JACK", "JOHNNY"),
        "JOSEPH": ("JOE", "JOEY"),
        "JOSE": ("PEPE",),
        "KATHERINE": ("KATE", "KATHY", "KATIE", "KAT"),
        "MARGARET": ("PEGGY", "MAGGIE", "MEG", "MARGE"),
        "MICHAEL": ("MIKE", "MICKEY"),
        "NICHOLAS": ("NICK", "NICKY"),
        "PATRICIA": ("PAT", "PATTY", "TRISH", "TRISHA"),
        "RICHARD": ("RICK", "RICH", "DICK"),
        "ROBERT": ("BOB", "BOBBY", "ROB", "ROBBIE"),
        "SUSAN": ("SUE", "SUSIE", "SUZY"),
        "THOMAS": ("TOM", "TOMMY"),
        "WILLIAM": ("BILL", "BILLY", "WILL", "LIAM"),
    }.items()
    for nick in nicks
}

FEATURES = pa.schema(
    [
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("prelink_key", pa.string(), nullable=False),
        pa.field("source_system", pa.string()),
        pa.field("given", pa.string()),
        pa.field("given_formal", pa.string()),
        pa.field("family", pa.string()),
        pa.field("suffix", pa.string()),  # generational: JR, SR, II, III, IV
        pa.field("birth_date", pa.string()),  # YYYY-MM-DD
        pa.field("sex", pa.string()),
        pa.field("street", pa.string()),
        pa.field("city", pa.string()),
        pa.field("zip5", pa.string()),
        pa.field("phone", pa.string()),  # 10 digits
        pa.field("ssn", pa.string()),  # US SSN: 9 digits, or its last 4 when a source carries only those
        pa.field("email", pa.string()),  # lower case
    ]
)

LINKS = pa.schema(
    [
        pa.field("source_key_l", pa.string(), nullable=False),
        pa.field("source_key_r", pa.string(), nullable=False),
        pa.field("match_probability", pa.float64(), nullable=False),
        pa.field("match_weight", pa.float64()),  # null for deterministic links
        pa.field("rule", pa.string(), nullable=False),  # 'prelink' (same MRN) | 'identical' | 'splink'
    ]
)

CLUSTERS = pa.schema(
    [
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("prelink_key", pa.string(), nullable=False),
        pa.field("cluster", pa.string(), nullable=False),  # the smallest source_key of the cluster
    ]
)

#: pairs a steward should look at (reference.identity_review): the pair, Splink's figures, why
REVIEW = pa.schema(
    [
        pa.field("source_key_l", pa.string(), nullable=False),
        pa.field("source_key_r", pa.string(), nullable=False),
        pa.field("match_probability", pa.float64(), nullable=False),
        pa.field("match_weight", pa.float64()),
        pa.field("reason", pa.string(), nullable=False),  # identity.<rule>, see REVIEW_REASONS
        pa.field("evidence", pa.string(), nullable=False),  # JSON field → agree|similar|differ|missing
    ]
)

#: m priors per comparison, from its best level down to "else" (null levels carry no weight)
M_PRIORS: dict[str, tuple[float, ...]] = {
    # exact, formal form equal, JW≥.92, one edit (short names: Mei/Msi, Ana/Aan), JW≥.85, else
    "given": (0.70, 0.12, 0.06, 0.05, 0.06, 0.01),
    "family": (0.80, 0.12, 0.05, 0.03),  # exact, JW≥.92, JW≥.85, else (a married name)
    # exact, same year and a typo in month/day (or the two swapped), a typo in the year, near
    # (two slips in one year, or at most NEAR_DAYS apart: a day typo across a month), else
    "birth_date": (0.93, 0.05, 0.012, 0.005, 0.003),
    "sex": (0.97, 0.03),
    "street": (0.80, 0.10, 0.10),  # exact, JW≥.88, else (people move)
    "zip5": (0.85, 0.05, 0.02, 0.08),  # exact, same ZIP3, same city, else
    "phone": (0.75, 0.05, 0.20),  # exact digits, same last 7, else
    "ssn": (0.90, 0.04, 0.03, 0.03),  # all 9 digits, one slip, the same last 4, else
    "email": (0.70, 0.30),  # exact, else (people change addresses)
}
#: u fallbacks for levels random sampling never observes (a tiny sample)
U_PRIORS: dict[str, tuple[float, ...]] = {
    "given": (0.004, 0.001, 0.002, 0.002, 0.01, 0.981),
    "family": (0.002, 0.002, 0.01, 0.986),
    "birth_date": (0.0001, 0.0008, 0.0012, 0.003, 0.9949),
    "sex": (0.5, 0.5),
    "street": (0.0005, 0.002, 0.9975),
    "zip5": (0.01, 0.05, 0.02, 0.92),
    "phone": (0.0001, 0.0001, 0.9998),
    "ssn": (0.000001, 0.00001, 0.0001, 0.999889),
    "email": (0.00001, 0.99999),
}
#: m of "given names unrelated": a veto (twins), fixed through EM. Household fields (phone,
#: street, ZIP) are not independent and at 100k records each exact agreement is worth ~2^23, so
#: the veto must outweigh all of them together: 2^-100
GIVEN_VETO_M = 2.0**-100
#: comparisons whose exact level is adjusted for how common the value is (a large run only)
TF_COLUMNS = ("given", "family", "city")

#: hard non-match rules: a pair one of these fires on is never linked, whatever Splink says
NONMATCH_RULES: dict[str, str] = {
    "identity.suffix_conflict": "generational suffixes differ (Sr/Jr, II/III)",
    "identity.sex_and_given_conflict": "sex and first name both differ",
    "identity.birth_date_far": "birth dates differ beyond a typo: not one keying slip, not two slips in one year, "
    "more than a month apart",
}
#: why a pair waits for a steward instead of merging
REVIEW_REASONS: dict[str, str] = {
    "identity.review_zone": "match probability between the review and the merge thresholds",
    "identity.possible_twin": "same birth date and family name, first names differ: a twin or a typo",
    "identity.birth_year_far": "birth years ten or more apart by one digit: a typo or a parent",
    "identity.birth_date_near": "birth dates two slips or a few days apart, and not the same name with a shared "
    "phone or street",
    "identity.no_shared_contact": "phone, street and e-mail different where known on both (only one known: unless "
    "name, birth date and sex are all the same), and no full SSN in common: a namesake or a move",
    "identity.cluster_conflict": "merging would put two records a rule keeps apart into one person",
    "identity.ssn_conflict": "both records carry a full SSN and they differ beyond a keying slip",
    "identity.possible_name_change": "same first name, birth date and sex, another family name, no phone against "
    "it: a married or maiden name (queued below the review threshold, from the name-change floor up)",
}


@dataclass(frozen=True)
class LinkOptions:
    """How the linkage decides (from ``jobs.clean.config``, or ``medlake.config`` through
    :func:`link_options`)."""

    threshold: float = config.LINK_THRESHOLD  # merge at or above
    review_threshold: float = config.REVIEW_THRESHOLD  # queue for review at or above, below merge
    #: below review_threshold, a possible name change (:func:`name_change`, a married name and a
    #: move leave only first name, birth date and sex) is still queued from this probability up
    name_change_floor: float = config.NAME_CHANGE_FLOOR
    expected_matches_per_record: float = config.EXPECTED_MATCHES_PER_RECORD
    em_min_records: int = config.EM_MIN_RECORDS
    #: below this many records u stays at its priors: random pairs of a handful of records (a
    #: small run and the earlier records its tokens found, all alike) say nothing about strangers
    u_min_records: int = 200
    #: patient records the lake knows in all (the prior of a match is 1 / population); None: these
    population: int | None = None
    u_max_pairs: float = 1e7
    seed: int = 42


def link_options(settings: Any) -> LinkOptions:
    """The options of ``medlake.config.IdentitySettings`` (``settings.identity``)."""
    return LinkOptions(
        threshold=settings.merge_threshold,
        review_threshold=min(settings.review_threshold, settings.merge_threshold),
        name_change_floor=settings.name_change_floor,
        em_min_records=settings.em_min_records,
    )


@dataclass(frozen=True)
class Linkage:
    links: pa.Table  # LINKS: every pair merged (same MRN, or Splink at or above the threshold)
    clusters: pa.Table  # CLUSTERS: one row per input record
    review: pa.Table = field(default_factory=REVIEW.empty_table)  # REVIEW: pairs kept apart until a steward decides
    refused: int = 0  # scored pairs a hard non-match rule kept apart
    model: str = ""  # how m and u were estimated, in words (a small run falls back to priors)


# ---------------------------------------------------------------------------------------------
# 1. identities → linkage features


def _upper(value: Any) -> str | None:
    """Uppercase ASCII letters, digits and single spaces; accents dropped; None when empty."""
    if not isinstance(value, str):
        return None
    ascii_ = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Z0-9 ]+", "", re.sub(r"[-.'`]", " ", ascii_.upper()))
    return " ".join(cleaned.split()) or None


def normalize_phone(value: Any) -> str | None:
    """The 10 national digits of a North-American phone (leading country code 1 dropped)."""
    digits = re.sub(r"\D", "", value) if isinstance(value, str) else ""
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits if len(digits) == 10 else None


def normalize_date(value: Any) -> str | None:
    """YYYY-MM-DD from an ISO date/datetime or an HL7 DTM (YYYYMMDD…); None when unreadable."""
    text = value if isinstance(value, str) else ""
    match = re.match(r"(\d{4})-?(\d{2})-?(\d{2})", text)
    return "-".join(match.groups()) if match else None


#: generational name suffixes (FHIR HumanName.suffix, HL7 v2 XPN.4, or trailing in a name) → one form
GENERATIONAL: dict[str, str] = {
    "JR": "JR", "JUNIOR": "JR", "SR": "SR", "SENIOR": "SR",
    "II": "II", "2ND": "II", "III": "III", "3RD": "III", "IV": "IV", "4TH": "IV",
}


def _suffix(value: Any) -> str | None:
    """The generational suffix among a FHIR suffix list or an HL7 v2 suffix string, if any."""
    values = value if isinstance(value, list) else [value]
    found = [GENERATIONAL.get(_upper(v) or "") for v in values if isinstance(v, str)]
    return next((f for f in found if f), None)


def _strip_suffix(name: str | None) -> tuple[str | None, str | None]:
    """A normalized name without a trailing generational suffix token ("SMITH JR" → SMITH, JR)."""
    tokens = (name or "").split()
    if len(tokens) > 1 and tokens[-1] in GENERATIONAL:
        return " ".join(tokens[:-1]), GENERATIONAL[tokens[-1]]
    return name, None


#: how an SSN is marked: FHIR's identifier system (URI or OID) or the HL7 v2 identifier type SS
SSN_SYSTEMS = ("http://hl7.org/fhir/sid/us-ssn", "urn:oid:2.16.840.1.113883.4.1", "2.16.840.1.113883.4.1")


def normalize_ssn(value: Any) -> str | None:
    """The 9 digits of a US SSN (or the last 4 when only those are given); None for a placeholder
    no person carries (area 000, 666 or 9xx, group 00, serial 0000: 999-99-9999, 000-00-0000…)."""
    digits = re.sub(r"\D", "", value) if isinstance(value, str) else ""
    if len(digits) == 4:
        return None if digits == "0000" else digits
    if len(digits) != 9 or digits[:3] in ("000", "666") or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000":
        return None
    return digits


def _ssn(identifiers: Any) -> str | None:
    """The SSN among FHIR Identifier / HL7 v2 CX-shaped identifiers, if any."""
    for ident in identifiers or []:
        if not isinstance(ident, dict):
            continue
        kind = ident.get("type")
        codes = (
            [c.get("code") for c in kind.get("coding") or [] if isinstance(c, dict)] if isinstance(kind, dict) else [kind]
        )
        if ident.get("system") in SSN_SYSTEMS or "SS" in codes:
            found = normalize_ssn(ident.get("value"))
            if found:
                return found
    return None


def normalize_email(value: Any) -> str | None:
    """An e-mail address in lower case, without a ``mailto:``; None when it is not one."""
    text = value.strip().lower().removeprefix("mailto:") if isinstance(value, str) else ""
    return text if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text) else None


def _pick(entries: Any, *, prefer: str = "official") -> dict[str, Any]:
    """The entry of a FHIR list whose use is ``prefer``, else the first one."""
    items = [e for e in entries or [] if isinstance(e, dict)]
    return next((e for e in items if e.get("use") == prefer), items[0] if items else {})


def features(
    identities: Iterable[Mapping[str, Any]], *, sex: Mapping[str, str] | None = None
) -> pa.Table:
    """One :data:`FEATURES` row per identity (vault-shaped dicts, see the module doc).

    ``sex``: source_key → administrative gender, from the silver patient rows (the vault
    identities do not carry it). A source_key seen twice keeps its last identity.
    """
    sex = sex or {}
    rows: dict[str, dict[str, Any]] = {}
    for ident in identities:
        name = _pick(ident.get("names"))
        givens = [g for g in name.get("given") or [] if isinstance(g, str)]
        given_tokens, given_suffix = _strip_suffix(_upper(" ".join(givens[:1])))
        family, family_suffix = _strip_suffix(_upper(name.get("family")))
        given = given_tokens.split()[0] if given_tokens else None
        address = _pick(ident.get("address"), prefer="home")
        lines = [line for line in address.get("line") or [] if isinstance(line, str)]
        phones = [
            normalize_phone(t.get("value"))
            for t in ident.get("telecom") or []
            if isinstance(t, dict) and t.get("system") in (None, "phone", "PH", "CP")
        ]
        zip_digits = re.sub(r"\D", "", str(address.get("postalCode") or ""))[:5]
        rows[ident["source_key"]] = {
            "source_key": ident["source_key"],
            "prelink_key": ident.get("person_key") or ident["source_key"],
            "source_system": ident.get("source_system"),
            "given": given,
            "given_formal": NICKNAMES.get(given or "", given),
            "family": family,
            "suffix": _suffix(name.get("suffix")) or family_suffix or given_suffix,
            "birth_date": normalize_date(ident.get("birth_date")),
            "sex": sex.get(ident["source_key"]),
            "street": _upper(lines[0]) if lines else None,
            "city": _upper(address.get("city")),
            "zip5": zip_digits if len(zip_digits) == 5 else None,
            "phone": next((p for p in phones if p), None),
            "ssn": _ssn(ident.get("identifiers")),
            "email": next(  # FHIR system email; HL7 v2 XTN-3 Internet (the address in XTN-4)
                (
                    e for e in (
                        normalize_email(t.get("value"))
                        for t in ident.get("telecom") or []
                        if isinstance(t, dict) and t.get("system") in ("email", "Internet", "X.400")
                    ) if e
                ),
                None,
            ),
        }
    return pa.Table.from_pylist(list(rows.values()), schema=FEATURES)


# ---------------------------------------------------------------------------------------------
# 2. linkage

MALE_FEMALE = ("male", "female")


def _osa(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment: adjacent swaps count one)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def date_typo(a: str, b: str) -> bool:
    """Two YYYY-MM-DD dates one keying slip apart: one digit wrong, two adjacent digits swapped,
    or day and month swapped."""
    return _osa(a, b) <= 1 or (a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7])


#: birth dates at most this many days apart may be one person's (a day typo across a month end)
NEAR_DAYS = 31


def _days_apart(a: str, b: str) -> int | None:
    try:
        return abs((date.fromisoformat(a) - date.fromisoformat(b)).days)
    except ValueError:  # not a calendar date (a typo can make 02-30)
        return None


def date_near(a: str, b: str) -> bool:
    """Two YYYY-MM-DD dates beyond one keying slip that may still be one person's: in one year
    with two slips (two digits wrong, or day and month swapped and one digit wrong), or at most
    :data:`NEAR_DAYS` apart (a day typo across a month or year end). Decades never are."""
    swapped = f"{b[:4]}-{b[8:10]}-{b[5:7]}"
    if a[:4] == b[:4] and (_osa(a, b) <= 2 or _osa(a, swapped) <= 1):
        return True
    apart = _days_apart(a, b)
    return apart is not None and apart <= NEAR_DAYS


def known_given(name: str) -> bool:
    """Whether a normalized given name is a first name people carry (the Faker name lists the
    free-text de-identification also uses), rather than a keyboard slip."""
    from medlake.governance.recognizers import gazetteer

    return name.casefold() in gazetteer()[0]


def nonmatch_rule(left: Mapping[str, Any], right: Mapping[str, Any]) -> str | None:
    """The hard non-match rule (:data:`NONMATCH_RULES`) two feature rows break, if any."""
    if left["suffix"] and right["suffix"] and left["suffix"] != right["suffix"]:
        return "identity.suffix_conflict"
    if (
        left["sex"] in MALE_FEMALE
        and right["sex"] in MALE_FEMALE
        and left["sex"] != right["sex"]
        and left["given_formal"]
        and right["given_formal"]
        and left["given_formal"] != right["given_formal"]
    ):
        return "identity.sex_and_given_conflict"
    born_l, born_r = left["birth_date"], right["birth_date"]
    if born_l and born_r and born_l != born_r and not date_typo(born_l, born_r) and not date_near(born_l, born_r):
        return "identity.birth_date_far"
    return None


def same_name_shared_contact(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    """Same formal first name, family name and sex, and the same phone or street."""
    return all(left[f] and left[f] == right[f] for f in ("given_formal", "family", "sex")) and any(
        left.get(f) and left.get(f) == right.get(f) for f in ("phone", "street", "email")
    )


def name_change(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    """Same first name (as written), birth date and sex, family names known and different, and no
    phone known on both sides that differs: perhaps one person before and after a marriage."""
    same = all(left[f] and left[f] == right[f] for f in ("given", "birth_date", "sex"))
    phones_differ = bool(left["phone"] and right["phone"] and left["phone"] != right["phone"])
    return same and bool(left["family"] and right["family"]) and left["family"] != right["family"] and not phones_differ


def review_rule(left: Mapping[str, Any], right: Mapping[str, Any]) -> str | None:
    """Why a pair, however probable, needs a steward (:data:`REVIEW_REASONS`), if it does."""
    born_l, born_r = left["birth_date"], right["birth_date"]
    given_l, given_r = left["given_formal"], right["given_formal"]
    two_names = bool(given_l and given_r and given_l != given_r) and (
        _osa(given_l, given_r) >= 3 or (known_given(given_l) and known_given(given_r))
    )
    if born_l and born_l == born_r and two_names:
        return "identity.possible_twin"  # Ava/Eva: two real names, not a slip of the keyboard
    if born_l and born_r and born_l != born_r and abs(int(born_l[:4]) - int(born_r[:4])) >= 10:
        return "identity.birth_year_far"
    if (
        born_l and born_r and not date_typo(born_l, born_r) and date_near(born_l, born_r)
        and not same_name_shared_contact(left, right)
    ):
        return "identity.birth_date_near"  # two slips: a steward decides, unless name and home agree
    ssn_l, ssn_r = left.get("ssn"), right.get("ssn")
    if ssn_l and ssn_r and len(ssn_l) == len(ssn_r) == 9 and _osa(ssn_l, ssn_r) > 1:
        return "identity.ssn_conflict"  # one of them mistyped, or two people
    same_ssn = bool(ssn_l and len(ssn_l) == 9 and ssn_l == ssn_r)  # not a namesake: contact may differ
    contact = [(left.get(f), right.get(f)) for f in ("phone", "street", "email") if left.get(f) and right.get(f)]
    exact = all(left[f] and left[f] == right[f] for f in ("given", "family", "birth_date", "sex"))
    if contact and all(a != b for a, b in contact) and not (len(contact) == 1 and exact) and not same_ssn:
        return "identity.no_shared_contact"  # namesakes, or one who moved
    return None


def evidence(left: Mapping[str, Any], right: Mapping[str, Any]) -> str:
    """What a steward sees of a pair without PHI: per field agree | similar | differ | missing."""

    def judge(a: Any, b: Any, similar: bool) -> str:
        if a is None or b is None:
            return "missing"
        return "agree" if a == b else "similar" if similar else "differ"

    def close(name: str, edits: int) -> bool:
        a, b = left[name], right[name]
        return a is not None and b is not None and _osa(a, b) <= edits

    born_l, born_r = left["birth_date"], right["birth_date"]
    found = {
        "given": judge(left["given_formal"], right["given_formal"], close("given", 2)),
        "family": judge(left["family"], right["family"], close("family", 2)),
        "suffix": judge(left["suffix"], right["suffix"], False),
        "birth_date": judge(born_l, born_r, bool(born_l and born_r and (date_typo(born_l, born_r) or date_near(born_l, born_r)))),
        "sex": judge(left["sex"], right["sex"], False),
        "street": judge(left["street"], right["street"], close("street", 2)),
        "zip5": judge(left["zip5"], right["zip5"], (left["zip5"] or "")[:3] == (right["zip5"] or "")[:3]),
        "phone": judge(left["phone"], right["phone"], (left["phone"] or "")[-7:] == (right["phone"] or "")[-7:]),
        "email": judge(left.get("email"), right.get("email"), False),
        "ssn": judge(left.get("ssn"), right.get("ssn"),
                     close("ssn", 1) or (left.get("ssn") or "")[-4:] == (right.get("ssn") or "")[-4:]),
    }
    return json.dumps(found, sort_keys=True)


def _comparisons(*, tf: bool = False) -> list[Any]:
    """Splink comparisons; ``tf``: adjust exact name and city agreement for how common the value is."""
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    def levels(name: str, *found: Any) -> list[Any]:
        null = [cll.NullLevel(name)]
        ranked = [*found, cll.ElseLevel()]
        for level, m, u in zip(ranked, M_PRIORS[name], U_PRIORS[name], strict=True):
            level.configure(m_probability=m, u_probability=u)
        if name == "given":
            ranked[-1].configure(m_probability=GIVEN_VETO_M, fix_m_probability=True)
        return null + ranked

    def comparison(name: str, *found: Any) -> Any:
        return cl.CustomComparison(comparison_levels=levels(name, *found), output_column_name=name)

    def exact(name: str) -> Any:
        return cll.ExactMatchLevel(name, term_frequency_adjustments=tf and name in TF_COLUMNS)

    same_year_slip = (
        "substr(birth_date_l, 1, 4) = substr(birth_date_r, 1, 4) AND ("
        "damerau_levenshtein(birth_date_l, birth_date_r) <= 1 OR ("
        "substr(birth_date_l, 6, 2) = substr(birth_date_r, 9, 2) AND "
        "substr(birth_date_l, 9, 2) = substr(birth_date_r, 6, 2)))"
    )
    same_year_two_slips = (
        "substr(birth_date_l, 1, 4) = substr(birth_date_r, 1, 4) AND "
        "damerau_levenshtein(birth_date_l, birth_date_r) <= 2"
    )
    return [
        comparison(
            "given",
            exact("given"),
            cll.ExactMatchLevel("given_formal"),
            cll.JaroWinklerLevel("given", 0.92),
            cll.DamerauLevenshteinLevel("given", 1),
            cll.JaroWinklerLevel("given", 0.85),
        ),
        comparison(
            "family",
            exact("family"),
            cll.JaroWinklerLevel("family", 0.92),
            cll.JaroWinklerLevel("family", 0.85),
        ),
        comparison(
            "birth_date",
            cll.ExactMatchLevel("birth_date"),
            cll.CustomLevel(same_year_slip, "birth date: same year, a slip in month or day"),
            cll.DamerauLevenshteinLevel("birth_date", 1),
            cll.Or(
                cll.CustomLevel(same_year_two_slips),
                cll.AbsoluteDateDifferenceLevel("birth_date", input_is_string=True, threshold=NEAR_DAYS,
                                                metric="day"),
            ),
        ),
        comparison("sex", cll.ExactMatchLevel("sex")),
        comparison("street", cll.ExactMatchLevel("street"), cll.JaroWinklerLevel("street", 0.88)),
        comparison(
            "zip5",
            cll.ExactMatchLevel("zip5"),
            cll.CustomLevel("substr(zip5_l, 1, 3) = substr(zip5_r, 1, 3)", "zip5"),
            exact("city"),
        ),
        comparison(
            "phone",
            cll.ExactMatchLevel("phone"),
            cll.CustomLevel("right(phone_l, 7) = right(phone_r, 7)", "phone"),
        ),
        comparison(
            "ssn",
            cll.CustomLevel("ssn_l = ssn_r AND length(ssn_l) = 9", "ssn: all nine digits"),
            cll.CustomLevel(
                "length(ssn_l) = 9 AND length(ssn_r) = 9 AND damerau_levenshtein(ssn_l, ssn_r) <= 1",
                "ssn: one keying slip",
            ),
            cll.CustomLevel("right(ssn_l, 4) = right(ssn_r, 4)", "ssn: the same last four"),
        ),
        comparison("email", cll.ExactMatchLevel("email")),
    ]


def _blocking_rules() -> list[Any]:
    """Candidate pairs: same birth date (catches name typos), same phone, same family name and
    formal given name (catches birth-date typos), same ZIP and street."""
    from splink import block_on

    return [block_on(*columns) for columns in BLOCKING_KEYS.values()]


#: the blocking rules as columns, by name; also what a keyed blocking token is made of
BLOCKING_KEYS: dict[str, tuple[str, ...]] = {
    "birth_date": ("birth_date",),
    "phone": ("phone",),
    "name": ("family", "given_formal"),
    "address": ("zip5", "street"),
}


def model_description(records: int, options: LinkOptions) -> str:
    """How :func:`_splink_pairs` estimates the model for a run of that many records, in words."""
    if records < 2:
        return "no Splink: fewer than two records (same-MRN links only)"
    if records < options.u_min_records:
        return (
            f"small run ({records} records < {options.u_min_records}): m and u at documented priors, "
            "no term-frequency adjustment"
        )
    if records < options.em_min_records:
        return (
            f"small run ({records} records < {options.em_min_records}): m at documented priors, "
            "u by random sampling (priors for levels never sampled), no term-frequency adjustment"
        )
    return "m by EM on two blocking rules, u by random sampling, names and city term-frequency adjusted"


def splink_jar() -> str:
    """The jar of Splink's Spark similarity functions (Jaro-Winkler, Damerau-Levenshtein), shipped
    inside the splink package: a Spark session for :func:`link` lists it in ``spark.jars``."""
    from splink.backends.spark import similarity_jar_location

    return str(similarity_jar_location())


def splink_session(engine: Any) -> Any | None:
    """The Spark session entity resolution scores in when the run's engine is Spark (the engine's
    own session: medlake's :func:`medlake.engines.spark.spark_session` lists Splink's jar in
    ``spark.jars``), else None: Splink on DuckDB in memory."""
    return engine.spark if getattr(engine, "name", None) == "spark" else None


def _database(spark: Any | None) -> Any:
    """Splink's database: DuckDB in memory, or Spark (its Spark backend) on the given session."""
    from splink import DuckDBAPI

    if spark is None:
        return DuckDBAPI()
    from splink.backends.spark import SparkAPI

    # persist, not checkpoint: no checkpoint directory to configure, and a few thousand pairs fit
    return SparkAPI(spark_session=spark, break_lineage_method="persist")  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Trained:
    linker: Any  # Splink's Linker, its model estimated
    model: str  # how m and u were estimated, in words (:attr:`Linkage.model`)


#: the blocking rules EM estimates m under (each leaves its own columns' m as they were)
EM_RULES: tuple[tuple[str, ...], ...] = (("birth_date",), ("family", "given_formal"))


def trained_linker(records: pa.Table, options: LinkOptions, spark: Any | None = None) -> Trained:
    """Splink's linker over :data:`FEATURES` rows, its model estimated on them as
    :func:`model_description` says (u by random sampling, m by EM on two blocking rules, names and
    city term-frequency adjusted, from the options' record counts up), on DuckDB or Spark.

    An EM session Splink refuses because an m underflowed to 0 (a level seen only in pairs of
    match probability 0, e.g. behind the given-name veto) changes nothing: the m values stay
    those of the session before (or the priors), and the model description says so."""
    from splink import Linker, SettingsCreator

    n = records.num_rows
    large = n >= options.em_min_records
    population = max(options.population or n, n)
    settings = SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="source_key",
        probability_two_random_records_match=min(
            0.5, options.expected_matches_per_record / max(population - 1, 1)
        ),
        comparisons=_comparisons(tf=large),
        blocking_rules_to_generate_predictions=_blocking_rules(),
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    db = _database(spark)
    linker = Linker(
        db.register(records.drop_columns(["prelink_key", "source_system", "suffix"])),
        settings,
        log_level=logging.ERROR,  # levels a small sample never shows are expected, not news
    )
    if n >= options.u_min_records:
        linker.training.estimate_u_using_random_sampling(
            max_pairs=options.u_max_pairs, seed=options.seed
        )
    refused = [columns for columns in EM_RULES if large and not _em_session(linker, columns)]
    model = model_description(n, options)
    if refused:
        model += "; EM blocked on " + ", ".join("+".join(c) for c in refused) + " refused (an m underflowed to 0)"
    return Trained(linker, model)


def _em_session(linker: Any, columns: tuple[str, ...]) -> bool:
    """One EM session blocked on ``columns``; False (logged) when Splink refuses an m of 0."""
    from splink import block_on

    try:
        linker.training.estimate_parameters_using_expectation_maximisation(block_on(*columns))
    except ValueError as exc:
        if "below the minimum allowed" not in str(exc):
            raise
        log.warning("resolve: EM blocked on %s refused, m kept as before it: %s", "+".join(columns), exc)
        return False
    return True


def _splink_pairs(records: pa.Table, options: LinkOptions, spark: Any | None = None) -> tuple[pa.Table, str]:
    """Splink's scored pairs at or above the review threshold (columns of :data:`LINKS`), on DuckDB
    or, given a Spark session, on Splink's Spark backend (same comparisons, same SQL); and how the
    model was estimated, in words."""
    trained = trained_linker(records, options, spark)
    predicted = trained.linker.inference.predict(
        threshold_match_probability=min(options.review_threshold, options.threshold, options.name_change_floor),
        warning_mode="never",
    ).as_pyarrow_table()
    pairs = pa.table(
        {
            "source_key_l": predicted.column("source_key_l").cast(pa.string()),
            "source_key_r": predicted.column("source_key_r").cast(pa.string()),
            "match_probability": predicted.column("match_probability").cast(pa.float64()),
            "match_weight": predicted.column("match_weight").cast(pa.float64()),
            "rule": pa.array(["splink"] * predicted.num_rows, pa.string()),
        },
        schema=LINKS,
    )
    return pairs, trained.model


def _prelink_pairs(records: pa.Table) -> pa.Table:
    """Records sharing a prelink key, each linked to the first of its group (a star, not all pairs)."""
    first: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for source, prelink in zip(
        records.column("source_key").to_pylist(),
        records.column("prelink_key").to_pylist(),
        strict=True,
    ):
        anchor = first.setdefault(prelink, source)
        if anchor != source:
            pairs.append((min(anchor, source), max(anchor, source)))
    return _certain_links(pairs, rule="prelink")


def _certain_links(pairs: Sequence[tuple[str, str]], *, rule: str) -> pa.Table:
    """:data:`LINKS` rows of deterministic links (probability 1, no match weight)."""
    return pa.table(
        {
            "source_key_l": [p[0] for p in pairs],
            "source_key_r": [p[1] for p in pairs],
            "match_probability": [1.0] * len(pairs),
            "match_weight": pa.nulls(len(pairs), pa.float64()),
            "rule": [rule] * len(pairs),
        },
        schema=LINKS,
    )


#: the features a record must hold for an identical one to be the same person unscored
IDENTICAL_NEEDS = ("given", "family", "birth_date")
#: what "identical" compares: every identifying feature (not the keys or the sending system)
_COMPARED = tuple(c for c in FEATURES.names if c not in ("source_key", "prelink_key", "source_system"))


def _identical(records: pa.Table, *, keep: Collection[str]) -> tuple[pa.Table, pa.Table]:
    """Records identical in every identifying feature (name, birth date, sex, address, phone,
    SSN, e-mail alike; name and birth date present) linked to the first of their kind, a star
    like :func:`_prelink_pairs` (rule ``identical``, probability 1, no pair when they share a
    prelink key: that link is made already); and the records left to score, one of each kind.

    Splink scores every pair a blocking rule yields, and n identical records are n²/2 pairs, each
    a certain match: a feed repeating one patient 770 times gave Splink ~300,000 pairs, its
    pairs' table and clustering gigabytes. ``keep``: records never folded (anchors of earlier
    runs, records of a steward's decision)."""
    first: dict[tuple[Any, ...], dict[str, Any]] = {}
    pairs: list[tuple[str, str]] = []
    scored: list[bool] = []
    for row in records.select(["source_key", "prelink_key", *_COMPARED]).to_pylist():
        kind = tuple(row[c] for c in _COMPARED)
        if row["source_key"] in keep or any(row[c] is None for c in IDENTICAL_NEEDS):
            scored.append(True)
            continue
        anchor = first.setdefault(kind, row)
        scored.append(anchor is row)
        if anchor is not row and anchor["prelink_key"] != row["prelink_key"]:
            a, b = anchor["source_key"], row["source_key"]
            pairs.append((min(a, b), max(a, b)))
    return _certain_links(pairs, rule="identical"), records.filter(pa.array(scored, pa.bool_()))


def _anchored(links: pa.Table, anchors: set[str]) -> pa.Table:
    """The links with at least one record of this run, an anchor (earlier run) on the left."""
    left = links.column("source_key_l").to_pylist()
    right = links.column("source_key_r").to_pylist()
    keep = [not (a in anchors and b in anchors) for a, b in zip(left, right, strict=True)]
    swap = [b in anchors and a not in anchors for a, b in zip(left, right, strict=True)]
    swapped = links.set_column(
        0,
        links.schema.field("source_key_l"),
        pa.array([b if s else a for a, b, s in zip(left, right, swap, strict=True)], pa.string()),
    ).set_column(
        1,
        links.schema.field("source_key_r"),
        pa.array([a if s else b for a, b, s in zip(left, right, swap, strict=True)], pa.string()),
    )
    return swapped.filter(pa.array(keep, pa.bool_()))


def _components(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Node → the smallest node of its connected component (union-find)."""
    parent = {node: node for node in nodes}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {node: root(node) for node in parent}


@dataclass(frozen=True)
class Zoned:
    merge: list[dict[str, Any]]  # LINKS rows
    review: list[dict[str, Any]]  # REVIEW rows
    refused: int


def zones(
    pairs: pa.Table, rows: Mapping[str, Mapping[str, Any]], options: LinkOptions
) -> Zoned:
    """Splink's pairs → merge (at or above the threshold, no rule against it), review (between the
    thresholds, or a review rule; below them from ``options.name_change_floor`` up when the pair may
    be a name change), or apart (a hard non-match rule: counted, not kept)."""
    merge, review, refused = [], [], 0
    for pair in pairs.to_pylist():
        left, right = rows[pair["source_key_l"]], rows[pair["source_key_r"]]
        if nonmatch_rule(left, right):
            refused += 1
            continue
        low = pair["match_probability"] < min(options.review_threshold, options.threshold)
        if low and (pair["match_probability"] < options.name_change_floor or not name_change(left, right)):
            continue  # apart: scored only because the name-change floor is lower
        why = "identity.possible_name_change" if low else review_rule(left, right)
        if why is None and pair["match_probability"] >= options.threshold:
            merge.append(pair)
            continue
        review.append(
            {
                **{k: pair[k] for k in ("source_key_l", "source_key_r", "match_probability", "match_weight")},
                "reason": why or "identity.review_zone",
                "evidence": evidence(left, right),
            }
        )
    return Zoned(merge, review, refused)


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


def cluster(
    rows: Mapping[str, Mapping[str, Any]],
    prelinked: Sequence[Mapping[str, Any]],
    merges: Sequence[Mapping[str, Any]],
    *,
    apart: Collection[frozenset[str]] = frozenset(),
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Records → the smallest record of their cluster, and the merge links that were refused.

    Same-MRN links always join. Splink's merge links join in order of probability, unless the two
    clusters would then hold two records a hard non-match rule or a steward's decision (``apart``)
    keeps apart: such a link is refused and returned (it goes to review)."""
    members: dict[str, list[str]] = {s: [s] for s in rows}
    parent = {s: s for s in rows}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            keep, gone = min(ra, rb), max(ra, rb)
            parent[gone] = keep
            members[keep] += members.pop(gone)

    def conflict(a: str, b: str) -> bool:
        return any(
            _pair(x, y) in apart or nonmatch_rule(rows[x], rows[y])
            for x in members[root(a)]
            for y in members[root(b)]
        )

    for link_ in prelinked:
        union(link_["source_key_l"], link_["source_key_r"])
    refused = []
    for link_ in sorted(merges, key=lambda r: (-r["match_probability"], r["source_key_l"], r["source_key_r"])):
        a, b = link_["source_key_l"], link_["source_key_r"]
        if root(a) == root(b):
            continue
        if conflict(a, b):
            refused.append(dict(link_))
        else:
            union(a, b)
    return {s: root(s) for s in rows}, refused


def link(
    records: pa.Table,
    options: LinkOptions = LinkOptions(),
    *,
    anchors: Collection[str] = (),
    apart: Collection[frozenset[str]] = frozenset(),
    spark: Any | None = None,
) -> Linkage:
    """:data:`FEATURES` rows → merged links, one cluster per real person, and pairs for review.

    ``anchors``: source keys of records resolved by earlier runs. They are scored like the rest,
    but a pair of two anchors is dropped (earlier runs decided it), and every kept pair
    involving an anchor has it on the left: the right-hand record is always one of this run.
    ``apart``: pairs a steward decided are two people (a rejected review, a split): never merged,
    never queued again. Splink needs at least two records; with fewer only same-MRN links exist.
    ``spark``: a Spark session (with :func:`splink_jar` in ``spark.jars``) to score on Splink's
    Spark backend instead of DuckDB.
    """
    rows = {r["source_key"]: r for r in records.to_pylist()}
    identical, scored = _identical(records, keep={*anchors, *(k for pair in apart for k in pair)})
    splink, model = (
        _splink_pairs(scored, options, spark)
        if scored.num_rows >= 2
        else (LINKS.empty_table(), model_description(scored.num_rows, options))
    )
    if identical.num_rows:
        model += f"; {identical.num_rows} records identical to another of the run linked before scoring"
    prelinked = pa.concat_tables([_prelink_pairs(records), identical])
    if anchors:
        splink, prelinked = (_anchored(t, set(anchors)) for t in (splink, prelinked))
    same = [
        rows[a]["prelink_key"] == rows[b]["prelink_key"]
        for a, b in zip(
            splink.column("source_key_l").to_pylist(),
            splink.column("source_key_r").to_pylist(),
            strict=True,
        )
    ]
    zoned = zones(splink.filter(pc.invert(pa.array(same, pa.bool_()))), rows, options)
    merges = [m for m in zoned.merge if _pair(m["source_key_l"], m["source_key_r"]) not in apart]
    cluster_of, refused = cluster(rows, prelinked.to_pylist(), merges, apart=apart)
    refused_keys = {_pair(r["source_key_l"], r["source_key_r"]) for r in refused}
    merged = [m for m in merges if _pair(m["source_key_l"], m["source_key_r"]) not in refused_keys]
    review = [
        r
        for r in zoned.review
        + [
            {
                **{k: r[k] for k in ("source_key_l", "source_key_r", "match_probability", "match_weight")},
                "reason": "identity.cluster_conflict",
                "evidence": evidence(rows[r["source_key_l"]], rows[r["source_key_r"]]),
            }
            for r in refused
        ]
        if _pair(r["source_key_l"], r["source_key_r"]) not in apart
        and cluster_of[r["source_key_l"]] != cluster_of[r["source_key_r"]]
    ]
    sources = records.column("source_key").to_pylist()
    clusters = pa.table(
        {
            "source_key": sources,
            "prelink_key": records.column("prelink_key"),
            "cluster": [cluster_of[s] for s in sources],
        },
        schema=CLUSTERS,
    )
    return Linkage(
        links=pa.concat_tables([prelinked, pa.Table.from_pylist(merged, schema=LINKS)]),
        clusters=clusters,
        review=pa.Table.from_pylist(review, schema=REVIEW),
        refused=zoned.refused,
        model=model,
    )


# ---------------------------------------------------------------------------------------------
# 3. the persistent crosswalk

CROSSWALK = PERSON_CROSSWALK.schema
EVENTS = PERSON_EVENTS.schema


@dataclass(frozen=True)
class Assignment:
    crosswalk: pa.Table  # CROSSWALK rows to upsert: this run's records and every re-pointed one
    events: pa.Table  # EVENTS of this run
    person_of: dict[str, str]  # prelink_key → person_key, for every prelink key known after the run


def assign(clusters: pa.Table, crosswalk: pa.Table, *, run_id: str, now: datetime) -> Assignment:
    """This run's clusters + the crosswalk so far → the crosswalk rows to write and the events.

    A cluster touching no known person becomes a new person keyed by its smallest prelink key
    (the MRN key the record carried: with no merge ever, person_key stays what ingest gave). A
    cluster touching one known person (through a known source key or prelink key) joins it. A
    cluster touching several merges them: the person first seen earliest (then the smaller key)
    survives; every record of the others is re-pointed to it and one ``merge`` event per absorbed
    person is written.
    """
    known = crosswalk.to_pylist()
    by_source = {r["source_key"]: r for r in known}
    by_prelink = {r["prelink_key"]: r["person_key"] for r in known}
    born: dict[str, tuple[datetime, str]] = {}
    for r in known:
        stamp = (r["first_seen_at"], r["person_key"])
        born[r["person_key"]] = min(born.get(r["person_key"], stamp), stamp)

    members: dict[str, list[dict[str, Any]]] = {}
    for r in clusters.to_pylist():
        members.setdefault(r["cluster"], []).append(r)

    rows: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []

    def event(
        kind: str, person: str, *, source: str | None = None, absorbed: str | None = None
    ) -> None:
        events.append(
            {
                "event_id": f"{run_id}:{kind}:{person}:{source or absorbed}",
                "run_id": run_id,
                "event": kind,
                "person_key": person,
                "from_person_key": absorbed,
                "source_key": source,
                "recorded_at": now,
            }
        )

    # the known persons each cluster touches; persons touched by one cluster are one person, and
    # so on transitively (a record of person A and one of B in one cluster, B and C in another)
    touched = {
        cluster: {
            by_source[r["source_key"]]["person_key"]
            if r["source_key"] in by_source
            else by_prelink.get(r["prelink_key"])
            for r in records
        }
        - {None}
        for cluster, records in members.items()
    }
    group = _components(
        {p for persons in touched.values() for p in persons},
        ((a, b) for persons in touched.values() for a in persons for b in persons if a < b),
    )
    survivor_of: dict[str, str] = {}
    for person, root in sorted(group.items()):
        best = survivor_of.get(root)
        survivor_of[root] = person if best is None or born[person] < born[best] else best
    for person, root in sorted(group.items()):
        survivor = survivor_of[root]
        if person == survivor:
            continue
        event("merge", survivor, absorbed=person)
        for r in known:
            if r["person_key"] == person:
                rows[r["source_key"]] = {**r, "person_key": survivor, "since_run_id": run_id}

    for cluster, records in members.items():
        persons = touched[cluster]
        if persons:
            survivor = survivor_of[group[next(iter(persons))]]
        else:
            survivor = min(r["prelink_key"] for r in records)
        for r in sorted(records, key=lambda r: r["source_key"]):
            if r["source_key"] in by_source:
                continue  # known: keeps its person, or was re-pointed by a merge above
            event("join" if persons else "new", survivor, source=r["source_key"])
            rows[r["source_key"]] = {
                "source_key": r["source_key"],
                "prelink_key": r["prelink_key"],
                "person_key": survivor,
                "first_run_id": run_id,
                "first_seen_at": now,
                "since_run_id": run_id,
            }
    person_of = {r["prelink_key"]: r["person_key"] for r in known}
    person_of.update({r["prelink_key"]: r["person_key"] for r in rows.values()})
    return Assignment(
        crosswalk=pa.Table.from_pylist(list(rows.values()), schema=CROSSWALK),
        events=pa.Table.from_pylist(events, schema=EVENTS),
        person_of=person_of,
    )


# ---------------------------------------------------------------------------------------------
# 4. applying the resolution to silver rows


def remap(
    rows: pa.Table, person_of: Mapping[str, str], *, key: bytes, max_shift_days: int
) -> pa.Table:
    """The rows with ``person_key`` resolved and their dates re-shifted to the resolved person.

    Ingest shifted each row's dates by its prelink key's offset; a person's records must share
    one offset so intervals between them survive. A re-keyed row therefore moves every date and
    timestamp column by ``shift(person) - shift(prelink)`` days: the result is exactly what ingest
    would have produced had it known the person (in silver every date/timestamp column is a
    shifted event date). Rows whose key is not re-keyed are returned unchanged.
    """
    if "person_key" not in rows.column_names or rows.num_rows == 0:
        return rows
    old = rows.column("person_key").to_pylist()
    moves = {
        k: (
            person_of[k],
            date_shift_days(key, person_of[k], max_days=max_shift_days)
            - date_shift_days(key, k, max_days=max_shift_days),
        )
        for k in set(old) - {None}
        if person_of.get(k, k) != k
    }
    if not moves:
        return rows
    days = pa.array([moves[k][1] if k in moves else 0 for k in old], pa.int32())
    rows = _with_prelink(rows, [k if k in moves else None for k in old])
    out = rows.set_column(
        rows.schema.get_field_index("person_key"),
        rows.schema.field("person_key"),
        pa.array(
            [moves[k][0] if k in moves else k for k in old], rows.schema.field("person_key").type
        ),
    )
    for index, f in enumerate(out.schema):
        if pa.types.is_date32(f.type):
            moved = pc.add(out.column(index).cast(pa.int32()), days).cast(pa.date32())
        elif pa.types.is_timestamp(f.type):
            step = pc.multiply(days.cast(pa.int64()), 86_400_000_000).cast(pa.duration("us"))
            moved = pc.add(out.column(index).cast(pa.timestamp("us", tz=f.type.tz)), step)
        else:
            continue
        out = out.set_column(index, f, moved.cast(f.type))
    return out


def _with_prelink(rows: pa.Table, moved_from: Sequence[str | None]) -> pa.Table:
    """The rows with ``_prelink_key`` set where it is null and the row moves away from its key."""
    name = PRELINK_FIELD.name
    if name in rows.column_names:
        kept = rows.column(name).cast(pa.string()).to_pylist()
        values = [k if k is not None else m for k, m in zip(kept, moved_from, strict=True)]
        return rows.set_column(
            rows.schema.get_field_index(name), PRELINK_FIELD, pa.array(values, pa.string())
        )
    return rows.append_column(PRELINK_FIELD, pa.array(list(moved_from), pa.string()))


def links_rows(
    links: pa.Table,
    person_of_source: Mapping[str, str],
    patients: Mapping[str, Mapping[str, Any]],
    *,
    run_id: str,
) -> pa.Table:
    """``silver.patient_links`` rows: each link with the person it formed (pseudonyms only).

    ``patients``: source_key → its silver.patients row; the link carries the lineage
    (``_record_hash``, ``_source_kind``) of its right-hand record, the one linked to the left.
    """
    left = links.column("source_key_l").to_pylist()
    right = [patients[s] for s in links.column("source_key_r").to_pylist()]
    return pa.table(
        {
            "source_key_l": links.column("source_key_l"),
            "source_key_r": links.column("source_key_r"),
            "person_key": [person_of_source[s] for s in left],
            "match_probability": links.column("match_probability"),
            "match_weight": links.column("match_weight"),
            "rule": links.column("rule"),
            "_record_hash": [r["_record_hash"] for r in right],
            "_source_kind": [r["_source_kind"] for r in right],
            "_run_id": [run_id] * links.num_rows,
        },
        schema=SILVER_PATIENT_LINKS.schema,
    )


# ---------------------------------------------------------------------------------------------
# 5. survivorship: one row per person from its patient records

#: a survivorship row: silver.persons without its lineage columns
PERSONS = pa.schema(f for f in SILVER_PERSONS.schema if not f.name.startswith("_"))
#: fields the most recent record that has any of them supplies together (one address)
ADDRESS_FIELDS = ("zip3", "state", "country")
#: fields the most recent non-null value wins
LATEST_FIELDS = ("marital_status", "race", "ethnicity", "language")


def survivors(patients: pa.Table, first_seen: Mapping[str, datetime] | None = None) -> pa.Table:
    """One :data:`PERSONS` row per person_key of silver.patients-shaped rows (already resolved).

    Rules, with records ordered oldest → newest by ``first_seen`` (source_key → when the crosswalk
    first saw it; unknown ones are oldest; ties by source_key):

    - gender, birth_date: the most frequent non-null value (gender 'unknown' only when nothing
      else is known); a tie goes to the newest record's value: registration errors get fixed
      in new records more often than introduced.
    - zip3, state, country: together from the newest record with any of them (never a ZIP3 of
      one address with the state of another).
    - marital_status, race, ethnicity, language: the newest non-null value.
    - deceased: true when any record says so; deceased_date: the latest non-null one.
    """
    first_seen = first_seen or {}
    floor = datetime.min.replace(tzinfo=None)

    def age(r: Mapping[str, Any]) -> tuple[Any, str]:
        seen = first_seen.get(r["source_key"])
        return (seen.replace(tzinfo=None) if seen else floor, r["source_key"])

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(patients.to_pylist(), key=age):
        groups.setdefault(r["person_key"], []).append(r)

    def commonest(records: list[dict[str, Any]], name: str, weak: Sequence[Any] = ()) -> Any:
        values = [r[name] for r in records if r.get(name) is not None]
        strong = [v for v in values if v not in weak] or values
        if not strong:
            return None
        counts = {v: strong.count(v) for v in strong}
        best = max(counts.values())
        return next(v for v in reversed(strong) if counts[v] == best)

    out = []
    for person, records in groups.items():
        newest_first = list(reversed(records))
        address = next(
            (r for r in newest_first if any(r.get(f) is not None for f in ADDRESS_FIELDS)), {}
        )
        deaths = [r["deceased_date"] for r in records if r.get("deceased_date") is not None]
        out.append(
            {
                "person_key": person,
                "gender": commonest(records, "gender", weak=("unknown",)),
                "birth_date": commonest(records, "birth_date"),
                "deceased": any(r.get("deceased") for r in records) or bool(deaths),
                "deceased_date": max(deaths) if deaths else None,
                **{f: address.get(f) for f in ADDRESS_FIELDS},
                **{
                    f: next((r[f] for r in newest_first if r.get(f) is not None), None)
                    for f in LATEST_FIELDS
                },
                "records": len(records),
            }
        )
    return pa.Table.from_pylist(out, schema=PERSONS)


def persons(
    lake: Lake, patients: pa.Table, *, run_id: str, key: bytes, max_shift_days: int
) -> pa.Table:
    """``silver.persons`` rows for every person this run's (resolved) patient rows belong to.

    A person's records are this run's rows plus its earlier silver.patients rows, those still
    under a person a merge absorbed included (moved to the survivor first, dates too: the re-key
    of silver happens after the gate); a record of this run replaces its earlier version. Record
    ages come from the crosswalk's ``first_seen_at``. No ledger entry of its own: a person row
    is derived from patient records, which the ``resolve`` entry already accounts for.
    """
    moves = absorbed_persons(lake.read(PERSON_EVENTS.name))
    touched = set(patients.column("person_key").to_pylist())
    wanted = sorted(touched | {a for a, s in moves.items() if s in touched})
    earlier = lake.read(
        SILVER_PATIENTS.name,
        filter=pc.field("person_key").cast(pa.string()).isin(pa.array(wanted, pa.string())),
    )
    earlier = earlier.filter(
        pc.invert(
            pc.is_in(earlier.column("source_key").cast(pa.string()), patients.column("source_key"))
        )
    )
    columns = [*PERSONS.names[:-1], "source_key", "_record_hash"]
    records = pa.concat_tables(
        [
            _plain(remap(earlier, moves, key=key, max_shift_days=max_shift_days)).select(columns),
            conform(patients, SILVER_PATIENTS.schema).select(columns),
        ]
    )
    crosswalk = lake.read(PERSON_CROSSWALK.name, columns=["source_key", "first_seen_at"])
    first_seen = dict(
        zip(
            crosswalk.column("source_key").to_pylist(),
            crosswalk.column("first_seen_at").to_pylist(),
            strict=True,
        )
    )
    survived = survivors(records, first_seen)
    hashes: dict[str, list[str]] = {}
    for person, record_hash in zip(
        records.column("person_key").to_pylist(),
        records.column("_record_hash").to_pylist(),
        strict=True,
    ):
        hashes.setdefault(person, []).append(record_hash)
    digest = [
        hashlib.sha256("\x1f".join(sorted(hashes[p])).encode()).hexdigest()[:32]
        for p in survived.column("person_key").to_pylist()
    ]
    return (
        survived.append_column(
            SILVER_PERSONS.schema.field("_record_hash"), pa.array(digest, pa.string())
        )
        .append_column(
            SILVER_PERSONS.schema.field("_source_kind"),
            pa.array(["resolution"] * survived.num_rows, pa.string()),
        )
        .append_column(
            SILVER_PERSONS.schema.field("_run_id"),
            pa.array([run_id] * survived.num_rows, pa.string()),
        )
    )


# ---------------------------------------------------------------------------------------------
# the pipeline's step


@dataclass(frozen=True)
class Resolution:
    person_of: dict[str, str]  # prelink_key → person_key (re-key staging rows with :func:`remap`)
    links: pa.Table  # silver.patient_links rows of this run
    entry: Entry  # resolve → silver.patients: records in = persons out + records merged


def resolve(
    lake: Lake,
    identities: Sequence[Mapping[str, Any]],
    patients: pa.Table,
    *,
    run_id: str,
    options: LinkOptions = LinkOptions(),
    now: datetime,
    prior: Sequence[Mapping[str, Any]] = (),
    spark: Any | None = None,
) -> Resolution:
    """Link this run's patient identities, and each to earlier runs' persons, update the crosswalk
    and record the events.

    ``patients``: this run's silver.patients rows. Only identities with a row there are linked (a
    patient record quarantined on its way to silver is not a person yet: its identity still goes
    to the vault); their ``gender`` is the linkage's sex. ``prior``: identities of earlier runs
    (from the vault, :func:`medlake.governance.vault.linkage_identities`); those the crosswalk
    knows take part as anchors (their prelink key from the crosswalk, their sex from
    silver.patients), so a second registration arriving alone joins the person of its first.
    The crosswalk and events tables are written here (upsert / insert of new events); the links
    go to ``staging.patient_links`` through the caller, like every silver table. ``spark``: score on
    Splink's Spark backend in that session (:func:`splink_session`), else on DuckDB in memory.
    """
    staged = {
        r["source_key"]: r
        for r in patients.select(
            ["source_key", "gender", "_record_hash", "_source_kind"]
        ).to_pylist()
    }
    kept = [i for i in identities if i["source_key"] in staged]
    sex = {s: r["gender"] for s, r in staged.items()}
    crosswalk = lake.read(PERSON_CROSSWALK.name)
    prelink_of = dict(
        zip(
            crosswalk.column("source_key").to_pylist(),
            crosswalk.column("prelink_key").to_pylist(),
            strict=True,
        )
    )
    anchors = [
        {**i, "person_key": prelink_of[i["source_key"]]}
        for i in (prior if kept else ())  # nothing of this run to link: no anchors needed
        if i["source_key"] in prelink_of and i["source_key"] not in staged
    ]
    if anchors and lake.exists(SILVER_PATIENTS.name):
        earlier = lake.read(SILVER_PATIENTS.name, columns=["source_key", "gender"]).to_pylist()
        sex = {**{r["source_key"]: r["gender"] for r in earlier}, **sex}
    population = len(set(crosswalk.column("source_key").to_pylist()) | set(staged))
    linkage = link(
        features([*kept, *anchors], sex=sex),
        replace(options, population=population),
        anchors={a["source_key"] for a in anchors},
        apart=decided_apart(lake),
        spark=spark,
    )
    done = assign(linkage.clusters, crosswalk, run_id=run_id, now=now)
    lake.upsert(PERSON_CROSSWALK.name, done.crosswalk)
    lake.insert_new(PERSON_EVENTS.name, done.events)
    queued = lake.insert_new(IDENTITY_REVIEW.name, review_rows(linkage.review, run_id=run_id, now=now))
    this_run = linkage.clusters.filter(
        pc.is_in(linkage.clusters.column("source_key"), pa.array(sorted(staged), pa.string()))
    )
    details = {"review_queued": queued, "review_pairs": linkage.review.num_rows,
               "kept_apart_by_rules": linkage.refused, "model": linkage.model}
    entry = replace(resolve_entry(this_run, done.person_of), details=json.dumps(details, sort_keys=True))
    log.info(
        "resolve: %d patient records (+%d of earlier runs) → %d persons (%d merges, %d joins); "
        "%d pairs queued for review, %d kept apart by a hard rule; Splink on %s; model: %s",
        entry.records_in,
        len(anchors),
        entry.records_out,
        int(pc.sum(pc.equal(done.events.column("event"), "merge")).as_py() or 0),
        int(pc.sum(pc.equal(done.events.column("event"), "join")).as_py() or 0),
        queued,
        linkage.refused,
        "Spark" if spark is not None else "DuckDB",
        linkage.model,
    )
    person_of_source = {
        s: done.person_of[p]
        for s, p in zip(
            linkage.clusters.column("source_key").to_pylist(),
            linkage.clusters.column("prelink_key").to_pylist(),
            strict=True,
        )
    }
    return Resolution(
        person_of=done.person_of,
        links=links_rows(linkage.links, person_of_source, staged, run_id=run_id),
        entry=entry,
    )


def follow_in_vault(
    lake: Lake, *, keyring: Keyring, audit_key: bytes, run_id: str, actor: str = "medlake_pipeline",
    role: str = "system",
) -> int:
    """Vault identities follow their record's person in the crosswalk: an earlier record whose
    person a merge absorbed (in a run, or a steward's approve) or a split moved is re-keyed
    (:func:`medlake.governance.vault.follow_persons`); returns how many moved."""
    crosswalk = _plain(lake.read(PERSON_CROSSWALK.name, columns=["source_key", "person_key"]))
    person_of = dict(
        zip(crosswalk.column("source_key").to_pylist(), crosswalk.column("person_key").to_pylist(), strict=True)
    )
    moved = vault.follow_persons(lake, person_of, keyring=keyring, audit_key=audit_key, run_id=run_id, actor=actor,
                                 role=role)
    if moved:
        log.info("vault: %d identities re-keyed to the person their record now belongs to", moved)
    return moved


def pair_id(a: str, b: str) -> str:
    """The id of an unordered pair of source keys (pseudonyms already: a plain digest suffices)."""
    return hashlib.sha256("\x1f".join(sorted((a, b))).encode()).hexdigest()[:32]


def review_rows(review: pa.Table, *, run_id: str, now: datetime) -> pa.Table:
    """:data:`REVIEW` pairs → open ``reference.identity_review`` rows."""
    rows = [
        {**r, "pair_id": pair_id(r["source_key_l"], r["source_key_r"]), "status": "open",
         "run_id": run_id, "queued_at": now}
        for r in review.to_pylist()
    ]
    return pa.Table.from_pylist(rows, schema=IDENTITY_REVIEW.schema)


def decided_apart(lake: Lake) -> set[frozenset[str]]:
    """Pairs a steward decided are two people (a rejected review, a split): never merged again."""
    if not lake.exists(IDENTITY_REVIEW.name):
        return set()
    rows = lake.read(IDENTITY_REVIEW.name, columns=["source_key_l", "source_key_r", "status"])
    return {
        _pair(str(r["source_key_l"]), str(r["source_key_r"]))
        for r in rows.to_pylist()
        if r["status"] == "rejected"
    }


def resolve_entry(clusters: pa.Table, person_of: Mapping[str, str]) -> Entry:
    """The ledger entry of a resolution: patient records in, persons out, the rest merged into
    another record's person (never dropped)."""
    records = clusters.num_rows
    persons = len({person_of[p] for p in clusters.column("prelink_key").to_pylist()})
    return Entry(
        stage="resolve",
        table_name=SILVER_PATIENTS.name,
        records_in=records,
        records_out=persons,
        merged=records - persons,
    )


# ---------------------------------------------------------------------------------------------
# 6. re-keying earlier silver rows after a merge


def absorbed_persons(events: pa.Table) -> dict[str, str]:
    """Every person a ``merge`` event absorbed → the person that finally survives it (a chain
    A → B, B → C maps A to C), from ``reference.person_events`` rows. A ``split`` event that gave
    a person its key back (an unmerge) ends the merge that absorbed it; events apply in time order."""
    into: dict[str, str] = {}
    rows = _plain(events).to_pylist()
    changes = [r for r in rows if r["event"] in ("merge", "split")]
    if "recorded_at" in events.column_names:  # a stable sort: same-time events keep table order
        changes.sort(key=lambda r: (r["recorded_at"], r.get("event_id") or ""))
    for r in changes:
        if r["event"] == "merge":
            into[r["from_person_key"]] = r["person_key"]
        else:
            into.pop(r["person_key"], None)
    final = {}
    for person, survivor in into.items():
        seen = {person}
        while survivor in into and survivor not in seen:  # a cycle would be a corrupt table
            seen.add(survivor)
            survivor = into[survivor]
        final[person] = survivor
    return final


def _plain(rows: pa.Table) -> pa.Table:
    """The rows with string_view columns (MERGE-written files) cast to string."""
    return rows.cast(
        pa.schema(
            pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
            for f in rows.schema
        )
    )


def replace_rows(lake: Lake, spec: TableSpec, old: pa.Table, new: pa.Table) -> int:
    """Replace ``old`` rows of ``spec``'s table by their re-keyed ``new`` rows in one Delta
    transaction (one MERGE); returns how many re-keyed rows are in the table afterwards.

    When the table's key holds neither person_key nor a date (which a re-key changes), the new
    rows update the old ones in place. Otherwise (e.g. silver.vitals_1min: person, device, code,
    bucket) one MERGE deletes the old keys and inserts the new ones; a new key the surviving
    person already has keeps the surviving row (the re-keyed one is counted merged).
    """
    table = lake.table(spec.name)
    key = list(spec.key)
    moving = {"person_key"} | {
        f.name for f in spec.schema if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)
    }
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key)
    if not moving & set(key):
        metrics = (
            table.merge(_plain(new), predicate=on, source_alias="s", target_alias="t")
            .when_matched_update_all()
            .execute()
        )
        return int(metrics["num_target_rows_updated"])
    op = "_rekey_op"
    first = _plain(new).append_column("_row", pa.array(range(new.num_rows), pa.int64()))
    first = first.filter(  # two absorbed persons' rows may land on one key: the first stays
        pc.is_in(
            first.column("_row"),
            first.group_by(key, use_threads=False).aggregate([("_row", "min")]).column("_row_min"),
        )
    ).drop_columns(["_row"])
    source = pa.concat_tables(
        [
            _plain(old).append_column(op, pa.array(["delete"] * old.num_rows, pa.string())),
            first.append_column(op, pa.array(["insert"] * first.num_rows, pa.string())),
        ]
    )
    metrics = (
        table.merge(source, predicate=on, source_alias="s", target_alias="t")
        .when_matched_delete(predicate=f"s.`{op}` = 'delete'")
        .when_not_matched_insert(
            updates={c: f"s.`{c}`" for c in new.column_names}, predicate=f"s.`{op}` = 'insert'"
        )
        .execute()
    )
    return int(metrics["num_target_rows_inserted"])


@dataclass(frozen=True)
class Rekeyed:
    versions: dict[str, int | None]  # tables rewritten → their version
    entries: list[Entry]  # one 'rekey' entry per rewritten table: rows in = out + merged
    events: pa.Table  # EVENTS: one 'rekey' event per (table, absorbed person)


def rekey(
    lake: Lake,
    *,
    run_id: str,
    key: bytes,
    max_shift_days: int,
    tables: Sequence[str],
    now: datetime,
) -> Rekeyed:
    """Silver rows still under a person a merge absorbed move to the survivor (:func:`remap`:
    key and dates), table by table, one transaction each; the events are written here.

    Every merge ever recorded is applied, not only this run's: a re-key interrupted in an earlier
    run is finished now, and re-running changes nothing (no row is left under an absorbed key).
    """
    moves = absorbed_persons(lake.read(PERSON_EVENTS.name))
    versions: dict[str, int | None] = {}
    entries: list[Entry] = []
    events: list[dict[str, Any]] = []
    if not moves:
        return Rekeyed(versions, entries, EVENTS.empty_table())
    wanted = pa.array(sorted(moves), pa.string())
    for name in tables:
        spec = TABLES[name]
        if "person_key" not in spec.schema.names or not lake.exists(name):
            continue
        old = lake.read(name, filter=pc.field("person_key").cast(pa.string()).isin(wanted))
        if old.num_rows == 0:
            continue
        new = remap(old, moves, key=key, max_shift_days=max_shift_days)
        known = {f.name for f in lake.table(name).schema().fields}  # a lake older than _prelink_key
        kept = replace_rows(lake, spec, old, new.select([c for c in new.column_names if c in known]))
        versions[name] = lake.version(name)
        entries.append(
            Entry(
                stage="rekey",
                table_name=name,
                records_in=old.num_rows,
                records_out=kept,
                merged=old.num_rows - kept,
            )
        )
        for absorbed in sorted(set(old.column("person_key").cast(pa.string()).to_pylist())):
            events.append(
                {
                    "event_id": f"{run_id}:rekey:{name}:{absorbed}",
                    "run_id": run_id,
                    "event": "rekey",
                    "person_key": moves[absorbed],
                    "from_person_key": absorbed,
                    "source_key": None,
                    "recorded_at": now,
                }
            )
    done = pa.Table.from_pylist(events, schema=EVENTS)
    lake.insert_new(PERSON_EVENTS.name, done)
    log.info(
        "rekey: %d silver rows of %d absorbed persons moved",
        sum(e.records_in for e in entries),
        len(moves),
    )
    return Rekeyed(versions, entries, done)


# ---------------------------------------------------------------------------------------------
# 7. keyed blocking tokens: earlier runs' candidates without decrypting the vault


#: the token row of a record with no blocking values at all (it collides with nothing)
NO_TOKEN = "none"


def blocking_tokens(records: pa.Table, *, key: bytes, run_id: str) -> pa.Table:
    """``reference.identity_tokens`` rows of :data:`FEATURES` rows: per record and blocking rule
    (:data:`BLOCKING_KEYS`) with all its values known, HMAC(project key, rule, values).

    Equal tokens mean equal normalized values, nothing more: a token cannot be reversed without
    the key, and says nothing about how close two unequal values are. They only find candidates;
    the comparison itself runs on the decrypted identities."""
    rows = []
    for r in records.to_pylist():
        made = 0
        for rule, columns in BLOCKING_KEYS.items():
            values = [r[c] for c in columns]
            if all(values):
                token = keyed_hash(key, "identity.block", rule, *values)
                rows.append({"source_key": r["source_key"], "rule": rule, "token": token, "run_id": run_id})
                made += 1
        if not made:  # nothing to block on: recorded, so the record is not taken for untokenized
            rows.append({"source_key": r["source_key"], "rule": NO_TOKEN, "token": NO_TOKEN, "run_id": run_id})
    return pa.Table.from_pylist(rows, schema=IDENTITY_TOKENS.schema)


def colliding(tokens: pa.Table, known: pa.Table) -> set[str]:
    """Source keys of ``known`` token rows that share a (rule, token) with ``tokens``."""
    wanted = set(zip(tokens.column("rule").to_pylist(), tokens.column("token").to_pylist(), strict=True))
    return {
        str(s)
        for s, rule, token in zip(
            known.column("source_key").to_pylist(),
            known.column("rule").to_pylist(),
            known.column("token").to_pylist(),
            strict=True,
        )
        if (rule, token) in wanted and rule != NO_TOKEN
    }


def earlier_identities(
    lake: Lake,
    identities: Sequence[Mapping[str, Any]],
    *,
    key: bytes,
    keyring: Keyring,
    audit_key: bytes,
    run_id: str,
) -> list[dict[str, Any]]:
    """The identities of earlier runs this run's identities could match: the vault records whose
    keyed blocking tokens equal one of theirs, decrypted (only those, audited); the tokens of this
    run's identities are stored for the runs to come.

    A vault record without tokens (a lake from before the tokens) is decrypted once, its tokens
    stored, and kept only if they collide; every later run reads tokens only."""
    this_run = {str(i["source_key"]) for i in identities}
    mine = blocking_tokens(features(identities), key=key, run_id=run_id)
    stored = (
        lake.read(
            IDENTITY_TOKENS.name,
            columns=["source_key", "rule", "token"],
            filter=pc.field("token").cast(pa.string()).isin(mine.column("token")),
        )
        if lake.exists(IDENTITY_TOKENS.name)
        else IDENTITY_TOKENS.schema.empty_table()
    )
    candidates = colliding(mine, stored) - this_run
    tokenized = (
        set(lake.read(IDENTITY_TOKENS.name, columns=["source_key"]).column("source_key").cast(pa.string()).to_pylist())
        if lake.exists(IDENTITY_TOKENS.name)
        else set()
    )
    untokenized = vault.source_keys(lake) - tokenized - this_run
    found = vault.linkage_candidates(
        lake, candidates | untokenized, keyring=keyring, audit_key=audit_key, run_id=run_id
    )
    if untokenized:
        backfill = blocking_tokens(
            features([i for i in found if i["source_key"] in untokenized]), key=key, run_id=run_id
        )
        lake.upsert(IDENTITY_TOKENS.name, backfill)
        candidates |= colliding(mine, backfill)
        log.info("identity tokens: %d earlier vault records had none; stored now", len(untokenized))
    lake.upsert(IDENTITY_TOKENS.name, mine)
    kept = [i for i in found if i["source_key"] in candidates]
    log.info(
        "identity tokens: %d candidate records of earlier runs share a blocking token with this run's %d",
        len(kept),
        len(this_run),
    )
    return kept
