"""The quality gate: a silver table's staged rows are validated with its Great Expectations suite;
the rows that pass are promoted to silver and the ones that fail go to the quarantine.

Suites are data: ``suites/<layer>_<table>.json`` is a GX 1.x ExpectationSuite whose expectations
each carry a stable rule id in ``meta.rule``. A column-value expectation that must hold for every
row (``mostly`` = 1) is a *row-level* rule: the rows it flags are quarantined as ``gate.<rule>``.
Every other expectation (row count, share of non-null values, a column that must exist, ``mostly``
below 1) is a *table-level* rule: when it fails, nothing of that run is promoted and
:class:`GateFailed` says why. A table without a suite is promoted whole.

Delivery volume is judged per source against a band learned from that source's own history
(:mod:`medlake.expectations.volume`): a warning by default, a table-level refusal only where the
policy says so. The rows staged per source are kept in the gate's ledger entry (``details``).

Gold is validated by :func:`validate_gold` after dbt built it; it is not split row-wise: any
failing rule means the mart SQL is wrong, and :class:`GateFailed` stops the task.

Every gate task validates in one GX context and builds its Data Docs once
(:mod:`medlake.expectations.data_docs`).

Great Expectations takes several seconds to import, so it is imported on first validation, not
with this module (DAG files import this module when Airflow parses them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from medlake.engines import DeltaSource, Engine, Target
from medlake.engines.embedded import read_batches, row_count, source_schema
from medlake.errors import BadDataError
from medlake.expectations import data_docs, volume
from medlake.expectations.volume import Finding, VolumePolicy, by_source
from medlake.lake import Lake, TableNotFound, conform
from medlake.ledger import Entry
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split, silver_rejects, stamp_run
from medlake.registry import QUARANTINE, TableSpec, staging_name
from medlake.registry import spec as registered

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

log = logging.getLogger(__name__)

STAGE = "gate"
SUITES_DIR = Path(__file__).parent / "suites"

#: GX result fields read for row-level rules (present with result_format COMPLETE)
_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "return_unexpected_index_query": False,
}
_MAX_SHOWN = 60  # characters of an observed text value quoted in a reason

#: rows Great Expectations validates at once: it works on pandas, several times the rows' Arrow
#: size (a million-resource run's 611,000 staged observations took the gate to 3.3 GB whole)
CHUNK_ROWS = 100_000
#: rows of a record batch read from a staging table (chunks are built of them)
_READ_ROWS = 20_000

#: column-map expectations: each row is judged on its own, so a suite made only of them gives
#: the same results validated a chunk of rows at a time (positions offset, counts added up)
_ROW_BY_ROW = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_pair_values_a_to_be_greater_than_b",
    }
)
#: of those, the ones whose share (``mostly`` below 1) the gate adds up over chunks as GX counts
#: it: the rows not missing, except for ``not_null`` (every row)
_SHARE_ADDS_UP = _ROW_BY_ROW - {"expect_column_pair_values_a_to_be_greater_than_b"}


class GateFailed(BadDataError):
    """A table-level rule failed: nothing was promoted."""

    def __init__(self, results: Sequence[GateResult]) -> None:
        self.results = list(results)
        lines = [
            f"{r.table_name}: {f.rule} — {f.message}"
            for r in self.results
            for f in r.table_failures
        ]
        super().__init__(
            "quality gate refused to promote; fix the cause upstream and re-run:\n  "
            + "\n  ".join(lines)
        )


@dataclass(frozen=True)
class RuleResult:
    """What one expectation found in one table."""

    rule: str
    expectation: str
    column: str | None
    row_level: bool
    success: bool
    element_count: int | None
    unexpected_count: int
    #: positions (0-based) of the flagged rows in the validated table; empty for table-level rules
    unexpected_rows: tuple[int, ...]
    #: the flagged values (row-level) or GX's observed value (table-level), for the report
    observed: Any
    #: the expectation in words, e.g. "value_num between 0 and 300 where code == '8867-4' ..."
    expected: str
    #: why it failed, in words (empty when it passed)
    message: str = ""
    #: rows whose value was missing, which a share (``mostly``) leaves out (GX's count)
    missing_count: int | None = None
    #: False when GX raised evaluating the rule (``message`` says what)
    evaluated: bool = True


@dataclass(frozen=True)
class GateResult:
    """The outcome of validating one table: the row split and every rule's result."""

    table_name: str
    split: Split
    rules: tuple[RuleResult, ...] = field(default=())
    #: False for gold: a failing row-level rule stops the table like a table-level one
    split_rows: bool = True
    #: rows validated, when ``split`` no longer holds them (the gate keeps its rows on disk)
    rows_validated: int | None = None

    @property
    def validated(self) -> int:
        """How many rows the suite validated."""
        if self.rows_validated is not None:
            return self.rows_validated
        return int(self.split.good.num_rows + self.split.quarantined.num_rows)

    @property
    def table_failures(self) -> list[RuleResult]:
        """The failed rules that stop the table (every failed rule when rows are not split)."""
        return [r for r in self.rules if not r.success and not (r.row_level and self.split_rows)]

    @property
    def promotable(self) -> bool:
        """True when no table-level rule failed."""
        return not self.table_failures

    def rule(self, rule: str) -> RuleResult:
        for r in self.rules:
            if r.rule == rule:
                return r
        raise KeyError(f"{self.table_name} has no rule {rule!r}")


