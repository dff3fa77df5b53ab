"""Errors that mean the data, not the machine, is wrong: retrying the task will not help."""

from __future__ import annotations


class BadDataError(RuntimeError):
    """A stage refused its input or its output (ledger imbalance, failed gate, failed dbt test)."""
