"""Row-level releases that meet their privacy model: k-anonymity, optionally l-diversity, reached by
generalizing quasi-identifiers along declared hierarchies and suppressing what remains (ARX-style),
or refused with the reason.

A quasi-identifier is a column an attacker may know from elsewhere (age, gender, ZIP3, a date).
Each has a **hierarchy**: its levels from the value as stored to ``*`` (fully generalized)::

    age_band   5-year band → 10-year band → 20-year band → *      ('90+' stays top-coded)
    zip3       ZIP3 → state → *
    gender     value → *
    <dates>    day → month → year → *

:func:`anonymize` searches the whole lattice of levels (one level per quasi-identifier; small, so
every node is tried), generalizes, suppresses the records of equivalence classes smaller than
``k`` (or with fewer than ``l`` distinct values of the sensitive column), and keeps the node with
the least information loss whose suppressed share is within the model's limit. Information loss
is ARX's generalization intensity (each quasi-identifier's level over its height, averaged) over
the records kept, plus the share suppressed. No node within the limit: :class:`ReleaseRefused`,
naming the best one and what it would have needed.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from medlake.governance.deid import K_ANONYMITY, k_anonymity

Generalize = Callable[[Any, int], Any]


class ReleaseRefused(ValueError):
    """The release cannot meet its privacy model within the suppression limit; the message says why."""


@dataclass(frozen=True)
class PrivacyModel:
    """What a release must meet: k-anonymity over its quasi-identifiers, optionally l-diversity."""

    k: int = K_ANONYMITY
    l_diversity: int | None = None
    sensitive: str | None = None
    #: the largest share of records that may be suppressed (ARX's suppression limit)
    max_suppression: float = 0.1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, not {self.k}")
        if (self.l_diversity is None) != (self.sensitive is None):
            raise ValueError("l-diversity needs both l and the sensitive column")
        if self.l_diversity is not None and self.l_diversity < 1:
            raise ValueError(f"l must be at least 1, not {self.l_diversity}")
        if not 0 <= self.max_suppression < 1:
            raise ValueError(f"max_suppression is a share in [0, 1), not {self.max_suppression}")

    def describe(self) -> dict[str, Any]:
        found: dict[str, Any] = {"k_anonymity": self.k, "max_suppression": self.max_suppression}
        if self.l_diversity is not None:
            found["l_diversity"] = {"l": self.l_diversity, "sensitive": self.sensitive}
        return found


@dataclass(frozen=True)
class Hierarchy:
    """The generalization levels of one quasi-identifier, from as stored (0) to ``*``."""

    name: str
    levels: tuple[str, ...]
    generalize: Generalize = field(repr=False)

    @property
    def height(self) -> int:
        return len(self.levels) - 1


# ---------------------------------------------------------------------------------------------
# hierarchies


def _age_band(value: Any, level: int) -> Any:
    """'40-44' → '40-49' (10-year) → '40-59' (20-year) → '*'; '90+' stays until '*'."""
    if value is None or level == 0:
        return value
    if level >= 3:
        return "*"
    text = str(value)
    if text.endswith("+") or "-" not in text:
        return text
    low = int(text.split("-", 1)[0])
    width = 10 if level == 1 else 20
    start = low // width * width
    return f"{start}-{start + width - 1}"


#: ZIP3 prefix ranges → USPS state (first three digits of the ZIP code); '000' (restricted) stays '000'
ZIP3_STATES: tuple[tuple[int, int, str], ...] = (
    (5, 5, "NY"), (6, 9, "PR"), (10, 27, "MA"), (28, 29, "RI"), (30, 38, "NH"), (39, 49, "ME"),
    (50, 59, "VT"), (60, 69, "CT"), (70, 89, "NJ"), (90, 99, "AE"), (100, 149, "NY"), (150, 196, "PA"),
    (197, 199, "DE"), (200, 205, "DC"), (206, 219, "MD"), (220, 246, "VA"), (247, 268, "WV"),
    (270, 289, "NC"), (290, 299, "SC"), (300, 319, "GA"), (320, 349, "FL"), (350, 369, "AL"),
    (370, 385, "TN"), (386, 397, "MS"), (398, 399, "GA"), (400, 427, "KY"), (430, 458, "OH"),
    (460, 479, "IN"), (480, 499, "MI"), (500, 528, "IA"), (530, 549, "WI"), (550, 567, "MN"),
    (569, 569, "DC"), (570, 577, "SD"), (580, 588, "ND"), (590, 599, "MT"), (600, 629, "IL"),
    (630, 658, "MO"), (660, 679, "KS"), (680, 693, "NE"), (700, 714, "LA"), (716, 729, "AR"),
    (730, 749, "OK"), (750, 799, "TX"), (800, 816, "CO"), (820, 831, "WY"), (832, 838, "ID"),
    (840, 847, "UT"), (850, 865, "AZ"), (870, 884, "NM"), (885, 885, "TX"), (889, 898, "NV"),
    (900, 961, "CA"), (962, 966, "AP"), (967, 968, "HI"), (969, 969, "GU"), (970, 979, "OR"),
    (980, 994, "WA"), (995, 999, "AK"),
)


def zip3_state(zip3: str) -> str:
    """The state a ZIP3 prefix belongs to; '000' (sparsely populated, Safe Harbor) and unknown prefixes: '*'."""
    if not zip3.isdigit() or zip3 == "000":
        return "*"
    prefix = int(zip3)
    return next((state for low, high, state in ZIP3_STATES if low <= prefix <= high), "*")


def _zip3(value: Any, level: int) -> Any:
    if value is None or level == 0:
        return value
    return zip3_state(str(value)) if level == 1 else "*"


def _suppress_only(value: Any, level: int) -> Any:
    return value if value is None or level == 0 else "*"


def _date(value: Any, level: int) -> Any:
    """A date (or timestamp) → 'YYYY-MM' → 'YYYY' → '*'."""
    if value is None or level == 0:
        return value
    if level >= 3:
        return "*"
    day = value.date() if isinstance(value, datetime) else value
    if isinstance(day, date):
        return f"{day.year:04d}-{day.month:02d}" if level == 1 else f"{day.year:04d}"
    text = str(value)
    return text[:7] if level == 1 else text[:4]


AGE_BAND = Hierarchy("age_band", ("5-year band", "10-year band", "20-year band", "*"), _age_band)
ZIP3 = Hierarchy("zip3", ("zip3", "state", "*"), _zip3)
GENDER = Hierarchy("gender", ("value", "*"), _suppress_only)
DATE = Hierarchy("date", ("day", "month", "year", "*"), _date)

#: the hierarchy of each known quasi-identifier column
HIERARCHIES: Mapping[str, Hierarchy] = {"age_band": AGE_BAND, "zip3": ZIP3, "gender": GENDER}


def hierarchies_for(data: pa.Table, quasi: Sequence[str]) -> dict[str, Hierarchy]:
    """The hierarchy of each quasi-identifier: the declared one, dates by month and year, others value → *."""
    found: dict[str, Hierarchy] = {}
    for column in quasi:
        if column not in data.column_names:
            raise ReleaseRefused(f"quasi-identifier {column!r} is not a column of the release")
        kind = data.schema.field(column).type
        if column in HIERARCHIES:
            found[column] = HIERARCHIES[column]
        elif pa.types.is_date(kind) or pa.types.is_timestamp(kind):
            found[column] = DATE
        else:
            found[column] = GENDER  # value → *
    return found


# ---------------------------------------------------------------------------------------------
# the search


@dataclass(frozen=True)
class Anonymized:
    """A release that meets its model: the rows, and what was done to them."""

    data: pa.Table
    model: PrivacyModel
    levels: Mapping[str, int]
    hierarchies: Mapping[str, Hierarchy]
    records_in: int
    suppressed: int
    information_loss: float
    achieved: Mapping[str, Any]

    def manifest(self) -> dict[str, Any]:
        """What the dataset manifest records: the model, the hierarchy levels, suppression, loss."""
        return {
            **self.achieved,
            "model": self.model.describe(),
            "hierarchies": {
                column: {"levels": list(h.levels), "applied": h.levels[self.levels[column]]}
                for column, h in self.hierarchies.items()
            },
            "records_in": self.records_in,
            "records_suppressed": self.suppressed,
            "information_loss": round(self.information_loss, 4),
            "meets_model": True,
        }


@dataclass(frozen=True)
class _Node:
    levels: tuple[int, ...]
    keep: tuple[bool, ...]
    suppressed: int
    loss: float


def anonymize(data: pa.Table, quasi: Sequence[str], model: PrivacyModel) -> Anonymized:
    """The rows generalized and suppressed until ``model`` holds with the least information loss, or :class:`ReleaseRefused`."""
    quasi = tuple(quasi)
    if model.sensitive is not None and model.sensitive not in data.column_names:
        raise ReleaseRefused(f"sensitive column {model.sensitive!r} is not a column of the release")
    hierarchies = hierarchies_for(data, quasi)
    columns = {q: data.column(q).to_pylist() for q in quasi}
    sensitive = data.column(model.sensitive).to_pylist() if model.sensitive else None
    n = data.num_rows
    limit = int(model.max_suppression * n)
    best: _Node | None = None
    closest: _Node | None = None
    for levels in itertools.product(*(range(hierarchies[q].height + 1) for q in quasi)):
        generalized = [
            [hierarchies[q].generalize(v, level) for v in columns[q]] for q, level in zip(quasi, levels, strict=True)
        ]
        keys = list(zip(*generalized, strict=True)) if quasi else [()] * n
        keep = _keep(keys, sensitive, model)
        suppressed = n - sum(keep)
        intensity = (
            sum(level / hierarchies[q].height for q, level in zip(quasi, levels, strict=True) if hierarchies[q].height)
            / len(quasi)
            if quasi
            else 0.0
        )
        share = suppressed / n if n else 0.0
        node = _Node(levels, tuple(keep), suppressed, (1 - share) * intensity + share)
        if closest is None or (node.suppressed, node.loss) < (closest.suppressed, closest.loss):
            closest = node
        if suppressed <= limit and (best is None or node.loss < best.loss):
            best = node
    if best is None:
        assert closest is not None
        at = ", ".join(f"{q} {hierarchies[q].levels[lv]}" for q, lv in zip(quasi, closest.levels, strict=True))
        model_text = f"k={model.k}" + (
            f", l={model.l_diversity} over {model.sensitive}" if model.l_diversity is not None else ""
        )
        raise ReleaseRefused(
            f"the release cannot meet {model_text} over {', '.join(quasi)}: even at {at} it would "
            f"suppress {closest.suppressed} of {n} records ({closest.suppressed / n:.1%}), over the "
            f"limit of {model.max_suppression:.0%} ({limit} records)"
        )
    kept = [i for i, k in enumerate(best.keep) if k]
    out = data.take(pa.array(kept, pa.int64()))
    for q, level in zip(quasi, best.levels, strict=True):
        if level:
            values = [hierarchies[q].generalize(v, level) for v in out.column(q).to_pylist()]
            index = out.schema.get_field_index(q)
            out = out.set_column(index, pa.field(q, pa.string()), pa.array(values, pa.string()))
    achieved = k_anonymity(out.select(list(quasi)).to_pylist() if quasi else [{}] * out.num_rows, quasi, k=model.k)
    if model.sensitive is not None:
        achieved["l_diversity"] = _smallest_diversity(out, quasi, model.sensitive)
    return Anonymized(
        data=out,
        model=model,
        levels=dict(zip(quasi, best.levels, strict=True)),
        hierarchies=hierarchies,
        records_in=n,
        suppressed=best.suppressed,
        information_loss=best.loss,
        achieved=achieved,
    )


def _keep(keys: list[tuple[Any, ...]], sensitive: list[Any] | None, model: PrivacyModel) -> list[bool]:
    """Which records stay: those in classes of at least k records (and l distinct sensitive values)."""
    sizes = Counter(keys)
    ok = {key for key, size in sizes.items() if size >= model.k}
    if sensitive is not None and model.l_diversity is not None:
        values: dict[tuple[Any, ...], set[Any]] = defaultdict(set)
        for key, value in zip(keys, sensitive, strict=True):
            values[key].add(value)
        ok = {key for key in ok if len(values[key]) >= model.l_diversity}
    return [key in ok for key in keys]


def _smallest_diversity(data: pa.Table, quasi: Sequence[str], sensitive: str) -> int:
    values: dict[tuple[Any, ...], set[Any]] = defaultdict(set)
    for row in data.select([*quasi, sensitive]).to_pylist():
        values[tuple(row[q] for q in quasi)].add(row[sensitive])
    return min((len(v) for v in values.values()), default=0)