def suite_path(table_name: str, *, suites_dir: Path = SUITES_DIR) -> Path:
    """Where a table's suite lives: ``silver.observations`` → ``suites/silver_observations.json``."""
    return suites_dir / (table_name.replace(".", "_") + ".json")


def load_suite(suite: Mapping[str, Any] | Path) -> dict[str, Any]:
    """The suite as JSON data, checked: every expectation has a unique ``meta.rule``."""
    if isinstance(suite, Path):
        data: dict[str, Any] = json.loads(suite.read_text(encoding="utf-8"))
        where = str(suite)
    else:
        data = json.loads(json.dumps(suite))  # a deep copy GX may not mutate
        where = f"suite {data.get('name')!r}"
    seen: set[str] = set()
    for i, exp in enumerate(data.get("expectations", [])):
        rule = (exp.get("meta") or {}).get("rule")
        if not isinstance(rule, str) or not rule:
            raise ValueError(f"{where}: expectation #{i} ({exp.get('type')}) has no meta.rule id")
        if rule in seen:
            raise ValueError(f"{where}: rule id {rule!r} is used twice")
        seen.add(rule)
    return data


def resolve_references(suite_data: dict[str, Any], lake: Lake | None) -> dict[str, Any]:
    """The suite with each referential-integrity rule's ``value_set`` filled from the lake.

    A rule with ``meta.references = {"table": "silver.patients", "column": "person_key"}`` expects
    the column's values among that table's keys: the rows promoted in earlier runs plus the rows
    staged in this one (the gate validates every table before promoting any). A row pointing at
    a record that never arrived, or was quarantined, fails it and is quarantined in turn; a
    steward can release it once its parent is there. Without a lake (rows validated on their
    own) there is nothing to refer to: those rules are left out.
    """
    if lake is None:
        suite_data["expectations"] = [
            exp
            for exp in suite_data.get("expectations", [])
            if not (exp.get("meta") or {}).get("references")
        ]
        return suite_data
    for exp in suite_data.get("expectations", []):
        ref = (exp.get("meta") or {}).get("references")
        if not ref:
            continue
        table, column = ref["table"], ref["column"]
        keys: set[Any] = set()
        for name in (table, staging_name(table)):
            if lake.exists(name):
                values = lake.read(name, columns=[column]).column(column)
                keys.update(pc.unique(values.drop_null()).to_pylist())
        exp.setdefault("kwargs", {})["value_set"] = sorted(keys)
    return suite_data


def validate(
    rows: pa.Table,
    suite: Mapping[str, Any] | Path,
    *,
    table_name: str,
    context: Any = None,
    run_name: str | None = None,
    lake: Lake | None = None,
    chunk_rows: int | None = None,
) -> GateResult:
    """Run the suite on the rows; rows failing a row-level rule are quarantined once each.

    A quarantined row's rule id is its first failing rule in suite order; its reason lists every
    rule it failed with the observed value, the expected range or set and the row's key.
    ``context`` is the GX context to validate in (one per gate task, whose Data Docs show every
    table; a fresh one when not given); ``run_name`` names the validation there. ``lake`` holds
    the tables referential-integrity rules refer to (:func:`resolve_references`).

    With ``chunk_rows``, the rows are validated that many at a time, each chunk a validation of
    its own in the Data Docs; the results are the whole table's (row positions offset, counts and
    shares added up). A rule that needs every row at once (uniqueness, a table's row count) is
    validated once, on the table's columns it reads (see :class:`_Validation`).
    """
    suite_data = resolve_references(load_suite(suite), lake)
    step = chunk_rows or max(rows.num_rows, 1)
    check = _Validation(
        suite_data, table_name=table_name, rows=rows.num_rows, step=step, context=context,
        run_name=run_name, columns=rows.select,
    )
    starts = range(0, rows.num_rows, step) if rows.num_rows else range(1)
    checked = [check.chunk(rows.slice(start, step)) for start in starts]
    split = Split(
        pa.concat_tables([c.split.good for c in checked]),
        pa.concat_tables([c.split.quarantined for c in checked]),
    )
    return GateResult(table_name=table_name, split=split, rules=check.rules())


@dataclass(frozen=True)
class _Checked:
    """One chunk validated: its split, and the positions (in the chunk) of its failing rows."""

    split: Split
    failing: tuple[int, ...]


