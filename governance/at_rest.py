"""Encryption at rest of the raw PHI the lake keeps: envelope encryption under the vault's keys.

Bronze keeps every record verbatim and the quarantine keeps the records it refused, so their
PHI-bearing columns (the registry's ``phi_columns``: raw payloads, source file names that embed
patient names, identifiers such as ``bronze.vitals_samples.patient_id``) are encrypted per value:

- each table has its own random 256-bit **data key**, stored in ``<lake>/data_keys/`` (a Delta
  table) only **wrapped** (AES-256-GCM) by the vault keyring's active master key
  (:func:`medlake.governance.vault.vault_keyring`), with the master key id per row;
- raw payloads (``raw``, ``raw_record``) are zlib-compressed, then sealed with **randomized
  AES-256-GCM** (a fresh nonce per value; compressing first keeps bronze's size near the
  plaintext's, as ciphertext does not compress: the compressed length is what the ciphertext's
  length shows); every other PHI column with **deterministic AES-SIV**, so equal values give equal
  ciphertexts under one data key and equality lookups (``Lake.read(where=...)``, MERGE on the
  vitals watermark's file name) keep working. The price, stated: equal file names or ids are
  recognisable as equal in the ciphertext, nothing more;
- a stored value is text ``menc:1:<z|d>:<data key id>:<base64>``: the data key id travels with
  every value, and the AAD binds it to its table, column and data key id;
- files the lake keeps under ``raw/`` (the DICOM originals, whose headers hold PHI) are sealed
  whole with AES-256-GCM under the data key of their folder (``raw.dicom``), the AAD binding them
  to their path.

Reading the files without the keys shows only those strings. A :class:`EnvelopeCodec` on the
:class:`~medlake.lake.Lake` (:func:`lake_for`) seals on write and opens on read; it loads the
master keyring only when a value needs it. Rotating the master key (:func:`rotate_key`, behind
``medlake vault rotate-key``) re-wraps the data keys; rows are not rewritten.
"""

from __future__ import annotations

import base64
import functools
import secrets
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from deltalake import CommitProperties, DeltaTable, write_deltalake

from medlake.config import Settings
from medlake.governance import audit, vault
from medlake.governance.crypto import (
    NONCE_BYTES,
    DecryptionFailed,
    Keyring,
    KeyringError,
    associated_data,
    decrypt,
    encrypt,
    new_key_id,
)
from medlake.governance.pseudonyms import scrub_file_names
from medlake.keys import KEY_BYTES, project_key
from medlake.lake import Lake
from medlake.registry import QUARANTINE, TABLES, TS, VITALS_WATERMARK, TableSpec
from medlake.storage import lake_path

Mode = Literal["random", "deterministic"]

PREFIX = "menc:1:"
DATA_KEYS_TABLE = "data_keys"
LOCK_FILE = "_lock"
#: raw payloads: randomized encryption (no lookups on them); other PHI columns: deterministic
RANDOMIZED = frozenset({"raw", "raw_record"})
#: files kept below the lake root that are sealed whole: the archived originals (DICOM)
SEALED_FILES = ("raw/",)
FILE_MAGIC = b"MEDLAKE-SEALED-1\n"
#: what :func:`rotate_key` calls ``on_step`` with, in order
ROTATION_STEPS = ("key_created", "reencrypted", "committed", "activated", "rewrapped", "retired")

DATA_KEYS = TableSpec(
    name=DATA_KEYS_TABLE,
    schema=pa.schema(
        [
            pa.field("table_name", pa.string(), nullable=False),
            pa.field("data_key_id", pa.string(), nullable=False),
            pa.field("master_key_id", pa.string(), nullable=False),
            pa.field("nonce", pa.binary(), nullable=False),
            pa.field("wrapped", pa.binary(), nullable=False),
            pa.field("created_at", TS, nullable=False),
        ]
    ),
    key=("data_key_id",),
    description="Per table, the data key its PHI columns are encrypted under, wrapped by a vault master key.",
)


class AtRestKeyError(RuntimeError):
    """An encrypted value cannot be opened: its data key is missing, does not unwrap, or the value was altered."""


def encrypted_columns() -> dict[str, dict[str, Mode]]:
    """Table → column → how it is encrypted: the PHI columns of bronze, the quarantine, the vitals watermark."""
    found: dict[str, dict[str, Mode]] = {}
    for spec in TABLES.values():
        if spec.phi_columns and (
            spec.layer == "bronze" or spec.name in (QUARANTINE.name, VITALS_WATERMARK.name)
        ):
            found[spec.name] = {
                c: "random" if c in RANDOMIZED else "deterministic" for c in spec.phi_columns
            }
    return found


