"""Identity stewardship: the review queue entity resolution leaves, and unmerge.

Entity resolution (:mod:`medlake.jobs.clean.dedup`) merges a pair of patient records on its own
only above the merge threshold and when no rule objects; the pairs in between wait in
``reference.identity_review``. A data steward (who may look the two records up in the vault
with ``medlake vault reidentify``, audited there) decides:

- **approve**: the two records are one person. Their persons merge now, like a merge a run
  finds: the older person survives, a ``merge`` event is written, and every silver row of the
  absorbed person moves to the survivor (key and date shift, :func:`dedup.rekey`).
- **reject**: two people. The pair is never merged or queued again, also not through a third
  record linking both.
- **split** (unmerge): a person is two people. The named records (with every record sharing
  their MRN) move to a person of their own, keyed by their smallest prelink key; the group
  holding the original key keeps it. A ``split`` event is written (it also ends the merge that
  absorbed that key, so later runs do not re-key it back), every pair across the two groups
  is recorded as rejected, and the downstream silver rows move by their provenance
  (``_prelink_key``, else their key itself): a row moves when the record it came from moved.

Every decision is audited with who and why, pseudonyms only. The silver rows move at once;
gold follows at the next run; the vault identities of the records that changed person are
re-encrypted under their new person_key (:func:`dedup.follow_in_vault`) at once when the decision
is given the vault keyring, else at the next run. Each decision that moves rows writes ledger entries under its own
id (``identity-<action>-<time>``): rows in = rows out (+ rows merged on a key collision).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from medlake import ledger
from medlake.governance import audit
from medlake.governance.crypto import Keyring
from medlake.jobs.clean import dedup
from medlake.lake import Lake, conform
from medlake.ledger import Entry
from medlake.registry import (
    IDENTITY_REVIEW,
    PERSON_CROSSWALK,
    PERSON_EVENTS,
    PRELINK_FIELD,
    SILVER_PATIENT_LINKS,
    SILVER_PATIENTS,
    SILVER_PERSONS,
    SILVER_TABLES,
    TABLES,
)

Status = Literal["open", "approved", "rejected"]
#: silver tables a split does not move row by row: persons are recomputed, links are history
NOT_MOVED = (SILVER_PERSONS.name, SILVER_PATIENT_LINKS.name)
STEWARD_ROLE = "data_steward"


class DecisionRefused(ValueError):
    """A steward's decision that cannot be applied, with why."""


@dataclass(frozen=True)
class Decided:
    """What one decision did."""

    decision_id: str
    pairs: tuple[str, ...]
    status: Status
    merged: tuple[tuple[str, str], ...] = ()  # (absorbed person, survivor)
    rows_moved: int = 0
    vault_rekeyed: int = 0  # vault identities re-encrypted under the surviving person


@dataclass(frozen=True)
class Split:
    """What a split did: the records that moved, the new person, and the silver rows moved."""

    decision_id: str
    person_key: str  # the person split
    new_person_key: str
    moved_records: tuple[str, ...]
    rows_moved: dict[str, int]
    #: rows of the split person in a table without provenance (a lake written before the table had
    #: ``_prelink_key``): they stay with the person keeping the key, counted here
    unattributed: dict[str, int]
    vault_rekeyed: int = 0  # vault identities re-encrypted under the new person


def _decision_id(action: str, now: datetime) -> str:
    return f"identity-{action}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"


def queue(lake: Lake, *, status: Status | None = "open") -> list[dict[str, Any]]:
    """The review pairs (all when ``status`` is None), most probable first; pseudonyms only."""
    if not lake.exists(IDENTITY_REVIEW.name):
        return []
    rows = dedup._plain(lake.read(IDENTITY_REVIEW.name)).to_pylist()
    chosen = [r for r in rows if status is None or r["status"] == status]
    return sorted(chosen, key=lambda r: (-r["match_probability"], r["pair_id"]))


def _persons(lake: Lake) -> dict[str, str]:
    crosswalk = dedup._plain(lake.read(PERSON_CROSSWALK.name, columns=["source_key", "person_key"]))
    return dict(
        zip(
            crosswalk.column("source_key").to_pylist(),
            crosswalk.column("person_key").to_pylist(),
            strict=True,
        )
    )