class _Validation:
    """A suite validated over a table one chunk at a time, in order: each chunk's rows split as
    they come (a row fails on its own rules), the rules' results added up at the end."""

    def __init__(
        self,
        suite_data: dict[str, Any],
        *,
        table_name: str,
        rows: int,
        step: int,
        context: Any = None,
        run_name: str | None = None,
        columns: Callable[[list[str]], pa.Table] | None = None,
    ) -> None:
        self.suite_data = suite_data
        self.table_name = table_name
        self.rows = rows
        self.step = step
        self.context = context or _gx_context()
        self.run_name = run_name
        self.expectations: list[dict[str, Any]] = suite_data.get("expectations", [])
        self.order = {exp["meta"]["rule"]: i for i, exp in enumerate(self.expectations)}
        self.references = _reference_keys(suite_data)
        self.parts: dict[str, list[tuple[int, RuleResult]]] = {rule: [] for rule in self.order}
        self.start = 0
        #: in chunks, the rules that judge each row alone; the others once, on their columns
        chunked = rows > step
        self.by_rows = [e for e in self.expectations if not chunked or _by_rows(e)]
        self.at_once = [e for e in self.expectations if chunked and not _by_rows(e)]
        self.columns = columns
        self.whole: dict[int, list[RuleResult]] | None = None

    def _table_rules(self, schema: pa.Schema) -> dict[int, list[RuleResult]]:
        """The rules over every row (uniqueness, row counts), validated once on the columns
        they read (and the key): their failing rows, by position in the table."""
        if self.columns is None:
            raise RuntimeError(f"{self.table_name}: rules over the whole table need its columns")
        key = _key_columns(self.table_name, schema)
        wanted = [c for c in schema.names if c in {*key, *(c for e in self.at_once for c in _read_by(e))}]
        rows = self.columns(wanted or list(schema.names[:1]))
        raw = _run_gx(
            rows, {**self.suite_data, "expectations": self.at_once}, self.references,
            label=" rules over every row", context=self.context, run_name=self.run_name,
        )
        failing: dict[int, list[RuleResult]] = {}
        for exp, result in self._results(self.at_once, raw):
            self.parts[exp["meta"]["rule"]].append((0, result))
            for i in result.unexpected_rows if result.row_level else ():
                failing.setdefault(i, []).append(result)
        return failing

    def _results(
        self, expectations: Sequence[dict[str, Any]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[dict[str, Any], RuleResult]]:
        for exp in expectations:
            rule = exp["meta"]["rule"]
            if rule not in raw:
                raise RuntimeError(
                    f"{self.table_name}: Great Expectations returned no result for rule {rule!r}"
                )
            yield exp, _rule_result(exp, raw[rule])

    def chunk(self, rows: pa.Table) -> _Checked:
        """Validate the next chunk (every chunk but the last ``step`` rows; one empty chunk
        for an empty table)."""
        start = self.start
        if self.at_once and self.whole is None:
            self.whole = self._table_rules(rows.schema)
        failing: dict[int, list[RuleResult]] = {
            i - start: list(found)
            for i, found in (self.whole or {}).items()
            if start <= i < start + rows.num_rows
        }
        if self.by_rows:
            label = "" if self.rows <= self.step else f" rows {start + 1}-{start + rows.num_rows}"
            raw = _run_gx(
                rows, {**self.suite_data, "expectations": self.by_rows}, self.references,
                label=label, context=self.context, run_name=self.run_name,
            )
            for exp, result in self._results(self.by_rows, raw):
                self.parts[exp["meta"]["rule"]].append((start, result))
                for i in result.unexpected_rows if result.row_level else ():
                    failing.setdefault(i, []).append(result)
        for found in failing.values():  # a row's first failing rule in suite order
            found.sort(key=lambda r: self.order[r.rule])
        key = _key_columns(self.table_name, rows.schema)
        good = rows.filter(pa.array([i not in failing for i in range(rows.num_rows)], pa.bool_()))
        quarantined = _quarantine(rows, failing, table_name=self.table_name, key=key, start=start)
        if good.num_rows + quarantined.num_rows != rows.num_rows:
            raise RuntimeError(
                f"{self.table_name}: gate lost rows ({rows.num_rows} in, {good.num_rows} good, "
                f"{quarantined.num_rows} quarantined)"
            )
        self.start += rows.num_rows
        return _Checked(Split(good, quarantined), tuple(sorted(failing)))

    def rules(self) -> tuple[RuleResult, ...]:
        """Each rule's result over every chunk validated, in suite order."""
        out = []
        for exp in self.expectations:
            parts = self.parts[exp["meta"]["rule"]]
            out.append(parts[0][1] if len(parts) == 1 else _added_up(exp, parts))
        return tuple(out)


def run_gate(
    lake: Lake,
    *,
    run_id: str,
    tables: Sequence[str],
    suites_dir: Path = SUITES_DIR,
    results: list[GateResult] | None = None,
    volume_policy: VolumePolicy | None = None,
    now: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
    engine: Engine | None = None,
) -> list[Entry]:
    """Validate each silver table's staging rows, then promote the good ones and quarantine the rest.

    Every table is validated before anything is promoted: if a table-level rule fails anywhere,
    :class:`GateFailed` is raised and no table is touched. The caller records the returned
    ledger entries (``in = out + quarantined + merged``, where ``merged`` counts rows of this run
    repeating a key already promoted or quarantined in it, or a quarantine row an earlier run
    holds). ``results``, when given, receives each validated table's :class:`GateResult` (its
    rules and counts, not its rows) as it is validated, also when :class:`GateFailed` is raised
    (the lineage's data-quality facets).

    Memory stays bounded by ``chunk_rows``, not the run: a table's staged rows are read, validated
    and split ``chunk_rows`` at a time (a rule over every row, imaging's uniqueness, is validated
    once on the columns it reads), each chunk's split appended to the run's scratch as it comes. Promotion is the ``engine``'s
    set-based insert (:meth:`~medlake.engines.Engine.insert_new`, default the embedded engine):
    the first row of each key, in staging order, upserted into silver (a key silver holds is
    updated) and inserted into the quarantine where its id is new; a re-run gives the same tables.

    Each source's delivery into each table is checked against its volume band
    (:mod:`medlake.expectations.volume`, ``volume_policy``, default: warn everywhere); an
    out-of-band delivery is logged and kept in the ledger entry's details, and fails the table
    (rule ``volume_in_band``) only where the policy blocks it.
    """
    from medlake.engines.embedded import EmbeddedEngine

    policy = volume_policy or VolumePolicy()
    stamp = now or datetime.now(UTC)
    staged: list[_Staged] = []
    lake.drop_scratch_table(_Staged.FOLDER, run_id=run_id)  # a retried gate starts afresh
    refused: list[GateResult] = []
    context = None
    for name in tables:
        spec = registered(name)
        if spec.layer != "silver":
            raise ValueError(f"the gate promotes silver tables only, not {name}")
        source = _staging(lake, name)
        total = row_count(source)
        path = suite_path(name, suites_dir=suites_dir)
        check: _Validation | None = None
        if path.exists():
            context = context or _gx_context(data_docs.site_dir(lake))
            suite_data = resolve_references(load_suite(path), lake)
            check = _Validation(
                suite_data, table_name=name, rows=total, step=chunk_rows, context=context,
                run_name=run_id, columns=functools.partial(_columns, source),
            )
        kept = _Staged(spec, run_id)
        for chunk in _chunks(source, chunk_rows):
            kept.delivered = _summed(kept.delivered, by_source(chunk))
            checked = check.chunk(chunk) if check is not None else _Checked(
                Split(chunk, QUARANTINE_SCHEMA.empty_table()), ()
            )
            kept.add(lake, checked, rows=chunk.num_rows)
            del chunk, checked
        if kept.records_in != total:
            raise RuntimeError(f"{name}: the gate read {kept.records_in} staged rows of {total}")
        kept.findings = volume.check(lake, name, kept.delivered, run_id=run_id, now=stamp, policy=policy)
        for finding in kept.findings:
            if finding.out_of_band:
                log.warning("gate: delivery volume: %s", finding.explain())
        result: GateResult | None = None
        empty = Split(spec.schema.empty_table(), QUARANTINE_SCHEMA.empty_table())
        if check is not None:
            result = GateResult(table_name=name, split=empty, rules=check.rules(), rows_validated=total)
        blocking = [f for f in kept.findings if f.out_of_band and policy.blocks(name)]
        if blocking:
            result = result or GateResult(table_name=name, split=empty, rows_validated=total)
            result = dataclasses.replace(result, rules=(*result.rules, _volume_rule(blocking)))
        if result is not None:
            if not result.promotable:
                refused.append(result)
            if results is not None:
                results.append(result)
        staged.append(kept)
    if context is not None:  # once per gate task, before a refusal, so the docs show why
        data_docs.build(context, data_docs.site_dir(lake))
    if refused:
        lake.drop_scratch_table(_Staged.FOLDER, run_id=run_id)
        raise GateFailed(refused)

    runner = engine or EmbeddedEngine()
    entries = [kept.promote(lake, runner) for kept in staged]
    lake.drop_scratch_table(_Staged.FOLDER, run_id=run_id)
    return entries


@dataclass
class _Staged:
    """A table's validated rows in the run's scratch (sealed like the tables they go to), its
    good rows and its quarantine rows each numbered by their place among the staged rows
    (``_gate_row``), until every table is validated: the gate holds one chunk of rows at a time."""

    spec: TableSpec
    run_id: str
    records_in: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    #: the run's scratch folder of the gate's tables
    FOLDER: ClassVar[str] = "gate"
    #: the staged row's place, which orders the first of each key
    ROW: ClassVar[str] = "_gate_row"

    def add(self, lake: Lake, checked: _Checked, *, rows: int) -> None:
        """Append a chunk's split (the chunk's ``rows`` rows, from staged row ``records_in`` on)."""
        start = self.records_in
        failing = set(checked.failing)
        places = {
            "good": [start + i for i in range(rows) if i not in failing],
            "quarantined": [start + i for i in checked.failing],
        }
        split = checked.split
        good = conform(split.good, self.spec.schema)
        bad = conform(stamp_run(split.quarantined, self.run_id), QUARANTINE_SCHEMA)
        for side, data, name in (("good", good, self.spec.name), ("quarantined", bad, QUARANTINE.name)):
            lake.write_scratch(
                self._part(side),
                data.append_column(self.ROW, pa.array(places[side], pa.int64())),
                run_id=self.run_id,
                sealed_as=name,
                append=start > 0,
            )
        self.records_in += rows

    def _part(self, side: str) -> str:
        return f"{self.FOLDER}/{self.spec.name}/{side}"

    def promote(self, lake: Lake, engine: Engine) -> Entry:
        """The first row of each key into silver (upserted) and into the quarantine (where its
        id is new), by the engine's set-based insert; the ledger entry, every count counted."""
        def scratch(side: str) -> DeltaSource:
            return DeltaSource(lake.scratch_uri(self._part(side), run_id=self.run_id))

        bad = engine.insert_new(
            source=scratch("quarantined"),
            target=Target(
                lake.uri(QUARANTINE.name), QUARANTINE_SCHEMA, mode="append",
                partition_by=QUARANTINE.partition_by, run_column="run_id",
            ),
            key=QUARANTINE.key,
            order=(self.ROW,),
            run_id=self.run_id,
        )
        good = engine.insert_new(
            source=scratch("good"),
            target=Target(lake.uri(self.spec.name), self.spec.schema, mode="append",
                          partition_by=self.spec.partition_by),
            key=self.spec.key,
            order=(self.ROW,),
            run_id=self.run_id,
            update=True,
        )
        return Entry(
            stage=STAGE,
            table_name=self.spec.name,
            records_in=self.records_in,
            records_out=good.kept,
            quarantined=bad.kept,
            merged=good.duplicates + bad.duplicates,
            details=json.dumps(
                {"volume": self.delivered, "volume_findings": [f.as_json() for f in self.findings]}
            ),
        )


def _staging(lake: Lake, silver_name: str) -> DeltaSource:
    """The run's staged rows of a silver table, opened (decoded) as they are read."""
    name = staging_name(silver_name)
    if not lake.exists(name):
        raise TableNotFound(
            f"no staging table {name} at {lake.path(name)}: the clean stage has not written "
            f"{silver_name}'s rows for this run"
        )
    return DeltaSource(lake.uri(name), version=lake.version(name), decode=lake.decoder(name))


def _chunks(source: DeltaSource, rows: int) -> Iterator[pa.Table]:
    """The source's rows as tables of ``rows`` rows (the last fewer; one empty table when there
    are none, so an empty table is validated too), read a record batch at a time."""
    held: list[pa.Table] = []
    count = 0
    given = False
    for batch in read_batches(source, batch_rows=min(rows, _READ_ROWS)):
        held.append(pa.Table.from_batches([batch]))
        count += batch.num_rows
        while count >= rows:
            whole = pa.concat_tables(held, promote_options="permissive").combine_chunks()
            rest = whole.slice(rows)
            held, count = ([rest] if rest.num_rows else []), rest.num_rows
            given = True
            yield whole.slice(0, rows)
    if count:
        yield pa.concat_tables(held, promote_options="permissive").combine_chunks()
    elif not given:
        yield _empty(source)


def _columns(source: DeltaSource, names: list[str]) -> pa.Table:
    """Only these columns of every row of the source, in its order (a whole-table rule's)."""
    table = pa.Table.from_batches(
        read_batches(dataclasses.replace(source, columns=tuple(names)), batch_rows=_READ_ROWS),
        schema=source_schema(dataclasses.replace(source, columns=tuple(names))),
    )
    return table.combine_chunks()


def _empty(source: DeltaSource) -> pa.Table:
    """No rows, with the source's columns at its version, as :func:`read_batches` gives them."""
    return source_schema(source).empty_table()


def _summed(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted({*a, *b})}


def _volume_rule(findings: Sequence[Finding]) -> RuleResult:
    """The table-level refusal of deliveries outside their volume band, where the policy blocks."""
    return RuleResult(
        rule="volume_in_band",
        expectation="volume_band",
        column=None,
        row_level=False,
        success=False,
        element_count=None,
        unexpected_count=0,
        unexpected_rows=(),
        observed={f.source: f.rows for f in findings},
        expected="each source's rows within the band of its earlier deliveries",
        message="; ".join(f.explain() for f in findings),
    )


def validate_gold(
    lake: Lake,
    *,
    run_id: str,
    tables: Sequence[str],
    suites_dir: Path = SUITES_DIR,
    data: Mapping[str, pa.Table] | None = None,
) -> list[GateResult]:
    """Validate gold tables dbt just built with their suites; raise :class:`GateFailed` on any failure.

    Gold is not split row-wise: a failing row means the mart's SQL is wrong, so every failed rule,
    row-level or not, stops the task. Tables without a suite are not checked. The results go to
    the Data Docs site ``<lake>/_quality/data_docs/gold/``. A mart is validated :data:`CHUNK_ROWS`
    rows at a time (GX's pandas frame of a whole mart is several times its Arrow size), its rules
    over every row (a key's uniqueness) once on the columns they read. ``data`` holds the marts' rows before
    they are written (the gold build validates first, so a failing mart never reaches gold);
    without it the tables are read from the lake.
    """
    results: list[GateResult] = []
    context = None
    folder = data_docs.site_dir(lake) / "gold"
    for name in tables:
        if not name.startswith("gold."):
            raise ValueError(f"validate_gold checks gold tables only, not {name}")
        path = suite_path(name, suites_dir=suites_dir)
        if not path.exists():
            continue
        if data is not None and name in data:
            rows = data[name]
        elif lake.exists(name):
            rows = lake.read(name)
        else:
            raise TableNotFound(f"no gold table {name} at {lake.path(name)}: dbt has not built it")
        context = context or _gx_context(folder)
        result = validate(
            rows, path, table_name=name, context=context, run_name=run_id, chunk_rows=CHUNK_ROWS
        )
        results.append(dataclasses.replace(result, split_rows=False))
    if context is not None:
        data_docs.build(context, folder)
    refused = [r for r in results if not r.promotable]
    if refused:
        raise GateFailed(refused)
    return results


# --- Great Expectations ------------------------------------------------------------------------


def _gx_context(docs_dir: Path | None = None) -> Any:
    """An in-memory GX context without progress bars, with a Data Docs site when given a folder."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        data_docs.add_site(context, docs_dir)
    return context


def _run_gx(
    rows: pa.Table,
    suite_data: dict[str, Any],
    references: Mapping[str, pa.Array],
    *,
    label: str = "",
    context: Any = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """GX validation results of the suite on the rows, by rule id: a suite and validation of
    their own (``<suite><label>``, e.g. ``silver_observations rows 1-100000``), the referential
    rules' value sets cut to the values the rows hold (:func:`_within`)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = context or _gx_context()
    suite = context.suites.add(
        gx.ExpectationSuite(**_within(suite_data, rows, references, name=suite_data["name"] + label))
    )
    batch_definition = (
        context.data_sources.add_pandas(f"rows_{suite.name}")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"gate_{suite.name}", data=batch_definition, suite=suite)
    )
    # A fresh RangeIndex: GX reports row-level failures as index labels, i.e. positions in the rows.
    frame = rows.to_pandas()
    outcome = definition.run(
        batch_parameters={"dataframe": frame},
        result_format=_RESULT_FORMAT,
        run_id=RunIdentifier(run_name=run_name + label) if run_name else None,
    )
    del frame
    # the data source holds on to the chunk's frame (about 60 MB a 100,000-row chunk of
    # observations): without it, the context keeps only the suite and its results (Data Docs)
    context.data_sources.delete(f"rows_{suite.name}")
    by_rule: dict[str, Any] = {}
    for r in outcome.results:
        config = r.expectation_config
        if config is not None:
            by_rule[config.meta["rule"]] = r
    return by_rule