def lake_for(settings: Settings, root: Path) -> Lake:
    """The lake at ``root`` with its raw PHI sealed and opened under the settings' vault keyring,
    and quarantine reasons naming files by keyed reference (under the project key)."""
    return Lake(
        root,
        codec=EnvelopeCodec(
            root,
            functools.partial(settings_keyring, settings),
            reference_key=functools.partial(project_key, settings),
        ),
    )


def settings_keyring(settings: Settings) -> Keyring:
    """The vault keyring of the settings (made on first use locally): a picklable loader, so a
    codec sent to a worker process or a Spark executor can load a key it lacks there."""
    return vault.vault_keyring(settings, create=settings.env == "local")


# ---------------------------------------------------------------------------------------------
# data keys


def _unwrap(row: Mapping[str, Any], keyring: Keyring) -> bytes:
    data_key_id, master_key_id = str(row["data_key_id"]), str(row["master_key_id"])
    where = f"data key {data_key_id} of {row['table_name']}"
    try:
        master = keyring.key(master_key_id)
    except KeyringError as exc:
        raise AtRestKeyError(
            f"{where} is wrapped by master key {master_key_id!r}, which is missing: {exc}"
        ) from None
    try:
        key: bytes = decrypt(
            master,
            row["nonce"],
            row["wrapped"],
            aad=_wrap_aad(row["table_name"], data_key_id, master_key_id),
        )
    except DecryptionFailed:
        raise AtRestKeyError(
            f"{where} does not unwrap under master key {master_key_id!r} from {keyring.source}: "
            "that is not the key it was wrapped with, or the row was altered"
        ) from None
    return key


def _wrap(
    table: str, data_key_id: str, key: bytes, keyring: Keyring, created_at: datetime
) -> dict[str, Any]:
    nonce, wrapped = encrypt(
        keyring.active_key, key, aad=_wrap_aad(table, data_key_id, keyring.active_id)
    )
    return {
        "table_name": table,
        "data_key_id": data_key_id,
        "master_key_id": keyring.active_id,
        "nonce": nonce,
        "wrapped": wrapped,
        "created_at": created_at,
    }


def _wrap_aad(table: str, data_key_id: str, master_key_id: str) -> bytes:
    aad: bytes = associated_data(DATA_KEYS_TABLE, table, data_key_id, master_key_id)
    return aad


def data_key_rows(root: Path) -> list[dict[str, Any]]:
    """Every wrapped data key of the lake at ``root`` (none before anything was encrypted)."""
    path = lake_path(root) / DATA_KEYS_TABLE
    if not DeltaTable.is_deltatable(str(path)):
        return []
    rows: list[dict[str, Any]] = (
        DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False).to_pylist()
    )
    return rows


def _create_data_key(root: Path, table: str, keyring: Callable[[], Keyring]) -> None:
    """Give ``table`` a data key unless it has one; under the lock a rotation also holds."""
    path = lake_path(root) / DATA_KEYS_TABLE
    with audit.exclusive(path / LOCK_FILE):
        if any(r["table_name"] == table for r in data_key_rows(root)):
            return  # another writer made it first
        ring = keyring().refreshed()
        row = _wrap(
            table, f"dk-{new_key_id()}", secrets.token_bytes(KEY_BYTES), ring, datetime.now(UTC)
        )
        write_deltalake(
            str(path), pa.Table.from_pylist([row], schema=DATA_KEYS.schema), mode="append"
        )


@dataclass(frozen=True)
class _DataKey:
    """One data key and the two keys derived from it: AES-256-GCM and AES-256-SIV (64 bytes)."""

    key_id: str
    gcm: AESGCM = field(repr=False)
    siv: AESSIV = field(repr=False)
    #: the data key itself: what travels when the codec is sent to a worker or an executor
    raw: bytes = field(repr=False, default=b"")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_data_key, (self.key_id, self.raw))

    @classmethod
    def of(cls, key_id: str, key: bytes) -> _DataKey:
        def derive(length: int, label: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)

        return cls(
            key_id,
            AESGCM(derive(32, b"medlake.at_rest.gcm")),
            AESSIV(derive(64, b"medlake.at_rest.siv")),
            key,
        )


def _data_key(key_id: str, key: bytes) -> _DataKey:
    """A data key rebuilt from its bytes (how a pickled codec's keys arrive in a worker)."""
    return _DataKey.of(key_id, key)


# ---------------------------------------------------------------------------------------------
# the codec


