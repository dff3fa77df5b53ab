"""Versioned datasets: a named gold table pinned at a Delta version, with a manifest that proves its rows.

    manifest = publish(lake, "gold.ml_patient_features", name="patient_features")
    rows = pull(lake, "patient_features@1", role="ml")            # the same rows forever

A dataset version is one row of the Delta table ``<lake>/datasets/``: the dataset's name and
version (1, 2, 3, ... per name), the table and the Delta version it pins, the Arrow schema,
the row count, a content hash, the de-identification level and the pipeline run ids that
built the rows. Pulling ``name@version`` reads the table at that Delta version (time travel)
and checks the content hash, so a pull returns exactly the rows the manifest describes or
fails. Old versions stay pullable until VACUUM removes their data files (retention is a
table setting, not an accident); a pull then says so.

The content hash (method ``sha256/medlake-rows-v1``) is SHA-256 over the column names in
name order, then one canonical JSON array per row: the row's values in column-name order,
rows sorted by the table's key and then by every other non-nested column. Values are JSON
numbers, strings, booleans and null; dates and times are ISO 8601; decimals and binary are
strings. Physical types (``string`` vs ``large_string``, ``float32`` vs ``float64`` widths) do
not enter the hash, so the same rows written by delta-rs or Spark hash the same.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.exceptions import DeltaError

from medlake.errors import BadDataError
from medlake.governance import access
from medlake.governance.release import Anonymized, PrivacyModel, ReleaseRefused, anonymize
from medlake.lake import Lake, TableNotFound
from medlake.registry import TABLES, TableSpec

if TYPE_CHECKING:
    import pandas as pd

DeidLevel = Literal["safe_harbor", "expert_determination", "limited_data_set", "identified"]
Role = Literal["ml", "data_engineer", "compliance"]
PullFormat = Literal["arrow", "pandas", "parquet"]

#: de-identification levels a dataset may declare (HIPAA: Safe Harbor, Expert Determination;
#: a limited data set and identified data are not de-identified)
DEID_LEVELS: tuple[str, ...] = (
    "safe_harbor",
    "expert_determination",
    "limited_data_set",
    "identified",
)
DEIDENTIFIED_LEVELS: tuple[str, ...] = ("safe_harbor", "expert_determination")

HASH_METHOD = "sha256/medlake-rows-v1"

#: the grain of gold marts, which the registry does not hold (dbt YAML `meta.grain`); the hash
#: breaks ties on every other column, so a grain that gains a column still hashes canonically
MART_GRAINS: dict[str, tuple[str, ...]] = {"gold.ml_patient_features": ("person_key",)}

DATASETS = TableSpec(
    name="datasets",
    schema=pa.schema(
        [
            pa.field("name", pa.string(), nullable=False),
            pa.field("version", pa.int64(), nullable=False),
            pa.field("table_name", pa.string(), nullable=False),
            pa.field("delta_version", pa.int64(), nullable=False),
            pa.field("key", pa.list_(pa.string()), nullable=False),
            pa.field("arrow_schema", pa.string(), nullable=False),
            pa.field("row_count", pa.int64(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("hash_method", pa.string(), nullable=False),
            pa.field("deid_level", pa.string(), nullable=False),
            pa.field("phi_columns", pa.list_(pa.string()), nullable=False),
            pa.field("lineage_run_ids", pa.list_(pa.string()), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            # k-anonymity of the release over the quasi-identifiers it holds (JSON; null before)
            pa.field("k_anonymity", pa.string()),
        ]
    ),
    key=("name", "version"),
    description="Published dataset versions: one manifest per name and version.",
)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_BATCH_ROWS = 8192


class DatasetError(BadDataError):
    """A dataset cannot be published or pulled as asked; the message says which and why."""


class DatasetNotFound(DatasetError, LookupError):
    """No dataset version of that name (and version) was published in this lake."""


class DatasetVacuumed(DatasetError):
    """The Delta version a dataset pins was vacuumed: its rows are gone from the lake."""


class DatasetUnreadable(DatasetError):
    """The pinned Delta version could not be read (a data file missing or corrupt)."""


class ContentHashMismatch(DatasetError):
    """The rows read back differ from the rows the manifest was published with."""


class PublishRefused(DatasetError):
    """The release cannot meet its privacy model: nothing was published; the message says why."""


#: the model every row-level release meets unless the publisher states another
DEFAULT_MODEL = PrivacyModel()
#: where a release's generalized, suppressed rows are written: ``gold.release_<dataset name>``
RELEASE_PREFIX = "gold.release_"


class PullRefused(DatasetError, PermissionError):
    """The role may not pull this dataset."""


@dataclass(frozen=True)
class Manifest:
    """One published dataset version: which rows, pinned where, proven by which hash."""

    name: str
    version: int
    table: str
    delta_version: int
    key: tuple[str, ...]
    arrow_schema: str
    row_count: int
    content_hash: str
    hash_method: str
    deid_level: str
    phi_columns: tuple[str, ...]
    lineage_run_ids: tuple[str, ...]
    created_at: datetime
    #: k-anonymity over the quasi-identifiers the release holds (governance.deid.k_anonymity)
    k_anonymity: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        """``name@version``, how a dataset version is named everywhere (CLI, MLflow, lineage)."""
        return f"{self.name}@{self.version}"

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names, in table order."""
        return tuple(f["name"] for f in json.loads(self.arrow_schema))

    def as_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready values (the schema decoded)."""
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "table": self.table,
            "delta_version": self.delta_version,
            "key": list(self.key),
            "schema": json.loads(self.arrow_schema),
            "row_count": self.row_count,
            "content_hash": self.content_hash,
            "hash_method": self.hash_method,
            "deid_level": self.deid_level,
            "phi_columns": list(self.phi_columns),
            "lineage_run_ids": list(self.lineage_run_ids),
            "created_at": self.created_at.isoformat(),
            "k_anonymity": self.k_anonymity,
        }

    def _row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "table_name": self.table,
            "delta_version": self.delta_version,
            "key": list(self.key),
            "arrow_schema": self.arrow_schema,
            "row_count": self.row_count,
            "content_hash": self.content_hash,
            "hash_method": self.hash_method,
            "deid_level": self.deid_level,
            "phi_columns": list(self.phi_columns),
            "lineage_run_ids": list(self.lineage_run_ids),
            "created_at": self.created_at,
            "k_anonymity": json.dumps(self.k_anonymity) if self.k_anonymity is not None else None,
        }

    @classmethod
    def _from_row(cls, row: dict[str, Any]) -> Manifest:
        return cls(
            name=row["name"],
            version=int(row["version"]),
            table=row["table_name"],
            delta_version=int(row["delta_version"]),
            key=tuple(row["key"]),
            arrow_schema=row["arrow_schema"],
            row_count=int(row["row_count"]),
            content_hash=row["content_hash"],
            hash_method=row["hash_method"],
            deid_level=row["deid_level"],
            phi_columns=tuple(row["phi_columns"]),
            lineage_run_ids=tuple(row["lineage_run_ids"]),
            created_at=row["created_at"],
            k_anonymity=json.loads(row["k_anonymity"]) if row.get("k_anonymity") else None,
        )


# ---------------------------------------------------------------------------------------------
# publish, list, resolve


def publish(
    lake: Lake,
    table: str = "gold.ml_patient_features",
    *,
    name: str,
    deid_level: DeidLevel = "safe_harbor",
    lineage_run_ids: Sequence[str] = (),
    key: Sequence[str] | None = None,
    privacy: PrivacyModel | None = DEFAULT_MODEL,
    quasi_identifiers: Sequence[str] | None = None,
) -> Manifest:
    """Release ``table`` at its current Delta version as the next version of dataset ``name``,
    meeting ``privacy`` (default: k-anonymity with k=5).

    With a model, the rows are generalized along the quasi-identifiers' hierarchies and what
    remains below k (or l) is suppressed (:func:`medlake.governance.release.anonymize`); the
    result is written to ``gold.release_<name>`` and that version is pinned; the manifest's
    ``k_anonymity`` records the model, the hierarchy levels applied, the records suppressed and
    the information loss. A release that cannot meet the model is refused
    (:class:`PublishRefused`). ``quasi_identifiers`` default to those of
    ``governance.deid.QUASI_IDENTIFIERS`` the table has. ``privacy=None`` pins the table as it is
    (for identified or limited data sets behind their own agreements); the manifest then
    records the measured k and ``meets_model: false``.

    ``table`` is ``layer.table`` (a bare name means ``gold.<name>``). The manifest records the
    ``_run_id`` values found in the rows plus ``lineage_run_ids`` (e.g. the publishing DAG run).
    ``key`` orders the rows for the content hash: default the registered key, else the mart's
    grain. Publishing again while the table has not changed (same Delta version, rows and
    de-identification level) returns the latest manifest of ``name`` instead of a duplicate
    version, so a retried task publishes once.
    """
    _check_name(name)
    table = qualified_table(table)
    if deid_level not in DEID_LEVELS:
        raise ValueError(f"deid_level must be one of {', '.join(DEID_LEVELS)}, not {deid_level!r}")
    try:
        delta_version = lake.table(table).version()
    except TableNotFound as exc:
        raise DatasetNotFound(
            f"cannot publish dataset {name}: table {table} does not exist under {lake.root}"
        ) from exc
    data = without_views(lake.read(table, version=delta_version))
    spec = TABLES.get(table)
    order = tuple(key) if key is not None else (spec.key if spec else MART_GRAINS.get(table, ()))
    missing = [c for c in order if c not in data.column_names]
    if missing:
        raise DatasetError(
            f"cannot publish dataset {name}: key column(s) {', '.join(missing)} not in {table}"
        )
    anonymized: Anonymized | None = None
    if privacy is not None:
        from medlake.governance.deid import QUASI_IDENTIFIERS

        quasi = tuple(quasi_identifiers) if quasi_identifiers is not None else tuple(
            q for q in QUASI_IDENTIFIERS if q in data.column_names
        )
        try:
            anonymized = anonymize(data, quasi, privacy)
        except ReleaseRefused as exc:
            raise PublishRefused(f"dataset {name} was not published: {exc}") from exc
        data = anonymized.data
    content_hash = content_hash_of(data, key=order)
    latest = _latest(lake, name)
    if anonymized is None:
        unchanged = (table, delta_version, content_hash, deid_level)
        if (
            latest
            and (latest.table, latest.delta_version, latest.content_hash, latest.deid_level)
            == unchanged
        ):
            return latest
        k_report = {**release_k_anonymity(data), "meets_model": False}
    else:
        release_table = RELEASE_PREFIX + name
        source = {"table": table, "delta_version": delta_version}
        if (
            latest
            and latest.table == release_table
            and (latest.content_hash, latest.deid_level) == (content_hash, deid_level)
            and latest.k_anonymity
            and latest.k_anonymity.get("source") == source
        ):
            return latest
        release_spec = TableSpec(name=release_table, schema=data.schema, key=order,
                                 description=f"dataset {name}: {table} meeting its privacy model")
        delta_version = lake.write(release_table, data, mode="overwrite", spec=release_spec)
        k_report = {**anonymized.manifest(), "source": source}
        table = release_table

    found_runs = _distinct_strings(data, "_run_id")
    manifest_fields: dict[str, Any] = {
        "name": name,
        "table": table,
        "delta_version": delta_version,
        "key": order,
        "arrow_schema": schema_json(data.schema),
        "row_count": data.num_rows,
        "content_hash": content_hash,
        "hash_method": HASH_METHOD,
        "deid_level": deid_level,
        "phi_columns": tuple(
            c for c in (spec.phi_columns if spec else ()) if c in data.column_names
        ),
        "lineage_run_ids": tuple(sorted(set(found_runs) | set(lineage_run_ids))),
        "created_at": datetime.now(UTC),
        "k_anonymity": k_report,
    }
    # optimistic concurrency: the (name, version) MERGE inserts nothing when a concurrent
    # publish took that version first; then take the next one
    for _attempt in range(5):
        version = (latest.version if latest else 0) + 1
        manifest = Manifest(version=version, **manifest_fields)
        row = pa.Table.from_pylist([manifest._row()], schema=DATASETS.schema)
        if lake.insert_new(DATASETS.name, row, key=DATASETS.key) == 1:
            return manifest
        latest = _latest(lake, name)
    raise DatasetError(f"could not publish dataset {name}: versions kept being taken concurrently")


def release_k_anonymity(data: pa.Table) -> dict[str, Any]:
    """k-anonymity of a release over the quasi-identifiers (age band, gender, ZIP3) it holds."""
    from medlake.governance.deid import QUASI_IDENTIFIERS, k_anonymity

    quasi = tuple(q for q in QUASI_IDENTIFIERS if q in data.column_names)
    return k_anonymity(data.select(list(quasi)).to_pylist() if quasi else [{}] * data.num_rows, quasi)


def list_datasets(lake: Lake, name: str | None = None) -> list[Manifest]:
    """Every published dataset version (of ``name`` when given), by name then version."""
    if not lake.exists(DATASETS.name):
        return []
    rows = lake.read(DATASETS.name).to_pylist()
    manifests = [Manifest._from_row(r) for r in rows if name is None or r["name"] == name]
    return sorted(manifests, key=lambda m: (m.name, m.version))


def manifest(lake: Lake, ref: str) -> Manifest:
    """The manifest of ``name@version`` (``name`` or ``name@latest``: its latest version)."""
    name, version = parse_ref(ref)
    versions = list_datasets(lake, name)
    if not versions:
        known = sorted({m.name for m in list_datasets(lake)})
        raise DatasetNotFound(
            f"no dataset named {name} in {lake.root}"
            + (f"; published: {', '.join(known)}" if known else "; nothing published yet")
        )
    if version is None:
        return versions[-1]
    for m in versions:
        if m.version == version:
            return m
    raise DatasetNotFound(
        f"dataset {name} has no version {version}; versions: {', '.join(str(m.version) for m in versions)}"
    )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"readmission@3"`` → ``("readmission", 3)``; ``"readmission"`` or ``@latest`` → version None."""
    name, _, version = ref.partition("@")
    _check_name(name)
    if version in ("", "latest"):
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(
            f"dataset reference {ref!r}: the version after @ must be 1, 2, 3... or latest"
        )
    return name, int(version)


