"""Role-based access: who may read which table, which columns and rows, for which purpose of use.

The policy is data (``governance/policies/default.yaml``): roles → grants on tables → columns,
row filters and the purposes of use each grant allows. Anything not granted is denied.

    policy = Policy.load()
    rows = read_table(lake, "silver.observations", role="ml", purpose="research",
                      actor="ana", audit_key=key)

:func:`read_table` is the one enforced read path: it projects the allowed columns, applies the
grant's row filter, audits every denial (``access.denied``) and every read of a PHI-bearing table
(``access.read``). :func:`authorize` decides without reading; :func:`allowed_columns_for_pull`
answers the same question for published datasets.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import yaml  # type: ignore[import-untyped]

from medlake.governance import audit
from medlake.governance.vault import VAULT
from medlake.lake import Lake
from medlake.registry import TABLES

DEFAULT_POLICY = Path(__file__).resolve().parent / "policies" / "default.yaml"
PURPOSES: tuple[str, ...] = ("treatment", "research", "quality_improvement", "operations")

#: a table name: ``layer.table`` or a top-level table (``quarantine``); nothing that could be a path
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$")

ColumnMode = Literal["all", "deidentified", "listed"]
RowValue = str | int | float | bool


class PolicyError(ValueError):
    """The policy file is malformed; the message names the file, the role and the grant."""


class AccessDenied(PermissionError):
    """The role may not read this (table, column or purpose); the attempt was audited."""

    def __init__(self, role: str, table: str, column: str | None, purpose: str | None, why: str) -> None:
        self.role = role
        self.table = table
        self.column = column
        self.purpose = purpose
        self.why = why
        super().__init__(why)


@dataclass(frozen=True)
class Grant:
    """What one role may read of the tables a pattern matches, and for which purposes."""

    role: str
    tables: tuple[str, ...]
    mode: ColumnMode
    listed: tuple[str, ...] = ()
    withheld: tuple[str, ...] = ()
    row_filter: tuple[tuple[str, tuple[RowValue, ...]], ...] = ()
    purposes: tuple[str, ...] = ()
    via: str | None = None
    deid_levels: tuple[str, ...] = ()

    def matches(self, table: str) -> bool:
        return any(fnmatch.fnmatchcase(table, pattern) for pattern in self.tables)

    def exactly(self, table: str) -> bool:
        return table in self.tables

    def allows_column(self, column: str, *, phi: Sequence[str]) -> bool:
        """Whether the column may be returned from a table whose PHI columns are ``phi``."""
        if column in self.withheld:
            return False
        if self.mode == "listed":
            return column in self.listed
        if self.mode == "deidentified":
            return column not in phi
        return True

    def columns_of(self, available: Sequence[str], *, phi: Sequence[str]) -> list[str]:
        """The allowed columns among ``available``, in table order."""
        return [c for c in available if self.allows_column(c, phi=phi)]

    def filter_expression(self) -> pc.Expression | None:
        """The row filter as an Arrow expression (strings compared after a cast: MERGE writes views)."""
        expression: pc.Expression | None = None
        for column, values in self.row_filter:
            target = pc.field(column)
            if all(isinstance(v, str) for v in values):
                target = target.cast(pa.string())
            condition = target.isin(list(values)) if len(values) > 1 else target == values[0]
            expression = condition if expression is None else expression & condition
        return expression

    def describe_filter(self) -> dict[str, list[RowValue]]:
        return {column: list(values) for column, values in self.row_filter}


@dataclass(frozen=True)
class Policy:
    """Roles and their grants, as loaded from a policy file."""

    grants: Mapping[str, tuple[Grant, ...]]
    dataset_grants: Mapping[str, Grant] = field(default_factory=dict)
    phi_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dp_budgets: Mapping[str, float] = field(default_factory=dict)
    dp_default_budget: float = 3.0
    #: who holds which roles: ``user:<login>``, ``group:<group>``, ``oidc:<issuer>#<subject>``,
    #: ``token:<name>`` and ``local_owner`` (governance/identity.py) → role names
    principals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path | str | None = None) -> Policy:
        """The policy in ``path`` (default: the shipped ``policies/default.yaml``)."""
        path = Path(path) if path is not None else DEFAULT_POLICY
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy {path} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<memory>") -> Policy:
        if not isinstance(raw, dict) or not isinstance(raw.get("roles"), dict):
            raise PolicyError(f"policy {source} needs a 'roles' mapping")
        purposes = tuple(raw.get("purposes") or PURPOSES)
        unknown = [p for p in purposes if p not in PURPOSES]
        if unknown:
            raise PolicyError(f"policy {source}: unknown purposes {unknown}; known: {', '.join(PURPOSES)}")
        phi = {str(t): tuple(str(c) for c in cols) for t, cols in (raw.get("phi_columns") or {}).items()}
        grants: dict[str, tuple[Grant, ...]] = {}
        dataset_grants: dict[str, Grant] = {}
        for role, body in raw["roles"].items():
            body = body or {}
            where = f"policy {source}, role {role}"
            grants[str(role)] = tuple(
                _grant(str(role), g, where=f"{where}, grant {i + 1}", purposes=purposes)
                for i, g in enumerate(body.get("grants") or [])
            )
            if body.get("datasets") is not None:
                dataset_grants[str(role)] = _grant(
                    str(role), {"tables": ["datasets"], **body["datasets"]}, where=f"{where}, datasets", purposes=purposes
                )
        budget = raw.get("dp_budget") or {}
        try:
            default_budget = float(budget.get("default", cls.dp_default_budget))
            role_budgets = {str(r): float(b) for r, b in (budget.get("roles") or {}).items()}
        except (TypeError, ValueError, AttributeError):
            raise PolicyError(f"policy {source}: dp_budget needs numbers: {{default: 3.0, roles: {{role: 1.0}}}}") from None
        if min([default_budget, *role_budgets.values()]) <= 0:
            raise PolicyError(f"policy {source}: every dp_budget must be positive")
        principals = _principals(raw.get("principals") or {}, roles=tuple(grants), source=source)
        return cls(grants=grants, dataset_grants=dataset_grants, phi_columns=phi, dp_budgets=role_budgets,
                   dp_default_budget=default_budget, principals=principals, source=source)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.grants)

    def dp_budget(self, role: str) -> float:
        """The total epsilon ``role`` may spend on one table (governance/dp.py)."""
        return self.dp_budgets.get(role, self.dp_default_budget)

    def phi_of(self, table: str) -> tuple[str, ...]:
        """The table's PHI columns: the registry's plus the policy's own list."""
        registered = TABLES[table].phi_columns if table in TABLES else ()
        if table == VAULT.name:
            registered = VAULT.phi_columns
        return tuple(dict.fromkeys((*registered, *self.phi_columns.get(table, ()))))

    def grant_for(self, role: str, table: str) -> Grant | None:
        """The grant that decides for ``table``: an exact name first, else the first pattern that matches."""
        grants = self.grants.get(role, ())
        exact = [g for g in grants if g.exactly(table)]
        matching = exact or [g for g in grants if g.matches(table)]
        return matching[0] if matching else None


