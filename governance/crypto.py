"""AES-256-GCM with key ids: the keyring every encrypted column in the lake is written under.

A key has an id (``v20261124T101500-3fa2``: when it was made, plus a random tag) that travels
with every ciphertext, so rows written under different keys can be read side by side during and
after a rotation. The associated data (AAD) binds a ciphertext to the record it belongs to and to
its key id: moving a ciphertext to another row, or relabelling its key id, makes it undecryptable.

A :class:`Keyring` comes from a folder of key files (``<id>.key``, 32 bytes as hex, 0600, made by
:func:`medlake.keys.load_or_create_key`) with an ``active`` file naming the key new data is
encrypted under, or from a JSON object ``{key_id: hex}`` the caller read from the environment.
Key bytes never appear in a repr, a message or a log line.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medlake.keys import KEY_BYTES, KeyMissing, load_or_create_key

NONCE_BYTES = 12
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ACTIVE_FILE = "active"
RETIRED_DIR = "retired"
_BLOB_VERSION = 1


class KeyringError(RuntimeError):
    """A key is missing from the keyring, malformed, or the keyring itself is inconsistent."""


class DecryptionFailed(RuntimeError):
    """A ciphertext does not open: wrong key for its key id, or the ciphertext or its AAD was altered."""


def new_key_id(now: datetime | None = None) -> str:
    """A fresh key id that sorts by creation time: ``v<UTC timestamp>-<random tag>``."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"v{stamp}-{secrets.token_hex(2)}"


