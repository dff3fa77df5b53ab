"""Entity resolution: linkage edge cases, the crosswalk across runs, survivorship, and the sample
hospital's planted duplicate registrations found end to end through the pipeline."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake.governance.deid import date_shift_days
from medlake.governance.pseudonyms import source_key
from medlake.jobs import pipeline
from medlake.jobs.clean import dedup
from medlake.jobs.ingest import fhir
from medlake.lake import Lake
from medlake.registry import (
    PERSON_CROSSWALK,
    PERSON_EVENTS,
    SILVER_PATIENTS,
    SILVER_PERSONS,
    staging_name,
)
from medlake.sample import generate

KEY = b"test-project-key"
T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: a small town: everyone distinct, so a test's pair is judged among realistic strangers
TOWN = [
    ("Liam", "Garcia", "1950-01-11"),
    ("Noah", "Miller", "1961-02-12"),
    ("Ava", "Davis", "1972-03-13"),
    ("Mia", "Wilson", "1983-04-14"),
    ("Zoe", "Moore", "1994-05-15"),
    ("Eli", "Taylor", "1945-06-16"),
    ("Ivy", "Thomas", "1956-07-17"),
    ("Max", "White", "1967-08-18"),
    ("Ruth", "Harris", "1978-09-19"),
    ("Omar", "Clark", "1989-10-20"),
]


def identity(
    source: str,
    given: list[str],
    family: str,
    birth: str,
    phone: str,
    street: str = "12 Oak St",
    *,
    prelink: str | None = None,
    postal: str = "02139",
) -> dict[str, Any]:
    """A vault-shaped identity (what fhir/hl7v2 ``patient_identities`` return)."""
    return {
        "source_key": source,
        "person_key": prelink or source,
        "source_system": "test",
        "names": [{"family": family, "given": given}],
        "birth_date": birth,
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"line": [street], "city": "Springfield", "postalCode": postal}],
    }


def town() -> list[dict[str, Any]]:
    return [
        identity(f"town{i}", [g], f, b, f"555-010-{i:04d}", f"{i} Cedar Ave", postal=f"021{i:02d}")
        for i, (g, f, b) in enumerate(TOWN)
    ]


def clusters_of(
    identities: list[dict[str, Any]], sex: dict[str, str] | None = None
) -> dict[str, str]:
    linkage = dedup.link(dedup.features(identities, sex=sex))
    return dict(
        zip(
            linkage.clusters.column("source_key").to_pylist(),
            linkage.clusters.column("cluster").to_pylist(),
            strict=True,
        )
    )


# -- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["617-555-0101", "(617) 555 0101", "+1 617 555 0101", "617.555.0101", "6175550101"]
)
def test_phone_formats_normalize_to_the_same_digits(raw: str) -> None:
    assert dedup.normalize_phone(raw) == "6175550101"


def test_hl7_and_fhir_birth_dates_normalize_alike() -> None:
    assert dedup.normalize_date("19800203") == dedup.normalize_date("1980-02-03") == "1980-02-03"
    assert dedup.normalize_date("garbage") is None


def test_features_take_the_official_name_home_address_and_formal_given_name() -> None:
    ident = identity("s", ["Bobby", "Lee"], "O'Brien", "19550101", "555 010 9999")
    ident["names"].insert(0, {"use": "maiden", "family": "Other", "given": ["X"]})
    ident["names"][1]["use"] = "official"
    row = dedup.features([ident], sex={"s": "male"}).to_pylist()[0]
    assert row["given"] == "BOBBY" and row["given_formal"] == "ROBERT"
    assert row["family"] == "O BRIEN"
    assert (row["birth_date"], row["phone"], row["zip5"], row["sex"]) == (
        "1955-01-01",
        "5550109999",
        "02139",
        "male",
    )


# -- linkage edge cases -------------------------------------------------------------------------


def test_two_spellings_of_one_patient_merge() -> None:
    found = clusters_of(
        [
            *town(),
            identity("a1", ["Katherine", "Ann"], "Smith", "1980-02-03", "617-555-0101"),
            identity("a2", ["Katherine"], "Smiht", "1980-02-03", "617-555-0101"),
        ]
    )
    assert found["a1"] == found["a2"]
    assert len(set(found.values())) == len(TOWN) + 1


def test_a_nickname_and_a_reformatted_phone_still_link() -> None:
    found = clusters_of(
        [
            *town(),
            identity("b1", ["Robert"], "Brown", "1955-11-30", "6175550123", "3 Birch Rd"),
            identity("b2", ["Bobby"], "Brown", "1955-11-30", "+1 (617) 555-0123", "3 Birch Rd"),
        ]
    )
    assert found["b1"] == found["b2"]


def test_a_birth_date_typo_links_through_the_other_fields() -> None:
    found = clusters_of(
        [
            *town(),
            identity("d1", ["Nadia"], "Petrova", "1970-06-15", "6175550444", "8 Elm St"),
            identity("d2", ["Nadia"], "Petrova", "1970-06-16", "617 555 0444", "8 Elm St"),
        ]
    )
    assert found["d1"] == found["d2"]


def test_twins_sharing_birth_date_address_and_phone_do_not_merge() -> None:
    found = clusters_of(
        [
            *town(),
            identity("t1", ["Emma"], "Jones", "2001-05-05", "617-555-0199", "9 Elm St"),
            identity("t2", ["Olivia"], "Jones", "2001-05-05", "617-555-0199", "9 Elm St"),
        ],
        sex={"t1": "female", "t2": "female"},
    )
    assert found["t1"] != found["t2"]


def test_records_sharing_a_prelink_key_are_one_person_even_when_they_disagree() -> None:
    """Same MRN under the same authority: linked deterministically, whatever the names say."""
    linkage = dedup.link(
        dedup.features(
            [
                *town(),
                identity("f1", ["Anna"], "Lee", "1990-01-01", "6175550777", prelink="mrn:1"),
                identity("h1", ["Hannah"], "Leigh-Smith", "1990-01-01", "", prelink="mrn:1"),
            ]
        )
    )
    rows = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
    assert rows["f1"] == rows["h1"]
    links = linkage.links.to_pylist()
    assert {
        "source_key_l": "f1",
        "source_key_r": "h1",
        "match_probability": 1.0,
        "match_weight": None,
        "rule": "prelink",
    } in links
    pairs = [(r["source_key_l"], r["source_key_r"]) for r in links]
    assert len(pairs) == len(set(pairs))  # a prelinked pair is not repeated by Splink


def test_identical_records_are_one_person_without_scoring_their_pairs() -> None:
    """A feed repeating one patient: 400 records identical in every feature are linked to the
    first of them (a star of 399 links), and Splink scores one of them with the rest, not the
    80,000 pairs among them. An anchor of an earlier run and a record without a birth date are
    never folded; copies sharing the first's MRN need no second link."""
    copies = [
        identity(f"copy{i:03d}", ["Amara"], "Okafor", "1971-02-03", "617-555-0142")
        for i in range(400)
    ]
    same_mrn = identity("mrn-twin", ["Amara"], "Okafor", "1971-02-03", "617-555-0142", prelink="copy000")
    undated = [identity(f"undated{i}", ["Amara"], "Okafor", "", "617-555-0142") for i in range(2)]
    records = dedup.features([*town(), *copies, same_mrn, *undated])
    identical, scored = dedup._identical(records, keep={"copy399"})

    assert set(scored.column("source_key").to_pylist()) == {
        *(f"town{i}" for i in range(len(TOWN))), "copy000", "copy399", "undated0", "undated1"
    }
    assert identical.num_rows == 398  # copy001-copy398; mrn-twin shares copy000's MRN
    assert set(identical.column("source_key_l").to_pylist()) == {"copy000"}
    assert set(identical.column("rule").to_pylist()) == {"identical"}

    linkage = dedup.link(records, anchors={"copy399"})
    clusters = {r["source_key"]: r["cluster"] for r in linkage.clusters.to_pylist()}
    assert len({clusters[f"copy{i:03d}"] for i in range(400)} | {clusters["mrn-twin"]}) == 1
    assert clusters["town0"] != clusters["copy000"]
    assert "398 records identical to another of the run linked before scoring" in linkage.model
    splink_pairs = [r for r in linkage.links.to_pylist() if r["rule"] == "splink"]
    assert len(splink_pairs) < 20  # not n²/2


