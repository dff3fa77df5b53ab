"""A gold.ml_patient_features-shaped Delta table built without dbt, with a learnable label."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from medlake.lake import Lake

GOLD = "gold.ml_patient_features"
BANDS = [f"{low}-{low + 4}" for low in range(20, 90, 5)] + ["90+"]


def make_gold_rows(
    n: int, *, seed: int, weight_shift: float = 0.0, run_id: str = "run-1"
) -> pa.Table:
    """``n`` people; diabetes more likely with weight, age and hypertension (as in the sample hospital)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        band = rng.randrange(len(BANDS))
        hypertension = rng.random() < 0.3
        weight = rng.gauss(80, 14) + weight_shift
        logit = -1.2 + 0.09 * (weight - 80) + 0.25 * (band - 7) + 1.0 * hypertension
        diabetes = rng.random() < 1 / (1 + math.exp(-logit))
        rows.append(
            {
                "person_key": f"p{seed:02d}-{i:05d}",
                "gender": rng.choice(["female", "male"]),
                "age_band": BANDS[band],
                "is_deceased": rng.random() < 0.02,
                "encounter_count": rng.randint(1, 4),
                "heart_rate_last": rng.gauss(75, 9),
                "heart_rate_mean": rng.gauss(75, 6),
                "body_weight_last": weight,
                "body_weight_mean": weight + rng.gauss(0, 1),
                "systolic_bp_last": rng.gauss(142 if hypertension else 120, 12),
                "systolic_bp_mean": rng.gauss(142 if hypertension else 120, 8),
                "glucose_last": rng.gauss(165 if diabetes else 92, 20),
                "glucose_mean": None
                if rng.random() < 0.3
                else rng.gauss(165 if diabetes else 92, 15),
                "creatinine_last": rng.gauss(0.9, 0.15),
                "creatinine_mean": rng.gauss(0.9, 0.1),
                "hba1c_last": rng.gauss(7.6 if diabetes else 5.3, 0.5),
                "hba1c_mean": rng.gauss(7.6 if diabetes else 5.3, 0.4),
                "has_diabetes": diabetes,
                "has_hypertension": hypertension,
                "medication_count": rng.randint(0, 3) + diabetes,
                "medication_order_count": rng.randint(0, 5) + diabetes,
                "_run_id": run_id,
            }
        )
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="session")
def gold_rows() -> Callable[..., pa.Table]:
    """Builds gold rows: ``gold_rows(n, seed=..., weight_shift=..., run_id=...)``."""
    return make_gold_rows


@pytest.fixture()
def lake(tmp_path: Path) -> Lake:
    """A lake whose gold table has one version (Delta version 0) of 400 people."""
    lake = Lake(tmp_path / "lake")
    lake.write(GOLD, make_gold_rows(400, seed=1), mode="overwrite")
    return lake
