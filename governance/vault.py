"""The pseudonym vault: who a ``person_key`` is, encrypted, readable only by the role that may.

``<lake>/vault/`` is a Delta table with one row per source record (``source_key``) of a person
(``person_key``): the identity (names, birth date, address, phone, identifiers: whatever the
caller stored) as JSON, encrypted with AES-256-GCM under the vault keyring's active key. The row
carries its ``key_id`` and nonce; the AAD binds the ciphertext to its person_key, source_key and
key id, so a ciphertext moved to another row does not decrypt.

Re-identification is allowed to the ``reidentifier`` role only (a role the caller's authenticated
principal holds: governance/identity.py), needs a stated reason and one of two safeguards, and
every attempt is audited (``vault.reidentify``, or ``access.denied``) before anything is returned:

- **four eyes**: the requester files a request (:func:`request`, ``vault.request``); a *different*
  reidentifier principal approves it (:func:`approve`, ``vault.approve``); the requester then
  re-identifies that one person once with the request id. The requests and approvals live in the
  audit log itself, whose chain is verified before they are trusted;
- **break glass**: an emergency reason; the re-identification goes ahead and raises an
  ``alert.break_glass`` entry in the audit chain for the compliance office to review.

Key rotation re-encrypts every row under a new key in one Delta transaction, and only then
makes the new key active and retires the old ones: a crash at any point leaves each row under a
key that is still in the keyring.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from medlake.config import Settings
from medlake.governance import audit
from medlake.governance.crypto import (
    DecryptionFailed,
    Keyring,
    KeyringError,
    associated_data,
    decrypt,
    encrypt,
)
from medlake.lake import Lake
from medlake.registry import TS, TableSpec

TABLE = "vault"
LOCK_FILE = "_lock"
REIDENTIFIER = "reidentifier"
ROTATION_STEPS = ("key_created", "reencrypted", "committed", "activated", "retired")

VAULT = TableSpec(
    name=TABLE,
    schema=pa.schema(
        [
            pa.field("person_key", pa.string(), nullable=False),
            pa.field("source_key", pa.string(), nullable=False),
            pa.field("key_id", pa.string(), nullable=False),
            pa.field("nonce", pa.binary(), nullable=False),
            pa.field("ciphertext", pa.binary(), nullable=False),
            pa.field("created_at", TS, nullable=False),
        ]
    ),
    key=("source_key",),
    description="Who each pseudonymous source record is: the identity JSON, AES-256-GCM encrypted, key id per row.",
    phi_columns=("ciphertext",),
)


class AccessDenied(PermissionError):
    """The role may not do this; the attempt was audited."""


class VaultKeyError(RuntimeError):
    """A vault row does not decrypt: its key is missing from the keyring, or is the wrong key."""


class ApprovalMissing(AccessDenied):
    """Re-identification without an approved request or a break-glass reason; audited."""


class NotInVault(LookupError):
    """No identity is stored for that person_key."""


class VaultChanged(RuntimeError):
    """The vault was written while a rotation re-encrypted it; the rotation changed nothing."""


@dataclass(frozen=True)
class Stored:
    """What a store did: rows inserted and updated, under which key, at which Delta version."""

    inserted: int
    updated: int
    key_id: str
    version: int


@dataclass(frozen=True)
class Rotation:
    """What a rotation did. ``retired`` keys are no longer needed by any row."""

    new_key_id: str
    rows: int
    from_key_ids: tuple[str, ...]
    retired: tuple[str, ...]
    version: int | None
    keyring: Keyring


# ---------------------------------------------------------------------------------------------
# store


def store(
    lake: Lake,
    identities: pa.Table | Iterable[Mapping[str, Any]],
    *,
    keyring: Keyring,
    now: datetime | None = None,
) -> Stored:
    """Encrypt and upsert identities: each row has ``person_key``, ``source_key`` and any identity fields.

    Dates come back from :func:`reidentify` as ISO strings. Re-storing a source_key replaces its
    identity (new nonce, the active key) and keeps its ``created_at``.
    """
    records = _records(identities)
    root = lake.path(TABLE)
    stamp = now or datetime.now(UTC)
    with audit.exclusive(root / LOCK_FILE):
        keyring = keyring.refreshed()  # a rotation may have finished while the caller held it
        key_id, key = keyring.active_id, keyring.active_key
        rows = []
        for person_key, source_key, identity in records:
            plaintext = json.dumps(identity, sort_keys=True, default=_json_value, ensure_ascii=False).encode("utf-8")
            nonce, ciphertext = encrypt(key, plaintext, aad=_aad(person_key, source_key, key_id))
            rows.append(
                {
                    "person_key": person_key,
                    "source_key": source_key,
                    "key_id": key_id,
                    "nonce": nonce,
                    "ciphertext": ciphertext,
                    "created_at": stamp,
                }
            )
        DeltaTable.create(str(root), schema=VAULT.schema, mode="ignore")
        table = DeltaTable(str(root))
        if not rows:
            return Stored(0, 0, key_id, table.version())
        metrics = (
            table.merge(
                pa.Table.from_pylist(rows, schema=VAULT.schema),
                predicate="t.source_key = s.source_key",
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update(
                updates={c: f"s.{c}" for c in ("person_key", "key_id", "nonce", "ciphertext")}
            )
            .when_not_matched_insert_all()
            .execute()
        )
        return Stored(
            int(metrics["num_target_rows_inserted"]),
            int(metrics["num_target_rows_updated"]),
            key_id,
            DeltaTable(str(root)).version(),
        )


# ---------------------------------------------------------------------------------------------
# re-identify


def request(
    lake: Lake,
    person_key: str,
    *,
    role: str,
    reason: str,
    actor: str,
    audit_key: bytes,
    purpose: str | None = None,
) -> str:
    """File a request to re-identify ``person_key``; returns its id, for another reidentifier to approve."""
    _check_reidentifier(lake, person_key, role=role, reason=reason, actor=actor, audit_key=audit_key,
                        purpose=purpose, attempted="vault.request")
    request_id = uuid.uuid4().hex[:16]
    audit.append(lake, key=audit_key, actor=actor, role=role, action="vault.request", object=f"{TABLE}/{person_key}",
                 purpose=purpose, details={"request_id": request_id, "reason": reason})
    return request_id


def approve(lake: Lake, request_id: str, *, role: str, actor: str, audit_key: bytes) -> str:
    """Approve a pending request as a second reidentifier (never the requester); returns its person_key."""
    found = _requests(lake, audit_key).get(request_id)

    def refuse(why: str) -> AccessDenied:
        audit.append(lake, key=audit_key, actor=actor, role=role, action="access.denied",
                     object=f"{TABLE}/request/{request_id}", details={"attempted": "vault.approve", "why": why})
        return AccessDenied(why)

    if role != REIDENTIFIER:
        raise refuse(f"role {role!r} may not approve re-identification: only {REIDENTIFIER!r} may")
    if found is None:
        raise refuse(f"no re-identification request {request_id}")
    if found["requester"] == actor:
        raise refuse(f"{actor} filed request {request_id} and may not approve it: a second reidentifier must")
    if found["approver"] is not None or found["used"]:
        raise refuse(f"request {request_id} is already {'used' if found['used'] else 'approved'}")
    audit.append(lake, key=audit_key, actor=actor, role=role, action="vault.approve", object=found["object"],
                 details={"request_id": request_id, "requester": found["requester"]})
    return str(found["object"]).removeprefix(f"{TABLE}/")


def reidentify(
    lake: Lake,
    person_key: str,
    *,
    keyring: Keyring,
    role: str,
    reason: str,
    actor: str,
    audit_key: bytes,
    purpose: str | None = None,
    run_id: str | None = None,
    request_id: str | None = None,
    break_glass: bool = False,
) -> dict[str, Any]:
    """Who ``person_key`` is: ``{"person_key", "records": [{"source_key", "key_id", "identity"}]}``.

    Only for role ``reidentifier`` with a stated reason, and either ``request_id`` (a request of
    this actor for this person, approved by another reidentifier, not used yet) or
    ``break_glass`` (the reason is an emergency: an ``alert.break_glass`` entry is written first).
    Every attempt is audited first. All of the person's rows are decrypted before anything is
    returned: one that does not decrypt fails the whole call, so there is never partial output.
    """
    target = f"{TABLE}/{person_key}"

    def record(action: str, **details: Any) -> None:
        audit.append(
            lake,
            key=audit_key,
            actor=actor,
            role=role,
            action=action,
            object=target,
            run_id=run_id,
            purpose=purpose,
            details={"reason": reason, **details},
        )

    _check_reidentifier(lake, person_key, role=role, reason=reason, actor=actor, audit_key=audit_key,
                        purpose=purpose, attempted="vault.reidentify", run_id=run_id)
    safeguard: dict[str, Any]
    if request_id is not None:
        found = _requests(lake, audit_key).get(request_id)
        why = None
        if found is None or found["object"] != target:
            why = f"no re-identification request {request_id} for person {person_key}"
        elif found["requester"] != actor:
            why = f"request {request_id} was filed by another principal; file your own"
        elif found["approver"] is None:
            why = f"request {request_id} is not approved yet: another reidentifier must run `medlake vault approve`"
        elif found["used"]:
            why = f"request {request_id} was already used: file a new one"
        if why is not None:
            record("access.denied", attempted="vault.reidentify", why=why, request_id=request_id)
            raise ApprovalMissing(why)
        safeguard = {"request_id": request_id, "approved_by": found["approver"] if found else None}
    elif break_glass:
        record("alert.break_glass", attempted="vault.reidentify")
        safeguard = {"break_glass": True}
    else:
        why = (f"re-identifying person {person_key} needs a second reidentifier's approval (--request) "
               "or a break-glass emergency (--break-glass)")
        record("access.denied", attempted="vault.reidentify", why=why)
        raise ApprovalMissing(why)

    # Cast: files written by MERGE hold string_view, and a bare string comparison fails on them.
    rows = _rows(lake, filter=pc.field("person_key").cast(pa.string()) == person_key)
    if not rows:
        record("vault.reidentify", outcome="not_found", records=0, **safeguard)
        raise NotInVault(f"no identity is stored in the vault for person {person_key}")
    try:
        try:
            keyring = keyring.refreshed()
        except KeyringError as exc:
            raise VaultKeyError(f"the vault keyring cannot be loaded: {exc}") from None
        found_rows = [
            {"source_key": row["source_key"], "key_id": row["key_id"], "identity": json.loads(_open(row, keyring))}
            for row in sorted(rows, key=lambda r: str(r["source_key"]))
        ]
    except VaultKeyError as exc:
        record("vault.reidentify", outcome="key_error", records=0, **safeguard)
        raise exc from None
    record("vault.reidentify", outcome="ok", records=len(found_rows), **safeguard)
    return {"person_key": person_key, "records": found_rows}


def _check_reidentifier(
    lake: Lake,
    person_key: str,
    *,
    role: str,
    reason: str,
    actor: str,
    audit_key: bytes,
    purpose: str | None,
    attempted: str,
    run_id: str | None = None,
) -> None:
    """Refuse (audited) anyone but the reidentifier role, and any request without a reason."""

    def refuse(why: str) -> AccessDenied:
        audit.append(lake, key=audit_key, actor=actor, role=role, action="access.denied",
                     object=f"{TABLE}/{person_key}", run_id=run_id, purpose=purpose,
                     details={"reason": reason, "attempted": attempted, "why": why})
        return AccessDenied(why)

    if role != REIDENTIFIER:
        raise refuse(f"role {role!r} may not re-identify person {person_key}: only {REIDENTIFIER!r} may")
    if not reason or not reason.strip():
        raise refuse(f"re-identifying person {person_key} needs a reason; none was given")


def _requests(lake: Lake, audit_key: bytes) -> dict[str, dict[str, Any]]:
    """Re-identification requests, their approvals and uses, from the verified audit chain."""
    checked = audit.verify(lake, key=audit_key)
    if not checked.ok:
        raise audit.AuditLogBroken(f"the audit log is broken ({checked.problem}): no approval can be trusted")
    found: dict[str, dict[str, Any]] = {}
    for entry in audit.read(lake):
        if entry.action not in ("vault.request", "vault.approve", "vault.reidentify") or not entry.details:
            continue
        details = json.loads(entry.details)
        request_id = details.get("request_id")
        if not request_id:
            continue
        if entry.action == "vault.request":
            found[request_id] = {"object": entry.object, "requester": entry.actor, "approver": None, "used": False}
        elif request_id in found and entry.action == "vault.approve" and entry.actor != found[request_id]["requester"]:
            found[request_id]["approver"] = entry.actor
        elif request_id in found and entry.action == "vault.reidentify" and details.get("outcome") == "ok":
            found[request_id]["used"] = True
    return found


def linkage_identities(
    lake: Lake,
    *,
    keyring: Keyring,
    audit_key: bytes,
    run_id: str,
    skip: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Every stored identity but those of ``skip`` (source keys), decrypted for entity resolution.

    A system action of the clean stage only (``jobs.clean.dedup``): the identities stay in
    memory, never leave the stage and are never returned to a user. Every call that decrypts is audited
    once, as ``vault.link`` with counts only (never an identity), after decryption succeeded or failed.
    Each identity comes back as stored, with its ``person_key`` and ``source_key``.
    """
    skipped = set(skip)
    rows = [r for r in _rows(lake) if r["source_key"] not in skipped]
    if not rows:
        return []  # nothing decrypted, nothing to audit

    def record(outcome: str, records: int) -> None:
        audit.append(
            lake,
            key=audit_key,
            actor="medlake_pipeline",
            role="system",
            action="vault.link",
            object=TABLE,
            run_id=run_id,
            purpose="entity_resolution",
            details={
                "outcome": outcome,
                "records": records,
                "persons": len({r["person_key"] for r in rows}),
            },
        )

    try:
        keyring = keyring.refreshed()
        found = [
            {**json.loads(_open(row, keyring)), "person_key": row["person_key"], "source_key": row["source_key"]}
            for row in rows
        ]
    except (VaultKeyError, KeyringError) as exc:
        record("key_error", 0)
        raise VaultKeyError(f"the vault cannot be read for linkage: {exc}") from None
    record("ok", len(found))
    return found