# -- the crosswalk across runs ------------------------------------------------------------------


def resolve(
    lake: Lake, identities: list[dict[str, Any]], *, run_id: str, now: datetime
) -> dedup.Resolution:
    patients = pa.table(
        {
            "source_key": [i["source_key"] for i in identities],
            "gender": pa.nulls(len(identities), pa.string()),
            "_record_hash": [f"hash-{i['source_key']}" for i in identities],
            "_source_kind": ["test"] * len(identities),
        }
    )
    return dedup.resolve(lake, identities, patients, run_id=run_id, now=now)


def crosswalk(lake: Lake) -> dict[str, str]:
    rows = lake.read(PERSON_CROSSWALK.name).to_pylist()
    return {r["source_key"]: r["person_key"] for r in rows}


def test_the_crosswalk_keeps_keys_across_runs_and_a_new_record_joins_its_person(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path)
    carl = identity(
        "c1", ["Carl"], "Nilsson", "1966-03-09", "6175550300", "4 Pine St", prelink="mrn:c"
    )
    first = resolve(lake, [*town(), carl], run_id="r1", now=T0)
    before = crosswalk(lake)
    assert before["c1"] == "mrn:c"  # with no merge, person_key stays what ingest gave
    assert first.entry.records_in == first.entry.records_out == len(TOWN) + 1

    # run 2 re-sends the extract with Carl's second registration (another MRN, a typo)
    carl2 = identity(
        "c2", ["Carl"], "Nillson", "1966-03-09", "617.555.0300", "4 Pine St", prelink="mrn:c2"
    )
    second = resolve(lake, [*town(), carl, carl2], run_id="r2", now=T0 + timedelta(days=1))
    after = crosswalk(lake)
    assert {k: after[k] for k in before} == before  # nobody re-keyed
    assert after["c2"] == "mrn:c"
    assert second.person_of["mrn:c2"] == "mrn:c"
    events = lake.read(PERSON_EVENTS.name, where={"run_id": "r2"}).to_pylist()
    assert [(e["event"], e["person_key"], e["source_key"]) for e in events] == [
        ("join", "mrn:c", "c2")
    ]

    # run 3 brings a later record of the second MRN only: it reaches Carl through its prelink key
    third = resolve(
        lake, [identity("c3", ["C"], "N", "1966-03-09", "", prelink="mrn:c2")], run_id="r3", now=T0
    )
    assert third.person_of["mrn:c2"] == crosswalk(lake)["c3"] == "mrn:c"


