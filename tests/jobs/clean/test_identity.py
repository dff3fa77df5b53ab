"""Patient identity you can trust: hard negatives never merge, hard positives link or wait for a
steward, the review queue and its audited decisions, unmerge, and keyed blocking tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from medlake.governance import audit
from medlake.governance.pseudonyms import source_key
from medlake.jobs import pipeline
from medlake.jobs.clean import dedup, identity
from medlake.jobs.ingest import fhir
from medlake.lake import Lake
from medlake.registry import (
    IDENTITY_REVIEW,
    IDENTITY_TOKENS,
    PERSON_CROSSWALK,
    PERSON_EVENTS,
    staging_name,
)

KEY = b"identity-test-project-key-32byte"
AUDIT_KEY = b"identity-test-audit-key-32-bytes"
T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: strangers around each case, so a pair is judged among a realistic population
TOWN = [
    ("Liam", "Garcia", "1950-01-11", "male"),
    ("Noah", "Miller", "1961-02-12", "male"),
    ("Ava", "Davis", "1972-03-13", "female"),
    ("Mia", "Wilson", "1983-04-14", "female"),
    ("Zoe", "Moore", "1994-05-15", "female"),
    ("Eli", "Taylor", "1945-06-16", "male"),
    ("Ivy", "Thomas", "1956-07-17", "female"),
    ("Max", "White", "1967-08-18", "male"),
    ("Ruth", "Harris", "1978-09-19", "female"),
    ("Omar", "Clark", "1989-10-20", "male"),
    ("Grace", "Lewis", "1999-11-21", "female"),
    ("Hugo", "Walker", "1940-12-22", "male"),
]


def person_record(
    source: str,
    given: str,
    family: str,
    birth: str,
    sex: str,
    *,
    phone: str | None = "617-555-0100",
    street: str | None = "12 Oak St",
    postal: str = "02139",
    city: str = "Springfield",
    suffix: str | None = None,
    ssn: str | None = None,
    email: str | None = None,
) -> tuple[dict[str, Any], str]:
    """A vault-shaped identity (what fhir/hl7v2 ``patient_identities`` return) and its sex."""
    name: dict[str, Any] = {"family": family, "given": [given]}
    if suffix:
        name["suffix"] = [suffix]
    ident = {
        "source_key": source,
        "person_key": source,
        "source_system": "test",
        "names": [name],
        "birth_date": birth,
        "telecom": ([{"system": "phone", "value": phone}] if phone else [])
        + ([{"system": "email", "value": email}] if email else []),
        "address": [{"line": [street], "city": city, "postalCode": postal}] if street else [],
        "identifiers": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}] if ssn else [],
    }
    return ident, sex


def town() -> list[tuple[dict[str, Any], str]]:
    return [
        person_record(f"town{i}", g, f, b, s, phone=f"555-010-{i:04d}", street=f"{i} Cedar Ave",
                      postal=f"021{i:02d}")
        for i, (g, f, b, s) in enumerate(TOWN)
    ]


def outcomes(records: list[tuple[dict[str, Any], str]]) -> tuple[dict[str, str], set[frozenset[str]]]:
    """Record → its cluster, and the pairs queued for review."""
    linkage = dedup.link(
        dedup.features([r for r, _ in records], sex={r["source_key"]: s for r, s in records})
    )
    clusters = dict(zip(linkage.clusters.column("source_key").to_pylist(),
                        linkage.clusters.column("cluster").to_pylist(), strict=True))
    review = {frozenset((r["source_key_l"], r["source_key_r"])) for r in linkage.review.to_pylist()}
    return clusters, review


# -- hard negatives: never one person ------------------------------------------------------------

HARD_NEGATIVES = {
    "father and son, Sr and Jr, one address, decades apart": [
        person_record("sr", "John", "Carter", "1948-02-11", "male", suffix="Sr"),
        person_record("jr", "John", "Carter", "1976-09-23", "male", suffix="Jr."),
    ],
    "father and son, suffixes only in the name, same day and month": [
        person_record("sr", "Robert", "Hale Sr", "1951-05-05", "male"),
        person_record("jr", "Robert", "Hale Jr", "1981-05-05", "male"),
    ],
    "father and son, no suffix, birth years 30 apart by one digit": [
        person_record("sr", "Robert", "Hale", "1951-05-05", "male"),
        person_record("jr", "Robert", "Hale", "1981-05-05", "male"),
    ],
    "opposite-sex twins, Daniel and Danielle": [
        person_record("sr", "Daniel", "Okafor", "2003-08-14", "male"),
        person_record("jr", "Danielle", "Okafor", "2003-08-14", "female"),
    ],
    "opposite-sex twins, Jordan and Jordyn": [
        person_record("sr", "Jordan", "Ruiz", "2010-01-30", "male"),
        person_record("jr", "Jordyn", "Ruiz", "2010-01-30", "female"),
    ],
    "same-sex twins, Ava and Eva": [
        person_record("sr", "Ava", "Lindqvist", "2015-04-02", "female"),
        person_record("jr", "Eva", "Lindqvist", "2015-04-02", "female"),
    ],
    "same-sex twins, Madison and Madeline": [
        person_record("sr", "Madison", "Brooks", "2008-12-01", "female"),
        person_record("jr", "Madeline", "Brooks", "2008-12-01", "female"),
    ],
    "mother and daughter sharing a name and a home": [
        person_record("sr", "Mary", "Johnson", "1956-02-03", "female"),
        person_record("jr", "Mary", "Johnson", "1984-08-19", "female"),
    ],
    "namesakes born a week apart in one town, no phone on one": [
        person_record("sr", "Maria", "Garcia", "1985-04-12", "female", phone=None,
                      street="4 Pine St", postal="02139"),
        person_record("jr", "Maria", "Garcia", "1985-04-19", "female", phone="617-555-0972",
                      street="88 Lake Rd", postal="02141"),
    ],
    "namesakes born the same day in one town": [
        person_record("sr", "Maria", "Garcia", "1985-04-12", "female", phone="617-555-0161",
                      street="4 Pine St", postal="02139"),
        person_record("jr", "Maria", "Garcia", "1985-04-12", "female", phone="617-555-0972",
                      street="88 Lake Rd", postal="02141"),
    ],
}


@pytest.mark.parametrize("case", sorted(HARD_NEGATIVES))
def test_hard_negatives_never_merge(case: str) -> None:
    clusters, _ = outcomes([*town(), *HARD_NEGATIVES[case]])
    assert clusters["sr"] != clusters["jr"], case


def test_common_names_in_one_town_stay_apart() -> None:
    smiths = [
        person_record(f"smith{i}", "John", "Smith", born, "male", phone=f"617-555-02{i}0",
                      street=f"{10 + i} Main St", postal="02139")
        for i, born in enumerate(("1960-01-01", "1975-06-30", "1982-11-12", "1990-03-08", "1960-01-10"))
    ]
    clusters, _ = outcomes([*town(), *smiths])
    assert len({clusters[f"smith{i}"] for i in range(5)}) == 5


# -- hard positives: one person, merged or queued ------------------------------------------------

HARD_POSITIVES = {
    "nickname and a reformatted phone": [
        person_record("a", "William", "Foster", "1962-07-09", "male", phone="6175550123"),
        person_record("b", "Bill", "Foster", "1962-07-09", "male", phone="+1 (617) 555-0123"),
    ],
    "maiden name, moved, same phone": [
        person_record("a", "Sarah", "Connor", "1979-10-02", "female", phone="617-555-0444"),
        person_record("b", "Sarah", "Reese", "1979-10-02", "female", phone="617-555-0444",
                      street="77 Harbor Way", postal="02210"),
    ],
    "day and month swapped": [
        person_record("a", "Nadia", "Petrova", "1983-04-12", "female"),
        person_record("b", "Nadia", "Petrova", "1983-12-04", "female"),
    ],
    "two digits of the year transposed": [
        person_record("a", "Tomas", "Novak", "1985-07-21", "male"),
        person_record("b", "Tomas", "Novak", "1958-07-21", "male"),
    ],
    "moved address, same phone": [
        person_record("a", "Priya", "Raman", "1991-01-17", "female", phone="617-555-0555"),
        person_record("b", "Priya", "Raman", "1991-01-17", "female", phone="617-555-0555",
                      street="5 Elm Ct", postal="02467", city="Chestnut Hill"),
    ],
    "a day typo across a month end (two digits), same phone": [
        person_record("a", "Omar", "Haddad", "1980-03-31", "male"),
        person_record("b", "Omar", "Haddad", "1980-04-01", "male"),
    ],
    "day and month swapped and a day typo, typo in the family name": [
        person_record("a", "Nadia", "Petrova", "1983-10-12", "female"),
        person_record("b", "Nadia", "Petorva", "1983-12-11", "female"),
    ],
    "married name, moved, no phone": [
        person_record("a", "Ingrid", "Holm", "1977-06-05", "female", phone=None),
        person_record("b", "Ingrid", "Vance", "1977-06-05", "female", phone="617-555-0777",
                      street="9 Bay Rd", postal="02118", city="Boston"),
    ],
    "HL7 v2 upper case, typo in the family name, no phone": [
        person_record("a", "James", "O'Neil", "1970-03-03", "male"),
        person_record("b", "JAMES", "ONEILL", "19700303", "male", phone=None),
    ],
}


@pytest.mark.parametrize("case", sorted(HARD_POSITIVES))
def test_hard_positives_link_or_wait_for_review(case: str) -> None:
    clusters, review = outcomes([*town(), *HARD_POSITIVES[case]])
    assert clusters["a"] == clusters["b"] or frozenset(("a", "b")) in review, case


def test_the_rules_name_why_and_evidence_holds_no_values() -> None:
    rows = {r["source_key"]: r for r in dedup.features(
        [r for r, _ in HARD_NEGATIVES["father and son, Sr and Jr, one address, decades apart"]],
        sex={"sr": "male", "jr": "male"},
    ).to_pylist()}
    assert rows["sr"]["suffix"] == "SR" and rows["jr"]["suffix"] == "JR"
    assert dedup.nonmatch_rule(rows["sr"], rows["jr"]) == "identity.suffix_conflict"
    shown = dedup.evidence(rows["sr"], rows["jr"])
    assert json.loads(shown)["suffix"] == "differ"
    assert "CARTER" not in shown.upper() and "1948" not in shown
    assert dedup.date_typo("1983-04-12", "1983-12-04") and dedup.date_typo("1985-07-21", "1958-07-21")
    assert not dedup.date_typo("1948-02-11", "1976-09-23")


@pytest.mark.parametrize(
    ("a", "b", "near"),
    [
        ("1980-03-31", "1980-04-01", True),  # a day across a month end: two digits
        ("1979-12-31", "1980-01-01", True),  # ... and across a year end
        ("2011-12-10", "2011-11-30", True),  # ten days back
        ("2017-10-12", "2017-12-11", True),  # day and month swapped, then a day typo
        ("1985-04-12", "1985-09-30", False),  # same year, three digits, months apart
        ("1951-05-05", "1981-05-05", False),  # a father's and a son's: one digit, decades (a typo rule)
        ("1948-02-11", "1976-09-23", False),
    ],
)
def test_birth_dates_a_steward_may_see_are_near_decades_never(a: str, b: str, near: bool) -> None:
    assert dedup.date_near(a, b) is near
    if not near and not dedup.date_typo(a, b):
        assert dedup.nonmatch_rule(
            {"suffix": None, "sex": None, "given_formal": None, "birth_date": a},
            {"suffix": None, "sex": None, "given_formal": None, "birth_date": b},
        ) == "identity.birth_date_far"


def test_near_birth_dates_merge_only_with_the_same_name_and_a_shared_home() -> None:
    """Two slips apart: merged when name, sex and phone agree; otherwise a steward decides."""
    clusters, _ = outcomes([*town(), *HARD_POSITIVES["a day typo across a month end (two digits), same phone"]])
    assert clusters["a"] == clusters["b"]
    clusters, review = outcomes([*town(), *HARD_NEGATIVES["namesakes born a week apart in one town, no phone on one"]])
    assert clusters["sr"] != clusters["jr"]
    clusters, review = outcomes(
        [*town(), *HARD_POSITIVES["day and month swapped and a day typo, typo in the family name"]]
    )
    assert clusters["a"] != clusters["b"] and frozenset(("a", "b")) in review


def test_an_ssn_links_a_married_name_and_a_conflicting_one_waits_for_a_steward() -> None:
    """A full SSN in both records (FHIR us-ssn, HL7 v2 PID-19) is strong evidence either way; a
    placeholder SSN (999-99-9999) is no evidence at all."""
    married = [
        person_record("a", "Ingrid", "Holm", "1977-06-05", "female", phone=None, ssn="123-45-6789"),
        person_record("b", "Ingrid", "Vance", "1977-06-05", "female", phone="617-555-0777", street="9 Bay Rd",
                      postal="02118", city="Boston", ssn="123456789"),
    ]
    clusters, _ = outcomes([*town(), *married])
    assert clusters["a"] == clusters["b"]
    conflict = [
        person_record("a", "Priya", "Raman", "1991-01-17", "female", ssn="123-45-6789"),
        person_record("b", "Priya", "Raman", "1991-01-17", "female", ssn="321-54-9876"),
    ]
    clusters, review = outcomes([*town(), *conflict])
    assert clusters["a"] != clusters["b"] and frozenset(("a", "b")) in review
    twins = [(r, s) for r, s in HARD_NEGATIVES["same-sex twins, Ava and Eva"]]
    placeholder = [({**r, "identifiers": [{"type": "SS", "value": "999-99-9999"}]}, s) for r, s in twins]
    assert dedup.features([r for r, _ in placeholder]).column("ssn").to_pylist() == [None, None]
    clusters, _ = outcomes([*town(), *placeholder])
    assert clusters["sr"] != clusters["jr"]


def test_a_move_with_a_new_phone_links_through_the_same_email() -> None:
    """A new home and a new phone: without anything else in common a steward decides; the same
    e-mail address (FHIR ``email``, HL7 v2 ``Internet``) is the contact they share."""
    moved = {"phone": "617-555-0999", "street": "5 Elm Ct", "postal": "02467", "city": "Chestnut Hill"}
    clusters, review = outcomes([*town(), person_record("a", "Priya", "Raman", "1991-01-17", "female"),
                                 person_record("b", "Priya", "Raman", "1991-01-17", "female", **moved)])
    assert clusters["a"] != clusters["b"] and frozenset(("a", "b")) in review
    clusters, _ = outcomes([
        *town(), person_record("a", "Priya", "Raman", "1991-01-17", "female", email="Priya.Raman@example.org"),
        person_record("b", "Priya", "Raman", "1991-01-17", "female", email="mailto:priya.raman@example.org", **moved),
    ])
    assert clusters["a"] == clusters["b"]
    hl7 = {"source_key": "c", "names": [{"family": "RAMAN", "given": ["PRIYA"]}],
           "telecom": [{"value": "priya.raman@example.org", "system": "Internet", "use": "NET"}]}
    assert dedup.features([hl7]).column("email").to_pylist() == ["priya.raman@example.org"]


def test_a_married_name_with_a_move_waits_for_a_steward() -> None:
    """Only first name, birth date and sex agree: never merged, queued as a possible name change."""
    records = [*town(), *HARD_POSITIVES["married name, moved, no phone"]]
    linkage = dedup.link(dedup.features([r for r, _ in records], sex={r["source_key"]: s for r, s in records}))
    cluster = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
    assert cluster["a"] != cluster["b"]
    queued = {frozenset((r["source_key_l"], r["source_key_r"])) for r in linkage.review.to_pylist()}
    assert queued == {frozenset(("a", "b"))}  # no stranger of the town is queued with them
    rows = {r["source_key"]: r for r in dedup.features([r for r, _ in records],
                                                      sex={r["source_key"]: s for r, s in records}).to_pylist()}
    low = pa.Table.from_pylist(  # what Splink gives such a pair in a large run: well below review
        [{"source_key_l": "a", "source_key_r": "b", "match_probability": 0.03, "match_weight": -5.0,
          "rule": "splink"},
         {"source_key_l": "town1", "source_key_r": "town2", "match_probability": 0.03, "match_weight": -5.0,
          "rule": "splink"}],
        schema=dedup.LINKS,
    )
    zoned = dedup.zones(low, rows, dedup.LinkOptions())
    assert not zoned.merge
    assert [(r["source_key_l"], r["reason"]) for r in zoned.review] == [("a", "identity.possible_name_change")]


def test_a_steward_decision_keeps_a_pair_apart_through_a_third_record() -> None:
    """a ~ b and b ~ c all match, but a steward said a and c are two people: b joins one of them."""
    records = [
        *town(),
        person_record("a", "Nadia", "Petrova", "1983-04-12", "female"),
        person_record("b", "Nadia", "Petrova", "1983-04-12", "female"),
        person_record("c", "Nadia", "Petrova", "1983-04-12", "female"),
    ]
    linkage = dedup.link(
        dedup.features([r for r, _ in records], sex={r["source_key"]: s for r, s in records}),
        apart={frozenset(("a", "c"))},
    )
    cluster = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
    assert cluster["a"] != cluster["c"]
    queued = {frozenset((r["source_key_l"], r["source_key_r"])) for r in linkage.review.to_pylist()}
    assert frozenset(("a", "c")) not in queued  # decided: never asked again
    assert queued  # the refused link of b waits for a steward
    assert {r["reason"] for r in linkage.review.to_pylist()} == {"identity.cluster_conflict"}


def test_a_small_run_says_it_falls_back_to_priors() -> None:
    linkage = dedup.link(dedup.features([r for r, _ in town()[:3]]))
    assert "small run (3 records" in linkage.model and "priors" in linkage.model
    assert "fewer than two" in dedup.link(dedup.features([town()[0][0]])).model


# -- through the pipeline: queue, decisions, unmerge, tokens ------------------------------------


def fhir_patient(pid: str, mrn: str, given: str, family: str, birth: str, *, gender: str = "female",
                 phone: str = "401-555-0199", street: str = "9 Elm St") -> dict[str, Any]:
    from medlake.sample.vocab import MRN_SYSTEM

    mr = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"type": mr, "system": MRN_SYSTEM, "value": mrn}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": phone, "use": "home"}],
        "address": [{"use": "home", "line": [street], "city": "Providence", "state": "RI",
                     "postalCode": "02903", "country": "US"}],
    }


def visit(pid: str, eid: str, start: str) -> dict[str, Any]:
    at = datetime.fromisoformat(start)
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start, "end": (at + timedelta(hours=2)).isoformat()},
    }


def town_patients() -> list[dict[str, Any]]:
    return [
        fhir_patient(f"town-{i}", f"T{i}", g, f, b, gender=s, phone=f"401-555-01{i:02d}", street=f"{i} Cedar Ave")
        for i, (g, f, b, s) in enumerate(TOWN)
    ]


def run(lake: Lake, landing: Path, resources: list[dict[str, Any]], run_id: str, keys: Path) -> None:
    from medlake.expectations.gate import run_gate
    from medlake.governance.crypto import Keyring

    (landing / "fhir").mkdir(parents=True)
    (landing / "fhir" / f"{run_id}.ndjson").write_text("\n".join(json.dumps(r) for r in resources))
    pipeline.ingest(landing, lake, run_id=run_id, now=T0)
    pipeline.ingest_hl7v2(landing, lake, run_id=run_id, now=T0)
    pipeline.clean(lake, run_id=run_id, key=KEY, max_shift_days=365,
                   keyring=Keyring.from_dir(keys, create=True), audit_key=AUDIT_KEY)
    staged = [n for n in pipeline.SILVER_TABLES if lake.exists(staging_name(n))]
    run_gate(lake, run_id=run_id, tables=staged)
    pipeline.rekey_silver(lake, run_id=run_id, key=KEY, max_shift_days=365)


def sk(patient_id: str) -> str:
    return source_key(KEY, fhir.SOURCE_SYSTEM, patient_id)


def person(lake: Lake, patient_id: str) -> str:
    rows = lake.read(PERSON_CROSSWALK.name).to_pylist()
    return {r["source_key"]: r["person_key"] for r in rows}[sk(patient_id)]


def encounter_starts(lake: Lake) -> dict[str, tuple[str, datetime]]:
    """Encounter key → (person, start) in silver."""
    return {r["encounter_key"]: (r["person_key"], r["start_at"]) for r in lake.read("silver.encounters").to_pylist()}


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Path]:
    """Run 1: the town, Ava Lindqvist with a visit. Run 2: Eva Lindqvist, same birth date, home and
    phone (a twin or a typo: queued), with a visit."""
    root = tmp_path_factory.mktemp("identity")
    lake, keys = Lake(root / "lake"), root / "keys"
    run(lake, root / "landing1",
        [*town_patients(), fhir_patient("ava", "A1", "Ava", "Lindqvist", "2015-04-02"),
         visit("ava", "enc-ava", "2024-02-01T09:00:00+00:00")], "run1", keys)
    run(lake, root / "landing2",
        [fhir_patient("eva", "A2", "Eva", "Lindqvist", "2015-04-02"),
         visit("eva", "enc-eva", "2024-02-20T14:00:00+00:00")], "run2", keys)
    return lake, root


def test_linkage_against_earlier_runs_decrypts_only_token_collisions(queued: tuple[Lake, Path]) -> None:
    lake, _ = queued
    tokens = lake.read(IDENTITY_TOKENS.name).to_pylist()
    assert {t["source_key"] for t in tokens} >= {sk("ava"), sk("eva"), sk("town-0")}
    assert all(len(t["token"]) == 32 and "LINDQVIST" not in t["token"].upper() for t in tokens)
    [linked] = [e for e in audit.read(lake) if e.action == "vault.link"]
    details = json.loads(linked.details)
    assert linked.run_id == "run2" and details["scope"] == "blocking_candidates"
    assert details["records"] == 1  # Ava only: the town's records share no token with Eva
    assert "Ava" not in linked.details and "Lindqvist" not in linked.details


def test_an_uncertain_pair_waits_in_the_review_queue_and_is_kept_apart(queued: tuple[Lake, Path]) -> None:
    lake, _ = queued
    assert person(lake, "eva") != person(lake, "ava")
    [pair] = identity.queue(lake)
    assert {pair["source_key_l"], pair["source_key_r"]} == {sk("ava"), sk("eva")}
    assert pair["reason"] == "identity.possible_twin" and pair["status"] == "open"
    ledger = [e for e in lake.read("ledger", where={"run_id": "run2"}).to_pylist() if e["stage"] == "resolve"]
    assert json.loads(ledger[0]["details"])["review_queued"] == 1


def test_approve_merges_then_split_restores_both_people(queued: tuple[Lake, Path], monkeypatch) -> None:
    from medlake.cli import app

    lake, root = queued
    monkeypatch.setenv("MEDLAKE_PROJECT_KEY", KEY.hex())
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", AUDIT_KEY.hex())
    # no vault keyring where the CLI looks (whatever earlier tests left in the session's home)
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(root / "no-keys-here"))
    monkeypatch.delenv("MEDLAKE_VAULT_KEYS", raising=False)
    before = encounter_starts(lake)
    ava, eva = person(lake, "ava"), person(lake, "eva")
    [pair] = identity.queue(lake)

    from medlake.governance import vault
    from medlake.governance.crypto import Keyring

    done = identity.approve(lake, [pair["pair_id"]], reason="registration desk: same child", actor="steward1",
                            audit_key=AUDIT_KEY, key=KEY, max_shift_days=365, keyring=Keyring.from_dir(root / "keys"))
    assert done.merged == ((eva, ava),)
    stored = {r["source_key"]: r["person_key"] for r in lake.read(vault.TABLE).to_pylist()}
    assert done.vault_rekeyed == 1 and stored[sk("eva")] == ava  # the vault follows at once
    assert person(lake, "eva") == person(lake, "ava") == ava
    after = encounter_starts(lake)
    assert {p for p, _ in after.values() if p in (ava, eva)} == {ava}
    moved = [k for k in before if before[k][0] == eva]
    assert moved and all(after[k][0] == ava for k in moved)
    persons = {r["person_key"]: r for r in lake.read("silver.persons").to_pylist()}
    assert eva not in persons and persons[ava]["records"] == 2
    with pytest.raises(identity.DecisionRefused, match="already approved"):
        identity.reject(lake, [pair["pair_id"]], reason="x", actor="s", audit_key=AUDIT_KEY)

    # the overlay was a mistake: split Eva's record back out, through the CLI
    result = CliRunner().invoke(app, ["identity", "split", ava, "--record", sk("eva"), "--reason",
                                      "twins: two children", "--actor", "steward2", "--lake", str(lake.root)])
    assert result.exit_code == 0, result.output
    assert person(lake, "eva") == eva and person(lake, "ava") == ava  # each its own key again
    restored = encounter_starts(lake)
    assert restored == before  # same keys and the same dates as before the merge
    [split] = [e for e in lake.read(PERSON_EVENTS.name).to_pylist() if e["event"] == "split"]
    assert split["person_key"] == eva and split["from_person_key"] == ava
    persons = {r["person_key"]: r for r in lake.read("silver.persons").to_pylist()}
    assert persons[ava]["records"] == 1 and persons[eva]["records"] == 1
    decided = {r["pair_id"]: r for r in lake.read(IDENTITY_REVIEW.name).to_pylist()}
    assert decided[pair["pair_id"]]["status"] == "rejected"  # never merged again
    actions = [e.action for e in audit.read(lake)]
    assert "identity.approve" in actions and "identity.split" in actions
    assert not pipeline.rekey_silver(lake, run_id="after-split", key=KEY, max_shift_days=365).entries

    # run 3: a new registration of Eva links to Eva; Ava and Eva stay two people
    assert "no vault keyring here" in result.output  # the CLI: the vault follows at the next run
    run(lake, root / "landing3", [fhir_patient("eva-2", "A3", "Eva", "Lindqvist", "2015-04-02")], "run3",
        root / "keys")
    stored = {r["source_key"]: r["person_key"] for r in lake.read(vault.TABLE).to_pylist()}
    assert stored[sk("eva")] == eva and stored[sk("ava")] == ava  # the run re-keyed the split
    assert person(lake, "eva-2") in (eva, person(lake, "eva-2"))
    assert person(lake, "ava") != person(lake, "eva")
    assert person(lake, "eva-2") != person(lake, "ava")


def test_review_list_and_reject_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    from medlake.cli import app

    lake = Lake(tmp_path / "lake")
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", AUDIT_KEY.hex())
    review = pa.table({
        "source_key_l": ["k1"], "source_key_r": ["k2"], "match_probability": [0.8], "match_weight": [2.0],
        "reason": ["identity.review_zone"], "evidence": ['{"given": "agree"}'],
    }, schema=dedup.REVIEW)
    lake.insert_new(IDENTITY_REVIEW.name, dedup.review_rows(review, run_id="r1", now=T0))
    runner = CliRunner()
    listed = runner.invoke(app, ["identity", "review", "list", "--lake", str(lake.root), "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    refused = runner.invoke(app, ["identity", "review", "reject", row["pair_id"], "--reason", " ",
                                  "--lake", str(lake.root)])
    assert refused.exit_code == 1 and "needs a reason" in refused.output
    done = runner.invoke(app, ["identity", "review", "reject", row["pair_id"], "--reason", "different people",
                               "--actor", "steward1", "--lake", str(lake.root)])
    assert done.exit_code == 0, done.output
    assert dedup.decided_apart(lake) == {frozenset(("k1", "k2"))}
    assert identity.queue(lake) == []
    [entry] = [e for e in audit.read(lake) if e.action == "identity.reject"]
    assert entry.actor == "steward1" and json.loads(entry.details)["reason"] == "different people"


def test_a_vault_without_tokens_is_tokenized_once_then_only_collisions_are_decrypted(tmp_path: Path) -> None:
    """A lake from before the tokens: its vault records are decrypted once and get their tokens;
    the next run decrypts only the records sharing a token with its own."""
    from medlake.governance import vault
    from medlake.governance.crypto import Keyring

    lake, keyring = Lake(tmp_path / "lake"), Keyring.from_dir(tmp_path / "keys", create=True)
    earlier = [r for r, _ in town()] + [person_record("nadia", "Nadia", "Petrova", "1983-04-12", "female")[0]]
    vault.store(lake, earlier, keyring=keyring)
    newcomer = person_record("nadia2", "Nadia", "Petrova", "1983-04-12", "female", phone="617-555-0999")[0]

    first = dedup.earlier_identities(lake, [newcomer], key=KEY, keyring=keyring, audit_key=AUDIT_KEY, run_id="r1")
    assert [i["source_key"] for i in first] == ["nadia"]  # only the collision comes back
    assert {t["source_key"] for t in lake.read(IDENTITY_TOKENS.name).to_pylist()} == {
        *(i["source_key"] for i in earlier), "nadia2"}
    vault.store(lake, [newcomer], keyring=keyring)  # as the pipeline does after resolution
    second = dedup.earlier_identities(lake, [{**newcomer, "source_key": "nadia3"}], key=KEY, keyring=keyring,
                                      audit_key=AUDIT_KEY, run_id="r2")
    assert sorted(i["source_key"] for i in second) == ["nadia", "nadia2"]
    asked = [json.loads(e.details)["asked"] for e in audit.read(lake) if e.action == "vault.link"]
    assert asked == [len(earlier), 2]  # the one-time backfill, then the two collisions only


@pytest.mark.spark
@pytest.mark.slow
def test_splinks_spark_backend_decides_the_hard_cases_as_duckdb_does() -> None:
    """The same comparisons and rules on Splink's Spark backend (medlake's session, which carries
    the similarity jar shipped in the splink package): the same clusters and review pairs as on
    DuckDB."""
    from medlake.config import SparkSettings
    from medlake.engines.spark import spark_session

    # medlake's session (the running one when other tests made it): it carries Splink's jar
    spark = spark_session(SparkSettings(master="local[2]"), app_name="medlake-tests")
    assert dedup.splink_jar() in (spark.conf.get("spark.jars") or "")
    cases = [
        *town(),
        *HARD_NEGATIVES["father and son, Sr and Jr, one address, decades apart"],
        *(person_record("t" + r["source_key"], r["names"][0]["given"][0], r["names"][0]["family"],
                        r["birth_date"], s) for r, s in HARD_NEGATIVES["opposite-sex twins, Daniel and Danielle"]),
        *(person_record("p" + r["source_key"], r["names"][0]["given"][0], r["names"][0]["family"],
                        r["birth_date"], s, phone=(r["telecom"] or [{}])[0].get("value"))
          for r, s in HARD_POSITIVES["nickname and a reformatted phone"]),
    ]
    records = dedup.features([r for r, _ in cases], sex={r["source_key"]: s for r, s in cases})
    on_duckdb, on_spark = dedup.link(records), dedup.link(records, spark=spark)

    def decided(linkage: dedup.Linkage) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
        clusters = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
        return clusters, {(r["source_key_l"], r["source_key_r"], r["reason"]) for r in linkage.review.to_pylist()}

    assert decided(on_spark) == decided(on_duckdb)
    clusters, _ = decided(on_spark)
    assert clusters["sr"] != clusters["jr"] and clusters["tsr"] != clusters["tjr"]
    assert clusters["pa"] == clusters["pb"]
    assert on_spark.links.num_rows == on_duckdb.links.num_rows


@pytest.mark.spark
@pytest.mark.slow
def test_the_pipeline_links_on_splinks_spark_backend_when_the_engine_is_spark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MEDLAKE__ENGINE=spark``: clean scores the patient records on Splink's Spark backend in the
    engine's session and decides every hard case as the embedded engine (Splink on DuckDB) does."""
    from medlake.config import Settings
    from medlake.engines import engine_for
    from medlake.governance.crypto import Keyring

    resources = [
        *town_patients(),
        fhir_patient("ava", "A1", "Ava", "Lindqvist", "2015-04-02"),  # twins or a typo: review
        fhir_patient("eva", "A2", "Eva", "Lindqvist", "2015-04-02"),
        fhir_patient("dan", "A3", "Daniel", "Okafor", "2003-08-14", gender="male", phone="401-555-0300"),
        fhir_patient("dani", "A4", "Danielle", "Okafor", "2003-08-14", phone="401-555-0300"),  # apart
        fhir_patient("bill", "A5", "William", "Foster", "1962-07-09", gender="male", phone="401-555-0123"),
        fhir_patient("will", "A6", "Bill", "Foster", "1962-07-09", gender="male", phone="(401) 555-0123"),
        fhir_patient("omar", "A7", "Omar", "Haddad", "1980-03-31", gender="male", phone="401-555-0700"),
        fhir_patient("omar2", "A8", "Omar", "Haddad", "1980-04-01", gender="male", phone="401-555-0700"),
    ]
    landing = tmp_path / "landing" / "fhir"
    landing.mkdir(parents=True)
    (landing / "patients.ndjson").write_text("\n".join(json.dumps(r) for r in resources))
    used: list[str] = []
    database = dedup._database
    monkeypatch.setattr(dedup, "_database", lambda spark: used.append(type(db := database(spark)).__name__) or db)

    def decided(kind: str) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
        monkeypatch.setenv("MEDLAKE__ENGINE", kind)
        monkeypatch.setenv("MEDLAKE__SPARK__MASTER", "local[2]")
        engine = engine_for(Settings())
        assert engine.name == kind
        lake = Lake(tmp_path / kind / "lake")
        ingested = pipeline.ingest(tmp_path / "landing", lake, run_id="run1", now=T0)
        pipeline.clean(lake, run_id="run1", key=KEY, max_shift_days=365, bronze_version=ingested.versions["bronze.fhir_resources"],
                       keyring=Keyring.from_dir(tmp_path / kind / "keys", create=True), audit_key=AUDIT_KEY,
                       engine=engine)
        crosswalk = {r["source_key"]: r["person_key"] for r in lake.read(PERSON_CROSSWALK.name).to_pylist()}
        return crosswalk, {(q["source_key_l"], q["source_key_r"], q["reason"]) for q in identity.queue(lake)}

    on_duckdb = decided("embedded")
    assert used == ["DuckDBAPI"]
    on_spark = decided("spark")
    assert used == ["DuckDBAPI", "SparkAPI"]
    assert on_spark == on_duckdb
    person, review = on_spark
    assert person[sk("bill")] == person[sk("will")] and person[sk("omar")] == person[sk("omar2")]
    assert person[sk("dan")] != person[sk("dani")] and person[sk("ava")] != person[sk("eva")]
    assert review == {(min(sk("ava"), sk("eva")), max(sk("ava"), sk("eva")), "identity.possible_twin")}


