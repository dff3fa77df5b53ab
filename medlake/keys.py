"""Project keys: generated on first use into a git-ignored folder (0600), or from the environment.

Callers load a key here and pass the bytes to library functions; nothing else reads keys.
A key file is read only when it belongs to the service principal (the OS user running medlake
owns it) and nobody else may read or write it (mode 0600, folder without group/other access):
a key another user could read, or could have planted, is refused, naming the fix.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from medlake.config import Settings

KEY_BYTES = 32


class KeyMissing(RuntimeError):
    """A key is missing, unreadable or malformed."""


def load_or_create_key(path: Path, *, env_var: str | None = None, create: bool = True) -> bytes:
    """The 32-byte key from ``env_var`` (hex) if set, else from ``path``, created 0600 when missing."""
    if env_var and os.environ.get(env_var):
        try:
            key = bytes.fromhex(os.environ[env_var])
        except ValueError as exc:
            raise KeyMissing(f"{env_var} is not a hex string") from exc
        if len(key) != KEY_BYTES:
            raise KeyMissing(f"{env_var} must hold {KEY_BYTES} bytes ({2 * KEY_BYTES} hex characters), not {len(key)}")
        return key
    if path.exists():
        check_private(path)
        key = bytes.fromhex(path.read_text().strip())
        if len(key) != KEY_BYTES:
            raise KeyMissing(f"key file {path} must hold {KEY_BYTES} bytes of hex")
        return key
    if not create:
        raise KeyMissing(f"no key at {path} and {env_var or 'no environment variable'} is not set")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


def check_private(path: Path) -> None:
    """Refuse a key file (or its folder) that another user owns or may read: :class:`KeyMissing`."""
    uid = os.getuid()
    for target, mask in ((path, 0o077), (path.parent, 0o077)):
        st = target.stat()
        if st.st_uid != uid:
            raise KeyMissing(
                f"{target} belongs to uid {st.st_uid}, not to the service principal running medlake (uid {uid}): "
                "keys are read only by the account that owns them"
            )
        if st.st_mode & mask:
            raise KeyMissing(
                f"{target} is readable or writable by other users (mode {st.st_mode & 0o777:o}): "
                f"run `chmod {'700' if target.is_dir() else '600'} {target}`"
            )


def project_key(settings: Settings) -> bytes:
    """The pseudonym key: from the environment, else ``<keys>/project.key`` (created locally only)."""
    return load_or_create_key(
        settings.keys.dir / "project.key", env_var=settings.keys.project_key_env, create=settings.env == "local"
    )


def audit_key(settings: Settings, *, create: bool | None = None) -> bytes:
    """The audit-log MAC key: from the environment, else ``<keys>/audit.key`` (created locally only)."""
    return load_or_create_key(
        settings.keys.dir / "audit.key",
        env_var=settings.keys.audit_key_env,
        create=settings.env == "local" if create is None else create,
    )
