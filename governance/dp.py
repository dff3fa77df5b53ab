"""Differentially private aggregate releases, with a privacy-budget ledger per dataset and role.

    q = ReleaseQuery.parse("mean gold.ml_patient_features.heart_rate_mean bounds 30..220")
    r = release(lake, q, epsilon=0.5, role="ml", purpose="research", actor="ana", audit_key=key)
    r.value, r.spent, r.remaining

The query language (one line, words separated by spaces)::

    count     TABLE                                     [where COND]
    sum       TABLE.COLUMN bounds LO..HI                [where COND]
    mean      TABLE.COLUMN bounds LO..HI                [where COND]
    quantile  TABLE.COLUMN q Q bounds LO..HI            [where COND]   (Q in [0, 1])
    median    TABLE.COLUMN bounds LO..HI                [where COND]
    histogram TABLE.COLUMN bins LO..HI step S           [where COND]   (numeric column)
    histogram TABLE.COLUMN [over a,b,c]                 [where COND]   (categorical column)

TABLE is a ``silver.*`` or ``gold.*`` table. COND is terms joined by ``and``: ``COLUMN`` (true),
``not COLUMN`` (false), or ``COLUMN OP VALUE`` with OP one of ``= != < <= > >=`` (quote a VALUE
that holds spaces). Examples: ``count gold.ml_patient_features where has_diabetes``,
``histogram gold.ml_patient_features.age_band where gender = female``.

Bounds and categories always come from the query or from a declared domain (``DOMAINS``: the
age bands, FHIR administrative gender, booleans), never from the data: values outside the
bounds are clipped (sum, mean, quantile) or dropped (numeric histogram), values outside a
category list are counted under ``(other)``. A categorical histogram with neither ``over`` nor a
declared domain is refused. diffprivlib's mean and quantile treat the number of rows as public.

Every release is computed through diffprivlib (``diffprivlib.tools`` and, for categories, the
geometric mechanism with sensitivity 1 per disjoint bin), reads its rows through
:func:`medlake.governance.access.read_table` (so the role's access and row filters apply),
spends ``epsilon`` from the ``(dataset, role)`` budget (the policy's ``dp_budget``), recorded in
the Delta table ``<lake>/dp_budget/``,
and is audited as ``dp.release``. A release that would exceed the budget, or with epsilon ≤ 0,
is refused and audited as ``access.denied``.
"""

from __future__ import annotations

import math
import re
import shlex
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from diffprivlib import tools as dp_tools
from diffprivlib.accountant import BudgetAccountant
from diffprivlib.mechanisms import Geometric

from medlake.governance import audit
from medlake.governance.access import Policy, read_table
from medlake.lake import Lake
from medlake.registry import TS, TableSpec

TABLE = "dp_budget"
LOCK_FILE = "_lock"
OTHER = "(other)"

Kind = Literal["count", "sum", "mean", "quantile", "histogram"]
KINDS: tuple[str, ...] = ("count", "sum", "mean", "quantile", "median", "histogram")
OPERATORS = ("!=", "<=", ">=", "=", "<", ">")

#: declared value domains of categorical columns: a histogram over them needs no ``over`` list
DOMAINS: dict[str, tuple[str, ...]] = {
    "age_band": (
        "0-4", "5-9", "10-14", "15-19", "20-24", "25-29", "30-34", "35-39", "40-44", "45-49",
        "50-54", "55-59", "60-64", "65-69", "70-74", "75-79", "80-84", "85-89", "90+",
    ),
    "gender": ("male", "female", "other", "unknown"),  # FHIR administrative-gender
}

