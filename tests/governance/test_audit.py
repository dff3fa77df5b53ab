"""The audit log: every edit, deletion, insertion, reordering, truncation and forgery is caught,
with the first broken entry named; concurrent appenders never fork the chain."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from medlake.governance import audit
from medlake.governance.audit import AUDIT, AuditEntry, AuditLogBroken
from medlake.keys import load_or_create_key
from medlake.lake import Lake

KEY = b"\x11" * 32
ATTACKER_KEY = b"\x66" * 32  # what a forger without the audit key has to use instead
ACTIONS = ["pipeline.run", "vault.reidentify", "access.denied", "dp.release", "vault.rotate_key", "quarantine.resolve"]


def _write_log(lake: Lake, entries: int = 6, *, key: bytes = KEY) -> list[AuditEntry]:
    return [
        audit.append(
            lake,
            key=key,
            actor=f"user-{i}",
            role="data_engineer" if i % 2 == 0 else "reidentifier",
            action=ACTIONS[i % len(ACTIONS)],
            object=f"silver.patients/{i}",
            run_id=f"manual__2026-11-24T10:0{i}:00+00:00",
            purpose="operations",
            details={"rows": i * 10},
        )
        for i in range(entries)
    ]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    _write_log(lake)
    return lake


# -- tampering helpers: what someone with write access to the files but not the key can do ----


def _rows(lake: Lake) -> list[dict]:
    return DeltaTable(str(lake.path("audit"))).to_pyarrow_table().sort_by("seq").to_pylist()


def _rewrite(lake: Lake, rows: list[dict]) -> None:
    write_deltalake(str(lake.path("audit")), pa.Table.from_pylist(rows, schema=AUDIT.schema), mode="overwrite")


def _reseal(rows: list[dict], start: int) -> list[dict]:
    """Recompute seq, prev_hash, entry_hash (unkeyed: anyone can) and the MAC (without the key) from ``start`` on."""
    rows = [dict(r) for r in rows]
    for i in range(start, len(rows)):
        rows[i]["seq"] = i
        rows[i]["prev_hash"] = rows[i - 1]["entry_hash"] if i else audit.GENESIS_HASH
        entry = AuditEntry.from_row(rows[i])
        rows[i]["entry_hash"] = entry.computed_hash()
        rows[i]["mac"] = hmac.new(
            ATTACKER_KEY, b"medlake.audit.mac.v1\x1f" + rows[i]["entry_hash"].encode(), hashlib.sha256
        ).hexdigest()
    return rows


# -- intact ---------------------------------------------------------------------------------


def test_an_intact_log_verifies_and_chains_every_entry(lake):
    result = audit.verify(lake, key=KEY)
    assert result.ok and result.entries == 6 and result.head_seq == 5 and result.first_broken_seq is None
    entries = audit.read(lake)
    assert [e.seq for e in entries] == list(range(6))
    assert entries[0].prev_hash == audit.GENESIS_HASH
    assert all(later.prev_hash == earlier.entry_hash for earlier, later in itertools.pairwise(entries))
    assert entries[3].as_dict()["details"] == {"rows": 30}
    assert entries[3].at.utcoffset().total_seconds() == 0
    head = json.loads((lake.path("audit") / "_head.json").read_text())
    assert head["seq"] == 5 and head["entry_hash"] == entries[-1].entry_hash


def test_a_lake_without_audit_entries_is_intact(tmp_path):
    assert audit.verify(Lake(tmp_path), key=KEY).ok
    assert audit.read(Lake(tmp_path)) == []


def test_optimize_keeps_the_log_intact(lake):
    DeltaTable(str(lake.path("audit"))).optimize.compact()
    assert audit.verify(lake, key=KEY).ok
    audit.append(lake, key=KEY, actor="ana", role="compliance", action="dp.release", object="gold.x")
    assert audit.verify(lake, key=KEY).entries == 7


# -- attacks ------------------------------------------------------------------------------


def test_an_edited_field_is_detected_at_that_entry(lake):
    rows = _rows(lake)
    rows[3]["actor"] = "someone-else"
    _rewrite(lake, rows)
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3
    assert "entry 3 was altered" in result.problem


def test_an_edit_resealed_without_the_key_fails_its_mac(lake):
    rows = _rows(lake)
    rows[3]["details"] = json.dumps({"rows": 0})
    _rewrite(lake, _reseal(rows, 3))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3
    assert "MAC" in result.problem


def test_a_deleted_entry_is_detected(lake):
    _rewrite(lake, [r for r in _rows(lake) if r["seq"] != 3])
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3
    assert "entry 3 is missing" in result.problem


def test_a_deleted_entry_with_the_rest_renumbered_is_detected(lake):
    rows = [r for r in _rows(lake) if r["seq"] != 3]
    for r in rows[3:]:
        r["seq"] -= 1
    _rewrite(lake, rows)
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3
    assert "does not follow entry 2" in result.problem


def test_a_deletion_resealed_without_the_key_is_detected(lake):
    _rewrite(lake, _reseal([r for r in _rows(lake) if r["seq"] != 3], 3))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3


def test_swapped_entries_are_detected_at_the_first(lake):
    rows = _rows(lake)
    rows[2]["seq"], rows[3]["seq"] = 3, 2
    _rewrite(lake, rows)
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 2
    assert "reordered" in result.problem


def test_a_truncated_tail_is_detected_by_the_signed_head(lake):
    _rewrite(lake, _rows(lake)[:-2])
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 4
    assert "the last 2 entries were removed" in result.problem


def test_a_truncated_tail_with_a_forged_head_is_detected(lake):
    rows = _rows(lake)[:-2]
    _rewrite(lake, rows)
    forged = {"seq": 3, "entry_hash": rows[-1]["entry_hash"], "mac": "0" * 64}
    (lake.path("audit") / "_head.json").write_text(json.dumps(forged))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and "signed head" in result.problem and "does not verify" in result.problem


def test_a_removed_head_is_detected(lake):
    (lake.path("audit") / "_head.json").unlink()
    result = audit.verify(lake, key=KEY)
    assert not result.ok and "signed head (_head.json) is missing" in result.problem


def test_a_forged_entry_appended_without_the_key_is_detected(lake):
    rows = _rows(lake)
    forged = {**rows[-1], "entry_id": "f" * 32, "actor": "mallory", "action": "vault.reidentify"}
    _rewrite(lake, _reseal([*rows, forged], 6))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 6
    assert "entry 6 has a MAC that does not verify" in result.problem


def test_a_forged_entry_inserted_in_the_middle_is_detected(lake):
    rows = _rows(lake)
    forged = {**rows[2], "entry_id": "f" * 32, "actor": "mallory"}
    _rewrite(lake, _reseal([*rows[:3], forged, *rows[3:]], 3))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3


def test_a_duplicated_entry_is_detected(lake):
    rows = _rows(lake)
    _rewrite(lake, [*rows[:4], dict(rows[3]), *rows[4:]])
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 3
    assert "appears twice" in result.problem


def test_a_rewrite_that_changes_nothing_still_shows_in_the_history(lake):
    _rewrite(lake, _rows(lake))
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq is None
    assert "WRITE (Overwrite)" in result.problem


def test_a_deleted_table_is_detected(lake):
    import shutil

    shutil.rmtree(lake.path("audit") / "_delta_log")
    result = audit.verify(lake, key=KEY)
    assert not result.ok and result.first_broken_seq == 0 and "removed" in result.problem


def test_verifying_with_the_wrong_key_fails(lake):
    result = audit.verify(lake, key=b"\x12" * 32)
    assert not result.ok and result.first_broken_seq == 0
    assert "wrong audit key" in result.problem


# -- appending safely -----------------------------------------------------------------------


def test_appending_with_the_wrong_key_is_refused(lake):
    with pytest.raises(AuditLogBroken, match="audit key does not match"):
        audit.append(lake, key=b"\x12" * 32, actor="ana", role="ml", action="access.denied", object="silver.patients")
    assert len(audit.read(lake)) == 6


def test_appending_onto_a_truncated_log_is_refused(lake):
    _rewrite(lake, _rows(lake)[:-1])
    with pytest.raises(AuditLogBroken, match="no longer holds entry 5"):
        audit.append(lake, key=KEY, actor="ana", role="ml", action="access.denied", object="silver.patients")


def test_a_crash_before_the_head_moves_leaves_a_verifiable_log(lake, monkeypatch):
    def crash(*_args: object) -> None:
        raise KeyboardInterrupt("killed after the Delta commit")

    monkeypatch.setattr(audit, "_advance_head", crash)
    with pytest.raises(KeyboardInterrupt):
        audit.append(lake, key=KEY, actor="ana", role="ml", action="access.denied", object="silver.patients")
    monkeypatch.undo()
    result = audit.verify(lake, key=KEY)
    assert result.ok and result.entries == 7 and result.head_seq == 5  # entry 6 is MAC'd: it may trail the head
    entry = audit.append(lake, key=KEY, actor="ana", role="ml", action="access.denied", object="silver.patients")
    assert entry.seq == 7 and audit.verify(lake, key=KEY).head_seq == 7


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("action", "Reidentify", "<area>.<verb>"), ("actor", " ", "non-empty actor"), ("object", "", "non-empty object")],
)
def test_malformed_entries_are_refused(tmp_path, field, value, message):
    kwargs = {"actor": "ana", "role": "ml", "action": "access.denied", "object": "silver.patients", field: value}
    with pytest.raises(ValueError, match=message):
        audit.append(Lake(tmp_path), key=KEY, **kwargs)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        audit.verify(Lake(tmp_path), key=b"short")


_APPENDER = textwrap.dedent(
    """
    import contextlib, sys
    from pathlib import Path
    from medlake.governance import audit
    from medlake.lake import Lake

    root, count, worker, lockless = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    if lockless:  # no file lock: only the conditional Delta commit keeps the chain straight
        audit.exclusive = lambda path: contextlib.nullcontext()
    for i in range(count):
        audit.append(Lake(Path(root)), key=bytes([0x11]) * 32, actor=f"worker-{worker}", role="data_engineer",
                     action="pipeline.run", object="medlake_pipeline", run_id=f"{worker}-{i}")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("lockless", [False, True], ids=["file-lock", "conditional-commit-only"])