def test_the_vault_follows_a_merge_to_the_surviving_person(tmp_path: Path) -> None:
    """After Eva's record is merged into Ava's person (a steward's approve), the next run re-keys
    Eva's vault identity to the survivor: re-identifying the person finds both records."""
    from medlake.governance import vault
    from medlake.governance.crypto import Keyring

    lake, keys = Lake(tmp_path / "lake"), tmp_path / "keys"
    run(lake, tmp_path / "landing1", [*town_patients(), fhir_patient("ava", "A1", "Ava", "Lindqvist", "2015-04-02")],
        "run1", keys)
    run(lake, tmp_path / "landing2", [fhir_patient("eva", "A2", "Eva", "Lindqvist", "2015-04-02")], "run2", keys)
    [pair] = identity.queue(lake)
    identity.approve(lake, [pair["pair_id"]], reason="same child", actor="steward1", audit_key=AUDIT_KEY, key=KEY,
                     max_shift_days=365)
    ava = person(lake, "ava")
    run(lake, tmp_path / "landing3", [fhir_patient("zed", "A9", "Zed", "Quill", "1990-02-02")], "run3", keys)

    stored = {r["source_key"]: r["person_key"] for r in lake.read(vault.TABLE).to_pylist()}
    assert stored[sk("eva")] == stored[sk("ava")] == ava
    found = vault.linkage_candidates(lake, [sk("eva")], keyring=Keyring.from_dir(keys), audit_key=AUDIT_KEY,
                                     run_id="check")
    assert found[0]["names"][0]["given"] == ["Eva"]  # re-encrypted under the new person, still readable
    moved = [e for e in audit.read(lake) if e.action == "vault.rekey"]
    assert [json.loads(e.details)["records"] for e in moved] == [1] and "Eva" not in moved[0].details


