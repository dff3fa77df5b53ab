"""The lake's Delta IO: keyed inserts are idempotent and old versions stay readable."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from medlake.lake import ROW_GROUP_ROWS, Lake
from medlake.quarantine import quarantine_rows


def test_insert_new_adds_only_unseen_keys_and_time_travel_reads_the_old_version(tmp_path):
    lake = Lake(tmp_path)
    first = quarantine_rows([{"rule_id": "parse.bad_json", "reason": "a", "source_file": "f", "source_offset": 1}],
                            table_name="bronze.fhir_resources", run_id="r1")
    assert lake.insert_new("quarantine", first) == 1
    again = pa.concat_tables([first, quarantine_rows(
        [{"rule_id": "parse.bad_json", "reason": "b", "source_file": "f", "source_offset": 2}],
        table_name="bronze.fhir_resources", run_id="r2")])
    assert lake.insert_new("quarantine", again) == 1
    assert lake.count("quarantine") == 2
    assert lake.count("quarantine", version=0) == 1
    assert lake.path("quarantine") == tmp_path / "quarantine"
    assert lake.path("silver.patients") == tmp_path / "silver" / "patients"


def test_reading_a_missing_registered_table_gives_its_empty_schema(tmp_path):
    table = Lake(tmp_path).read("silver.observations")
    assert table.num_rows == 0 and "observation_key" in table.column_names


def test_where_filters_rows_written_by_a_merge(tmp_path):
    lake = Lake(tmp_path)

    def row(offset: int, run: str) -> pa.Table:
        return quarantine_rows([{"rule_id": "parse.bad_json", "reason": "r", "source_file": "f", "source_offset": offset}],
                               table_name="bronze.fhir_resources", run_id=run)

    lake.insert_new("quarantine", row(1, "a"))
    lake.insert_new("quarantine", row(2, "b"))  # a MERGE: its file holds string_view columns
    lake.upsert("quarantine", row(3, "b"))
    assert sorted(lake.read("quarantine", where={"run_id": "b"}).column("source_offset").to_pylist()) == [2, 3]
    assert lake.read("quarantine", columns=["run_id"], where={"run_id": "a"}).num_rows == 1


RACER = """
import sys
from pathlib import Path

from medlake import lake as lake_module
from medlake.lake import Lake
from medlake.ledger import Entry, record

lake_module.COMMIT_ATTEMPTS = int(sys.argv[3])
lake = Lake(Path(sys.argv[1]))
for i in range(12):
    record(lake, f"{sys.argv[2]}-{i}", [Entry("ingest", "bronze.fhir_resources", 1, records_out=1)])
"""


def test_keyed_writes_racing_from_two_processes_on_one_table_all_land(tmp_path: Path) -> None:
    import subprocess
    import sys

    from medlake.ledger import Entry, record

    lake = Lake(tmp_path / "lake")
    record(lake, "first", [Entry("ingest", "bronze.fhir_resources", 1, records_out=1)])
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(lake.root), name, "8"], stderr=subprocess.PIPE, text=True)
        for name in ("north", "south")
    ]
    errors = [r.communicate()[1] for r in racers]
    assert [r.returncode for r in racers] == [0, 0], errors
    assert lake.count("ledger") == 1 + 2 * 12


def test_lake_writes_cut_parquet_files_into_bounded_row_groups(tmp_path: Path) -> None:
    """A write, and a merge into it, keep every row group at most ROW_GROUP_ROWS rows, so a reader
    decodes a bounded slice at a time (delta-rs's default wrote one row group per file)."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    lake = Lake(tmp_path / "lake")
    rows = ROW_GROUP_ROWS * 3 + 5
    lake.write("scratch.rows", pa.table({"k": list(range(rows)), "v": ["x" * 20] * rows}), mode="overwrite")
    lake.insert_new("scratch.rows", pa.table({"k": list(range(rows, 2 * rows)), "v": ["y"] * rows}), key=["k"])
    table = DeltaTable(lake.uri("scratch.rows"))
    groups = [
        pq.ParquetFile(Path(lake.uri("scratch.rows")) / f).metadata.row_group(g).num_rows
        for f in table.file_uris()
        for g in range(pq.ParquetFile(Path(lake.uri("scratch.rows")) / f).metadata.num_row_groups)
    ]
    assert sum(groups) == 2 * rows
    assert max(groups) <= ROW_GROUP_ROWS