def test_concurrent_appenders_never_fork_the_chain(tmp_path, lockless):
    lake = Lake(tmp_path / "lake")
    _write_log(lake, entries=1)
    workers, each = 4, 6
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(lake.root), str(each), str(w), "1" if lockless else "0"])
        for w in range(workers)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * workers
    entries = audit.read(lake)
    assert [e.seq for e in entries] == list(range(1 + workers * each))
    assert sorted(e.run_id for e in entries[1:]) == sorted(f"{w}-{i}" for w in range(workers) for i in range(each))
    assert audit.verify(lake, key=KEY).ok


# -- CLI ------------------------------------------------------------------------------------


def test_cli_audit_verify_exit_codes(cli, tmp_path):
    lake = Lake(tmp_path / "lake")
    assert cli("audit", "verify", "--lake", str(lake.root)).exit_code == 0  # nothing audited yet
    key = load_or_create_key(tmp_path / "keys" / "audit.key")
    _write_log(lake, key=key)
    ok = cli("audit", "verify", "--lake", str(lake.root))
    assert ok.exit_code == 0 and "intact: 6 entries" in ok.output

    rows = _rows(lake)
    rows[3]["role"] = "reidentifier" if rows[3]["role"] != "reidentifier" else "ml"
    _rewrite(lake, rows)
    broken = cli("audit", "verify", "--lake", str(lake.root))
    assert broken.exit_code == 1 and "BROKEN at entry 3" in broken.output and "altered" in broken.output
    as_json = json.loads(cli("audit", "verify", "--lake", str(lake.root), "--json").stdout)
    assert as_json["ok"] is False and as_json["first_broken_seq"] == 3


