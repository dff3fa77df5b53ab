"""Delivery volume: is this run's delivery of a source the size that source usually sends?

Hospitals deliver less on weekends and after outages, and one source's volume says nothing of
another's. So the gate compares like with like: the rows a run stages into a silver table *from
one source* (``_source_kind``) against a band learned from that source's own earlier deliveries
into the same table — the same weekday's when there are enough of them, else every day's. The
band is the median ± ``tolerance`` robust standard deviations (1.4826 × the median absolute
deviation, at least a tenth of the median). A source with fewer than ``min_history`` earlier
deliveries has no band yet and is not judged; a run that staged nothing from a source (nothing
new, a re-delivery, a source that did not send) is no delivery and neither judged nor learned.

Outside the band a finding is a warning (log, ledger, run summary); it stops the table only
where the policy names it (``MEDLAKE__GATE__VOLUME_BLOCK``). The counts of every delivery are kept
in the gate's ledger entry (``details.volume``), which is where the history is read from.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from medlake.lake import Lake
from medlake.registry import LEDGER

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: deliveries a band is learned from, newest first
WINDOW = 28


@dataclass(frozen=True)
class VolumePolicy:
    """Where an out-of-band volume blocks, and how a band is learned."""

    block: frozenset[str] = frozenset()
    min_history: int = 5
    tolerance: float = 3.0

    def blocks(self, table: str) -> bool:
        return "*" in self.block or table in self.block

    @staticmethod
    def parse_block(text: str) -> frozenset[str]:
        """``"silver.observations, silver.patients"`` or ``"*"`` → the set of tables."""
        return frozenset(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class Delivery:
    """Rows one run staged into a table from one source, and the weekday it ran."""

    run_id: str
    weekday: int
    rows: int


@dataclass(frozen=True)
class Finding:
    """This run's delivery of a source into a table, against its band."""

    table: str
    source: str
    rows: int
    low: float | None
    high: float | None
    #: the history the band came from: "Saturdays", "all days" or "none yet"
    basis: str
    deliveries: int

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "no band"
        if self.rows < self.low:
            return "low"
        if self.rows > self.high:
            return "high"
        return "in band"

    @property
    def out_of_band(self) -> bool:
        return self.verdict in ("low", "high")

    def explain(self) -> str:
        if self.low is None or self.high is None:
            return (
                f"{self.table} from {self.source}: {self.rows} rows; no band yet "
                f"({self.deliveries} earlier deliveries)"
            )
        return (
            f"{self.table} from {self.source}: {self.rows} rows, {self.verdict} "
            f"(band {self.low:.0f}–{self.high:.0f} from {self.deliveries} earlier deliveries, {self.basis})"
        )

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "verdict": self.verdict}


def by_source(rows: pa.Table) -> dict[str, int]:
    """Staged rows per source kind (``all`` when the table has no ``_source_kind``)."""
    if rows.num_rows == 0:
        return {}
    if "_source_kind" not in rows.column_names:
        return {"all": rows.num_rows}
    counts = pc.value_counts(rows.column("_source_kind").cast(pa.string()))
    return {str(c["values"]): int(c["counts"]) for c in counts.to_pylist()}


def history(lake: Lake, table: str, *, run_id: str) -> dict[str, list[Delivery]]:
    """Per source, the earlier runs' deliveries into the table (from their gate ledger entries)."""
    if not lake.exists(LEDGER.name):
        return {}
    rows = lake.read(
        LEDGER.name, columns=["run_id", "stage", "table_name", "recorded_at", "details"]
    ).to_pylist()
    found: dict[str, list[Delivery]] = {}
    for row in sorted(rows, key=lambda r: r["recorded_at"], reverse=True):
        if row["stage"] != "gate" or row["table_name"] != table or row["run_id"] == run_id:
            continue
        volume = json.loads(row["details"] or "{}").get("volume") or {}
        for source, count in volume.items():
            if count > 0:
                found.setdefault(source, []).append(
                    Delivery(str(row["run_id"]), row["recorded_at"].weekday(), int(count))
                )
    return found


def band(
    deliveries: Sequence[Delivery], weekday: int, *, policy: VolumePolicy
) -> tuple[float, float, str, int] | None:
    """(low, high, basis, deliveries used), or None with too little history."""
    same = [d.rows for d in deliveries if d.weekday == weekday][:WINDOW]
    if len(same) >= policy.min_history:
        values, basis = same, f"{WEEKDAYS[weekday]}s"
    elif len(deliveries) >= policy.min_history:
        values, basis = [d.rows for d in deliveries][:WINDOW], "all days"
    else:
        return None
    middle = statistics.median(values)
    spread = max(1.4826 * statistics.median(abs(v - middle) for v in values), 0.1 * middle)
    return max(0.0, middle - policy.tolerance * spread), middle + policy.tolerance * spread, basis, len(values)


def check(
    lake: Lake,
    table: str,
    staged: Mapping[str, int],
    *,
    run_id: str,
    now: datetime,
    policy: VolumePolicy,
) -> list[Finding]:
    """This run's deliveries into ``table`` (rows per source, :func:`by_source`) against their bands."""
    earlier = history(lake, table, run_id=run_id)
    findings = []
    for source, rows in sorted(staged.items()):
        if rows <= 0:
            continue
        past = earlier.get(source, [])
        learned = band(past, now.weekday(), policy=policy)
        if learned is None:
            findings.append(Finding(table, source, rows, None, None, "none yet", len(past)))
        else:
            low, high, basis, used = learned
            findings.append(Finding(table, source, rows, low, high, basis, used))
    return findings
