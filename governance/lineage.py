"""OpenLineage events for every pipeline stage: what each run read and wrote, at which Delta version.

A stage wraps its work in :func:`stage_run`; the run emits START, then COMPLETE when the body
returns or FAIL (ABORT when interrupted) when it raises, and re-raises::

    with stage_run(lake, job="medlake_pipeline.clean", run_id=airflow_run_id,
                   inputs={"bronze.fhir_resources": 4}) as run:
        result = clean(...)
        run.complete(outputs=result.versions, ledger=result.entries)

Datasets are the lake's Delta tables: namespace ``file://<lake root>`` (or a configured one),
name the table name (``silver.observations``), the same name as the Airflow asset and the
registry. Each carries its schema (the Delta table's Arrow schema at that version) and version;
outputs carry the ledger counts (``medlake_ledger``) and ``outputStatistics``; inputs the gate
checked carry ``dataQualityAssertions``; staging and silver tables carry column lineage.

Where the events go: always the lake's own file, ``<lake>/_lineage/events.ndjson``, one event
per line, appended by the OpenLineage client's ``FileTransport`` (``append: true``); also an
OpenLineage backend (Marquez, ...) over HTTP when :class:`LineageConfig` has a ``url``. Airflow's
OpenLineage provider writes its own task-level events to ``<lake>/_lineage/airflow.ndjson``
(see :data:`AIRFLOW_EVENTS_FILE`).

Run ids: OpenLineage wants a UUID, so a stage's run id is ``uuid5(airflow run id, job)``: stable,
so a retried task reports under the same run id and its last terminal event is the run's outcome.
Every event carries the Airflow run id in its ``medlake_run`` facet and a ``parent`` facet naming
the pipeline run (``uuid5(airflow run id, dag id)``), so everything joins on the Airflow run id.

Failures are loud: an event that cannot be written raises :class:`LineageError` and fails the
task. Nothing is lost by that: START is written before the stage touches a table, COMPLETE after
its Delta transactions committed, and the stages are idempotent, so Airflow's retry redoes the
stage and writes the events again. (The client's standard ``OPENLINEAGE_DISABLED=true`` switch
turns these events off too; medlake never sets it.) Appends come from one task at a time: the
pipeline's tasks run in sequence, so lines never interleave.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attr
import pyarrow as pa
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    InputDatasetFacet,
    OutputDatasetFacet,
    RunFacet,
    column_lineage_dataset,
    data_quality_assertions_dataset,
    data_quality_metrics_input_dataset,
    dataset_version_dataset,
    datasource_dataset,
    documentation_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
)
from openlineage.client.transport import get_default_factory

from medlake.lake import Lake
from medlake.ledger import Entry
from medlake.registry import BRONZE_FHIR, BRONZE_OF, TABLES, dataset_name

if TYPE_CHECKING:
    from medlake.expectations.gate import GateResult

log = logging.getLogger(__name__)

#: the project's public home: the events' producer and the base of the custom facets' schema URLs
PROJECT_URL = "https://github.com/medlake/medlake"
PRODUCER = f"{PROJECT_URL}/tree/main/governance/lineage.py"
_FACET_SCHEMA = f"{PROJECT_URL}/blob/main/governance/lineage.py#/$defs/{{}}"

#: below the lake root: the events medlake's stages emit, and those of Airflow's provider
LINEAGE_DIR = "_lineage"
EVENTS_FILE = "events.ndjson"
AIRFLOW_EVENTS_FILE = "airflow.ndjson"

#: fixed namespace of the run-id UUIDs (uuid5): same Airflow run id and job, same OpenLineage run id
RUN_ID_NAMESPACE = uuid.UUID("6f0f1c1e-8a4e-5c43-9b7e-3d0d5c0e1a27")


class LineageError(RuntimeError):
    """A lineage event could not be written; the task fails and its retry writes it again."""


@dataclass(frozen=True)
class LineageConfig:
    """Where a stage's events go: always the lake's file; an OpenLineage backend too when ``url`` is set.

    ``api_key`` is a secret: callers pass it in (from medlake's settings), nothing here reads it.
    """

    #: an OpenLineage HTTP backend, e.g. ``http://localhost:5000`` for Marquez; None: the file only
    url: str | None = None
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    timeout_seconds: float = 5.0
    #: retries of a failed send (connection error, 5xx), with the client's backoff, before it counts as failed
    retries: int = 5
    #: namespace of medlake's jobs (Airflow's provider uses its own, see the orchestrator)
    job_namespace: str = "medlake"
    #: namespace of the lake's datasets; None: ``file://<lake root>``
    dataset_namespace: str | None = None

    def transport(self, lake: Lake) -> dict[str, Any]:
        """The OpenLineage client's transport config (the dict an ``openlineage.yml`` would hold)."""
        file = {"type": "file", "log_file_path": str(events_path(lake)), "append": True}
        if self.url is None:
            return file
        http: dict[str, Any] = {
            "type": "http",
            "url": self.url,
            "endpoint": self.endpoint,
            "timeout": self.timeout_seconds,
            "retry": {"total": self.retries, "read": self.retries, "connect": self.retries},
        }
        if self.api_key:
            http["auth"] = {"type": "api_key", "apiKey": self.api_key}
        # the lake's file first, then the backend; the first failure raises (the file is kept)
        return {
            "type": "composite",
            "transports": {"lake": file, "backend": http},
            "continue_on_failure": False,
            "continue_on_success": True,
        }

    def namespace(self, lake: Lake) -> str:
        return self.dataset_namespace or lake_namespace(lake)


def lake_namespace(lake: Lake) -> str:
    """The datasets' namespace of a lake: ``file:///abs/path/to/lake``."""
    return lake.location if lake.remote else lake.root.resolve().as_uri()


def events_path(lake: Lake | Path) -> Path:
    """The file medlake's events are appended to: ``<lake>/_lineage/events.ndjson``."""
    return _root(lake) / LINEAGE_DIR / EVENTS_FILE


def airflow_events_path(lake: Lake | Path) -> Path:
    """Where the orchestrator points Airflow's OpenLineage provider: ``<lake>/_lineage/airflow.ndjson``."""
    return _root(lake) / LINEAGE_DIR / AIRFLOW_EVENTS_FILE


def run_uuid(airflow_run_id: str, job: str) -> str:
    """The OpenLineage run id of a job in an Airflow run: the same inputs give the same UUID."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{airflow_run_id}\x1f{job}"))


# --- custom facets ------------------------------------------------------------------------------


@attr.define
class MedlakeRunFacet(RunFacet):
    """The Airflow run this job ran in: the key every medlake record (ledger, quarantine, audit) joins on."""

    airflow_run_id: str
    dag_id: str
    #: the engine the stage ran its transforms on: embedded or spark
    engine: str = "embedded"

    @staticmethod
    def _get_schema() -> str:
        return _FACET_SCHEMA.format("MedlakeRunFacet")


@attr.define
class MedlakeLedgerRunFacet(RunFacet):
    """Every ledger entry the stage recorded: records in = out + quarantined + merged + bronze_only."""

    entries: list[dict[str, Any]]

    @staticmethod
    def _get_schema() -> str:
        return _FACET_SCHEMA.format("MedlakeLedgerRunFacet")


@attr.define
class MedlakeLedgerOutputFacet(OutputDatasetFacet):
    """The ledger entry of the stage for this output table."""

    stage: str
    table_name: str
    records_in: int
    records_out: int
    quarantined: int
    merged: int
    bronze_only: int
    balanced: bool

    @staticmethod
    def _get_schema() -> str:
        return _FACET_SCHEMA.format("MedlakeLedgerOutputFacet")


# --- column lineage ------------------------------------------------------------------------------

Kind = Literal["copy", "derived", "pseudonym", "date_shift", "generalized"]

#: silver column ← FHIR element of ``bronze.fhir_resources.raw`` (jobs/ingest/fhir.py flattens them).
#: Columns with no source element (``source_system``, ``_source_kind``) are constants.
FHIR_COLUMNS: dict[str, dict[str, tuple[str, Kind]]] = {
    "silver.patients": {
        "person_key": ("Patient.id", "pseudonym"),
        "source_key": ("Patient.id", "pseudonym"),
        "gender": ("Patient.gender", "copy"),
        "birth_date": ("Patient.birthDate", "date_shift"),
        "deceased": ("Patient.deceasedBoolean | Patient.deceasedDateTime", "derived"),
        "deceased_date": ("Patient.deceasedDateTime", "date_shift"),
        "zip3": ("Patient.address[0].postalCode", "generalized"),
        "state": ("Patient.address[0].state", "copy"),
        "country": ("Patient.address[0].country", "copy"),
        "marital_status": ("Patient.maritalStatus.coding[0].code", "copy"),
        "race": ("Patient.extension(us-core-race)", "derived"),
        "ethnicity": ("Patient.extension(us-core-ethnicity)", "derived"),
        "language": ("Patient.communication[0].language.coding[0].code", "copy"),
    },
    "silver.encounters": {
        "encounter_key": ("Encounter.id", "pseudonym"),
        "person_key": ("Encounter.subject", "pseudonym"),
        "status": ("Encounter.status", "copy"),
        "class_code": ("Encounter.class.code", "copy"),
        "type_system": ("Encounter.type[0].coding[0].system", "copy"),
        "type_code": ("Encounter.type[0].coding[0].code", "copy"),
        "type_display": ("Encounter.type[0].coding[0].display", "copy"),
        "site": ("Encounter.serviceProvider.display", "copy"),
        "start_at": ("Encounter.period.start", "date_shift"),
        "end_at": ("Encounter.period.end", "date_shift"),
    },
    "silver.observations": {
        "observation_key": ("Observation.id (+ component position)", "pseudonym"),
        "person_key": ("Observation.subject", "pseudonym"),
        "encounter_key": ("Observation.encounter", "pseudonym"),
        "status": ("Observation.status", "copy"),
        "category": ("Observation.category[0].coding[0].code", "copy"),
        "code_system": ("Observation.code.coding(LOINC).system | component.code, or concept map", "derived"),
        "code": ("Observation.code.coding(LOINC).code | component.code, or concept map", "derived"),
        "code_display": ("Observation.code.coding(LOINC).display | component.code, or concept map", "derived"),
        "panel_code": ("Observation.code.coding(LOINC).code of a panel", "copy"),
        "value_num": (
            "Observation.value[x] (Quantity, integer, boolean) | component.value[x], in the canonical unit",
            "derived",
        ),
        "value_unit": ("Observation.valueQuantity.code (UCUM) or .unit, made canonical", "derived"),
        "value_text": ("Observation.valueCodeableConcept.coding[0].display", "copy"),
        "value_code": ("Observation.valueCodeableConcept.coding[0].code", "copy"),
        "data_absent_reason": ("Observation.dataAbsentReason.coding[0].code", "copy"),
        "interpretation": ("Observation.interpretation[0].coding[0].code", "copy"),
        "ref_low": ("Observation.referenceRange[0].low.value, in the canonical unit", "derived"),
        "ref_high": ("Observation.referenceRange[0].high.value, in the canonical unit", "derived"),
        "effective_at": ("Observation.effective[x] | Observation.issued", "date_shift"),
        "mapping_status": ("Observation.code.coding checked against LOINC / concept map", "derived"),
        "_mapped_from": ("Observation.code.coding system|code, when a concept map recoded it", "copy"),
        "_unit_converted_from": ("Observation.valueQuantity.code or .unit, when converted", "copy"),
        "_value_original": ("Observation.value[x], when converted", "copy"),
        "_range_flag": ("Observation.value[x] against referenceRange or a default normal range", "derived"),
    },
    "silver.conditions": {
        "condition_key": ("Condition.id", "pseudonym"),
        "person_key": ("Condition.subject", "pseudonym"),
        "encounter_key": ("Condition.encounter", "pseudonym"),
        "clinical_status": ("Condition.clinicalStatus.coding[0].code", "copy"),
        "verification_status": ("Condition.verificationStatus.coding[0].code", "copy"),
        "code_system": ("Condition.code.coding[0].system", "copy"),
        "code": ("Condition.code.coding[0].code", "copy"),
        "code_display": ("Condition.code.coding[0].display", "copy"),
        "icd10cm_code": ("Condition.code.coding(ICD-10-CM).code, or concept map", "derived"),
        "snomed_code": ("Condition.code.coding(SNOMED CT).code, or concept map", "derived"),
        "onset_at": ("Condition.onsetDateTime | Condition.onsetPeriod.start", "date_shift"),
        "abatement_at": ("Condition.abatementDateTime", "date_shift"),
        "recorded_date": ("Condition.recordedDate", "date_shift"),
        "mapping_status": ("Condition.code.coding checked against ICD-10-CM / SNOMED CT", "derived"),
        "_mapped_from": ("Condition.code.coding[0] system|code, when a concept map supplied codes", "copy"),
    },
    "silver.medications": {
        "medication_key": ("MedicationRequest.id", "pseudonym"),
        "person_key": ("MedicationRequest.subject", "pseudonym"),
        "encounter_key": ("MedicationRequest.encounter", "pseudonym"),
        "status": ("MedicationRequest.status", "copy"),
        "intent": ("MedicationRequest.intent", "copy"),
        "code_system": (
            "MedicationRequest.medicationCodeableConcept.coding(RxNorm).system",
            "copy",
        ),
        "code": ("MedicationRequest.medicationCodeableConcept.coding(RxNorm).code", "copy"),
        "code_display": (
            "MedicationRequest.medicationCodeableConcept.coding(RxNorm).display",
            "copy",
        ),
        "rxnorm_code": (
            "MedicationRequest.medicationCodeableConcept.coding(RxNorm).code, or concept map",
            "derived",
        ),
        "authored_at": ("MedicationRequest.authoredOn", "date_shift"),
        "dosage_text": ("MedicationRequest.dosageInstruction[0].text", "copy"),
        "mapping_status": ("MedicationRequest.medicationCodeableConcept checked against RxNorm", "derived"),
        "_mapped_from": (
            "MedicationRequest.medicationCodeableConcept system|code, when a concept map supplied RxNorm",
            "copy",
        ),
    },
}
for _columns in FHIR_COLUMNS.values():  # the key ingest gave the row, kept when resolution moves it
    _columns["_prelink_key"] = _columns["person_key"]

_KIND_WORDS: dict[Kind, tuple[str, bool]] = {
    "copy": ("", False),
    "derived": ("derived from ", False),
    "pseudonym": ("keyed pseudonym (HMAC-SHA256) of ", True),
    "date_shift": ("shifted by the patient's keyed offset: ", True),
    "generalized": ("generalized (Safe Harbor ZIP3) from ", True),
}


#: the silver tables FHIR fills that other sources' rows also reach (HL7 v2 segments; CSV extracts
#: through their mapping files): their staging tables are made from those bronze tables too
ALSO_FED_BY: dict[str, tuple[str, ...]] = {
    name: ("bronze.hl7v2_messages", "bronze.csv_rows")
    for name in ("silver.patients", "silver.encounters", "silver.observations", "silver.conditions",
                 "silver.medications")
}


def _also_fed(namespace: str, bronze_tables: Iterable[str]) -> list[column_lineage_dataset.InputField]:
    """The other bronze tables a staging table's rows were mapped from, as dataset-level inputs."""
    return [
        _input_field(
            namespace,
            bronze,
            "raw",
            kind="INDIRECT",
            subtype="TRANSFORMATION",
            description=f"rows mapped into the same columns from {bronze}",
        )
        for bronze in bronze_tables
    ]


def column_lineage(
    output: str, inputs: Iterable[str], *, namespace: str
) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
    """Which input columns each column of ``output`` comes from, where medlake can state it.

    clean: ``staging.<t>.<column>`` ← ``bronze.fhir_resources.raw`` (the FHIR element in words;
    pseudonyms and shifted dates marked as masking), its rows chosen by ``resource_type``.
    gate: ``silver.<t>.<column>`` ← ``staging.<t>.<column>``, unchanged (rows that fail are held back).
    """
    inputs = set(inputs)
    layer, _, table = output.partition(".")
    silver = f"silver.{table}"
    others = [b for b in ALSO_FED_BY.get(silver, ()) if b in inputs]
    if layer == "staging" and silver in FHIR_COLUMNS and BRONZE_FHIR.name in inputs:
        fields: dict[str, column_lineage_dataset.Fields] = {}
        for column, (path, kind) in FHIR_COLUMNS[silver].items():
            words, masking = _KIND_WORDS[kind]
            fields[column] = _fields(
                namespace,
                BRONZE_FHIR.name,
                "raw",
                kind="DIRECT",
                subtype="TRANSFORMATION",
                description=f"{words}{path}",
                masking=masking,
            )
        for column in ("_record_hash", "_run_id"):
            fields[column] = _fields(
                namespace, BRONZE_FHIR.name, column, kind="DIRECT", subtype="IDENTITY"
            )
        return column_lineage_dataset.ColumnLineageDatasetFacet(
            fields=fields,
            dataset=[
                _input_field(
                    namespace,
                    BRONZE_FHIR.name,
                    "resource_type",
                    kind="INDIRECT",
                    subtype="FILTER",
                    description="rows of this resource type",
                ),
                *_also_fed(namespace, others),
            ],
            producer=PRODUCER,
        )
    if layer == "staging" and others:  # a run that read no FHIR (its trigger named HL7 v2 or CSV only)
        return column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={}, dataset=_also_fed(namespace, others), producer=PRODUCER
        )
    staging = f"staging.{table}"
    if layer == "silver" and silver in TABLES and staging in inputs:
        return column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={
                f.name: _fields(namespace, staging, f.name, kind="DIRECT", subtype="IDENTITY")
                for f in TABLES[silver].schema
            },
            producer=PRODUCER,
        )
    return None