class EnvelopeCodec:
    """Seals the PHI columns of :func:`encrypted_columns` on write and opens them on read.

    ``keyring`` is called (once) only when a data key must be unwrapped or made, so a lake with
    nothing encrypted is read without any key.
    """

    def __init__(
        self,
        root: Path,
        keyring: Callable[[], Keyring],
        *,
        columns: Mapping[str, Mapping[str, Mode]] | None = None,
        reference_key: Callable[[], bytes] | None = None,
    ):
        self.root = Path(root)
        self._load_keyring = keyring
        self._load_reference_key = reference_key
        self._reference_key: bytes | None = None
        self._keyring: Keyring | None = None
        self.columns = dict(columns if columns is not None else encrypted_columns())
        self._keys: dict[str, dict[str, _DataKey]] = {}

    def __repr__(self) -> str:
        return f"EnvelopeCodec({self.root})"

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process or a Spark executor gets: the data keys already unwrapped (as
        bytes), never the master keyring; a key it lacks is loaded there from the keyring."""
        state = dict(self.__dict__)
        state["_keyring"] = None
        return state

    # -- keys ------------------------------------------------------------------------------

    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = self._load_keyring()
        return self._keyring

    def _data_keys(self, table: str, *, refresh: bool = False) -> dict[str, _DataKey]:
        """The table's data keys by id, unwrapped (all of them before any is used: no partial output)."""
        if refresh or table not in self._keys:
            rows = sorted(
                (r for r in data_key_rows(self.root) if r["table_name"] == table),
                key=lambda r: r["created_at"],
            )
            if rows:
                ring = self.keyring()
                if any(str(r["master_key_id"]) not in ring for r in rows):
                    ring = self._keyring = ring.refreshed()  # a rotation may have re-wrapped them
                self._keys[table] = {
                    str(r["data_key_id"]): _DataKey.of(str(r["data_key_id"]), _unwrap(r, ring))
                    for r in rows
                }
            else:
                self._keys.pop(table, None)
                return {}
        return self._keys[table]

    def _active(self, table: str) -> _DataKey:
        keys = self._data_keys(table)
        if not keys:
            _create_data_key(self.root, table, self.keyring)
            keys = self._data_keys(table, refresh=True)
        return list(keys.values())[-1]

    def _key(self, table: str, column: str, key_id: str) -> _DataKey:
        keys = self._data_keys(table)
        if key_id not in keys:
            keys = self._data_keys(table, refresh=True)
        if key_id not in keys:
            raise AtRestKeyError(
                f"{table}.{column} holds values under data key {key_id!r}, which {self.root / DATA_KEYS_TABLE} does not hold"
            )
        return keys[key_id]

    def ready(self, name: str) -> None:
        """Make sure table ``name``'s data key exists and is loaded, before workers or executors
        seal its rows in parallel (each would otherwise race to create one)."""
        if self.columns.get(name):
            self._active(name)

    # -- the protocol ----------------------------------------------------------------------

    def encode(self, name: str, data: pa.Table) -> pa.Table:
        if name == QUARANTINE.name:
            data = self._scrub_reasons(data)
        columns = {c: m for c, m in self.columns.get(name, {}).items() if c in data.column_names}
        if not columns or data.num_rows == 0:
            return data
        key = self._active(name)
        for column, mode in columns.items():
            seal = _sealer(key, name, column, mode)
            data = _map_column(data, column, seal)
        return data

    def _scrub_reasons(self, data: pa.Table) -> pa.Table:
        """Quarantine reasons with the record's file name replaced by its keyed reference: a parser's
        message may quote the file name, which can embed a patient's name; the name itself stays
        only in the encrypted ``source_file``."""
        if self._load_reference_key is None or data.num_rows == 0:
            return data
        if "reason" not in data.column_names or "source_file" not in data.column_names:
            return data
        if self._reference_key is None:
            self._reference_key = self._load_reference_key()
        key = self._reference_key
        files = data.column("source_file").to_pylist()
        if not any(f and not str(f).startswith(PREFIX) for f in files):
            return data
        reasons = [
            None if reason is None else scrub_file_names(key, reason, [f] if f and not f.startswith(PREFIX) else [])
            for reason, f in zip(data.column("reason").to_pylist(), files, strict=True)
        ]
        index = data.schema.get_field_index("reason")
        return data.set_column(index, data.schema.field(index), pa.array(reasons, data.schema.field(index).type))

    def decode(self, name: str, data: pa.Table) -> pa.Table:
        columns = [c for c in self.columns.get(name, {}) if c in data.column_names]
        row = _row_namer(name, data)
        for column in columns:
            data = _map_column(data, column, self._opener(name, column), row=row)
        return data

    def lookup(self, name: str, column: str, value: str) -> list[str] | None:
        mode = self.columns.get(name, {}).get(column)
        if mode is None:
            return None
        if mode == "random":
            raise ValueError(
                f"{name}.{column} is encrypted with a random nonce per value: it cannot be filtered on"
            )
        # the plaintext too: rows written before the table was encrypted
        return [
            value,
            *(_seal_deterministic(k, name, column, value) for k in self._data_keys(name).values()),
        ]

    def seal_file(self, relpath: str, data: bytes) -> bytes:
        if not relpath.startswith(SEALED_FILES):
            return data
        key = self._active(_file_table(relpath))
        nonce = secrets.token_bytes(NONCE_BYTES)
        tag = key.key_id.encode("ascii")
        sealed = key.gcm.encrypt(nonce, data, _file_aad(relpath, key.key_id))
        return FILE_MAGIC + bytes([len(tag)]) + tag + nonce + sealed

    def open_file(self, relpath: str, data: bytes) -> bytes:
        if not data.startswith(FILE_MAGIC):
            return data  # archived before the lake was encrypted
        start = len(FILE_MAGIC) + 1
        key_id = data[start : start + data[start - 1]].decode("ascii")
        body = data[start + len(key_id) :]
        key = self._key(_file_table(relpath), "file", key_id)
        try:
            opened: bytes = key.gcm.decrypt(
                body[:NONCE_BYTES], body[NONCE_BYTES:], _file_aad(relpath, key_id)
            )
        except InvalidTag:
            raise AtRestKeyError(
                f"archived file {relpath} does not decrypt under its data key {key_id!r}: "
                "the file was altered or moved from another path"
            ) from None
        return opened

    def _opener(self, table: str, column: str) -> Callable[[str], str]:
        cache: dict[str, str] = {}

        def open_(value: str) -> str:
            if not value.startswith(PREFIX):
                return value  # written before the table was encrypted
            if value in cache:
                return cache[value]
            try:
                mode, key_id, payload = value[len(PREFIX) :].split(":", 2)
                blob = base64.b64decode(payload, validate=True)
            except ValueError:
                raise AtRestKeyError(
                    f"a value of {table}.{column} is not a well-formed sealed value"
                ) from None
            key = self._key(table, column, key_id)
            aad = _aad(table, column, key_id)
            try:
                if mode == "z":
                    plain = zlib.decompress(
                        key.gcm.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
                    )
                elif mode == "d":
                    plain = key.siv.decrypt(blob, [aad])
                else:
                    raise AtRestKeyError(
                        f"a value of {table}.{column} names an unknown sealing mode {mode!r}"
                    )
            except InvalidTag:
                raise AtRestKeyError(
                    f"a value of {table}.{column} does not decrypt under its data key {key_id!r}: "
                    "the value was altered or moved from another table or column"
                ) from None
            text = plain.decode("utf-8")
            if mode == "d":
                cache[value] = text
            return text

        return open_


