"""`medlake dataset ...` and `medlake train`, through the Typer apps medlake.cli registers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from pyarrow import feather
from typer.testing import CliRunner

from medlake.commands.ml import dataset_app, train
from medlake.lake import Lake

GOLD = "gold.ml_patient_features"


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(dataset_app, name="dataset")
    app.command("train")(train)
    return app


def _run(cli: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_command_has_help_with_an_example(cli):
    for command in (
        ["dataset", "publish"],
        ["dataset", "list"],
        ["dataset", "pull"],
        ["dataset", "diff"],
        ["train"],
    ):
        assert "Example:" in _run(cli, *command, "--help"), command


def test_publish_list_pull_and_diff(cli, lake: Lake, gold_rows, tmp_path: Path):
    root = str(lake.root)
    published = json.loads(
        _run(
            cli,
            "dataset",
            "publish",
            "ml_patient_features",
            "--name",
            "readmission",
            "--lake",
            root,
            "--json",
        )
    )
    assert published["ref"] == "readmission@1" and published["row_count"] == 400
    lake.write(GOLD, gold_rows(300, seed=2, weight_shift=15.0), mode="overwrite")
    assert "readmission@2" in _run(
        cli, "dataset", "publish", "ml_patient_features", "--name", "readmission", "--lake", root
    )

    listed = json.loads(_run(cli, "dataset", "list", "--lake", root, "--json"))
    assert [(d["ref"], d["delta_version"]) for d in listed] == [
        ("readmission@1", 0),
        ("readmission@2", 1),
    ]

    out = tmp_path / "r1.parquet"
    _run(
        cli,
        "dataset",
        "pull",
        "readmission@1",
        "--to",
        "parquet",
        "--out",
        str(out),
        "--role",
        "ml",
        "--lake",
        root,
    )
    assert pq.read_table(out).num_rows == 400
    arrow = tmp_path / "r2.arrow"
    _run(
        cli,
        "dataset",
        "pull",
        "readmission@2",
        "--to",
        "arrow",
        "--out",
        str(arrow),
        "--role",
        "ml",
        "--lake",
        root,
    )
    assert feather.read_table(arrow).num_rows == 300
    assert "300 rows x 22 columns" in _run(
        cli, "dataset", "pull", "readmission@2", "--to", "pandas", "--role", "ml", "--lake", root
    )

    report = json.loads(
        _run(cli, "dataset", "diff", "readmission@1", "readmission@2", "--lake", root, "--json")
    )
    assert report["rows_a"] == 400 and report["rows_b"] == 300
    assert (
        report["features"][0]["column"].startswith("body_weight")
        and report["features"][0]["level"] == "major"
    )
    assert "body_weight_last" in _run(
        cli, "dataset", "diff", "readmission@1", "readmission@2", "--lake", root
    )


def test_errors_are_one_clear_line_with_an_exit_code(cli, lake: Lake):
    root = str(lake.root)
    _run(cli, "dataset", "publish", "ml_patient_features", "--name", "readmission", "--lake", root)
    refused = CliRunner().invoke(
        cli, ["dataset", "pull", "readmission@1", "--role", "marketing", "--lake", root]
    )
    assert refused.exit_code == 1 and "may not act as role 'marketing'" in refused.output
    assert "audited" in refused.output
    unreachable = CliRunner().invoke(
        cli, ["dataset", "publish", "ml_patient_features", "--name", "tiny", "--k", "1000", "--lake", root]
    )
    assert unreachable.exit_code == 1 and "dataset tiny was not published" in unreachable.output
    assert "cannot meet k=1000" in unreachable.output
    assert "tiny" not in _run(cli, "dataset", "list", "--lake", root)
    missing = CliRunner().invoke(
        cli, ["dataset", "pull", "readmission@5", "--role", "ml", "--lake", root]
    )
    assert missing.exit_code == 1 and "no version 5" in missing.output


def test_train_prints_the_mlflow_run_id_and_metrics(cli, lake: Lake, tmp_path: Path):
    root = str(lake.root)
    _run(cli, "dataset", "publish", "ml_patient_features", "--name", "readmission", "--lake", root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    printed = _run(
        cli, "train", "--lake", root, "--dataset", "readmission@1", "--tracking-uri", uri, "--json"
    )
    result = json.loads(printed)
    assert len(result["run_id"]) == 32 and result["model_version"] == "1"
    assert {"roc_auc", "sensitivity", "specificity", "brier"} <= set(result["metrics"])
