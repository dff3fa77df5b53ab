"""The audit log: an append-only, hash-chained, keyed-MAC Delta table at ``<lake>/audit/``.

Every entry carries ``prev_hash`` (the previous entry's ``entry_hash``), its own ``entry_hash``
(SHA-256 over its canonical form, ``prev_hash`` included) and ``mac`` (HMAC-SHA256 of
``entry_hash`` under the audit key). Editing, deleting, inserting or reordering entries breaks the
chain or a MAC; without the key nobody can re-seal a forged chain. The tail is anchored by
``<lake>/audit/_head.json``: the latest seq and entry hash, MAC'd, so removing the last entries
is detected too.

Appenders serialize on a file lock next to the table (``<lake>/audit/_lock``) and commit with no
Delta retry against the snapshot they read the tail from: if anything else committed first, the
commit fails and the appender re-reads the tail. Two appenders can never fork the chain.

``details`` is a JSON object of facts about the action (counts, versions, the stated reason);
it must not hold PHI: name records by their pseudonymous keys.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from medlake.governance.crypto import write_atomically
from medlake.lake import Lake
from medlake.registry import TS, TableSpec

TABLE = "audit"
HEAD_FILE = "_head.json"
LOCK_FILE = "_lock"
GENESIS_HASH = "0" * 64
MIN_KEY_BYTES = 16
MAX_COMMIT_ATTEMPTS = 50

#: actions the project writes; others are allowed if they follow ``<area>.<verb>``
ACTIONS = (
    "pipeline.run",
    "vault.reidentify",
    "vault.rotate_key",
    "access.denied",
    "dp.release",
    "quarantine.resolve",
)

AUDIT = TableSpec(
    name=TABLE,
    schema=pa.schema(
        [
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("entry_id", pa.string(), nullable=False),
            pa.field("at", TS, nullable=False),
            pa.field("actor", pa.string(), nullable=False),
            pa.field("role", pa.string(), nullable=False),
            pa.field("action", pa.string(), nullable=False),
            pa.field("object", pa.string(), nullable=False),
            pa.field("run_id", pa.string()),
            pa.field("purpose", pa.string()),
            pa.field("details", pa.string()),
            pa.field("prev_hash", pa.string(), nullable=False),
            pa.field("entry_hash", pa.string(), nullable=False),
            pa.field("mac", pa.string(), nullable=False),
        ]
    ),
    key=("seq",),
    description="Who did what to which object, when and why: append-only, hash-chained, MAC'd under the audit key.",
)

#: Delta operations an intact audit table may show: appends, and maintenance that keeps rows
_MAINTENANCE = {"CREATE TABLE", "OPTIMIZE", "VACUUM START", "VACUUM END"}


class AuditLogBroken(RuntimeError):
    """The log cannot be appended to safely: wrong key, or its tail was tampered with."""


@dataclass(frozen=True)
class AuditEntry:
    """One audited action."""

    seq: int
    entry_id: str
    at: datetime
    actor: str
    role: str
    action: str
    object: str
    run_id: str | None
    purpose: str | None
    details: str | None
    prev_hash: str
    entry_hash: str
    mac: str

    def canonical(self) -> bytes:
        """The bytes ``entry_hash`` is computed over: every field but the hash and the MAC."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("entry_hash", "mac")}
        fields["at"] = _iso(self.at)
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def computed_hash(self) -> str:
        return hashlib.sha256(b"medlake.audit.entry.v1\n" + self.canonical()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready values (``at`` in ISO 8601 UTC, ``details`` parsed)."""
        row = asdict(self)
        row["at"] = _iso(self.at)
        row["details"] = json.loads(self.details) if self.details else None
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEntry:
        return cls(**{name: row[name] for name in AUDIT.schema.names})


@dataclass(frozen=True)
class Verification:
    """The outcome of walking the chain: intact, or the first broken entry and what is wrong."""

    ok: bool
    entries: int
    first_broken_seq: int | None = None
    problem: str | None = None
    head_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Head:
    seq: int
    entry_hash: str
    mac: str


# ---------------------------------------------------------------------------------------------
# append


def append(
    lake: Lake,
    *,
    key: bytes,
    actor: str,
    role: str,
    action: str,
    object: str,
    run_id: str | None = None,
    purpose: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry at the end of the chain; returns it as written."""
    _check_key(key)
    _check_action(action)
    for name, value in (("actor", actor), ("role", role), ("object", object)):
        if not value or not value.strip():
            raise ValueError(f"an audit entry needs a non-empty {name}")
    details_json = (
        json.dumps(dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=True) if details else None
    )
    root = lake.path(TABLE)
    with exclusive(root / LOCK_FILE):
        DeltaTable.create(str(root), schema=AUDIT.schema, mode="ignore")
        for _ in range(MAX_COMMIT_ATTEMPTS):
            table, tail = _tail(root, key)
            entry = _seal(
                key,
                seq=tail.seq + 1,
                prev_hash=tail.entry_hash,
                actor=actor,
                role=role,
                action=action,
                object=object,
                run_id=run_id,
                purpose=purpose,
                details=details_json,
            )
            try:
                # No retries: the commit must land on the very version the tail was read from,
                # otherwise another appender got there first and the chain must be re-read.
                write_deltalake(
                    table,
                    pa.Table.from_pylist([asdict(entry)], schema=AUDIT.schema),
                    mode="append",
                    commit_properties=CommitProperties(max_commit_retries=0),
                )
            except CommitFailedError:
                time.sleep(random.uniform(0.005, 0.05))
                continue
            _advance_head(root, entry, key)
            return entry
    raise AuditLogBroken(
        f"could not append to the audit log at {root} after {MAX_COMMIT_ATTEMPTS} attempts: "
        "other writers kept committing first"
    )


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created 0600) for the block: one writer at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _seal(key: bytes, **fields: Any) -> AuditEntry:
    draft = AuditEntry(
        entry_id=uuid.uuid4().hex,
        at=datetime.now(UTC),
        entry_hash="",
        mac="",
        **fields,
    )
    entry_hash = draft.computed_hash()
    return AuditEntry(**{**asdict(draft), "entry_hash": entry_hash, "mac": _entry_mac(key, entry_hash)})


