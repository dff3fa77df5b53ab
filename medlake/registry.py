"""The table registry: every bronze and silver table, its Arrow schema, key and PHI columns.

A table is named ``<layer>.<table>`` and lives at ``<lake>/<layer>/<table>/`` as a Delta table;
the quarantine and the ledger live at ``<lake>/quarantine/`` and ``<lake>/ledger/``.
The same name is the Airflow asset, the Delta location and the OpenLineage dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

#: what terminology mapping did to a row (jobs/clean/terminology.py): 'standard' | 'mapped' |
#: 'unmapped' | 'invalid', and '<system>|<code>' as received when a concept map supplied the code
MAPPING_COLUMNS = [
    pa.field("mapping_status", pa.string()),
    pa.field("_mapped_from", pa.string()),
]

#: lineage columns every silver row carries back to its bronze record
SILVER_LINEAGE = [
    pa.field("_record_hash", pa.string(), nullable=False),
    pa.field("_source_kind", pa.string(), nullable=False),
    pa.field("_run_id", pa.string(), nullable=False),
]


@dataclass(frozen=True)
class TableSpec:
    """One registered table."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    description: str
    phi_columns: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = field(default=())

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else self.name

    @property
    def relpath(self) -> str:
        """Path below the lake root."""
        return self.name.replace(".", "/")


#: on every silver row keyed by person (rekeyable=True: FHIR, HL7 v2, vitals, imaging, variants): the
#: person key ingest gave the row (its MRN's key, else its source key), kept when entity resolution
#: moved the row to another person; null while the row is under that key. An unmerge
#: (jobs/clean/identity.py split) moves rows back by it.
PRELINK_FIELD = pa.field("_prelink_key", pa.string())


def _schema(*fields: pa.Field, lineage: bool = True, rekeyable: bool = False) -> pa.Schema:
    names = {f.name for f in fields}
    prelink = [PRELINK_FIELD] if lineage and rekeyable and "person_key" in names else []
    return pa.schema(list(fields) + (SILVER_LINEAGE if lineage else []) + prelink)


_STRING = pa.string()