def landing_lineage(
    output: str, sources: Sequence[Path]
) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
    """A bronze table is made from its own landing folder only (``landing/<kind>/``, by
    ``BRONZE_OF``), not from every folder the ingest stage read: ``bronze.fhir_resources`` ←
    ``landing/fhir``. None for other tables, or when that folder is not among the sources."""
    kinds = [kind for kind, tables in BRONZE_OF.items() if output in tables]
    own = [p for p in sources if p.name in kinds]
    if not own:
        return None
    return column_lineage_dataset.ColumnLineageDatasetFacet(
        fields={},
        dataset=[
            _input_field(
                "file",
                str(path.resolve()),
                "content",
                kind="DIRECT",
                subtype="TRANSFORMATION",
                description="the files of this landing folder, parsed",
            )
            for path in own
        ],
        producer=PRODUCER,
    )


def _input_field(
    namespace: str,
    name: str,
    column: str,
    *,
    kind: str,
    subtype: str,
    description: str = "",
    masking: bool = False,
) -> column_lineage_dataset.InputField:
    return column_lineage_dataset.InputField(
        namespace=namespace,
        name=name,
        field=column,
        transformations=[
            column_lineage_dataset.Transformation(
                type=kind, subtype=subtype, description=description or None, masking=masking
            )
        ],
    )