@dataclass(frozen=True)
class _Link:
    seq: int
    entry_hash: str


def _tail(root: Path, key: bytes) -> tuple[DeltaTable, _Link]:
    """A snapshot of the table and its last entry, checked against the signed head first."""
    # The head is read before the snapshot is taken: the head only ever moves after a commit,
    # so the snapshot holds at least the entry the head records.
    head = _read_head(root)
    table = DeltaTable(str(root))
    if head is None:
        if table.to_pyarrow_dataset().count_rows(use_threads=False):
            raise AuditLogBroken(
                f"the audit log at {root} has entries but no signed head ({HEAD_FILE}): "
                "run `medlake audit verify` and investigate before writing to it"
            )
        head = _Head(-1, GENESIS_HASH, _head_mac(key, -1, GENESIS_HASH))
        write_atomically(root / HEAD_FILE, json.dumps(asdict(head)) + "\n")
    if not hmac.compare_digest(head.mac, _head_mac(key, head.seq, head.entry_hash)):
        raise AuditLogBroken(
            f"the audit key does not match the signed head of {root}: wrong key, or the head was replaced"
        )
    rows = (
        table.to_pyarrow_dataset()
        .to_table(filter=pc.field("seq") >= max(head.seq, 0), use_threads=False)
        .sort_by("seq")
        .to_pylist()
    )
    entries = [AuditEntry.from_row(r) for r in rows]
    if head.seq >= 0 and (not entries or entries[0].seq != head.seq or entries[0].entry_hash != head.entry_hash):
        raise AuditLogBroken(
            f"the audit log at {root} no longer holds entry {head.seq} as its signed head records it: "
            "run `medlake audit verify` and investigate before writing to it"
        )
    tail = _Link(head.seq, head.entry_hash)
    # Entries after the head: written by an appender that crashed before moving the head.
    for entry in entries[1:] if head.seq >= 0 else entries:
        problem = _entry_problem(entry, expected_seq=tail.seq + 1, prev_hash=tail.entry_hash, key=key)
        if problem:
            raise AuditLogBroken(f"{problem}; run `medlake audit verify` and investigate before writing to it")
        tail = _Link(entry.seq, entry.entry_hash)
    return table, tail


def _advance_head(root: Path, entry: AuditEntry, key: bytes) -> None:
    current = _read_head(root)
    if current is None or current.seq < entry.seq:
        head = _Head(entry.seq, entry.entry_hash, _head_mac(key, entry.seq, entry.entry_hash))
        write_atomically(root / HEAD_FILE, json.dumps(asdict(head)) + "\n")


# ---------------------------------------------------------------------------------------------
# read and verify


def read(lake: Lake) -> list[AuditEntry]:
    """Every entry, in chain order (empty when nothing was audited yet)."""
    root = lake.path(TABLE)
    if not DeltaTable.is_deltatable(str(root)):
        return []
    rows = DeltaTable(str(root)).to_pyarrow_dataset().to_table(use_threads=False).to_pylist()
    return sorted((AuditEntry.from_row(r) for r in rows), key=lambda e: (e.seq, e.entry_hash))