def _reference_keys(suite_data: Mapping[str, Any]) -> dict[str, pa.Array]:
    """The key set of each referential rule (filled by :func:`resolve_references`), by rule."""
    return {
        exp["meta"]["rule"]: pa.array(exp.get("kwargs", {}).get("value_set") or [])
        for exp in suite_data.get("expectations", [])
        if (exp.get("meta") or {}).get("references")
    }


def _within(
    suite_data: Mapping[str, Any], rows: pa.Table, references: Mapping[str, pa.Array], *, name: str
) -> dict[str, Any]:
    """The suite for these rows, named ``name``: each referential rule's value set cut to the
    keys among the rows' own values. A value is in the cut set exactly when it is in the whole
    one, so the results are the same; GX copies an expectation's value set many times per
    validation, and a whole table's keys (every encounter of the lake) made that cost grow with
    the lake for every chunk."""
    template = {
        **suite_data,
        "name": name,
        "expectations": [
            {**exp, "kwargs": {**exp.get("kwargs", {}), "value_set": []}}
            if exp["meta"]["rule"] in references
            else exp
            for exp in suite_data.get("expectations", [])
        ],
    }
    data: dict[str, Any] = json.loads(json.dumps(template))  # a deep copy GX may not mutate
    for exp in data.get("expectations", []):
        keys = references.get(exp["meta"]["rule"])
        column = exp.get("kwargs", {}).get("column")
        if keys is None or column not in rows.column_names:
            continue
        values = pc.unique(rows.column(column).drop_null())
        if len(keys):
            values = values.cast(keys.type) if values.type != keys.type else values
            exp["kwargs"]["value_set"] = values.filter(pc.is_in(values, value_set=keys)).to_pylist()
        else:
            exp["kwargs"]["value_set"] = []
    return data