DP_BUDGET = TableSpec(
    name=TABLE,
    schema=pa.schema(
        [
            pa.field("release_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("role", pa.string(), nullable=False),
            pa.field("purpose", pa.string(), nullable=False),
            pa.field("actor", pa.string(), nullable=False),
            pa.field("query", pa.string(), nullable=False),
            pa.field("epsilon", pa.float64(), nullable=False),
            pa.field("spent", pa.float64(), nullable=False),
            pa.field("budget", pa.float64(), nullable=False),
            pa.field("remaining", pa.float64(), nullable=False),
            pa.field("released_at", TS, nullable=False),
        ]
    ),
    key=("release_id",),
    description="Every DP release: the epsilon it spent from its (dataset, role) budget, and what remains.",
)


class QueryError(ValueError):
    """The release query does not parse or asks for something a release cannot give."""


class ReleaseRefused(PermissionError):
    """The release was refused (epsilon ≤ 0, or over budget); the attempt was audited."""


@dataclass(frozen=True)
class Condition:
    """One ``where`` term: ``column`` (true), ``not column`` (false) or ``column OP value``."""

    column: str
    op: str
    value: str | bool

    def expression(self, type_: pa.DataType) -> pc.Expression:
        target = pc.field(self.column)
        value: Any = self.value
        if pa.types.is_boolean(type_):
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise QueryError(f"where {self.column}: compare a boolean column with true or false, not {value!r}")
                value = value.lower() == "true"
        elif (pa.types.is_integer(type_) or pa.types.is_floating(type_)) and isinstance(value, bool):
            return target != 0 if value else target == 0
        elif pa.types.is_integer(type_) or pa.types.is_floating(type_):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise QueryError(f"where {self.column}: {value!r} is not a number") from None
        else:
            target = target.cast(pa.string())
            value = str(value).lower() if isinstance(value, bool) else str(value)
        compare = {
            "=": target == value, "!=": target != value, "<": target < value,
            "<=": target <= value, ">": target > value, ">=": target >= value,
        }
        return compare[self.op]


@dataclass(frozen=True)
class ReleaseQuery:
    """One aggregate over one column (or the rows) of a silver or gold table."""

    kind: Kind
    table: str
    column: str | None = None
    bounds: tuple[float, float] | None = None
    quantile: float | None = None
    step: float | None = None
    categories: tuple[str, ...] | None = None
    where: tuple[Condition, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> ReleaseQuery:
        """The query a line of the release language describes (see the module docstring)."""
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise QueryError(f"release query {text!r}: {exc}") from None
        if not words or words[0].lower() not in KINDS:
            raise QueryError(f"release query {text!r} must start with one of: {', '.join(KINDS)}")
        kind = words[0].lower()
        if len(words) < 2:
            raise QueryError(f"release query {text!r} names no table")
        rest = words[2:]
        where: tuple[Condition, ...] = ()
        if "where" in (w.lower() for w in rest):
            at = [w.lower() for w in rest].index("where")
            where = _conditions(rest[at + 1 :], text=text)
            rest = rest[:at]
        options = _options(rest, text=text)
        target = words[1]
        if kind == "count":
            table, column = target, None
            if options:
                raise QueryError(f"release query {text!r}: count takes only a table and an optional where")
        else:
            table, _, column = target.rpartition(".")
            if not table or "." not in table or not column:
                raise QueryError(f"release query {text!r}: {kind} needs TABLE.COLUMN, e.g. gold.ml_patient_features.heart_rate_mean")
        if table.split(".", 1)[0] not in ("silver", "gold") or table.count(".") != 1:
            raise QueryError(f"release query {text!r}: releases are over silver.* or gold.* tables, not {table!r}")

        bounds = _bounds(options.pop("bounds"), text=text) if "bounds" in options else None
        quantile = None
        if kind == "median":
            kind, quantile = "quantile", 0.5
        elif kind == "quantile":
            if "q" not in options:
                raise QueryError(f"release query {text!r}: quantile needs q Q (between 0 and 1)")
            quantile = _number(options.pop("q"), "q", text=text)
            if not 0 <= quantile <= 1:
                raise QueryError(f"release query {text!r}: q must be between 0 and 1, not {quantile}")
        step = categories = None
        if kind == "histogram":
            if "bins" in options:
                bounds = _bounds(options.pop("bins"), text=text)
                if "step" not in options:
                    raise QueryError(f"release query {text!r}: histogram bins LO..HI needs step S")
                step = _number(options.pop("step"), "step", text=text)
                bins = (bounds[1] - bounds[0]) / step if step > 0 else 0
                if not 1 <= round(bins) <= 10_000 or abs(bins - round(bins)) > 1e-9:
                    raise QueryError(
                        f"release query {text!r}: step must divide HI-LO into 1 to 10000 bins of equal width"
                    )
            elif "over" in options:
                categories = tuple(c.strip() for c in options.pop("over").split(",") if c.strip())
                if not categories:
                    raise QueryError(f"release query {text!r}: over needs a comma-separated list of values")
        elif kind in ("sum", "mean", "quantile") and bounds is None:
            raise QueryError(
                f"release query {text!r}: {kind} needs bounds LO..HI (the range values are clipped to; "
                "bounds are never taken from the data)"
            )
        if options:
            raise QueryError(f"release query {text!r}: {kind} does not take {', '.join(options)}")
        return cls(kind=kind, table=table, column=column, bounds=bounds, quantile=quantile, step=step,  # type: ignore[arg-type]
                   categories=categories, where=where, text=" ".join(text.split()))

    @property
    def columns(self) -> list[str]:
        """The columns the release reads: its own and the ones its where clause tests."""
        names = [self.column] if self.column else []
        return list(dict.fromkeys([*names, *(c.column for c in self.where)]))


@dataclass(frozen=True)
class Release:
    """One noisy answer, what it cost and what is left."""

    release_id: str
    query: str
    dataset: str
    role: str
    epsilon: float
    value: float | int | dict[str, int] | None
    spent: float
    budget: float
    remaining: float
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------
# release


def release(
    lake: Lake,
    query: ReleaseQuery | str,
    *,
    epsilon: float,
    role: str,
    purpose: str,
    actor: str,
    audit_key: bytes,
    budget_per_dataset_role: float | None = None,
    policy: Policy | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> Release:
    """A differentially private answer to ``query``, spending ``epsilon`` of the (table, role) budget.

    Refused (:class:`ReleaseRefused`, audited) when epsilon ≤ 0 or the budget would be exceeded;
    access to the table is checked by ``read_table`` (:class:`AccessDenied`, audited). The budget
    is the policy's ``dp_budget`` for the role unless ``budget_per_dataset_role`` is given.
    """
    query = ReleaseQuery.parse(query) if isinstance(query, str) else query
    policy = policy or Policy.load()
    budget = policy.dp_budget(role) if budget_per_dataset_role is None else budget_per_dataset_role

    def refuse(why: str, **details: Any) -> ReleaseRefused:
        audit.append(lake, key=audit_key, actor=actor, role=role, action="access.denied", object=query.table,
                     purpose=purpose, details={"attempted": "dp.release", "query": query.text, "epsilon": epsilon,
                                               "why": why, **details})
        return ReleaseRefused(why)

    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise refuse(f"epsilon must be a positive number, not {epsilon!r}: a release with epsilon ≤ 0 "
                     "would promise privacy it cannot give")
    if budget <= 0:
        raise ValueError(f"budget_per_dataset_role must be positive, not {budget}")

    root = lake.path(TABLE)
    with audit.exclusive(root / LOCK_FILE):
        spent_before = spent(lake, dataset=query.table, role=role)
        remaining_before = _tidy(budget - spent_before)
        if epsilon > remaining_before + 1e-12:
            raise refuse(
                f"privacy budget exceeded for role {role!r} on {query.table}: spent {spent_before:g} of "
                f"{budget:g}, remaining {max(remaining_before, 0.0):g}, this release asks for {epsilon:g}",
                spent=spent_before, remaining=max(remaining_before, 0.0), budget=budget,
            )
        data = read_table(lake, query.table, role=role, purpose=purpose, actor=actor, audit_key=audit_key,
                          policy=policy, columns=query.columns)
        # A fresh diffprivlib accountant holding exactly this release's epsilon: diffprivlib
        # itself refuses a computation that would spend more than the ledger records.
        accountant = BudgetAccountant(epsilon=epsilon, delta=0)
        value, notes = _compute(query, data, epsilon=epsilon, random_state=random_state, accountant=accountant)
        result = Release(
            release_id=uuid.uuid4().hex,
            query=query.text,
            dataset=query.table,
            role=role,
            epsilon=float(epsilon),
            value=value,
            spent=_tidy(spent_before + epsilon),
            budget=budget,
            remaining=_tidy(max(budget - spent_before - epsilon, 0.0)),
            notes=notes,
        )
        # The budget is spent before the answer leaves: a crash after this point costs epsilon
        # without releasing anything, never the other way round.
        lake.write(TABLE, pa.Table.from_pylist([{
            "release_id": result.release_id, "dataset": result.dataset, "role": role, "purpose": purpose,
            "actor": actor, "query": result.query, "epsilon": result.epsilon, "spent": result.spent,
            "budget": result.budget, "remaining": result.remaining, "released_at": datetime.now(UTC),
        }], schema=DP_BUDGET.schema), mode="append", spec=DP_BUDGET)
        audit.append(lake, key=audit_key, actor=actor, role=role, action="dp.release", object=query.table,
                     purpose=purpose, details={"release_id": result.release_id, "query": result.query,
                                               "epsilon": result.epsilon, "spent": result.spent,
                                               "remaining": result.remaining, "budget": result.budget,
                                               "value": result.value})
    return result


def spent(lake: Lake, *, dataset: str, role: str) -> float:
    """The epsilon ``role`` has spent on ``dataset`` so far (0 when nothing was released)."""
    if not DeltaTable.is_deltatable(lake.uri(TABLE)):
        return 0.0
    rows = lake.read(TABLE, columns=["epsilon"], where={"dataset": dataset, "role": role})
    return _tidy(float(pc.sum(rows.column("epsilon")).as_py() or 0.0))


def budgets(lake: Lake) -> list[dict[str, Any]]:
    """Per (dataset, role): releases, epsilon spent, the budget at the last release and what remains."""
    if not DeltaTable.is_deltatable(lake.uri(TABLE)):
        return []
    rows = lake.read(TABLE).sort_by("released_at").to_pylist()
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        entry = summary.setdefault((row["dataset"], row["role"]),
                                   {"dataset": row["dataset"], "role": row["role"], "releases": 0, "spent": 0.0})
        entry["releases"] += 1
        entry["spent"] = _tidy(entry["spent"] + row["epsilon"])
        entry["budget"] = row["budget"]
        entry["remaining"] = _tidy(max(row["budget"] - entry["spent"], 0.0))
    return list(summary.values())


def _tidy(epsilon: float) -> float:
    """Epsilon sums without float dust (0.1 + 0.2 is 0.3 in a budget)."""
    return round(epsilon, 9)


# ---------------------------------------------------------------------------------------------
# compute


def _compute(
    query: ReleaseQuery, data: pa.Table, *, epsilon: float, random_state: Any, accountant: BudgetAccountant
) -> tuple[float | int | dict[str, int] | None, tuple[str, ...]]:
    """The noisy value of the query over the rows the role may see, and notes on how it was made."""
    notes: list[str] = []
    mask = np.ones(data.num_rows, dtype=bool)
    for condition in query.where:
        hit = pc.fill_null(_eval(condition, data), False)
        mask &= np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)
    if query.kind == "count":
        noisy = dp_tools.count_nonzero(mask, epsilon=epsilon, random_state=random_state, accountant=accountant)
        return max(round(float(noisy)), 0), ("count: truncated geometric mechanism, sensitivity 1",)

    assert query.column is not None
    column = data.column(query.column)
    type_ = column.type
    if query.kind == "histogram" and not (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        return _categorical_histogram(query, column, mask, epsilon=epsilon, random_state=random_state,
                                      accountant=accountant)
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        raise QueryError(f"release query {query.text!r}: {query.kind} needs a numeric column; {query.column} is {type_}")
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)[mask]
    values = values[~np.isnan(values)]
    assert query.bounds is not None
    lo, hi = query.bounds
    notes.append(f"bounds {lo:g}..{hi:g} from the query, not the data; null values left out")
    if query.kind == "histogram":
        assert query.step is not None
        edges = np.linspace(lo, hi, round((hi - lo) / query.step) + 1)
        counts, edges = dp_tools.histogram(values, epsilon=epsilon, bins=edges, range=(lo, hi),
                                            random_state=random_state, accountant=accountant)
        notes.append("values outside the bins are dropped; counts floored at 0")
        return ({f"{edges[i]:g}..{edges[i + 1]:g}": max(int(c), 0) for i, c in enumerate(counts)}, tuple(notes))
    clipped = np.clip(values, lo, hi)
    notes.append("values outside the bounds are clipped to them")
    if query.kind == "sum":
        return float(dp_tools.sum(clipped, epsilon=epsilon, bounds=(lo, hi), random_state=random_state,
                                  accountant=accountant)), tuple(notes)
    notes.append("the number of rows is treated as public (diffprivlib)")
    if clipped.size == 0:
        notes.append("no rows matched: nothing to release, the epsilon is spent all the same")
        return None, tuple(notes)
    if query.kind == "mean":
        return float(dp_tools.mean(clipped, epsilon=epsilon, bounds=(lo, hi), random_state=random_state,
                                   accountant=accountant)), tuple(notes)
    assert query.quantile is not None
    return float(dp_tools.quantile(clipped, query.quantile, epsilon=epsilon, bounds=(lo, hi),
                                   random_state=random_state, accountant=accountant)), tuple(notes)


def _eval(condition: Condition, data: pa.Table) -> pa.ChunkedArray | pa.Array:
    expression = condition.expression(data.schema.field(condition.column).type)
    return ds.dataset(data).to_table(columns={"hit": expression}).column("hit")


def _categorical_histogram(
    query: ReleaseQuery,
    column: pa.ChunkedArray,
    mask: np.ndarray,
    *,
    epsilon: float,
    random_state: Any,
    accountant: BudgetAccountant,
) -> tuple[dict[str, int], tuple[str, ...]]:
    if query.categories is not None:
        domain, source = query.categories, "the query's over list"
    elif pa.types.is_boolean(column.type):
        domain, source = ("true", "false"), "booleans"
    elif query.column in DOMAINS:
        domain, source = DOMAINS[query.column], f"the declared domain of {query.column}"
    else:
        raise QueryError(
            f"release query {query.text!r}: a histogram of {query.column} needs its categories "
            "(over a,b,c): listing the values found in the data would disclose them"
        )
    raw = column.to_pylist()
    values = [("true" if v else "false") if isinstance(v, bool) else (None if v is None else str(v)) for v in raw]
    counts = dict.fromkeys((*domain, OTHER), 0)
    for value, keep in zip(values, mask, strict=True):
        if keep:
            counts[value if value in counts and value != OTHER else OTHER] += 1
    rng = random_state if isinstance(random_state, np.random.RandomState) else np.random.RandomState(random_state)
    accountant.check(epsilon, 0)
    mechanism = Geometric(epsilon=epsilon, sensitivity=1, random_state=rng)
    noisy = {k: max(int(mechanism.randomise(int(v))), 0) for k, v in counts.items()}
    accountant.spend(epsilon, 0)  # disjoint bins: parallel composition, one epsilon for all
    notes = (f"categories from {source}; values outside them (and nulls) counted under {OTHER!r}",
             "Geometric mechanism per disjoint bin, sensitivity 1; counts floored at 0")
    return noisy, notes


# ---------------------------------------------------------------------------------------------
# parsing helpers


def _options(words: Sequence[str], *, text: str) -> dict[str, str]:
    """``name value`` pairs (bounds, q, bins, step, over)."""
    known = ("bounds", "q", "bins", "step", "over")
    options: dict[str, str] = {}
    i = 0
    while i < len(words):
        name = words[i].lower()
        if name not in known or i + 1 >= len(words):
            raise QueryError(f"release query {text!r}: unexpected {words[i]!r}; options are {', '.join(known)} VALUE")
        options[name] = words[i + 1]
        i += 2
    return options


def _bounds(value: str, *, text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = value.partition("..")
    if not sep:
        raise QueryError(f"release query {text!r}: bounds are written LO..HI, e.g. 30..220, not {value!r}")
    lo, hi = _number(lo_text, "the lower bound", text=text), _number(hi_text, "the upper bound", text=text)
    if not lo < hi:
        raise QueryError(f"release query {text!r}: the lower bound must be below the upper bound ({value})")
    return lo, hi


def _number(value: str, what: str, *, text: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"release query {text!r}: {what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"release query {text!r}: {what} must be finite")
    return number


_TERM = re.compile(r"^(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<value>.+)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _conditions(words: Sequence[str], *, text: str) -> tuple[Condition, ...]:
    terms: list[list[str]] = [[]]
    for word in words:
        if word.lower() == "and":
            terms.append([])
        else:
            terms[-1].append(word)
    found: list[Condition] = []
    for term in terms:
        if len(term) == 1 and _NAME.match(term[0]):
            found.append(Condition(term[0], "=", True))
        elif len(term) == 2 and term[0].lower() == "not" and _NAME.match(term[1]):
            found.append(Condition(term[1], "=", False))
        else:
            match = _TERM.match(" ".join(term)) if len(term) in (1, 3) else None
            if not match:
                raise QueryError(
                    f"release query {text!r}: cannot read the where term {' '.join(term)!r}; "
                    "write COLUMN, not COLUMN, or COLUMN OP VALUE with OP one of = != < <= > >="
                )
            found.append(Condition(match["column"], match["op"], match["value"]))
    return tuple(found)