def _fields(namespace: str, name: str, column: str, **how: Any) -> column_lineage_dataset.Fields:
    return column_lineage_dataset.Fields(inputFields=[_input_field(namespace, name, column, **how)])


# --- the run -----------------------------------------------------------------------------------


@dataclass
class StageRun:
    """One run of a stage: what it read, and (after :meth:`complete`) what it wrote."""

    lake: Lake
    job: str
    airflow_run_id: str
    dag_id: str
    config: LineageConfig
    client: OpenLineageClient
    inputs: dict[str, int | None]
    sources: tuple[Path, ...] = ()
    run_id: str = ""
    outputs: dict[str, int | None] | None = None
    ledger: list[Entry] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    quality: dict[str, GateResult] = field(default_factory=dict)
    engine: str = "embedded"

    def __post_init__(self) -> None:
        self.run_id = run_uuid(self.airflow_run_id, self.job)

    def complete(
        self,
        *,
        outputs: Mapping[str, int | None],
        ledger: Iterable[Entry] = (),
        quality: Mapping[str, GateResult] | None = None,
        row_counts: Mapping[str, int] | None = None,
        inputs: Mapping[str, int | None] | None = None,
    ) -> None:
        """Record what the stage wrote; COMPLETE is emitted when the ``with`` block ends without error.

        ``outputs``: table → Delta version written (None: its current version).
        ``ledger``: the stage's entries; each goes on the output of its table (or its staging table).
        ``quality``: validated input table → its GateResult (``dataQualityAssertions`` facet).
        ``row_counts``: rows written per output where there is no ledger entry (gold marts).
        ``inputs``: the versions actually read, when known only after the work (replaces START's).
        """
        self.outputs = dict(outputs)
        self.ledger = list(ledger)
        self.row_counts = dict(row_counts or {})
        if inputs is not None:
            self.inputs = {n: self.lake.version(n) if v is None else v for n, v in inputs.items()}
        if quality:
            self.add_quality(quality)

    def add_quality(self, quality: Mapping[str, GateResult]) -> None:
        """Attach gate results to the inputs they validated; they travel on COMPLETE and on FAIL."""
        unknown = sorted(set(quality) - set(self.inputs))
        if unknown:
            raise ValueError(
                f"{self.job}: quality results for {', '.join(unknown)}, which this run did not declare as "
                f"inputs ({', '.join(self.inputs) or 'none'})"
            )
        self.quality.update(quality)

    # -- events

    def event(self, state: RunState, *, error: BaseException | None = None) -> RunEvent:
        """The event for this state, with every facet known by now."""
        namespace = self.config.namespace(self.lake)
        inputs = [self._input(name, version, namespace) for name, version in self.inputs.items()]
        inputs += [InputDataset(namespace="file", name=str(p.resolve())) for p in self.sources]
        outputs: list[OutputDataset] = []
        if state == RunState.COMPLETE and self.outputs is not None:
            read = list(self.inputs)
            outputs = [
                self._output(name, version, namespace, read)
                for name, version in self.outputs.items()
            ]
        run_facets: dict[str, RunFacet] = {
            "parent": _parent(self.config.job_namespace, self.dag_id, self.airflow_run_id),
            "medlake_run": MedlakeRunFacet(
                airflow_run_id=self.airflow_run_id,
                dag_id=self.dag_id,
                engine=self.engine,
                producer=PRODUCER,
            ),
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=_version("medlake"),
                name="medlake",
                openlineageAdapterVersion=_version("openlineage-python"),
                producer=PRODUCER,
            ),
        }
        if state == RunState.COMPLETE and self.ledger:
            run_facets["medlake_ledger"] = MedlakeLedgerRunFacet(
                entries=[_ledger_dict(e) for e in self.ledger], producer=PRODUCER
            )
        if error is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=failure_summary(error, job=self.job),
                programmingLanguage="python",
                producer=PRODUCER,
            )
        return RunEvent(
            eventType=state,
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=self.run_id, facets=run_facets),
            job=Job(
                namespace=self.config.job_namespace,
                name=self.job,
                facets={
                    "jobType": job_type_job.JobTypeJobFacet(
                        processingType="BATCH",
                        integration="MEDLAKE",
                        jobType="TASK",
                        producer=PRODUCER,
                    )
                },
            ),
            inputs=inputs,
            outputs=outputs,
            producer=PRODUCER,
        )

    def emit(self, state: RunState, *, error: BaseException | None = None) -> None:
        """Write the event; a failure raises :class:`LineageError` naming the run and the target."""
        try:
            self.client.emit(self.event(state, error=error))
        except Exception as exc:
            where = (
                events_path(self.lake)
                if self.config.url is None
                else f"{events_path(self.lake)} and {self.config.url}"
            )
            raise LineageError(
                f"could not write the {state.value} lineage event of {self.job} in Airflow run "
                f"{self.airflow_run_id} to {where}: {exc}"
            ) from exc

    def _input(self, name: str, version: int | None, namespace: str) -> InputDataset:
        facets: dict[str, InputDatasetFacet] = {}
        result = self.quality.get(name)
        if result is not None:
            facets["dataQualityAssertions"] = _assertions(result)
            facets["dataQualityMetrics"] = (
                data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
                    columnMetrics={},
                    rowCount=result.validated,
                    producer=PRODUCER,
                )
            )
        return InputDataset(
            namespace=namespace,
            name=dataset_name(name),
            facets=self._dataset_facets(name, version, namespace),
            inputFacets=facets,
        )

    def _output(
        self, name: str, version: int | None, namespace: str, read: Sequence[str]
    ) -> OutputDataset:
        if version is None:
            version = self.lake.version(name)
        facets = self._dataset_facets(name, version, namespace)
        lineage = column_lineage(name, read, namespace=namespace) or landing_lineage(
            name, self.sources
        )
        if lineage is not None:
            facets["columnLineage"] = lineage
        output_facets: dict[str, OutputDatasetFacet] = {}
        entry = _entry_for(name, self.ledger)
        rows = entry.records_out if entry is not None else self.row_counts.get(name)
        if rows is not None:
            output_facets["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=rows, producer=PRODUCER
                )
            )
        if entry is not None:
            output_facets["medlake_ledger"] = MedlakeLedgerOutputFacet(
                **_ledger_dict(entry), producer=PRODUCER
            )
        return OutputDataset(
            namespace=namespace, name=dataset_name(name), facets=facets, outputFacets=output_facets
        )

    def _dataset_facets(
        self, name: str, version: int | None, namespace: str
    ) -> dict[str, DatasetFacet]:
        facets: dict[str, DatasetFacet] = {"dataSource": _source(namespace)}
        spec = TABLES.get(name)
        if spec is not None:
            facets["documentation"] = documentation_dataset.DocumentationDatasetFacet(
                description=spec.description, producer=PRODUCER
            )
        if version is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(version), producer=PRODUCER
            )
            arrow = pa.schema(self.lake.table(name, version=version).schema().to_arrow())
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=schema_fields(arrow), producer=PRODUCER
            )
        return facets