def by_chunks(suite_data: Mapping[str, Any]) -> bool:
    """Whether the suite gives the same results validated a chunk of rows at a time: every rule
    judges each row on its own, and every share (``mostly``) is one the gate can add up. (A
    suite with other rules is still chunked: those are validated once, on their columns.)"""
    return all(_by_rows(exp) for exp in suite_data.get("expectations", []))


def _by_rows(exp: Mapping[str, Any]) -> bool:
    """Whether a rule judges each row on its own, with a share the gate can add up over chunks."""
    return exp["type"] in _ROW_BY_ROW and (
        exp.get("kwargs", {}).get("mostly", 1) == 1 or exp["type"] in _SHARE_ADDS_UP
    )


def _read_by(exp: Mapping[str, Any]) -> list[str]:
    """The columns a rule reads (none: a rule on the table's row count)."""
    kwargs = exp.get("kwargs", {})
    named = [kwargs.get(k) for k in ("column", "column_A", "column_B")]
    return [c for c in (*named, *(kwargs.get("column_list") or ())) if isinstance(c, str)]


def _added_up(exp: Mapping[str, Any], parts: Sequence[tuple[int, RuleResult]]) -> RuleResult:
    """One rule's result over the whole table from its results on chunks starting at the given
    row positions: the flagged rows and values joined, the counts summed, a share recomputed
    from the sums as GX computes it (a rule that could not be evaluated on a chunk fails)."""
    results = [r for _, r in parts]
    first = results[0]
    broken = next((r for r in results if not r.evaluated), None)
    if broken is not None:
        return broken
    element = sum(r.element_count or 0 for r in results)
    unexpected = sum(r.unexpected_count for r in results)
    counted = [r.missing_count for r in results if r.missing_count is not None]
    missing = sum(counted) if counted else None
    if first.row_level:
        rows = tuple(start + i for start, r in parts for i in r.unexpected_rows)
        observed = [v for r in results for v in (r.observed or [])]
        success = all(r.success for r in results)
        message = "" if success else f"{_rows(len(rows))} fail: expected {first.expected}"
        return dataclasses.replace(
            first, success=success, element_count=element, unexpected_count=unexpected,
            missing_count=missing, unexpected_rows=rows, observed=observed, message=message,
        )
    not_null = exp["type"] == "expect_column_values_to_not_be_null"
    considered = element if not_null else element - (missing or 0)
    mostly = float(exp.get("kwargs", {}).get("mostly", 1))
    success = considered == 0 or (considered - unexpected) / considered >= mostly
    message = ""
    if not success:
        message = (
            f"{100 * unexpected / considered:.1f}% of rows fail ({unexpected} of {element}); "
            f"expected {first.expected}"
        )
    return dataclasses.replace(
        first, success=success, element_count=element, unexpected_count=unexpected,
        missing_count=missing, observed=None, message=message,
    )


