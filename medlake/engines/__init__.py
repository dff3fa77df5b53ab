"""One transform, two engines.

A transform is a pure function ``pa.Table -> Split`` (see :mod:`medlake.quarantine`). An engine
applies it to a Delta table and writes the accepted rows to another Delta table and the rest to
the quarantine table. The embedded engine (delta-rs + Polars, no JVM) is the default; the Spark
engine (delta-spark, ``mapInArrow``) runs the same function when a hospital outgrows one machine.
Tables written by either engine are the same Delta tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import pyarrow as pa

from medlake.quarantine import Split

Transform = Callable[[pa.Table], Split]


@dataclass(frozen=True)
class Applied:
    """What applying a transform wrote."""

    rows_in: int
    good: int
    quarantined: int
    target_version: int


class Engine(Protocol):
    """Applies a pure transform from one Delta table to another."""

    name: str

    def apply(
        self,
        fn: Transform,
        *,
        source_uri: str,
        target_uri: str,
        quarantine_uri: str,
        good_schema: pa.Schema,
        source_version: int | None = None,
        mode: Literal["append", "overwrite"] = "overwrite",
    ) -> Applied: ...