def follow_persons(
    lake: Lake,
    person_of: Mapping[str, str],
    *,
    keyring: Keyring,
    audit_key: bytes,
    run_id: str,
    actor: str = "medlake_pipeline",
    role: str = "system",
) -> int:
    """Vault identities stored under another person than their record's now (``person_of``: source_key →
    person_key, the crosswalk), after a merge or a split: re-encrypted under the record's person (the
    AAD binds the person_key). Only those rows are decrypted, in memory; audited once as
    ``vault.rekey`` with counts only. Returns how many identities moved."""
    stale = [
        r for r in _rows(lake)
        if r["source_key"] in person_of and r["person_key"] != person_of[r["source_key"]]
    ]
    if not stale:
        return 0

    def record(outcome: str, records: int) -> None:
        audit.append(
            lake, key=audit_key, actor=actor, role=role, action="vault.rekey", object=TABLE,
            run_id=run_id, purpose="entity_resolution",
            details={"outcome": outcome, "records": records,
                     "persons": len({person_of[r["source_key"]] for r in stale})},
        )

    try:
        keyring = keyring.refreshed()
        moved = [
            {**json.loads(_open(r, keyring)), "person_key": person_of[r["source_key"]], "source_key": r["source_key"]}
            for r in stale
        ]
    except (VaultKeyError, KeyringError) as exc:
        record("key_error", 0)
        raise VaultKeyError(f"the vault cannot be re-keyed to the resolved persons: {exc}") from None
    store(lake, moved, keyring=keyring)
    record("ok", len(moved))
    return len(moved)