def _rule_result(exp: Mapping[str, Any], gx_result: Any) -> RuleResult:
    kwargs: dict[str, Any] = exp.get("kwargs", {})
    result: dict[str, Any] = dict(gx_result.result or {})
    error = _exception_message(gx_result.exception_info)
    column = kwargs.get("column")
    mostly = kwargs.get("mostly", 1)
    row_level = error is None and "unexpected_index_list" in result and mostly == 1
    expected = _expected(exp)
    rows = tuple(int(i) for i in result.get("unexpected_index_list") or ()) if row_level else ()
    observed = result.get("unexpected_list") if row_level else result.get("observed_value")
    success = bool(gx_result.success) and error is None
    message = ""
    if not success:
        if error is not None:
            message = f"could not be evaluated ({error}); expected {expected}"
        elif row_level:
            message = f"{_rows(len(rows))} fail: expected {expected}"
        else:
            message = _table_failure(exp, result, expected)
    return RuleResult(
        rule=exp["meta"]["rule"],
        expectation=exp["type"],
        column=column,
        row_level=row_level,
        success=success,
        element_count=result.get("element_count"),
        unexpected_count=int(result.get("unexpected_count") or 0),
        unexpected_rows=rows,
        observed=_plain(observed),
        expected=expected,
        message=message,
        missing_count=result.get("missing_count"),
        evaluated=error is None,
    )


