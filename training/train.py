"""Train a screening model on a published dataset, tracked in MLflow.

    result = train(lake, "patient_features@1", tracking_uri="sqlite:////srv/mlflow/mlflow.db")

The default task predicts ``has_diabetes`` — a coded, not refuted diagnosis of type 1 or 2
diabetes — from what a routine visit records about a person: age band, sex, weight, heart
rate, blood pressure, creatinine, hypertension, encounter count. Left out, because they leak
the label: glucose and HbA1c (they are the diagnostic criteria, so the model would relearn
the definition), medication counts (they include the drugs ordered *for* the diagnosis) and
``is_deceased`` (not known for the living people a screening model is meant for). The
intended use is to rank people without a diabetes code for an HbA1c test.

How the rows are used (stratified on the label; the test fold is never resampled):

- 60 % train: a gradient-boosted tree model (scikit-learn ``HistGradientBoostingClassifier``)
  with balanced class weights, calibrated by ``CalibratedClassifierCV`` (a Platt sigmoid fit
  on 5-fold out-of-fold scores) so the probabilities mean what they say despite the weights;
- 20 % calibration: the decision threshold (Youden's J, or the highest threshold reaching a
  target sensitivity) and the split-conformal cut-off are chosen here, never on the test fold;
- 20 % test: every reported metric, bootstrap intervals, per-group results, prediction sets;
- all rows: stratified 5-fold cross-validation of the uncalibrated model (mean ± sd ROC AUC).

Per-group results use the first of :data:`GROUP_COLUMNS` the dataset has: the ML mart has no
site or source column yet, so today that is ``gender``.

Everything is logged to MLflow (dataset input with its Delta version and content hash,
parameters, metrics, artifacts, a model card) and the model is registered in the model
registry. The pure metric functions are in :mod:`medlake.training.metrics`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlake.errors import BadDataError
from medlake.lake import Lake
from medlake.training import datasets
from medlake.training import metrics as m

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

#: five-year bands of the ML mart, youngest first (dbt `age_band` accepted values)
AGE_BANDS: tuple[str, ...] = (
    *(f"{low}-{low + 4}" for low in range(0, 90, 5)),
    "90+",
)
#: columns that describe a person's group, first one present wins (the mart has no site yet)
GROUP_COLUMNS: tuple[str, ...] = ("site", "site_key", "source", "_source_kind", "gender")

DEFAULT_PARAMS: dict[str, float | int] = {
    "learning_rate": 0.1,
    "max_iter": 100,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
}
MIN_PER_CLASS = 25
#: types of the calibrated model that skops (MLflow's safe model format) must be told to load;
#: the list is stored with the model, so `mlflow.sklearn.load_model` needs nothing more
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.model_selection._split.StratifiedKFold",
)
BOOTSTRAP_RESAMPLES = 1000
SINGLE_THREAD_BELOW_ROWS = 100_000


@dataclass(frozen=True)
class Task:
    """What a model predicts, which columns would leak it, and what it is for."""

    label: str
    meaning: str
    excluded: Mapping[str, str]  # column -> why a model of this label must not use it
    intended_use: str
    limits: tuple[str, ...] = ()


_COMMON_LIMITS = (
    (
        "The label is a coded diagnosis: people with the condition but no code count as negatives, "
        "so sensitivity against true disease is lower than reported."
    ),
    "Internal validation only (one lake, one time); not validated at another site or period.",
    "Small groups (per sex, per site) have wide intervals; check the per-group table before use.",
    "Not a diagnostic test: a flag means 'test this person', never 'this person has it'.",
)

TASKS: dict[str, Task] = {
    "has_diabetes": Task(
        label="has_diabetes",
        meaning="a diagnosis of type 1 or 2 diabetes (ICD-10-CM E10-E11, SNOMED CT 44054006), not refuted",
        excluded={
            "glucose_last": "leaks the label: a diagnostic criterion of diabetes (fasting glucose >= 126 mg/dL)",
            "glucose_mean": "leaks the label: a diagnostic criterion of diabetes (fasting glucose >= 126 mg/dL)",
            "hba1c_last": "leaks the label: a diagnostic criterion of diabetes (HbA1c >= 6.5 %)",
            "hba1c_mean": "leaks the label: a diagnostic criterion of diabetes (HbA1c >= 6.5 %)",
            "medication_count": "leaks the label: counts the drugs ordered to treat diabetes after the diagnosis",
            "medication_order_count": "leaks the label: counts the diabetes drug orders that follow the diagnosis",
            "is_deceased": "not known for the living people the model screens",
        },
        intended_use=(
            "Rank people without a diabetes code by their chance of having one, to decide who is "
            "offered an HbA1c test first. For research and pipeline validation on de-identified data."
        ),
        limits=_COMMON_LIMITS,
    ),
    "has_hypertension": Task(
        label="has_hypertension",
        meaning="a diagnosis of essential hypertension (ICD-10-CM I10, SNOMED CT 38341003), not refuted",
        excluded={
            "systolic_bp_last": "leaks the label: blood pressure is the diagnostic criterion of hypertension",
            "systolic_bp_mean": "leaks the label: blood pressure is the diagnostic criterion of hypertension",
            "medication_count": "leaks the label: counts the antihypertensives ordered after the diagnosis",
            "medication_order_count": "leaks the label: counts the antihypertensive orders after the diagnosis",
            "is_deceased": "not known for the living people the model screens",
        },
        intended_use="Rank people without a hypertension code for a blood pressure re-check.",
        limits=_COMMON_LIMITS,
    ),
}


class TooFewLabels(BadDataError):
    """The dataset has too few rows of one class to train and evaluate honestly."""


@dataclass(frozen=True)
class TrainResult:
    """An MLflow run: its id, the metrics it logged and the registered model version."""

    run_id: str
    metrics: dict[str, float]
    dataset: str = ""
    model_name: str = ""
    model_version: str = ""
    experiment_id: str = ""
    threshold: float = math.nan
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Features:
    """The model's input columns by kind; everything else in the dataset, with why it is left out."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    ordinal: tuple[str, ...]
    excluded: Mapping[str, str]

    @property
    def columns(self) -> list[str]:
        return [*self.ordinal, *self.categorical, *self.numeric]


