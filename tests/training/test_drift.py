"""Dataset drift: what changed between two versions, before anyone retrains."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from medlake.lake import Lake
from medlake.training import datasets, drift

GOLD = "gold.ml_patient_features"


def test_psi_of_category_shares_by_hand():
    # A: 50 % x, 50 % y; B: 25 % x, 75 % y
    # PSI = (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    a = ["x", "y"] * 2
    b = ["x", "y", "y", "y"]
    assert drift.psi_categorical(a, b) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi_categorical(a, a) == 0.0


def test_psi_of_numbers_uses_the_deciles_of_the_reference():
    a = np.arange(100, dtype=float)  # deciles at 9.9, 19.8, ...: 10 values per bin
    assert drift.psi_numeric(a, a) == 0.0
    assert drift.psi_numeric(a, a[::-1]) == 0.0  # order does not matter
    # B puts every value in A's lowest bin: PSI = (1 - .1) ln(1/.1) + 9 * (1e-4 - .1) ln(1e-4/.1)
    floor = drift.SHARE_FLOOR
    expected = 0.9 * math.log(10) + 9 * (floor - 0.1) * math.log(floor / 0.1)
    assert drift.psi_numeric(a, np.zeros(50)) == pytest.approx(expected)
    # values that go missing are a shift too
    half_missing = np.where(np.arange(100) % 2 == 0, a, np.nan)
    assert drift.psi_numeric(a, half_missing) > 0.25


def test_levels_follow_the_usual_reading():
    assert [drift.level(v) for v in (0.05, 0.1, 0.25, 0.3)] == [
        "stable",
        "moderate",
        "moderate",
        "major",
    ]


def test_diff_of_two_versions_finds_the_shifted_feature_and_the_column_changes(
    lake: Lake, gold_rows
):
    datasets.publish(lake, GOLD, name="readmission")
    shifted = gold_rows(300, seed=2, weight_shift=15.0)
    shifted = shifted.drop_columns(["creatinine_mean"]).append_column(
        "bmi_last", pa.array([27.0] * shifted.num_rows)
    )
    lake.write(GOLD, shifted, mode="overwrite")
    datasets.publish(lake, GOLD, name="readmission")

    report = drift.diff(lake, "readmission@1", "readmission@2")
    assert (report.rows_a, report.rows_b) == (400, 300)
    assert report.added_columns == ("bmi_last",)
    assert report.removed_columns == ("creatinine_mean",)
    by_column = {f.column: f for f in report.features}
    assert (
        by_column["body_weight_last"].psi > 0.25 and by_column["body_weight_last"].level == "major"
    )
    assert by_column["body_weight_last"].mean_b > by_column["body_weight_last"].mean_a + 10
    assert by_column["heart_rate_last"].level == "stable"
    assert (
        by_column["gender"].kind == "categorical"
        and by_column["has_hypertension"].kind == "categorical"
    )
    assert report.features[0].psi == max(f.psi for f in report.features)
    assert "person_key" not in by_column and report.skipped["person_key"] == "row key"
    assert "_run_id" not in by_column
    # heavier people in B: diabetes (planted to rise with weight) is more common
    assert report.label == "has_diabetes"
    assert report.prevalence_b > report.prevalence_a
    as_json = report.as_dict()
    assert as_json["features"][0]["column"] == report.features[0].column


def test_diff_of_a_version_with_itself_is_stable(lake: Lake):
    datasets.publish(lake, GOLD, name="readmission")
    report = drift.diff(lake, "readmission@1", "readmission@1")
    assert all(f.psi == 0.0 for f in report.features)
    assert report.shifted == () and report.added_columns == report.removed_columns == ()