def _open_pairs(lake: Lake, pair_ids: Sequence[str]) -> list[dict[str, Any]]:
    wanted = list(dict.fromkeys(pair_ids))
    if not wanted:
        raise DecisionRefused("name at least one pair id (from `medlake identity review list`)")
    rows = {r["pair_id"]: r for r in queue(lake, status=None)}
    missing = [p for p in wanted if p not in rows]
    if missing:
        raise DecisionRefused(f"no review pair with id {', '.join(missing)}")
    for p in wanted:
        if rows[p]["status"] != "open":
            raise DecisionRefused(f"pair {p} is already {rows[p]['status']}: decide open pairs only")
    return [rows[p] for p in wanted]


def _audit(
    lake: Lake, *, audit_key: bytes, actor: str, action: str, target: str, run_id: str, details: dict[str, Any]
) -> None:
    audit.append(
        lake,
        key=audit_key,
        actor=actor,
        role=STEWARD_ROLE,
        action=action,
        object=target,
        run_id=run_id,
        purpose="identity_management",
        details=details,
    )


def _decided(rows: Iterable[dict[str, Any]], status: Status, *, actor: str, reason: str, now: datetime) -> pa.Table:
    done = [
        {**r, "status": status, "decided_by": actor, "decided_at": now, "decision_reason": reason} for r in rows
    ]
    return pa.Table.from_pylist(done, schema=IDENTITY_REVIEW.schema)


def reject(
    lake: Lake, pair_ids: Sequence[str], *, reason: str, actor: str, audit_key: bytes, now: datetime | None = None
) -> Decided:
    """Two people: the pairs stay apart for good (never merged, never queued again)."""
    if not reason.strip():
        raise DecisionRefused("a decision needs a reason")
    stamp = now or datetime.now(UTC)
    rows = _open_pairs(lake, pair_ids)
    decision = _decision_id("reject", stamp)
    lake.upsert(IDENTITY_REVIEW.name, _decided(rows, "rejected", actor=actor, reason=reason, now=stamp))
    for r in rows:
        _audit(lake, audit_key=audit_key, actor=actor, action="identity.reject", target=r["pair_id"],
               run_id=decision, details={"reason": reason, "queued_because": r["reason"]})
    return Decided(decision, tuple(r["pair_id"] for r in rows), "rejected")


def merge_events(
    crosswalk: pa.Table, pairs: Sequence[tuple[str, str]], *, decision_id: str, now: datetime
) -> dedup.Assignment:
    """The crosswalk rows and ``merge`` events that make each pair of persons one: the person
    first seen earliest (then the smaller key) survives, as when a run merges."""
    clusters = pa.table(
        {
            "source_key": [s for pair in pairs for s in pair],
            "prelink_key": [f"{decision_id}:{i}" for i in range(2 * len(pairs))],
            "cluster": [pair[0] for pair in pairs for _ in range(2)],
        },
        schema=dedup.CLUSTERS,
    )
    return dedup.assign(clusters, crosswalk, run_id=decision_id, now=now)


def approve(
    lake: Lake,
    pair_ids: Sequence[str],
    *,
    reason: str,
    actor: str,
    audit_key: bytes,
    key: bytes,
    max_shift_days: int,
    now: datetime | None = None,
    keyring: Keyring | None = None,
) -> Decided:
    """One person: the two records' persons merge now and their silver rows move to the survivor
    (and, given the vault ``keyring``, the absorbed records' vault identities)."""
    if not reason.strip():
        raise DecisionRefused("a decision needs a reason")
    stamp = now or datetime.now(UTC)
    rows = _open_pairs(lake, pair_ids)
    person = _persons(lake)
    for r in rows:
        for s in (r["source_key_l"], r["source_key_r"]):
            if s not in person:
                raise DecisionRefused(f"record {s} of pair {r['pair_id']} has no person in the crosswalk yet")
    decision = _decision_id("approve", stamp)
    crosswalk = lake.read(PERSON_CROSSWALK.name)
    pairs = [(r["source_key_l"], r["source_key_r"]) for r in rows]
    done = merge_events(crosswalk, pairs, decision_id=decision, now=stamp)
    lake.upsert(PERSON_CROSSWALK.name, done.crosswalk)
    lake.insert_new(PERSON_EVENTS.name, done.events)
    lake.upsert(IDENTITY_REVIEW.name, _decided(rows, "approved", actor=actor, reason=reason, now=stamp))
    rekeyed = dedup.rekey(
        lake, run_id=decision, key=key, max_shift_days=max_shift_days, tables=SILVER_TABLES, now=stamp
    )
    if rekeyed.entries:
        ledger.record(lake, decision, rekeyed.entries, now=stamp)
    merged = tuple(
        (str(e["from_person_key"]), str(e["person_key"])) for e in done.events.to_pylist() if e["event"] == "merge"
    )
    refresh_persons(lake, sorted({s for _, s in merged}), gone=sorted({a for a, _ in merged}),
                    run_id=decision, key=key, max_shift_days=max_shift_days)
    followed = _follow_in_vault(lake, keyring, audit_key=audit_key, actor=actor, run_id=decision)
    for r in rows:
        _audit(lake, audit_key=audit_key, actor=actor, action="identity.approve", target=r["pair_id"],
               run_id=decision, details={"reason": reason, "queued_because": r["reason"],
                                         "merged": [list(m) for m in merged]})
    return Decided(decision, tuple(r["pair_id"] for r in rows), "approved", merged,
                   sum(e.records_in for e in rekeyed.entries), followed)