def test_linking_two_existing_persons_merges_them_into_the_older_key_with_an_event(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path)
    dora = identity("d1", ["Dora"], "Quist", "1971-07-07", "6175550500", "5 Ash St")
    resolve(lake, [*town(), dora], run_id="r1", now=T0)
    dora2 = identity(
        "d2", ["Dora"], "Qvist", "1971-07-07", "6175550500", "5 Ash St", prelink="mrn:d2"
    )
    # run 2 sees only the second registration, with nothing to link it to: a new person
    resolve(lake, [dora2], run_id="r2", now=T0 + timedelta(days=1))
    assert crosswalk(lake)["d2"] == "mrn:d2"
    # run 3 sees both: the persons merge, the older (d1's) key survives, nothing is silent
    merged = resolve(lake, [*town(), dora, dora2], run_id="r3", now=T0 + timedelta(days=2))
    after = crosswalk(lake)
    assert after["d1"] == after["d2"] == "d1"
    assert merged.person_of["mrn:d2"] == "d1"
    events = lake.read(PERSON_EVENTS.name, where={"run_id": "r3"}).to_pylist()
    assert [(e["event"], e["person_key"], e["from_person_key"]) for e in events] == [
        ("merge", "d1", "mrn:d2")
    ]
    assert merged.entry.records_in == merged.entry.records_out + merged.entry.merged
    assert merged.entry.merged == 1


def _clusters(labels: list[tuple[int, int, int]]) -> pa.Table:
    """Clusters from (record, cluster, prelink) labels; records sharing a prelink key are put in
    one cluster, as link() guarantees."""
    first = {}
    for _, c, p in labels:
        first.setdefault(p, c)
    return pa.table(
        {
            "source_key": [f"s{r}" for r, _, _ in labels],
            "prelink_key": [f"p{p}" for _, _, p in labels],
            "cluster": [f"c{first[p]}" for _, _, p in labels],
        },
        schema=dedup.CLUSTERS,
    )