@contextmanager
def stage_run(
    lake: Lake,
    *,
    job: str,
    run_id: str,
    inputs: Mapping[str, int | None] | Sequence[str] = (),
    sources: Sequence[Path] = (),
    config: LineageConfig | None = None,
    dag_id: str | None = None,
    engine: str = "embedded",
) -> Iterator[StageRun]:
    """Emit START now, then COMPLETE when the block ends, FAIL (with the error) when it raises.

    ``job``: ``<dag id>.<task id>``, e.g. ``medlake_pipeline.ingest``; ``run_id``: the Airflow run id.
    ``inputs``: tables read → the Delta version read (None, or a bare name: the current version).
    ``sources``: folders outside the lake the stage read (landing), as ``file`` datasets named by path.
    ``dag_id``: the pipeline (parent) job; default: ``job`` up to its first dot.
    ``engine``: the engine the stage runs on (named in the ``medlake_run`` facet).
    A KeyboardInterrupt or other non-``Exception`` (a killed task) is reported as ABORT. Re-raises.
    """
    config = config or LineageConfig()
    try:
        events_path(lake).parent.mkdir(parents=True, exist_ok=True)
        transport = get_default_factory().create(config.transport(lake))
    except (OSError, RuntimeError, ValueError) as exc:
        raise LineageError(
            f"{job}: cannot set up lineage output to {events_path(lake)}: {exc}"
        ) from exc
    read = dict(inputs) if isinstance(inputs, Mapping) else {name: None for name in inputs}
    run = StageRun(
        lake=lake,
        job=job,
        airflow_run_id=run_id,
        dag_id=dag_id or job.split(".", 1)[0],
        config=config,
        client=OpenLineageClient(transport=transport),
        inputs={
            name: lake.version(name) if version is None else version
            for name, version in read.items()
        },
        sources=tuple(sources),
        engine=engine,
    )
    try:
        run.emit(RunState.START)
        try:
            yield run
        except Exception as exc:
            _emit_after(run, RunState.FAIL, exc)
            raise
        except BaseException as exc:
            _emit_after(run, RunState.ABORT, exc)
            raise
        run.emit(RunState.COMPLETE)
    finally:
        run.client.close()


