"""The whole pipeline through a real Airflow DAG run: sample hospital → bronze → silver → gold.

Runs `medlake run` (the CLI → `airflow dags test` on a SQLite metadata DB) twice on the same
landing folder, and checks the lake against the generator's answer key (`_truth.json`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from medlake.config import load_settings
from medlake.governance.at_rest import PREFIX, encrypted_columns, lake_for
from medlake.lake import Lake
from medlake.registry import FHIR_SILVER
from medlake.sample import generate
from medlake.sample.hl7v2 import in_hl7

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEDLAKE = str(Path(sys.executable).with_name("medlake"))


def medlake(*args: str) -> dict[str, Any]:
    done = subprocess.run([MEDLAKE, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"medlake {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hospital")
    landing, lake = root / "landing", root / "lake"
    generate(landing, patients=50, seed=11)
    truth = json.loads((landing / "_truth.json").read_text())
    first = medlake("run", "--inline", "--landing", str(landing), "--lake", str(lake), "--json")
    snapshot = {name: Lake(lake).count(name) for name in Lake(lake).tables()}
    second = medlake("run", "--inline", "--landing", str(landing), "--lake", str(lake), "--json")
    # bronze and quarantine PHI is encrypted at rest: read the lake with the keys the CLI uses
    return {"landing": landing, "lake": lake_for(load_settings(), lake), "truth": truth, "first": first,
            "second": second, "counts_after_first": snapshot}


def test_the_run_is_a_real_airflow_dag_run_recorded_in_the_metadata_db(hospital):
    runs = medlake("airflow", "runs", "--json")
    ours = {hospital["first"]["dag_run"]["run_id"], hospital["second"]["dag_run"]["run_id"]}
    assert ours <= {r["run_id"] for r in runs if r["state"] == "success"}


def test_every_record_read_is_accounted_for(hospital):
    truth, summary = hospital["truth"], hospital["first"]
    assert summary["ledger_balanced"]
    ingest = [e for e in summary["ledger"] if e["stage"] == "ingest"]
    assert {e["table_name"] for e in ingest} == {"bronze.fhir_resources", "bronze.hl7v2_messages",
                                                 "bronze.csv_rows", "bronze.vitals_samples", "bronze.dicom_files",
                                                 "bronze.vcf_records", "bronze.vcf_headers"}
    assert sum(e["records_in"] for e in ingest) == truth["total_records"]
    stages = {e["stage"] for e in summary["ledger"]}
    assert stages == {"ingest", "silver", "deid_text", "standardize", "resolve", "resample", "gate", "impute"}
    for entry in summary["ledger"]:
        assert entry["records_in"] == (entry["records_out"] + entry["quarantined"] + entry["merged"]
                                       + entry["bronze_only"]), entry


def test_tables_exist_with_the_expected_rows(hospital):
    lake, truth = hospital["lake"], hospital["truth"]
    names = set(lake.tables())
    assert {"bronze.fhir_resources", "bronze.hl7v2_messages", "quarantine", "ledger", "gold.ml_patient_features"} | {
        s.name for s in FHIR_SILVER.values()} <= names
    bad_patients = sum(1 for m in truth["malformed"] if "Patient" in m.get("reason", "") and m["rule"] == "validate.fhir_r4")
    patients = lake.read("silver.patients", columns=["person_key", "source_system"]).to_pylist()
    fhir_persons = {p["person_key"] for p in patients if p["source_system"] == "fhir"}
    hl7_persons = {p["person_key"] for p in patients if p["source_system"].startswith("hl7v2:")}
    # entity resolution: a duplicate registration (another MRN) is the same person as its original
    assert len(fhir_persons) == truth["resources_total"]["Patient"] - bad_patients - len(truth["duplicates"])
    assert len(hl7_persons) == sum(1 for i in range(truth["patients"]) if in_hl7(i))  # one HL7 record each
    assert hl7_persons <= fhir_persons  # the same MRN: one person_key across sources
    persons = {p["person_key"] for p in patients}
    assert lake.count("gold.ml_patient_features") == len(persons)


def test_planted_malformed_records_are_quarantined_with_their_rule(hospital):
    quarantined = hospital["lake"].read("quarantine").to_pylist()
    found = {(q["source_file"], q["source_offset"], q["rule_id"]) for q in quarantined}
    for planted in hospital["truth"]["malformed"]:
        assert (planted["file"], planted["offset"], planted["rule"]) in found, planted
    for q in quarantined:
        assert q["reason"] and q["rule_id"].count(".") >= 1


def test_impossible_values_are_stopped_before_silver(hospital):
    quarantined = hospital["lake"].read("quarantine").to_pylist()
    # clean's plausibility step applies the gate suite's ranges first; the gate finds none left
    hl7 = set(hospital["lake"].read("bronze.hl7v2_messages", columns=["_record_hash"]).column(0).to_pylist())
    refused = Counter(q["rule_id"] for q in quarantined  # truth counts FHIR ...
                      if q["record_hash"] not in hl7 and q["table_name"] != "silver.vitals_raw")
    assert refused["ranges.impossible"] == len(hospital["truth"]["impossible_values"])
    vitals = [q for q in quarantined if q["table_name"] == "silver.vitals_raw"]  # ... and vitals apart
    assert len(vitals) == sum(v["kind"] == "impossible" for v in hospital["truth"]["vitals"])
    assert not [q for q in quarantined if q["stage"] == "gate" and q["rule_id"].endswith("_range")]
    silver = hospital["lake"].read("silver.observations").to_pylist()
    assert not [o for o in silver if o["code"] == "8867-4" and o["value_unit"] == "/min" and o["value_num"] > 300]


def test_silver_is_standardized(hospital):
    truth = hospital["truth"]
    observations = hospital["lake"].read("silver.observations").to_pylist()
    silver = [o for o in observations if o["_source_kind"] == "fhir"]  # the truth's counts are FHIR's
    assert not [o for o in observations if o["code_system"] == truth["local_codes"]["system"]]
    assert sum(o["mapping_status"] == "mapped" for o in silver) == len(truth["local_coded"])
    assert sum(o["_unit_converted_from"] is not None for o in silver) == len(truth["unit_mix"])


def test_rerunning_the_same_landing_adds_no_rows(hospital):
    lake = hospital["lake"]
    after = {name: lake.count(name) for name in hospital["counts_after_first"]}
    changed = {n: (hospital["counts_after_first"][n], after[n]) for n in after
               if n not in ("ledger", "audit") and not n.startswith("staging.")
               and after[n] != hospital["counts_after_first"][n]}
    assert changed == {}
    for ingest in (e for e in hospital["second"]["ledger"] if e["stage"] == "ingest"):
        if ingest["table_name"] == "bronze.vitals_samples":  # its watermark: nothing new to read
            assert ingest["records_in"] == 0, ingest
            continue
        assert ingest["records_out"] == 0 and ingest["merged"] > 0, ingest


def _strings(table: pa.Table) -> list[str]:
    values: list[str] = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values.extend(v for v in column.to_pylist() if v)
    return values


def test_no_planted_phi_reaches_silver_or_gold(hospital):
    lake, phi = hospital["lake"], hospital["truth"]["phi"]
    tables = [n for n in lake.tables() if n.startswith(("silver.", "gold."))]
    assert tables
    words: set[str] = set()
    text: list[str] = []
    for name in tables:
        cells = _strings(lake.read(name))
        text.extend(cells)
        for cell in cells:
            words.update(re.findall(r"[^\W\d_]+", cell))
    blob = "\n".join(text)
    leaked_names = [n for n in phi["names"] if n in words]
    leaked_other = [v for kind in ("phones", "mrns", "ssns", "streets") for v in phi[kind] if v in blob]
    assert leaked_names == [] and leaked_other == []


def test_bronze_and_quarantine_hold_ciphertext_without_the_key_and_plaintext_with_it(hospital):
    keyless, lake, phi = Lake(hospital["lake"].root), hospital["lake"], hospital["truth"]["phi"]
    for name, columns in encrypted_columns().items():
        if not keyless.exists(name):
            continue
        stored, opened = keyless.read(name, columns=list(columns)), lake.read(name, columns=list(columns))
        for column in columns:
            values = [v for v in stored.column(column).to_pylist() if v is not None]
            assert values and all(str(v).startswith(PREFIX) for v in _flat(values)), (name, column)
            assert not [v for v in _flat(opened.column(column).to_pylist()) if str(v).startswith(PREFIX)]
    clear = "\n".join(_strings(lake.read("bronze.fhir_resources")) + _strings(lake.read("quarantine")))
    sealed = "\n".join(_strings(keyless.read("bronze.fhir_resources")) + _strings(keyless.read("quarantine")))
    assert [p for p in phi["phones"] if p in clear] and not [p for p in phi["phones"] if p in sealed]
    # names of 7+ letters: shorter ones occur by chance as letter runs inside base64 ciphertext
    assert not [n for n in phi["names"] if n in set(re.findall(r"[^\W\d_]+", sealed.replace(PREFIX, " ")))
                if len(n) > 6]


def _flat(values: list[Any]) -> list[Any]:
    return [x for v in values for x in (v if isinstance(v, list) else [v]) if x is not None]


def test_no_planted_phi_in_any_log_line(hospital):
    """Airflow's task logs and medlake's run logs of both runs: no planted identifier in any line."""
    phi = hospital["truth"]["phi"]
    logs = sorted(Path(os.environ["AIRFLOW_HOME"]).rglob("*.log"))
    texts = {path: path.read_text(encoding="utf-8", errors="replace") for path in logs}
    # `airflow dags test` runs the tasks in-process: each run's log holds every task's lines
    assert sum("clean: concept maps" in text for text in texts.values()) >= 2
    leaks: list[tuple[str, str]] = []
    for path, text in texts.items():
        words = set(re.findall(r"[^\W\d_]+", text))
        leaks += [(path.name, n) for n in phi["names"] if n in words]
        leaks += [(path.name, v) for kind in ("phones", "mrns", "ssns", "streets") for v in phi[kind] if v in text]
    assert leaks == []


def test_a_table_level_gate_failure_fails_the_run_loudly_without_retrying(tmp_path):
    landing = tmp_path / "landing"
    (landing / "fhir").mkdir(parents=True)
    patient = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1970-01-01"}
    lines = [json.dumps(patient)]
    for i in range(3):  # valid FHIR, but no encounter class is an HL7 v3 ActEncounterCode: a broken class mapping
        lines.append(json.dumps({"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
                                 "subject": {"reference": "Patient/p1"}, "class": {"code": f"LOCAL-{i}"},
                                 "period": {"start": "2020-01-01T10:00:00Z"}}))
    (landing / "fhir" / "export.ndjson").write_text("\n".join(lines) + "\n")
    done = subprocess.run([MEDLAKE, "run", "--inline", "--landing", str(landing), "--lake", str(tmp_path / "lake")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "class_mostly_known" in done.stderr and "silver.encounters" in done.stderr
    assert "ended failed" in done.stderr
    assert done.stderr.count("started  gate") == 1  # bad data is not retried
    assert not Lake(tmp_path / "lake").exists("silver.encounters")  # nothing promoted


def test_every_run_is_in_the_audit_chain_and_the_chain_verifies(hospital):
    lake = str(hospital["lake"].root)
    done = subprocess.run([MEDLAKE, "audit", "verify", "--lake", lake], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    entries = medlake("audit", "log", "--lake", lake, "--json")
    runs = [e["run_id"] for e in entries if e["action"] == "pipeline.run"]
    assert runs == [hospital["first"]["dag_run"]["run_id"], hospital["second"]["dag_run"]["run_id"]]


def test_every_task_emitted_lineage_with_the_versions_it_read_and_wrote(hospital):
    from medlake.governance.lineage import read_events
    from medlake.registry import staging_name

    lake = hospital["lake"]
    events = read_events(lake)
    tasks = ("ingest", "clean", "gate", "dbt_gold", "summary")
    silver = [s.name for s in FHIR_SILVER.values()]

    def version(event: dict[str, Any], side: str, name: str) -> int:
        [found] = [d for d in event[side] if d["name"] == name]
        return int(found["facets"]["version"]["datasetVersion"])

    for summary in (hospital["first"], hospital["second"]):
        run_id = summary["dag_run"]["run_id"]
        ours = [e for e in events if e["run"]["facets"]["medlake_run"]["airflow_run_id"] == run_id]
        states: dict[str, list[str]] = {}
        for e in ours:
            states.setdefault(e["job"]["name"], []).append(e["eventType"])
        assert states == {f"medlake_pipeline.{t}": ["START", "COMPLETE"] for t in tasks}
        done = {e["job"]["name"].split(".", 1)[1]: e for e in ours if e["eventType"] == "COMPLETE"}
        bronze = "bronze.fhir_resources"
        assert version(done["clean"], "inputs", bronze) == version(done["ingest"], "outputs", bronze)
        for name in silver:
            assert version(done["gate"], "inputs", staging_name(name)) == version(done["clean"], "outputs", staging_name(name))
            assert version(done["dbt_gold"], "inputs", name) == version(done["gate"], "outputs", name)
        ledger_rows = {(e["stage"], e["table_name"]): e for e in summary["ledger"]}
        for output in done["gate"]["outputs"]:
            facet = output["outputFacets"].get("medlake_ledger")
            if facet:
                assert facet["records_out"] == ledger_rows[("gate", output["name"])]["records_out"]
        airflow = {
            (e["job"]["name"], e["eventType"])
            for e in read_events(lake, airflow=True)
            if e["run"]["facets"].get("airflow", {}).get("dagRun", {}).get("run_id") == run_id
        }
        assert {(f"medlake_pipeline.{t}", s) for t in tasks for s in ("START", "COMPLETE")} <= airflow
    assert version(done["dbt_gold"], "outputs", "gold.ml_patient_features") == lake.version("gold.ml_patient_features")
    shown = medlake("lineage", "show", "silver.observations", "--lake", str(lake.root), "--json")
    assert shown["run_id"] == hospital["second"]["dag_run"]["run_id"]
    assert [u["table"] for u in shown["upstream"]] == ["staging.observations"]


def test_the_vault_reidentifies_a_silver_person_for_a_reidentifier_principal_only(hospital, tmp_path, monkeypatch):
    import pwd

    import yaml  # type: ignore[import-untyped]

    from medlake.governance.access import DEFAULT_POLICY

    lake = hospital["lake"]
    person = lake.read("silver.patients", columns=["person_key"]).column("person_key")[0].as_py()
    # the local owner holds data_engineer, compliance and ml, never reidentifier by default
    denied = subprocess.run([MEDLAKE, "vault", "reidentify", person, "--lake", str(lake.root), "--role", "reidentifier",
                             "--reason", "curious", "--break-glass"], capture_output=True, text=True, check=False)
    assert denied.returncode == 1 and "may not act as role 'reidentifier'" in denied.stderr
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["principals"][f"user:{pwd.getpwuid(os.getuid()).pw_name}"] = ["reidentifier"]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("MEDLAKE__ACCESS__POLICY_FILE", str(tmp_path / "policy.yaml"))
    found = medlake("vault", "reidentify", person, "--lake", str(lake.root), "--reason", "e2e check", "--break-glass")
    identity = found["records"][0]["identity"]
    assert identity["names"] and identity["names"][0]["family"] in hospital["truth"]["phi"]["names"]
    entries = medlake("audit", "log", "--lake", str(lake.root), "--json")
    assert [e["action"] for e in entries][-2:] == ["alert.break_glass", "vault.reidentify"]
    assert any(e["action"] == "access.denied" and e["details"]["attempted"] == "assume_role" for e in entries)
