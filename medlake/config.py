"""medlake settings, in one place.

Order of precedence, highest first:
  1. arguments (``Settings(lake=...)`` or ``load_settings(lake=...)``),
  2. ``medlake.toml`` in the working directory (or the file named by ``MEDLAKE_CONFIG``),
  3. environment variables ``MEDLAKE__SECTION__KEY`` (e.g. ``MEDLAKE__LAKE__ROOT``),
  4. the defaults below.

``MEDLAKE_ENV=local`` (the default) needs no credentials: keys are generated on first use
into a git-ignored folder with 0600 permissions. Library functions never read settings or
secrets themselves: callers pass what they need as arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: whether medlake runs from its source tree (``make env``'s editable install) rather than from a
#: wheel installed into site-packages, where nothing may hang off the folder above the package
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "dags").is_dir()
PACKAGE_DIR = Path(__file__).resolve().parent
STATE_DIR = Path(
    os.environ.get("MEDLAKE_HOME", REPO_ROOT / ".medlake" if IN_CHECKOUT else Path.home() / ".medlake")
)


def shipped(name: str) -> Path:
    """A folder medlake ships (``dags``, ``dbt``): the checkout's top-level folder, or the copy a
    wheel carries inside the package (``medlake/dags``, ``medlake/dbt``)."""
    return REPO_ROOT / name if IN_CHECKOUT else PACKAGE_DIR / name


def default_jars_dir() -> Path:
    """Where ``make env`` puts the delta-spark jars: ``<repo>/.venv/jars``; for a wheel, ``jars/``
    in the environment it is installed into (``sys.prefix``)."""
    return REPO_ROOT / ".venv" / "jars" if IN_CHECKOUT else Path(sys.prefix) / "jars"
#: object-store schemes a lake root may name (delta-rs and Spark's S3A both read them)
OBJECT_STORE_SCHEMES = ("s3",)


def remote_dir() -> Path:
    """Where a lake on an object store keeps its local files (``$MEDLAKE_HOME/remote/<scheme>/<bucket>/<prefix>``)."""
    return Path(os.environ.get("MEDLAKE_HOME", STATE_DIR)) / "remote"


def lake_root(value: str | Path) -> Path:
    """The local folder of a lake given as a folder or as an object-store URI (``s3://bucket/prefix``).

    A lake on an object store keeps its Delta tables there and a few local files (locks, the audit
    log's signed head, run summaries, reports, archived DICOM files) in this folder; the mapping is
    one-to-one, so the folder names the URI back (:func:`object_uri`). A ``pathlib.Path`` made of a
    URI (``s3:/bucket/prefix``, one slash lost) is read as that URI.
    """
    text = str(value)
    for scheme in OBJECT_STORE_SCHEMES:
        for prefix in (f"{scheme}://", f"{scheme}:/"):
            if text.startswith(prefix):
                rest = text[len(prefix):].strip("/")
                if not rest or rest.startswith(".") or "/../" in f"/{rest}/":
                    raise ValueError(f"{text!r} names no bucket: use {scheme}://bucket/prefix")
                return remote_dir() / scheme / rest
    return Path(value)


def object_uri(root: Path) -> str | None:
    """The object-store URI of a lake folder made by :func:`lake_root`, or None for a local lake."""
    try:
        rel = Path(os.path.abspath(root)).relative_to(os.path.abspath(remote_dir()))
    except ValueError:
        return None
    if len(rel.parts) < 2 or rel.parts[0] not in OBJECT_STORE_SCHEMES:
        return None
    return f"{rel.parts[0]}://{'/'.join(rel.parts[1:])}"


class LakeSettings(BaseModel):
    """Where the Delta tables live."""

    root: Path = Field(
        default=STATE_DIR / "lake",
        description="Root of the lake: <root>/<layer>/<table>; a folder or s3://bucket/prefix (see MEDLAKE__S3__*).",
    )

    @field_validator("root", mode="before")
    @classmethod
    def _object_store(cls, value: object) -> object:
        return lake_root(value) if isinstance(value, str | Path) else value


class S3Settings(BaseModel):
    """The S3-compatible object store of a lake at ``s3://…`` (delta-rs storage options, Spark's S3A).

    Credentials come from 0600 files or from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the
    environment, never from this file's values.
    """

    endpoint: str | None = Field(
        default=None, description="S3 endpoint URL, e.g. https://127.0.0.1:18470; unset: AWS's own."
    )
    region: str = Field(default="us-east-1", description="S3 region.")
    ca_file: Path | None = Field(
        default=None, description="PEM file of the CA that signed the endpoint's certificate; unset: the system's CAs."
    )
    access_key_file: Path | None = Field(
        default=None, description="File (0600) holding the access key id; unset: AWS_ACCESS_KEY_ID."
    )
    secret_key_file: Path | None = Field(
        default=None, description="File (0600) holding the secret access key; unset: AWS_SECRET_ACCESS_KEY."
    )


class KeySettings(BaseModel):
    """Where keys come from. The folder is git-ignored; files are created 0600 on first use."""

    dir: Path = Field(default=STATE_DIR / "keys", description="Folder holding generated key files.")
    project_key_env: str = Field(
        default="MEDLAKE_PROJECT_KEY",
        description="Environment variable that, when set, holds the project key (hex); overrides the key file.",
    )
    audit_key_env: str = Field(
        default="MEDLAKE_AUDIT_KEY",
        description="Environment variable that, when set, holds the audit-log MAC key (hex); overrides the key file.",
    )


#: Which ages free text loses: ``over_89`` (HIPAA Safe Harbor: younger ages stay, a note needs
#: them) or ``all`` (a stricter release: every stated age becomes ``[AGE]``).
AgePolicy = Literal["over_89", "all"]


class DeidSettings(BaseModel):
    """Structured de-identification (HIPAA Safe Harbor)."""

    date_shift_max_days: int = Field(default=365, description="Dates move by a keyed per-patient offset in ±this.")
    text_workers: int = Field(
        default=0,
        ge=0,
        description="Processes `medlake deid text` de-identifies a file with (2,000 notes or more); 0: one per CPU core, 1: in-process. The pipeline de-identifies notes in the engine's workers.",
    )

    text_ages: AgePolicy = Field(
        default="over_89",
        description="Ages free text loses: over_89 (HIPAA Safe Harbor) or all (every stated age becomes [AGE]).",
    )

    def workers(self) -> int:
        """The free-text worker count, 0 resolved to the CPUs this process may use."""
        return self.text_workers or len(os.sched_getaffinity(0))


class ViewsSettings(BaseModel):
    """SQL-on-FHIR v2 views beyond the built-in silver tables (jobs/views/tables.py)."""

    extra_dir: Path | None = Field(
        default=None,
        description="Folder of extra ViewDefinition files, each becoming the table silver.<view name>; unset: none.",
    )


class AccessSettings(BaseModel):
    """Role-based access (governance/access.py) and the DP budgets it holds."""

    policy_file: Path | None = Field(
        default=None,
        description="Access policy YAML (roles, grants, purposes, DP budgets); unset: governance/policies/default.yaml.",
    )


class LimitsSettings(BaseModel):
    """What one landing record may cost before it is quarantined under ``limit.*`` (jobs/ingest/limits.py).

    Each bound protects the run, not the record: what is over it is quarantined with the limit in
    the reason and the run goes on. 0 switches a bound off.
    """

    record_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Bytes one record may hold (a line, an HL7 message, a FHIR resource, a .json file read whole); over: limit.record_bytes.",
    )
    json_depth: int = Field(
        default=64, ge=0, description="Nesting depth of a JSON record (FHIR, vitals jsonl); over: limit.json_depth."
    )
    hl7_fields: int = Field(
        default=1000, ge=0, description="Fields in one HL7 v2 segment; over: limit.hl7_fields."
    )
    vcf_samples: int = Field(
        default=100_000, ge=0, description="Sample columns in one VCF header; over: limit.vcf_samples (the file)."
    )
    decompressed_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Bytes one gzip file (.vcf.gz) may inflate to (the VCF reader holds a file's text whole); over: limit.decompressed_bytes (the file).",
    )
    record_seconds: float = Field(
        default=10.0, ge=0, description="Seconds parsing and checking one record may take; over: limit.record_seconds."
    )


class GateSettings(BaseModel):
    """The quality gate's delivery-volume check (expectations/volume.py)."""

    volume_block: str = Field(
        default="",
        description="Silver tables (comma-separated, or *) where a source's delivery outside its volume band stops promotion; elsewhere it only warns.",
    )
    volume_min_history: int = Field(
        default=5,
        ge=1,
        description="Earlier deliveries of a source into a table before its volume band is judged (the same weekday's once there are this many).",
    )
    volume_tolerance: float = Field(
        default=3.0,
        gt=0,
        description="Half-width of the volume band in robust standard deviations (1.4826 × MAD, at least 10% of the median) around the median delivery.",
    )


class AirflowSettings(BaseModel):
    """The local Airflow installation that runs the DAGs."""

    home: Path = Field(default=STATE_DIR / "airflow", description="AIRFLOW_HOME (SQLite metadata DB locally).")
    dags_folder: Path = Field(default=shipped("dags"), description="Folder of the DAG files (a wheel: its medlake/dags).")
    pipeline_dag_id: str = Field(default="medlake_pipeline", description="The DAG `medlake run --inline` runs.")
    api_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Port of the local Airflow API server `medlake run` starts and triggers DAGs through (127.0.0.1 only).",
    )
    api_url: str | None = Field(
        default=None,
        description="API server of a running Airflow that runs medlake's DAGs (a deployment's, e.g. http://127.0.0.1:18480): `medlake run` triggers through it and starts nothing; unset: a local one on the API port.",
    )
    api_user: str = Field(default="medlake", description="User `medlake run` signs in to the Airflow API as.")
    api_password_file: Path | None = Field(
        default=None,
        description="File (0600) holding that user's password; unset: the one the local Airflow generated in its home.",
    )
    asset_grace: float = Field(
        default=180,
        gt=0,
        description="Seconds `medlake run` waits for the bronze assets to trigger curation before it triggers a run itself.",
    )
    source_schedule: str | None = Field(
        default=None,
        description="When the source DAGs run by themselves: unset, only when `medlake run` triggers them; a cron "
        "expression or preset (`@hourly`): on that schedule, each run waiting for files in its landing folder "
        "(a sensor); `asset`: on an event of its landing folder's asset (`landing.<kind>`).",
    )
    landing: Path = Field(
        default=STATE_DIR / "landing",
        description="Landing folder a scheduled source DAG run reads (`medlake run --landing` passes its own).",
    )
    sensor_timeout: float = Field(
        default=3600,
        gt=0,
        description="Seconds a scheduled source DAG run waits for files in its landing folder before it gives up.",
    )
    pool_slots: int = Field(
        default=2,
        ge=1,
        description="Slots of each source's Airflow pool (`medlake_<kind>`, made when `medlake run` starts Airflow): "
        "how many of that source's tasks run at once.",
    )
    batch_files: int = Field(
        default=1000,
        ge=0,
        description="Files per mapped ingest task of a source DAG: a larger landing folder fans out over batches "
        "of this many files (dynamic task mapping), each its own batch in bronze; 0: one task per folder.",
    )
    delivery_wait: float = Field(
        default=900,
        gt=0,
        description="Seconds a source run `medlake run` started waits for the other sources of its delivery to reach "
        "bronze before it announces its bronze tables, so the delivery is curated together.",
    )
    retries: int = Field(default=2, ge=0, description="Retries of every source and curation task.")
    source_retries: dict[str, int] = Field(
        default={},
        description='Retries per source landing kind, over `MEDLAKE__AIRFLOW__RETRIES`, as JSON: `{"dicom": 4}`.',
    )


class DbtSettings(BaseModel):
    """The dbt project that builds the gold marts."""

    project_dir: Path = Field(default=shipped("dbt"), description="dbt project folder (a wheel: its medlake/dbt).")
    target: Literal["duckdb", "spark"] = Field(default="duckdb", description="dbt profile target.")


class SparkSettings(BaseModel):
    """The scale-out engine (Spark with delta-spark), used when ``MEDLAKE__ENGINE=spark``."""

    master: str = Field(
        default="local[*]", description="Spark master URL: local[*], spark://host:7077, k8s://https://…"
    )
    remote: str | None = Field(
        default=None,
        description="Spark Connect URL (sc://host:15002); when set it wins over the master.",
    )
    driver_memory: str = Field(
        default="4g",
        description="Heap of the Spark driver JVM medlake starts (local mode: its executors' too); Spark's default is 1g.",
    )
    jars_dir: Path = Field(default=default_jars_dir(), description="delta-spark jars fetched at install (a wheel: <sys.prefix>/jars).")


class EmbeddedSettings(BaseModel):
    """The default engine on one machine (delta-rs, Arrow, DuckDB/Polars; no JVM)."""

    batch_rows: int = Field(
        default=10_000, ge=1, description="Rows per record batch a batch-local step streams."
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="Worker processes for CPU-bound batch steps; 0: one per core (1: in-process).",
    )
    parallel_min_rows: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Below this many source rows a batch step runs in-process (workers cost ~1 s to start); "
            "once an earlier step of the process started them, any step of two batches or more runs in them."
        ),
    )
    buckets: int = Field(
        default=16, ge=1, description="Hash buckets of a keyed step: one bucket in memory at a time."
    )
    bucket_rows: int = Field(
        default=250_000,
        ge=1,
        description="Rows per hash bucket a keyed step aims at: a larger source gets more buckets than `buckets`.",
    )

    def worker_count(self) -> int:
        """The worker processes to use: the setting, or one per core."""
        return self.workers or max(1, os.cpu_count() or 1)