def _f(name: str, type_: pa.DataType = _STRING, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


BRONZE_FHIR = TableSpec(
    name="bronze.fhir_resources",
    schema=pa.schema(
        [
            _f("resource_type", nullable=False),
            _f("resource_id"),
            _f("raw", pa.large_string(), nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description="FHIR R4 resources as received: one row per resource, the JSON kept verbatim.",
    phi_columns=("raw", "_source_file"),
)

BRONZE_HL7V2 = TableSpec(
    name="bronze.hl7v2_messages",
    schema=pa.schema(
        [
            _f("message_type", nullable=False),
            _f("message_control_id", nullable=False),
            _f("version", nullable=False),
            _f("sending_facility"),
            _f("raw", pa.large_string(), nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description="HL7 v2 messages as received: one row per message, the ER7 text kept verbatim.",
    phi_columns=("raw", "_source_file"),
)

BRONZE_CSV = TableSpec(
    name="bronze.csv_rows",
    schema=pa.schema(
        [
            _f("extract", nullable=False),  # the mapping's name
            _f("target", nullable=False),  # the silver table it feeds (short name) or bronze_only
            _f("raw", pa.large_string(), nullable=False),  # the data line, decoded per the mapping
            _f("header", nullable=False),  # the file's header line, as decoded
            _f("header_hash", nullable=False),
            _f("mapping_file", nullable=False),
            _f("mapping_hash", nullable=False),  # the mapping it was read with: bronze.csv_mappings
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),  # 1-based line number in the file
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description="CSV extract rows as received: one row per data line, with its file's header and mapping.",
    phi_columns=("raw", "_source_file"),
)

BRONZE_CSV_MAPPINGS = TableSpec(
    name="bronze.csv_mappings",
    schema=pa.schema(
        [
            _f("mapping_hash", nullable=False),  # sha256 of the YAML text
            _f("extract", nullable=False),
            _f("mapping_file", nullable=False),
            _f("mapping", pa.large_string(), nullable=False),  # the mapping file's YAML text
            _f("_ingested_at", TS, nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("mapping_hash",),
    description="Every CSV mapping file an ingest read extracts with, by content hash.",
)

BRONZE_DICOM = TableSpec(
    name="bronze.dicom_files",
    schema=pa.schema(
        [
            _f("sop_instance_uid"),
            _f("series_instance_uid"),
            _f("study_instance_uid"),
            _f("sop_class_uid"),
            _f("modality"),
            _f("transfer_syntax_uid"),
            _f("raw", pa.large_string(), nullable=False),
            _f("archive_path", nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description=(
        "DICOM files as received: one row per file, the header as DICOM JSON (PS3.18 F) whose "
        "bulk data (pixel data) points by BulkDataURI at the original file archived byte for byte "
        "at archive_path (relative to the lake root)."
    ),
    phi_columns=("raw", "_source_file"),
)

SILVER_PATIENTS = TableSpec(
    name="silver.patients",
    schema=_schema(
        _f("person_key", nullable=False),
        _f("source_key", nullable=False),
        _f("source_system", nullable=False),
        _f("gender"),
        _f("birth_date", pa.date32()),
        _f("deceased", pa.bool_()),
        _f("deceased_date", pa.date32()),
        _f("zip3"),
        _f("state"),
        _f("country"),
        _f("marital_status"),
        _f("race"),
        _f("ethnicity"),
        _f("language"),
        rekeyable=True,
    ),
    key=("source_key",),
    description="One row per patient record per source; direct identifiers removed, dates shifted.",
)

SILVER_ENCOUNTERS = TableSpec(
    name="silver.encounters",
    schema=_schema(
        _f("encounter_key", nullable=False),
        _f("person_key", nullable=False),
        _f("status"),
        _f("class_code"),
        _f("type_system"),
        _f("type_code"),
        _f("type_display"),
        _f("site"),
        _f("start_at", TS),
        _f("end_at", TS),
        rekeyable=True,
    ),
    key=("encounter_key",),
    description="One row per encounter (visit); times shifted by the patient's offset.",
)

SILVER_OBSERVATIONS = TableSpec(
    name="silver.observations",
    schema=_schema(
        _f("observation_key", nullable=False),
        _f("person_key", nullable=False),
        _f("encounter_key"),
        _f("status"),
        _f("category"),
        _f("code_system"),
        _f("code"),
        _f("code_display"),
        _f("panel_code"),
        _f("value_num", pa.float64()),
        _f("value_unit"),
        _f("value_text"),
        _f("value_code"),
        _f("data_absent_reason"),
        _f("interpretation"),
        _f("ref_low", pa.float64()),
        _f("ref_high", pa.float64()),
        _f("effective_at", TS),
        *MAPPING_COLUMNS,
        _f("_unit_converted_from"),  # the unit as received, when value_num was converted
        _f("_value_original", pa.float64()),  # the value as received, when converted
        _f("_range_flag"),  # 'normal' | 'low' | 'high' against the normal range; null: none known
        rekeyable=True,
    ),
    key=("observation_key",),
    description="One row per measured value: an Observation, or one component of a panel (panel_code set).",
)

SILVER_CONDITIONS = TableSpec(
    name="silver.conditions",
    schema=_schema(
        _f("condition_key", nullable=False),
        _f("person_key", nullable=False),
        _f("encounter_key"),
        _f("clinical_status"),
        _f("verification_status"),
        _f("code_system"),
        _f("code"),
        _f("code_display"),
        _f("icd10cm_code"),
        _f("snomed_code"),
        _f("onset_at", TS),
        _f("abatement_at", TS),
        _f("recorded_date", pa.date32()),
        *MAPPING_COLUMNS,
        rekeyable=True,
    ),
    key=("condition_key",),
    description="One row per diagnosis or problem; ICD-10-CM and SNOMED CT codes where the source has them.",
)

SILVER_MEDICATIONS = TableSpec(
    name="silver.medications",
    schema=_schema(
        _f("medication_key", nullable=False),
        _f("person_key", nullable=False),
        _f("encounter_key"),
        _f("status"),
        _f("intent"),
        _f("code_system"),
        _f("code"),
        _f("code_display"),
        _f("rxnorm_code"),
        _f("authored_at", TS),
        _f("dosage_text"),
        *MAPPING_COLUMNS,
        rekeyable=True,
    ),
    key=("medication_key",),
    description="One row per medication order (MedicationRequest, RDE); RxNorm where the source has it.",
)

SILVER_NOTES = TableSpec(
    name="silver.notes",
    schema=_schema(
        _f("note_key", nullable=False),
        _f("person_key", nullable=False),
        _f("encounter_key"),
        _f("resource_type", nullable=False),
        _f("resource_key", nullable=False),
        _f("note_path", nullable=False),
        _f("note_text_deid", nullable=False),
        _f("phi_replaced", pa.int32(), nullable=False),
        _f("phi_entities", nullable=False),
        rekeyable=True,
    ),
    key=("note_key",),
    description=(
        "One row per free-text field kept (FHIR note and narrative text, DocumentReference and "
        "DiagnosticReport attachments), de-identified: PHI replaced by per-patient surrogates, dates by "
        "[DATE]; phi_entities is a JSON object of entity type → count (types and counts only)."
    ),
)

BRONZE_VITALS = TableSpec(
    name="bronze.vitals_samples",
    schema=pa.schema(
        [
            _f("layout", nullable=False),  # 'jsonl' | 'csv' | 'physionet'
            _f("device_id"),
            _f("patient_id"),  # the MRN (or PhysioNet RecordID) as sent: PHI
            _f("id_system"),  # its assigning authority
            _f("metric"),  # as sent: 'heart_rate', 'HR', …
            _f("value", pa.float64()),
            _f("unit"),
            _f("measured_at", TS),  # the device's clock, as sent (PhysioNet: anchor + offset)
            _f("raw", pa.large_string(), nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description="Device vital-sign samples as received: one row per JSONL/CSV/PhysioNet line, kept verbatim.",
    phi_columns=("raw", "patient_id", "_source_file"),
)

VITALS_WATERMARK = TableSpec(
    name="reference.vitals_watermark",
    schema=pa.schema(
        [
            _f("source_file", nullable=False),
            _f("bytes_consumed", pa.int64(), nullable=False),
            _f("lines_consumed", pa.int64(), nullable=False),
            _f("prefix_sha256", nullable=False),
            _f("run_id", nullable=False),
            _f("updated_at", TS, nullable=False),
        ]
    ),
    key=("source_file",),
    description="How far each vitals landing file has been read, and the hash of that prefix.",
    phi_columns=("source_file",),
)

SILVER_VITALS_RAW = TableSpec(
    name="silver.vitals_raw",
    schema=_schema(
        _f("sample_key", nullable=False),
        _f("person_key", nullable=False),
        _f("device_id", nullable=False),
        _f("metric", nullable=False),
        _f("code_system", nullable=False),
        _f("code", nullable=False),
        _f("value_num", pa.float64(), nullable=False),
        _f("value_unit", nullable=False),
        _f("measured_at", TS, nullable=False),  # device clock, shifted by the patient's offset
        _f("_unit_converted_from"),
        _f("_value_original", pa.float64()),
        _f("_range_flag"),
        rekeyable=True,
    ),
    key=("sample_key",),
    description="One row per vital-sign sample (person, device, LOINC, time): typed, UCUM, date-shifted.",
)


def _resampled(name: str, grid: str) -> TableSpec:
    return TableSpec(
        name=name,
        schema=_schema(
            _f("person_key", nullable=False),
            _f("device_id", nullable=False),
            _f("code", nullable=False),
            _f("value_unit", nullable=False),
            _f("bucket_start", TS, nullable=False),  # clock-skew corrected, shifted
            _f("value_mean", pa.float64()),
            _f("value_min", pa.float64()),
            _f("value_max", pa.float64()),
            _f("value_last", pa.float64()),  # carried forward into an empty bucket of a short gap
            _f("sample_count", pa.int64(), nullable=False),
            _f("filled", pa.bool_(), nullable=False),  # value_last carried, no sample in the bucket
            rekeyable=True,
        ),
        key=("person_key", "device_id", "code", "bucket_start"),
        description=f"Vital signs on a fixed {grid} grid per person, device and LOINC code; "
        "buckets in gaps longer than the max gap stay empty (null values, count 0).",
    )


SILVER_VITALS_1MIN = _resampled("silver.vitals_1min", "1-minute")
SILVER_VITALS_1H = _resampled("silver.vitals_1h", "1-hour")

SILVER_IMAGING_STUDIES = TableSpec(
    name="silver.imaging_studies",
    schema=_schema(
        _f("study_uid", nullable=False),
        _f("person_key", nullable=False),
        _f("started_at", TS),
        _f("modalities"),
        _f("number_of_series", pa.int32()),
        _f("number_of_instances", pa.int32()),
        rekeyable=True,
    ),
    key=("study_uid",),
    description=(
        "One row per imaging study (FHIR ImagingStudy): the study UID remapped under the project "
        "key, start shifted by the patient's offset, modalities and counts over silver's instances."
    ),
)

SILVER_IMAGING_SERIES = TableSpec(
    name="silver.imaging_series",
    schema=_schema(
        _f("series_uid", nullable=False),
        _f("study_uid", nullable=False),
        _f("person_key", nullable=False),
        _f("modality"),
        _f("body_part"),
        _f("series_number", pa.int32()),
        _f("started_at", TS),
        _f("number_of_instances", pa.int32()),
        rekeyable=True,
    ),
    key=("series_uid",),
    description="One row per imaging series (FHIR ImagingStudy.series); UIDs remapped, time shifted.",
)

SILVER_IMAGING_INSTANCES = TableSpec(
    name="silver.imaging_instances",
    schema=_schema(
        _f("instance_uid", nullable=False),
        _f("series_uid", nullable=False),
        _f("study_uid", nullable=False),
        _f("person_key", nullable=False),
        _f("sop_class_uid"),
        _f("instance_number", pa.int32()),
        _f("modality"),
        _f("rows", pa.int32()),
        _f("columns", pa.int32()),
        _f("number_of_frames", pa.int32()),
        _f("pixel_spacing_row_mm", pa.float64()),
        _f("pixel_spacing_col_mm", pa.float64()),
        _f("transfer_syntax_uid"),
        _f("deid_path", nullable=False),
        rekeyable=True,
    ),
    key=("instance_uid",),
    description=(
        "One row per DICOM instance (FHIR ImagingStudy.series.instance) with its image geometry and "
        "deid_path: the PS3.15 de-identified copy, relative to the lake root."
    ),
)

BRONZE_VCF = TableSpec(
    name="bronze.vcf_records",
    schema=pa.schema(
        [
            _f("chrom", nullable=False),
            _f("pos", pa.int64(), nullable=False),
            _f("ref", nullable=False),
            _f("alt", nullable=False),
            _f("header_hash", nullable=False),
            _f("raw", pa.large_string(), nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description=(
        "VCF data lines as received: one row per line, the text kept verbatim; header_hash names "
        "the file's header in bronze.vcf_headers, _source_offset is the line number in the file."
    ),
    phi_columns=("raw", "_source_file"),
)

BRONZE_VCF_HEADERS = TableSpec(
    name="bronze.vcf_headers",
    schema=pa.schema(
        [
            _f("fileformat", nullable=False),
            _f("samples", pa.list_(pa.string()), nullable=False),
            _f("raw", pa.large_string(), nullable=False),
            _f("_source_file", nullable=False),
            _f("_source_offset", pa.int64(), nullable=False),
            _f("_ingested_at", TS, nullable=False),
            _f("_record_hash", nullable=False),
            _f("_run_id", nullable=False),
        ]
    ),
    key=("_record_hash",),
    description=(
        "VCF headers as received (the ## meta lines and the #CHROM line, verbatim): one row per "
        "distinct header, keyed by its hash, which bronze.vcf_records rows name as header_hash."
    ),
    phi_columns=("raw", "samples", "_source_file"),
)

SILVER_VARIANTS = TableSpec(
    name="silver.variants",
    schema=_schema(
        _f("variant_key", nullable=False),
        _f("person_key", nullable=False),
        _f("sample_key", nullable=False),
        _f("chrom", nullable=False),
        _f("pos", pa.int64(), nullable=False),
        _f("variant_id"),
        _f("ref", nullable=False),
        _f("alt"),
        _f("allele_index", pa.int32(), nullable=False),
        _f("genotype"),
        _f("phased", pa.bool_()),
        _f("alt_copies", pa.int32()),
        _f("depth", pa.int32()),
        _f("genotype_quality", pa.int32()),
        _f("qual", pa.float64()),
        _f("filter"),
        _f("info", pa.map_(pa.string(), pa.string())),
        rekeyable=True,
    ),
    key=("variant_key",),
    description=(
        "One row per ALT allele of a VCF line per sample: the sample's genotype as written "
        "(alt_copies: copies of this allele in it), depth, genotype quality, and the line's QUAL, "
        "FILTER and INFO (per-allele INFO values narrowed to this allele)."
    ),
    partition_by=("chrom",),
)

SILVER_PATIENT_LINKS = TableSpec(
    name="silver.patient_links",
    schema=_schema(
        _f("source_key_l", nullable=False),
        _f("source_key_r", nullable=False),
        _f("person_key", nullable=False),
        _f("match_probability", pa.float64(), nullable=False),
        _f("match_weight", pa.float64()),  # null for deterministic links
        _f("rule", nullable=False),  # 'prelink' (same MRN and authority) | 'identical' | 'splink'
    ),
    key=("source_key_l", "source_key_r"),
    description=(
        "Entity resolution: which patient records (source keys) were linked into one person and with "
        "what match probability (jobs/clean/dedup.py); pseudonyms only. The lineage columns are "
        "those of the right-hand record (the one linked to the left)."
    ),
)

SILVER_PERSONS = TableSpec(
    name="silver.persons",
    schema=_schema(
        _f("person_key", nullable=False),
        _f("gender"),
        _f("birth_date", pa.date32()),  # shifted by the person's offset
        _f("deceased", pa.bool_()),
        _f("deceased_date", pa.date32()),
        _f("zip3"),
        _f("state"),
        _f("country"),
        _f("marital_status"),
        _f("race"),
        _f("ethnicity"),
        _f("language"),
        _f("records", pa.int64(), nullable=False),  # patient records (source keys) of the person
    ),
    key=("person_key",),
    description=(
        "One row per person: the survivorship of its silver.patients records "
        "(jobs/clean/dedup.py survivors: most frequent gender and birth date, the newest address "
        "as a whole, the newest non-null of the rest). _record_hash digests the records' hashes."
    ),
)

PERSON_CROSSWALK = TableSpec(
    name="reference.person_crosswalk",
    schema=pa.schema(
        [
            _f("source_key", nullable=False),
            # the person key ingest gave: the MRN's key, else the source key
            _f("prelink_key", nullable=False),
            _f("person_key", nullable=False),
            _f("first_run_id", nullable=False),
            _f("first_seen_at", TS, nullable=False),
            _f("since_run_id", nullable=False),  # the run that gave the record its person_key
        ]
    ),
    key=("source_key",),
    description="Patient record (source_key) → person_key, stable across runs; changes only by merge events.",
)

PATIENT_ALIASES = TableSpec(
    name="reference.patient_aliases",
    schema=pa.schema(
        [
            _f("resource_id", nullable=False),  # the FHIR Patient's id (sealed at rest)
            _f("person_key", nullable=False),  # the person key of its medical record number
            _f("_run_id", nullable=False),  # the run that last saw the Patient
        ]
    ),
    key=("resource_id",),
    description=(
        "FHIR Patient id → the person key of its MRN, kept up to date by every run: resources "
        "refer to patients by id, and reach their MRN's person through this index (no scan of "
        "every Patient ever ingested)."
    ),
    phi_columns=("resource_id",),
)

PERSON_EVENTS = TableSpec(
    name="reference.person_events",
    schema=pa.schema(
        [
            _f("event_id", nullable=False),
            _f("run_id", nullable=False),
            _f("event", nullable=False),  # 'new' | 'join' | 'merge' | 'rekey' | 'split'
            _f("person_key", nullable=False),  # the (surviving) person; split: the new person
            _f("from_person_key"),  # merge: the person absorbed; split: the person split
            _f("source_key"),  # new, join: the record
            _f("recorded_at", TS, nullable=False),
        ]
    ),
    key=("event_id",),
    description="What entity resolution did to persons, per run: records creating or joining a person, merges.",
)

IDENTITY_REVIEW = TableSpec(
    name="reference.identity_review",
    schema=pa.schema(
        [
            _f("pair_id", nullable=False),  # keyed hash of the two source keys, sorted
            _f("source_key_l", nullable=False),
            _f("source_key_r", nullable=False),
            _f("match_probability", pa.float64(), nullable=False),
            _f("match_weight", pa.float64()),
            _f("reason", nullable=False),  # identity.<rule>: why a steward decides (jobs/clean/dedup.py)
            _f("evidence", nullable=False),  # JSON field → agree|similar|differ|missing (no values)
            _f("status", nullable=False),  # open → approved (merged) | rejected (kept apart)
            _f("run_id", nullable=False),  # the run that queued the pair, or the split that decided it
            _f("queued_at", TS, nullable=False),
            _f("decided_by"),
            _f("decided_at", TS),
            _f("decision_reason"),
        ]
    ),
    key=("pair_id",),
    description=(
        "Pairs of patient records entity resolution could not decide alone (between the review and the "
        "merge thresholds, or a review rule): a steward approves (merge) or rejects (two people); a "
        "rejected pair, or one a split separated, is never merged or queued again. Pseudonyms only."
    ),
)

IDENTITY_TOKENS = TableSpec(
    name="reference.identity_tokens",
    schema=pa.schema(
        [
            _f("source_key", nullable=False),
            _f("rule", nullable=False),  # the blocking rule: birth_date | phone | name | address
            _f("token", nullable=False),  # HMAC(project key, rule, normalized values): not reversible
            _f("run_id", nullable=False),
        ]
    ),
    key=("source_key", "rule"),
    description=(
        "Keyed blocking tokens of every patient record in the vault, one per blocking rule: a later run "
        "finds the earlier records its records could match by equal tokens and decrypts only those."
    ),
)

QUARANTINE = TableSpec(
    name="quarantine",
    schema=pa.schema(
        [
            _f("quarantine_id", nullable=False),
            _f("run_id", nullable=False),
            _f("stage", nullable=False),
            _f("table_name", nullable=False),
            _f("rule_id", nullable=False),
            _f("reason", nullable=False),
            _f("source_file"),
            _f("source_offset", pa.int64()),
            _f("record_id"),
            _f("record_hash"),
            _f("raw_record", pa.large_string()),
            _f("quarantined_at", TS, nullable=False),
            _f("status", nullable=False),
            # a data steward's decision (jobs/review.py): open → accepted|corrected|rejected → released
            _f("resolution"),
            _f("resolution_reason"),
            _f("resolved_by"),
            _f("resolved_at", TS),
            _f("corrected_value", pa.float64()),
            _f("released_run_id"),
            _f("released_at", TS),
        ]
    ),
    key=("quarantine_id",),
    description="Every record a stage could not accept, with the rule it failed and why, in words.",
    phi_columns=("raw_record", "source_file"),
)

LEDGER = TableSpec(
    name="ledger",
    schema=pa.schema(
        [
            _f("run_id", nullable=False),
            _f("stage", nullable=False),
            _f("table_name", nullable=False),
            _f("records_in", pa.int64(), nullable=False),
            _f("records_out", pa.int64(), nullable=False),
            _f("quarantined", pa.int64(), nullable=False),
            _f("merged", pa.int64(), nullable=False),
            _f("bronze_only", pa.int64(), nullable=False),
            _f("balanced", pa.bool_(), nullable=False),
            _f("recorded_at", TS, nullable=False),
            _f("details"),  # JSON figures beyond the counts; null for stages that have none
        ]
    ),
    key=("run_id", "stage", "table_name"),
    description="Per run, stage and table: records in = out + quarantined + merged + bronze_only.",
)

CURATION = TableSpec(
    name="reference.curation",
    schema=pa.schema(
        [
            _f("bronze_table", nullable=False),
            _f("batch_run_id", nullable=False),  # the run whose ingest put the rows in bronze
            _f("state", nullable=False),  # 'staged' (a clean took it) | 'curated' (its gate promoted it)
            _f("run_id", nullable=False),  # the run that staged or curated it
            _f("records", pa.int64(), nullable=False),  # bronze rows of the batch, counted
            _f("updated_at", TS, nullable=False),
        ]
    ),
    key=("bronze_table", "batch_run_id"),
    description=(
        "Per bronze table and ingest run (a batch): which run carried its records past bronze. "
        "A batch no gate has curated yet is pending: the next run's clean takes it."
    ),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        BRONZE_FHIR,
        BRONZE_HL7V2,
        BRONZE_CSV,
        BRONZE_CSV_MAPPINGS,
        BRONZE_DICOM,
        SILVER_PATIENTS,
        SILVER_ENCOUNTERS,
        SILVER_OBSERVATIONS,
        SILVER_CONDITIONS,
        SILVER_MEDICATIONS,
        SILVER_NOTES,
        BRONZE_VITALS,
        VITALS_WATERMARK,
        SILVER_VITALS_RAW,
        SILVER_VITALS_1MIN,
        SILVER_VITALS_1H,
        SILVER_IMAGING_STUDIES,
        SILVER_IMAGING_SERIES,
        SILVER_IMAGING_INSTANCES,
        BRONZE_VCF,
        BRONZE_VCF_HEADERS,
        SILVER_VARIANTS,
        SILVER_PATIENT_LINKS,
        SILVER_PERSONS,
        PERSON_CROSSWALK,
        PATIENT_ALIASES,
        PERSON_EVENTS,
        IDENTITY_REVIEW,
        IDENTITY_TOKENS,
        CURATION,
        QUARANTINE,
        LEDGER,
    )
}

#: silver tables fed by FHIR, by resource type
FHIR_SILVER = {
    "Patient": SILVER_PATIENTS,
    "Encounter": SILVER_ENCOUNTERS,
    "Observation": SILVER_OBSERVATIONS,
    "Condition": SILVER_CONDITIONS,
    "MedicationRequest": SILVER_MEDICATIONS,
}


#: the tables this module defines; views in an extra folder may add silver tables at run time
BUILTIN_TABLES: frozenset[str] = frozenset(TABLES)


def register(table: TableSpec) -> TableSpec:
    """Add a table defined at run time (an extra view's ``silver.<name>``) for this process."""
    known = TABLES.get(table.name)
    if known is not None and known != table:
        raise ValueError(f"table {table.name} is already registered with another definition")
    TABLES[table.name] = table
    return table


#: every silver table, in the order the gate promotes them
SILVER_TABLES: tuple[str, ...] = tuple(name for name in TABLES if name.startswith("silver."))


def spec(name: str) -> TableSpec:
    """The registered table of that name, or a clear error listing the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None


def staging_name(silver_name: str) -> str:
    """Where a silver table's rows wait for the quality gate before promotion."""
    return "staging." + silver_name.split(".", 1)[1]


#: the source DAGs: DAG id → landing kind (one DAG per source domain, landing → bronze)
SOURCE_DAGS: dict[str, str] = {
    "ehr_fhir": "fhir",
    "ehr_hl7v2": "hl7v2",
    "ehr_csv": "csv",
    "pacs_dicom": "dicom",
    "iot_vitals": "vitals",
    "genomics_vcf": "vcf",
}


def dataset_name(table: str) -> str:
    """A table's OpenLineage dataset name: its registry name (``silver.observations``), which is
    also its Airflow asset's name and URI (medlake/assets.py); the namespace is the lake's
    (governance/lineage.py)."""
    return table


#: the bronze tables each landing kind's ingest writes (its DAG's outlets)
BRONZE_OF: dict[str, tuple[str, ...]] = {
    "fhir": (BRONZE_FHIR.name,),
    "hl7v2": (BRONZE_HL7V2.name,),
    "csv": (BRONZE_CSV.name, BRONZE_CSV_MAPPINGS.name),
    "dicom": (BRONZE_DICOM.name,),
    "vitals": (BRONZE_VITALS.name, VITALS_WATERMARK.name),
    "vcf": (BRONZE_VCF.name, BRONZE_VCF_HEADERS.name),
}