def qualified_table(table: str) -> str:
    """``ml_patient_features`` → ``gold.ml_patient_features``; a ``layer.table`` name is kept."""
    return table if "." in table else f"gold.{table}"


# ---------------------------------------------------------------------------------------------
# pull


@dataclass(frozen=True)
class PullAudit:
    """Who pulls and why, for the audit log: every pull through the CLI, the training job and the
    training DAG is recorded (``dataset.pull``, or ``access.denied`` when refused)."""

    key: bytes
    actor: str
    purpose: str | None = None  # stated: checked against the role's dataset grant
    run_id: str | None = None

    def record(self, lake: Lake, *, role: str, action: str, ref: str, **details: Any) -> None:
        from medlake.governance import audit

        audit.append(
            lake,
            key=self.key,
            actor=self.actor,
            role=role,
            action=action,
            object=f"dataset:{ref}",
            run_id=self.run_id,
            purpose=self.purpose,
            details=details,
        )


def check_pull_allowed(role: str, manifest: Manifest, *, purpose: str | None = None) -> tuple[str, ...]:
    """The columns ``role`` may pull from the dataset, or :class:`PullRefused`.

    Decided by the access policy's ``datasets`` grant for the role
    (:func:`medlake.governance.access.allowed_columns_for_pull`): ``ml`` gets de-identified
    datasets without the columns flagged PHI; ``data_engineer`` and ``compliance`` get every
    column; other roles get nothing.
    """
    try:
        return access.allowed_columns_for_pull(role, manifest, purpose=purpose)
    except access.AccessDenied as exc:
        raise PullRefused(str(exc)) from exc