class LineageSettings(BaseModel):
    """OpenLineage events: always written to <lake>/_lineage/; also sent to a backend when a URL is set."""

    url: str | None = Field(
        default=None,
        description="OpenLineage HTTP backend, e.g. Marquez at http://localhost:5000; unset: the lake's file only.",
    )
    namespace: str = Field(default="medlake", description="Namespace of medlake's lineage jobs.")
    airflow_namespace: str = Field(
        default="medlake-airflow", description="Namespace of the task-level events of Airflow's OpenLineage provider."
    )
    api_key_env: str = Field(
        default="MEDLAKE_LINEAGE_API_KEY",
        description="Environment variable that, when set, holds the lineage backend's API key.",
    )


class MlflowSettings(BaseModel):
    """Experiment tracking and the model registry."""

    tracking_uri: str = Field(
        default=f"sqlite:///{STATE_DIR / 'mlflow' / 'mlflow.db'}",
        description="MLflow tracking URI (its own SQLite file locally, the MLflow server in production).",
    )


class IdentitySettings(BaseModel):
    """Entity resolution (jobs/clean/dedup.py): when two patient records are one person."""

    merge_threshold: float = Field(
        default=0.90, ge=0.0, le=1.0,
        description="A pair at or above this match probability is merged into one person automatically.",
    )
    review_threshold: float = Field(
        default=0.50, ge=0.0, le=1.0,
        description="A pair from here up to the merge threshold waits in reference.identity_review; below it, apart.",
    )
    name_change_floor: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="Below the review threshold, a possible name change (same first name, birth date and sex, "
        "another family name, no phone against it) still waits for review from this match probability up.",
    )
    em_min_records: int = Field(
        default=5000, ge=2,
        description="Below this many records m stays at its priors and names get no term-frequency adjustment.",
    )