RUN = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 4), st.integers(0, 5)),  # record, cluster, prelink
    max_size=10,
    unique_by=lambda t: t[0],
)


@settings(max_examples=100, deadline=None)
@given(RUN, RUN)
def test_resolution_conserves_records_and_never_rekeys_silently(
    first: list[tuple[int, int, int]], second: list[tuple[int, int, int]]
) -> None:
    """Over two runs: every record gets one person, records in = persons + merged, and a record
    seen before changes person only through a merge event naming its old person."""
    # a record keeps its prelink key across runs (the prelink is derived from the record)
    prelink = {r: p for r, _, p in first}
    second = [(r, c, prelink.get(r, p)) for r, c, p in second]
    done1 = dedup.assign(_clusters(first), dedup.CROSSWALK.empty_table(), run_id="r1", now=T0)
    clusters2 = _clusters(second)
    done2 = dedup.assign(clusters2, done1.crosswalk, run_id="r2", now=T0 + timedelta(days=1))

    entry = dedup.resolve_entry(clusters2, done2.person_of)
    assert entry.records_in == clusters2.num_rows == entry.records_out + entry.merged
    assert entry.merged >= 0 and entry.balanced

    before = {r["source_key"]: r["person_key"] for r in done1.crosswalk.to_pylist()}
    after = {**before, **{r["source_key"]: r["person_key"] for r in done2.crosswalk.to_pylist()}}
    merges = {
        (e["from_person_key"], e["person_key"])
        for e in done2.events.to_pylist()
        if e["event"] == "merge"
    }
    for record, person in before.items():
        assert after[record] == person or (person, after[record]) in merges
    # every record of this run reaches exactly the person its prelink key maps to
    for r in clusters2.to_pylist():
        assert after[r["source_key"]] == done2.person_of[r["prelink_key"]]


# -- re-keying rows and survivorship ---------------------------------------------------------------


def test_remap_moves_dates_to_the_resolved_persons_shift() -> None:
    born = date(1980, 1, 1)
    seen = datetime(2020, 5, 1, 8, 30, tzinfo=UTC)
    rows = pa.table(
        {
            "person_key": ["old", "kept"],
            "birth_date": pa.array([born, born], pa.date32()),
            "start_at": pa.array([seen, seen], pa.timestamp("us", tz="UTC")),
        }
    )
    out = dedup.remap(rows, {"old": "new"}, key=KEY, max_shift_days=365).to_pylist()
    delta = date_shift_days(KEY, "new", max_days=365) - date_shift_days(KEY, "old", max_days=365)
    assert out[0] == {
        "person_key": "new",
        "birth_date": born + timedelta(days=delta),
        "start_at": seen + timedelta(days=delta),
        "_prelink_key": "old",  # where the row came from: an unmerge moves it back by this
    }
    assert out[1] == {**rows.to_pylist()[1], "_prelink_key": None}


def test_survivorship_picks_one_row_per_person_by_documented_rules() -> None:
    def patient(source: str, **fields: Any) -> dict[str, Any]:
        return {"person_key": "p", "source_key": source, **fields}

    rows = pa.Table.from_pylist(
        [
            patient(
                "a", gender="female", birth_date=date(1980, 1, 2), zip3="021", state="MA", race="x"
            ),
            patient("b", gender="female", birth_date=date(1980, 1, 2), zip3=None, state=None),
            patient(
                "c",
                gender="unknown",
                birth_date=date(1980, 2, 1),
                zip3="100",
                state="NY",
                deceased=True,
                deceased_date=date(2024, 1, 1),
            ),
            patient("d", gender=None, birth_date=None, zip3=None, state=None, race="y"),
            {"person_key": "q", "source_key": "e", "gender": "unknown"},
        ],
        schema=pa.schema(
            [
                f
                for f in SILVER_PATIENTS.schema
                if f.name
                in (
                    "person_key",
                    "source_key",
                    "gender",
                    "birth_date",
                    "zip3",
                    "state",
                    "race",
                    "deceased",
                    "deceased_date",
                )
            ]
        ),
    )
    seen = {s: T0 + timedelta(days=i) for i, s in enumerate("abcd")}  # a oldest … d newest
    persons = {r["person_key"]: r for r in dedup.survivors(rows, seen).to_pylist()}
    p = persons["p"]
    assert (p["gender"], p["birth_date"]) == ("female", date(1980, 1, 2))  # most frequent
    assert (p["zip3"], p["state"]) == ("100", "NY")  # newest record with an address, together
    assert p["race"] == "y"  # newest non-null
    assert (p["deceased"], p["deceased_date"], p["records"]) == (True, date(2024, 1, 1), 4)
    assert persons["q"]["gender"] == "unknown"  # weak, but all there is


