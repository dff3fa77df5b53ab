"""Encryption at rest of raw PHI: bronze, the quarantine and the archived DICOM originals hold only
ciphertext on disk, open with the vault's keys, survive key rotation (even killed midway), and a
wrong key gives a clear error and no output."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medlake.cli import app
from medlake.config import load_settings
from medlake.governance import at_rest, audit
from medlake.governance.at_rest import PREFIX, AtRestKeyError, EnvelopeCodec, lake_for
from medlake.governance.crypto import Keyring
from medlake.jobs import pipeline
from medlake.lake import Lake
from medlake.registry import BRONZE_FHIR, BRONZE_VITALS, QUARANTINE
from medlake.sample import generate

AUDIT_KEY = b"\x22" * 32
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _fhir_rows(*names: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "resource_type": "Patient",
                "resource_id": f"p{i}",
                "raw": json.dumps({"resourceType": "Patient", "name": [{"family": name}]}),
                "_source_file": f"fhir/{name}.json",
                "_source_offset": 0,
                "_ingested_at": NOW,
                "_record_hash": f"h{i}",
                "_run_id": "r1",
            }
            for i, name in enumerate(names)
        ],
        schema=BRONZE_FHIR.schema,
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "vault"


def _lake(root: Path, keys: Path, *, create: bool = True) -> Lake:
    return Lake(root, codec=EnvelopeCodec(root, lambda: Keyring.from_dir(keys, create=create)))


def _stored(lake: Lake, name: str) -> list[dict[str, Any]]:
    """The rows as the files hold them: read without any key."""
    return Lake(lake.root).read(name).to_pylist()


# -- round trip and lookups -----------------------------------------------------------------


def test_sealed_columns_round_trip_and_are_ciphertext_without_the_key(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    rows = _fhir_rows("Okafor", "Díaz")
    assert lake.insert_new(BRONZE_FHIR.name, rows) == 2
    assert lake.read(BRONZE_FHIR.name).sort_by("_record_hash").to_pylist() == rows.to_pylist()
    stored = _stored(lake, BRONZE_FHIR.name)
    assert all(
        r["raw"].startswith(PREFIX + "z:") and r["_source_file"].startswith(PREFIX + "d:")
        for r in stored
    )
    assert not [
        r
        for r in stored
        if "Okafor" in json.dumps(r, default=str) or "Díaz" in json.dumps(r, default=str)
    ]
    assert {r["_record_hash"] for r in stored} == {"h0", "h1"}  # MERGE keys stay plaintext
    # re-ingesting merges on the hash: nothing added, nothing re-sealed
    assert (
        lake.insert_new(BRONZE_FHIR.name, rows) == 0 and _stored(lake, BRONZE_FHIR.name) == stored
    )


def test_raw_payloads_get_a_fresh_nonce_file_names_are_deterministic(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    rows = _fhir_rows("Okafor").to_pylist()
    lake.insert_new(
        BRONZE_FHIR.name, pa.Table.from_pylist([*rows, {**rows[0], "_record_hash": "h9"}])
    )
    stored = _stored(lake, BRONZE_FHIR.name)
    assert stored[0]["raw"] != stored[1]["raw"]
    assert stored[0]["_source_file"] == stored[1]["_source_file"]


def test_where_on_an_encrypted_file_name_finds_the_rows_with_the_key_only(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    lake.insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor", "Díaz", "Chen"))
    found = lake.read(
        BRONZE_FHIR.name,
        columns=["resource_id", "_source_file"],
        where={"_source_file": "fhir/Díaz.json"},
    )
    assert found.to_pylist() == [{"resource_id": "p1", "_source_file": "fhir/Díaz.json"}]
    assert (
        Lake(lake.root).read(BRONZE_FHIR.name, where={"_source_file": "fhir/Díaz.json"}).num_rows
        == 0
    )
    with pytest.raises(
        ValueError, match="bronze.fhir_resources.raw is encrypted with a random nonce"
    ):
        lake.read(BRONZE_FHIR.name, where={"raw": "{}"})


def test_quarantine_lookup_by_file_and_steward_updates_stay_sealed(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    row = {
        "quarantine_id": "q1",
        "run_id": "r1",
        "stage": "ingest",
        "table_name": BRONZE_FHIR.name,
        "rule_id": "parse.bad_json",
        "reason": "not JSON",
        "source_file": "fhir/Okafor.json",
        "source_offset": 3,
        "raw_record": '{"family": "Okafor"',
        "quarantined_at": NOW,
        "status": "open",
    }
    lake.insert_new(QUARANTINE.name, pa.Table.from_pylist([row]))
    lake.upsert(QUARANTINE.name, pa.Table.from_pylist([{**row, "status": "rejected"}]))
    (opened,) = lake.read(QUARANTINE.name, where={"source_file": "fhir/Okafor.json"}).to_pylist()
    assert (opened["raw_record"], opened["status"]) == ('{"family": "Okafor"', "rejected")
    assert "Okafor" not in json.dumps(_stored(lake, QUARANTINE.name), default=str)


def test_list_columns_and_identifiers_are_sealed_too(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    sample = {
        "layout": "jsonl",
        "device_id": "d1",
        "patient_id": "MRN-0042",
        "id_system": "urn:mrn",
        "metric": "hr",
        "value": 60.0,
        "raw": '{"mrn": "MRN-0042"}',
        "_source_file": "vitals/a.jsonl",
        "_source_offset": 1,
        "_ingested_at": NOW,
        "_record_hash": "v1",
        "_run_id": "r1",
    }
    lake.insert_new(BRONZE_VITALS.name, pa.Table.from_pylist([sample]))
    header = {
        "fileformat": "VCFv4.2",
        "samples": ["Okafor_Ana", None],
        "raw": "##fileformat=VCFv4.2",
        "_source_file": "vcf/a.vcf",
        "_source_offset": 0,
        "_ingested_at": NOW,
        "_record_hash": "x1",
        "_run_id": "r1",
    }
    lake.insert_new("bronze.vcf_headers", pa.Table.from_pylist([header]))
    assert lake.read(BRONZE_VITALS.name).to_pylist()[0]["patient_id"] == "MRN-0042"
    assert lake.read("bronze.vcf_headers").to_pylist()[0]["samples"] == ["Okafor_Ana", None]
    on_disk = json.dumps(
        _stored(lake, BRONZE_VITALS.name) + _stored(lake, "bronze.vcf_headers"), default=str
    )
    assert "MRN-0042" not in on_disk and "Okafor" not in on_disk


def test_rows_written_before_encryption_stay_readable_beside_sealed_ones(tmp_path, keys):
    Lake(tmp_path / "lake").insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor"))
    lake = _lake(tmp_path / "lake", keys)
    lake.insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor", "Díaz"))
    assert sorted(r["_source_file"] for r in lake.read(BRONZE_FHIR.name).to_pylist()) == [
        "fhir/Díaz.json",
        "fhir/Okafor.json",
    ]
    assert lake.read(BRONZE_FHIR.name, where={"_source_file": "fhir/Okafor.json"}).num_rows == 1


def test_a_lake_with_nothing_encrypted_is_read_without_any_key(tmp_path, keys):
    Lake(tmp_path / "lake").insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor"))
    lake = _lake(tmp_path / "lake", keys, create=False)  # no keyring exists: must not be needed
    assert lake.read(BRONZE_FHIR.name).num_rows == 1 and not keys.exists()


# -- wrong keys -----------------------------------------------------------------------------


def test_a_wrong_master_key_gives_a_clear_error_and_no_output_nor_writes(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    lake.insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor"))
    right = Keyring.from_dir(keys)
    wrong = Keyring(
        keys={right.active_id: b"\x99" * 32}, active_id=right.active_id, source="MEDLAKE_VAULT_KEYS"
    )
    stranger = Lake(lake.root, codec=EnvelopeCodec(lake.root, lambda: wrong))
    version = lake.version(BRONZE_FHIR.name)
    result = None
    with pytest.raises(
        AtRestKeyError, match=rf"does not unwrap under master key '{right.active_id}'"
    ) as caught:
        result = stranger.read(BRONZE_FHIR.name)
    assert result is None and "Okafor" not in str(caught.value)
    with pytest.raises(AtRestKeyError):
        stranger.insert_new(BRONZE_FHIR.name, _fhir_rows("Díaz"))
    assert lake.version(BRONZE_FHIR.name) == version


def test_a_value_moved_to_another_column_does_not_decrypt(tmp_path, keys):
    lake = _lake(tmp_path / "lake", keys)
    lake.insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor"))
    stored = Lake(lake.root).read(BRONZE_FHIR.name)
    swapped = stored.set_column(
        stored.schema.get_field_index("_source_file"),
        "_source_file",
        stored.column("raw").cast(pa.string()),
    )
    Lake(lake.root).write(BRONZE_FHIR.name, swapped, mode="overwrite")
    with pytest.raises(
        AtRestKeyError,
        match=r"bronze.fhir_resources._source_file does not decrypt.*\(record _record_hash=h0\)",
    ):
        lake.read(BRONZE_FHIR.name)


# -- the sample hospital: nothing planted is on disk in clear -------------------------------


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample hospital's landing folder ingested the way the pipeline's ingest task does it."""
    root = tmp_path_factory.mktemp("hospital")
    generate(root / "landing", patients=12, seed=5)
    pipeline.task_ingest(str(root / "landing"), str(root / "lake"), run_id="run-1")
    truth = json.loads((root / "landing" / "_truth.json").read_text())
    return {"root": root / "lake", "phi": truth["phi"], "truth": truth}