def _emit_after(run: StageRun, state: RunState, error: BaseException) -> None:
    """Report the stage's failure; if that fails too, the stage's own error stays the one raised."""
    try:
        run.emit(state, error=error)
    except LineageError as lineage_error:
        log.error("%s", lineage_error)
        error.add_note(str(lineage_error))


# --- reading the events back ---------------------------------------------------------------------


def read_events(lake: Lake | Path, *, airflow: bool = False) -> list[dict[str, Any]]:
    """The lake's lineage events in the order they were written (medlake's, or Airflow's provider's)."""
    path = airflow_events_path(lake) if airflow else events_path(lake)
    if not path.exists():
        return []
    events = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LineageError(
                    f"{path} line {number}: not a JSON lineage event ({exc.msg})"
                ) from exc
    return events


@dataclass(frozen=True)
class Link:
    """A table next to another in the lineage, the job between them and the version it read or wrote."""

    table: str
    namespace: str
    version: int | None
    job: str
    links: tuple[Link, ...] = ()

    def as_dict(self, direction: str) -> dict[str, Any]:
        return {
            "table": self.table,
            "namespace": self.namespace,
            "version": self.version,
            "job": self.job,
            direction: [link.as_dict(direction) for link in self.links],
        }


@dataclass(frozen=True)
class Graph:
    """A table's upstream and downstream tables as one pipeline run saw them (transitively)."""

    table: str
    namespace: str | None
    version: int | None
    airflow_run_id: str | None
    upstream: tuple[Link, ...]
    downstream: tuple[Link, ...]

    @property
    def found(self) -> bool:
        return self.airflow_run_id is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "namespace": self.namespace,
            "version": self.version,
            "run_id": self.airflow_run_id,
            "upstream": [link.as_dict("upstream") for link in self.upstream],
            "downstream": [link.as_dict("downstream") for link in self.downstream],
        }


