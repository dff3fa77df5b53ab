"""Role-based access: forbidden tables, columns and purposes are refused by name and audited;
row filters and column projections hold on the one read path; dataset pulls follow the policy."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from medlake.commands import access as access_cli
from medlake.governance import audit
from medlake.governance.access import (
    AccessDenied,
    Policy,
    PolicyError,
    allowed_columns_for_pull,
    authorize,
    read_table,
)
from medlake.lake import Lake

AUDIT_KEY = b"\x33" * 32
NOW = datetime(2026, 11, 24, tzinfo=UTC)
LINEAGE = {"_record_hash": "h", "_source_kind": "fhir", "_run_id": "run-1"}


@pytest.fixture
def policy() -> Policy:
    return Policy.load()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    lake.write("silver.observations", pa.Table.from_pylist([
        {"observation_key": f"o{i}", "person_key": "p1", "status": status, "code": "8867-4",
         "value_num": 60.0 + i, **LINEAGE}
        for i, status in enumerate(["final", "preliminary", "amended", "entered-in-error", "corrected"])
    ]), mode="append")
    lake.write("silver.patients", pa.Table.from_pylist([
        {"person_key": "p1", "source_key": "s1", "source_system": "ehr", "gender": "female",
         "birth_date": date(1950, 2, 3), "zip3": "021", **LINEAGE},
    ]), mode="append")
    lake.write("bronze.fhir_resources", pa.Table.from_pylist([
        {"resource_type": "Patient", "resource_id": "x", "raw": '{"name": "Ana Díaz"}', "_source_file": "ana_diaz.json",
         "_source_offset": 1, "_ingested_at": NOW, "_record_hash": "h", "_run_id": "run-1"},
    ]), mode="append")
    lake.write("quarantine", pa.Table.from_pylist([
        {"quarantine_id": "q1", "run_id": "run-1", "stage": "ingest", "table_name": "bronze.fhir_resources",
         "rule_id": "parse.bad_json", "reason": "truncated", "source_file": "ana_diaz.json", "source_offset": 3,
         "record_id": None, "record_hash": "h", "raw_record": '{"name": "Ana Dí', "quarantined_at": NOW,
         "status": "open"},
    ]), mode="append")
    lake.write("gold.ml_patient_features", pa.Table.from_pylist([
        {"person_key": "p1", "age_band": "75-79", "has_diabetes": True},
        {"person_key": "p2", "age_band": "30-34", "has_diabetes": False},
    ]), mode="append")
    return lake


def _read(lake: Lake, table: str, *, role: str, purpose: str = "research", **kwargs):
    return read_table(lake, table, role=role, purpose=purpose, actor="tester", audit_key=AUDIT_KEY, **kwargs)


def _entries(lake: Lake, action: str) -> list[audit.AuditEntry]:
    return [e for e in audit.read(lake) if e.action == action]


def test_ml_reading_bronze_is_refused_naming_role_and_table_and_audited(lake: Lake):
    with pytest.raises(AccessDenied, match=r"role 'ml' may not read table bronze\.fhir_resources") as denied:
        _read(lake, "bronze.fhir_resources", role="ml")
    assert (denied.value.role, denied.value.table, denied.value.purpose) == ("ml", "bronze.fhir_resources", "research")

    [entry] = _entries(lake, "access.denied")
    assert (entry.role, entry.object, entry.purpose, entry.actor) == ("ml", "bronze.fhir_resources", "research", "tester")
    assert "bronze.fhir_resources" in entry.as_dict()["details"]["why"]
    assert audit.verify(lake, key=AUDIT_KEY).ok


@pytest.mark.parametrize("table", ["silver.patients", "quarantine", "vault", "audit", "staging.observations"])
def test_ml_has_no_grant_outside_gold_and_observations(lake: Lake, table: str):
    with pytest.raises(AccessDenied, match=f"role 'ml' may not read table {table}"):
        _read(lake, table, role="ml")


def test_a_phi_column_is_refused_by_name_even_where_the_table_is_granted(lake: Lake):
    # A policy that lets ml see a de-identified view of silver.patients: the birth date stays out.
    policy = Policy.from_dict({
        "phi_columns": {"silver.patients": ["birth_date", "deceased_date"]},
        "roles": {"ml": {"grants": [{"tables": ["silver.patients"], "columns": "deidentified", "purposes": ["research"]}]}},
    })
    with pytest.raises(AccessDenied, match=r"role 'ml' may not read column silver\.patients\.birth_date \(a PHI column\)") as denied:
        _read(lake, "silver.patients", role="ml", policy=policy, columns=["person_key", "gender", "birth_date", "zip3"])
    assert denied.value.column == "birth_date"
    [entry] = _entries(lake, "access.denied")
    assert entry.as_dict()["details"]["column"] == "birth_date"

    # without naming columns, the view simply leaves them out
    rows = _read(lake, "silver.patients", role="ml", policy=policy)
    assert "birth_date" not in rows.column_names and "deceased_date" not in rows.column_names
    assert rows.column("gender").to_pylist() == ["female"]


def test_the_shipped_policy_keeps_birth_dates_from_everyone_but_data_engineers(policy: Policy):
    for role in ("ml", "compliance", "reidentifier"):
        with pytest.raises(AccessDenied):
            authorize(policy, role=role, table="silver.patients", columns=["birth_date"], purpose="operations")
    grant = authorize(policy, role="data_engineer", table="silver.patients", columns=["birth_date"], purpose="operations")
    assert grant.mode == "all"


@pytest.mark.parametrize(
    ("role", "table", "purpose", "message"),
    [
        ("ml", "gold.ml_patient_features", "operations", r"for purpose 'operations': the grant allows research"),
        ("ml", "gold.ml_patient_features", "marketing", r"for purpose 'marketing': not a purpose of use"),
        ("data_engineer", "silver.observations", "research", r"for purpose 'research'"),
        ("compliance", "audit", "treatment", r"for purpose 'treatment'"),
    ],
)
def test_a_purpose_the_grant_does_not_allow_is_refused_and_audited(lake, role, table, purpose, message):
    with pytest.raises(AccessDenied, match=message) as denied:
        _read(lake, table, role=role, purpose=purpose)
    assert denied.value.purpose == purpose
    [entry] = _entries(lake, "access.denied")
    assert (entry.role, entry.object, entry.purpose) == (role, table, purpose)


def test_row_filters_leave_out_rows_the_grant_does_not_cover(lake: Lake):
    ml_rows = _read(lake, "silver.observations", role="ml")
    assert sorted(ml_rows.column("status").to_pylist()) == ["amended", "corrected", "final"]
    # a projection that leaves out the filter column still filters
    values = _read(lake, "silver.observations", role="ml", columns=["observation_key", "value_num"])
    assert values.column_names == ["observation_key", "value_num"]
    assert sorted(values.column("observation_key").to_pylist()) == ["o0", "o2", "o4"]
    engineer = _read(lake, "silver.observations", role="data_engineer", purpose="quality_improvement")
    assert engineer.num_rows == 5


def test_a_row_filter_on_a_merged_table_compares_string_views(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    rows = [{"observation_key": f"o{i}", "person_key": "p", "status": s, **LINEAGE}
            for i, s in enumerate(["final", "preliminary"])]
    lake.upsert("silver.observations", pa.Table.from_pylist(rows[:1]))
    lake.upsert("silver.observations", pa.Table.from_pylist(rows))  # a MERGE writes string_view columns
    assert _read(lake, "silver.observations", role="ml", columns=["status"]).column("status").to_pylist() == ["final"]


def test_compliance_reads_quarantine_without_the_raw_record_and_the_read_is_audited(lake: Lake):
    rows = _read(lake, "quarantine", role="compliance", purpose="quality_improvement")
    assert "raw_record" not in rows.column_names and "source_file" not in rows.column_names
    assert rows.column("rule_id").to_pylist() == ["parse.bad_json"]
    assert "Ana" not in str(rows.to_pylist())

    [read] = _entries(lake, "access.read")
    details = read.as_dict()["details"]
    assert (read.role, read.object, read.purpose) == ("compliance", "quarantine", "quality_improvement")
    assert details["phi_columns"] == [] and details["rows"] == 1 and "raw_record" not in details["columns"]

    with pytest.raises(AccessDenied, match=r"role 'compliance' may not read column quarantine\.raw_record"):
        _read(lake, "quarantine", role="compliance", purpose="operations", columns=["rule_id", "raw_record"])
    assert len(_entries(lake, "access.denied")) == 1
    assert audit.verify(lake, key=AUDIT_KEY).ok


def test_a_data_engineer_reading_phi_is_audited_with_the_phi_columns(lake: Lake):
    rows = _read(lake, "bronze.fhir_resources", role="data_engineer", purpose="operations", columns=["resource_id", "raw"])
    assert rows.num_rows == 1
    [read] = _entries(lake, "access.read")
    assert read.as_dict()["details"]["phi_columns"] == ["raw"]
    assert read.as_dict()["details"]["version"] == 0


def test_the_vault_is_never_a_plain_read(lake: Lake):
    with pytest.raises(AccessDenied, match=r"only through `medlake vault reidentify`"):
        _read(lake, "vault", role="reidentifier", purpose="treatment")
    with pytest.raises(AccessDenied, match=r"role 'data_engineer' may not read table vault"):
        _read(lake, "vault", role="data_engineer", purpose="operations")
    assert len(_entries(lake, "access.denied")) == 2


def test_an_unknown_role_is_refused_and_audited(lake: Lake):
    with pytest.raises(AccessDenied, match=r"the policy has no role 'marketing'"):
        _read(lake, "gold.ml_patient_features", role="marketing")
    assert _entries(lake, "access.denied")[0].role == "marketing"


def test_ml_reads_gold_for_research(lake: Lake):
    rows = _read(lake, "gold.ml_patient_features", role="ml")
    assert rows.num_rows == 2 and "age_band" in rows.column_names
    assert _entries(lake, "access.read") == []  # gold holds no PHI column: nothing to audit


def test_a_column_the_table_lacks_is_named(lake: Lake):
    with pytest.raises(KeyError, match="has no column 'nope'"):
        _read(lake, "gold.ml_patient_features", role="ml", columns=["nope"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"roles": {"ml": {"grants": [{"tables": ["gold.*"], "purposes": ["marketing"]}]}}}, "unknown purposes"),
        ({"roles": {"ml": {"grants": [{"tables": ["gold.*"]}]}}}, "states no purposes"),
        ({"roles": {"ml": {"grants": [{"tables": ["gold.*"], "columns": 3, "purposes": ["research"]}]}}}, "columns must be"),
        ({"roles": {"ml": {"grants": [{"purposes": ["research"]}]}}}, "names no tables"),
        ({"nothing": 1}, "needs a 'roles' mapping"),
    ],
)
def test_a_malformed_policy_is_refused_naming_the_role_and_grant(raw, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(raw, source="bad.yaml")


def test_an_exact_grant_beats_a_pattern():
    policy = Policy.from_dict({"roles": {"r": {"grants": [
        {"tables": ["gold.*"], "columns": "*", "purposes": ["research"]},
        {"tables": ["gold.secret"], "columns": ["a"], "purposes": ["research"]},
    ]}}})
    with pytest.raises(AccessDenied, match=r"column gold\.secret\.b \(not granted\)"):
        authorize(policy, role="r", table="gold.secret", columns=["a", "b"], purpose="research")
    assert authorize(policy, role="r", table="gold.other", columns=["b"], purpose="research").mode == "all"


class _Manifest:
    def __init__(self, deid_level: str = "safe_harbor") -> None:
        self.ref, self.table, self.deid_level = "cohort@1", "gold.ml_patient_features", deid_level
        self.columns, self.phi_columns = ("person_key", "zip3", "age_band"), ("zip3",)


def test_dataset_pulls_follow_the_policy():
    assert allowed_columns_for_pull("ml", _Manifest()) == ("person_key", "age_band")
    assert allowed_columns_for_pull("compliance", _Manifest()) == ("person_key", "zip3", "age_band")
    assert allowed_columns_for_pull("ml", _Manifest(), purpose="research") == ("person_key", "age_band")
    with pytest.raises(AccessDenied, match="it is identified, not de-identified"):
        allowed_columns_for_pull("ml", _Manifest("identified"))
    with pytest.raises(AccessDenied, match=r"role 'marketing' may not pull dataset cohort@1"):
        allowed_columns_for_pull("marketing", _Manifest())
    with pytest.raises(AccessDenied, match=r"role 'reidentifier' may not pull"):
        allowed_columns_for_pull("reidentifier", _Manifest())
    with pytest.raises(AccessDenied, match="for purpose 'operations'"):
        allowed_columns_for_pull("ml", _Manifest(), purpose="operations")


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, write_policy, me: str, tmp_path: Path) -> typer.Typer:
    monkeypatch.setenv("MEDLAKE_AUDIT_KEY", AUDIT_KEY.hex())
    monkeypatch.setenv("MEDLAKE__KEYS__DIR", str(tmp_path / "no-keys"))  # not the service principal here
    policy = Policy.load(write_policy(**{me: ["ml"]}))  # this test's OS user holds ml, nothing else
    monkeypatch.setattr(access_cli, "load_policy", lambda settings: policy)
    app = typer.Typer()
    app.command("read")(access_cli.read)
    app.command("release")(access_cli.release)
    return app


def test_cli_read_prints_allowed_rows_and_refuses_with_the_reason(cli: typer.Typer, lake: Lake):
    runner = CliRunner()
    ok = runner.invoke(cli, ["read", "silver.observations", "--role", "ml", "--purpose", "research",
                             "--columns", "observation_key,status", "--json", "--lake", str(lake.root)])
    assert ok.exit_code == 0, ok.output
    assert sorted(r["status"] for r in json.loads(ok.stdout)) == ["amended", "corrected", "final"]

    refused = runner.invoke(cli, ["read", "bronze.fhir_resources", "--role", "ml", "--purpose", "research",
                                  "--lake", str(lake.root)])
    assert refused.exit_code == 1
    assert "role 'ml' may not read table bronze.fhir_resources" in refused.output
    assert "Ana" not in refused.output
    assert _entries(lake, "access.denied")[0].object == "bronze.fhir_resources"


def test_cli_a_role_the_principal_does_not_hold_is_refused_and_audited(cli: typer.Typer, lake: Lake, me: str):
    runner = CliRunner()
    for role in ("data_engineer", "reidentifier", "admin"):
        refused = runner.invoke(cli, ["read", "bronze.fhir_resources", "--role", role, "--purpose", "operations",
                                      "--lake", str(lake.root)])
        assert refused.exit_code == 1
        assert f"{me} may not act as role '{role}': the policy gives it ml" in refused.output
        assert "Ana" not in refused.output
    denied = _entries(lake, "access.denied")
    assert [(e.actor, e.role, json.loads(e.details or "{}")["attempted"]) for e in denied] == [
        (me, "data_engineer", "assume_role"), (me, "reidentifier", "assume_role"), (me, "admin", "assume_role")]
    # no --role: the principal acts as the role it holds
    ok = runner.invoke(cli, ["read", "silver.observations", "--purpose", "research", "--json", "--lake", str(lake.root)])
    assert ok.exit_code == 0, ok.output
    assert sorted(r["status"] for r in json.loads(ok.stdout)) == ["amended", "corrected", "final"]


def test_the_policy_maps_principals_to_roles_and_a_flag_only_narrows():
    from medlake.governance.identity import Principal, RoleRefused, assume_role, roles_of

    policy = Policy.load()
    ana = Principal(kind="user", name="ana", groups=("staff", "medlake-ml", "medlake-compliance"))
    assert roles_of(policy.principals, ana, local=True) == ("ml", "compliance")
    assert assume_role(policy.principals, ana, "ml", local=True) == "ml"
    assert assume_role(policy.principals, ana, None, local=True, fits=lambda r: r == "ml") == "ml"
    with pytest.raises(RoleRefused, match="may not act as role 'reidentifier'"):
        assume_role(policy.principals, ana, "reidentifier", local=True)
    owner = Principal(kind="user", name="svc", is_service=True)
    assert roles_of(policy.principals, owner, local=True) == ("data_engineer", "compliance", "ml")
    assert roles_of(policy.principals, owner, local=False) == ()  # production: named principals only
    oidc = Principal(kind="oidc", name="https://idp.example#ana")
    mapped = Policy.from_dict({"roles": {"ml": {"grants": []}}, "principals": {oidc.id: ["ml"]}})
    assert roles_of(mapped.principals, oidc, local=False) == ("ml",)
    with pytest.raises(PolicyError, match="unknown roles"):
        Policy.from_dict({"roles": {"ml": {}}, "principals": {"user:ana": ["root"]}})
    with pytest.raises(PolicyError, match="must start with"):
        Policy.from_dict({"roles": {"ml": {}}, "principals": {"ana": ["ml"]}})


def test_every_access_command_has_help_with_an_example(cli: typer.Typer):
    for command in ("read", "release"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_asking_for_no_columns_counts_rows_and_shows_nothing_else(lake: Lake):
    rows = _read(lake, "silver.observations", role="ml", columns=[])
    assert (rows.num_rows, rows.column_names) == (3, [])


def test_a_grant_that_leaves_no_column_is_a_denial_not_every_column(lake: Lake):
    policy = Policy.from_dict({"roles": {"ml": {"grants": [
        {"tables": ["gold.*"], "columns": ["not_a_column"], "purposes": ["research"]},
    ]}}})
    with pytest.raises(AccessDenied, match=r"may not read any column of gold\.ml_patient_features"):
        _read(lake, "gold.ml_patient_features", role="ml", policy=policy)
    assert len(_entries(lake, "access.denied")) == 1


@pytest.mark.parametrize("name", ["gold.x/../../bronze.fhir_resources", "gold.../bronze", "gold.a.b", "Gold.x", "gold."])
def test_a_name_that_could_walk_out_of_the_granted_folder_is_refused(lake: Lake, name: str):
    with pytest.raises(AccessDenied, match="not a table name"):
        _read(lake, name, role="ml")
    assert _entries(lake, "access.denied")[0].role == "ml"


def test_the_package_level_read_path_enforces_the_policy(tmp_path):
    import medlake
    from medlake.governance.access import AccessDenied
    from medlake.lake import Lake
    from medlake.registry import SILVER_PATIENTS

    Lake(tmp_path).write("silver.patients", SILVER_PATIENTS.schema.empty_table(), mode="overwrite")
    with pytest.raises(AccessDenied, match="ml"):
        medlake.read_table("bronze.fhir_resources", role="ml", purpose="research", lake=tmp_path)
    rows = medlake.read_table("silver.patients", role="data_engineer", purpose="operations", lake=tmp_path)
    assert rows.num_rows == 0
    from medlake.governance.identity import RoleRefused

    with pytest.raises(RoleRefused, match="may not act as role 'reidentifier'"):
        medlake.read_table("silver.patients", role="reidentifier", purpose="operations", lake=tmp_path)
    assert _entries(Lake(tmp_path), "access.denied")[-1].role == "reidentifier"