def default_tracking_uri(home: Path) -> str:
    """The local MLflow tracking database below a medlake home: ``sqlite:///<home>/mlflow/mlflow.db``."""
    return f"sqlite:///{Path(home).resolve() / 'mlflow' / 'mlflow.db'}"


def task_for(label: str) -> Task:
    """The known task of ``label``, or a bare one (no leakage review) for another boolean column."""
    return TASKS.get(
        label,
        Task(
            label=label,
            meaning=f"the boolean column {label} of the dataset",
            excluded={},
            intended_use="Exploratory: no leakage review was done for this label.",
            limits=_COMMON_LIMITS,
        ),
    )


# ---------------------------------------------------------------------------------------------
# the training job


def train(
    lake: Lake,
    dataset: str,
    *,
    tracking_uri: str,
    label: str = "has_diabetes",
    seed: int = 0,
    optuna_trials: int = 0,
    target_sensitivity: float | None = None,
    conformal_alpha: float = 0.1,
    hyperparameters: Mapping[str, float | int] | None = None,
    role: str = "ml",
    run_id: str | None = None,
    registered_model_name: str | None = None,
    artifact_root: Path | None = None,
    audit: datasets.PullAudit | None = None,
) -> TrainResult:
    """Train, evaluate and register a model of ``label`` on dataset ``name@version``; log it all to MLflow.

    The rows are pulled (content hash verified) as ``role``. The threshold is Youden's J on
    the calibration split, or with ``target_sensitivity`` the highest threshold reaching it
    there. ``optuna_trials > 0`` tunes the hyperparameters first (Bayesian TPE, 3-fold CV ROC
    AUC on the train split); ``hyperparameters`` overrides :data:`DEFAULT_PARAMS` otherwise.
    A SQLite ``tracking_uri`` keeps artifacts in ``artifact_root`` (default: ``artifacts/``
    next to the database file). ``run_id`` (the Airflow run that trains) is tagged
    ``medlake.run_id``. Sets MLflow's tracking and registry URI for this process. With
    ``audit``, the dataset pull is audited.
    """
    manifest = datasets.manifest(lake, dataset)
    frame = datasets.pull_table(lake, manifest.ref, role=role, audit=audit).to_pandas()
    with openmp_threads_for(len(frame)):
        try:
            fitted = fit_and_evaluate(
                frame,
                task_for(label),
                key=manifest.key,
                seed=seed,
                optuna_trials=optuna_trials,
                target_sensitivity=target_sensitivity,
                conformal_alpha=conformal_alpha,
                hyperparameters=hyperparameters,
            )
        except TooFewLabels as exc:
            raise TooFewLabels(f"cannot train on dataset {manifest.ref}: {exc}") from exc
        return _log_run(
            fitted,
            frame,
            manifest,
            lake=lake,
            tracking_uri=tracking_uri,
            artifact_root=artifact_root,
            run_id=run_id,
            model_name=registered_model_name or f"medlake.{manifest.name}.{label}",
        )


