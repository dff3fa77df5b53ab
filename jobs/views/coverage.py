"""Schema drift: the elements of FHIR resources that no ViewDefinition reads.

A source that starts sending a new extension or an unexpected element must not break a run: the
resource still flattens (views read what they name), the element stays in bronze, and this
module says what was left behind. :func:`read_paths` derives, from a view's FHIRPath expressions,
the element paths the view reads; :func:`unread_elements` lists, per resource type, the element
paths present in resources that no view reads, with the number of resources carrying each.

Paths are JSON keys joined by dots, arrays transparent; an extension is named by its url,
``extension(<url>)``, so a new extension is reported on its own. A path read as a whole (a
column's value, an operand of a comparison) covers everything under it; a path only navigated
through (``code.coding`` in ``code.coding.first().code``) does not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from fhirpathpy.parser import parse

from medlake.jobs.views.engine import Select, View

Path = tuple[str, ...]

#: Functions whose result is their input collection, filtered or reordered.
_FILTERS = {"first", "last", "tail", "skip", "take", "single", "distinct", "where", "trace"}
#: Functions that only test whether their input is there: they read no element's value.
_EXISTENCE = {"exists", "empty", "count", "hasValue"}
#: Functions whose parameters are evaluated per input item.
_PER_ITEM = {"where", "select", "exists", "all", "repeat", "any", "iif"}


class _Reader:
    """Walks a fhirpathpy parse tree, collecting the element paths an expression reads."""

    def __init__(self, constants: dict[str, Any]) -> None:
        self.constants = constants
        self.read: set[Path] = set()

    def expression(self, text: str, focus: set[Path]) -> set[Path]:
        """The paths the expression's value comes from, recording what it reads."""
        tree = parse(text)  # type: ignore[no-untyped-call]
        return self.node(tree["children"][0], focus)

    def node(self, node: dict[str, Any], focus: set[Path]) -> set[Path]:
        kind = node.get("type")
        children = node.get("children") or []
        if kind == "InvocationExpression":
            return self.node(children[1], self.node(children[0], focus))
        if kind in ("TermExpression", "InvocationTerm", "ParenthesizedTerm"):
            return self.node(children[0], focus) if children else set()
        if kind == "MemberInvocation":
            name = children[0]["text"].strip("`")
            if name[:1].isupper():
                return {p for p in focus if not p} or {p + (name,) for p in focus}  # a type prefix
            return {p + (name,) for p in focus}
        if kind == "ThisInvocation":
            return set(focus)
        if kind == "FunctionInvocation":
            return self.function(children[0], focus)
        if kind == "ExternalConstantTerm":
            name = _identifier(children[0])
            return {()} if name in ("resource", "rootResource") else set()
        if kind == "IndexerExpression":
            self.operands(children[1:], focus)
            return self.node(children[0], focus)
        if kind == "UnionExpression":
            return set().union(*(self.node(c, focus) for c in children))
        if kind in ("LiteralTerm", "TypeSpecifier"):
            return set()
        # comparisons, boolean logic, arithmetic, membership, is/as: operands are values
        self.operands(children, focus)
        return set()

    def operands(self, nodes: Iterable[dict[str, Any]], focus: set[Path]) -> None:
        for child in nodes:
            self.read |= self.node(child, focus)

    def function(self, functn: dict[str, Any], focus: set[Path]) -> set[Path]:
        name = _identifier(functn["children"][0])
        params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
        if name in ("extension", "ofType", "as") and params:
            argument = self.argument(params[0])
            if name == "extension":
                return {p + (f"extension({argument})",) for p in focus}
            suffix = argument[:1].upper() + argument[1:]
            return {p[:-1] + (p[-1] + suffix,) if p else p for p in focus}
        if name == "getResourceKey":
            self.read |= {p + ("id",) for p in focus}
            return set()
        if name == "getReferenceKey":
            self.read |= {p + ("reference",) for p in focus}
            return set()
        if name in _EXISTENCE and not params:
            return set()
        if name in _PER_ITEM:
            outputs = [self.node(param, focus) for param in params]
            if name == "select":
                return outputs[0] if outputs else set()
            if name == "iif":
                return set().union(*outputs[1:]) if len(outputs) > 1 else set()
            for output in outputs:
                self.read |= output
            return set(focus) if name == "where" else set()
        if name in _FILTERS:
            self.operands(params, focus)
            return set(focus)
        # anything else (join, toString, count, lowBoundary, …) uses its input's values
        self.read |= focus
        self.operands(params, focus)
        return set()

    def argument(self, node: dict[str, Any]) -> str:
        """A function's literal, constant or type argument as text."""
        text = str(node.get("text") or "")
        if text.startswith("%"):
            return str(self.constants.get(text[1:], text))
        return text.strip("'`")


