"""AES-256-GCM with key ids, and the keyring: wrong keys, wrong context and tampering never decrypt."""

from __future__ import annotations

import json
import stat

import pytest

from medlake.governance.crypto import (
    DecryptionFailed,
    Keyring,
    KeyringError,
    associated_data,
    check_key_id,
    decrypt,
    encrypt,
    seal,
    sealed_key_id,
    unseal,
)

KEY_A, KEY_B = b"\xa1" * 32, b"\xb2" * 32


def test_round_trip_with_a_fresh_nonce_each_time():
    aad = associated_data("vault", "person-1", "k1")
    first, second = encrypt(KEY_A, b"Ana Diaz", aad=aad), encrypt(KEY_A, b"Ana Diaz", aad=aad)
    assert first[0] != second[0] and first[1] != second[1]
    assert b"Ana" not in first[1]
    assert decrypt(KEY_A, *first, aad=aad) == b"Ana Diaz"


@pytest.mark.parametrize(
    "change",
    ["wrong key", "other record", "other key id", "flipped bit"],
)
def test_nothing_decrypts_with_a_wrong_key_context_or_byte(change):
    aad = associated_data("vault", "person-1", "k1")
    nonce, ciphertext = encrypt(KEY_A, b"Ana Diaz", aad=aad)
    key = KEY_B if change == "wrong key" else KEY_A
    if change == "other record":
        aad = associated_data("vault", "person-2", "k1")
    if change == "other key id":
        aad = associated_data("vault", "person-1", "k2")
    if change == "flipped bit":
        ciphertext = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(DecryptionFailed, match="wrong key|altered"):
        decrypt(key, nonce, ciphertext, aad=aad)


def test_sealed_values_carry_their_key_id_and_survive_a_key_change():
    old = Keyring(keys={"k1": KEY_A}, active_id="k1")
    blob = seal(old, b"raw FHIR bundle", context="bronze.fhir_resources/abc")
    assert sealed_key_id(blob) == "k1" and b"FHIR" not in blob
    rotated = Keyring(keys={"k1": KEY_A, "k2": KEY_B}, active_id="k2")
    assert unseal(rotated, blob, context="bronze.fhir_resources/abc") == b"raw FHIR bundle"
    assert sealed_key_id(seal(rotated, b"x", context="c")) == "k2"
    with pytest.raises(DecryptionFailed):
        unseal(rotated, blob, context="bronze.fhir_resources/other")
    with pytest.raises(KeyringError, match="'k1' is not in"):
        unseal(Keyring(keys={"k2": KEY_B}, active_id="k2"), blob, context="bronze.fhir_resources/abc")
    with pytest.raises(DecryptionFailed, match="bad header"):
        sealed_key_id(b"\x07garbage")


def test_a_folder_keyring_is_created_0600_and_reloads_the_same(tmp_path):
    folder = tmp_path / "keys" / "vault"
    first = Keyring.from_dir(folder)
    (key_file,) = folder.glob("*.key")
    assert key_file.stem == first.active_id
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "active").read_text().strip() == first.active_id
    again = Keyring.from_dir(folder, create=False)
    assert again.active_id == first.active_id and again.active_key == first.active_key
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_new_keys_are_inactive_until_activated_and_retired_keys_leave(tmp_path):
    folder = tmp_path / "vault"
    ring = Keyring.from_dir(folder)
    old = ring.active_id
    ring = ring.with_new_key("k-next")
    assert Keyring.from_dir(folder).active_id == old and "k-next" in Keyring.from_dir(folder)
    ring = ring.activate("k-next")
    assert Keyring.from_dir(folder).active_id == "k-next"
    with pytest.raises(KeyringError, match="active key and cannot be retired"):
        ring.retire("k-next")
    ring = ring.retire(old)
    assert old not in Keyring.from_dir(folder) and (folder / "retired" / f"{old}.key").exists()
    with pytest.raises(KeyringError, match="already exists"):
        ring.with_new_key("k-next")


def test_a_keyring_folder_that_lost_keys_fails_loudly(tmp_path):
    with pytest.raises(KeyringError, match="no keys in"):
        Keyring.from_dir(tmp_path / "empty", create=False)
    folder = tmp_path / "vault"
    ring = Keyring.from_dir(folder)
    (folder / f"{ring.active_id}.key").unlink()
    with pytest.raises(KeyringError, match="names key"):
        Keyring.from_dir(folder)
    (folder / "broken.key").write_text("not hex")
    with pytest.raises(KeyringError, match="does not hold 32 bytes"):
        Keyring.from_dir(folder)


def test_env_keyrings_take_the_last_key_as_active_and_never_show_key_bytes():
    text = json.dumps({"k1": KEY_A.hex(), "k2": KEY_B.hex()})
    ring = Keyring.from_json(text)
    assert ring.active_id == "k2" and ring.key("k1") == KEY_A
    assert Keyring.from_json(text, active="k1").active_key == KEY_A
    assert KEY_A.hex() not in repr(ring) and KEY_B.hex() not in repr(ring)
    with pytest.raises(KeyringError, match="cannot create key"):
        ring.with_new_key("k3")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nope", "is not JSON"),
        ("{}", "non-empty JSON object"),
        ('{"k1": "zz"}', "not a hex string"),
        ('{"k1": "abcd"}', "is 2 bytes, not 32"),
        ('{"../k1": "' + "00" * 32 + '"}', "bad key id"),
    ],
)
def test_malformed_env_keyrings_are_refused_without_echoing_the_value(text, problem):
    with pytest.raises(KeyringError, match=problem) as caught:
        Keyring.from_json(text, source="MEDLAKE_VAULT_KEYS")
    assert "abcd" not in str(caught.value) and "zz" not in str(caught.value)


@pytest.mark.parametrize("key_id", ["../etc", "", "a b", "x" * 65, ".hidden"])
def test_key_ids_that_are_not_safe_file_names_are_refused(key_id):
    with pytest.raises(KeyringError, match="bad key id"):
        check_key_id(key_id)


def test_a_key_file_others_may_read_or_that_another_user_owns_is_refused(tmp_path):
    import os

    from medlake.keys import KeyMissing, load_or_create_key

    path = tmp_path / "keys" / "audit.key"
    key = load_or_create_key(path)
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert load_or_create_key(path, create=False) == key
    os.chmod(path, 0o644)
    with pytest.raises(KeyMissing, match=r"readable or writable by other users \(mode 644\): run `chmod 600"):
        load_or_create_key(path, create=False)
    os.chmod(path, 0o600)
    os.chmod(path.parent, 0o755)
    with pytest.raises(KeyMissing, match="chmod 700"):
        load_or_create_key(path, create=False)
    os.chmod(path.parent, 0o700)
    if os.getuid() == 0:  # only root can hand a file to another user
        os.chown(path, 12345, -1)
        with pytest.raises(KeyMissing, match="belongs to uid 12345, not to the service principal"):
            load_or_create_key(path, create=False)
