"""Differential privacy: releases are noisy but useful, spend a per-(table, role) budget that runs
out, refuse epsilon ≤ 0, go through access control, and leave an audit entry each time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from medlake.commands import access as access_cli
from medlake.governance import audit, dp
from medlake.governance.access import AccessDenied, Policy
from medlake.governance.dp import QueryError, ReleaseQuery, ReleaseRefused
from medlake.lake import Lake

AUDIT_KEY = b"\x44" * 32
GOLD = "gold.ml_patient_features"
N = 2000
LINEAGE = {"_record_hash": "h", "_source_kind": "fhir", "_run_id": "run-1"}


@pytest.fixture(scope="module")
def truth() -> pa.Table:
    rng = np.random.default_rng(7)
    bands = np.array(dp.DOMAINS["age_band"])
    return pa.table({
        "person_key": [f"p{i}" for i in range(N)],
        "gender": rng.choice(["male", "female"], N).tolist(),
        "age_band": rng.choice(bands, N).tolist(),
        "heart_rate_mean": rng.normal(75, 8, N),
        "has_diabetes": (rng.random(N) < 0.2).tolist(),
        "encounter_count": rng.integers(0, 12, N),
    })


@pytest.fixture
def lake(tmp_path: Path, truth: pa.Table) -> Lake:
    lake = Lake(tmp_path / "lake")
    lake.write(GOLD, truth, mode="append")
    return lake


def _release(lake: Lake, query: str, *, epsilon: float, role: str = "ml", purpose: str = "research", **kwargs):
    return dp.release(lake, query, epsilon=epsilon, role=role, purpose=purpose, actor="tester",
                      audit_key=AUDIT_KEY, **kwargs)


def _entries(lake: Lake, action: str) -> list[audit.AuditEntry]:
    return [e for e in audit.read(lake) if e.action == action]


@pytest.mark.parametrize("epsilon", [0, -0.5, math.nan, math.inf])
def test_epsilon_that_is_not_positive_and_finite_is_refused_and_audited(lake: Lake, epsilon: float):
    with pytest.raises(ReleaseRefused, match="epsilon must be a positive number"):
        _release(lake, f"count {GOLD}", epsilon=epsilon)
    [entry] = _entries(lake, "access.denied")
    assert entry.object == GOLD and entry.as_dict()["details"]["attempted"] == "dp.release"
    assert dp.spent(lake, dataset=GOLD, role="ml") == 0
    assert _entries(lake, "dp.release") == []


def test_the_budget_runs_out_and_the_refusal_names_spent_and_remaining(lake: Lake):
    for i in range(3):
        result = _release(lake, f"count {GOLD} where has_diabetes", epsilon=0.3, budget_per_dataset_role=1.0)
        assert (result.spent, result.remaining) == (pytest.approx(0.3 * (i + 1)), pytest.approx(1.0 - 0.3 * (i + 1)))
    with pytest.raises(ReleaseRefused, match=r"privacy budget exceeded for role 'ml' on gold\.ml_patient_features: "
                                             r"spent 0\.9 of 1, remaining 0\.1, this release asks for 0\.3"):
        _release(lake, f"count {GOLD} where has_diabetes", epsilon=0.3, budget_per_dataset_role=1.0)
    assert dp.spent(lake, dataset=GOLD, role="ml") == pytest.approx(0.9)  # the refusal spent nothing
    # what is left can still be spent, exactly
    assert _release(lake, f"count {GOLD}", epsilon=0.1, budget_per_dataset_role=1.0).remaining == 0
    # another role has its own budget
    assert _release(lake, f"count {GOLD}", epsilon=0.3, role="data_engineer", purpose="operations",
                    budget_per_dataset_role=1.0).remaining == pytest.approx(0.7)

    [summary_ml, summary_de] = dp.budgets(lake)
    assert (summary_ml["role"], summary_ml["releases"], summary_ml["spent"], summary_ml["remaining"]) == ("ml", 4, 1.0, 0)
    assert (summary_de["role"], summary_de["releases"]) == ("data_engineer", 1)
    refusal = _entries(lake, "access.denied")[0].as_dict()["details"]
    assert (refusal["spent"], refusal["remaining"], refusal["budget"]) == (pytest.approx(0.9), pytest.approx(0.1), 1.0)


def test_the_policy_sets_the_budget_per_role(lake: Lake):
    policy = Policy.load()
    assert policy.dp_budget("ml") == 3.0 and policy.dp_budget("compliance") == 1.0
    assert _release(lake, f"count {GOLD}", epsilon=1.0).budget == 3.0


def test_large_epsilon_answers_are_close_to_the_truth(lake: Lake, truth: pa.Table):
    rows = truth.to_pylist()
    diabetic = sum(r["has_diabetes"] for r in rows)
    heart = np.asarray(truth.column("heart_rate_mean"))
    big = {"epsilon": 20.0, "budget_per_dataset_role": 1000.0, "random_state": 1}

    assert abs(_release(lake, f"count {GOLD} where has_diabetes", **big).value - diabetic) <= 2
    assert _release(lake, f"mean {GOLD}.heart_rate_mean bounds 30..220", **big).value == pytest.approx(heart.mean(), abs=0.5)
    assert _release(lake, f"median {GOLD}.heart_rate_mean bounds 30..220", **big).value == pytest.approx(np.median(heart), abs=1.5)
    total = sum(r["encounter_count"] for r in rows if not r["has_diabetes"] and r["encounter_count"] >= 3)
    released = _release(lake, f"sum {GOLD}.encounter_count bounds 0..12 where not has_diabetes and encounter_count >= 3", **big)
    assert released.value == pytest.approx(total, abs=10)

    histogram = _release(lake, f"histogram {GOLD}.age_band where gender = female", **big).value
    expected = {band: sum(1 for r in rows if r["gender"] == "female" and r["age_band"] == band) for band in dp.DOMAINS["age_band"]}
    assert set(histogram) == {*expected, dp.OTHER}
    assert all(abs(histogram[band] - count) <= 2 for band, count in expected.items())

    numeric = _release(lake, f"histogram {GOLD}.heart_rate_mean bins 40..120 step 20", **big).value
    assert list(numeric) == ["40..60", "60..80", "80..100", "100..120"]
    assert abs(numeric["60..80"] - int(((heart >= 60) & (heart < 80)).sum())) <= 2


def test_small_epsilon_answers_are_noisy_and_seeds_make_them_repeatable(lake: Lake, truth: pa.Table):
    diabetic = sum(truth.column("has_diabetes").to_pylist())
    kwargs = {"epsilon": 0.05, "budget_per_dataset_role": 100.0}
    answers = [_release(lake, f"count {GOLD} where has_diabetes", random_state=seed, **kwargs).value for seed in range(5)]
    assert any(a != diabetic for a in answers)
    assert all(abs(a - diabetic) < 400 for a in answers)  # Laplace(1/0.05): off by 20 on average
    again = _release(lake, f"count {GOLD} where has_diabetes", random_state=3, **kwargs).value
    assert again == answers[3]


def test_bounds_come_from_the_query_and_clip_the_values(lake: Lake):
    # every heart rate is far above 1: clipped to the bounds, the sum is about the row count
    result = _release(lake, f"sum {GOLD}.heart_rate_mean bounds 0..1", epsilon=20.0, budget_per_dataset_role=100.0,
                      random_state=0)
    assert result.value == pytest.approx(N, abs=5)
    assert any("from the query, not the data" in note for note in result.notes)


def test_releases_go_through_access_control(lake: Lake):
    lake.write("silver.observations", pa.Table.from_pylist([
        {"observation_key": f"o{i}", "person_key": "p", "status": s, "value_num": 1.0, **LINEAGE}
        for i, s in enumerate(["final"] * 30 + ["entered-in-error"] * 70)
    ]), mode="append")
    # the ml grant on silver.observations filters to final results: 30 rows, not 100
    count = _release(lake, "count silver.observations", epsilon=20.0, budget_per_dataset_role=100.0, random_state=0).value
    assert abs(count - 30) <= 2

    with pytest.raises(AccessDenied, match=r"role 'ml' may not read table silver\.patients"):
        _release(lake, "count silver.patients", epsilon=0.1)
    with pytest.raises(AccessDenied, match="for purpose 'operations'"):
        _release(lake, f"count {GOLD}", epsilon=0.1, purpose="operations")
    assert dp.spent(lake, dataset="silver.patients", role="ml") == 0
    assert len(_entries(lake, "access.denied")) == 2


def test_each_release_and_each_refusal_is_audited_and_the_chain_verifies(lake: Lake):
    _release(lake, f"mean {GOLD}.heart_rate_mean bounds 30..220", epsilon=1.0, budget_per_dataset_role=1.5)
    _release(lake, f"count {GOLD}", epsilon=0.5, budget_per_dataset_role=1.5)
    with pytest.raises(ReleaseRefused):
        _release(lake, f"count {GOLD}", epsilon=0.5, budget_per_dataset_role=1.5)
    with pytest.raises(ReleaseRefused):
        _release(lake, f"count {GOLD}", epsilon=0, budget_per_dataset_role=1.5)

    releases = _entries(lake, "dp.release")
    assert [(e.as_dict()["details"]["epsilon"], e.as_dict()["details"]["remaining"]) for e in releases] == [(1.0, 0.5), (0.5, 0.0)]
    assert all(e.role == "ml" and e.purpose == "research" and e.object == GOLD for e in releases)
    assert len(_entries(lake, "access.denied")) == 2
    verified = audit.verify(lake, key=AUDIT_KEY)
    assert verified.ok and verified.entries == 4
    ledger = lake.read(dp.TABLE).sort_by("released_at").to_pylist()
    assert [(r["epsilon"], r["remaining"]) for r in ledger] == [(1.0, 0.5), (0.5, 0.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"mean {GOLD}.heart_rate_mean", "needs bounds LO..HI"),
        (f"quantile {GOLD}.heart_rate_mean bounds 30..220", "needs q Q"),
        (f"quantile {GOLD}.heart_rate_mean q 1.5 bounds 30..220", "q must be between 0 and 1"),
        (f"mean {GOLD}.heart_rate_mean bounds 220..30", "lower bound must be below"),
        (f"histogram {GOLD}.heart_rate_mean bins 40..120", "needs step S"),
        (f"histogram {GOLD}.heart_rate_mean bins 40..125 step 20", "step must divide HI-LO"),
        (f"histogram {GOLD}.heart_rate_mean bins 0..1 step 0.00001", "step must divide HI-LO"),
        ("count bronze.fhir_resources", "releases are over silver.* or gold.* tables"),
        ("count quarantine", "releases are over silver.* or gold.* tables"),
        (f"mean {GOLD}", "needs TABLE.COLUMN"),
        (f"count {GOLD} where age_band ~ 3", "cannot read the where term"),
        (f"drop {GOLD}", "must start with one of"),
        (f"count {GOLD} bounds 1..2", "count takes only a table"),
    ],
)
def test_malformed_queries_are_refused_with_what_to_write(text: str, message: str):
    with pytest.raises(QueryError, match=message):
        ReleaseQuery.parse(text)


def test_a_categorical_histogram_never_takes_its_categories_from_the_data(lake: Lake):
    lake.write("gold.sites", pa.table({"site": ["north", "south", "rare-clinic"]}), mode="append")
    policy = Policy.from_dict({"roles": {"ml": {"grants": [{"tables": ["gold.*"], "columns": "*", "purposes": ["research"]}]}}})
    with pytest.raises(QueryError, match="needs its categories"):
        _release(lake, "histogram gold.sites.site", epsilon=1.0, policy=policy)
    listed = _release(lake, "histogram gold.sites.site over north,south", epsilon=50.0, policy=policy,
                      budget_per_dataset_role=100.0, random_state=0).value
    assert set(listed) == {"north", "south", dp.OTHER}  # the rare site is not named, only counted
    assert listed["north"] == 1 and listed[dp.OTHER] == 1


def test_the_query_language_reads_the_documented_examples():
    q = ReleaseQuery.parse(f"count {GOLD} where has_diabetes")
    assert (q.kind, q.table, q.column, q.where[0].column, q.where[0].value) == ("count", GOLD, None, "has_diabetes", True)
    q = ReleaseQuery.parse(f"mean {GOLD}.heart_rate_mean bounds 30..220")
    assert (q.kind, q.column, q.bounds) == ("mean", "heart_rate_mean", (30.0, 220.0))
    q = ReleaseQuery.parse(f"histogram {GOLD}.age_band where gender = 'female' and encounter_count>=2")
    assert [(c.column, c.op, c.value) for c in q.where] == [("gender", "=", "female"), ("encounter_count", ">=", "2")]
    assert ReleaseQuery.parse(f"median {GOLD}.x bounds 0..1").quantile == 0.5


def test_cli_release_prints_the_answer_the_epsilon_and_the_budget_left(lake: Lake, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", AUDIT_KEY.hex())
    monkeypatch.setattr(access_cli, "load_policy", lambda settings: Policy.load())
    app = typer.Typer()
    app.command("release")(access_cli.release)
    app.command("read")(access_cli.read)
    runner = CliRunner()

    shown = runner.invoke(app, ["release", f"count {GOLD} where has_diabetes", "--epsilon", "0.5", "--role", "ml",
                                "--lake", str(lake.root)])
    assert shown.exit_code == 0, shown.output
    assert "epsilon spent 0.5; ml has spent 0.5 of 3 on gold.ml_patient_features, remaining 2.5" in shown.output

    as_json = runner.invoke(app, ["release", f"histogram {GOLD}.age_band", "--epsilon", "1", "--role", "ml",
                                  "--lake", str(lake.root), "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert (body["epsilon"], body["spent"], body["remaining"]) == (1.0, 1.5, 1.5) and "90+" in body["value"]

    over = runner.invoke(app, ["release", f"count {GOLD}", "--epsilon", "2", "--role", "ml", "--lake", str(lake.root)])
    assert over.exit_code == 1 and "spent 1.5 of 3, remaining 1.5" in over.output
    bad = runner.invoke(app, ["release", f"mean {GOLD}.heart_rate_mean", "--epsilon", "1", "--role", "ml",
                              "--lake", str(lake.root)])
    assert bad.exit_code == 2 and "bounds" in bad.output


def test_a_column_the_table_lacks_is_named_and_nothing_is_spent(lake: Lake):
    with pytest.raises(KeyError, match="has no column 'smoker'"):
        _release(lake, f"count {GOLD} where smoker", epsilon=0.5)
    assert dp.spent(lake, dataset=GOLD, role="ml") == 0