@dataclass(frozen=True)
class Fitted:
    """A calibrated model and everything measured about it, before anything is logged."""

    task: Task
    features: Features
    model: Any
    params: dict[str, float | int]
    threshold: float
    threshold_method: str
    conformal_alpha: float
    conformal_cutoff: float
    results: dict[str, float]
    cv_roc_auc: list[float]
    group_column: str | None
    groups: list[dict[str, Any]]
    importance: list[dict[str, Any]]
    X_test: pd.DataFrame
    y_test: np.ndarray
    p_test: np.ndarray


def fit_and_evaluate(
    frame: pd.DataFrame,
    task: Task,
    *,
    key: Sequence[str] = (),
    seed: int = 0,
    optuna_trials: int = 0,
    target_sensitivity: float | None = None,
    conformal_alpha: float = 0.1,
    hyperparameters: Mapping[str, float | int] | None = None,
) -> Fitted:
    """Split, (tune,) fit, calibrate, choose the threshold and conformal cut-off, and measure."""
    with openmp_threads_for(len(frame)):
        return _fit_and_evaluate(
            frame,
            task,
            key=key,
            seed=seed,
            optuna_trials=optuna_trials,
            target_sensitivity=target_sensitivity,
            conformal_alpha=conformal_alpha,
            hyperparameters=hyperparameters,
        )


@contextmanager
def openmp_threads_for(rows: int) -> Iterator[None]:
    """One OpenMP thread for tables under :data:`SINGLE_THREAD_BELOW_ROWS` rows, all threads above.

    Threads cost more than they save on small tables: gradient boosting on a few hundred rows
    ran 20x slower with 2 threads than with 1 on a busy 2-core machine.
    """
    # load scikit-learn's OpenMP runtime first: threadpoolctl limits only loaded libraries
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(
        limits=1 if rows < SINGLE_THREAD_BELOW_ROWS else None, user_api="openmp"
    ):
        yield


def _fit_and_evaluate(
    frame: pd.DataFrame,
    task: Task,
    *,
    key: Sequence[str],
    seed: int,
    optuna_trials: int,
    target_sensitivity: float | None,
    conformal_alpha: float,
    hyperparameters: Mapping[str, float | int] | None,
) -> Fitted:
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    features = select_features(frame, task, key=key)
    X, y, unlabeled = model_frame(frame, features, task.label)
    _check_classes(y, task.label)
    prevalence = float(y.mean())

    X_dev, X_test, y_dev, y_test = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=seed
    )
    X_train, X_cal, y_train, y_cal = train_test_split(
        X_dev, y_dev, test_size=0.25, stratify=y_dev, random_state=seed
    )

    params = {**DEFAULT_PARAMS, **(hyperparameters or {})}
    tuning: dict[str, float] = {}
    if optuna_trials > 0:
        params, best = tune(X_train, y_train, features, trials=optuna_trials, seed=seed)
        tuning = {"optuna_trials": float(optuna_trials), "optuna_best_cv_roc_auc": best}

    model = calibrated(features, params, seed=seed)
    model.fit(X_train, y_train)
    p_cal = model.predict_proba(X_cal)[:, 1]
    p_test = model.predict_proba(X_test)[:, 1]
    if target_sensitivity is None:
        threshold, threshold_method = (
            m.youden_threshold(y_cal, p_cal),
            "youden_j_on_calibration_split",
        )
    else:
        threshold = m.threshold_for_sensitivity(y_cal, p_cal, target_sensitivity)
        threshold_method = f"sensitivity_at_least_{target_sensitivity:g}_on_calibration_split"
    cutoff = m.conformal_quantile(y_cal, p_cal, alpha=conformal_alpha)

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv = cross_validate(build_model(features, params, seed=seed), X, y, cv=folds, scoring="roc_auc")
    cv_auc = [float(s) for s in cv["test_score"]]
    cv_mean, cv_sd = m.mean_sd(cv_auc)

    truth = y_test.to_numpy()
    results = evaluate(truth, p_test, threshold=threshold, prevalence=prevalence, seed=seed)
    results.update(_conformal(truth, p_test, cutoff, conformal_alpha))
    results.update({"cv_roc_auc_mean": cv_mean, "cv_roc_auc_sd": cv_sd, **tuning})
    results.update(
        {
            "rows": float(len(frame)),
            "rows_label_missing": float(unlabeled),
            "rows_train": float(len(y_train)),
            "rows_calibration": float(len(y_cal)),
            "rows_test": float(len(y_test)),
            "test_prevalence": float(truth.mean()),
        }
    )
    group_column = next((c for c in GROUP_COLUMNS if c in frame.columns), None)
    groups = (
        per_group(frame.loc[X_test.index, group_column], truth, p_test, threshold)
        if group_column
        else []
    )
    for g in groups:
        for metric in ("n", "positives", "roc_auc", "sensitivity", "specificity"):
            results[f"group.{group_column}.{_metric_key(g['group'])}.{metric}"] = float(g[metric])

    return Fitted(
        task=task,
        features=features,
        model=model,
        params=params,
        threshold=threshold,
        threshold_method=threshold_method,
        conformal_alpha=conformal_alpha,
        conformal_cutoff=cutoff,
        results=results,
        cv_roc_auc=cv_auc,
        group_column=group_column,
        groups=groups,
        importance=permutation_importances(model, X_test, y_test, seed=seed),
        X_test=X_test,
        y_test=truth,
        p_test=p_test,
    )


