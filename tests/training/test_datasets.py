"""Versioned datasets: a pull returns exactly the published rows, or says why it cannot."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from medlake.lake import Lake
from medlake.training import datasets
from medlake.training.datasets import (
    ContentHashMismatch,
    DatasetNotFound,
    DatasetUnreadable,
    DatasetVacuumed,
    PullRefused,
)

GOLD = "gold.ml_patient_features"


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("person_key")


def test_pull_of_an_old_version_returns_the_old_rows_after_new_data_arrived(lake: Lake, gold_rows):
    v1 = datasets.publish(lake, "ml_patient_features", name="readmission")
    lake.write(GOLD, gold_rows(300, seed=2, run_id="run-2"), mode="overwrite")
    v2 = datasets.publish(lake, GOLD, name="readmission")

    assert (v1.version, v1.delta_version, v1.row_count) == (1, 0, 400)
    assert (v2.version, v2.delta_version, v2.row_count) == (2, 1, 300)
    assert v1.content_hash != v2.content_hash
    assert v1.lineage_run_ids == ("run-1",) and v2.lineage_run_ids == ("run-2",)
    assert v1.table == "gold.release_readmission" and v1.key == ("person_key",) and v1.deid_level == "safe_harbor"
    assert v1.k_anonymity["source"] == {"table": GOLD, "delta_version": 0} and v1.k_anonymity["meets_model"]
    assert "body_weight_last" in v1.columns

    old = datasets.pull(lake, "readmission@1", role="ml")
    assert isinstance(old, pa.Table)
    assert _sorted(old).equals(_sorted(gold_rows(400, seed=1)))
    new = datasets.pull(lake, "readmission@latest", role="data_engineer", to="pandas")
    assert len(new) == 300 and set(new["_run_id"]) == {"run-2"}
    assert [m.ref for m in datasets.list_datasets(lake)] == ["readmission@1", "readmission@2"]


def test_publishing_an_unchanged_table_again_returns_the_same_version(lake: Lake):
    first = datasets.publish(lake, GOLD, name="readmission")
    again = datasets.publish(lake, GOLD, name="readmission")
    assert again == first
    other = datasets.publish(lake, GOLD, name="screening", deid_level="expert_determination")
    assert other.version == 1 and other.content_hash == first.content_hash
    assert len(datasets.list_datasets(lake)) == 2


def test_pull_to_parquet_writes_the_rows_and_the_manifest(lake: Lake, tmp_path: Path):
    manifest = datasets.publish(lake, GOLD, name="readmission")
    path = datasets.pull(
        lake, "readmission@1", role="ml", to="parquet", out=tmp_path / "out" / "r.parquet"
    )
    assert path == tmp_path / "out" / "r.parquet"
    written = pq.read_table(path)
    assert written.num_rows == 400
    assert datasets.content_hash_of(written, key=("person_key",)) == manifest.content_hash
    recorded = json.loads(written.schema.metadata[b"medlake.dataset"])
    assert recorded["ref"] == "readmission@1" and recorded["content_hash"] == manifest.content_hash


def test_content_hash_ignores_row_order_column_order_and_physical_types(gold_rows):
    rows = gold_rows(50, seed=3)
    base = datasets.content_hash_of(rows, key=("person_key",))
    shuffled = rows.take(pa.array(list(range(49, -1, -1)))).select(
        list(reversed(rows.column_names))
    )
    widened = rows.set_column(
        rows.schema.get_field_index("gender"),
        "gender",
        rows.column("gender").cast(pa.large_string()),
    )
    assert datasets.content_hash_of(shuffled, key=("person_key",)) == base
    assert datasets.content_hash_of(widened, key=("person_key",)) == base
    changed = rows.set_column(
        rows.schema.get_field_index("encounter_count"),
        "encounter_count",
        pc.add(rows.column("encounter_count"), 1),
    )
    assert datasets.content_hash_of(changed, key=("person_key",)) != base


def _tamper(lake: Lake, *, keep_log_consistent: bool) -> None:
    """Rewrite the data file of Delta version 0 with one value changed."""
    table_dir = lake.path(GOLD)
    log_file = table_dir / "_delta_log" / f"{0:020d}.json"
    actions = [json.loads(line) for line in log_file.read_text().splitlines()]
    (add,) = [a["add"] for a in actions if "add" in a]
    data_file = table_dir / add["path"]
    rows = pq.read_table(data_file)
    index = rows.schema.get_field_index("body_weight_last")
    weights = rows.column(index).to_pylist()
    weights[0] += 1.0
    pq.write_table(rows.set_column(index, "body_weight_last", pa.array(weights)), data_file)
    if keep_log_consistent:  # someone who also edits the Delta log: Delta alone cannot tell
        add["size"] = data_file.stat().st_size
        log_file.write_text("\n".join(json.dumps(a) for a in actions) + "\n")


def test_a_data_file_altered_outside_delta_fails_the_content_hash(lake: Lake):
    datasets.publish(lake, GOLD, name="readmission", privacy=None)  # the table pinned as is
    _tamper(lake, keep_log_consistent=True)
    with pytest.raises(
        ContentHashMismatch, match=r"readmission@1.*do not match the published content hash"
    ):
        datasets.pull(lake, "readmission@1", role="ml")


def test_a_corrupt_data_file_is_reported_as_unreadable(lake: Lake):
    datasets.publish(lake, GOLD, name="readmission", privacy=None)  # the table pinned as is
    _tamper(lake, keep_log_consistent=False)
    with pytest.raises(DatasetUnreadable, match=r"readmission@1 cannot be pulled: Delta version 0"):
        datasets.pull(lake, "readmission@1", role="ml")


def test_a_vacuumed_version_fails_with_a_clear_message(lake: Lake, gold_rows):
    datasets.publish(lake, GOLD, name="readmission", privacy=None)  # the table pinned as is
    lake.write(GOLD, gold_rows(300, seed=2), mode="overwrite")
    datasets.publish(lake, GOLD, name="readmission", privacy=None)  # the table pinned as is
    DeltaTable(lake.uri(GOLD)).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )

    with pytest.raises(DatasetVacuumed) as caught:
        datasets.pull(lake, "readmission@1", role="ml")
    message = str(caught.value)
    assert "readmission@1" in message and "Delta version 0" in message and "vacuumed" in message
    assert datasets.pull(lake, "readmission@2", role="ml").num_rows == 300  # type: ignore[union-attr]


def test_a_role_without_access_is_refused(lake: Lake):
    datasets.publish(lake, GOLD, name="readmission")
    with pytest.raises(PullRefused, match=r"role 'marketing' may not pull dataset readmission@1"):
        datasets.pull(lake, "readmission@1", role="marketing")
    for role in ("ml", "data_engineer", "compliance"):
        assert datasets.pull(lake, "readmission@1", role=role).num_rows == 400  # type: ignore[union-attr]


def test_ml_gets_no_phi_columns_and_no_identified_datasets():
    manifest = datasets.Manifest(
        name="cohort",
        version=1,
        table="silver.patients",
        delta_version=0,
        key=("person_key",),
        arrow_schema=datasets.schema_json(
            pa.schema([("person_key", pa.string()), ("zip3", pa.string())])
        ),
        row_count=0,
        content_hash="",
        hash_method=datasets.HASH_METHOD,
        deid_level="safe_harbor",
        phi_columns=("zip3",),
        lineage_run_ids=(),
        created_at=datetime.now(UTC),
    )
    assert datasets.check_pull_allowed("ml", manifest) == ("person_key",)
    assert datasets.check_pull_allowed("compliance", manifest) == ("person_key", "zip3")
    identified = datasets.Manifest(**{**manifest.__dict__, "deid_level": "identified"})
    with pytest.raises(PullRefused, match="not de-identified"):
        datasets.check_pull_allowed("ml", identified)


def test_unknown_names_and_versions_are_named_in_the_error(lake: Lake):
    with pytest.raises(DatasetNotFound, match="nothing published yet"):
        datasets.pull(lake, "readmission@1", role="ml")
    datasets.publish(lake, GOLD, name="readmission")
    with pytest.raises(DatasetNotFound, match="readmission has no version 7; versions: 1"):
        datasets.pull(lake, "readmission@7", role="ml")
    with pytest.raises(ValueError, match="version after @"):
        datasets.parse_ref("readmission@v2")
    with pytest.raises(DatasetNotFound, match="table gold.missing does not exist"):
        datasets.publish(lake, "gold.missing", name="x")


def test_view_columns_from_delta_merges_hash_and_sort_like_plain_strings():
    plain = pa.table({"person_key": ["b", "a", None], "code": [b"1", b"2", b"3"], "n": [1, 2, 3]})
    viewed = pa.table(
        {
            "person_key": plain.column("person_key").cast(pa.string_view()),
            "code": plain.column("code").cast(pa.binary_view()),
            "n": plain.column("n"),
        }
    )
    assert datasets.content_hash_of(viewed, key=("person_key",)) == datasets.content_hash_of(
        plain, key=("person_key",)
    )
    assert datasets.sort_canonically(viewed, key=("person_key",)).column(
        "person_key"
    ).to_pylist() == [
        None,
        "a",
        "b",
    ]


def test_pulls_and_refusals_are_audited_with_who_and_why(lake: Lake):
    from medlake.governance import audit

    key = b"k" * 32
    datasets.publish(lake, GOLD, name="readmission")
    who = datasets.PullAudit(key=key, actor="ana", purpose="research", run_id="run-7")

    rows = datasets.pull(lake, "readmission@1", role="ml", audit=who)
    with pytest.raises(PullRefused):
        datasets.pull(lake, "readmission@1", role="marketing", audit=who)
    with pytest.raises(PullRefused, match="for purpose 'research'"):
        datasets.pull(lake, "readmission@1", role="data_engineer", audit=who)

    pulled, refused, wrong_purpose = audit.read(lake)
    assert (pulled.action, pulled.actor, pulled.role, pulled.object) == (
        "dataset.pull",
        "ana",
        "ml",
        "dataset:readmission@1",
    )
    details = json.loads(pulled.details or "{}")
    assert details["rows"] == rows.num_rows == 400  # type: ignore[union-attr]
    assert details["columns"] == rows.column_names  # type: ignore[union-attr]
    assert (pulled.purpose, pulled.run_id) == ("research", "run-7")
    assert (refused.action, refused.role) == ("access.denied", "marketing")
    assert (wrong_purpose.action, wrong_purpose.role) == ("access.denied", "data_engineer")
    assert audit.verify(lake, key=key).ok


def test_every_release_carries_its_k_anonymity(lake: Lake):
    m = datasets.publish(lake, GOLD, name="readmission")
    k = m.k_anonymity
    assert k is not None and k["population"] == m.row_count == 400
    assert set(k["quasi_identifiers"]) <= {"age_band", "gender", "zip3"} and k["quasi_identifiers"]
    assert k["smallest_class"] >= 1 and k["classes"] >= 1
    assert datasets.manifest(lake, "readmission@1").k_anonymity == k  # stored with the manifest