def test_reidentifying_the_survivor_of_a_merge_in_a_run_finds_the_absorbed_persons_identities(
    tmp_path: Path,
) -> None:
    """Run 1 keeps two Nadia Petrovas apart (no contact in common: a steward decides). Run 2's record
    shares a phone with one and a street with the other: the run merges the two persons. The vault
    identity stored under the absorbed key follows in that run, so ``vault reidentify`` of the
    surviving person returns all three records (it returned two when the vault kept old keys)."""
    from medlake.governance import vault
    from medlake.governance.crypto import Keyring

    lake, keys = Lake(tmp_path / "lake"), tmp_path / "keys"
    run(lake, tmp_path / "landing1", [
        *town_patients(),
        fhir_patient("nadia-a", "N1", "Nadia", "Petrova", "1983-04-12", phone="401-555-0301", street="1 Elm St"),
        fhir_patient("nadia-c", "N2", "Nadia", "Petrova", "1983-04-12", phone="401-555-0302", street="2 Oak St"),
    ], "run1", keys)
    first, second = person(lake, "nadia-a"), person(lake, "nadia-c")
    assert first != second
    run(lake, tmp_path / "landing2",
        [fhir_patient("nadia-b", "N3", "Nadia", "Petrova", "1983-04-12", phone="401-555-0301", street="2 Oak St")],
        "run2", keys)
    survivor = person(lake, "nadia-b")
    assert person(lake, "nadia-a") == person(lake, "nadia-c") == survivor
    merges = [e for e in lake.read(PERSON_EVENTS.name).to_pylist() if e["event"] == "merge"]
    assert [(e["from_person_key"], e["person_key"]) for e in merges] == [
        (({first, second} - {survivor}).pop(), survivor)]

    found = vault.reidentify(lake, survivor, keyring=Keyring.from_dir(keys), role="reidentifier",
                             reason="ticket 12: duplicate charts", actor="dr-who", audit_key=AUDIT_KEY, break_glass=True)
    assert sorted(r["source_key"] for r in found["records"]) == sorted(sk(p) for p in ("nadia-a", "nadia-b", "nadia-c"))
    assert {r["identity"]["names"][0]["given"][0] for r in found["records"]} == {"Nadia"}
    absorbed = ({first, second} - {survivor}).pop()
    with pytest.raises(vault.NotInVault):
        vault.reidentify(lake, absorbed, keyring=Keyring.from_dir(keys), role="reidentifier", reason="ticket 12",
                         actor="dr-who", audit_key=AUDIT_KEY, break_glass=True)


