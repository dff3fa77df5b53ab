"""Keyed pseudonyms: HMAC-SHA256 under the project key, so ids cannot be reversed or guessed.

``source_key`` names one patient record in one source system. Entity resolution (the cleaning
issue) maps source keys to one ``person_key`` per real person through a persistent crosswalk;
until it runs, a record's person key is its MRN's key (:func:`mrn_key`) when the record carries
a medical record number with its assigning authority, else its source key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

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


#: hex characters of a file reference: 40 bits, enough to tell a run's files apart
FILE_REF_CHARS = 10


def file_reference(key: bytes, name: str) -> str:
    """How a landing file is named outside the vault: ``file:<HMAC of its name>`` (file names can embed patient names).

    Keyed, so it cannot be reversed by hashing a list of candidate names; the same file gets the
    same reference in the quarantine, the report and the lineage.
    """
    return "file:" + keyed_hash(key, "file", name)[:FILE_REF_CHARS]


def scrub_file_names(key: bytes, text: str, names: Iterable[str | None]) -> str:
    """``text`` with every file name of ``names`` (its path, its last part and that part's stem)
    replaced by its :func:`file_reference`, longest first so a path is replaced whole."""
    spelled: dict[str, str] = {}
    for name in names:
        if not name:
            continue
        ref = file_reference(key, name)
        tail = re.split(r"[\\/]", name)[-1]
        stem = tail.rsplit(".", 1)[0] if "." in tail else tail
        for form in (name, tail, stem):
            if len(form) >= 4:  # a short stem ('a', '001') is not a name and would shred the text
                spelled.setdefault(form, ref)
    for form in sorted(spelled, key=len, reverse=True):
        text = text.replace(form, spelled[form])
    return text