def lineage_graph(lake: Lake | Path, table: str, *, run_id: str | None = None) -> Graph:
    """Upstream and downstream of ``table`` in one Airflow run (default: the last that touched it).

    Built from COMPLETE events only; when a task ran more than once in the run (a retry), its
    last COMPLETE counts. An output made from some of its job's inputs (its column lineage says
    which, e.g. ``silver.observations`` from ``staging.observations`` only, ``bronze.csv_rows``
    from ``landing/csv`` only) links to those; any other output to all of them. Versions are
    those the jobs read (upstream) and wrote (downstream).

    Upstream crosses runs: a table the run read but did not write (the curation run reading
    ``bronze.fhir_resources`` at version 7) continues in the run that wrote that version (the
    ``ehr_fhir`` run whose ingest committed it; the last writer at or before it), so a silver
    table's lineage reaches the landing folders of the source DAG runs that fed it.
    """
    completed: dict[tuple[str, str], dict[str, Any]] = {}
    for event in read_events(lake):
        if event.get("eventType") == RunState.COMPLETE.value:
            completed[(_airflow_run_id(event) or "", event["job"]["name"])] = event
    touching = [
        e
        for e in completed.values()
        if table in {d["name"] for d in e.get("inputs", []) + e.get("outputs", [])}
        and (run_id is None or _airflow_run_id(e) == run_id)
    ]
    if not touching:
        return Graph(table, None, None, run_id, (), ())
    chosen = run_id or _airflow_run_id(max(touching, key=lambda e: e["eventTime"]))
    # (run, job, input dataset, output dataset): one edge per output and the inputs it was made from
    every = [
        (_airflow_run_id(e) or "", e["job"]["name"], i, o)
        for e in completed.values()
        for o in e.get("outputs", [])
        for i in _made_from(o, e.get("inputs", []))
    ]
    edges = [(job, i, o) for run, job, i, o in every if run == chosen]

    def made(name: str, version: int | None, run: str) -> tuple[str, list[tuple[str, Any, Any]]]:
        """The edges that made ``name`` in ``run``; else those of the run that wrote that version."""
        here = [(job, i, o) for r, job, i, o in every if r == run and o["name"] == name]
        if here or version is None:
            return run, here
        written = [
            (v, r) for r, _, _, o in every
            if o["name"] == name and (v := _dataset_version(o)) is not None and v <= version
        ]
        if not written:
            return run, []
        last, writer = max(written)
        return writer, [
            (job, i, o) for r, job, i, o in every
            if r == writer and o["name"] == name and _dataset_version(o) == last
        ]

    def upstream(name: str, version: int | None, run: str, seen: frozenset[str]) -> tuple[Link, ...]:
        writer, found = made(name, version, run)
        return tuple(
            _link(job, i, upstream(i["name"], _dataset_version(i), writer, seen | {i["name"]}))
            for job, i, _ in found
            if i["name"] not in seen
        )

    def downstream(name: str, seen: frozenset[str]) -> tuple[Link, ...]:
        return tuple(
            _link(job, o, downstream(o["name"], seen | {o["name"]}))
            for job, i, o in edges
            if i["name"] == name and o["name"] not in seen
        )

    own = [o for _, _, o in edges if o["name"] == table] or [
        i for _, i, _ in edges if i["name"] == table
    ]
    own = own or [d for e in touching for d in e.get("inputs", []) if d["name"] == table]
    return Graph(
        table=table,
        namespace=own[-1]["namespace"],
        version=_dataset_version(own[-1]),
        airflow_run_id=chosen,
        upstream=upstream(table, None, chosen or "", frozenset({table})),
        downstream=downstream(table, frozenset({table})),
    )