def _log_run(
    fitted: Fitted,
    frame: pd.DataFrame,
    manifest: datasets.Manifest,
    *,
    lake: Lake,
    tracking_uri: str,
    artifact_root: Path | None,
    run_id: str | None,
    model_name: str,
) -> TrainResult:
    """One MLflow run: the dataset input, parameters, metrics, artifacts, model card; the model registered."""
    # nothing may reach the network at run time (MLflow's usage telemetry would try)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    label = fitted.task.label
    params: dict[str, str] = {
        "dataset": manifest.ref,
        "label": label,
        "model": "HistGradientBoostingClassifier",
        "class_weight": "balanced",
        "calibration": "sigmoid (Platt) on 5-fold out-of-fold scores of the train split",
        "split": "stratified 60/20/20 train/calibration/test",
        "threshold_method": fitted.threshold_method,
        "conformal_alpha": f"{fitted.conformal_alpha:g}",
        "features": ",".join(fitted.features.columns),
        "excluded_features": ",".join(sorted(fitted.features.excluded)),
        "group_column": fitted.group_column or "",
        **{f"hp.{k}": str(v) for k, v in fitted.params.items()},
    }
    tags = {
        "medlake.dataset": manifest.ref,
        "medlake.table": manifest.table,
        "medlake.delta_version": str(manifest.delta_version),
        "medlake.content_hash": manifest.content_hash,
        "medlake.deid_level": manifest.deid_level,
        "medlake.lineage_run_ids": ",".join(manifest.lineage_run_ids)[:4900],
        "medlake.label": label,
        **({"medlake.run_id": run_id} if run_id else {}),
    }

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = _experiment(tracking_uri, f"medlake/{manifest.name}", artifact_root)
    run_name = f"{label} on {manifest.ref}"
    with (
        warnings.catch_warnings(),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run,
    ):
        # MLflow's hint that integer columns cannot hold nulls: the dataset schema is for the record
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        mlflow.log_input(
            _mlflow_dataset(lake, manifest, frame, label),
            context="training",
            tags={
                "medlake.dataset_version": str(manifest.version),
                "medlake.delta_version": str(manifest.delta_version),
                "medlake.table": manifest.table,
                "medlake.content_hash": manifest.content_hash,
            },
        )
        mlflow.log_params(params)
        mlflow.log_metrics(fitted.results)
        for fold, score in enumerate(fitted.cv_roc_auc):
            mlflow.log_metric("cv_roc_auc", score, step=fold)
        _log_artifacts(fitted)
        card = model_card(manifest=manifest, fitted=fitted, params=params, run_id=run.info.run_id)
        mlflow.log_text(card, "model_card.md")
        info = _log_model(fitted.model, fitted.X_test, model_name)
        version = str(info.registered_model_version or "")
        if version:
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            client.update_model_version(model_name, version, description=card)
            for key, value in (
                ("dataset", manifest.ref),
                ("content_hash", manifest.content_hash),
                ("threshold", f"{fitted.threshold:.6g}"),
            ):
                client.set_model_version_tag(model_name, version, f"medlake.{key}", value)

    return TrainResult(
        run_id=run.info.run_id,
        metrics=dict(fitted.results),
        dataset=manifest.ref,
        model_name=model_name,
        model_version=version,
        experiment_id=experiment_id,
        threshold=fitted.threshold,
        params=params,
    )