def _exception_message(info: Any) -> str | None:
    """GX's exception info is either one dict or one dict per metric that raised."""
    if not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    messages = [str(v.get("exception_message")) for v in info.values() if v.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


# --- words -------------------------------------------------------------------------------------


def _expected(exp: Mapping[str, Any]) -> str:
    """The expectation as a condition in words (thresholds as written in the suite)."""
    kind: str = exp["type"]
    kw: dict[str, Any] = exp.get("kwargs", {})
    col = kw.get("column", "")
    if kind == "expect_column_values_to_not_be_null":
        text = f"{col} not null"
    elif kind == "expect_column_values_to_be_null":
        text = f"{col} null"
    elif kind in ("expect_column_values_to_be_between", "expect_table_row_count_to_be_between"):
        subject = col if kind.startswith("expect_column") else "row count"
        text = f"{subject} {_bounds(kw)}"
    elif kind == "expect_column_proportion_of_non_null_values_to_be_between":
        text = f"share of non-null {col} {_bounds(kw)}"
    elif kind == "expect_column_values_to_be_in_set" and (exp.get("meta") or {}).get("references"):
        ref = exp["meta"]["references"]
        text = f"{col} present in {ref['table']}.{ref['column']}"
    elif kind == "expect_column_values_to_be_in_set":
        text = f"{col} one of {_values(kw.get('value_set', []))}"
    elif kind == "expect_column_values_to_not_be_in_set":
        text = f"{col} none of {_values(kw.get('value_set', []))}"
    elif kind == "expect_column_values_to_match_regex":
        text = f"{col} matching /{kw.get('regex')}/"
    elif kind == "expect_column_values_to_be_unique":
        text = f"{col} unique within the run"
    elif kind == "expect_column_to_exist":
        text = f"a column {col}"
    elif kind == "expect_table_row_count_to_equal":
        text = f"row count {kw.get('value')}"
    elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
        text = f"{kw.get('column_A')} {'≥' if kw.get('or_equal') else '>'} {kw.get('column_B')}"
    else:
        shown = {k: v for k, v in kw.items() if k not in ("row_condition", "condition_parser")}
        text = f"{kind} {json.dumps(shown, default=str)}"
    if kw.get("mostly", 1) != 1:
        text += f" for at least {kw['mostly']:.0%} of rows"
    condition = kw.get("row_condition")
    if condition:
        text += f" where {_condition(condition)}"
    return text


def _bounds(kw: Mapping[str, Any]) -> str:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    lo_op = ">" if kw.get("strict_min") else "≥"
    hi_op = "<" if kw.get("strict_max") else "≤"
    if lo is not None and hi is not None:
        if not kw.get("strict_min") and not kw.get("strict_max"):
            return f"between {_num(lo)} and {_num(hi)}"
        return f"{lo_op} {_num(lo)} and {hi_op} {_num(hi)}"
    if lo is not None:
        return f"{lo_op} {_num(lo)}"
    if hi is not None:
        return f"{hi_op} {_num(hi)}"
    return "of any value"


def _condition(cond: Any) -> str:
    """A GX 1.x row condition (JSON form) in words."""
    if isinstance(cond, str):
        return cond
    kind = cond.get("type")
    if kind in ("and", "or"):
        return f" {kind} ".join(_condition(c) for c in cond["conditions"])
    if kind == "comparison":
        op = {"IN": "in", "NOT_IN": "not in"}.get(cond["operator"], cond["operator"])
        return f"{cond['column']['name']} {op} {_value(cond['parameter'])}"
    if kind == "nullity":
        return f"{cond['column']['name']} is {'null' if cond['is_null'] else 'not null'}"
    if kind == "pass_through":
        return str(cond["pass_through_filter"])
    return json.dumps(cond)


def _table_failure(exp: Mapping[str, Any], result: Mapping[str, Any], expected: str) -> str:
    kind = exp["type"]
    col = exp.get("kwargs", {}).get("column")
    if kind == "expect_column_to_exist":
        return f"column {col} is missing; expected {expected}"
    if "observed_value" in result:
        subject = {
            "expect_table_row_count_to_be_between": "row count",
            "expect_table_row_count_to_equal": "row count",
            "expect_column_proportion_of_non_null_values_to_be_between": f"share of non-null {col}",
        }.get(kind, f"{col or 'table'} ({kind})")
        return f"{subject} is {_value(_plain(result['observed_value']))}; expected {expected}"
    if "unexpected_percent" in result:
        return (
            f"{result['unexpected_percent']:.1f}% of rows fail ({result.get('unexpected_count')} "
            f"of {result.get('element_count')}); expected {expected}"
        )
    return f"failed; expected {expected}"


def _row_reason(rule: RuleResult, row: Mapping[str, Any]) -> str:
    if rule.column is None:
        return f"{rule.rule}: expected {rule.expected}"
    return f"{rule.rule}: {rule.column} is {_value(row.get(rule.column))}, expected {rule.expected}"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return _num(v)
    text = str(v)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return repr(text)


def _values(values: Sequence[Any]) -> str:
    shown = ", ".join(_value(v) for v in list(values)[:12])
    return "{" + shown + (", …" if len(values) > 12 else "") + "}"


def _plain(v: Any) -> Any:
    """numpy scalars and lists of them as plain Python values."""
    if isinstance(v, list):
        return [_plain(x) for x in v]
    item = getattr(v, "item", None)
    return item() if callable(item) and not isinstance(v, str | bytes) else v


# --- rows --------------------------------------------------------------------------------------


def _key_columns(table_name: str, schema: pa.Schema) -> tuple[str, ...]:
    try:
        key = registered(table_name).key
    except KeyError:
        key = ()
    return tuple(k for k in key if k in schema.names)


def _quarantine(
    rows: pa.Table,
    failing: Mapping[int, Sequence[RuleResult]],
    *,
    table_name: str,
    key: Sequence[str],
    start: int = 0,
) -> pa.Table:
    """One quarantine row per failing record: first failing rule as rule id, all of them in the
    reason. ``failing`` holds positions in ``rows``, which start at row ``start`` of the table."""
    if not failing:
        return QUARANTINE_SCHEMA.empty_table()
    positions = sorted(failing)
    picked = rows.take(pa.array(positions, pa.int64())).to_pylist()
    reasons = []
    for pos, row in zip(positions, picked, strict=True):
        located = f"{', '.join(f'{k} {_value(row.get(k))}' for k in key)}" if key else f"row {start + pos}"
        reasons.append("; ".join(_row_reason(r, row) for r in failing[pos]) + f" ({located})")
    return silver_rejects(
        picked,
        rule_ids=[f"{STAGE}.{failing[pos][0].rule}" for pos in positions],
        reasons=reasons,
        table_name=table_name,
        key=key,
    )