PRINCIPAL_KINDS = ("user:", "group:", "oidc:", "token:")


def _principals(raw: Any, *, roles: tuple[str, ...], source: str) -> dict[str, tuple[str, ...]]:
    """The ``principals`` section: ``{user:ana: [ml], group:medlake-ml: [ml], local_owner: [...]}``."""
    if not isinstance(raw, dict):
        raise PolicyError(f"policy {source}: principals must map user:/group:/oidc:/token: names to role lists")
    mapped: dict[str, tuple[str, ...]] = {}
    for name, held in raw.items():
        name = str(name)
        if name != "local_owner" and not name.startswith(PRINCIPAL_KINDS):
            raise PolicyError(f"policy {source}: principal {name!r} must start with "
                              f"{', '.join(PRINCIPAL_KINDS)} or be local_owner")
        listed = [held] if isinstance(held, str) else held
        if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
            raise PolicyError(f"policy {source}: principal {name} needs a list of roles")
        unknown = [r for r in listed if r not in roles]
        if unknown:
            raise PolicyError(f"policy {source}: principal {name} is given unknown roles {unknown}")
        mapped[name] = tuple(listed)
    return mapped


def _grant(role: str, raw: Any, *, where: str, purposes: tuple[str, ...]) -> Grant:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a grant is a mapping with tables, columns and purposes")
    tables = raw.get("tables")
    if isinstance(tables, str):
        tables = [tables]
    if not tables:
        raise PolicyError(f"{where}: names no tables")
    columns = raw.get("columns", "deidentified")
    mode: ColumnMode
    listed: tuple[str, ...] = ()
    if columns == "*":
        mode = "all"
    elif columns == "deidentified":
        mode = "deidentified"
    elif isinstance(columns, list) and all(isinstance(c, str) for c in columns):
        mode, listed = "listed", tuple(columns)
    else:
        raise PolicyError(f"{where}: columns must be '*', 'deidentified' or a list of names, not {columns!r}")
    granted = tuple(raw.get("purposes") or ())
    if not granted:
        raise PolicyError(f"{where}: states no purposes of use")
    bad = [p for p in granted if p not in purposes]
    if bad:
        raise PolicyError(f"{where}: unknown purposes {bad}; known: {', '.join(purposes)}")
    row_filter: list[tuple[str, tuple[RowValue, ...]]] = []
    for column, value in (raw.get("row_filter") or {}).items():
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values or not all(isinstance(v, str | int | float | bool) for v in values):
            raise PolicyError(f"{where}: row_filter {column} must be a value or a non-empty list of values")
        row_filter.append((str(column), values))
    return Grant(
        role=role,
        tables=tuple(str(t) for t in tables),
        mode=mode,
        listed=listed,
        withheld=tuple(str(c) for c in raw.get("except") or ()),
        row_filter=tuple(row_filter),
        purposes=granted,
        via=raw.get("via"),
        deid_levels=tuple(raw.get("deid_levels") or ()),
    )


