"""An Airflow home from an older medlake still runs the pipeline inline.

Issue #14 renamed every asset (name and URI: the table's OpenLineage name). An Airflow home made
before it held the old assets as active; the renamed ones could not be activated beside them
(same names), and every task with such an outlet failed with
``AirflowInactiveAssetInInletOrOutletException`` until the home was removed by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medlake.config import load_settings
from medlake.orchestrator import ASSET_SCHEME, airflow_env, ensure_db
from medlake.sample import generate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEDLAKE = str(Path(sys.executable).with_name("medlake"))

#: what an Airflow home of before issue #14 held: the table's name active under another URI
PLANT_OLD_ASSET = """
from airflow.models.asset import AssetActive, AssetModel
from airflow.utils.session import create_session
with create_session() as session:
    session.add(AssetModel(name="silver.observations", uri="medlake://silver/observations"))
    session.flush()
    session.add(AssetActive(name="silver.observations", uri="medlake://silver/observations"))
"""


def test_an_airflow_home_holding_renamed_assets_runs_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLAKE__AIRFLOW__HOME", str(tmp_path / "airflow"))
    settings = load_settings()
    ensure_db(settings)
    planted = subprocess.run(
        [sys.executable, "-c", PLANT_OLD_ASSET], env=airflow_env(settings), capture_output=True, text=True, check=False
    )
    assert planted.returncode == 0, planted.stderr[-2000:]
    landing = tmp_path / "landing"
    generate(landing, patients=3, seed=5)
    done = subprocess.run(
        [MEDLAKE, "run", "--inline", "--landing", str(landing), "--lake", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "InactiveAsset" not in done.stderr
    assert (tmp_path / "airflow" / f".asset-scheme-{ASSET_SCHEME}").exists()