def source_keys(lake: Lake) -> set[str]:
    """The source keys the vault holds an identity for (nothing decrypted, nothing audited)."""
    return {str(r["source_key"]) for r in _rows(lake, columns=["source_key"])}


def linkage_candidates(
    lake: Lake,
    wanted: Collection[str],
    *,
    keyring: Keyring,
    audit_key: bytes,
    run_id: str,
) -> list[dict[str, Any]]:
    """The identities of the ``wanted`` source keys only, decrypted for entity resolution.

    The clean stage asks for the earlier records whose keyed blocking tokens collide with this
    run's (``reference.identity_tokens``), never for the whole vault. Like
    :func:`linkage_identities`: in memory only, audited once as ``vault.link`` with counts only
    (records asked for, decrypted, persons), after decryption succeeded or failed.
    """
    asked = set(wanted)
    if not asked:
        return []
    rows = _rows(lake, filter=pc.field("source_key").cast(pa.string()).isin(pa.array(sorted(asked), pa.string())))

    def record(outcome: str, records: int) -> None:
        audit.append(
            lake,
            key=audit_key,
            actor="medlake_pipeline",
            role="system",
            action="vault.link",
            object=TABLE,
            run_id=run_id,
            purpose="entity_resolution",
            details={
                "outcome": outcome,
                "scope": "blocking_candidates",
                "asked": len(asked),
                "records": records,
                "persons": len({r["person_key"] for r in rows}),
            },
        )

    try:
        keyring = keyring.refreshed()
        found = [
            {**json.loads(_open(row, keyring)), "person_key": row["person_key"], "source_key": row["source_key"]}
            for row in rows
        ]
    except (VaultKeyError, KeyringError) as exc:
        record("key_error", 0)
        raise VaultKeyError(f"the vault cannot be read for linkage: {exc}") from None
    record("ok", len(found))
    return found


