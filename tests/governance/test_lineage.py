"""OpenLineage events of pipeline stages on a real Delta lake, read back from the file transport."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest
import typer
from deltalake import DeltaTable
from typer.testing import CliRunner

from medlake.commands.lineage import app as lineage_app
from medlake.errors import BadDataError
from medlake.expectations.gate import GateResult, RuleResult
from medlake.governance.lineage import (
    FHIR_COLUMNS,
    LineageConfig,
    LineageError,
    column_lineage,
    events_path,
    lineage_graph,
    read_events,
    run_uuid,
    stage_run,
)
from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import Split
from medlake.registry import (
    BRONZE_CSV,
    BRONZE_FHIR,
    BRONZE_HL7V2,
    FHIR_SILVER,
    QUARANTINE,
    SILVER_OBSERVATIONS,
    SILVER_PATIENTS,
)

RUN = "manual__2026-11-24T10:00:00+00:00"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def bronze_rows(n: int, *, run_id: str = RUN) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "resource_type": "Observation",
                "resource_id": f"obs-{i}",
                "raw": json.dumps({"resourceType": "Observation", "id": f"obs-{i}"}),
                "_source_file": "fhir/bulk/Observation.ndjson",
                "_source_offset": i + 1,
                "_ingested_at": NOW,
                "_record_hash": f"hash-{i}",
                "_run_id": run_id,
            }
            for i in range(n)
        ],
        schema=BRONZE_FHIR.schema,
    )


def observations(n: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "observation_key": f"o{i}",
                "person_key": f"p{i}",
                "code": "8867-4",
                "value_num": 60.0 + i,
                "value_unit": "/min",
                "_record_hash": f"hash-{i}",
                "_source_kind": "fhir",
                "_run_id": RUN,
            }
            for i in range(n)
        ],
        schema=SILVER_OBSERVATIONS.schema,
    )


def gate_result(rows: pa.Table, *, failing: int) -> GateResult:
    """What the gate found in staging.observations: one row out of range, the row count fine."""
    good = rows.slice(0, rows.num_rows - failing)
    return GateResult(
        table_name=SILVER_OBSERVATIONS.name,
        split=Split(good, _quarantined(failing)),
        rules=(
            RuleResult(
                rule="heart_rate_range",
                expectation="expect_column_values_to_be_between",
                column="value_num",
                row_level=True,
                success=False,
                element_count=rows.num_rows,
                unexpected_count=failing,
                unexpected_rows=tuple(range(rows.num_rows - failing, rows.num_rows)),
                observed=[412.0],
                expected="value_num between 0 and 300 where code == '8867-4'",
                message=f"{failing} row fail: expected value_num between 0 and 300",
            ),
            RuleResult(
                rule="row_count",
                expectation="expect_table_row_count_to_be_between",
                column=None,
                row_level=False,
                success=True,
                element_count=None,
                unexpected_count=0,
                unexpected_rows=(),
                observed=rows.num_rows,
                expected="row count ≥ 1",
            ),
        ),
    )


def _quarantined(n: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "quarantine_id": f"q{i}",
                "run_id": RUN,
                "stage": "gate",
                "table_name": "silver.observations",
                "rule_id": "gate.heart_rate_range",
                "reason": "value_num is 412",
                "quarantined_at": NOW,
                "status": "open",
            }
            for i in range(n)
        ],
        schema=QUARANTINE_SCHEMA,
    )


def run_pipeline(lake: Lake, landing: Path, *, run_id: str = RUN, rows: int = 4) -> dict[str, Any]:
    """A small fake pipeline with the real stage shapes: ingest → clean → gate → gold."""
    out: dict[str, Any] = {}
    with stage_run(
        lake, job="medlake_pipeline.ingest", run_id=run_id, sources=[landing / "fhir"]
    ) as run:
        version = lake.write(BRONZE_FHIR.name, bronze_rows(rows, run_id=run_id), mode="append")
        ingest = Entry(
            stage="ingest",
            table_name=BRONZE_FHIR.name,
            records_in=rows + 1,
            records_out=rows,
            merged=1,
        )
        run.complete(outputs={BRONZE_FHIR.name: version}, ledger=[ingest])
        out["bronze"] = version
    with stage_run(
        lake, job="medlake_pipeline.clean", run_id=run_id, inputs={BRONZE_FHIR.name: out["bronze"]}
    ) as run:
        staged = lake.write(
            "staging.observations", observations(rows), mode="overwrite", spec=SILVER_OBSERVATIONS
        )
        patients = lake.write(
            "staging.patients",
            SILVER_PATIENTS.schema.empty_table(),
            mode="overwrite",
            spec=SILVER_PATIENTS,
        )
        clean = Entry(
            stage="silver", table_name=SILVER_OBSERVATIONS.name, records_in=rows, records_out=rows
        )
        run.complete(
            outputs={"staging.observations": staged, "staging.patients": patients}, ledger=[clean]
        )
        out["staging"] = staged
    with stage_run(
        lake,
        job="medlake_pipeline.gate",
        run_id=run_id,
        inputs={"staging.observations": out["staging"], "staging.patients": patients},
    ) as run:
        result = gate_result(observations(rows), failing=1)
        silver = lake.write(SILVER_OBSERVATIONS.name, result.split.good, mode="append")
        lake.write(SILVER_PATIENTS.name, SILVER_PATIENTS.schema.empty_table(), mode="append")
        lake.write(QUARANTINE.name, result.split.quarantined, mode="append")
        gate = Entry(
            stage="gate",
            table_name=SILVER_OBSERVATIONS.name,
            records_in=rows,
            records_out=rows - 1,
            quarantined=1,
        )
        run.complete(
            outputs={
                SILVER_OBSERVATIONS.name: silver,
                SILVER_PATIENTS.name: None,
                QUARANTINE.name: None,
            },
            ledger=[gate],
            quality={"staging.observations": result},
        )
        out["silver"] = silver
    with stage_run(
        lake, job="medlake_pipeline.dbt_gold", run_id=run_id, inputs=[SILVER_OBSERVATIONS.name]
    ) as run:
        gold = lake.write(
            "gold.ml_patient_features",
            pa.table({"person_key": ["p0", "p1"], "n_obs": [2, 1]}),
            mode="overwrite",
        )
        run.complete(
            outputs={"gold.ml_patient_features": gold}, row_counts={"gold.ml_patient_features": 2}
        )
        out["gold"] = gold
    out["ledger"] = {"ingest": ingest, "clean": clean, "gate": gate}
    return out


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    lake.write(BRONZE_FHIR.name, bronze_rows(2, run_id="earlier"), mode="append")  # version 0
    return lake


def by_job(events: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    return [e for e in events if e["job"]["name"] == job]


def dataset(event: dict[str, Any], side: str, name: str) -> dict[str, Any]:
    [found] = [d for d in event[side] if d["name"] == name]
    return found


def test_start_then_complete_with_the_versions_read_and_written(lake, tmp_path):
    written = run_pipeline(lake, tmp_path / "landing")
    events = read_events(lake)
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        (f"medlake_pipeline.{job}", state)
        for job in ("ingest", "clean", "gate", "dbt_gold")
        for state in ("START", "COMPLETE")
    ]
    start, complete = by_job(events, "medlake_pipeline.clean")
    assert (
        start["run"]["runId"] == complete["run"]["runId"] == run_uuid(RUN, "medlake_pipeline.clean")
    )
    namespace = (tmp_path / "lake").resolve().as_uri()
    for event in (start, complete):
        [read] = event["inputs"]
        assert (read["namespace"], read["name"]) == (namespace, "bronze.fhir_resources")
        assert read["facets"]["version"]["datasetVersion"] == str(written["bronze"]) == "1"
        assert event["run"]["facets"]["medlake_run"]["airflow_run_id"] == RUN
        parent = event["run"]["facets"]["parent"]
        assert parent["job"]["name"] == "medlake_pipeline" and parent["run"]["runId"] == run_uuid(
            RUN, "medlake_pipeline"
        )
    assert start["outputs"] == []
    assert [o["name"] for o in complete["outputs"]] == ["staging.observations", "staging.patients"]
    wrote = dataset(complete, "outputs", "staging.observations")
    assert wrote["namespace"] == namespace
    assert wrote["facets"]["version"]["datasetVersion"] == str(written["staging"])

    _, ingest = by_job(events, "medlake_pipeline.ingest")
    assert [(i["namespace"], i["name"]) for i in ingest["inputs"]] == [
        ("file", str((tmp_path / "landing" / "fhir").resolve()))
    ]
    _, gold = by_job(events, "medlake_pipeline.dbt_gold")
    assert gold["inputs"][0]["facets"]["version"]["datasetVersion"] == str(written["silver"])
    assert gold["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2


def test_run_ids_are_stable_uuids_per_airflow_run_and_job():
    first = run_uuid(RUN, "medlake_pipeline.gate")
    assert uuid.UUID(first).version == 5
    assert first == run_uuid(RUN, "medlake_pipeline.gate")
    assert first != run_uuid(RUN, "medlake_pipeline.clean")
    assert first != run_uuid("manual__2026-11-25T10:00:00+00:00", "medlake_pipeline.gate")


def test_a_failing_stage_emits_fail_with_the_message_and_reraises(lake):
    ran = []
    with (
        pytest.raises(BadDataError, match="ledger does not add up"),
        stage_run(lake, job="medlake_pipeline.gate", run_id=RUN, inputs=[BRONZE_FHIR.name]) as run,
    ):
        ran.append(run.run_id)
        raise BadDataError("the ledger does not add up: gate → silver.observations: in 4 ≠ 3")
    events = read_events(lake)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    fail = events[1]
    assert fail["run"]["runId"] == ran[0]
    error = fail["run"]["facets"]["errorMessage"]
    # the type and job only: exception text can quote values, and lineage leaves the lake
    assert error["message"] == "BadDataError in medlake_pipeline.gate"
    assert error["programmingLanguage"] == "python" and not error.get("stackTrace")
    assert "ledger does not add up" not in json.dumps(fail)
    assert [i["name"] for i in fail["inputs"]] == [BRONZE_FHIR.name] and fail["outputs"] == []


def test_an_interrupted_stage_is_reported_as_abort(lake):
    with (
        pytest.raises(KeyboardInterrupt),
        stage_run(lake, job="medlake_pipeline.clean", run_id=RUN),
    ):
        raise KeyboardInterrupt
    assert [e["eventType"] for e in read_events(lake)] == ["START", "ABORT"]


def test_schema_facet_is_the_delta_tables_schema(lake, tmp_path):
    run_pipeline(lake, tmp_path / "landing")
    _, gate = by_job(read_events(lake), "medlake_pipeline.gate")
    silver = dataset(gate, "outputs", SILVER_OBSERVATIONS.name)
    delta = pa.schema(DeltaTable(lake.uri(SILVER_OBSERVATIONS.name)).schema().to_arrow())
    fields = silver["facets"]["schema"]["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [(f.name, str(f.type)) for f in delta]
    assert [f["name"] for f in fields] == SILVER_OBSERVATIONS.schema.names
    assert {f["name"]: f["type"] for f in fields}["value_num"] == "double"
    assert [f["ordinal_position"] for f in fields] == list(range(1, len(delta) + 1))


def test_ledger_counts_travel_on_the_outputs_and_the_run(lake, tmp_path):
    written = run_pipeline(lake, tmp_path / "landing")
    events = read_events(lake)
    for job, key in (("ingest", "ingest"), ("clean", "clean"), ("gate", "gate")):
        _, complete = by_job(events, f"medlake_pipeline.{job}")
        entry: Entry = written["ledger"][key]
        counts = {
            "stage": entry.stage,
            "table_name": entry.table_name,
            "records_in": entry.records_in,
            "records_out": entry.records_out,
            "quarantined": entry.quarantined,
            "merged": entry.merged,
            "bronze_only": entry.bronze_only,
            "balanced": entry.balanced,
        }
        output = complete["outputs"][0]
        facet = output["outputFacets"]["medlake_ledger"]
        assert {k: facet[k] for k in counts} == counts
        assert facet["_producer"] and facet["_schemaURL"]
        assert output["outputFacets"]["outputStatistics"]["rowCount"] == entry.records_out
        assert [
            {k: e[k] for k in counts}
            for e in complete["run"]["facets"]["medlake_ledger"]["entries"]
        ] == [counts]


def test_gate_results_become_data_quality_assertions_without_row_values(lake, tmp_path):
    run_pipeline(lake, tmp_path / "landing")
    _, gate = by_job(read_events(lake), "medlake_pipeline.gate")
    staging = dataset(gate, "inputs", "staging.observations")
    assert "dataQualityAssertions" not in dataset(gate, "inputs", "staging.patients")["inputFacets"]
    assertions = {
        a["name"]: a for a in staging["inputFacets"]["dataQualityAssertions"]["assertions"]
    }
    assert set(assertions) == {"gate.heart_rate_range", "gate.row_count"}
    heart = assertions["gate.heart_rate_range"]
    assert (heart["success"], heart["column"], heart["assertion"]) == (
        False,
        "value_num",
        "expect_column_values_to_be_between",
    )
    assert heart["actual"] == "1 of 4 rows fail" and "412" not in json.dumps(heart)
    count = assertions["gate.row_count"]
    assert count["success"] is True and "column" not in count and count["severity"] == "error"
    assert staging["inputFacets"]["dataQualityMetrics"]["rowCount"] == 4


def test_quality_for_a_table_the_run_did_not_read_is_refused(lake):
    with (
        pytest.raises(ValueError, match="did not declare as inputs"),
        stage_run(lake, job="medlake_pipeline.gate", run_id=RUN, inputs=[BRONZE_FHIR.name]) as run,
    ):
        run.add_quality({"staging.observations": gate_result(observations(2), failing=0)})
    assert [e["eventType"] for e in read_events(lake)] == ["START", "FAIL"]


def test_column_lineage_of_staging_and_silver(lake, tmp_path):
    run_pipeline(lake, tmp_path / "landing")
    events = read_events(lake)
    _, clean = by_job(events, "medlake_pipeline.clean")
    staged = dataset(clean, "outputs", "staging.observations")["facets"]["columnLineage"]
    [value] = staged["fields"]["value_num"]["inputFields"]
    assert (value["name"], value["field"]) == ("bronze.fhir_resources", "raw")
    [person] = staged["fields"]["person_key"]["inputFields"]
    assert person["transformations"][0]["masking"] is True
    assert staged["fields"]["_record_hash"]["inputFields"][0]["field"] == "_record_hash"
    assert staged["dataset"][0]["field"] == "resource_type"
    _, gate = by_job(events, "medlake_pipeline.gate")
    silver = dataset(gate, "outputs", SILVER_OBSERVATIONS.name)["facets"]["columnLineage"]["fields"]
    assert "columnLineage" not in dataset(gate, "outputs", QUARANTINE.name)["facets"]
    assert set(silver) == set(SILVER_OBSERVATIONS.schema.names)
    [same] = silver["value_num"]["inputFields"]
    assert (same["name"], same["field"], same["transformations"][0]["subtype"]) == (
        "staging.observations",
        "value_num",
        "IDENTITY",
    )


def test_a_staging_table_hl7v2_and_csv_also_fill_names_them_upstream():
    inputs = ["bronze.fhir_resources", "bronze.hl7v2_messages", "bronze.csv_rows", "bronze.vcf_records"]
    facet = column_lineage("staging.observations", inputs, namespace="file:///lake")
    assert facet is not None
    assert {f.name for f in facet.dataset} == {"bronze.fhir_resources", "bronze.hl7v2_messages", "bronze.csv_rows"}
    variants = column_lineage("staging.variants", inputs, namespace="file:///lake")
    assert variants is None  # no column lineage stated: made from every input of its job


@pytest.mark.parametrize("spec", list(FHIR_SILVER.values()), ids=lambda s: s.name)
def test_every_silver_column_has_its_fhir_source_stated(spec):
    constants = {"source_system", "_source_kind", "_record_hash", "_run_id"}
    assert set(FHIR_COLUMNS[spec.name]) == set(spec.schema.names) - constants


def test_lineage_graph_walks_up_and_down_with_the_versions_of_the_last_run(lake, tmp_path):
    run_pipeline(lake, tmp_path / "landing", run_id="manual__first")
    second = run_pipeline(lake, tmp_path / "landing", run_id="manual__second")
    graph = lineage_graph(lake, "staging.observations")
    assert graph.airflow_run_id == "manual__second" and graph.version == second["staging"]
    [bronze] = graph.upstream
    assert (bronze.table, bronze.version, bronze.job) == (
        "bronze.fhir_resources",
        second["bronze"],
        "medlake_pipeline.clean",
    )
    [landing] = bronze.links
    assert (
        landing.table == str((tmp_path / "landing" / "fhir").resolve())
        and landing.job == "medlake_pipeline.ingest"
    )
    # the gate read staging.observations and staging.patients: silver.observations comes from the
    # first only (its column lineage says so), the quarantine (no column lineage) from both
    assert sorted(link.table for link in graph.downstream) == ["quarantine", "silver.observations"]
    [silver] = [link for link in graph.downstream if link.table == "silver.observations"]
    assert (silver.table, silver.version, silver.job) == (
        "silver.observations",
        second["silver"],
        "medlake_pipeline.gate",
    )
    assert [(g.table, g.version) for g in silver.links] == [
        ("gold.ml_patient_features", second["gold"])
    ]
    first = lineage_graph(lake, "staging.observations", run_id="manual__first")
    assert first.upstream[0].version == second["bronze"] - 1
    quarantine = lineage_graph(lake, "quarantine")
    assert sorted(link.table for link in quarantine.upstream) == [
        "staging.observations",
        "staging.patients",
    ]
    assert not lineage_graph(lake, "silver.conditions").found


def test_each_bronze_table_comes_from_its_own_landing_folder_only(lake, tmp_path):
    landing = tmp_path / "landing"
    folders = [landing / kind for kind in ("fhir", "hl7v2", "csv", "dicom", "vitals", "vcf")]
    with stage_run(lake, job="medlake_pipeline.ingest", run_id=RUN, sources=folders) as run:
        fhir = lake.write(BRONZE_FHIR.name, bronze_rows(2), mode="append")
        csv = lake.write(BRONZE_CSV.name, BRONZE_CSV.schema.empty_table(), mode="append")
        run.complete(outputs={BRONZE_FHIR.name: fhir, BRONZE_CSV.name: csv})
    for table, kind in ((BRONZE_FHIR.name, "fhir"), (BRONZE_CSV.name, "csv")):
        [source] = lineage_graph(lake, table).upstream
        assert source.table == str((landing / kind).resolve()), table


def test_silver_lineage_crosses_from_the_curation_run_to_each_source_run_that_fed_it(lake, tmp_path):
    """The source DAGs and the curation DAG are separate Airflow runs: a silver table's upstream
    follows each bronze version the curation run read to the source run that wrote it."""
    landing = tmp_path / "landing"
    written: dict[str, int] = {}
    for table, kind in ((BRONZE_FHIR, "fhir"), (BRONZE_HL7V2, "hl7v2"), (BRONZE_CSV, "csv")):
        with stage_run(lake, job=f"src_{kind}.ingest", run_id=f"manual__{kind}",
                       sources=[landing / kind]) as run:
            rows = bronze_rows(1) if table is BRONZE_FHIR else table.schema.empty_table()
            written[table.name] = lake.write(table.name, rows, mode="append")
            run.complete(outputs={table.name: written[table.name]})
    lake.write(BRONZE_FHIR.name, bronze_rows(1, run_id="later"), mode="append")  # after the trigger
    curation = "asset_triggered__2026-11-24T10:05:00+00:00"
    with stage_run(lake, job="medlake_curation.clean", run_id=curation, inputs=written) as run:
        staged = lake.write("staging.observations", observations(2), mode="overwrite", spec=SILVER_OBSERVATIONS)
        run.complete(outputs={"staging.observations": staged})
    with stage_run(lake, job="medlake_curation.gate", run_id=curation,
                   inputs={"staging.observations": staged}) as run:
        silver = lake.write(SILVER_OBSERVATIONS.name, observations(2), mode="append")
        run.complete(outputs={SILVER_OBSERVATIONS.name: silver})

    graph = lineage_graph(lake, SILVER_OBSERVATIONS.name)
    assert graph.airflow_run_id == curation
    [staging] = graph.upstream
    bronze = {link.table: link for link in staging.links}
    assert set(bronze) == {BRONZE_FHIR.name, BRONZE_HL7V2.name, BRONZE_CSV.name}
    for table, kind in ((BRONZE_FHIR, "fhir"), (BRONZE_HL7V2, "hl7v2"), (BRONZE_CSV, "csv")):
        link = bronze[table.name]
        assert link.version == written[table.name]  # the version the curation run read
        [source] = link.links
        assert (source.table, source.job) == (str((landing / kind).resolve()), f"src_{kind}.ingest")


def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(lineage_app, name="lineage")
    return root


def test_lineage_show_prints_upstream_and_downstream_with_versions(lake, tmp_path):
    written = run_pipeline(lake, tmp_path / "landing")
    runner = CliRunner()
    shown = runner.invoke(
        cli(), ["lineage", "show", "silver.observations", "--lake", str(lake.root)]
    )
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "upstream" in text and "downstream" in text
    assert f"staging.observations v{written['staging']}" in text
    assert f"bronze.fhir_resources v{written['bronze']}" in text
    assert f"gold.ml_patient_features v{written['gold']}" in text
    assert (
        text.index("upstream")
        < text.index("staging.observations")
        < text.index("downstream")
        < text.index("gold.")
    )

    as_json = runner.invoke(
        cli(), ["lineage", "show", "silver.observations", "--lake", str(lake.root), "--json"]
    )
    data = json.loads(as_json.output)
    assert (data["table"], data["version"], data["run_id"]) == (
        "silver.observations",
        written["silver"],
        RUN,
    )
    [staging] = data["upstream"]
    assert (staging["table"], staging["version"]) == ("staging.observations", written["staging"])
    assert [u["table"] for u in staging["upstream"]] == ["bronze.fhir_resources"]
    assert data["downstream"] == [
        {
            "table": "gold.ml_patient_features",
            "namespace": lake.root.resolve().as_uri(),
            "version": written["gold"],
            "job": "medlake_pipeline.dbt_gold",
            "downstream": [],
        }
    ]

    missing = runner.invoke(
        cli(), ["lineage", "show", "silver.conditions", "--lake", str(lake.root)]
    )
    assert missing.exit_code == 1
    help_text = runner.invoke(cli(), ["lineage", "show", "--help"]).output
    assert "Example:" in help_text


def test_an_unwritable_event_file_fails_the_stage_before_it_runs(lake):
    events_path(lake).mkdir(parents=True)  # a folder where the file should be
    ran = []
    with (
        pytest.raises(LineageError, match="START lineage event of medlake_pipeline.clean"),
        stage_run(lake, job="medlake_pipeline.clean", run_id=RUN),
    ):
        ran.append(True)
    assert ran == []


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any], str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body), self.headers.get("Authorization")))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_an_http_backend_gets_the_same_events_as_the_lake_file(lake, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "*")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.received = []
    config = LineageConfig(url=f"http://127.0.0.1:{server.server_port}", api_key="not-a-real-key")
    try:
        with stage_run(
            lake, job="medlake_pipeline.clean", run_id=RUN, inputs=[BRONZE_FHIR.name], config=config
        ):
            pass
    finally:
        server.shutdown()
    assert [p for p, _, _ in _Collector.received] == ["/api/v1/lineage"] * 2
    assert [e for _, e, _ in _Collector.received] == read_events(lake)
    assert _Collector.received[0][2] == "Bearer not-a-real-key"


def test_an_unreachable_backend_is_loud(lake):
    config = LineageConfig(
        url="http://127.0.0.1:9", timeout_seconds=0.5, retries=0
    )  # discard port: nothing listens
    with (
        pytest.raises(LineageError, match="127.0.0.1:9"),
        stage_run(lake, job="medlake_pipeline.clean", run_id=RUN, config=config),
    ):
        pass
    assert [e["eventType"] for e in read_events(lake)] == ["START"]  # the lake's file came first