def person_rows(spec: Any, person_key: str, n: int) -> pa.Table:
    """``n`` rows of a person-keyed silver table under ``person_key`` as its source ingest writes
    them (``_prelink_key`` null: the row is under the key ingest gave it); other columns filled
    by type."""
    filler = {pa.types.is_string: "x", pa.types.is_integer: 1, pa.types.is_boolean: False,
              pa.types.is_floating: 1.0, pa.types.is_timestamp: T0}
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for f in spec.schema:
            if f.name == "person_key":
                row[f.name] = person_key
            elif f.name in spec.key or f.name == "_record_hash":
                row[f.name] = f"{person_key[:8]}-{i}" if pa.types.is_string(f.type) else T0 + timedelta(minutes=i)
            elif f.name != "_prelink_key":
                row[f.name] = next((v for test, v in filler.items() if test(f.type)), None)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=spec.schema)


def test_a_split_moves_the_vitals_imaging_and_variant_rows_of_the_records_that_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eva's vitals grid, imaging study and variant rows (keyed by her MRN's key, as their ingest
    writes them) move to Ava's person when a steward approves the pair (``medlake identity review
    approve``, audited), keeping where they came from in ``_prelink_key``; splitting Eva out moves
    every one of them back: none is left behind unattributed, dates and all."""
    from medlake.cli import app
    from medlake.registry import SILVER_IMAGING_STUDIES, SILVER_VARIANTS, SILVER_VITALS_1H

    lake, keys = Lake(tmp_path / "lake"), tmp_path / "keys"
    run(lake, tmp_path / "landing1", [*town_patients(), fhir_patient("ava", "A1", "Ava", "Lindqvist", "2015-04-02")],
        "run1", keys)
    run(lake, tmp_path / "landing2", [fhir_patient("eva", "A2", "Eva", "Lindqvist", "2015-04-02")], "run2", keys)
    ava, eva = person(lake, "ava"), person(lake, "eva")
    specs = (SILVER_VITALS_1H, SILVER_IMAGING_STUDIES, SILVER_VARIANTS)
    for spec in specs:
        assert "_prelink_key" in spec.schema.names
        lake.write(spec.name, pa.concat_tables([person_rows(spec, eva, 3), person_rows(spec, ava, 2)]),
                   mode="overwrite", spec=spec)
    before = {s.name: sorted(map(str, lake.read(s.name).to_pylist())) for s in specs}

    [pair] = identity.queue(lake)
    monkeypatch.setenv("MEDLAKE_PROJECT_KEY", KEY.hex())
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", AUDIT_KEY.hex())
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(keys))  # the vault keyring: the vault follows at once
    monkeypatch.delenv("MEDLAKE_VAULT_KEYS", raising=False)
    approved = CliRunner().invoke(app, ["identity", "review", "approve", pair["pair_id"], "--reason", "same child",
                                        "--actor", "steward1", "--lake", str(lake.root)])
    assert approved.exit_code == 0, approved.output
    [entry] = [e for e in audit.read(lake) if e.action == "identity.approve"]
    assert (entry.actor, entry.object, json.loads(entry.details)["reason"]) == ("steward1", pair["pair_id"],
                                                                                 "same child")
    for spec in specs:
        rows = lake.read(spec.name).to_pylist()
        assert {r["person_key"] for r in rows} == {ava}
        assert sorted(r["_prelink_key"] for r in rows if r["_prelink_key"]) == [eva] * 3

    done = identity.split(lake, ava, [sk("eva")], reason="twins: two children", actor="steward2",
                          audit_key=AUDIT_KEY, key=KEY, max_shift_days=365)
    assert done.new_person_key == eva and done.unattributed == {}
    assert {n: done.rows_moved[n] for n in before} == dict.fromkeys(before, 3)
    for spec in specs:
        rows = lake.read(spec.name).to_pylist()
        assert sorted(r["person_key"] for r in rows) == sorted([ava] * 2 + [eva] * 3)
        back = sorted(map(str, [{**r, "_prelink_key": None} for r in lake.read(spec.name).to_pylist()]))
        assert back == before[spec.name], spec.name  # the same keys and dates as before the merge


# -- the model is estimated on the data ----------------------------------------------------------


def registrations(people: int, duplicates: int, seed: int, *, varied: bool = True) -> pa.Table:
    """Feature rows of Faker people, the first ``duplicates`` registered twice: a family-name typo
    or no phone on the second, and (``varied``) some moved, some with a birth-date slip, some
    without a sex; not ``varied``: every second registration agrees on sex, birth date and home."""
    import random

    from faker import Faker

    rng, fake = random.Random(seed), Faker("en_US")
    fake.seed_instance(seed)
    records = []
    for i in range(people):
        sex = rng.choice(("male", "female"))
        given = fake.first_name_male() if sex == "male" else fake.first_name_female()
        records.append(person_record(
            f"p{i}", given, fake.last_name(), fake.date_of_birth(minimum_age=1, maximum_age=90).isoformat(), sex,
            phone=f"{rng.randrange(201, 989)}-555-{rng.randrange(10**4):04d}", street=fake.street_address(),
            postal=fake.zipcode(), city=fake.city()))
    for j in range(duplicates):
        ident, sex = records[j]
        family = ident["names"][0]["family"]
        cut = rng.randrange(1, len(family))
        second = {**ident, "source_key": f"d{j}", "person_key": f"d{j}",
                  "names": [{"family": family[:cut] + "x" + family[cut + 1:] if j % 2 else family,
                             "given": ident["names"][0]["given"]}],
                  "telecom": ident["telecom"] if j % 2 else []}
        if varied and j % 5 == 0:
            second["address"] = [{"line": [fake.street_address()], "city": fake.city(), "postalCode": fake.zipcode()}]
        if varied and j % 7 == 0:
            second["birth_date"] = ident["birth_date"][:-1] + str((int(ident["birth_date"][-1]) + 1) % 10)
        records.append((second, "unknown" if varied and j % 11 == 0 else sex))
    return dedup.features([r for r, _ in records], sex={r["source_key"]: s for r, s in records})


def model_levels(linker: Any) -> dict[str, list[dict[str, Any]]]:
    """Comparison → its non-null levels (m, u, term-frequency column) as the linker holds them."""
    return {c["output_column_name"]: [lvl for lvl in c["comparison_levels"] if not lvl.get("is_null_level")]
            for c in linker.misc.save_model_to_json()["comparisons"]}


def test_a_large_run_estimates_m_by_em_and_u_by_sampling_and_adjusts_names_and_city_for_frequency() -> None:
    """From ``em_min_records`` records: u by random sampling and m by EM on the run's own records
    (not the documented priors), exact given name, family name and city agreement weighted by how
    common the value is; the given-name veto stays fixed through EM. Below it: m at the priors."""
    records = registrations(600, 200, seed=4)
    trained = dedup.trained_linker(records, dedup.LinkOptions(em_min_records=records.num_rows))
    assert "refused" not in trained.model and trained.model.startswith("m by EM")
    large = model_levels(trained.linker)
    for name in ("given", "family", "birth_date", "phone", "street"):
        m = tuple(lvl["m_probability"] for lvl in large[name])
        u = tuple(lvl["u_probability"] for lvl in large[name])
        assert m != pytest.approx(dedup.M_PRIORS[name], rel=1e-3), name  # EM moved m
        assert u != pytest.approx(dedup.U_PRIORS[name], rel=1e-3), name  # sampled, not the fallbacks
    assert large["family"][0]["m_probability"] < 0.95  # the typos EM saw in the second registrations
    assert {lvl.get("tf_adjustment_column") for c in large.values() for lvl in c} - {None} == {
        "given", "family", "city"}
    assert large["given"][-1]["m_probability"] == dedup.GIVEN_VETO_M  # the twins' veto, not learned away

    small = model_levels(dedup.trained_linker(records, dedup.LinkOptions(em_min_records=records.num_rows + 1)).linker)
    for name in ("given", "family", "birth_date"):
        m = tuple(lvl["m_probability"] for lvl in small[name])
        priors = dedup.M_PRIORS[name][:-1] + (dedup.GIVEN_VETO_M,) if name == "given" else dedup.M_PRIORS[name]
        assert m == pytest.approx(priors), name
    assert all(lvl.get("tf_adjustment_column") is None for c in small.values() for lvl in c)


def test_an_em_session_splink_refuses_changes_nothing_and_the_model_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Second registrations that never disagree on sex, birth date or home drive EM's m of those
    disagreements towards 0; when Splink refuses an m that underflowed to 0, that session changes
    nothing, the run still links, and the model description (the resolve ledger entry) says so."""
    records = registrations(400, 150, seed=3, varied=False)
    options = dedup.LinkOptions(em_min_records=records.num_rows // 2)  # EM, also after identical ones fold
    linkage = dedup.link(records, options)
    assert "refused (an m underflowed to 0)" in linkage.model and linkage.model.startswith("m by EM")
    assert "EM blocked on" in caplog.text and "Faker" not in caplog.text
    clusters = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
    assert sum(clusters[f"p{j}"] == clusters[f"d{j}"] for j in range(150)) >= 140


@pytest.mark.e2e
@pytest.mark.slow
def test_gold_follows_an_approve_and_a_split_at_its_next_build(tmp_path: Path) -> None:
    """Gold marts are rebuilt from silver: after a steward's approve the next build has one person
    with both visits; after the split, two persons with one visit each."""
    from medlake.jobs.gold import build_gold

    lake, keys = Lake(tmp_path / "lake"), tmp_path / "keys"
    run(lake, tmp_path / "landing1", [*town_patients(), fhir_patient("ava", "A1", "Ava", "Lindqvist", "2015-04-02"),
                                      visit("ava", "enc-ava", "2024-02-01T09:00:00+00:00")], "run1", keys)
    run(lake, tmp_path / "landing2", [fhir_patient("eva", "A2", "Eva", "Lindqvist", "2015-04-02"),
                                      visit("eva", "enc-eva", "2024-02-20T14:00:00+00:00")], "run2", keys)
    ava, eva = person(lake, "ava"), person(lake, "eva")

    def visits() -> dict[str, int]:
        rows = lake.read("gold.ml_patient_features").to_pylist()
        return {r["person_key"]: r["encounter_count"] for r in rows if r["person_key"] in (ava, eva)}

    [pair] = identity.queue(lake)
    identity.approve(lake, [pair["pair_id"]], reason="same child", actor="steward1", audit_key=AUDIT_KEY, key=KEY,
                     max_shift_days=365)
    build_gold(lake.root, run_id="gold-after-approve")
    assert visits() == {ava: 2}
    identity.split(lake, ava, [sk("eva")], reason="twins", actor="steward2", audit_key=AUDIT_KEY, key=KEY,
                   max_shift_days=365)
    build_gold(lake.root, run_id="gold-after-split")
    assert visits() == {ava: 1, eva: 1}