class Settings(BaseSettings):
    """Every medlake setting. See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="MEDLAKE__",
        env_nested_delimiter="__",
        toml_file=os.environ.get("MEDLAKE_CONFIG", "medlake.toml"),
        extra="ignore",
    )

    env: Literal["local", "production"] = Field(
        default_factory=lambda: os.environ.get("MEDLAKE_ENV", "local"),  # type: ignore[arg-type]
        description="local needs no credentials; production requires keys from the environment.",
    )
    engine: Literal["embedded", "spark"] = Field(
        default="embedded",
        description="The engine every stage runs on: embedded (one machine) or spark.",
    )
    lake: LakeSettings = LakeSettings()
    s3: S3Settings = S3Settings()
    keys: KeySettings = KeySettings()
    deid: DeidSettings = DeidSettings()
    views: ViewsSettings = ViewsSettings()
    access: AccessSettings = AccessSettings()
    airflow: AirflowSettings = AirflowSettings()
    dbt: DbtSettings = DbtSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    spark: SparkSettings = SparkSettings()
    mlflow: MlflowSettings = MlflowSettings()
    lineage: LineageSettings = LineageSettings()
    identity: IdentitySettings = IdentitySettings()
    limits: LimitsSettings = LimitsSettings()
    gate: GateSettings = GateSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, TomlConfigSettingsSource(settings_cls), env_settings)


def load_settings(*, lake: Path | str | None = None) -> Settings:
    """Settings with the lake root (a folder or ``s3://bucket/prefix``) given as an argument, when it is."""
    settings = Settings()
    if lake is not None:
        settings = settings.model_copy(
            update={"lake": settings.lake.model_copy(update={"root": lake_root(lake).resolve()})}
        )
    return settings


def settings_table() -> list[tuple[str, str, str]]:
    """Every setting as (environment name, default, meaning), for the README and `medlake config`."""

    def shown(value: object) -> str:
        text = str(value).replace(str(STATE_DIR), "$MEDLAKE_HOME")
        return text.replace(str(REPO_ROOT), "<repo>") if IN_CHECKOUT else text

    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                rows.append(
                    (f"MEDLAKE__{name.upper()}__{sub.upper()}", shown(subfield.default), subfield.description or "")
                )
        else:
            default = "local" if name == "env" else shown(field.default)
            rows.append(("MEDLAKE_ENV" if name == "env" else f"MEDLAKE__{name.upper()}", default, field.description or ""))
    return rows
