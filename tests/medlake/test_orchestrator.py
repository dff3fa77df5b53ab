"""Why a pipeline run failed, as `medlake run` reports it: the lines of Airflow's output that
name the cause (the shapes below are from real `airflow dags test` logs of this project)."""

from __future__ import annotations

from medlake.orchestrator import FailureLines

LOG_LINE = "2026-12-07T07:13:49.582945Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1640"


def reasons(lines: list[str]) -> list[str]:
    seen = FailureLines()
    for line in lines:
        seen.see(line.strip())
    return seen.reasons()


def test_the_tasks_own_exception_is_the_reason_not_airflows_wrapper() -> None:
    found = reasons(
        [
            "medlake.expectations.gate.GateFailed: quality gate refused to promote; fix the cause upstream:",
            "  silver.encounters: class_mostly_known — 100.0% of rows fail (3 of 3)",
            '  File "dags/medlake_pipeline.py", line 29, in _call',
            "    raise AirflowFailException(str(exc)) from exc",
            "airflow.sdk.exceptions.AirflowFailException: quality gate refused to promote; fix the cause upstream:",
            "  silver.encounters: class_mostly_known — 100.0% of rows fail (3 of 3)",
            LOG_LINE,
        ]
    )
    assert found[0].startswith("medlake.expectations.gate.GateFailed: quality gate refused")
    assert "silver.encounters: class_mostly_known — 100.0% of rows fail (3 of 3)" in found
    assert not any(line.startswith("airflow.") for line in found)


INACTIVE = (
    "airflow.sdk.exceptions.AirflowInactiveAssetInInletOrOutletException: "
    "Task has the following inactive assets in its inlets or outlets: ..."
)


def test_an_airflow_exception_alone_is_reported_rather_than_nothing() -> None:
    assert reasons([LOG_LINE, INACTIVE, LOG_LINE]) == [INACTIVE]


def test_log_lines_end_a_message_and_repeats_are_reported_once() -> None:
    boom = "ValueError: landing file x.ndjson record 3: not valid JSON"
    assert reasons([boom, LOG_LINE, "  not part of it", boom]) == [boom]