# ---------------------------------------------------------------------------------------------
# rotate


def rotate_key(
    lake: Lake,
    *,
    keyring: Keyring,
    audit_key: bytes,
    actor: str,
    new_key_id: str | None = None,
    role: str = "data_engineer",
    retire_old: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Rotation:
    """Re-encrypt every vault row under a new key; person_keys and identities do not change.

    Steps, each crash-safe: (1) the new key is written to the keyring (not active yet); (2) every
    row is decrypted with its own key id and re-encrypted under the new key, in memory; (3) the
    re-encrypted table replaces the old one in one Delta transaction; (4) the new key becomes
    active; (5) with ``retire_old``, old data files are vacuumed and keys no row uses any more are
    retired (moved to ``retired/`` in a folder keyring). A crash before (3) leaves the old rows and
    keys; after it, the new rows and both keys. ``on_step`` is called after each step by name
    (see :data:`ROTATION_STEPS`): tests use it to crash there.
    """
    step = on_step or (lambda _name: None)
    root = lake.path(TABLE)
    with audit.exclusive(root / LOCK_FILE):
        keyring = keyring.refreshed()
        if new_key_id is not None and new_key_id in keyring:
            if new_key_id == keyring.active_id:
                raise KeyringError(f"key {new_key_id!r} is already the active vault key: name a new key to rotate to")
        else:
            before = set(keyring.ids)
            keyring = keyring.with_new_key(new_key_id)
            (new_key_id,) = set(keyring.ids) - before
        step("key_created")

        exists = DeltaTable.is_deltatable(str(root))
        table = DeltaTable(str(root)) if exists else None
        rows = _rows(lake) if exists else []
        from_ids = tuple(sorted(Counter(str(r["key_id"]) for r in rows)))
        new_key = keyring.key(new_key_id)
        reencrypted = []
        for row in rows:
            plaintext = _open(row, keyring)
            nonce, ciphertext = encrypt(new_key, plaintext, aad=_aad(row["person_key"], row["source_key"], new_key_id))
            reencrypted.append({**row, "key_id": new_key_id, "nonce": nonce, "ciphertext": ciphertext})
        step("reencrypted")

        details = {"from": list(from_ids), "to": new_key_id, "rows": len(rows)}
        audit.append(lake, key=audit_key, actor=actor, role=role, action="vault.rotate_key", object=TABLE,
                     details={"status": "started", **details})
        version: int | None = None
        if table is not None:
            try:
                # No retries: the new table must replace exactly the snapshot that was re-encrypted.
                write_deltalake(
                    table,
                    pa.Table.from_pylist(reencrypted, schema=VAULT.schema),
                    mode="overwrite",
                    commit_properties=CommitProperties(max_commit_retries=0),
                )
            except CommitFailedError:
                raise VaultChanged(
                    f"the vault at {root} changed while it was being re-encrypted; nothing was changed, "
                    "run the rotation again"
                ) from None
            version = DeltaTable(str(root)).version()
        step("committed")

        keyring = keyring.activate(new_key_id)
        step("activated")

        retired: list[str] = []
        if retire_old:
            if table is not None:
                DeltaTable(str(root)).vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
            in_use = key_ids_in_use(lake)
            for key_id in keyring.ids:
                if key_id != new_key_id and key_id not in in_use:
                    keyring = keyring.retire(key_id)
                    retired.append(key_id)
        step("retired")
        audit.append(lake, key=audit_key, actor=actor, role=role, action="vault.rotate_key", object=TABLE,
                     details={"status": "completed", "retired": retired, "version": version, **details})
        return Rotation(new_key_id, len(rows), from_ids, tuple(retired), version, keyring)


def key_ids_in_use(lake: Lake) -> dict[str, int]:
    """How many vault rows each key id encrypts."""
    if not DeltaTable.is_deltatable(str(lake.path(TABLE))):
        return {}
    return dict(Counter(str(r["key_id"]) for r in _rows(lake, columns=["key_id"])))


# ---------------------------------------------------------------------------------------------
# helpers


def _records(identities: pa.Table | Iterable[Mapping[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    rows = identities.to_pylist() if isinstance(identities, pa.Table) else list(identities)
    records: list[tuple[str, str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        person_key, source_key = row.get("person_key"), row.get("source_key")
        if not isinstance(person_key, str) or not person_key or not isinstance(source_key, str) or not source_key:
            raise ValueError(f"identity #{index} needs a non-empty person_key and source_key")
        if source_key in seen:
            raise ValueError(f"source_key {source_key} appears more than once in this batch (identity #{index})")
        seen.add(source_key)
        records.append((person_key, source_key, {k: v for k, v in row.items() if k not in ("person_key", "source_key")}))
    return records


def _rows(lake: Lake, *, filter: Any = None, columns: list[str] | None = None) -> list[dict[str, Any]]:
    root = lake.path(TABLE)
    if not DeltaTable.is_deltatable(str(root)):
        return []
    dataset = DeltaTable(str(root)).to_pyarrow_dataset()
    rows: list[dict[str, Any]] = dataset.to_table(filter=filter, columns=columns, use_threads=False).to_pylist()
    return rows


def _open(row: Mapping[str, Any], keyring: Keyring) -> bytes:
    """The identity JSON of one vault row, or :class:`VaultKeyError` naming the row and its key id."""
    key_id = str(row["key_id"])
    where = f"vault row of person {row['person_key']} (source {row['source_key']})"
    try:
        key = keyring.key(key_id)
    except KeyringError as exc:
        raise VaultKeyError(f"{where} is encrypted under key {key_id!r}, which is missing: {exc}") from None
    try:
        plaintext: bytes = decrypt(
            key, row["nonce"], row["ciphertext"], aad=_aad(row["person_key"], row["source_key"], key_id)
        )
    except DecryptionFailed:
        raise VaultKeyError(
            f"{where} does not decrypt under key {key_id!r} from {keyring.source}: "
            "that is not the key it was encrypted with, or the row was altered"
        ) from None
    return plaintext


def _aad(person_key: str, source_key: str, key_id: str) -> bytes:
    aad: bytes = associated_data(TABLE, person_key, source_key, key_id)
    return aad


def _json_value(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"an identity field of type {type(value).__name__} cannot be stored in the vault")


VAULT_KEYS_ENV = "MEDLAKE_VAULT_KEYS"
VAULT_ACTIVE_KEY_ENV = "MEDLAKE_VAULT_ACTIVE_KEY"


def vault_keyring(settings: Settings, *, create: bool) -> Keyring:
    """The vault keyring: ``MEDLAKE_VAULT_KEYS`` when set, else the folder ``<keys>/vault/``."""
    if os.environ.get(VAULT_KEYS_ENV):
        return Keyring.from_json(
            os.environ[VAULT_KEYS_ENV], active=os.environ.get(VAULT_ACTIVE_KEY_ENV) or None, source=VAULT_KEYS_ENV
        )
    return Keyring.from_dir(settings.keys.dir / "vault", create=create)