def _phi_found(text: str, phi: dict[str, list[str]]) -> list[str]:
    words = set(re.findall(r"[^\W\d_]+", text))
    return [n for n in phi["names"] if n in words] + [
        v for kind in ("phones", "mrns", "ssns", "streets") for v in phi[kind] if v in text
    ]


def _at_rest_files(lake_root: Path) -> list[Path]:
    return sorted(
        p
        for folder in ("bronze", "quarantine", "reference/vitals_watermark")
        for p in (lake_root / folder).rglob("*.parquet")
    )


def test_no_planted_phi_is_in_the_bronze_or_quarantine_files(ingested):
    files, phi = _at_rest_files(ingested["root"]), ingested["phi"]
    assert (
        len({f.relative_to(ingested["root"]).parts[:2] for f in files}) >= 8
    )  # every bronze table, the quarantine, the watermark
    sealed = at_rest.encrypted_columns()
    clear: list[str] = []
    for path in files:
        table = pq.read_table(path)
        name = (
            "quarantine"
            if path.relative_to(ingested["root"]).parts[0] == "quarantine"
            else ".".join(path.relative_to(ingested["root"]).parts[:2])
        )
        for column in table.column_names:
            values = table.column(column).to_pylist()
            flat = [
                x
                for v in values
                if v is not None
                for x in (v if isinstance(v, list) else [v])
                if x is not None
            ]
            if column in sealed.get(name, {}):
                assert all(isinstance(x, str) and x.startswith(PREFIX) for x in flat), (
                    name,
                    column,
                )
            else:
                clear.extend(str(x) for x in flat)
        data = path.read_bytes().decode("latin-1")  # the raw bytes: phones, MRNs, SSNs, streets
        assert [
            v for kind in ("phones", "mrns", "ssns", "streets") for v in phi[kind] if v in data
        ] == [], path
    assert _phi_found("\n".join(clear), phi) == []