def pull(
    lake: Lake,
    ref: str,
    *,
    role: str,
    to: PullFormat = "arrow",
    out: Path | str | None = None,
    audit: PullAudit | None = None,
) -> pa.Table | pd.DataFrame | Path:
    """The rows of dataset ``name@version``, exactly as published, in key order.

    Reads the pinned Delta version and checks the row count and content hash first: a pull
    returns the published rows or raises (:class:`ContentHashMismatch`,
    :class:`DatasetVacuumed`, :class:`DatasetUnreadable`). ``role`` decides which columns come
    back (:func:`check_pull_allowed`). ``to="parquet"`` writes ``out`` (the manifest in the
    file's metadata) and returns its path. With ``audit``, the pull or its refusal is audited.
    """
    m = manifest(lake, ref)
    data = pull_table(lake, m.ref, role=role, audit=audit)
    if to == "arrow":
        return data
    if to == "pandas":
        return data.to_pandas()
    if to == "parquet":
        if out is None:
            raise ValueError(f"pull of {m.ref} to parquet needs out=<file path>")
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            **(data.schema.metadata or {}),
            b"medlake.dataset": json.dumps(m.as_dict()).encode(),
        }
        pq.write_table(data.replace_schema_metadata(metadata), path)
        return path
    raise ValueError(f"to must be arrow, pandas or parquet, not {to!r}")