# ---------------------------------------------------------------------------------------------
# features and the model


def select_features(frame: pd.DataFrame, task: Task, *, key: Sequence[str] = ()) -> Features:
    """The columns a model of ``task`` may use, and why every other column is left out."""
    excluded: dict[str, str] = {task.label: "the label"}
    for column in key:
        excluded[column] = "row key (a pseudonym, not a property of the person)"
    for column in frame.columns:
        if column.startswith("_"):
            excluded.setdefault(column, "lineage, not a property of the person")
    for column, why in task.excluded.items():
        if column in frame.columns:
            excluded.setdefault(column, why)
    if task.label not in frame.columns:
        raise datasets.DatasetError(f"label {task.label} is not a column of the dataset")
    numeric: list[str] = []
    categorical: list[str] = []
    ordinal: list[str] = []
    for column in frame.columns:
        if column in excluded:
            continue
        series = frame[column]
        if column == "age_band":
            ordinal.append(column)
        elif series.dtype == bool or _is_numeric(series):
            numeric.append(column)
        elif series.dtype == object or str(series.dtype).startswith(("string", "category")):
            if _looks_boolean(series):
                numeric.append(column)
            elif series.nunique(dropna=True) <= 50:
                categorical.append(column)
            else:
                excluded[column] = "free text or identifier (more than 50 distinct values)"
        else:
            excluded[column] = f"type {series.dtype} is not used"
    return Features(tuple(numeric), tuple(categorical), tuple(ordinal), excluded)


def model_frame(
    frame: pd.DataFrame, features: Features, label: str
) -> tuple[pd.DataFrame, pd.Series, int]:
    """(X, y, rows without a label): numbers as floats (booleans 0/1), categories as strings."""
    import pandas as pd

    labeled = frame[frame[label].notna()]
    X = pd.DataFrame(index=labeled.index)
    for column in features.numeric:
        values = labeled[column]
        if values.dtype == object:  # booleans or numbers with nulls
            values = values.map(_as_number)
        X[column] = pd.to_numeric(values, errors="coerce").astype(float)
    for column in (*features.ordinal, *features.categorical):
        X[column] = (
            labeled[column].astype(object).where(labeled[column].notna(), "missing").astype(str)
        )
    y = labeled[label].astype(bool).astype(int)
    return X[features.columns], y, int(len(frame) - len(labeled))


def build_model(features: Features, params: Mapping[str, float | int], *, seed: int) -> Pipeline:
    """Encode the columns, then gradient-boosted trees with balanced class weights."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    encode = ColumnTransformer(
        [
            (
                "age_band",
                OrdinalEncoder(
                    categories=[list(AGE_BANDS)] * len(features.ordinal),
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                ),
                list(features.ordinal),
            ),
            (
                "categories",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(features.categorical),
            ),
            ("numbers", "passthrough", list(features.numeric)),
        ],
        verbose_feature_names_out=False,
    )
    trees = HistGradientBoostingClassifier(
        learning_rate=float(params["learning_rate"]),
        max_iter=int(params["max_iter"]),
        max_leaf_nodes=int(params["max_leaf_nodes"]),
        min_samples_leaf=int(params["min_samples_leaf"]),
        l2_regularization=float(params["l2_regularization"]),
        class_weight="balanced",
        early_stopping=False,
        random_state=seed,
    )
    return Pipeline([("encode", encode), ("trees", trees)])


def calibrated(features: Features, params: Mapping[str, float | int], *, seed: int) -> Any:
    """The model with Platt-calibrated probabilities, the sigmoid fit on 5-fold out-of-fold scores."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    return CalibratedClassifierCV(
        build_model(features, params, seed=seed),
        method="sigmoid",
        cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=seed),
        # one model fit on every train row, calibrated on its 5-fold out-of-fold scores
        # (not an ensemble of 5: a fifth of the size and prediction time)
        ensemble=False,
    )