def test_the_scan_would_see_planted_phi_in_clear(ingested):
    """The same search over the opened tables finds the planted PHI: the scan above can fail."""
    lake = lake_for(load_settings(), ingested["root"])
    text = json.dumps(
        [
            lake.read(n).to_pylist()
            for n in (
                "bronze.fhir_resources",
                "bronze.hl7v2_messages",
                "bronze.csv_rows",
                "quarantine",
            )
        ],
        default=str,
    )
    found = _phi_found(text, ingested["phi"])
    assert any(n in found for n in ingested["phi"]["names"]) and any(
        p in found for p in ingested["phi"]["phones"]
    )


def test_the_archived_dicom_originals_are_sealed_and_open_with_the_key(ingested):
    lake = lake_for(load_settings(), ingested["root"])
    archived = sorted((ingested["root"] / "raw" / "dicom").glob("*.dcm"))
    assert archived
    for path in archived:
        data = path.read_bytes()
        assert data.startswith(at_rest.FILE_MAGIC) and b"DICM" not in data
        opened = lake.open_file(path.relative_to(ingested["root"]).as_posix())
        assert hashlib.sha256(opened).hexdigest() == path.stem  # the original, byte for byte
    assert (
        Lake(ingested["root"]).open_file(archived[0].relative_to(ingested["root"]).as_posix())
        == archived[0].read_bytes()
    )