def pull_table(lake: Lake, ref: str, *, role: str, audit: PullAudit | None = None) -> pa.Table:
    """The verified rows of ``name@version`` as Arrow, with the columns ``role`` may see.

    With ``audit``: a refusal is audited as ``access.denied`` before it is raised, and a pull as
    ``dataset.pull`` (table, Delta version, rows, columns, content hash) once the rows are verified.
    """
    m = manifest(lake, ref)
    try:
        allowed = check_pull_allowed(role, m, purpose=audit.purpose if audit else None)
    except PullRefused as exc:
        if audit is not None:
            audit.record(lake, role=role, action="access.denied", ref=m.ref, attempted="pull", why=str(exc))
        raise
    data = read_verified(lake, m).select(list(allowed))
    if audit is not None:
        audit.record(
            lake,
            role=role,
            action="dataset.pull",
            ref=m.ref,
            table=m.table,
            delta_version=m.delta_version,
            rows=data.num_rows,
            columns=list(allowed),
            content_hash=m.content_hash,
        )
    return data


def read_verified(lake: Lake, m: Manifest) -> pa.Table:
    """Every column of the dataset's rows in key order, after checking count and content hash."""
    data = _read_pinned(lake, m)
    if data.num_rows != m.row_count:
        raise ContentHashMismatch(
            f"dataset {m.ref}: {m.table} at Delta version {m.delta_version} has {data.num_rows} rows, "
            f"the manifest says {m.row_count}; the table was altered outside Delta"
        )
    if m.hash_method != HASH_METHOD:
        raise DatasetError(
            f"dataset {m.ref} was hashed with {m.hash_method}; this medlake knows {HASH_METHOD}"
        )
    ordered = sort_canonically(data, key=m.key)
    actual = content_hash_of(ordered, key=m.key, presorted=True)
    if actual != m.content_hash:
        raise ContentHashMismatch(
            f"dataset {m.ref}: the rows of {m.table} at Delta version {m.delta_version} do not match "
            f"the published content hash (manifest {m.content_hash[:16]}..., read {actual[:16]}...); "
            "a data file was altered outside Delta. Do not train on it; restore the file or publish again."
        )
    return ordered