def _made_from(
    output: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The inputs an output's column lineage names; all inputs when it has none."""
    lineage = (output.get("facets") or {}).get("columnLineage")
    if not lineage:
        return list(inputs)
    used = {
        (f["namespace"], f["name"])
        for column in lineage.get("fields", {}).values()
        for f in column.get("inputFields", [])
    } | {(f["namespace"], f["name"]) for f in lineage.get("dataset") or []}
    return [i for i in inputs if (i["namespace"], i["name"]) in used]


def _link(job: str, dataset: Mapping[str, Any], links: tuple[Link, ...]) -> Link:
    return Link(dataset["name"], dataset["namespace"], _dataset_version(dataset), job, links)


# --- facets from medlake's objects ---------------------------------------------------------------


def schema_fields(
    schema: pa.Schema | pa.StructType,
) -> list[schema_dataset.SchemaDatasetFacetFields]:
    """The Arrow schema as OpenLineage schema fields (Arrow type names; structs nested)."""
    found = []
    for position, f in enumerate(schema, start=1):
        inner: pa.DataType = f.type
        while pa.types.is_list(inner) or pa.types.is_large_list(inner):
            inner = inner.value_type
        nested = schema_fields(inner) if pa.types.is_struct(inner) else []
        found.append(
            schema_dataset.SchemaDatasetFacetFields(
                name=f.name, type=str(f.type), ordinal_position=position, fields=nested or None
            )
        )
    return found


def _assertions(
    result: GateResult,
) -> data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet:
    """One assertion per expectation: row-level rules quarantine rows (warn), table-level ones stop promotion (error).

    Only counts and table-level observations are reported, never row values (they may be PHI).
    """
    assertions = []
    for rule in result.rules:
        if rule.row_level:
            actual: str | None = f"{rule.unexpected_count} of {rule.element_count} rows fail"
        else:
            actual = json.dumps(rule.observed, default=str) if rule.observed is not None else None
        assertions.append(
            data_quality_assertions_dataset.Assertion(
                assertion=rule.expectation,
                success=rule.success,
                column=rule.column,
                severity="warn" if rule.row_level else "error",
                name=f"gate.{rule.rule}",
                description=rule.message or None,
                expected=rule.expected,
                actual=actual,
                params={
                    "unexpected_count": rule.unexpected_count,
                    "element_count": rule.element_count,
                    "row_level": rule.row_level,
                },
            )
        )
    return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
        assertions=assertions, producer=PRODUCER
    )