def test_rekey_replaces_rows_whose_key_holds_the_person_and_a_survivor_row_wins_a_collision(
    tmp_path: Path,
) -> None:
    """silver.vitals_1min is keyed by person and bucket: both move, so the old keys are deleted
    and the new ones inserted in one MERGE; a bucket the survivor already has keeps its row."""
    from medlake.registry import SILVER_VITALS_1MIN

    lake = Lake(tmp_path)
    delta = date_shift_days(KEY, "S", max_days=365) - date_shift_days(KEY, "A", max_days=365)
    t0 = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)

    def bucket(person: str, start: datetime, mean: float) -> dict[str, Any]:
        return {
            "person_key": person,
            "device_id": "dev",
            "code": "8867-4",
            "value_unit": "/min",
            "bucket_start": start,
            "value_mean": mean,
            "sample_count": 1,
            "filled": False,
            "_record_hash": f"h{person}{mean}",
            "_source_kind": "vitals",
            "_run_id": "r1",
        }

    rows = [
        bucket("A", t0, 60.0),
        bucket("A", t0 + timedelta(minutes=1), 61.0),
        bucket("S", t0 + timedelta(days=delta), 70.0),  # where A's first bucket lands
    ]
    lake.write(SILVER_VITALS_1MIN.name, pa.Table.from_pylist(rows), mode="append")
    merge = {"event_id": "r2:merge:S:A", "run_id": "r2", "event": "merge", "person_key": "S"}
    lake.insert_new(
        PERSON_EVENTS.name,
        pa.Table.from_pylist([{**merge, "from_person_key": "A", "recorded_at": T0}]),
    )
    done = dedup.rekey(
        lake, run_id="r2", key=KEY, max_shift_days=365, tables=[SILVER_VITALS_1MIN.name], now=T0
    )
    after = sorted(
        (r["person_key"], r["bucket_start"], r["value_mean"])
        for r in lake.read(SILVER_VITALS_1MIN.name).to_pylist()
    )
    assert after == [
        ("S", t0 + timedelta(days=delta), 70.0),
        ("S", t0 + timedelta(days=delta, minutes=1), 61.0),
    ]
    [entry] = done.entries
    assert (entry.records_in, entry.records_out, entry.merged) == (2, 1, 1) and entry.balanced
    assert [(e["event"], e["from_person_key"]) for e in done.events.to_pylist()] == [("rekey", "A")]
    again = dedup.rekey(
        lake, run_id="r2", key=KEY, max_shift_days=365, tables=[SILVER_VITALS_1MIN.name], now=T0
    )
    assert again.entries == [] and lake.count(SILVER_VITALS_1MIN.name) == 2


def test_absorbed_persons_follow_merge_chains() -> None:
    events = pa.table(
        {
            "event": ["merge", "join", "merge"],
            "person_key": ["B", "B", "C"],
            "from_person_key": ["A", None, "B"],
        }
    )
    assert dedup.absorbed_persons(events) == {"A": "C", "B": "C"}


# -- the sample hospital, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, dict[str, Any]]:
    landing = tmp_path_factory.mktemp("landing")
    generate(landing, patients=400, seed=11)
    lake = Lake(tmp_path_factory.mktemp("lake"))
    pipeline.ingest(landing, lake, run_id="run1", now=T0)
    pipeline.ingest_hl7v2(landing, lake, run_id="run1", now=T0)
    pipeline.clean(lake, run_id="run1", key=KEY, max_shift_days=365)
    return lake, json.loads((landing / "_truth.json").read_text())