# -- rotation -------------------------------------------------------------------------------


@pytest.fixture
def sealed_lake(tmp_path: Path, keys: Path) -> Lake:
    lake = _lake(tmp_path / "lake", keys)
    lake.insert_new(BRONZE_FHIR.name, _fhir_rows("Okafor", "Díaz"))
    lake.insert_new(
        QUARANTINE.name,
        pa.Table.from_pylist(
            [
                {
                    "quarantine_id": "q1",
                    "run_id": "r1",
                    "stage": "ingest",
                    "table_name": BRONZE_FHIR.name,
                    "rule_id": "parse.bad_json",
                    "reason": "not JSON",
                    "source_file": "fhir/Chen.json",
                    "raw_record": "{Chen",
                    "quarantined_at": NOW,
                    "status": "open",
                }
            ]
        ),
    )
    return lake


def _everything(lake: Lake, keys: Path) -> dict[str, list[dict[str, Any]]]:
    """Every sealed table opened by a fresh codec (no cached data keys); raises if any value does not open."""
    fresh = _lake(lake.root, keys, create=False)
    return {
        n: fresh.read(n).sort_by(fresh.read(n).column_names[0]).to_pylist()
        for n in (BRONZE_FHIR.name, QUARANTINE.name)
    }


def test_rotation_rewraps_the_data_keys_and_keeps_every_row_readable(sealed_lake, keys):
    before, stored = _everything(sealed_lake, keys), _stored(sealed_lake, BRONZE_FHIR.name)
    old = Keyring.from_dir(keys).active_id
    rotation = at_rest.rotate_key(
        sealed_lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops"
    )
    assert rotation.retired == (old,) and Keyring.from_dir(keys).ids == (rotation.new_key_id,)
    assert {r["master_key_id"] for r in at_rest.data_key_rows(sealed_lake.root)} == {
        rotation.new_key_id
    }
    assert _everything(sealed_lake, keys) == before
    assert _stored(sealed_lake, BRONZE_FHIR.name) == stored  # rows untouched: still ciphertext
    assert "Okafor" not in json.dumps(stored, default=str) and "Chen" not in json.dumps(
        _stored(sealed_lake, QUARANTINE.name), default=str
    )
    rewraps = [
        json.loads(e.details) for e in audit.read(sealed_lake) if e.action == "at_rest.rewrap"
    ]
    assert rewraps == [{"to": rotation.new_key_id, "rewrapped": 2, "data_keys": 2}]
    assert audit.verify(sealed_lake, key=AUDIT_KEY).ok


def test_the_old_master_key_alone_no_longer_opens_anything_after_rotation(sealed_lake, keys):
    old = Keyring.from_dir(keys)
    at_rest.rotate_key(sealed_lake, keyring=old, audit_key=AUDIT_KEY, actor="ops")
    only_old = Keyring(
        keys={old.active_id: old.active_key}, active_id=old.active_id, source="a backup"
    )
    stale = Lake(sealed_lake.root, codec=EnvelopeCodec(sealed_lake.root, lambda: only_old))
    with pytest.raises(AtRestKeyError, match="is wrapped by master key"):
        stale.read(BRONZE_FHIR.name)


@pytest.mark.parametrize("step", at_rest.ROTATION_STEPS)
def test_a_rotation_interrupted_at_any_step_leaves_every_row_readable(sealed_lake, keys, step):
    before = _everything(sealed_lake, keys)

    def crash(at: str) -> None:
        if at == step:
            raise KeyboardInterrupt(f"interrupted after {at}")

    with pytest.raises(KeyboardInterrupt):
        at_rest.rotate_key(
            sealed_lake,
            keyring=Keyring.from_dir(keys),
            audit_key=AUDIT_KEY,
            actor="ops",
            on_step=crash,
        )
    assert _everything(sealed_lake, keys) == before
    finished = at_rest.rotate_key(
        sealed_lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops"
    )
    assert Keyring.from_dir(keys).ids == (finished.new_key_id,)
    assert _everything(sealed_lake, keys) == before