def _read_pinned(lake: Lake, m: Manifest) -> pa.Table:
    """The table at the manifest's Delta version, or an error that says why it cannot be read."""
    try:
        return without_views(lake.read(m.table, version=m.delta_version))
    except TableNotFound as exc:
        raise DatasetUnreadable(
            f"dataset {m.ref}: table {m.table} no longer exists under {lake.root}"
        ) from exc
    except (OSError, pa.ArrowException, DeltaError) as exc:
        vacuum = _vacuum_after(lake, m)
        if vacuum is not None and isinstance(exc, FileNotFoundError):
            raise DatasetVacuumed(
                f"dataset {m.ref} cannot be pulled: Delta version {m.delta_version} of {m.table} was "
                f"vacuumed on {vacuum} and its data files are gone. Pull a later version "
                f"(`medlake dataset list`) or publish again."
            ) from exc
        reason = type(exc).__name__
        raise DatasetUnreadable(
            f"dataset {m.ref} cannot be pulled: Delta version {m.delta_version} of {m.table} is "
            f"unreadable ({reason}: {_first_line(exc)}); a data file is missing or corrupt"
            + ("" if vacuum is None else f" (the table was vacuumed on {vacuum})")
        ) from exc


def _vacuum_after(lake: Lake, m: Manifest) -> str | None:
    """When the table was last vacuumed after the pinned version (UTC, ISO), or None."""
    try:
        history = lake.history(m.table)
    except (OSError, DeltaError):  # the history only refines the message
        return None
    for commit in history:  # newest first
        if int(commit.get("version", -1)) > m.delta_version and str(
            commit.get("operation", "")
        ).startswith("VACUUM"):
            stamp = datetime.fromtimestamp(int(commit["timestamp"]) / 1000, UTC)
            return stamp.isoformat(timespec="seconds")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