def test_the_planted_duplicates_are_found_with_high_precision_and_recall(hospital) -> None:
    lake, truth = hospital
    person = crosswalk(lake)

    def key(patient_id: str) -> str:
        return source_key(KEY, fhir.SOURCE_SYSTEM, patient_id)

    assert truth["duplicates"]
    planted = {frozenset(key(r["patient_id"]) for r in d["records"]) for d in truth["duplicates"]}
    fhir_records = sorted(
        r["source_key"]
        for r in lake.read(staging_name(SILVER_PATIENTS.name)).to_pylist()
        if r["source_system"] == fhir.SOURCE_SYSTEM
    )
    found = {
        frozenset((a, b))
        for i, a in enumerate(fhir_records)
        for b in fhir_records[i + 1 :]
        if person[a] == person[b]
    }
    true_positives = len(found & planted)
    precision = true_positives / len(found) if found else 0.0
    recall = true_positives / len(planted)
    print(
        f"linkage on the sample: {len(planted)} planted, {len(found)} found, "
        f"precision {precision:.2f}, recall {recall:.2f}"
    )
    assert precision >= 0.95
    assert recall >= 0.9


def test_every_staging_row_of_a_person_shares_its_key_and_date_shift(hospital) -> None:
    lake, truth = hospital
    person = crosswalk(lake)
    patients = {
        r["source_key"]: r for r in lake.read(staging_name(SILVER_PATIENTS.name)).to_pylist()
    }
    persons = set(person.values())
    for d in truth["duplicates"]:
        primary, twin = (
            patients[source_key(KEY, fhir.SOURCE_SYSTEM, r["patient_id"])] for r in d["records"]
        )
        if primary["person_key"] != twin["person_key"]:
            continue  # a missed duplicate: judged by the precision/recall test
        # one shift per person: the same true birth date lands on the same shifted date
        assert primary["birth_date"] == twin["birth_date"]
    for name in ("silver.encounters", "silver.observations", "silver.conditions", "silver.notes"):
        keys = set(lake.read(staging_name(name), columns=["person_key"]).column(0).to_pylist())
        assert keys <= persons, name  # no row left under an absorbed or unresolved key


def test_the_ledger_counts_merges_and_the_links_hold_no_phi(hospital) -> None:
    lake, truth = hospital
    entry = next(
        e
        for e in lake.read("ledger", where={"run_id": "run1"}).to_pylist()
        if e["stage"] == "resolve"
    )
    assert entry["balanced"] and entry["merged"] >= len(truth["duplicates"]) * 0.9
    assert entry["records_in"] == entry["records_out"] + entry["merged"]
    links = lake.read(staging_name("silver.patient_links"))
    assert {"prelink", "splink"} <= set(links.column("rule").to_pylist()) <= {"prelink", "identical", "splink"}
    patients = lake.read(staging_name(SILVER_PATIENTS.name)).to_pylist()
    hashes = {r["source_key"]: r["_record_hash"] for r in patients}
    for link in links.to_pylist():  # lineage: the right-hand record's bronze record
        assert link["_record_hash"] == hashes[link["source_key_r"]]
    text = json.dumps(links.to_pylist(), default=str)
    for value in truth["phi"]["names"] + truth["phi"]["phones"] + truth["phi"]["mrns"]:
        assert value not in text


def test_the_gate_promotes_the_links_to_silver(hospital) -> None:
    from medlake.expectations.gate import run_gate

    lake, _ = hospital
    staged = lake.read(staging_name("silver.patient_links")).num_rows
    [entry] = run_gate(lake, run_id="run1", tables=["silver.patient_links"])
    assert (entry.records_in, entry.records_out, entry.quarantined) == (staged, staged, 0)
    assert lake.count("silver.patient_links") == staged


# -- across runs through the pipeline: earlier identities from the vault, silver re-keyed ---------

AUDIT_KEY = b"test-audit-key-0123456789"