def _file_table(relpath: str) -> str:
    """The data key a kept file is sealed under: one per folder below ``raw/`` (``raw.dicom``)."""
    return ".".join(relpath.split("/")[:2])


def _file_aad(relpath: str, key_id: str) -> bytes:
    aad: bytes = associated_data("at_rest_file", relpath, key_id)
    return aad


def _aad(table: str, column: str, key_id: str) -> bytes:
    aad: bytes = associated_data("at_rest", table, column, key_id)
    return aad


def _seal_deterministic(key: _DataKey, table: str, column: str, value: str) -> str:
    blob = key.siv.encrypt(value.encode("utf-8"), [_aad(table, column, key.key_id)])
    return f"{PREFIX}d:{key.key_id}:{base64.b64encode(blob).decode('ascii')}"


def _sealer(key: _DataKey, table: str, column: str, mode: Mode) -> Callable[[str], str]:
    if mode == "deterministic":
        cache: dict[str, str] = {}

        def deterministic(value: str) -> str:
            if value not in cache:
                cache[value] = _seal_deterministic(key, table, column, value)
            return cache[value]

        return deterministic
    aad = _aad(table, column, key.key_id)

    def randomized(value: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        blob = nonce + key.gcm.encrypt(nonce, zlib.compress(value.encode("utf-8")), aad)
        return f"{PREFIX}z:{key.key_id}:{base64.b64encode(blob).decode('ascii')}"

    return randomized


def _map_column(
    data: pa.Table,
    column: str,
    fn: Callable[[str], str],
    *,
    row: Callable[[int], str] | None = None,
) -> pa.Table:
    """The table with ``fn`` applied to every non-null string of a string or list-of-string column.

    ``row`` names a row (by its key) in the error when ``fn`` cannot open one of its values.
    """
    index = data.schema.get_field_index(column)
    field_ = data.schema.field(index)
    is_list = pa.types.is_list(field_.type) or pa.types.is_large_list(field_.type)
    mapped: list[Any] = []
    for i, v in enumerate(data.column(index).to_pylist()):
        try:
            if v is None:
                mapped.append(None)
            elif is_list:
                mapped.append([None if x is None else fn(x) for x in v])
            else:
                mapped.append(fn(v))
        except AtRestKeyError as exc:
            raise AtRestKeyError(f"{exc} ({row(i)})" if row else str(exc)) from None
    type_ = pa.string() if pa.types.is_string_view(field_.type) else field_.type
    return data.set_column(index, field_.with_type(type_), pa.array(mapped, type=type_))


def _row_namer(name: str, data: pa.Table) -> Callable[[int], str]:
    """How an error names row ``i``: by the table's key columns when the read has them (never PHI)."""
    spec = TABLES.get(name)
    key = [k for k in (spec.key if spec else ()) if k in data.column_names]
    key = [k for k in key if k not in encrypted_columns().get(name, {})]

    def row(i: int) -> str:
        if not key:
            return f"row {i} of the read"
        return "record " + ", ".join(f"{k}={data.column(k)[i].as_py()}" for k in key)

    return row


# ---------------------------------------------------------------------------------------------
# master key rotation


@dataclass(frozen=True)
class Rewrap:
    """What re-wrapping did: data keys moved to the active master key, of how many."""

    rewrapped: int
    data_keys: int
    master_key_id: str


def rewrap(lake: Lake, *, keyring: Keyring, vacuum: bool = False) -> Rewrap:
    """Re-wrap every data key not under the keyring's active master key, in one Delta transaction.

    Rows are not touched: their data keys do not change. A crash before the commit leaves the old
    wraps (their master keys are still in the keyring), after it the new ones. ``vacuum`` then
    deletes the files of the old wraps.
    """
    path = lake.path(DATA_KEYS_TABLE)
    with audit.exclusive(path / LOCK_FILE):
        ring = keyring.refreshed()
        rows = data_key_rows(lake.root)
        stale = [r for r in rows if r["master_key_id"] != ring.active_id]
        if stale:
            moved = [
                _wrap(r["table_name"], r["data_key_id"], _unwrap(r, ring), ring, r["created_at"])
                if r["master_key_id"] != ring.active_id
                else r
                for r in rows
            ]
            write_deltalake(
                DeltaTable(str(path)),
                pa.Table.from_pylist(moved, schema=DATA_KEYS.schema),
                mode="overwrite",
                commit_properties=CommitProperties(max_commit_retries=0),
            )
            if vacuum:
                DeltaTable(str(path)).vacuum(
                    retention_hours=0, dry_run=False, enforce_retention_duration=False
                )
        return Rewrap(len(stale), len(rows), ring.active_id)


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
) -> vault.Rotation:
    """Rotate the master key: the vault re-encrypted under a new key, and every data key re-wrapped.

    :func:`vault.rotate_key` does the vault's steps; right after it makes the new key active and
    before it retires the old ones, the data keys are re-wrapped under the new key
    (:func:`rewrap`, step ``rewrapped``). So a crash at any step leaves every key a vault row or a
    data key needs in the keyring, and running the rotation again finishes the job; the vault
    retires only keys no vault row uses, which by then no data key uses either (a data key made
    meanwhile is wrapped under the active key). ``on_step``: see :data:`ROTATION_STEPS`.
    """
    step = on_step or (lambda _name: None)

    def after(name: str) -> None:
        step(name)
        if name == "activated":
            done = rewrap(lake, keyring=keyring, vacuum=retire_old)
            if done.data_keys:
                audit.append(
                    lake,
                    key=audit_key,
                    actor=actor,
                    role=role,
                    action="at_rest.rewrap",
                    object=DATA_KEYS_TABLE,
                    details={
                        "to": done.master_key_id,
                        "rewrapped": done.rewrapped,
                        "data_keys": done.data_keys,
                    },
                )
            step("rewrapped")

    return vault.rotate_key(
        lake,
        keyring=keyring,
        audit_key=audit_key,
        actor=actor,
        new_key_id=new_key_id,
        role=role,
        retire_old=retire_old,
        on_step=after,
    )