def _follow_in_vault(lake: Lake, keyring: Keyring | None, *, audit_key: bytes, actor: str, run_id: str) -> int:
    """The vault identities that changed person re-encrypted now (none without the keyring: the
    next run does it)."""
    if keyring is None:
        return 0
    return dedup.follow_in_vault(lake, keyring=keyring, audit_key=audit_key, run_id=run_id, actor=actor,
                                 role=STEWARD_ROLE)


def refresh_persons(
    lake: Lake, persons: Sequence[str], *, gone: Sequence[str] = (), run_id: str, key: bytes, max_shift_days: int
) -> None:
    """``silver.persons`` rows of ``persons`` recomputed from their silver.patients rows; rows of
    persons that no longer have a record (``gone``) deleted."""
    if not lake.exists(SILVER_PATIENTS.name) or not lake.exists(SILVER_PERSONS.name):
        return
    if gone:
        quoted = ", ".join(f"'{p}'" for p in gone)
        lake.delete(SILVER_PERSONS.name, f"person_key IN ({quoted})")
    if not persons:
        return
    patients = dedup._plain(
        lake.read(
            SILVER_PATIENTS.name,
            filter=pc.field("person_key").cast(pa.string()).isin(pa.array(list(persons), pa.string())),
        )
    )
    if patients.num_rows:
        rows = dedup.persons(lake, conform(patients, SILVER_PATIENTS.schema), run_id=run_id, key=key,
                             max_shift_days=max_shift_days)
        lake.upsert(SILVER_PERSONS.name, rows)


