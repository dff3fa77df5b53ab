"""Keyed pseudonyms: HMAC-SHA256 under the project key, so ids cannot be reversed or guessed.

``source_key`` names one patient record in one source system. Entity resolution (the cleaning
issue) maps source keys to one ``person_key`` per real person through a persistent crosswalk;
until it runs, a record's person key is its source key.
"""

from __future__ import annotations

import hashlib
import hmac

KEY_HEX_CHARS = 32


def keyed_hash(key: bytes, *parts: str) -> str:
    """A 128-bit hex pseudonym of the parts under the key."""
    if not key:
        raise ValueError("a pseudonym needs a non-empty project key")
    message = "\x1f".join(parts).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def source_key(key: bytes, source_system: str, local_id: str) -> str:
    """The pseudonym of one patient record in one source system."""
    return keyed_hash(key, "patient", source_system, local_id)


def record_key(key: bytes, kind: str, source_system: str, local_id: str) -> str:
    """The pseudonym of a non-patient record (encounter, observation, …) in one source system."""
    return keyed_hash(key, kind, source_system, local_id)
