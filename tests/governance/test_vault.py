"""The vault: identities encrypted at rest, re-identification only for the role that may (and
audited), wrong keys give no output, and key rotation keeps every row readable even when killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from medlake.governance import audit, vault
from medlake.governance.crypto import Keyring, KeyringError
from medlake.governance.vault import VAULT, AccessDenied, NotInVault, VaultKeyError
from medlake.keys import load_or_create_key
from medlake.lake import Lake

AUDIT_KEY = b"\x22" * 32
IDENTITIES = [
    {"person_key": "p-ana", "source_key": "s-ana-a", "given": "Ana", "family": "Díaz",
     "birth_date": date(1931, 3, 9), "phone": "555-0101", "mrn": "MRN-0042"},
    {"person_key": "p-ana", "source_key": "s-ana-b", "given": "Ana", "family": "Diaz", "address": "1 Main St"},
    {"person_key": "p-bo", "source_key": "s-bo", "given": "Bo", "family": "Chen", "ssn": "999-00-1234"},
    {"person_key": "p-cy", "source_key": "s-cy", "given": "Cy", "family": "Okafor"},
]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "vault"


@pytest.fixture
def lake(tmp_path: Path, keys: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    vault.store(lake, IDENTITIES, keyring=Keyring.from_dir(keys))
    return lake


def _reid(lake: Lake, person_key: str, keyring: Keyring, *, role: str = "reidentifier", reason: str = "ticket 1"):
    return vault.reidentify(lake, person_key, keyring=keyring, role=role, reason=reason, actor="dr-who",
                            audit_key=AUDIT_KEY, purpose="treatment", break_glass=True)


def _everyone(lake: Lake, keyring: Keyring) -> dict[str, dict]:
    """Every stored identity by source_key, decrypted; raises if any row does not decrypt."""
    found = {}
    for person_key in sorted({i["person_key"] for i in IDENTITIES}):
        for record in _reid(lake, person_key, keyring)["records"]:
            found[record["source_key"]] = {"person_key": person_key, **record["identity"]}
    return found


def _expected() -> dict[str, dict]:
    def plain(value):
        return value.isoformat() if isinstance(value, date) else value

    return {i["source_key"]: {k: plain(v) for k, v in i.items() if k != "source_key"} for i in IDENTITIES}


def _vault_rows(lake: Lake) -> list[dict]:
    return DeltaTable(str(lake.path("vault"))).to_pyarrow_table().sort_by("source_key").to_pylist()


# -- store and re-identify ------------------------------------------------------------------


def test_identities_round_trip_and_are_ciphertext_at_rest(lake, keys):
    assert _everyone(lake, Keyring.from_dir(keys)) == _expected()
    rows = _vault_rows(lake)
    assert {r["source_key"]: r["person_key"] for r in rows} == {i["source_key"]: i["person_key"] for i in IDENTITIES}
    raw = b"".join(p.read_bytes() for p in lake.path("vault").glob("*.parquet"))
    for secret in (b"Okafor", b"999-00-1234", b"MRN-0042", b"555-0101", b"1931-03-09", "Díaz".encode()):
        assert secret not in raw


def test_storing_an_arrow_table_and_restoring_a_source_key_updates_it(lake, keys):
    keyring = Keyring.from_dir(keys)
    first_created = {r["source_key"]: r["created_at"] for r in _vault_rows(lake)}
    stored = vault.store(
        lake, pa.Table.from_pylist([{"person_key": "p-bo", "source_key": "s-bo", "given": "Bo", "family": "Chen-Li"}]),
        keyring=keyring,
    )
    assert (stored.inserted, stored.updated) == (0, 1)
    assert _reid(lake, "p-bo", keyring)["records"][0]["identity"] == {"given": "Bo", "family": "Chen-Li"}
    rows = _vault_rows(lake)
    assert len(rows) == 4 and {r["source_key"]: r["created_at"] for r in rows} == first_created


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([{"person_key": "p", "given": "x"}], "identity #0 needs a non-empty person_key and source_key"),
        ([{"person_key": "p", "source_key": "s"}, {"person_key": "q", "source_key": "s"}], "appears more than once"),
        ([{"person_key": "p", "source_key": "s", "photo": b"\x00"}], "cannot be stored"),
    ],
)
def test_malformed_identities_are_refused(tmp_path, keys, batch, message):
    with pytest.raises((ValueError, TypeError), match=message):
        vault.store(Lake(tmp_path / "lake"), batch, keyring=Keyring.from_dir(keys))


def test_reidentification_is_audited_with_its_reason(lake, keys):
    found = _reid(lake, "p-ana", Keyring.from_dir(keys), reason="ticket 4711: call about lab result")
    assert [r["source_key"] for r in found["records"]] == ["s-ana-a", "s-ana-b"]
    alert, entry = audit.read(lake)
    assert (alert.action, alert.actor, alert.object) == ("alert.break_glass", "dr-who", "vault/p-ana")
    assert (entry.action, entry.role, entry.actor, entry.object, entry.purpose) == (
        "vault.reidentify", "reidentifier", "dr-who", "vault/p-ana", "treatment")
    assert json.loads(entry.details) == {"reason": "ticket 4711: call about lab result", "outcome": "ok", "records": 2,
                                         "break_glass": True}
    assert audit.verify(lake, key=AUDIT_KEY).ok


def _reid_as(lake: Lake, keys: Path, actor: str, **safeguard):
    return vault.reidentify(lake, "p-bo", keyring=Keyring.from_dir(keys), role="reidentifier", reason="ticket 7",
                            actor=actor, audit_key=AUDIT_KEY, **safeguard)


def test_reidentification_without_an_approval_or_break_glass_is_refused_and_audited(lake, keys):
    with pytest.raises(vault.ApprovalMissing, match="second reidentifier's approval"):
        _reid_as(lake, keys, "user:ana")
    (entry,) = audit.read(lake)
    assert entry.action == "access.denied" and "Chen" not in (entry.details or "")


def test_four_eyes_a_request_needs_another_reidentifier_and_is_used_once(lake, keys):
    request_id = vault.request(lake, "p-bo", role="reidentifier", reason="ticket 7", actor="user:ana",
                               audit_key=AUDIT_KEY)
    with pytest.raises(vault.ApprovalMissing, match="not approved yet"):
        _reid_as(lake, keys, "user:ana", request_id=request_id)
    with pytest.raises(AccessDenied, match="may not approve it"):
        vault.approve(lake, request_id, role="reidentifier", actor="user:ana", audit_key=AUDIT_KEY)
    with pytest.raises(AccessDenied, match="only 'reidentifier' may"):
        vault.approve(lake, request_id, role="ml", actor="user:bo", audit_key=AUDIT_KEY)
    assert vault.approve(lake, request_id, role="reidentifier", actor="user:cy", audit_key=AUDIT_KEY) == "p-bo"
    with pytest.raises(vault.ApprovalMissing, match="filed by another principal"):
        _reid_as(lake, keys, "user:cy", request_id=request_id)
    found = _reid_as(lake, keys, "user:ana", request_id=request_id)
    assert found["records"][0]["identity"]["family"] == "Chen"
    with pytest.raises(vault.ApprovalMissing, match="already used"):
        _reid_as(lake, keys, "user:ana", request_id=request_id)
    done = [e for e in audit.read(lake) if e.action == "vault.reidentify"]
    assert [json.loads(e.details)["approved_by"] for e in done] == ["user:cy"]
    assert not any(e.action == "alert.break_glass" for e in audit.read(lake))
    assert audit.verify(lake, key=AUDIT_KEY).ok


def test_a_request_for_one_person_does_not_open_another(lake, keys):
    request_id = vault.request(lake, "p-cy", role="reidentifier", reason="ticket 8", actor="user:ana",
                               audit_key=AUDIT_KEY)
    vault.approve(lake, request_id, role="reidentifier", actor="user:cy", audit_key=AUDIT_KEY)
    with pytest.raises(vault.ApprovalMissing, match="no re-identification request"):
        _reid_as(lake, keys, "user:ana", request_id=request_id)  # _reid_as asks for p-bo


@pytest.mark.parametrize(("role", "reason", "why"), [("ml", "curious", "role 'ml' may not"),
                                                     ("data_engineer", "debug", "role 'data_engineer' may not"),
                                                     ("reidentifier", "  ", "needs a reason")])
def test_reidentification_is_refused_to_other_roles_and_without_a_reason(lake, keys, role, reason, why):
    with pytest.raises(AccessDenied, match=why):
        _reid(lake, "p-bo", Keyring.from_dir(keys), role=role, reason=reason)
    (entry,) = audit.read(lake)
    assert entry.action == "access.denied" and entry.role == role and entry.object == "vault/p-bo"
    assert json.loads(entry.details)["attempted"] == "vault.reidentify"
    assert "Chen" not in entry.details


def test_a_wrong_vault_key_gives_a_clear_error_and_nothing_else(lake, keys):
    right = Keyring.from_dir(keys)
    wrong = Keyring(keys={right.active_id: b"\x99" * 32}, active_id=right.active_id, source="MEDLAKE_VAULT_KEYS")
    result = None
    with pytest.raises(VaultKeyError, match=rf"person p-ana .* does not decrypt under key '{right.active_id}'") as caught:
        result = _reid(lake, "p-ana", wrong)
    assert result is None and "Ana" not in str(caught.value) and "Díaz" not in str(caught.value)
    _alert, entry = audit.read(lake)
    assert entry.action == "vault.reidentify" and json.loads(entry.details)["outcome"] == "key_error"


def test_a_missing_vault_key_names_the_key_id(lake, keys):
    other = Keyring(keys={"k-other": b"\x98" * 32}, active_id="k-other", source="MEDLAKE_VAULT_KEYS")
    with pytest.raises(VaultKeyError, match=r"encrypted under key '.*', which is missing"):
        _reid(lake, "p-cy", other)
    loaded = Keyring.from_dir(keys)
    for key_file in keys.glob("*.key"):
        key_file.unlink()  # the key folder lost its files after the keyring was loaded
    with pytest.raises(VaultKeyError, match="keyring cannot be loaded"):
        _reid(lake, "p-cy", loaded)


def test_one_bad_row_means_no_partial_output(lake, keys):
    """Ana has two rows; if the second is tampered with, neither is returned."""
    rows = _vault_rows(lake)
    ana_b = next(r for r in rows if r["source_key"] == "s-ana-b")
    ana_b["ciphertext"] = bytes([ana_b["ciphertext"][0] ^ 1]) + ana_b["ciphertext"][1:]
    write_deltalake(str(lake.path("vault")), pa.Table.from_pylist(rows, schema=VAULT.schema), mode="overwrite")
    with pytest.raises(VaultKeyError, match="s-ana-b"):
        _reid(lake, "p-ana", Keyring.from_dir(keys))


def test_a_ciphertext_moved_to_another_person_does_not_decrypt(lake, keys):
    rows = _vault_rows(lake)
    bo, cy = (next(r for r in rows if r["source_key"] == s) for s in ("s-bo", "s-cy"))
    bo["nonce"], bo["ciphertext"], cy["nonce"], cy["ciphertext"] = cy["nonce"], cy["ciphertext"], bo["nonce"], bo["ciphertext"]
    write_deltalake(str(lake.path("vault")), pa.Table.from_pylist(rows, schema=VAULT.schema), mode="overwrite")
    with pytest.raises(VaultKeyError):
        _reid(lake, "p-bo", Keyring.from_dir(keys))


def test_an_unknown_person_is_not_found_and_audited(lake, keys):
    with pytest.raises(NotInVault, match="p-nobody"):
        _reid(lake, "p-nobody", Keyring.from_dir(keys))
    assert json.loads(audit.read(lake)[-1].details)["outcome"] == "not_found"


# -- rotation -------------------------------------------------------------------------------


def test_rotation_re_encrypts_every_row_under_the_new_key_alone(lake, keys):
    before = _vault_rows(lake)
    old_id = Keyring.from_dir(keys).active_id
    rotation = vault.rotate_key(lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops")
    after = _vault_rows(lake)
    assert [(r["person_key"], r["source_key"], r["created_at"]) for r in after] == [
        (r["person_key"], r["source_key"], r["created_at"]) for r in before]
    assert {r["key_id"] for r in after} == {rotation.new_key_id} != {old_id}
    assert all(a["ciphertext"] != b["ciphertext"] for a, b in zip(after, before, strict=True))
    new_only = Keyring(keys={rotation.new_key_id: rotation.keyring.active_key}, active_id=rotation.new_key_id)
    assert _everyone(lake, new_only) == _expected()
    assert (rotation.rows, rotation.from_key_ids, rotation.retired) == (4, (old_id,), (old_id,))
    assert Keyring.from_dir(keys).ids == (rotation.new_key_id,) and (keys / "retired" / f"{old_id}.key").exists()
    started, completed = (json.loads(e.details) for e in audit.read(lake)[:2])
    assert (started["status"], completed["status"], completed["to"], completed["rows"]) == (
        "started", "completed", rotation.new_key_id, 4)
    assert len(list(lake.path("vault").glob("*.parquet"))) == len(DeltaTable(str(lake.path("vault"))).file_uris())


def test_rotation_can_keep_old_keys_and_refuses_to_rotate_onto_the_active_key(lake, keys):
    ring = Keyring.from_dir(keys)
    rotation = vault.rotate_key(lake, keyring=ring, audit_key=AUDIT_KEY, actor="ops", new_key_id="k2", retire_old=False)
    assert rotation.retired == () and set(Keyring.from_dir(keys).ids) == {ring.active_id, "k2"}
    with pytest.raises(KeyringError, match="already the active vault key"):
        vault.rotate_key(lake, keyring=ring, audit_key=AUDIT_KEY, actor="ops", new_key_id="k2")


def test_rotation_with_an_env_keyring_needs_the_new_key_provided(tmp_path):
    lake = Lake(tmp_path / "lake")
    env = Keyring.from_json(json.dumps({"k1": "11" * 32}))
    vault.store(lake, IDENTITIES, keyring=env)
    with pytest.raises(KeyringError, match="add it there"):
        vault.rotate_key(lake, keyring=env, audit_key=AUDIT_KEY, actor="ops")
    both = Keyring.from_json(json.dumps({"k1": "11" * 32, "k2": "22" * 32}), active="k1")
    rotation = vault.rotate_key(lake, keyring=both, audit_key=AUDIT_KEY, actor="ops", new_key_id="k2")
    assert rotation.retired == ("k1",) and {r["key_id"] for r in _vault_rows(lake)} == {"k2"}
    assert _everyone(lake, Keyring.from_json(json.dumps({"k2": "22" * 32}))) == _expected()


def test_a_stale_keyring_stores_under_the_rotated_key(lake, keys):
    stale = Keyring.from_dir(keys)
    rotation = vault.rotate_key(lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops")
    stored = vault.store(lake, [{"person_key": "p-dee", "source_key": "s-dee", "given": "Dee"}], keyring=stale)
    assert stored.key_id == rotation.new_key_id
    assert _reid(lake, "p-dee", Keyring.from_dir(keys))["records"][0]["identity"] == {"given": "Dee"}


def test_rotation_stops_before_writing_when_a_row_does_not_decrypt(lake, keys):
    ring = Keyring.from_dir(keys)
    version = DeltaTable(str(lake.path("vault"))).version()
    vault.store(lake, [{"person_key": "p-x", "source_key": "s-x", "given": "X"}],
                keyring=Keyring(keys={"k-lost": b"\x55" * 32}, active_id="k-lost"))
    with pytest.raises(VaultKeyError, match="k-lost"):
        vault.rotate_key(lake, keyring=ring, audit_key=AUDIT_KEY, actor="ops")
    assert DeltaTable(str(lake.path("vault"))).version() == version + 1
    assert Keyring.from_dir(keys).active_id == ring.active_id
    assert audit.read(lake) == []


@pytest.mark.parametrize("step", vault.ROTATION_STEPS)
def test_a_rotation_interrupted_at_any_step_leaves_every_row_readable(lake, keys, step):
    def crash(at: str) -> None:
        if at == step:
            raise KeyboardInterrupt(f"interrupted after {at}")

    with pytest.raises(KeyboardInterrupt):
        vault.rotate_key(lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops", on_step=crash)
    assert _everyone(lake, Keyring.from_dir(keys, create=False)) == _expected()
    finished = vault.rotate_key(lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops")
    assert {r["key_id"] for r in _vault_rows(lake)} == {finished.new_key_id}
    assert Keyring.from_dir(keys).ids == (finished.new_key_id,)
    assert _everyone(lake, Keyring.from_dir(keys)) == _expected()
    assert audit.verify(lake, key=AUDIT_KEY).ok


_ROTATE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from medlake.governance import vault
    from medlake.governance.crypto import Keyring
    from medlake.lake import Lake

    root, keys, die_at = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def die(step):
        if step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash

    vault.rotate_key(Lake(Path(root)), keyring=Keyring.from_dir(keys, create=False),
                     audit_key=bytes([0x22]) * 32, actor="ops", on_step=die)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("step", vault.ROTATION_STEPS)
def test_a_rotation_killed_with_sigkill_leaves_every_row_readable(lake, keys, step):
    killed = subprocess.run([sys.executable, "-c", _ROTATE_AND_DIE, str(lake.root), str(keys), step], check=False, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert _everyone(lake, Keyring.from_dir(keys, create=False)) == _expected()
    assert audit.verify(lake, key=AUDIT_KEY).ok
    vault.rotate_key(lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops")
    assert _everyone(lake, Keyring.from_dir(keys)) == _expected()


# -- CLI ------------------------------------------------------------------------------------


def test_cli_reidentify_break_glass_prints_the_identity_and_raises_an_alert(cli, lake, me):
    refused = cli("vault", "reidentify", "p-cy", "--reason", "ticket 9", "--lake", str(lake.root))
    assert refused.exit_code == 1 and "second reidentifier" in refused.output and "Okafor" not in refused.output
    result = cli("vault", "reidentify", "p-cy", "--reason", "ticket 9", "--lake", str(lake.root), "--break-glass")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"][0]["identity"] == {"given": "Cy", "family": "Okafor"}
    log = json.loads(cli("audit", "log", "--lake", str(lake.root), "--json").stdout)
    assert [(e["action"], e["actor"], e["details"]["reason"]) for e in log] == [
        ("access.denied", me, "ticket 9"),
        ("alert.break_glass", me, "ticket 9"),
        ("vault.reidentify", me, "ticket 9"),
    ]
    assert cli("audit", "verify", "--lake", str(lake.root)).exit_code == 0


def test_cli_a_principal_cannot_approve_its_own_request(cli, lake):
    filed = cli("vault", "request", "p-cy", "--reason", "ticket 9", "--lake", str(lake.root))
    assert filed.exit_code == 0, filed.output
    request_id = filed.stdout.split()[1]
    approved = cli("vault", "approve", request_id, "--lake", str(lake.root))
    assert approved.exit_code == 1 and "may not approve it" in approved.output
    used = cli("vault", "reidentify", "p-cy", "--reason", "ticket 9", "--request", request_id, "--lake", str(lake.root))
    assert used.exit_code == 1 and "not approved yet" in used.output and "Okafor" not in used.output


def test_cli_reidentify_refuses_a_role_the_principal_does_not_hold(cli, lake, write_policy, monkeypatch):
    monkeypatch.setenv("MEDLAKE__ACCESS__POLICY_FILE", str(write_policy()))  # no reidentifier for anyone
    result = cli("vault", "reidentify", "p-cy", "--reason", "curious", "--lake", str(lake.root),
                 "--role", "reidentifier", "--break-glass")
    assert result.exit_code == 1 and "refused" in result.output and "may not act as role 'reidentifier'" in result.output
    assert "Okafor" not in result.output
    ml = cli("vault", "reidentify", "p-cy", "--reason", "curious", "--lake", str(lake.root), "--role", "ml",
             "--break-glass")
    assert ml.exit_code == 1 and "role 'ml' may not re-identify" in ml.output and "Okafor" not in ml.output
    log = json.loads(cli("audit", "log", "--lake", str(lake.root), "--json").stdout)
    assert [(e["action"], e["role"], e["details"]["attempted"]) for e in log] == [
        ("access.denied", "reidentifier", "assume_role"), ("access.denied", "ml", "vault.reidentify")]


def test_cli_reidentify_with_a_wrong_env_key_prints_no_identity(cli, lake, keys, monkeypatch):
    monkeypatch.setenv("MEDLAKE_VAULT_KEYS", json.dumps({Keyring.from_dir(keys).active_id: "77" * 32}))
    result = cli("vault", "reidentify", "p-cy", "--reason", "ticket 9", "--lake", str(lake.root),
                 "--role", "reidentifier", "--break-glass")
    assert result.exit_code == 1 and "does not decrypt" in result.output
    assert result.stdout == "" and "Okafor" not in result.output


def test_cli_rotate_key_then_verify(cli, lake, keys, tmp_path):
    old = Keyring.from_dir(keys).active_id
    result = cli("vault", "rotate-key", "--lake", str(lake.root), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 4 and summary["from_key_ids"] == [old] and summary["retired"] == [old]
    assert Keyring.from_dir(keys).active_id == summary["new_key_id"]
    assert cli("audit", "verify", "--lake", str(lake.root)).exit_code == 0
    key = load_or_create_key(tmp_path / "keys" / "audit.key", create=False)
    assert [json.loads(e.details)["status"] for e in audit.read(lake)] == ["started", "completed"]
    assert audit.verify(lake, key=key).ok