def check_key_id(key_id: str) -> str:
    """The key id, if it is safe as a file name and a column value."""
    if not KEY_ID_PATTERN.match(key_id):
        raise KeyringError(
            f"bad key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return key_id


def associated_data(*parts: str) -> bytes:
    """The AAD that binds a ciphertext to its context (table, record keys, key id)."""
    return "\x1f".join(("medlake.aad.v1", *parts)).encode("utf-8")


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of the plaintext under the key; a fresh random 96-bit nonce every call."""
    _check_key_bytes(key)
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, *, aad: bytes) -> bytes:
    """The plaintext, or :class:`DecryptionFailed` when the key, the ciphertext or the AAD is wrong."""
    _check_key_bytes(key)
    if len(nonce) != NONCE_BYTES:
        raise DecryptionFailed(f"nonce is {len(nonce)} bytes, not {NONCE_BYTES}")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionFailed("authentication failed: wrong key for this key id, or the data was altered") from None


def seal(keyring: Keyring, plaintext: bytes, *, context: str) -> bytes:
    """One self-describing value (version, key id, nonce, ciphertext) under the active key.

    For encrypting a single column in place (e.g. a raw record in bronze): the key id travels
    inside the value. ``context`` names the record (``"bronze.fhir_resources/<record hash>"``)
    and must be given again to open it.
    """
    key_id = keyring.active_id
    nonce, ciphertext = encrypt(keyring.active_key, plaintext, aad=associated_data("sealed", context, key_id))
    tag = key_id.encode("ascii")
    return bytes([_BLOB_VERSION, len(tag)]) + tag + nonce + ciphertext


def sealed_key_id(blob: bytes) -> str:
    """The key id a sealed value was written under (to find what a rotation must re-encrypt)."""
    if len(blob) < 2 or blob[0] != _BLOB_VERSION or len(blob) < 2 + blob[1] + NONCE_BYTES:
        raise DecryptionFailed("not a medlake sealed value (bad header)")
    return blob[2 : 2 + blob[1]].decode("ascii")


def unseal(keyring: Keyring, blob: bytes, *, context: str) -> bytes:
    """The plaintext of a value made by :func:`seal` with the same context."""
    key_id = sealed_key_id(blob)
    start = 2 + blob[1]
    nonce, ciphertext = blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :]
    return decrypt(keyring.key(key_id), nonce, ciphertext, aad=associated_data("sealed", context, key_id))


@dataclass(frozen=True)
class Keyring:
    """Keys by id, and the id of the one new data is encrypted under."""

    keys: Mapping[str, bytes] = field(repr=False)
    active_id: str
    folder: Path | None = None
    source: str = "keyring"

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id} in {self.source} is {len(key)} bytes, not {KEY_BYTES}")
        if self.active_id not in self.keys:
            raise KeyringError(f"the active key {self.active_id!r} is not in {self.source}")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_id]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.keys

    def key(self, key_id: str) -> bytes:
        """The key of that id, or a :class:`KeyringError` saying where it was looked for."""
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyringError(
                f"key {key_id!r} is not in {self.source} (it holds {', '.join(self.ids)}): "
                "data encrypted under it cannot be read until the key is restored"
            ) from None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, folder: Path, *, create: bool = True) -> Keyring:
        """The keys in ``folder`` (``<id>.key``) and its ``active`` pointer; a first key is made when empty."""
        folder = Path(folder)
        keys = {path.stem: _read_key_file(path) for path in sorted(folder.glob("*.key"))}
        pointer = folder / ACTIVE_FILE
        if not keys and not pointer.exists():
            if not create:
                raise KeyringError(f"no keys in {folder}: nothing was ever encrypted there, or the key folder moved")
            key_id = new_key_id()
            keys[key_id] = _create_key_file(folder, key_id)
            write_atomically(pointer, key_id + "\n")
        if not pointer.exists():
            raise KeyringError(f"{folder} holds keys but no '{ACTIVE_FILE}' file naming the one in use")
        active_id = pointer.read_text().strip()
        if active_id not in keys:
            raise KeyringError(f"{pointer} names key {active_id!r}, but {folder} has no {active_id}.key")
        return cls(keys=keys, active_id=active_id, folder=folder, source=str(folder))

    @classmethod
    def from_json(cls, text: str, *, active: str | None = None, source: str = "MEDLAKE_VAULT_KEYS") -> Keyring:
        """Keys from a JSON object ``{key_id: hex}``; the active key is ``active``, else the last listed."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raise KeyringError(f"{source} is not JSON: expected an object {{key_id: hex}}") from None
        if not isinstance(raw, dict) or not raw:
            raise KeyringError(f"{source} must be a non-empty JSON object {{key_id: hex}}")
        keys: dict[str, bytes] = {}
        for key_id, value in raw.items():
            try:
                keys[check_key_id(str(key_id))] = bytes.fromhex(str(value))
            except ValueError:
                raise KeyringError(f"{source}: key {key_id!r} is not a hex string") from None
        return cls(keys=keys, active_id=active or list(keys)[-1], source=source)

    # -- changes (written to the folder when the keyring has one) ----------------------------

    def refreshed(self) -> Keyring:
        """The keyring as its folder holds it now (another process may have rotated); env keyrings as-is."""
        return Keyring.from_dir(self.folder, create=False) if self.folder else self

    def with_new_key(self, key_id: str | None = None) -> Keyring:
        """This keyring plus a new key (not active yet); in a folder keyring, written 0600 first."""
        key_id = check_key_id(key_id or new_key_id())
        if key_id in self.keys:
            raise KeyringError(f"key {key_id!r} already exists in {self.source}")
        if self.folder is None:
            raise KeyringError(
                f"cannot create key {key_id!r} in {self.source}: add it there (hex) and pass its id, then retry"
            )
        key = _create_key_file(self.folder, key_id)
        return replace(self, keys={**self.keys, key_id: key})

    def activate(self, key_id: str) -> Keyring:
        """New data goes under ``key_id`` from now on (its folder's ``active`` file is replaced atomically)."""
        self.key(key_id)
        if self.folder is not None:
            write_atomically(self.folder / ACTIVE_FILE, key_id + "\n")
        return replace(self, active_id=key_id)

    def retire(self, key_id: str) -> Keyring:
        """Take a no-longer-used key out of the keyring (moved to ``retired/`` in a folder, for the operator to destroy)."""
        if key_id == self.active_id:
            raise KeyringError(f"key {key_id!r} is the active key and cannot be retired")
        self.key(key_id)
        if self.folder is not None:
            retired = self.folder / RETIRED_DIR
            retired.mkdir(mode=0o700, exist_ok=True)
            os.replace(self.folder / f"{key_id}.key", retired / f"{key_id}.key")
        return replace(self, keys={k: v for k, v in self.keys.items() if k != key_id})


def _read_key_file(path: Path) -> bytes:
    try:
        return load_or_create_key(path, create=False)
    except (ValueError, KeyMissing):
        raise KeyringError(f"key file {path} does not hold {KEY_BYTES} bytes as hex") from None


def _create_key_file(folder: Path, key_id: str) -> bytes:
    """A new random key in ``<folder>/<key_id>.key`` (0600, folder 0700).

    Made under a hidden temporary name, then renamed: a crash leaves either no key file or a
    whole one, never a half-written file that would stop the keyring from loading.
    """
    tmp = folder / f".{key_id}.key.{secrets.token_hex(4)}.tmp"
    key = load_or_create_key(tmp)
    _fsync_file(tmp)
    try:
        os.link(tmp, folder / f"{key_id}.key")  # unlike a rename, never replaces an existing key
    except FileExistsError:
        raise KeyringError(f"key {key_id!r} already exists in {folder}") from None
    finally:
        tmp.unlink()
    _fsync_dir(folder)
    return key


def _check_key_bytes(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise KeyMissing(f"an AES-256 key is {KEY_BYTES} bytes, not {len(key)}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