# ---------------------------------------------------------------------------------------------
# decide


def authorize(
    policy: Policy,
    *,
    role: str,
    table: str,
    columns: Sequence[str] | None,
    purpose: str,
) -> Grant:
    """The grant under which ``role`` may read ``columns`` of ``table`` for ``purpose``, or :class:`AccessDenied`.

    ``columns=None`` asks for whatever the grant allows. A denial names the role, the table and
    the first forbidden column or the purpose.
    """

    def deny(why: str, column: str | None = None) -> AccessDenied:
        return AccessDenied(role, table, column, purpose, why)

    if not TABLE_NAME.match(table):
        raise deny(f"role {role!r} may not read {table!r}: not a table name (layer.table, lower case)")
    if role not in policy.grants:
        raise deny(f"role {role!r} may not read {table}: the policy has no role {role!r} "
                   f"(roles: {', '.join(policy.roles)})")
    if purpose not in PURPOSES:
        raise deny(f"role {role!r} may not read {table} for purpose {purpose!r}: "
                   f"not a purpose of use ({', '.join(PURPOSES)})")
    grant = policy.grant_for(role, table)
    if grant is None:
        raise deny(f"role {role!r} may not read table {table}: no grant covers it")
    if purpose not in grant.purposes:
        raise deny(f"role {role!r} may not read {table} for purpose {purpose!r}: "
                   f"the grant allows {', '.join(grant.purposes)}")
    if grant.via:
        raise deny(f"role {role!r} may read {table} only through `{grant.via}`, not a plain read")
    phi = policy.phi_of(table)
    for column in columns or ():
        if not grant.allows_column(column, phi=phi):
            kind = "a PHI column" if column in phi else "not granted"
            raise deny(f"role {role!r} may not read column {table}.{column} ({kind})", column)
    return grant


