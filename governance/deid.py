"""Structured de-identification under HIPAA Safe Harbor: date shifts, ZIP3, age top-coding.

Dates move by a per-patient offset derived from the project key and the person key, so every
source (FHIR, HL7, DICOM) shifts one patient's dates by the same amount and intervals survive.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from datetime import UTC, date, datetime, timedelta

#: 3-digit ZIP prefixes covering fewer than 20,000 people (2000 census): reported as "000".
RESTRICTED_ZIP3 = frozenset(
    {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879", "884", "890", "893"}
)


def date_shift_days(key: bytes, person_key: str, *, max_days: int) -> int:
    """The patient's date offset in days, in [-max_days, max_days], never 0."""
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    digest = hmac.new(key, f"date-shift\x1f{person_key}".encode(), hashlib.sha256).digest()
    slot = int.from_bytes(digest[:8], "big") % (2 * max_days)  # 0 .. 2*max-1
    return slot - max_days if slot < max_days else slot - max_days + 1


def shift_date(value: date | None, days: int) -> date | None:
    return None if value is None else value + timedelta(days=days)


def shift_datetime(value: datetime | None, days: int) -> datetime | None:
    return None if value is None else value + timedelta(days=days)


def zip3(postal_code: str | None) -> str | None:
    """The first three digits of a postal code; '000' for sparsely populated US ZIP3s."""
    if not postal_code:
        return None
    digits = "".join(ch for ch in postal_code if ch.isdigit())
    if len(digits) < 3:
        return None
    prefix = digits[:3]
    return "000" if prefix in RESTRICTED_ZIP3 else prefix


#: the quasi-identifiers a release is checked on (those of them its table has), and the k of k-anonymity
QUASI_IDENTIFIERS = ("age_band", "gender", "zip3")
K_ANONYMITY = 5


def k_anonymity(rows: list[dict[str, object]], quasi: tuple[str, ...], *, k: int = K_ANONYMITY) -> dict[str, object]:
    """How identifiable the rows are by their quasi-identifiers: the equivalence classes (rows
    sharing every quasi-identifier value; a missing value is its own value), the smallest class,
    and the classes and rows below ``k``. A release whose smallest class is below k lets an
    attacker who knows those attributes narrow a person down to fewer than k rows."""
    classes = Counter(tuple("unknown" if r.get(q) is None else str(r.get(q)) for q in quasi) for r in rows)
    small = {c: n for c, n in classes.items() if n < k}
    return {
        "k": k,
        "quasi_identifiers": list(quasi),
        "population": len(rows),
        "classes": len(classes),
        "smallest_class": min(classes.values()) if classes else 0,
        "classes_below_k": len(small),
        "records_in_classes_below_k": sum(small.values()),
    }


def age_band(birth: date | None, at: date | datetime | None, *, top: int = 89) -> str | None:
    """Age in whole years at a date, as text; ages over ``top`` are '90+'."""
    if birth is None or at is None:
        return None
    day = at.astimezone(UTC).date() if isinstance(at, datetime) else at
    years = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    return f"{top + 1}+" if years > top else str(max(years, 0))