def _entry_for(table: str, entries: Sequence[Entry]) -> Entry | None:
    """The ledger entry counting this output: same table, or the silver table a staging table holds."""
    layer, _, rest = table.partition(".")
    wanted = {table} | ({f"silver.{rest}"} if layer == "staging" else set())
    matches = [e for e in entries if e.table_name in wanted]
    return matches[-1] if matches else None


def _ledger_dict(entry: Entry) -> dict[str, Any]:
    return {
        "stage": entry.stage,
        "table_name": entry.table_name,
        "records_in": entry.records_in,
        "records_out": entry.records_out,
        "quarantined": entry.quarantined,
        "merged": entry.merged,
        "bronze_only": entry.bronze_only,
        "balanced": entry.balanced,
    }


def _parent(namespace: str, dag_id: str, airflow_run_id: str) -> parent_run.ParentRunFacet:
    """The pipeline run (the DAG run) this stage ran in, also the root of the run hierarchy."""
    pipeline_run = run_uuid(airflow_run_id, dag_id)
    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=pipeline_run),
        job=parent_run.Job(namespace=namespace, name=dag_id),
        root=parent_run.Root(
            run=parent_run.RootRun(runId=pipeline_run),
            job=parent_run.RootJob(namespace=namespace, name=dag_id),
        ),
        producer=PRODUCER,
    )


def _source(namespace: str) -> datasource_dataset.DatasourceDatasetFacet:
    return datasource_dataset.DatasourceDatasetFacet(
        name=namespace, uri=namespace, producer=PRODUCER
    )


def _airflow_run_id(event: Mapping[str, Any]) -> str | None:
    facet = (event.get("run", {}).get("facets") or {}).get("medlake_run") or {}
    value = facet.get("airflow_run_id")
    return str(value) if value is not None else None


def _dataset_version(dataset: Mapping[str, Any]) -> int | None:
    version = (dataset.get("facets") or {}).get("version", {}).get("datasetVersion")
    return int(version) if version is not None else None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _root(lake: Lake | Path) -> Path:
    return lake.root if isinstance(lake, Lake) else Path(lake)


__all__ = [
    "AIRFLOW_EVENTS_FILE",
    "EVENTS_FILE",
    "FHIR_COLUMNS",
    "Graph",
    "LineageConfig",
    "LineageError",
    "Link",
    "StageRun",
    "airflow_events_path",
    "column_lineage",
    "events_path",
    "lake_namespace",
    "lineage_graph",
    "read_events",
    "run_uuid",
    "schema_fields",
    "stage_run",
]


def failure_summary(error: BaseException, *, job: str) -> str:
    """What a FAIL event says about an exception: its type and rule id, never its text or stack.

    Exception messages can quote the values that failed (a name, an MRN, a file name); lineage
    events go to whatever OpenLineage backend is configured, so they carry only what names the
    failure: ``BadDataError in medlake_pipeline.gate (rule gate.ledger)``. The text stays in the
    task log on the service principal's disk.
    """
    rule = getattr(error, "rule_id", None)
    found = f"{type(error).__name__} in {job}"
    return f"{found} (rule {rule})" if isinstance(rule, str) and rule else found