def fhir_patient(
    pid: str, mrn: str, given: str, family: str, birth: str, phone: str | None, street: str | None
) -> dict[str, Any]:
    from medlake.sample.vocab import MRN_SYSTEM

    mr = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"type": mr, "system": MRN_SYSTEM, "value": mrn}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
    }
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone, "use": "home"}]
    if street:
        patient["address"] = [
            {
                "use": "home",
                "line": [street],
                "city": "Providence",
                "state": "RI",
                "postalCode": "02903",
                "country": "US",
            }
        ]
    return patient


def visit(pid: str, eid: str, start: str) -> list[dict[str, Any]]:
    """An encounter of the patient at ``start`` and a temperature taken one hour into it."""
    at = datetime.fromisoformat(start)
    return [
        {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": start, "end": (at + timedelta(hours=2)).isoformat()},
        },
        {
            "resourceType": "Observation",
            "id": f"obs-{eid}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{eid}"},
            "effectiveDateTime": (at + timedelta(hours=1)).isoformat(),
            "valueQuantity": {
                "value": 37.1,
                "unit": "Cel",
                "system": "http://unitsofmeasure.org",
                "code": "Cel",
            },
        },
    ]


def town_patients() -> list[dict[str, Any]]:
    return [
        fhir_patient(f"town-{i}", f"T{i}", g, f, b, f"401-555-01{i:02d}", f"{i} Cedar Ave")
        for i, (g, f, b) in enumerate(TOWN)
    ]