def split_groups(
    crosswalk: Sequence[dict[str, Any]], person_key: str, source_keys: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """The crosswalk rows that leave ``person_key`` and their new person key.

    The named records leave with every record sharing their prelink key (one MRN is one
    person). Of the two groups, the one holding the prelink key equal to the person key keeps
    it; the other becomes a person keyed by its smallest prelink key."""
    mine = [r for r in crosswalk if r["person_key"] == person_key]
    known = {r["source_key"] for r in mine}
    strangers = [s for s in source_keys if s not in known]
    if not mine:
        raise DecisionRefused(f"no person {person_key} in the crosswalk")
    if strangers:
        raise DecisionRefused(f"record(s) {', '.join(strangers)} are not records of person {person_key}")
    leaving_prelinks = {r["prelink_key"] for r in mine if r["source_key"] in set(source_keys)}
    leaving = [r for r in mine if r["prelink_key"] in leaving_prelinks]
    staying = [r for r in mine if r["prelink_key"] not in leaving_prelinks]
    if not staying:
        raise DecisionRefused(
            f"splitting those records would leave person {person_key} without records (records sharing an "
            "MRN with them move too): name the records that are someone else"
        )
    if person_key in leaving_prelinks:  # the named group holds the key: the others leave instead
        leaving, staying = staying, leaving
    return leaving, min(r["prelink_key"] for r in leaving)


def split(
    lake: Lake,
    person_key: str,
    source_keys: Sequence[str],
    *,
    reason: str,
    actor: str,
    audit_key: bytes,
    key: bytes,
    max_shift_days: int,
    now: datetime | None = None,
    keyring: Keyring | None = None,
) -> Split:
    """Unmerge: the named records of a person become a person of their own (see the module doc)."""
    if not reason.strip():
        raise DecisionRefused("a split needs a reason")
    stamp = now or datetime.now(UTC)
    decision = _decision_id("split", stamp)
    crosswalk = dedup._plain(lake.read(PERSON_CROSSWALK.name)).to_pylist()
    leaving, new_key = split_groups(crosswalk, person_key, source_keys)
    if any(r["person_key"] == new_key for r in crosswalk):
        raise DecisionRefused(f"key {new_key} already names another person; split refused")
    leaving_keys = {r["source_key"] for r in leaving}
    staying_keys = [r["source_key"] for r in crosswalk if r["person_key"] == person_key and r["source_key"] not in leaving_keys]
    moved_prelinks = sorted({r["prelink_key"] for r in leaving})
    lake.upsert(
        PERSON_CROSSWALK.name,
        pa.Table.from_pylist(
            [{**r, "person_key": new_key, "since_run_id": decision} for r in leaving], schema=PERSON_CROSSWALK.schema
        ),
    )
    lake.insert_new(
        PERSON_EVENTS.name,
        pa.Table.from_pylist(
            [{"event_id": f"{decision}:split:{new_key}:{person_key}", "run_id": decision, "event": "split",
              "person_key": new_key, "from_person_key": person_key, "source_key": None, "recorded_at": stamp}],
            schema=PERSON_EVENTS.schema,
        ),
    )
    apart = [
        {"pair_id": dedup.pair_id(a, b), "source_key_l": min(a, b), "source_key_r": max(a, b),
         "match_probability": 0.0, "match_weight": None, "reason": "identity.split", "evidence": "{}",
         "run_id": decision, "queued_at": stamp}
        for a in sorted(leaving_keys)
        for b in staying_keys
    ]
    lake.upsert(IDENTITY_REVIEW.name, _decided(apart, "rejected", actor=actor, reason=reason, now=stamp))
    moved, unattributed, entries = move_rows(
        lake, person_key, new_key, set(moved_prelinks), key=key, max_shift_days=max_shift_days
    )
    if entries:
        ledger.record(lake, decision, entries, now=stamp)
    refresh_persons(lake, [person_key, new_key], run_id=decision, key=key, max_shift_days=max_shift_days)
    followed = _follow_in_vault(lake, keyring, audit_key=audit_key, actor=actor, run_id=decision)
    _audit(lake, audit_key=audit_key, actor=actor, action="identity.split", target=person_key, run_id=decision,
           details={"reason": reason, "new_person_key": new_key, "records_moved": sorted(leaving_keys),
                    "rows_moved": moved, "rows_unattributed": unattributed})
    return Split(decision, person_key, new_key, tuple(sorted(leaving_keys)), moved, unattributed, followed)


def move_rows(
    lake: Lake, person_key: str, new_key: str, prelinks: set[str], *, key: bytes, max_shift_days: int
) -> tuple[dict[str, int], dict[str, int], list[Entry]]:
    """Silver rows of ``person_key`` that came from a record keyed ``prelinks`` move to
    ``new_key`` (key and date shift), one transaction per table; per table: rows moved, rows
    that could not be attributed (no provenance column), and ledger entries."""
    moved: dict[str, int] = {}
    unattributed: dict[str, int] = {}
    entries: list[Entry] = []
    for name in SILVER_TABLES:
        spec = TABLES[name]
        if "person_key" not in spec.schema.names or not lake.exists(name) or name in NOT_MOVED:
            continue
        rows = dedup._plain(
            lake.read(name, filter=pc.field("person_key").cast(pa.string()) == person_key)
        )
        if rows.num_rows == 0:
            continue
        if PRELINK_FIELD.name not in rows.column_names:  # a lake older than the column
            unattributed[name] = rows.num_rows
            continue
        origin = pc.coalesce(rows.column(PRELINK_FIELD.name), rows.column("person_key"))
        old = rows.filter(pc.is_in(origin, pa.array(sorted(prelinks), pa.string())))
        if old.num_rows == 0:
            continue
        new = dedup.remap(old, {person_key: new_key}, key=key, max_shift_days=max_shift_days)
        kept = dedup.replace_rows(lake, spec, old, new)
        moved[name] = old.num_rows
        entries.append(Entry(stage="split", table_name=name, records_in=old.num_rows, records_out=kept,
                             merged=old.num_rows - kept))
    return moved, unattributed, entries
