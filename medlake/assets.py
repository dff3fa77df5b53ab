"""Airflow assets: one per registered Delta table, named like the table.

The asset name is the table name (``silver.observations``), the same name the lake, the ledger
and the lineage events use; the URI is the table's place below any lake root.
"""

from __future__ import annotations

from airflow.sdk import Asset

from medlake.registry import TABLES


def asset(name: str) -> Asset:
    """The asset of a table, e.g. ``asset("silver.observations")``."""
    return Asset(name=name, uri=f"medlake://lake/{name.replace('.', '/')}")


LANDING_FHIR = Asset(name="landing.fhir", uri="medlake://landing/fhir")
BRONZE = [asset(n) for n in TABLES if n.startswith("bronze.")]
SILVER = [asset(n) for n in TABLES if n.startswith("silver.")]
QUARANTINE = asset("quarantine")
LEDGER = asset("ledger")
GOLD_FEATURES = asset("gold.ml_patient_features")