def run_pipeline(
    lake: Lake, landing: Path, resources: list[dict[str, Any]], run_id: str, keys: Path
) -> None:
    from medlake.expectations.gate import run_gate
    from medlake.governance.crypto import Keyring

    (landing / "fhir").mkdir(parents=True)
    (landing / "fhir" / f"{run_id}.ndjson").write_text("\n".join(json.dumps(r) for r in resources))
    pipeline.ingest(landing, lake, run_id=run_id, now=T0)
    pipeline.ingest_hl7v2(landing, lake, run_id=run_id, now=T0)
    pipeline.clean(
        lake,
        run_id=run_id,
        key=KEY,
        max_shift_days=365,
        keyring=Keyring.from_dir(keys, create=True),
        audit_key=AUDIT_KEY,
    )
    staged = [n for n in pipeline.SILVER_TABLES if lake.exists(staging_name(n))]
    run_gate(lake, run_id=run_id, tables=staged)
    pipeline.rekey_silver(lake, run_id=run_id, key=KEY, max_shift_days=365)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Run 1: the town; Robert (MRN R1); twin Emma; Dora (MRN D1) and a stub registration of hers
    under MRN D2 ("D", no phone, no address: nothing links it). Each of Dora's registrations has
    a visit. Run 2, alone: Robert's second registration (MRN R2, "Bobby", phone reformatted),
    Emma's twin sister Olivia, and the stub re-sent completed ("Dora", a typo in the family name),
    which links both Dora persons of run 1: a merge."""
    root = tmp_path_factory.mktemp("runs")
    lake, keys = Lake(root / "lake"), root / "keys"
    run_pipeline(
        lake,
        root / "landing1",
        [
            *town_patients(),
            fhir_patient(
                "rob-1", "R1", "Robert", "Brown", "1955-11-30", "401-555-0123", "3 Birch Rd"
            ),
            fhir_patient("emma", "E1", "Emma", "Jones", "2001-05-05", "401-555-0199", "9 Elm St"),
            fhir_patient("dora-1", "D1", "Dora", "Quist", "1971-07-07", "401-555-0500", "5 Ash St"),
            fhir_patient("dora-2", "D2", "D", "Quist", "1971-07-07", None, None),
            *visit("dora-1", "enc-d1", "2024-03-01T09:00:00+00:00"),
            *visit("dora-2", "enc-d2", "2024-03-11T15:30:00+00:00"),
        ],
        "run1",
        keys,
    )
    run_pipeline(
        lake,
        root / "landing2",
        [
            fhir_patient(
                "rob-2", "R2", "Bobby", "Brown", "1955-11-30", "+1 (401) 555-0123", "3 Birch Rd"
            ),
            fhir_patient(
                "olivia", "E2", "Olivia", "Jones", "2001-05-05", "401-555-0199", "9 Elm St"
            ),
            fhir_patient("dora-2", "D2", "Dora", "Qvist", "1971-07-07", "401-555-0500", "5 Ash St"),
        ],
        "run2",
        keys,
    )
    return lake


def person(lake: Lake, patient_id: str) -> str:
    return crosswalk(lake)[source_key(KEY, fhir.SOURCE_SYSTEM, patient_id)]


def test_a_registration_arriving_in_a_later_run_joins_its_person_of_an_earlier_run(
    two_runs: Lake,
) -> None:
    from medlake.governance import audit

    lake = two_runs
    assert person(lake, "rob-2") == person(lake, "rob-1")
    events = lake.read(PERSON_EVENTS.name, where={"run_id": "run2"}).to_pylist()
    rob = source_key(KEY, fhir.SOURCE_SYSTEM, "rob-2")
    assert ("join", person(lake, "rob-1")) in {
        (e["event"], e["person_key"]) for e in events if e["source_key"] == rob
    }
    assert person(lake, "olivia") != person(lake, "emma")  # twins: still two persons
    # the earlier identities were decrypted once in run 2, audited with counts only
    [linked] = [e for e in audit.read(lake) if e.action == "vault.link"]
    assert linked.run_id == "run2" and json.loads(linked.details)["outcome"] == "ok"
    assert "Dora" not in linked.details and "Quist" not in linked.details


def test_a_merge_in_a_later_run_rekeys_earlier_silver_rows_and_keeps_their_intervals(
    two_runs: Lake,
) -> None:
    lake = two_runs
    survivor = person(lake, "dora-1")
    assert person(lake, "dora-2") == survivor
    [merge] = [
        e
        for e in lake.read(PERSON_EVENTS.name, where={"run_id": "run2"}).to_pylist()
        if e["event"] == "merge"
    ]
    absorbed = merge["from_person_key"]
    assert merge["person_key"] == survivor and absorbed != survivor
    for name in pipeline.SILVER_TABLES:
        if lake.exists(name) and "person_key" in lake.read(name).column_names:
            keys = set(lake.read(name, columns=["person_key"]).column(0).to_pylist())
            assert absorbed not in keys, name
    encounters = {
        r["person_key"]: r
        for r in lake.read("silver.encounters").to_pylist()
        if r["person_key"] == survivor
    }
    starts = sorted(
        r["start_at"]
        for r in lake.read("silver.encounters").to_pylist()
        if r["person_key"] == survivor
    )
    assert len(starts) == 2 and starts[1] - starts[0] == timedelta(days=10, hours=6, minutes=30)
    observed = sorted(
        r["effective_at"]
        for r in lake.read("silver.observations").to_pylist()
        if r["person_key"] == survivor
    )
    assert [o - s for o, s in zip(observed, starts, strict=True)] == [timedelta(hours=1)] * 2
    assert encounters
    ledger = {
        e["table_name"]: e
        for e in lake.read("ledger", where={"run_id": "run2"}).to_pylist()
        if e["stage"] == "rekey"
    }
    assert (
        ledger["silver.encounters"]["records_in"] == ledger["silver.encounters"]["records_out"] == 1
    )
    assert ledger["silver.observations"]["records_in"] == 1
    # survivorship: one silver.persons row per person, over both runs' records
    rows = lake.read("silver.persons").to_pylist()
    by_person = {r["person_key"]: r for r in rows}
    assert len(by_person) == len(rows) == len(set(crosswalk(lake).values()))
    assert by_person[survivor]["records"] == 2
    births = {
        r["birth_date"]
        for r in lake.read("silver.patients").to_pylist()
        if r["person_key"] == survivor
    }
    assert births == {by_person[survivor]["birth_date"]}  # one true birth date, one shift
    assert by_person[person(lake, "rob-1")]["records"] == 2
    assert by_person[person(lake, "olivia")]["records"] == 1
    # idempotent: a second re-key finds nothing left to move
    again = pipeline.rekey_silver(lake, run_id="run2", key=KEY, max_shift_days=365)
    assert again.entries == []


def test_a_run_without_patient_records_stages_no_persons(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    empty = SILVER_PATIENTS.schema.empty_table()
    rows = dedup.persons(lake, empty, run_id="r", key=KEY, max_shift_days=365)
    assert rows.num_rows == 0 and rows.schema.names == list(SILVER_PERSONS.schema.names)
