"""SQL-on-FHIR v2 ViewDefinitions: FHIR resources (dicts) → flat rows.

A ViewDefinition (https://sql-on-fhir.org) says, in JSON, which columns a table has and the
FHIRPath expression that fills each one; ``forEach``/``forEachOrNull``/``repeat`` unnest,
``unionAll`` concatenates, nested ``select``s cross-join, ``where`` filters resources and
``constant``s are ``%name`` variables. A hospital changes a silver column by editing a view file.

:func:`compile_view` checks a view and compiles every FHIRPath expression once (fhirpathpy, R4
model); :meth:`View.rows` and :meth:`View.table` then evaluate it over many resources. The
SQL-on-FHIR functions ``getResourceKey()`` and ``getReferenceKey([type])`` are registered as
fhirpathpy user functions, and ``%rowIndex`` is the 0-based position in the enclosing iteration.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import pyarrow as pa
from fhirpathpy.engine.nodes import (
    FP_DateTime,
    FP_Quantity,
    FP_Time,
    FP_TimeBase,
    FP_Type,
    ResourceNode,
)
from fhirpathpy.models import models

#: FHIR primitive type → Arrow type of a typed column; any other type is a string.
ARROW_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "integer": pa.int64(),
    "positiveInt": pa.int64(),
    "unsignedInt": pa.int64(),
    "integer64": pa.int64(),
    "decimal": pa.float64(),
}

Row = dict[str, Any]
Compiled = Callable[..., list[Any]]


class ViewError(ValueError):
    """A ViewDefinition that is not valid, or a path that fails on a resource (named in the message)."""


# -- the SQL-on-FHIR functions ------------------------------------------------------------------


def _resource_key(inputs: list[Any]) -> list[str]:
    return [str(r["id"]) for r in inputs if isinstance(r, dict) and r.get("id") is not None]


def reference_parts(reference: str) -> tuple[str | None, str] | None:
    """(resource type, local id) of a literal reference: ``Patient/1``, an absolute URL,
    ``…/_history/2``; the type is None for ``urn:uuid:1`` (a bundle-local reference). None for
    what points at no row: a contained (``#x``) or conditional (``Patient?identifier=…``) one."""
    if reference.startswith("#") or "?" in reference:
        return None
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        return None, reference.split(":", 2)[2]
    parts = [p for p in reference.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if not parts:
        return None
    return (parts[-2] if len(parts) >= 2 else None), parts[-1]


def _join(inputs: list[Any], separator: str | list[Any] = "") -> str:
    """FHIRPath ``join``: the strings joined, ``''`` for an empty collection (fhirpathpy gives empty)."""
    return (separator if isinstance(separator, str) else "").join(str(v) for v in inputs)


def _reference_key(inputs: list[Any], type_info: Any = None) -> list[str]:
    """``getReferenceKey([type])``: the local id a Reference points at, equal to the target's
    ``getResourceKey()``; with a type, only references to that type (a ``urn:uuid`` reference,
    whose type the reference does not say, is taken as the type asked for)."""
    wanted = getattr(type_info, "name", None)
    keys: list[str] = []
    for ref in inputs:
        text = ref.get("reference") if isinstance(ref, dict) else None
        parsed = reference_parts(text) if isinstance(text, str) else None
        if parsed is None:
            continue
        rtype, local_id = parsed
        if wanted is None or rtype in (wanted, None):
            keys.append(local_id)
    return keys


@dataclass(frozen=True)
class Boundary:
    """``lowBoundary()``/``highBoundary()`` of a date, dateTime or time text: fhirpathpy hands user
    functions untyped values, and ``2010-10`` is a date or a dateTime by its element's type, so
    the text is completed when the column's type is known (:meth:`text`)."""

    value: str
    high: bool

    def text(self, kind: str | None) -> str:
        if re.fullmatch(r"\d\d(:\d\d(:\d\d(\.\d+)?)?)?", self.value):
            return _complete_time(self.value, self.high)
        date_part, _, rest = self.value.partition("T")
        year, *rest_of_date = date_part.split("-")
        month = rest_of_date[0] if rest_of_date else ("12" if self.high else "01")
        if len(rest_of_date) > 1:
            day = rest_of_date[1]
        else:
            day = f"{calendar.monthrange(int(year), int(month))[1] if self.high else 1:02d}"
        if kind == "date":
            return f"{year}-{month}-{day}"
        zone = re.search(r"(Z|[+-]\d\d:\d\d)$", rest)
        clock = rest[: zone.start()] if zone else rest
        offset = zone.group(1) if zone else ("-12:00" if self.high else "+14:00")
        return f"{year}-{month}-{day}T{_complete_time(clock, self.high)}{offset}"


def _complete_time(clock: str, high: bool) -> str:
    parts = clock.split(":") if clock else []
    hour = parts[0] if parts else ("23" if high else "00")
    minute = parts[1] if len(parts) > 1 else ("59" if high else "00")
    second, _, fraction = (parts[2] if len(parts) > 2 else ("59" if high else "00")).partition(".")
    fraction = (
        (fraction + ("9" if high else "0") * 3)[:3] if fraction else ("999" if high else "000")
    )
    return f"{hour}:{minute}:{second}.{fraction}"


def _boundary(high: bool) -> Callable[..., list[Any]]:
    """FHIRPath ``lowBoundary()``/``highBoundary()`` (experimental in SQL-on-FHIR): a decimal's
    interval by its written precision; a date, dateTime or time completed to its first/last instant."""

    def boundary(inputs: list[Any], precision: Any = None) -> list[Any]:
        out: list[Any] = []
        for value in inputs:
            if isinstance(value, bool):
                continue
            if isinstance(value, int | Decimal):
                number = Decimal(str(value))
                exponent = number.as_tuple().exponent
                half = Decimal(5).scaleb(int(exponent) - 1 if isinstance(exponent, int) else -1)
                out.append(number + half if high else number - half)
            elif isinstance(value, str):
                out.append(Boundary(value, high))
        return out

    return boundary


_OPTIONS = {
    "returnRawData": True,
    "userInvocationTable": {
        "getResourceKey": {"fn": _resource_key},
        "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
        "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
        "lowBoundary": {"fn": _boundary(high=False), "arity": {0: [], 1: ["Integer"]}},
        "highBoundary": {"fn": _boundary(high=True), "arity": {0: [], 1: ["Integer"]}},
    },
}


def compile_path(expression: str) -> Compiled:
    """One FHIRPath expression compiled against the R4 model, with the SQL-on-FHIR functions.

    A plain navigation (``subject.reference``, ``code.coding.where(system = %loinc).first().code``,
    ``value.ofType(Quantity).unit``, ``extension(%url).value.ofType(string)``) runs as lookups in
    the JSON, with the R4 model deciding the key of a choice element (``valueQuantity``);
    fhirpathpy evaluates everything else, and whatever the lookups cannot decide. The two agree
    on such paths (tests/jobs/views/test_engine.py) and the lookups are ~20x faster, which
    matters over a hundred thousand resources.
    """
    fhirpath = _compile_fhirpath(expression)
    if expression.strip() == "{}":
        return _nothing
    steps = _simple_steps(expression)
    return fhirpath if steps is None else _Navigation(steps, fhirpath)


def _nothing(node: Any, env: dict[str, Any]) -> list[Any]:
    """``{}``, the empty collection (a null column)."""
    return []


def _compile_fhirpath(expression: str) -> Compiled:
    if not isinstance(expression, str) or not expression.strip():
        raise ViewError(f"a path must be a non-empty FHIRPath string, found {expression!r}")
    # fhirpathpy binds $this only inside functions: a path on the focus itself runs in select()
    text = f"select({expression})" if "$this" in expression else expression
    try:
        return fhirpathpy.compile(text, model=models["r4"], options=_OPTIONS)
    except Exception as exc:  # the parser raises bare Exceptions
        raise ViewError(f"path {expression!r} is not valid FHIRPath: {exc}") from exc


_R4 = models["r4"]
_STEP = re.compile(
    r"[a-z][A-Za-z0-9_]*|first\(\)|exists\(\)|empty\(\)|last\(\)|extension\((?:%[A-Za-z_][A-Za-z0-9_]*|'[^'.]*')\)|ofType\([A-Za-z]+\)"
)
_STRUCTURAL = {"BackboneElement", "Element", None}


def _split_top(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside parentheses and quotes."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        char = text[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i = i + len(separator)
            continue
        i += 1
    parts.append(text[start:])
    return parts


Condition = tuple[tuple[str, tuple[str, ...], str | None], ...]


@cache
def _condition(text: str) -> Condition | None:
    """A where() condition made of ``and``-ed tests: ``path.exists()``, ``path.empty()``,
    ``path = %constant`` or ``path = 'text'``; None for anything else."""
    terms: list[tuple[str, tuple[str, ...], str | None]] = []
    for part in _split_top(text.strip(), " and "):
        left, *right = _split_top(part.strip(), " = ")
        steps = _simple_steps(left)
        if steps is None or len(right) > 1:
            return None
        if right:
            value = right[0].strip()
            if steps[-1] in ("exists()", "empty()") or not re.fullmatch(r"%\w+|'[^']*'", value):
                return None
            terms.append(("equals", steps, value))
        elif steps[-1] in ("exists()", "empty()"):
            terms.append(("test", steps, None))
        else:
            return None
    return tuple(terms)


@cache
def _simple_steps(expression: str) -> tuple[str, ...] | None:
    """The steps of a plain member navigation: names, first(), last(), ofType(T) right after a
    name, extension(url), where(<tests>) and a final exists() or empty()."""
    steps = tuple(part.strip() for part in _split_top(expression.strip(), "."))
    for step in steps:
        if step.startswith("where(") and step.endswith(")"):
            if _condition(step[len("where(") : -1]) is None:
                return None
        elif not _STEP.fullmatch(step):
            return None
    if steps[0].endswith(")") and not steps[0].startswith("extension("):
        return None
    if "exists()" in steps[:-1] or "empty()" in steps[:-1]:
        return None
    return steps


def _child_path(path: str, step: str) -> str:
    """The FHIR type path of element ``step`` under type path ``path`` (R4 model)."""
    full = f"{path}.{step}"
    kind = _R4["path2Type"].get(full)
    if kind not in _STRUCTURAL and not str(kind).startswith("System."):
        return str(kind)
    return str(_R4["pathsDefinedElsewhere"].get(full, full))


@cache
def _plan(base: str | None, steps: tuple[str, ...]) -> tuple[tuple[Any, ...], str | None] | None:
    """The JSON keys (and first()/exists()) that ``steps`` read from a node at type path
    ``base`` (e.g. ``Observation`` or ``QuestionnaireResponse.item.answer``): a choice element
    with ofType(T) reads ``<name><T>``; None when fhirpathpy must decide (a choice element
    without ofType, ofType elsewhere). Also the type path of what they reach."""
    path = None
    if base is not None:
        first, *rest = base.split(".")
        path = first
        for step in rest:
            path = _child_path(path, step)
    keys: list[Any] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        i += 1
        if step in ("first()", "last()", "exists()", "empty()"):
            keys.append(step)
            continue
        if step.startswith("where("):
            keys.append(("where", path, step[len("where(") : -1]))
            continue
        if step.startswith("extension("):
            keys.append(step)
            path = "Extension"
            continue
        if step.startswith("ofType("):
            return None  # only valid right after a choice element, consumed there
        choices = _R4["choiceTypePaths"].get(f"{path}.{step}") if path else None
        if choices is None:
            keys.append(step)
            path = _child_path(path, step) if path else None
            continue
        if steps[i:] in (("exists()",), ("empty()",)):  # whichever value[x] is there
            keys.append(f"choice:{step}:{'|'.join(choices)}")
            continue
        wanted = (
            steps[i][len("ofType(") : -1]
            if i < len(steps) and steps[i].startswith("ofType(")
            else ""
        )
        suffix = wanted[:1].upper() + wanted[1:]
        if suffix not in choices:
            return None
        keys.append(step + suffix)
        path = wanted
        i += 1  # the ofType step is consumed
    return tuple(keys), path


class _Navigation:
    """A plain member navigation evaluated on the JSON itself, fhirpathpy as the fallback."""

    def __init__(self, steps: tuple[str, ...], fhirpath: Compiled) -> None:
        self.steps = steps
        self.fhirpath = fhirpath

    def walk(self, node: Any, env: dict[str, Any]) -> tuple[list[Any], str | None] | None:
        """The items the path reaches and their type path; None when fhirpathpy must decide."""
        if isinstance(node, ResourceNode):
            data, base = node.data, node.path
        elif isinstance(node, dict):
            data, base = node, node.get("resourceType")
        else:
            return None
        return _navigate([data], base, self.steps, env)

    def __call__(self, node: Any, env: dict[str, Any]) -> list[Any]:
        walked = self.walk(node, env)
        return self.fhirpath(node, env) if walked is None else walked[0]


def _navigate(
    items: list[Any], base: str | None, steps: tuple[str, ...], env: dict[str, Any]
) -> tuple[list[Any], str | None] | None:
    plan = _plan(base, steps)
    if plan is None:
        return None
    keys, path = plan
    for key in keys:
        if isinstance(key, tuple):
            _, at, condition = key
            kept = []
            for item in items:
                holds = _holds(item, at, condition, env)
                if holds is None:
                    return None
                if holds:
                    kept.append(item)
            items = kept
        elif key == "first()":
            items = items[:1]
        elif key == "exists()":
            items = [bool(items)]
        elif key == "empty()":
            items = [not items]
        elif key == "last()":
            items = items[-1:]
        elif key.startswith("extension("):
            argument = key[len("extension(") : -1]
            url = env.get(argument[1:]) if argument.startswith("%") else argument.strip("'")
            if not isinstance(url, str):
                return None
            items = [
                ext
                for item in items
                if isinstance(item, dict)
                for ext in item.get("extension") or []
                if isinstance(ext, dict) and ext.get("url") == url
            ]
        elif key.startswith("choice:"):
            _, name, kinds = key.split(":")
            items = [
                item[name + kind]
                for item in items
                if isinstance(item, dict)
                for kind in kinds.split("|")
                if item.get(name + kind) is not None
            ]
        else:
            found: list[Any] = []
            for item in items:
                value = item.get(key) if isinstance(item, dict) else None
                if isinstance(value, list):
                    found.extend(v for v in value if v is not None)
                elif value is not None:
                    found.append(value)
            items = found
    return items, path


def _holds(item: Any, at: str | None, condition: str, env: dict[str, Any]) -> bool | None:
    """Whether a where() condition holds for one item (None: fhirpathpy must decide)."""
    for kind, steps, value in _condition(condition) or ():
        walked = _navigate([item], at, steps, env)
        if walked is None:
            return None
        if kind == "test":
            if walked[0] != [True]:
                return False
            continue
        wanted = env.get(str(value)[1:]) if str(value).startswith("%") else str(value)[1:-1]
        if not isinstance(wanted, str):
            return None
        if walked[0] != [wanted]:
            return False
    return True


class _Focus(_Navigation):
    """A plain navigation giving the focus of a forEach: typed nodes, so that the paths under
    it resolve choice elements as fhirpathpy would."""

    def __call__(self, node: Any, env: dict[str, Any]) -> list[Any]:
        walked = self.walk(node, env)
        if (
            walked is None
            or "exists()" in self.steps
            or not all(isinstance(v, dict) for v in walked[0])
        ):
            return self.fhirpath(node, env)
        items, path = walked
        return [ResourceNode.create_node(v, path) for v in items]  # type: ignore[no-untyped-call]


class _WhereFocus:
    """``where(a.exists() or b.empty() or …)`` on the focus itself, each test a plain navigation:
    the focus when one holds, else nothing; fhirpathpy when a test needs it."""

    def __init__(self, tests: list[_Navigation], fhirpath: Compiled) -> None:
        self.tests = tests
        self.fhirpath = fhirpath

    def __call__(self, node: Any, env: dict[str, Any]) -> list[Any]:
        for test in self.tests:
            walked = test.walk(node, env)
            if walked is None:
                return self.fhirpath(node, env)
            if walked[0] == [True]:
                return [node]
        return []


def compile_focus(expression: str) -> Compiled:
    """A forEach/forEachOrNull path: its items become the focus of nested columns."""
    fhirpath = _compile_fhirpath(expression)
    steps = _simple_steps(expression)
    if steps is not None:
        return _Focus(steps, fhirpath)
    where = re.fullmatch(r"\s*where\((.*)\)\s*", expression)
    tests = [_simple_steps(part) for part in where.group(1).split(" or ")] if where else []
    if tests and all(t is not None and t[-1] in ("exists()", "empty()") for t in tests):
        return _WhereFocus([_Navigation(t, fhirpath) for t in tests if t is not None], fhirpath)
    return fhirpath


# -- the compiled view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    path: str
    type: str | None
    collection: bool
    compiled: Compiled = field(repr=False, compare=False)


@dataclass(frozen=True)
class Select:
    columns: tuple[Column, ...]
    selects: tuple[Select, ...]
    union_all: tuple[Select, ...]
    for_each: Compiled | None = None
    for_each_path: str | None = None
    or_null: bool = False
    repeat: tuple[Compiled, ...] = ()
    repeat_paths: tuple[str, ...] = ()

    def column_names(self) -> list[str]:
        """The output columns in order: own, then nested selects', then the unionAll's."""
        names = [c.name for c in self.columns]
        for child in self.selects:
            names += child.column_names()
        if self.union_all:
            names += self.union_all[0].column_names()
        return names

    def all_columns(self) -> list[Column]:
        cols = list(self.columns)
        for child in self.selects:
            cols += child.all_columns()
        if self.union_all:
            cols += self.union_all[0].all_columns()
        return cols


@dataclass(frozen=True)
class View:
    """A compiled ViewDefinition over one resource type."""

    name: str | None
    resource: str
    select: Select
    where: tuple[tuple[str, Compiled], ...]
    constants: dict[str, Any]
    definition: dict[str, Any] = field(repr=False, compare=False)

    @property
    def columns(self) -> list[Column]:
        return self.select.all_columns()

    @property
    def column_names(self) -> list[str]:
        return self.select.column_names()

    def schema(self) -> pa.Schema:
        """The Arrow schema of the view's rows: typed primitives, strings otherwise."""
        fields = []
        for col in self.columns:
            base = ARROW_TYPES.get(col.type or "", pa.string())
            fields.append(pa.field(col.name, pa.list_(base) if col.collection else base))
        return pa.schema(fields)

    def resource_rows(self, resource: dict[str, Any]) -> list[Row]:
        """The rows of one resource (none when it is of another type or fails ``where``)."""
        if resource.get("resourceType") != self.resource:
            return []
        env = {**self.constants, "resource": resource, "rootResource": resource, "rowIndex": 0}
        for text, compiled in self.where:
            result = [_plain(r) for r in _evaluate(compiled, resource, env, text)]
            if len(result) > 1 or (result and not isinstance(result[0], bool)):
                raise ViewError(
                    f"where path {text!r} does not give a boolean on {_label(resource)}"
                )
            if not result or result[0] is not True:
                return []
        return _select_rows(self.select, resource, env)

    def rows(self, resources: Iterable[dict[str, Any]]) -> list[Row]:
        """The rows of many resources, in resource order."""
        out: list[Row] = []
        for resource in resources:
            out.extend(self.resource_rows(resource))
        return out

    def table(self, resources: Iterable[dict[str, Any]]) -> pa.Table:
        """The rows as an Arrow table typed by :meth:`schema` (untyped complex values as JSON)."""
        schema = self.schema()
        rows = self.rows(resources)
        strings = {f.name for f in schema if pa.types.is_string(f.type)}
        lists = {
            f.name
            for f in schema
            if pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type)
        }
        for row in rows:
            for name in strings:
                if row[name] is not None and not isinstance(row[name], str):
                    row[name] = _as_text(row[name])
            for name in lists:
                if row[name] is not None:
                    row[name] = [_as_text(v) for v in row[name]]
        return pa.Table.from_pylist(rows, schema=schema)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _label(resource: Any) -> str:
    if isinstance(resource, dict):
        return f"{resource.get('resourceType', '?')}/{resource.get('id', '?')}"
    return "?"


# -- evaluation ---------------------------------------------------------------------------------


def _evaluate(compiled: Compiled, node: Any, env: dict[str, Any], text: str) -> list[Any]:
    try:
        return compiled(node, env)
    except ViewError:
        raise
    except Exception as exc:  # fhirpathpy raises bare Exceptions for evaluation errors
        raise ViewError(f"path {text!r} failed on {_label(env.get('resource'))}: {exc}") from exc


def _plain(item: Any) -> Any:
    """A FHIRPath result item as a plain Python value: dates and quantities as their FHIRPath
    text, a decimal as an int when written without a point, else a float."""
    value = item.data if isinstance(item, ResourceNode) else item
    if isinstance(value, Decimal):
        return int(value) if "." not in str(value) and value == int(value) else float(value)
    if isinstance(value, FP_Quantity | FP_TimeBase | FP_Type):
        return str(value)
    return value


def _column_value(col: Column, node: Any, env: dict[str, Any]) -> Any:
    result = [
        r for r in _evaluate(col.compiled, node, env, col.path) if not _is_primitive_extension(r)
    ]
    values = [v.text(col.type) if isinstance(v, Boundary) else _plain(v) for v in result]
    if col.collection:
        return values
    if len(values) > 1:
        raise ViewError(
            f"column {col.name!r} (path {col.path!r}) gives {len(values)} values on "
            f"{_label(env.get('resource'))}; set collection: true or narrow the path"
        )
    return values[0] if values else None


def _is_primitive_extension(item: Any) -> bool:
    return (
        isinstance(item, ResourceNode)
        and isinstance(item.data, dict)
        and list(item.data) == ["extension"]
    )


def _own_row(sel: Select, node: Any, env: dict[str, Any]) -> Row:
    return {col.name: _column_value(col, node, env) for col in sel.columns}


def _focus_rows(sel: Select, node: Any, env: dict[str, Any]) -> list[Row]:
    """Rows of ``sel`` at one focus node: own columns × each nested select × the unionAll."""
    parts: list[list[Row]] = [[_own_row(sel, node, env)]]
    for child in sel.selects:
        parts.append(_select_rows(child, node, env))
    if sel.union_all:
        parts.append([row for branch in sel.union_all for row in _select_rows(branch, node, env)])
    rows = parts[0]
    for part in parts[1:]:
        rows = [{**left, **right} for left in rows for right in part]
    return rows


def _repeat_items(sel: Select, node: Any, env: dict[str, Any]) -> list[Any]:
    """Depth-first: each repeat path's items, each followed by everything reachable from it."""
    found: list[Any] = []
    for compiled, text in zip(sel.repeat, sel.repeat_paths):
        for item in _evaluate(compiled, node, env, text):
            found.append(item)
            found.extend(_repeat_items(sel, item, env))
    return found


def _select_rows(sel: Select, node: Any, env: dict[str, Any]) -> list[Row]:
    if sel.for_each is None and not sel.repeat:
        return _focus_rows(sel, node, env)
    if sel.repeat:
        items = _repeat_items(sel, node, env)
    else:
        items = _evaluate(sel.for_each, node, env, sel.for_each_path or "")  # type: ignore[arg-type]
    if not items:
        if not sel.or_null:
            return []
        # the null row: every column empty, but own columns still see %rowIndex (0) and constants
        return [{**dict.fromkeys(sel.column_names()), **_own_row(sel, [], {**env, "rowIndex": 0})}]
    rows: list[Row] = []
    for index, item in enumerate(items):
        rows.extend(_focus_rows(sel, item, {**env, "rowIndex": index}))
    return rows


# -- compiling a definition ---------------------------------------------------------------------


def _constant_value(constant: dict[str, Any]) -> tuple[str, Any]:
    name = constant.get("name")
    if not isinstance(name, str) or not name:
        raise ViewError(f"a constant needs a name: {constant!r}")
    values = [(k, v) for k, v in constant.items() if k.startswith("value")]
    if len(values) != 1:
        raise ViewError(f"constant {name!r} needs exactly one value[x], found {len(values)}")
    kind, value = values[0]
    if kind in ("valueDate", "valueDateTime", "valueInstant"):
        return name, FP_DateTime(value)  # type: ignore[no-untyped-call]
    if kind == "valueTime":
        return name, FP_Time(value)  # type: ignore[no-untyped-call]
    if kind == "valueDecimal":
        return name, Decimal(str(value))
    return name, value


def _compile_select(sel: Any, where: str) -> Select:
    if not isinstance(sel, dict):
        raise ViewError(f"{where}: a select must be an object")
    unknown = set(sel) - {"column", "select", "unionAll", "forEach", "forEachOrNull", "repeat"}
    if unknown:
        raise ViewError(f"{where}: unknown select element(s) {sorted(unknown)}")
    iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in sel]
    if len(iterators) > 1:
        raise ViewError(f"{where}: use only one of forEach, forEachOrNull, repeat")
    columns = []
    for i, col in enumerate(sel.get("column") or []):
        if not isinstance(col, dict) or not isinstance(col.get("name"), str) or "path" not in col:
            raise ViewError(f"{where}.column[{i}]: a column needs a name and a path")
        if not isinstance(col.get("collection", False), bool):
            raise ViewError(f"{where}.column[{i}]: collection must be true or false")
        columns.append(
            Column(
                name=col["name"],
                path=col["path"],
                type=col.get("type"),
                collection=bool(col.get("collection", False)),
                compiled=compile_path(col["path"]),
            )
        )
    selects = tuple(
        _compile_select(s, f"{where}.select[{i}]") for i, s in enumerate(sel.get("select") or [])
    )
    union = tuple(
        _compile_select(s, f"{where}.unionAll[{i}]")
        for i, s in enumerate(sel.get("unionAll") or [])
    )
    if union:
        first = union[0].column_names()
        for i, branch in enumerate(union[1:], start=1):
            if branch.column_names() != first:
                raise ViewError(
                    f"{where}.unionAll[{i}]: columns {branch.column_names()} differ from the first branch's {first}"
                )
    repeat = sel.get("repeat")
    if repeat is not None and (not isinstance(repeat, list) or not repeat):
        raise ViewError(f"{where}: repeat must be a non-empty list of paths")
    for_each_path = sel.get("forEach", sel.get("forEachOrNull"))
    compiled = Select(
        columns=tuple(columns),
        selects=selects,
        union_all=union,
        for_each=compile_focus(for_each_path) if for_each_path is not None else None,
        for_each_path=for_each_path,
        or_null="forEachOrNull" in sel,
        repeat=tuple(_compile_fhirpath(p) for p in repeat or ()),
        repeat_paths=tuple(repeat or ()),
    )
    names = compiled.column_names()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ViewError(f"{where}: column name(s) {duplicates} appear more than once")
    return compiled


def compile_view(definition: dict[str, Any]) -> View:
    """Check a ViewDefinition and compile its paths; :class:`ViewError` says what is wrong."""
    if not isinstance(definition, dict):
        raise ViewError("a ViewDefinition must be a JSON object")
    resource = definition.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ViewError(
            f"view {definition.get('name', '?')!r}: 'resource' (the FHIR resource type) is required"
        )
    label = f"view {definition.get('name') or resource!r}"
    selects = definition.get("select")
    if not isinstance(selects, list) or not selects:
        raise ViewError(f"{label}: 'select' must be a non-empty list")
    constants = dict(_constant_value(c) for c in definition.get("constant") or [])
    where = []
    for i, w in enumerate(definition.get("where") or []):
        if not isinstance(w, dict) or "path" not in w:
            raise ViewError(f"{label}.where[{i}]: a where needs a path")
        where.append((w["path"], _compile_fhirpath(w["path"])))
    root = _compile_select({"select": selects}, label)
    return View(
        name=definition.get("name"),
        resource=resource,
        select=root,
        where=tuple(where),
        constants=constants,
        definition=definition,
    )


def load_view(path: Path) -> View:
    """A ViewDefinition file, compiled; the error names the file."""
    try:
        return compile_view(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ViewError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except ViewError as exc:
        raise ViewError(f"{path}: {exc}") from exc


def load_views(folder: Path) -> dict[str, View]:
    """Every ``*.json`` ViewDefinition of a folder, by view name (the file's stem when unnamed)."""
    views: dict[str, View] = {}
    for path in sorted(folder.glob("*.json")):
        view = load_view(path)
        views[view.name or path.stem] = view
    return views


def evaluate_view(
    definition: dict[str, Any] | View, resources: Sequence[dict[str, Any]]
) -> list[Row]:
    """The rows a ViewDefinition gives over some resources."""
    view = definition if isinstance(definition, View) else compile_view(definition)
    return view.rows(resources)