def verify(lake: Lake, *, key: bytes) -> Verification:
    """Walk the chain and the signed head; the first broken entry and the problem, in words."""
    _check_key(key)
    root = lake.path(TABLE)
    entries = read(lake)
    head = _read_head(root)
    count = len(entries)
    head_seq = head.seq if head else None

    def broken(seq: int | None, problem: str) -> Verification:
        return Verification(False, count, seq, problem, head_seq)

    head_ok = head is not None and hmac.compare_digest(head.mac, _head_mac(key, head.seq, head.entry_hash))
    if entries and not head_ok and not any(_mac_ok(key, e) for e in entries):
        return broken(0, "no entry's MAC and not the head's verifies under this key: wrong audit key")

    prev_hash = GENESIS_HASH
    for position, entry in enumerate(entries):
        problem = _entry_problem(entry, expected_seq=position, prev_hash=prev_hash, key=key)
        if problem:
            return broken(min(position, entry.seq), problem)
        prev_hash = entry.entry_hash

    last = entries[-1].seq if entries else -1
    if head is None:
        if entries:
            return broken(None, f"the signed head ({HEAD_FILE}) is missing: the end of the log cannot be vouched for")
        return Verification(True, 0, head_seq=None)
    if not head_ok:
        return broken(None, f"the signed head ({HEAD_FILE}) does not verify under this key: it was edited or replaced, or this is not the log's key")
    if head.seq > last:
        removed = head.seq - last
        return broken(
            last + 1,
            f"the log ends at entry {last} but its signed head records entry {head.seq}: "
            f"the last {removed} entr{'y was' if removed == 1 else 'ies were'} removed",
        )
    if head.seq >= 0 and entries[head.seq].entry_hash != head.entry_hash:
        return broken(head.seq, f"entry {head.seq} is not the entry the signed head records")
    rewrite = _non_append_commit(root)
    if rewrite:
        return broken(None, rewrite)
    return Verification(True, count, head_seq=head.seq)


def _entry_problem(entry: AuditEntry, *, expected_seq: int, prev_hash: str, key: bytes) -> str | None:
    """What is wrong with one entry at its place in the chain, or None."""
    seq = expected_seq
    if entry.seq > seq:
        return f"entry {seq} is missing (the next entry is {entry.seq}): entries were deleted"
    if entry.seq < seq:
        return f"entry {entry.seq} appears twice: an entry was inserted"
    if entry.prev_hash != prev_hash:
        what = "does not start the chain" if seq == 0 else f"does not follow entry {seq - 1}"
        return f"entry {seq} {what} (prev_hash mismatch): entries were reordered, inserted or deleted"
    if entry.computed_hash() != entry.entry_hash:
        return f"entry {seq} was altered: its fields no longer match its entry_hash"
    if not _mac_ok(key, entry):
        return f"entry {seq} has a MAC that does not verify: it was forged or re-sealed without the audit key"
    return None


def _non_append_commit(root: Path) -> str | None:
    """A commit that removed or rewrote rows (an audit table only ever grows), described; else None."""
    for commit in sorted(DeltaTable(str(root)).history(), key=lambda c: int(c["version"])):
        operation = commit.get("operation", "")
        mode = (commit.get("operationParameters") or {}).get("mode")
        if operation in _MAINTENANCE or (operation == "WRITE" and mode == "Append"):
            continue
        described = f"{operation} ({mode})" if mode else operation
        return (
            f"the audit table's Delta history shows a {described} at version {commit['version']}: "
            "the table was rewritten, which an append-only log never is"
        )
    return None


# ---------------------------------------------------------------------------------------------
# keys, MACs, head


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the audit key must be at least {MIN_KEY_BYTES} bytes")


def _check_action(action: str) -> None:
    area, _, verb = action.partition(".")
    if not (area and verb and action.replace("_", "").replace(".", "").isalnum() and action == action.lower()):
        raise ValueError(f"audit action {action!r} must look like '<area>.<verb>', e.g. {', '.join(ACTIONS)}")


def _entry_mac(key: bytes, entry_hash: str) -> str:
    return hmac.new(key, b"medlake.audit.mac.v1\x1f" + entry_hash.encode("ascii"), hashlib.sha256).hexdigest()


def _mac_ok(key: bytes, entry: AuditEntry) -> bool:
    return hmac.compare_digest(entry.mac, _entry_mac(key, entry.entry_hash))


def _head_mac(key: bytes, seq: int, entry_hash: str) -> str:
    message = f"medlake.audit.head.v1\x1f{seq}\x1f{entry_hash}".encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _read_head(root: Path) -> _Head | None:
    path = root / HEAD_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return _Head(seq=int(raw["seq"]), entry_hash=str(raw["entry_hash"]), mac=str(raw["mac"]))
    except (ValueError, KeyError, TypeError):
        return _Head(seq=-1, entry_hash="", mac="")  # unreadable: reported as a head that does not verify


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")