def tune(
    X: pd.DataFrame, y: pd.Series, features: Features, *, trials: int, seed: int
) -> tuple[dict[str, float | int], float]:
    """Hyperparameters by Optuna (TPE, seeded) maximizing 3-fold CV ROC AUC; and the best score."""
    import optuna
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, float | int] = {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            "max_iter": trial.suggest_int("max_iter", 30, 200),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 4, 31),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 40),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
        }
        scores = cross_val_score(
            build_model(features, params, seed=seed), X, y, cv=folds, scoring="roc_auc"
        )
        return float(scores.mean())

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return dict(study.best_params), float(study.best_value)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    y: np.ndarray, p: np.ndarray, *, threshold: float, prevalence: float, seed: int
) -> dict[str, float]:
    """Test-fold metrics at ``threshold``; PPV/NPV at the dataset's ``prevalence``; 95 % bootstrap CIs."""
    c = m.confusion_at(y, p, threshold)
    ppv, npv = m.predictive_values(c.sensitivity, c.specificity, prevalence)
    auc_low, auc_high = m.bootstrap_ci(y, p, m.roc_auc, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    sens_low, sens_high = m.bootstrap_ci(
        y,
        p,
        lambda t, q: m.confusion_at(t, q, threshold).sensitivity,
        resamples=BOOTSTRAP_RESAMPLES,
        seed=seed,
    )
    spec_low, spec_high = m.bootstrap_ci(
        y,
        p,
        lambda t, q: m.confusion_at(t, q, threshold).specificity,
        resamples=BOOTSTRAP_RESAMPLES,
        seed=seed,
    )
    return {
        "threshold": threshold,
        "sensitivity": c.sensitivity,
        "sensitivity_ci_low": sens_low,
        "sensitivity_ci_high": sens_high,
        "specificity": c.specificity,
        "specificity_ci_low": spec_low,
        "specificity_ci_high": spec_high,
        "roc_auc": m.roc_auc(y, p),
        "roc_auc_ci_low": auc_low,
        "roc_auc_ci_high": auc_high,
        "pr_auc": m.pr_auc(y, p),
        "brier": m.brier(y, p),
        "ece": m.expected_calibration_error(y, p),
        "prevalence": prevalence,
        "ppv": ppv,
        "npv": npv,
        "tp": float(c.tp),
        "fp": float(c.fp),
        "tn": float(c.tn),
        "fn": float(c.fn),
    }


def _conformal(y: np.ndarray, p: np.ndarray, q: float, alpha: float) -> dict[str, float]:
    sets = m.prediction_sets(p, q)
    return {
        "conformal_quantile": q if math.isfinite(q) else 1.0,
        "conformal_target_coverage": 1.0 - alpha,
        "conformal_coverage": m.coverage(y, sets),
        "conformal_unsure_share": float(np.mean([len(s) == 2 for s in sets])),
        "conformal_empty_share": float(np.mean([len(s) == 0 for s in sets])),
    }


def per_group(
    groups: pd.Series, truth: np.ndarray, p: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Test-fold results per group (site, source or sex): size, positives, ROC AUC, sensitivity, specificity."""
    rows = []
    values = groups.astype(object).where(groups.notna(), "missing").astype(str).to_numpy()
    for group in sorted(set(values)):
        inside = values == group
        c = m.confusion_at(truth[inside], p[inside], threshold)
        rows.append(
            {
                "group": group,
                "n": int(inside.sum()),
                "positives": int(truth[inside].sum()),
                "roc_auc": m.roc_auc(truth[inside], p[inside]),
                "sensitivity": c.sensitivity,
                "specificity": c.specificity,
            }
        )
    return rows


def permutation_importances(
    model: Any, X: pd.DataFrame, y: pd.Series, *, seed: int
) -> list[dict[str, Any]]:
    """Drop in test ROC AUC when each feature is shuffled (mean and sd of 5 shuffles), largest first."""
    from sklearn.inspection import permutation_importance

    found = permutation_importance(
        model, X, y, scoring="roc_auc", n_repeats=5, random_state=seed, n_jobs=1
    )
    rows = [
        {"feature": column, "auc_drop_mean": float(mean), "auc_drop_sd": float(sd)}
        for column, mean, sd in zip(
            X.columns, found.importances_mean, found.importances_std, strict=True
        )
    ]
    return sorted(rows, key=lambda r: -r["auc_drop_mean"])


# ---------------------------------------------------------------------------------------------
# MLflow


def mlflow_digest(content_hash: str) -> str:
    """The dataset digest MLflow stores: the content hash's first 32 hex digits.

    MLflow's ``datasets.digest`` column is VARCHAR(36): SQLite ignores that, PostgreSQL (the
    production tracking store) would refuse a 64-digit SHA-256. The full hash is an input tag.
    """
    return content_hash[:32]


def _experiment(tracking_uri: str, name: str, artifact_root: Path | None) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        root = artifact_root or db.parent / "artifacts"
        location = (Path(root).resolve() / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)).as_uri()
    elif artifact_root is not None:
        location = Path(artifact_root).resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _mlflow_dataset(
    lake: Lake, manifest: datasets.Manifest, frame: pd.DataFrame, label: str
) -> Any:
    """The pulled rows as an MLflow dataset named ``name@version``, sourced at the pinned Delta version."""
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    # MLflow leaves a Delta version 0 out of the source (a falsy check): the input tag
    # medlake.delta_version is the record that always holds it
    source = DeltaDatasetSource(
        path=lake.uri(manifest.table), delta_table_version=manifest.delta_version
    )
    return from_pandas(
        frame,
        source=source,
        targets=label,
        name=manifest.ref,
        digest=mlflow_digest(manifest.content_hash),
    )


def _log_model(model: Any, X_test: pd.DataFrame, model_name: str) -> Any:
    import mlflow
    import sklearn
    from mlflow.models import infer_signature

    signature = infer_signature(X_test, model.predict_proba(X_test))
    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        registered_model_name=model_name,
        pyfunc_predict_fn="predict_proba",
        # given, not inferred: inference imports the model in a subprocess (slow)
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"],
        await_registration_for=0,
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
    )


def _log_artifacts(fitted: Fitted) -> None:
    """Confusion matrix, reliability table and plot, importances, per-group table, features, and the
    prediction sets counted by truth: aggregates only. MLflow sits outside the access policy and
    the audit log, so no per-person row (key, truth, probability) goes there."""
    import mlflow

    results, threshold, y_test, p_test = (
        fitted.results,
        fitted.threshold,
        fitted.y_test,
        fitted.p_test,
    )

    mlflow.log_dict(
        {
            "threshold": threshold,
            "positive": fitted.task.label,
            "rows": "truth (0, 1)",
            "columns": "prediction (0, 1)",
            "matrix": [
                [int(results["tn"]), int(results["fp"])],
                [int(results["fn"]), int(results["tp"])],
            ],
            **{k: int(results[k]) for k in ("tp", "fp", "tn", "fn")},
        },
        "confusion_matrix.json",
    )
    table = m.reliability(y_test, p_test)
    mlflow.log_dict(
        {"bins": table, "brier": results["brier"], "ece": results["ece"]}, "reliability.json"
    )
    mlflow.log_figure(_reliability_figure(table, y_test, p_test), "reliability.png")
    mlflow.log_dict(
        {"scoring": "roc_auc", "repeats": 5, "features": fitted.importance},
        "permutation_importance.json",
    )
    mlflow.log_dict(
        {"group_column": fitted.group_column, "groups": fitted.groups}, "per_group.json"
    )
    mlflow.log_dict(
        {
            "used": fitted.features.columns,
            "excluded": dict(sorted(fitted.features.excluded.items())),
        },
        "features.json",
    )
    sets = m.prediction_sets(p_test, fitted.conformal_cutoff)
    counts: dict[tuple[int, str], int] = {}
    for truth, members in zip(y_test.astype(int), sets, strict=True):
        label = "{" + ",".join(map(str, members)) + "}"
        counts[(int(truth), label)] = counts.get((int(truth), label), 0) + 1
    mlflow.log_dict(
        {
            "rows": len(y_test),
            "unsure": int(sum(len(s) != 1 for s in sets)),
            "by_truth_and_set": [
                {"truth": truth, "prediction_set": label, "count": n} for (truth, label), n in sorted(counts.items())
            ],
        },
        "prediction_sets.json",
    )


def _reliability_figure(table: list[dict[str, float]], y: np.ndarray, p: np.ndarray) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 6))
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(
        [r["mean_predicted"] for r in table],
        [r["observed_rate"] for r in table],
        marker="o",
        label="model",
    )
    top.set_ylabel("observed rate")
    top.set_title(f"Reliability on the test fold (Brier {m.brier(y, p):.3f})")
    top.legend(loc="upper left")
    bottom.hist(p, bins=20, range=(0, 1), color="steelblue")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("rows")
    figure.tight_layout()
    return figure


def model_card(
    *, manifest: datasets.Manifest, fitted: Fitted, params: Mapping[str, str], run_id: str
) -> str:
    """The model card (Markdown): dataset, label, metrics with intervals, groups, intended use, limits."""
    r, task, features, groups = fitted.results, fitted.task, fitted.features, fitted.groups

    def f(key: str, digits: int = 3) -> str:
        value = r.get(key, math.nan)
        return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    lines = [
        f"# Model card: {task.label} on {manifest.ref}",
        "",
        f"MLflow run `{run_id}`.",
        "",
        "## Dataset",
        (
            f"- `{manifest.ref}`: `{manifest.table}` at Delta version {manifest.delta_version}, "
            f"{manifest.row_count} rows, de-identification `{manifest.deid_level}`"
        ),
        f"- content hash (`{manifest.hash_method}`): `{manifest.content_hash}`",
        f"- built by pipeline run(s): {', '.join(manifest.lineage_run_ids) or 'unknown'}",
        "",
        "## Label and features",
        f"- label `{task.label}`: {task.meaning}; prevalence {f('prevalence')}",
        f"- features: {', '.join(f'`{c}`' for c in features.columns)}",
        "- left out:",
        *(f"  - `{c}`: {why}" for c, why in sorted(features.excluded.items())),
        "",
        "## Training",
        f"- {params['model']}, class weights `{params['class_weight']}`; {params['calibration']}",
        f"- split: {params['split']}; threshold: {params['threshold_method']} = {f('threshold')}",
        "",
        "## Performance on the held-out test fold",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
        f"| ROC AUC | {f('roc_auc')} | {f('roc_auc_ci_low')}-{f('roc_auc_ci_high')} |",
        f"| PR AUC (baseline = prevalence {f('test_prevalence')}) | {f('pr_auc')} | |",
        f"| sensitivity | {f('sensitivity')} | {f('sensitivity_ci_low')}-{f('sensitivity_ci_high')} |",
        f"| specificity | {f('specificity')} | {f('specificity_ci_low')}-{f('specificity_ci_high')} |",
        f"| PPV at dataset prevalence | {f('ppv')} | |",
        f"| NPV at dataset prevalence | {f('npv')} | |",
        f"| Brier score | {f('brier')} | |",
        f"| expected calibration error | {f('ece')} | |",
        f"| 5-fold CV ROC AUC (all rows) | {f('cv_roc_auc_mean')} ± {f('cv_roc_auc_sd')} | |",
        "",
        f"Confusion at the threshold: TP {int(r['tp'])}, FP {int(r['fp'])}, TN {int(r['tn'])}, FN {int(r['fn'])}.",
        "",
        "## Uncertainty per prediction",
        (
            f"Split-conformal prediction sets at {f('conformal_target_coverage', 2)} target coverage: "
            f"empirical coverage {f('conformal_coverage')}; {f('conformal_unsure_share')} of test rows "
            "get both labels (the model is unsure: decide on other grounds), "
            f"{f('conformal_empty_share')} get none. Counts by truth and set: `prediction_sets.json` (no per-person rows leave the lake)."
        ),
        "",
    ]
    if groups:
        lines += [
            f"## Per {fitted.group_column} (test fold)",
            "| group | n | positives | ROC AUC | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
            *(
                f"| {g['group']} | {g['n']} | {g['positives']} | {_fmt(g['roc_auc'])} | "
                f"{_fmt(g['sensitivity'])} | {_fmt(g['specificity'])} |"
                for g in groups
            ),
            "",
        ]
    lines += [
        "## Global explanation (permutation importance, test ROC AUC drop)",
        *(
            f"- `{row['feature']}`: {row['auc_drop_mean']:.3f} ± {row['auc_drop_sd']:.3f}"
            for row in fitted.importance[:10]
        ),
        "",
        "## Intended use",
        task.intended_use,
        "",
        "## Limits",
        *(f"- {limit}" for limit in task.limits),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# helpers


def _check_classes(y: pd.Series, label: str) -> None:
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if min(positives, negatives) < MIN_PER_CLASS:
        raise TooFewLabels(
            f"{positives} rows have {label} and {negatives} do not; training and an "
            f"honest evaluation need at least {MIN_PER_CLASS} of each"
        )


def _is_numeric(series: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series))


def _looks_boolean(series: pd.Series) -> bool:
    values = set(series.dropna().unique().tolist())
    return bool(values) and values <= {True, False}


def _as_number(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric_key(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. ]+", "_", value) or "_"


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
