"""Airflow assets: one per registered Delta table, named like the table.

An asset's name and URI are the table's OpenLineage dataset name (``silver.observations``): the
name medlake's lineage events give the table (governance/lineage.py), and the one the lake, the
ledger and the registry use, so an asset and a lineage dataset join on it. The lineage events'
namespace is the lake (``file://<lake root>``); the DAGs serve any lake, so it is not in the URI:
each asset event carries the lake in ``extra["lake"]``.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny

from medlake.pending import BATCHED as BATCHED_TABLES
from medlake.registry import TABLES, dataset_name, staging_name


def asset(name: str) -> Asset:
    """The asset of a table, e.g. ``asset("silver.observations")``: named, and with the URI, as
    the table's OpenLineage dataset."""
    return Asset(name=dataset_name(name), uri=dataset_name(name))


def landing(kind: str) -> Asset:
    """A landing sub-folder (``landing/fhir``): what a source DAG reads. Its lineage dataset is the
    folder's path (namespace ``file``), which only a run knows, so this URI is medlake's own."""
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
