"""The pipeline's stages as functions the Airflow tasks call: each reads Delta tables, applies
pure transforms and writes Delta tables, records its ledger entries and returns table versions.

ingest  landing/fhir → bronze.fhir_resources            (parse; duplicates merged on _record_hash)
        landing/hl7v2 → bronze.hl7v2_messages          (split into messages; MSH and segments checked)
clean   bronze (this run's rows) → staging.<table>       (validate, flatten, pseudonymize, shift dates;
                                                          standardize codes, units, plausibility)
gate    staging.<table> → silver.<table> | quarantine    (Great Expectations suites decide promotion)
gold    silver → gold.* with dbt                         (jobs.gold)
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Literal

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from medlake import ledger, pending, registry
from medlake.config import AgePolicy, Settings
from medlake.engines import (
    Applied,
    DeltaSource,
    Engine,
    QuarantineSink,
    Target,
    engine_for,
)
from medlake.engines.embedded import EmbeddedEngine
from medlake.expectations.volume import VolumePolicy
from medlake.governance import vault
from medlake.governance.at_rest import lake_for
from medlake.governance.crypto import Keyring
from medlake.governance.lineage import LineageConfig, stage_run
from medlake.jobs.clean import dedup, fhir_steps, terminology
from medlake.jobs.clean.config import OnUnmapped
from medlake.jobs.clean.standardize import STANDARDIZE
from medlake.jobs.ingest import fhir, hl7v2, limits
from medlake.jobs.stage import StageResult, ingest_files
from medlake.jobs.views.coverage import describe as describe_drift
from medlake.jobs.views.tables import ViewTable, load_view_tables, rows_from_bronze
from medlake.keys import audit_key, project_key
from medlake.lake import Lake, conform, writer_properties
from medlake.ledger import Entry
from medlake.quarantine import Split, stamp_run
from medlake.registry import (
    BRONZE_FHIR,
    BRONZE_HL7V2,
    FHIR_SILVER,
    LEDGER,
    PATIENT_ALIASES,
    QUARANTINE,
    SILVER_NOTES,
    SILVER_PATIENT_LINKS,
    SILVER_PATIENTS,
    SILVER_PERSONS,
    staging_name,
)
from medlake.summary import record_engine, write_drift

log = logging.getLogger(__name__)

#: landing sub-folders, one per source kind
SOURCE_KINDS = ("fhir", "hl7v2", "csv", "dicom", "vitals", "vcf")
#: sources that plug in through the stage contract of jobs/stage.py: landing kind → module under
#: medlake.jobs.ingest with ingest(...) and to_staging(...). FHIR and HL7 v2 share silver tables
#: and the patient aliases, so clean() runs them together.
SOURCES: dict[str, str] = {"csv": "csv", "vitals": "vitals", "dicom": "dicom", "vcf": "vcf"}
PARSED_KINDS = ("fhir", "hl7v2", *SOURCES)
SILVER_TABLES = registry.SILVER_TABLES
#: tables every stage writes besides its own, at their version after the stage (lineage outputs)
BOOKKEEPING: dict[str, int | None] = {QUARANTINE.name: None, LEDGER.name: None}
#: tables entity resolution writes in clean (lineage outputs of the clean task, version after it)
RESOLUTION: dict[str, int | None] = {
    registry.PERSON_CROSSWALK.name: None,
    registry.PERSON_EVENTS.name: None,
    staging_name(SILVER_PATIENT_LINKS.name): None,
}


def source_module(kind: str) -> ModuleType:
    """The ingest module of a plug-in source (see :data:`SOURCES`)."""
    return importlib.import_module(f"medlake.jobs.ingest.{SOURCES[kind]}")


def waiting_sources(landing: Path) -> dict[str, int]:
    """Files in landing folders whose parser has not landed yet: reported, left untouched."""
    waiting = {}
    for kind in SOURCE_KINDS:
        if kind in PARSED_KINDS:
            continue
        folder = landing / kind
        if folder.is_dir():
            count = sum(1 for p in folder.rglob("*") if p.is_file())
            if count:
                waiting[kind] = count
    return waiting


def ingest(
    landing: Path,
    lake: Lake,
    *,
    run_id: str,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """Landing FHIR files → bronze, streamed through the engine. Re-ingesting a file adds
    nothing: its records merge as duplicates.

    Each file is read record by record (an ndjson line, a bundle entry) into record batches;
    :func:`fhir.to_bronze` parses each record once and hashes it; the run's rows go to its own
    scratch table (sealed like bronze), then the first copy of each new record hash is appended
    to bronze (a set-based insert). Every ledger count is counted where it happens: records read,
    quarantined, new in bronze, and duplicates (within the run or already in bronze)."""
    now = now or datetime.now(UTC)
    engine = engine or EmbeddedEngine()
    for kind, count in waiting_sources(landing).items():
        log.warning(
            "landing/%s holds %d file(s) with no parser yet; they stay in landing", kind, count
        )
    files = fhir.landing_files(landing / "fhir")
    done = ingest_files(
        lake,
        engine,
        BRONZE_FHIR,
        [(str(p), str(p.relative_to(landing))) for p in files],
        reader=fhir.read_records,
        schema=fhir.RAW_SCHEMA,
        to_bronze=functools.partial(fhir.to_bronze, run_id=run_id, ingested_at=now),
        run_id=run_id,
    )
    entry, new = done.entry, done.new
    ledger.record(lake, run_id, [entry])
    log.info(
        "ingest: %d records from %d files on the %s engine, %d new in bronze, %d duplicates",
        entry.records_in,
        len(files),
        engine.name,
        new.kept,
        new.duplicates,
    )
    return StageResult({BRONZE_FHIR.name: new.target_version}, [entry])


def ingest_hl7v2(
    landing: Path,
    lake: Lake,
    *,
    run_id: str,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> StageResult:
    """Landing HL7 v2 files → bronze, one row per message, streamed through the engine like FHIR
    (:func:`~medlake.jobs.stage.ingest_files`). A message seen before merges as a duplicate."""
    files = hl7v2.landing_files(landing / "hl7v2")
    done = ingest_files(
        lake,
        engine or EmbeddedEngine(),
        BRONZE_HL7V2,
        [(str(p), p.relative_to(landing).as_posix()) for p in files],
        reader=hl7v2.read_records,
        schema=hl7v2.RAW_SCHEMA,
        to_bronze=functools.partial(
            hl7v2.to_bronze, run_id=run_id, ingested_at=now or datetime.now(UTC)
        ),
        run_id=run_id,
    )
    ledger.record(lake, run_id, [done.entry])
    log.info(
        "ingest: %d HL7 v2 messages from %d files, %d new in bronze",
        done.entry.records_in,
        len(files),
        done.entry.records_out,
    )
    return StageResult({BRONZE_HL7V2.name: done.new.target_version}, [done.entry])


def clean(
    lake: Lake,
    *,
    run_id: str,
    key: bytes,
    max_shift_days: int,
    keyring: Keyring | None = None,
    audit_key: bytes | None = None,
    bronze_version: int | None = None,
    hl7v2_version: int | None = None,
    concept_maps_version: int | None = None,
    on_unmapped: dict[str, OnUnmapped] | None = None,
    views: Mapping[str, ViewTable] | None = None,
    text_ages: AgePolicy = "over_89",
    engine: Engine | None = None,
    batches: Mapping[str, Sequence[str]] | None = None,
) -> StageResult:
    """This run's bronze rows → validated, pseudonymized, date-shifted, standardized rows in staging,
    awaiting the gate.

    The FHIR chain streams through the engine, one resource type at a time, each resource parsed
    once: flatten (validate, view, pseudonymize, shift) into the run's scratch, then standardize
    and re-key into ``staging.<table>``; the notes and the types no silver table reads are
    streamed the same way. Only the run's Patients (and HL7 v2 messages) are held in memory, for
    entity resolution.

    With a ``keyring``, the identities stripped from patients go encrypted into the vault, and the
    identities of earlier records whose keyed blocking tokens (``reference.identity_tokens``) equal
    one of this run's are decrypted from it (those only, in memory, audited once as ``vault.link``
    under ``audit_key``) so this run's records link to earlier runs' persons.
    Standardization has its own ledger entry per table, counted in rows (``standardize``: rows in
    = rows out + rows quarantined). ``on_unmapped`` per silver table, default quarantine; the
    concept maps are ``reference.concept_maps`` (at ``concept_maps_version``).

    FHIR resources and HL7 v2 messages fill the same tables, FHIR rows first (the gate keeps the
    first row of a key). A patient with a medical record number is one person_key in both (the
    MRN's key): FHIR resources reach it through their Patient's MRN, looked up in the index
    ``reference.patient_aliases`` every run keeps up to date. The silver entries count FHIR
    resources plus HL7 segments.

    Entity resolution (``jobs/clean/dedup.py``) then links this run's patient records into persons
    (same MRN, or a Splink match: a second registration under another MRN), keeps the crosswalk
    ``reference.person_crosswalk`` stable, and every staging row takes its person's key, its
    dates re-shifted by that person's offset; the links go to ``staging.patient_links``, and
    the survivorship of every person this run touched (one row per person) to ``staging.persons``.
    Free text is de-identified where it is parsed, in the engine's worker processes.
    ``batches``: per bronze table, the ingest runs whose rows this run curates (its own and any
    left pending by a run that did not finish, :func:`medlake.pending.take`); default its own.
    """
    engine = engine or EmbeddedEngine()
    batches = batches or {}
    chain = FhirChain(
        lake,
        engine,
        run_id=run_id,
        version=bronze_version,
        batches=pending.batches_of(batches, BRONZE_FHIR.name, run_id),
    )
    patients_bronze = chain.read_type("Patient")
    aliases = update_patient_aliases(lake, patients_bronze, key=key, run_id=run_id)
    messages = lake.read(
        BRONZE_HL7V2.name,
        version=hl7v2_version,
        where={"_run_id": pending.batches_of(batches, BRONZE_HL7V2.name, run_id)},
    )
    parsed = hl7v2.parse_messages(messages)  # each message parsed once, read by every step
    from_hl7 = hl7v2.silver_from_bronze(parsed, key=key, max_shift_days=max_shift_days)
    concept_map, maps_version = terminology.concept_maps(lake, version=concept_maps_version)
    log.info("clean: concept maps %s@%d", terminology.CONCEPT_MAPS.name, maps_version)
    identities = fhir.patient_identities(patients_bronze, key=key, aliases=aliases)
    identities += hl7v2.patient_identities(parsed, key=key)
    entries: list[Entry] = []
    versions: dict[str, int | None] = {}
    drift: dict[str, int] = {}
    # the free text of every resource parsed below, de-identified there (a side output of the
    # step that parses it), gathered in the run's scratch and re-keyed once persons are resolved
    note_options = fhir.NoteOptions(
        key=key,
        max_shift_days=max_shift_days,
        aliases=aliases,
        deny_lists={
            i["person_key"]: text_deid_terms(i)
            for i in identities
            if i["source_system"] == fhir.SOURCE_SYSTEM
        },
        ages=text_ages,
    )
    lake.drop_scratch_table(SILVER_NOTES.name, run_id=run_id)  # a retried run starts it afresh
    found_notes = NoteCount()

    # flatten every silver type into the run's scratch (FHIR rows, then HL7 v2's)
    flat: dict[str, str] = {}
    for resource_type, spec in FHIR_SILVER.items():
        flat[resource_type] = lake.scratch_uri(spec.name, run_id=run_id)
        with_notes = resource_type in fhir.NOTE_SOURCES
        applied = chain.step(
            functools.partial(
                fhir.flatten_resources,
                resource_type=resource_type,
                key=key,
                max_shift_days=max_shift_days,
                aliases=aliases,
                notes=note_options if with_notes else None,
            ),
            types=[resource_type],
            target=Target(flat[resource_type], spec.schema, partition_by=spec.partition_by),
            sides=found_notes.sides(lake, run_id=run_id) if with_notes else None,
        )
        found_notes.add(applied)
        for name, count in applied.counters.items():
            drift[name] = drift.get(name, 0) + count
        hl7 = from_hl7[spec.name]
        produced = distinct_count(flat[resource_type], "_record_hash")
        if hl7.split.good.num_rows:
            lake_write_uri(flat[resource_type], hl7.split.good, spec)
        lake.insert_new(QUARANTINE.name, stamp_run(hl7.split.quarantined, run_id))
        entries.append(
            Entry(
                stage="silver",
                table_name=spec.name,
                records_in=applied.rows_in + hl7.records_in,
                records_out=produced + hl7.records_out,
                quarantined=applied.quarantined_by.get(spec.name, 0)
                + hl7.split.quarantined.num_rows,
                merged=hl7.merged,
            )
        )
    unread = fhir.drift_of(drift)  # new extensions, unexpected elements: kept, reported
    for line in describe_drift(unread):
        log.info("clean: schema drift: %s", line)
    write_drift(lake, run_id, unread)
    views = views or {}
    viewed = tuple(t.view.resource for t in views.values())
    rest = chain.step(  # types no silver table reads (extra views' types: their own entries)
        functools.partial(fhir_steps.bronze_only, viewed=viewed, notes=note_options),
        types=[],
        exclude=sorted({*FHIR_SILVER, *viewed}),
        target=Target(lake.scratch_uri("bronze_only", run_id=run_id), fhir_steps.BRONZE_ONLY_SCHEMA),
        sides=found_notes.sides(lake, run_id=run_id),
    )
    found_notes.add(rest)
    noted_views = sorted(set(viewed) & set(fhir.NOTE_SOURCES) - set(FHIR_SILVER))
    if noted_views:  # an extra view's type with free text: its notes too (the view counts it)
        found_notes.add(
            chain.step(
                functools.partial(fhir_steps.notes_only, notes=note_options),
                types=noted_views,
                target=Target(
                    lake.scratch_uri("notes_only", run_id=run_id), fhir_steps.BRONZE_ONLY_SCHEMA
                ),
                sides=found_notes.sides(lake, run_id=run_id),
            )
        )
    entries.append(
        Entry(
            stage="silver",
            table_name=BRONZE_FHIR.name,
            records_in=rest.rows_in,
            quarantined=rest.quarantined_by.get(BRONZE_FHIR.name, 0),
            bronze_only=rest.good,
        )
    )

    # entity resolution over this run's patient rows (few: held in memory)
    patient_rows = DeltaTable(flat["Patient"]).to_pyarrow_dataset().to_table(use_threads=False)
    prior = (  # only earlier records sharing a keyed blocking token are decrypted
        dedup.earlier_identities(
            lake, identities, key=key, keyring=keyring, audit_key=audit_key, run_id=run_id
        )
        if keyring is not None and audit_key is not None and patient_rows.num_rows
        else []  # no patient record in this run: nothing to link, nothing decrypted
    )
    resolved = dedup.resolve(
        lake,
        identities,
        patient_rows,
        run_id=run_id,
        now=datetime.now(UTC),
        prior=prior,
        options=dedup.link_options(Settings().identity),
        spark=dedup.splink_session(engine),  # Splink's Spark backend when the engine is Spark
    )
    if keyring is not None:  # the vault keys identities by the resolved person
        person = resolved.person_of
        stored = [
            {**i, "person_key": person.get(i["person_key"], i["person_key"])} for i in identities
        ]
        vault.store(lake, stored, keyring=keyring)
        if audit_key is not None:  # earlier records of a merged or split person follow it
            dedup.follow_in_vault(lake, keyring=keyring, audit_key=audit_key, run_id=run_id)

    # standardize and re-key every table into staging
    for resource_type, spec in FHIR_SILVER.items():
        started = time.perf_counter()
        staged = engine.batch_local(
            functools.partial(
                fhir_steps.standardize_and_remap,
                resource_type=resource_type,
                concept_map=concept_map,
                on_unmapped=(on_unmapped or {}).get(spec.name, "quarantine"),
                person_of=resolved.person_of,
                key=key,
                max_shift_days=max_shift_days,
            ),
            source=DeltaSource(flat[resource_type]),
            target=Target(
                lake.uri(staging_name(spec.name)), spec.schema, partition_by=spec.partition_by
            ),
            quarantine=chain.quarantine,
        )
        versions[staging_name(spec.name)] = staged.target_version
        log.info(
            "clean: standardize and re-key %s: %d rows in, %d out in %.1f s",
            resource_type,
            staged.rows_in,
            staged.good,
            time.perf_counter() - started,
        )
        if resource_type in STANDARDIZE:
            entries.append(
                Entry(
                    stage="standardize",
                    table_name=spec.name,
                    records_in=staged.rows_in,
                    records_out=staged.good,
                    quarantined=staged.quarantined,
                )
            )
        if spec is SILVER_PATIENTS:  # survivorship: one row per person touched in this run
            rows = lake.read(staging_name(spec.name))
            persons = dedup.persons(
                lake, rows, run_id=run_id, key=key, max_shift_days=max_shift_days
            )
            versions[staging_name(SILVER_PERSONS.name)] = lake.write(
                staging_name(SILVER_PERSONS.name), persons, mode="overwrite", spec=SILVER_PERSONS
            )

    # free text → staging.notes: the FHIR notes the steps above de-identified, re-keyed to their
    # resolved persons, then HL7 v2 NTE / OBX text appended
    notes = engine.batch_local(
        functools.partial(
            fhir_steps.remap_notes,
            person_of=resolved.person_of,
            key=key,
            max_shift_days=max_shift_days,
        ),
        source=DeltaSource(found_notes.uri(lake, run_id=run_id)),
        target=Target(lake.uri(staging_name(SILVER_NOTES.name)), SILVER_NOTES.schema),
        quarantine=chain.quarantine,
    )
    hl7_notes = hl7v2.notes_from_bronze(
        parsed, key=key, max_shift_days=max_shift_days, workers=1, ages=text_ages
    )
    lake.insert_new(QUARANTINE.name, stamp_run(hl7_notes.quarantined, run_id))
    hl7_rows = dedup.remap(
        hl7_notes.good, resolved.person_of, key=key, max_shift_days=max_shift_days
    )
    versions[staging_name(SILVER_NOTES.name)] = (
        lake.write(staging_name(SILVER_NOTES.name), hl7_rows, mode="append", spec=SILVER_NOTES)
        if hl7_rows.num_rows
        else notes.target_version
    )
    entries.append(  # records in: FHIR free-text fields + HL7 NTE / OBX text segments
        Entry(
            stage="deid_text",
            table_name=SILVER_NOTES.name,
            records_in=found_notes.good
            + found_notes.quarantined
            + hl7_notes.good.num_rows
            + hl7_notes.quarantined.num_rows,
            records_out=notes.good + hl7_notes.good.num_rows,
            quarantined=found_notes.quarantined + hl7_notes.quarantined.num_rows,
        )
    )
    entries.append(resolved.entry)
    versions[staging_name(SILVER_PATIENT_LINKS.name)] = lake.write(
        staging_name(SILVER_PATIENT_LINKS.name),
        resolved.links,
        mode="overwrite",
        spec=SILVER_PATIENT_LINKS,
    )
    staged_views = stage_view_tables(
        lake,
        chain,
        views,
        run_id=run_id,
        key=key,
        max_shift_days=max_shift_days,
        aliases=aliases,
        person_of=resolved.person_of,
    )
    versions.update(staged_views.versions)
    entries += staged_views.entries
    only = hl7v2.bronze_only_from_bronze(messages)  # messages no silver table reads (ACK, …)
    entries.append(
        Entry(
            stage="silver",
            table_name=BRONZE_HL7V2.name,
            records_in=only.good.num_rows,
            bronze_only=only.good.num_rows,
        )
    )
    lake.drop_scratch(run_id=run_id)
    ledger.record(lake, run_id, entries)
    return StageResult(versions, entries)


@dataclass(frozen=True)
class FhirChain:
    """Where the FHIR chain of a run reads (its bronze rows at the pinned version) and sends what
    it refuses (the quarantine, stamped with the run)."""

    lake: Lake
    engine: Engine
    run_id: str
    version: int | None = None
    #: the ingest runs whose rows the chain reads (default: this run's)
    batches: Sequence[str] = ()

    def source(self, types: Sequence[str], *, exclude: Sequence[str] = ()) -> DeltaSource:
        where: dict[str, Sequence[str]] = {"_run_id": list(self.batches or [self.run_id])}
        if types:
            where["resource_type"] = list(types)
        return DeltaSource(
            self.lake.uri(BRONZE_FHIR.name),
            version=self.version,
            where=where,
            where_not={"resource_type": list(exclude)} if exclude else {},
            decode=self.lake.decoder(BRONZE_FHIR.name),
        )

    @property
    def quarantine(self) -> QuarantineSink:
        return QuarantineSink(
            self.lake.uri(QUARANTINE.name),
            run_id=self.run_id,
            encode=self.lake.encoder(QUARANTINE.name),
        )

    def step(
        self,
        fn: Callable[[pa.RecordBatch], Split],
        *,
        types: Sequence[str],
        target: Target,
        exclude: Sequence[str] = (),
        sides: Mapping[str, Target] | None = None,
    ) -> Applied:
        """A batch-local step over this run's resources of ``types`` (all but ``exclude``)."""
        if not self.lake.exists(BRONZE_FHIR.name):
            self.lake.ensure(BRONZE_FHIR.name)
        started = time.perf_counter()
        applied = self.engine.batch_local(
            fn,
            source=self.source(types, exclude=exclude),
            target=target,
            quarantine=self.quarantine,
            sides=sides,
        )
        log.info(
            "clean: %s over %s: %d rows in, %d out, %d quarantined in %.1f s (%s engine)",
            _step_name(fn),
            ",".join(types) or "other types",
            applied.rows_in,
            applied.good,
            applied.quarantined,
            time.perf_counter() - started,
            self.engine.name,
        )
        return applied

    def read_type(self, resource_type: str) -> pa.Table:
        """This run's bronze rows of one (small) type, in memory: the Patients."""
        return self.lake.read(
            BRONZE_FHIR.name,
            version=self.version,
            where={"_run_id": list(self.batches or [self.run_id]), "resource_type": resource_type},
        )


@dataclass
class NoteCount:
    """The FHIR notes the clean steps found while parsing (their side output ``notes``, appended
    to one scratch table of the run), counted as the engine wrote and refused them."""

    good: int = 0
    quarantined: int = 0

    @staticmethod
    def uri(lake: Lake, *, run_id: str) -> str:
        return lake.scratch_uri(SILVER_NOTES.name, run_id=run_id)

    def sides(self, lake: Lake, *, run_id: str) -> dict[str, Target]:
        return {
            fhir.NOTES_SIDE: Target(self.uri(lake, run_id=run_id), SILVER_NOTES.schema, mode="append")
        }

    def add(self, applied: Applied) -> None:
        self.good += applied.sides.get(fhir.NOTES_SIDE, 0)
        self.quarantined += applied.quarantined_by.get(SILVER_NOTES.name, 0)


def _step_name(fn: Callable[..., object]) -> str:
    inner = getattr(fn, "fn", fn)  # a limits.Bound
    inner = getattr(inner, "func", inner)  # a functools.partial
    return str(getattr(inner, "__name__", type(inner).__name__))


def update_patient_aliases(
    lake: Lake, patients: pa.Table, *, key: bytes, run_id: str
) -> dict[str, str]:
    """This run's Patients' MRN person keys merged into ``reference.patient_aliases``; the whole
    index (Patient id → person key) returned. Its size is the number of patients, not of
    resources, and no Patient of an earlier run is parsed again."""
    found = fhir.patient_aliases(patients, key=key)
    if found:
        lake.upsert(
            PATIENT_ALIASES.name,
            pa.table(
                {
                    "resource_id": list(found),
                    "person_key": list(found.values()),
                    "_run_id": [run_id] * len(found),
                },
                schema=PATIENT_ALIASES.schema,
            ),
        )
    index = lake.read(PATIENT_ALIASES.name, columns=["resource_id", "person_key"])
    return dict(
        zip(
            index.column("resource_id").to_pylist(),
            index.column("person_key").to_pylist(),
            strict=True,
        )
    )


def text_deid_terms(identity: Mapping[str, object]) -> list[str]:
    """The deny list of one patient's notes (names, address lines, phones, identifiers)."""
    from medlake.governance.text_deid import record_deny_list

    terms: list[str] = record_deny_list(dict(identity))
    return terms


def distinct_count(uri: str, column: str) -> int:
    """How many distinct values ``column`` of a Delta table holds (counted by DuckDB)."""
    import duckdb

    dataset = DeltaTable(uri).to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("t", dataset)
    rows = con.execute(f'SELECT count(DISTINCT "{column}") FROM t').fetchall()
    con.close()
    return int(rows[0][0])


def lake_write_uri(uri: str, rows: pa.Table, spec: registry.TableSpec) -> None:
    """Append rows conformed to ``spec`` to the Delta table at ``uri`` (a scratch table)."""
    write_deltalake(uri, conform(rows, spec.schema), mode="append", writer_properties=writer_properties())


def extra_view_tables(settings: Settings) -> dict[str, ViewTable]:
    """The extra silver tables of the configured views folder (``MEDLAKE__VIEWS__EXTRA_DIR``),
    registered for this process so the lake, the gate and the report know them."""
    folder = settings.views.extra_dir
    if folder is None:
        return {}
    tables: dict[str, ViewTable] = load_view_tables(Path(folder), reserved=set(registry.BUILTIN_TABLES))
    for table in tables.values():
        registry.register(table.spec)
    return tables


def stage_view_tables(
    lake: Lake,
    chain: FhirChain,
    tables: Mapping[str, ViewTable],
    *,
    run_id: str,
    key: bytes,
    max_shift_days: int,
    aliases: Mapping[str, str],
    person_of: Mapping[str, str],
) -> StageResult:
    """This run's FHIR resources of each extra view's type → ``staging.<view>``: a hospital adds
    a silver table by adding a ViewDefinition file (jobs/views/tables.py de-identifies its
    columns); rows are re-keyed to the resolved persons like every staging row.

    Ledger per table: the resources of the view's type in, those giving rows out, those refused
    quarantined, and those the view selects no row from (its ``where``) kept in bronze only.
    """
    entries: list[Entry] = []
    versions: dict[str, int | None] = {}
    for table in tables.values():
        bronze = chain.read_type(table.view.resource)
        split = rows_from_bronze(
            bronze, table, key=key, max_shift_days=max_shift_days, aliases=dict(aliases)
        )
        lake.insert_new(QUARANTINE.name, stamp_run(split.quarantined, run_id))
        produced = set(split.good.column("_record_hash").to_pylist())
        refused = set(split.quarantined.column("record_hash").to_pylist())
        # counted: the resources the view selects no row from (its where), neither out nor refused
        unselected = set(bronze.column("_record_hash").to_pylist()) - produced - refused
        entries.append(
            Entry(
                stage="silver",
                table_name=table.spec.name,
                records_in=bronze.num_rows,
                records_out=len(produced),
                quarantined=len(refused),
                bronze_only=len(unselected),
            )
        )
        rows = dedup.remap(split.good, person_of, key=key, max_shift_days=max_shift_days)
        name = staging_name(table.spec.name)
        versions[name] = lake.write(name, rows, mode="overwrite", spec=table.spec)
    return StageResult(versions, entries)


def rekey_sources(
    lake: Lake, sources: list[StageResult], *, key: bytes, max_shift_days: int
) -> dict[str, int | None]:
    """The plug-in sources' staging rows with their ``person_key`` resolved by the crosswalk.

    Each source keys a patient by the MRN's key, as ingest of FHIR and HL7 v2 does; when entity
    resolution merged that key into another person (``reference.person_crosswalk``), the rows
    move to the surviving key and their dates to its offset (:func:`dedup.remap`), so every
    source of one person shares one key and one date shift. Returns the tables rewritten.
    """
    from medlake.jobs.clean import dedup
    from medlake.registry import PERSON_CROSSWALK

    if not lake.exists(PERSON_CROSSWALK.name):
        return {}
    crosswalk = lake.read(PERSON_CROSSWALK.name, columns=["prelink_key", "person_key"])
    person_of = dict(
        zip(
            crosswalk.column("prelink_key").to_pylist(),
            crosswalk.column("person_key").to_pylist(),
            strict=True,
        )
    )
    written: dict[str, int | None] = {}
    staged = sorted({n for r in sources for n in r.versions if n.startswith("staging.")})
    for name in staged:
        rows = lake.read(name)
        moved = dedup.remap(rows, person_of, key=key, max_shift_days=max_shift_days)
        if moved is not rows:
            written[name] = lake.write(name, moved, mode="overwrite")
    return written


def rekey_silver(lake: Lake, *, run_id: str, key: bytes, max_shift_days: int) -> StageResult:
    """Silver rows of earlier runs still under a person a merge absorbed move to the surviving
    person (key and date shift), one Delta transaction per table (:func:`dedup.rekey`); a
    ``rekey`` ledger entry per table rewritten and ``rekey`` events in reference.person_events.
    Runs after promotion, so the gate's rows are final; idempotent."""
    from medlake.registry import PERSON_EVENTS

    done = dedup.rekey(
        lake,
        run_id=run_id,
        key=key,
        max_shift_days=max_shift_days,
        tables=SILVER_TABLES,
        now=datetime.now(UTC),
    )
    if not done.entries:
        return StageResult({}, [])
    entries = ledger.record(lake, run_id, done.entries)
    return StageResult(
        {**done.versions, PERSON_EVENTS.name: lake.version(PERSON_EVENTS.name)}, entries
    )


def release_resolved(lake: Lake, *, run_id: str) -> list[Entry]:
    """Records a data steward accepted or corrected since the last run re-enter silver now."""
    from medlake.jobs import review

    tables, entries = review.release(lake, run_id=run_id)
    for name, rows in tables.items():
        lake.upsert(name, rows)
    review.mark_released(lake, run_id=run_id)
    return ledger.record(lake, run_id, entries) if entries else []


# ---------------------------------------------------------------------------------------------
# task entry points: what the DAG's tasks call, with plain arguments from the run's params.
# Each runs inside a lineage stage_run: START before it reads, COMPLETE with the versions it
# wrote, FAIL with the error (re-raised). A lineage event that cannot be written fails the task;
# the stages are idempotent, so the retry redoes the work and writes the events again.


def lineage_config(settings: Settings) -> LineageConfig:
    """Where the stages' OpenLineage events go: the lake's file, and a backend when one is configured."""
    return LineageConfig(
        url=settings.lineage.url,
        api_key=os.environ.get(settings.lineage.api_key_env),
        job_namespace=settings.lineage.namespace,
    )


def lineage_job(settings: Settings, task_id: str) -> str:
    """The lineage job of a pipeline DAG task, named like Airflow names it: ``medlake_pipeline.ingest``."""
    return f"{settings.airflow.pipeline_dag_id}.{task_id}"


def task_ingest(
    landing: str, lake: str, *, run_id: str, engine: str | None = None
) -> dict[str, object]:
    """``engine``: the run's choice (``medlake run --engine``), else ``MEDLAKE__ENGINE``."""
    settings = Settings()
    runner = engine_for(settings, kind=engine or None)
    target = lake_for(settings, Path(lake)).on(runner.writer)  # its writes commit on the engine
    record_engine(target, run_id, "ingest", runner.name)
    with stage_run(
        target,
        job=lineage_job(settings, "ingest"),
        run_id=run_id,
        sources=[Path(landing) / kind for kind in ("fhir", "hl7v2", *SOURCES)],
        config=lineage_config(settings),
        engine=runner.name,
    ) as run:
        now = datetime.now(UTC)
        with limits.using(settings.limits):  # MEDLAKE__LIMITS__*: what one record may cost
            stages = [
                ingest(Path(landing), target, run_id=run_id, now=now, engine=runner),
                ingest_hl7v2(Path(landing), target, run_id=run_id, now=now, engine=runner),
                *(
                    source_module(kind).ingest(
                        Path(landing), target, run_id=run_id, now=now, engine=runner
                    )
                    for kind in SOURCES
                ),
            ]
        runner.close()
        result = StageResult.merge(stages)
        run.complete(outputs={**result.versions, **BOOKKEEPING}, ledger=result.entries)
    xcom: dict[str, object] = result.as_xcom()  # typed here: mypy sees medlake.jobs as untyped
    return xcom


def task_ingest_source(
    kind: str, landing: str, lake: str, *, run_id: str, dag_id: str, engine: str | None = None,
    lineage_landing: str | None = None,
) -> dict[str, object]:
    """One source DAG's ingest: ``landing/<kind>/`` → its bronze tables, a batch under ``run_id``
    that stays pending until a curation run's gate carries it (:mod:`medlake.pending`).
    ``lineage_landing``: the landing folder the lineage names, when ``landing`` is a batch's
    folder of links to some of its files (medlake/sources.py)."""
    settings = Settings()
    runner = engine_for(settings, kind=engine or None)
    target = lake_for(settings, Path(lake)).on(runner.writer)
    with stage_run(
        target,
        job=f"{dag_id}.ingest",
        run_id=run_id,
        sources=[Path(lineage_landing or landing) / kind],
        config=lineage_config(settings),
        engine=runner.name,
    ) as run:
        now = datetime.now(UTC)
        result: StageResult
        with limits.using(settings.limits):
            if kind == "fhir":
                result = ingest(Path(landing), target, run_id=run_id, now=now, engine=runner)
            elif kind == "hl7v2":
                result = ingest_hl7v2(
                    Path(landing), target, run_id=run_id, now=now, engine=runner
                )
            else:
                result = source_module(kind).ingest(
                    Path(landing), target, run_id=run_id, now=now, engine=runner
                )
        runner.close()
        run.complete(outputs={**result.versions, **BOOKKEEPING}, ledger=result.entries)
    xcom: dict[str, object] = result.as_xcom()
    return xcom


def task_clean(
    lake: str,
    *,
    run_id: str,
    bronze_version: int | None,
    hl7v2_version: int | None = None,
    versions: dict[str, int | None] | None = None,
    engine: str | None = None,
    trigger: dict[str, int] | None = None,
) -> dict[str, object]:
    """``versions``: the bronze versions ingest wrote (its XCom), read by the plug-in sources;
    ``engine``: the run's choice (``medlake run --engine``), else ``MEDLAKE__ENGINE``;
    ``trigger``: the bronze versions a curation run's asset events name: only those tables are
    read, at those versions, and only their batches committed by then (returned as ``read``)."""
    settings = Settings()
    if trigger is not None:
        versions = {**trigger, **(versions or {})}
        bronze_version = versions.get(BRONZE_FHIR.name) if bronze_version is None else bronze_version
        hl7v2_version = versions.get(BRONZE_HL7V2.name) if hl7v2_version is None else hl7v2_version
    versions = versions or {}
    runner = engine_for(settings, kind=engine or None)
    target = lake_for(settings, Path(lake)).on(runner.writer)
    record_engine(target, run_id, "clean", runner.name)
    with stage_run(
        target,
        job=lineage_job(settings, "clean"),
        run_id=run_id,
        inputs={  # every bronze table a pending batch may be in (the trigger's), at the version given or now
            **{name: target.version(name) for name in pending.BATCHED if trigger is None},
            **{k: v for k, v in versions.items() if v is not None},
            **({BRONZE_FHIR.name: bronze_version} if bronze_version is not None else {}),
            **({BRONZE_HL7V2.name: hl7v2_version} if hl7v2_version is not None else {}),
        },
        config=lineage_config(settings),
        engine=runner.name,
    ) as run:
        key, max_shift_days = project_key(settings), settings.deid.date_shift_max_days
        extra = extra_view_tables(settings)
        taken = pending.take(target, run_id=run_id, versions=trigger)  # its own and any left pending
        result = clean(
            target,
            run_id=run_id,
            key=key,
            max_shift_days=max_shift_days,
            keyring=vault.vault_keyring(settings, create=settings.env == "local"),
            audit_key=audit_key(settings),
            bronze_version=bronze_version,
            hl7v2_version=hl7v2_version,
            views=extra,
            text_ages=settings.deid.text_ages,
            engine=runner,
            batches=taken,
        )
        # after clean(): a source feeding a table FHIR and HL7 v2 fill appends to its staging rows
        sources = [
            source_module(kind).to_staging(
                target,
                run_id=run_id,
                key=key,
                max_shift_days=max_shift_days,
                versions=versions,
                bronze_batches=taken,
                engine=runner,
            )
            for kind in SOURCES
        ]
        runner.close()
        rekeyed = rekey_sources(target, sources, key=key, max_shift_days=max_shift_days)
        result = StageResult.merge([result, *sources, StageResult(rekeyed, [])])
        run.complete(
            outputs={**result.versions, **BOOKKEEPING, **RESOLUTION, "vault": None},
            ledger=result.entries,
        )
    xcom: dict[str, object] = result.as_xcom()  # typed here: mypy sees medlake.jobs as untyped
    return {**xcom, "read": {"versions": dict(run.inputs), "batches": taken}}


def volume_policy(settings: Settings) -> VolumePolicy:
    """Where the gate blocks on delivery volume, and how it learns bands (``MEDLAKE__GATE__*``)."""
    return VolumePolicy(
        block=VolumePolicy.parse_block(settings.gate.volume_block),
        min_history=settings.gate.volume_min_history,
        tolerance=settings.gate.volume_tolerance,
    )


def task_gate(lake: str, *, run_id: str, engine: str | None = None) -> dict[str, object]:
    """``engine``: the run's choice, else ``MEDLAKE__ENGINE``. The suites run in this process
    (Great Expectations over a chunk of one table's rows at a time); what the gate writes
    (silver and the quarantine by the engine's set-based insert, the ledger) commits on the
    engine."""
    from medlake.expectations import data_docs
    from medlake.expectations.gate import GateResult, run_gate

    settings = Settings()
    runner = engine_for(settings, kind=engine or None)
    target = lake_for(settings, Path(lake)).on(runner.writer)
    record_engine(target, run_id, "gate", runner.name)
    tables = (*SILVER_TABLES, *(t.spec.name for t in extra_view_tables(settings).values()))
    staged = {staging_name(name): target.version(staging_name(name)) for name in tables}
    with stage_run(
        target,
        job=lineage_job(settings, "gate"),
        run_id=run_id,
        inputs=staged,
        config=lineage_config(settings),
        engine=runner.name,
    ) as run:
        results: list[GateResult] = []
        try:
            entries = ledger.record(
                target,
                run_id,
                run_gate(
                    target,
                    run_id=run_id,
                    tables=tables,
                    results=results,
                    volume_policy=volume_policy(settings),
                    engine=runner,
                ),
            )
            pending.mark_curated(target, run_id=run_id)  # promoted: its batches are past bronze
        finally:  # the quality results go on FAIL too, when a table-level rule refused promotion
            run.add_quality({staging_name(r.table_name): r for r in results})
            if data_docs.index_path(target).is_file():
                log.info("gate: Data Docs at %s", data_docs.index_path(target))
        entries += release_resolved(target, run_id=run_id)
        rekeyed = rekey_silver(
            target,
            run_id=run_id,
            key=project_key(settings),
            max_shift_days=settings.deid.date_shift_max_days,
        )
        # before the gate's: an output's ledger facet is the last entry of its table (the gate's)
        entries = [*rekeyed.entries, *entries]
        result = StageResult(
            {name: target.version(name) for name in tables} | rekeyed.versions, entries
        )
        run.complete(outputs={**result.versions, **BOOKKEEPING}, ledger=entries)
    xcom: dict[str, object] = result.as_xcom()  # typed here: mypy sees medlake.jobs as untyped
    return xcom


def dbt_target(settings: Settings, engine: str | None = None) -> Literal["duckdb", "spark"]:
    """The dbt target gold is built with: ``MEDLAKE__DBT__TARGET`` when it is set, else the one
    of the run's engine (``spark``: dbt-spark in the engine's session; ``embedded``: DuckDB)."""
    if "target" in settings.dbt.model_fields_set:
        return settings.dbt.target
    return "spark" if (engine or settings.engine) == "spark" else "duckdb"


def task_gold(lake: str, *, run_id: str, engine: str | None = None) -> dict[str, object]:
    """``engine``: the run's choice (``medlake run --engine``), else ``MEDLAKE__ENGINE``; it picks
    the dbt target unless ``MEDLAKE__DBT__TARGET`` says otherwise (:func:`dbt_target`)."""
    from medlake.jobs.gold import SILVER_SOURCES, build_gold

    settings = Settings()
    target = lake_for(settings, Path(lake))
    built_with = dbt_target(settings, engine)
    record_engine(target, run_id, "gold", "spark" if built_with == "spark" else "embedded")
    with stage_run(
        target,
        job=lineage_job(settings, "dbt_gold"),
        run_id=run_id,
        inputs=SILVER_SOURCES,
        config=lineage_config(settings),
    ) as run:
        # the marts are validated with their gold suites before they are written: a gold row
        # breaking its suite means the mart SQL is wrong, GateFailed fails the task (FAIL event)
        result = build_gold(
            Path(lake),
            run_id=run_id,
            project_dir=settings.dbt.project_dir,
            target=built_with,
        )
        run.complete(
            outputs=result.versions,
            inputs=dict(result.silver_versions),
            row_counts={t.name: t.rows for t in result.tables},
            ledger=list(result.entries),
        )
    return {"versions": result.versions}


def task_summary(lake: str, *, run_id: str, actor: str = "airflow") -> dict[str, object]:
    from medlake.governance import audit
    from medlake.summary import summarize, write_summary

    settings = Settings()
    target = lake_for(settings, Path(lake))
    with stage_run(
        target,
        job=lineage_job(settings, "summary"),
        run_id=run_id,
        inputs=[LEDGER.name, QUARANTINE.name],
        config=lineage_config(settings),
    ):
        summary = summarize(target, run_id=run_id)
        path = write_summary(target, summary)
        log.info("run summary written to %s", path)
        audit.append(
            target,
            key=audit_key(settings),
            actor=actor,
            role="data_engineer",
            action="pipeline.run",
            object="medlake_pipeline",
            run_id=run_id,
            purpose="operations",
            details={
                "ledger_balanced": summary["ledger_balanced"],
                "tables": {t["table"]: t["version"] for t in summary["tables"]},
                "quarantined": sum(q["count"] for q in summary["quarantine"]),
            },
        )
        ledger.check(
            Entry(**{k: v for k, v in row.items() if k in Entry.__dataclass_fields__})
            for row in summary["ledger"]
        )
    return {"summary": str(path)}