_ROTATE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from medlake.governance import at_rest
    from medlake.governance.crypto import Keyring
    from medlake.lake import Lake

    root, keys, die_at = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def die(step):
        if step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash

    at_rest.rotate_key(Lake(Path(root)), keyring=Keyring.from_dir(keys, create=False),
                       audit_key=bytes([0x22]) * 32, actor="ops", on_step=die)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["activated", "rewrapped", "retired"])
def test_a_rotation_killed_with_sigkill_leaves_every_row_readable(sealed_lake, keys, step):
    before = _everything(sealed_lake, keys)
    killed = subprocess.run(
        [sys.executable, "-c", _ROTATE_AND_DIE, str(sealed_lake.root), str(keys), step],
        check=False,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    assert _everything(sealed_lake, keys) == before
    at_rest.rotate_key(
        sealed_lake, keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY, actor="ops"
    )
    assert _everything(sealed_lake, keys) == before


# -- CLI ------------------------------------------------------------------------------------


def test_cli_rotate_key_rewraps_and_quarantine_list_names_files_by_keyed_reference(cli, sealed_lake, keys):
    before = _everything(sealed_lake, keys)
    result = cli("vault", "rotate-key", "--lake", str(sealed_lake.root), "--json")
    assert result.exit_code == 0, result.output
    new = json.loads(result.stdout)["new_key_id"]
    assert {r["master_key_id"] for r in at_rest.data_key_rows(sealed_lake.root)} == {new}
    assert _everything(sealed_lake, keys) == before
    listed = CliRunner().invoke(
        app, ["quarantine", "list", "--lake", str(sealed_lake.root), "--json"]
    )
    assert listed.exit_code == 0, listed.output
    from medlake.config import load_settings
    from medlake.governance.pseudonyms import file_reference
    from medlake.keys import project_key

    ref = file_reference(project_key(load_settings()), "fhir/Chen.json")
    assert [(r["file"], "source_file" in r) for r in json.loads(listed.stdout)] == [(ref, False)]
    assert "Chen" not in listed.stdout
    # ml holds no grant on the quarantine: refused, and the refusal is in the audit chain
    refused = CliRunner().invoke(app, ["quarantine", "list", "--lake", str(sealed_lake.root), "--role", "ml"])
    assert refused.exit_code == 1 and "refused" in refused.output and "Chen" not in refused.output
    from medlake.governance import audit

    actions = [(e.action, e.role) for e in audit.read(sealed_lake)]
    assert ("access.read", "data_engineer") in actions and actions[-1] == ("access.denied", "ml")


def test_quarantine_reasons_name_files_by_keyed_reference_on_write(tmp_path, keys):
    from medlake.governance.pseudonyms import file_reference
    from medlake.quarantine import quarantine_rows

    root = tmp_path / "lake"
    key = b"\x05" * 32
    lake = Lake(root, codec=EnvelopeCodec(root, lambda: Keyring.from_dir(keys), reference_key=lambda: key))
    name = "fhir/bundles/Ana_Okafor_0001.json"
    rows = quarantine_rows(
        [{"rule_id": "parse.bad_json", "reason": f"{name} line 3: Ana_Okafor_0001.json is not JSON",
          "source_file": name, "source_offset": 3}],
        table_name=BRONZE_FHIR.name,
    )
    lake.insert_new(QUARANTINE.name, rows)
    ref = file_reference(key, name)
    (stored,) = _stored(lake, QUARANTINE.name)
    assert stored["reason"] == f"{ref} line 3: {ref} is not JSON"
    assert "Okafor" not in json.dumps(stored, default=str)  # the name only in the encrypted source_file
    (opened,) = lake.read(QUARANTINE.name).to_pylist()
    assert opened["source_file"] == name and opened["reason"] == stored["reason"]