# ---------------------------------------------------------------------------------------------
# the content hash


def content_hash_of(data: pa.Table, *, key: Sequence[str] = (), presorted: bool = False) -> str:
    """SHA-256 (hex) of the rows in canonical order and serialization (see the module docstring)."""
    ordered = data if presorted else sort_canonically(data, key=key)
    names = sorted(ordered.column_names)
    ordered = ordered.select(names)
    digest = hashlib.sha256()
    digest.update(HASH_METHOD.encode() + b"\n")
    digest.update(_canonical_json(names) + b"\n")
    for line in _canonical_rows(ordered):
        digest.update(line + b"\n")
    return digest.hexdigest()


def sort_canonically(data: pa.Table, *, key: Sequence[str] = ()) -> pa.Table:
    """The rows sorted by ``key``, then by every other non-nested column in name order."""
    ties = [
        c
        for c in sorted(data.column_names)
        if c not in key and _sortable(data.schema.field(c).type)
    ]
    order = [(c, "ascending", "at_start") for c in (*key, *ties)]
    if not order or data.num_rows < 2:
        return data
    data = without_views(data)
    return data.take(pc.sort_indices(data, sort_keys=order))


def _sortable(type_: pa.DataType) -> bool:
    return not (pa.types.is_nested(type_) or pa.types.is_dictionary(type_))


def without_views(data: pa.Table) -> pa.Table:
    """``string_view``/``binary_view`` columns (delta-rs MERGE writes them) as large_string/binary.

    Arrow can neither sort nor take from view columns; the values stay the same.
    """
    fields = []
    for f in data.schema:
        if pa.types.is_string_view(f.type):
            f = f.with_type(pa.large_string())
        elif pa.types.is_binary_view(f.type):
            f = f.with_type(pa.large_binary())
        fields.append(f)
    schema = pa.schema(fields, metadata=data.schema.metadata)
    return data if schema.equals(data.schema) else data.cast(schema)


def _canonical_rows(data: pa.Table) -> Iterator[bytes]:
    for batch in data.to_batches(max_chunksize=_BATCH_ROWS):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for row in zip(*columns, strict=True):
            yield _canonical_json(list(row))


def _canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, default=_plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _plain(value: Any) -> Any:
    """A JSON-ready stand-in for values json cannot write (times, decimals, bytes)."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "isoformat"):  # pandas Timestamp/Timedelta-like
        return value.isoformat()
    return str(value)


def schema_json(schema: pa.Schema) -> str:
    """The Arrow schema as JSON: ``[{"name", "type", "nullable"}]`` in table order."""
    return json.dumps(
        [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        separators=(",", ":"),
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _latest(lake: Lake, name: str) -> Manifest | None:
    versions = list_datasets(lake, name)
    return versions[-1] if versions else None


def _distinct_strings(data: pa.Table, column: str) -> list[str]:
    if column not in data.column_names:
        return []
    return sorted({str(v) for v in data.column(column).to_pylist() if v is not None})


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"dataset name {name!r}: use a letter, then letters, digits, '_', '.' or '-' (at most 100)"
        )