def _identifier(node: dict[str, Any]) -> str:
    while node.get("type") != "Identifier" and node.get("children"):
        node = node["children"][0]
    return str(node.get("text") or "").strip("`")


def _select_paths(reader: _Reader, sel: Select, focus: set[Path]) -> None:
    if sel.for_each_path is not None:
        focus = reader.expression(sel.for_each_path, focus)
    for text in sel.repeat_paths:
        focus = focus | reader.expression(text, focus)
    for col in sel.columns:
        reader.read |= reader.expression(col.path, focus)
    for child in (*sel.selects, *sel.union_all):
        _select_paths(reader, child, focus)


#: read_paths by view (the view kept with them, so a recycled id never matches another view)
_READ: dict[int, tuple[View, frozenset[Path]]] = {}


def read_paths(view: View) -> frozenset[Path]:
    """The element paths (from the resource root) that a view reads; worked out once per view
    (its FHIRPath expressions parsed), not once per batch of resources."""
    known = _READ.get(id(view))
    if known is not None and known[0] is view:
        return known[1]
    paths = _read_paths(view)
    _READ[id(view)] = (view, paths)
    return paths


def _read_paths(view: View) -> frozenset[Path]:
    constants = {k: str(v) for k, v in view.constants.items()}
    reader = _Reader(constants)
    for text, _ in view.where:
        reader.read |= reader.expression(text, {()})
    _select_paths(reader, view.select, {()})
    return frozenset(reader.read)


def element_paths(resource: dict[str, Any]) -> set[Path]:
    """The leaf element paths present in a resource (``resourceType`` aside)."""
    found: set[Path] = set()

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, path)
        elif isinstance(value, dict):
            for key, child in value.items():
                if key in ("extension", "modifierExtension") and isinstance(child, list):
                    for ext in child:
                        url = ext.get("url") if isinstance(ext, dict) else None
                        rest = (
                            {k: v for k, v in ext.items() if k != "url"}
                            if isinstance(ext, dict)
                            else ext
                        )
                        walk(rest, path + (f"{key}({url})",))
                elif not (key == "resourceType" and not path):
                    walk(child, path + (key,))
        elif path:
            found.add(path)

    walk(resource, ())
    return found


def _segment_covers(read: str, seen: str) -> bool:
    if read == seen:
        return True
    if read in ("extension", "modifierExtension"):
        return seen.startswith(read + "(")
    # a choice element read without ofType (``value``) covers every value[x]
    return seen.startswith(read) and len(seen) > len(read) and seen[len(read)].isupper()


def is_read(path: Path, read: Iterable[Path]) -> bool:
    """Whether a view reading ``read`` paths covers the element at ``path``."""
    return any(
        len(r) <= len(path) and all(_segment_covers(a, b) for a, b in zip(r, path)) for r in read
    )


def unread_elements(
    resources: Iterable[dict[str, Any]], views: Iterable[View]
) -> dict[str, dict[str, int]]:
    """Per resource type that has a view: each element path no view reads, with the number of
    resources that carry it (most frequent first, then by path)."""
    read: dict[str, set[Path]] = {}
    for view in views:
        read.setdefault(view.resource, set()).update(read_paths(view))
    decided: dict[tuple[str, Path], bool] = {}
    counts: dict[str, Counter[str]] = {rtype: Counter() for rtype in read}
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype not in read:
            continue
        for path in element_paths(resource):
            known = decided.get((rtype, path))
            if known is None:
                known = decided[(rtype, path)] = is_read(path, read[rtype])
            if not known:
                counts[rtype][".".join((rtype, *path))] += 1
    return {
        rtype: dict(sorted(c.items(), key=lambda item: (-item[1], item[0])))
        for rtype, c in counts.items()
        if c
    }


def describe(unread: dict[str, dict[str, int]], *, limit: int = 10) -> Iterator[str]:
    """One line per resource type: how many element paths no view reads, the most frequent first."""
    for rtype, paths in sorted(unread.items()):
        shown = ", ".join(f"{p} ({n})" for p, n in list(paths.items())[:limit])
        more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
        yield f"{rtype}: {len(paths)} element path(s) no view reads: {shown}{more}"
