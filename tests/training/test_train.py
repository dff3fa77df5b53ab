"""Training on a published dataset: the MLflow run holds the dataset input, every metric, the artifacts
and a registered model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from medlake.lake import Lake
from medlake.training import datasets, train

GOLD = "gold.ml_patient_features"

FAST = {"max_iter": 40}

METRICS = {
    "threshold",
    "sensitivity",
    "sensitivity_ci_low",
    "sensitivity_ci_high",
    "specificity",
    "specificity_ci_low",
    "specificity_ci_high",
    "roc_auc",
    "roc_auc_ci_low",
    "roc_auc_ci_high",
    "pr_auc",
    "brier",
    "ece",
    "prevalence",
    "ppv",
    "npv",
    "tp",
    "fp",
    "tn",
    "fn",
    "cv_roc_auc_mean",
    "cv_roc_auc_sd",
    "conformal_coverage",
    "conformal_target_coverage",
    "conformal_unsure_share",
    "conformal_empty_share",
    "rows_test",
    "group.gender.female.roc_auc",
    "group.gender.male.roc_auc",
    "group.gender.female.sensitivity",
    "group.gender.male.specificity",
}
ARTIFACTS = {
    "confusion_matrix.json",
    "reliability.png",
    "reliability.json",
    "permutation_importance.json",
    "per_group.json",
    "features.json",
    "prediction_sets.json",
    "model_card.md",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, gold_rows):
    root = tmp_path_factory.mktemp("training")
    lake = Lake(root / "lake")
    lake.write(GOLD, gold_rows(100, seed=9), mode="overwrite")
    lake.write(GOLD, gold_rows(400, seed=1), mode="overwrite")  # Delta version 1
    manifest = datasets.publish(lake, GOLD, name="readmission")
    uri = train.default_tracking_uri(root)
    result = train.train(
        lake, "readmission@1", tracking_uri=uri, seed=0, hyperparameters=FAST, run_id="manual__test"
    )
    return lake, manifest, uri, result


def test_the_run_logs_the_dataset_as_an_input_with_its_delta_version_and_hash(trained):
    lake, manifest, uri, result = trained
    run = MlflowClient(uri).get_run(result.run_id)
    (found,) = run.inputs.dataset_inputs
    assert found.dataset.name == "readmission@1"
    assert found.dataset.digest == manifest.content_hash[:32]
    assert found.dataset.source_type == "delta_table"
    source = json.loads(found.dataset.source)
    # the release (gold.ml_patient_features meeting k=5) is what was trained on, at its pinned version
    assert manifest.table == "gold.release_readmission"
    assert source.get("delta_table_version", 0) == manifest.delta_version and source["path"] == lake.uri(manifest.table)
    tags = {t.key: t.value for t in found.tags}
    assert tags["medlake.content_hash"] == manifest.content_hash
    assert tags["medlake.delta_version"] == str(manifest.delta_version) and tags["mlflow.data.context"] == "training"
    assert run.data.tags["medlake.dataset"] == "readmission@1"
    assert run.data.tags["medlake.run_id"] == "manual__test"
    assert run.data.tags["medlake.lineage_run_ids"] == "run-1"


def test_the_run_logs_every_clinical_metric_and_they_agree(trained):
    _, _, uri, result = trained
    logged = MlflowClient(uri).get_run(result.run_id).data.metrics
    assert METRICS <= set(logged), METRICS - set(logged)
    assert set(logged) - set(result.metrics) == {"cv_roc_auc"}, set(result.metrics) ^ set(logged)
    assert {k: logged[k] for k in result.metrics} == pytest.approx(result.metrics, nan_ok=True)
    assert logged["roc_auc"] > 0.65  # the planted signal is learnable without the leaking labs
    assert logged["roc_auc_ci_low"] <= logged["roc_auc"] <= logged["roc_auc_ci_high"]
    assert logged["tp"] + logged["fp"] + logged["tn"] + logged["fn"] == logged["rows_test"] == 80
    assert logged["sensitivity"] == pytest.approx(logged["tp"] / (logged["tp"] + logged["fn"]))
    p, sens, spec = logged["prevalence"], logged["sensitivity"], logged["specificity"]
    assert logged["ppv"] == pytest.approx(sens * p / (sens * p + (1 - spec) * (1 - p)))
    assert logged["conformal_coverage"] >= 0.75
    folds = MlflowClient(uri).get_metric_history(result.run_id, "cv_roc_auc")
    assert [f.step for f in folds] == [0, 1, 2, 3, 4]


def test_leaking_columns_are_not_features(trained):
    _, _, uri, result = trained
    params = MlflowClient(uri).get_run(result.run_id).data.params
    features = params["features"].split(",")
    assert "body_weight_last" in features and "age_band" in features
    for leak in (
        "glucose_last",
        "hba1c_mean",
        "medication_count",
        "has_diabetes",
        "person_key",
        "_run_id",
    ):
        assert leak not in features
    assert params["threshold_method"] == "youden_j_on_calibration_split"
    assert params["class_weight"] == "balanced"


def test_the_run_has_its_artifacts(trained, tmp_path: Path):
    _, manifest, uri, result = trained
    client = MlflowClient(uri)
    assert ARTIFACTS <= {a.path for a in client.list_artifacts(result.run_id)}
    folder = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    matrix = json.loads((folder / "confusion_matrix.json").read_text())
    assert matrix["matrix"] == [[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]]
    assert (folder / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importances = json.loads((folder / "permutation_importance.json").read_text())["features"]
    assert {row["feature"] for row in importances} == set(result.params["features"].split(","))
    sets = json.loads((folder / "prediction_sets.json").read_text())
    assert sets["rows"] == 80 == sum(r["count"] for r in sets["by_truth_and_set"])
    assert {r["prediction_set"] for r in sets["by_truth_and_set"]} <= {"{0}", "{1}", "{0,1}", "{}"}
    # aggregates only: no person key (nor any per-person row) in any artifact
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".csv", ".txt", ".yaml"):
            assert "p01-" not in path.read_text(errors="replace"), path
    card = (folder / "model_card.md").read_text()
    for needed in (
        "readmission@1",
        manifest.content_hash,
        "## Intended use",
        "## Limits",
        "ROC AUC",
    ):
        assert needed in card


def test_the_model_is_registered_and_predicts(trained):
    lake, manifest, uri, result = trained
    client = MlflowClient(uri)
    version = client.get_model_version(result.model_name, result.model_version)
    assert result.model_name == "medlake.readmission.has_diabetes" and result.model_version == "1"
    assert version.run_id == result.run_id
    assert version.tags["medlake.dataset"] == "readmission@1"
    assert version.tags["medlake.content_hash"] == manifest.content_hash
    assert "Model card" in version.description

    mlflow.set_tracking_uri(uri)
    model = mlflow.sklearn.load_model(f"models:/{result.model_name}/{result.model_version}")
    frame = datasets.pull_table(lake, "readmission@1", role="ml").to_pandas()
    features = train.select_features(frame, train.task_for("has_diabetes"), key=manifest.key)
    X, _, _ = train.model_frame(frame, features, "has_diabetes")
    proba = model.predict_proba(X.head(5))[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()


def test_optuna_tunes_the_hyperparameters_when_asked(gold_rows):
    frame = gold_rows(400, seed=5).to_pandas()
    fitted = train.fit_and_evaluate(
        frame,
        train.task_for("has_diabetes"),
        key=("person_key",),
        optuna_trials=2,
        target_sensitivity=0.8,
    )
    assert fitted.results["optuna_trials"] == 2
    assert 0.5 < fitted.results["optuna_best_cv_roc_auc"] <= 1
    assert set(fitted.params) == set(train.DEFAULT_PARAMS)
    assert fitted.threshold_method == "sensitivity_at_least_0.8_on_calibration_split"


def test_too_few_positives_is_refused_with_the_counts(tmp_path: Path, gold_rows):
    lake = Lake(tmp_path / "lake")
    rows = gold_rows(100, seed=1)
    rows = rows.set_column(
        rows.schema.get_field_index("has_diabetes"), "has_diabetes", pa.array([False] * 100)
    )
    lake.write(GOLD, rows, mode="overwrite")
    datasets.publish(lake, GOLD, name="readmission", privacy=None)  # every row, as the counts below say
    with pytest.raises(
        train.TooFewLabels,
        match="cannot train on dataset readmission@1: 0 rows have has_diabetes and 100 do not",
    ):
        train.train(lake, "readmission@1", tracking_uri=train.default_tracking_uri(tmp_path))