def read_table(
    lake: Lake,
    name: str,
    *,
    role: str,
    purpose: str,
    actor: str,
    audit_key: bytes,
    policy: Policy | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    run_id: str | None = None,
) -> pa.Table:
    """The rows of ``name`` that ``role`` may see for ``purpose``: allowed columns, filtered rows.

    The one enforced read path. A denial is audited (``access.denied``) before it is raised; a
    read of a PHI-bearing table is audited (``access.read``) before rows are returned.
    """
    policy = policy or Policy.load()

    def record(action: str, **details: Any) -> None:
        audit.append(lake, key=audit_key, actor=actor, role=role, action=action, object=name,
                     run_id=run_id, purpose=purpose, details=details)

    try:
        grant = authorize(policy, role=role, table=name, columns=columns, purpose=purpose)
    except AccessDenied as exc:
        record("access.denied", attempted="read", column=exc.column, why=exc.why)
        raise
    phi = policy.phi_of(name)
    available = _columns_of(lake, name, version=version)
    if columns is not None:
        missing = [c for c in columns if c not in available]
        if missing:
            raise KeyError(f"table {name} has no column {missing[0]!r}; columns: {', '.join(available)}")
        selected = list(columns)
    else:
        selected = grant.columns_of(available, phi=phi)
    visible = grant.columns_of(available, phi=phi)
    if not visible:
        why = f"role {role!r} may not read any column of {name}"
        record("access.denied", attempted="read", column=None, why=why)
        raise AccessDenied(role, name, None, purpose, why)
    # Lake.read takes an empty projection for "every column": read one visible column and
    # drop it, so asking for no columns (a row count) returns rows and nothing else.
    data = lake.read(name, version=version, columns=selected or visible[:1], filter=grant.filter_expression())
    data = data.select(selected)
    if phi:
        record(
            "access.read",
            columns=selected,
            phi_columns=[c for c in selected if c in phi],
            rows=data.num_rows,
            version=version if version is not None else lake.version(name),
            row_filter=grant.describe_filter() or None,
        )
    return data


def _columns_of(lake: Lake, name: str, *, version: int | None) -> list[str]:
    if lake.exists(name):
        return list(lake.table(name, version=version).to_pyarrow_dataset().schema.names)
    if name in TABLES:
        return list(TABLES[name].schema.names)
    return list(lake.read(name).column_names)  # raises TableNotFound, naming the table


# ---------------------------------------------------------------------------------------------
# dataset pulls


class DatasetManifest(Protocol):
    """What the pull check needs of ``training.datasets.Manifest``."""

    @property
    def ref(self) -> str: ...

    @property
    def table(self) -> str: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def phi_columns(self) -> tuple[str, ...]: ...

    @property
    def deid_level(self) -> str: ...


def allowed_columns_for_pull(
    role: str,
    manifest: DatasetManifest,
    *,
    purpose: str | None = None,
    policy: Policy | None = None,
) -> tuple[str, ...]:
    """The columns ``role`` may pull from a published dataset, or :class:`AccessDenied`.

    Decided by the role's ``datasets`` grant: its de-identification levels (when it lists any),
    its purposes (when ``purpose`` is stated), and its columns, where "deidentified" withholds
    the manifest's PHI columns as well as the table's.
    """
    policy = policy or Policy.load()
    grant = policy.dataset_grants.get(role)

    def deny(why: str, column: str | None = None) -> AccessDenied:
        return AccessDenied(role, manifest.table, column, purpose, why)

    if grant is None:
        pulling = ", ".join(sorted(policy.dataset_grants))
        raise deny(f"role {role!r} may not pull dataset {manifest.ref}; roles that may: {pulling}")
    if grant.deid_levels and manifest.deid_level not in grant.deid_levels:
        raise deny(f"role {role!r} may not pull dataset {manifest.ref}: it is {manifest.deid_level}, "
                   f"not de-identified ({' or '.join(grant.deid_levels)})")
    if purpose is not None and purpose not in grant.purposes:
        raise deny(f"role {role!r} may not pull dataset {manifest.ref} for purpose {purpose!r}: "
                   f"the grant allows {', '.join(grant.purposes)}")
    phi = (*policy.phi_of(manifest.table), *manifest.phi_columns)
    return tuple(c for c in manifest.columns if grant.allows_column(c, phi=phi))
