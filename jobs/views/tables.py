"""Extra silver tables from ViewDefinition files: a hospital adds a table by adding a view.

A view in the extra folder (``immunizations.json`` over Immunization, say) becomes the table
``silver.<view name>``. Silver holds no direct identifiers, so a view is accepted only when every
column is safe by construction:

- a key column (its path ends in ``getResourceKey()`` or ``getReferenceKey(<Type>)``) is
  pseudonymized like the built-in tables' keys: a Patient key becomes the ``person_key``
  (the MRN's key when known), another resource's key its record key (so an Encounter reference
  joins ``silver.encounters.encounter_key``);
- a ``date``/``dateTime``/``instant`` column is shifted by the row's person offset;
- ``code``, ``uri``, ``boolean`` and numeric columns pass as they are;
- any other column (``string``, ``id``, …) must be tagged ``{"name": "phi", "value": "none"}``
  by the view's author, who thereby states it holds no identifier;
- the view needs one Patient key column (``getResourceKey()`` in a Patient view, else
  ``….getReferenceKey(Patient)``): without a person, dates cannot be shifted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from medlake.governance.deid import shift_date, shift_datetime
from medlake.jobs.ingest import fhir
from medlake.jobs.views.engine import ARROW_TYPES, View, ViewError, load_views
from medlake.quarantine import Split
from medlake.registry import SILVER_LINEAGE, TableSpec

#: Column types that cannot carry a direct identifier.
SAFE_TYPES = frozenset(
    {"code", "uri", "boolean", "integer", "decimal", "positiveInt", "unsignedInt", "integer64"}
)
DATE_TYPES: dict[str, pa.DataType] = {
    "date": pa.date32(),
    "dateTime": pa.timestamp("us", tz="UTC"),
    "instant": pa.timestamp("us", tz="UTC"),
}
_KEY = re.compile(r"(?:getResourceKey\(\)|getReferenceKey\((?P<type>[A-Za-z]*)\))\s*$")

Kind = Literal["person", "record", "date", "value"]


@dataclass(frozen=True)
class ViewTable:
    """A view accepted as an extra silver table, with how each of its columns is de-identified."""

    view: View
    spec: TableSpec
    kinds: dict[str, tuple[Kind, str | None]]  # column → (kind, record type of a record key)

    @property
    def person_column(self) -> str:
        return next(name for name, (kind, _) in self.kinds.items() if kind == "person")


def _is_phi_free(tags: Any) -> bool:
    return any(
        isinstance(t, dict) and t.get("name") == "phi" and t.get("value") == "none"
        for t in tags or []
    )


def view_table(view: View, *, name: str) -> ViewTable:
    """Accept a view as ``silver.<name>`` or say which column could carry PHI (:class:`ViewError`)."""
    kinds: dict[str, tuple[Kind, str | None]] = {}
    fields: list[pa.Field] = []
    tags = {c["name"]: c.get("tag") for c in _raw_columns(view.definition.get("select") or [])}
    for col in view.columns:
        key = _KEY.search(col.path)
        where = f"view {name!r} column {col.name!r}"
        if col.collection and (key or col.type in DATE_TYPES):
            raise ViewError(
                f"{where}: a key or date column must hold one value (collection: false)"
            )
        if key:
            target = key.group("type") if "getReferenceKey" in key.group(0) else view.resource
            if not target:
                raise ViewError(
                    f"{where}: getReferenceKey needs the target type to be keyed, e.g. getReferenceKey(Patient)"
                )
            kinds[col.name] = ("person", None) if target == "Patient" else ("record", target)
            fields.append(pa.field(col.name, pa.string()))
        elif col.type in DATE_TYPES:
            kinds[col.name] = ("date", None)
            fields.append(pa.field(col.name, DATE_TYPES[col.type]))
        elif col.type in SAFE_TYPES or _is_phi_free(tags.get(col.name)):
            kinds[col.name] = ("value", None)
            base = ARROW_TYPES.get(col.type or "", pa.string())
            fields.append(pa.field(col.name, pa.list_(base) if col.collection else base))
        else:
            raise ViewError(
                f"{where}: type {col.type or '(none)'} could carry an identifier; use a key, date or "
                f"coded type, or tag the column {{'name': 'phi', 'value': 'none'}}"
            )
    persons = [c for c, (kind, _) in kinds.items() if kind == "person"]
    if len(persons) != 1:
        raise ViewError(
            f"view {name!r}: needs exactly one Patient key column (getResourceKey() in a Patient view, "
            f"else e.g. subject.getReferenceKey(Patient)) to pseudonymize and date-shift its rows; found {len(persons)}"
        )
    spec = TableSpec(
        name=f"silver.{name}",
        schema=pa.schema(fields + SILVER_LINEAGE),
        key=tuple(f.name for f in fields),
        description=str(view.definition.get("description") or view.definition.get("title") or name),
    )
    return ViewTable(view=view, spec=spec, kinds=kinds)


def _raw_columns(selects: list[Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for sel in selects:
        if isinstance(sel, dict):
            found.extend(c for c in sel.get("column") or [] if isinstance(c, dict))
            found.extend(_raw_columns(sel.get("select") or []))
            found.extend(_raw_columns(sel.get("unionAll") or []))
    return found


def load_view_tables(folder: Path, *, reserved: set[str]) -> dict[str, ViewTable]:
    """The extra tables of a folder of views; a name that is already a table (``reserved``) is refused."""
    tables: dict[str, ViewTable] = {}
    for name, view in load_views(folder).items():
        if f"silver.{name}" in reserved:
            raise ViewError(f"{folder}: view {name!r} would replace the table silver.{name}")
        tables[name] = view_table(view, name=name)
    return tables


def _flatten(table: ViewTable) -> fhir.Flatten:
    def flatten(res: dict[str, Any], pseudo: fhir.Pseudonymizer) -> list[dict[str, Any]]:
        rows = fhir.view_rows(res, view=table.view)
        out = []
        for raw in rows:
            patient = raw[table.person_column]
            if not patient:
                raise fhir.Reject(
                    "silver.missing_subject", f"{res['resourceType']} has no Patient reference"
                )
            person = pseudo.person(patient)
            shift = pseudo.shift(person)
            row: dict[str, Any] = {}
            for column, (kind, record_type) in table.kinds.items():
                value = raw[column]
                if kind == "person":
                    row[column] = person
                elif kind == "record":
                    row[column] = pseudo.record(str(record_type), value) if value else None
                elif kind == "date" and table.spec.schema.field(column).type == pa.date32():
                    row[column] = shift_date(fhir.parse_date(value), shift)
                elif kind == "date":
                    row[column] = shift_datetime(fhir.parse_datetime(value), shift)
                else:
                    row[column] = value
            out.append(row)
        return out

    return flatten


def rows_from_bronze(
    bronze: pa.Table,
    table: ViewTable,
    *,
    key: bytes,
    max_shift_days: int = 365,
    aliases: dict[str, str] | None = None,
) -> Split:
    """``silver.<view>`` rows from the bronze rows of the view's resource type: validated as FHIR
    R4, evaluated, keyed and shifted; what cannot be placed is quarantined with the reason."""
    rows = bronze.filter(pc.equal(bronze.column("resource_type"), table.view.resource))
    pseudo = fhir.Pseudonymizer(key=key, max_shift_days=max_shift_days, aliases=aliases or {})
    split: Split = fhir.flatten_split(
        rows, flatten=_flatten(table), target=table.spec, pseudo=pseudo
    )
    return split