def test_cli_audit_verify_without_a_key_exits_2(cli, tmp_path):
    lake = Lake(tmp_path / "lake")
    _write_log(lake)
    result = cli("audit", "verify", "--lake", str(lake.root))
    assert result.exit_code == 2 and "MEDLAKE_AUDIT_KEY" in result.output


def test_cli_audit_verify_uses_the_key_from_the_environment(cli, tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    _write_log(lake)
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", KEY.hex())
    assert cli("audit", "verify", "--lake", str(lake.root)).exit_code == 0
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", (b"\x12" * 32).hex())
    wrong = cli("audit", "verify", "--lake", str(lake.root))
    assert wrong.exit_code == 1 and "wrong audit key" in wrong.output


def test_cli_audit_log_lists_and_filters(cli, lake, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", KEY.hex())
    (tmp_path / "keys").mkdir(mode=0o700)  # the key folder's owner is the service principal: data_engineer
    rows = json.loads(cli("audit", "log", "--lake", str(lake.root), "--json").stdout)
    assert [r["seq"] for r in rows] == list(range(6)) and rows[1]["details"] == {"rows": 10}
    only = json.loads(
        cli("audit", "log", "--lake", str(lake.root), "--action", "vault.reidentify", "--json").stdout
    )
    assert [r["seq"] for r in only] == [1]
    text = cli("audit", "log", "--lake", str(lake.root), "--limit", "2")
    assert text.exit_code == 0 and "vault.rotate_key" in text.output and "pipeline.run" not in text.output
    # ml holds no grant on the audit log: refused, and the refusal itself is audited
    refused = cli("audit", "log", "--lake", str(lake.root), "--role", "ml")
    assert refused.exit_code == 1 and "may not read the audit log" in refused.output
    assert audit.read(lake)[-1].action == "access.denied"


def test_every_governance_command_has_help_with_an_example(cli):
    for group, commands in (("audit", ["verify", "log"]), ("vault", ["reidentify", "rotate-key"])):
        for command in commands:
            result = cli(group, command, "--help")
            assert result.exit_code == 0 and "Example:" in result.output, (group, command)

