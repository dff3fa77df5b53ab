"""Airflow assets: one per registered Delta table, named like the table.

The asset name is the table name (``silver.observations``), the same name the lake, the ledger
and the lineage events use; the URI is the table's place below any lake root.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny

from medlake.pending import BATCHED as BATCHED_TABLES
from medlake.registry import TABLES, staging_name


def asset(name: str) -> Asset:
    """The asset of a table, e.g. ``asset("silver.observations")``."""
    return Asset(name=name, uri=f"medlake://lake/{name.replace('.', '/')}")


def landing(kind: str) -> Asset:
    """A landing sub-folder (``landing/fhir``): what a source DAG reads."""
    return Asset(name=f"landing.{kind}", uri=f"medlake://landing/{kind}")


def any_of(items: list[Asset]) -> AssetAny:
    """A schedule on any of these assets (a run when one of them is updated)."""
    return AssetAny(*items)


LANDING_FHIR = landing("fhir")
BRONZE = [asset(n) for n in TABLES if n.startswith("bronze.")]
SILVER = [asset(n) for n in TABLES if n.startswith("silver.")]
QUARANTINE = asset("quarantine")
LEDGER = asset("ledger")
GOLD_FEATURES = asset("gold.ml_patient_features")
STAGING = [asset(staging_name(n)) for n in TABLES if n.startswith("silver.")]
#: the bronze tables whose batches the curation DAG carries on (medlake/pending.py BATCHED)
BATCHED = [asset(n) for n in BATCHED_TABLES]
#: the marts dbt builds (dbt/models/marts/; tests/dags checks the list against the project)
GOLD_MARTS = (
    "ml_patient_features", "ml_vitals_windows", "omop_condition_occurrence", "omop_death",
    "omop_drug_exposure", "omop_measurement", "omop_observation", "omop_observation_period",
    "omop_person", "omop_visit_occurrence",
)
GOLD = [asset(f"gold.{m}") for m in GOLD_MARTS]
