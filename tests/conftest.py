"""Test-wide settings: every test session gets its own medlake home, Airflow home and keys."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="medlake-tests-"))
os.environ["MEDLAKE_HOME"] = str(_HOME)
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow' / 'airflow.db'}"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ.pop("MEDLAKE_PROJECT_KEY", None)

CORPUS = Path(__file__).resolve().parents[0] / "corpus"
