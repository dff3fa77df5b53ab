"""Test-wide settings: every test session gets its own medlake home, Airflow home and keys."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="medlake-tests-"))
os.environ["MEDLAKE_HOME"] = str(_HOME)
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow' / 'airflow.db'}"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ.pop("MEDLAKE_PROJECT_KEY", None)

CORPUS = Path(__file__).resolve().parents[0] / "corpus"


#: the markers of the files that take minutes (Airflow, dbt, Spark, whole pipelines)
_HEAVY = ("slow", "e2e", "spark")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files holding a heavy test first, each file's tests kept together and in order.

    `make test` hands whole files to two workers in this order (``--dist loadfile
    --no-loadscope-reorder``): the longest work starts first and the many short files fill the
    gaps at the end, rather than a minutes-long file starting when the other worker is nearly done
    (xdist's own order, most tests first, puts the one-test Spark and delivery files last)."""
    heavy = {
        item.path for item in items if any(item.get_closest_marker(m) for m in _HEAVY)
    }
    items.sort(key=lambda item: item.path not in heavy)  # stable: order within a file unchanged
