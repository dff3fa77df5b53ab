"""Keyed pseudonyms: HMAC-SHA256 under the project key, so ids cannot be reversed or guessed.

``source_key`` names one patient record in one source system. Entity resolution (the cleaning
issue) maps source keys to one ``person_key`` per real person through a persistent crosswalk;
until it runs, a record's person key is its MRN's key (:func:`mrn_key`) when the record carries
a medical record number with its assigning authority, else its source key.
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


def mrn_key(key: bytes, authority: str, mrn: str) -> str:
    """The pseudonym of a medical record number under its assigning authority (a system URI).

    Every source that carries the MRN (a FHIR Patient.identifier typed MR, an HL7 v2 PID-3 typed
    MR) derives the same key, so it serves as the person_key of all their records at once.
    """
    return source_key(key, f"mrn:{authority}", mrn)


def record_key(key: bytes, kind: str, source_system: str, local_id: str) -> str:
    """The pseudonym of a non-patient record (encounter, observation, …) in one source system."""
    return keyed_hash(key, kind, source_system, local_id)
