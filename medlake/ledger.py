"""The ledger: per run, stage and table, records in = out + quarantined + merged + bronze_only.

A stage that cannot account for every record it read fails the run, loudly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa

from medlake.errors import BadDataError
from medlake.lake import Lake
from medlake.registry import LEDGER


class LedgerImbalance(BadDataError):
    """A stage lost or invented records."""


@dataclass(frozen=True)
class Entry:
    """What one stage did to one table in one run."""

    stage: str
    table_name: str
    records_in: int
    records_out: int = 0
    quarantined: int = 0
    merged: int = 0
    bronze_only: int = 0
    #: what the stage measured beyond the counts, as JSON (e.g. impute: {column: fraction imputed})
    details: str | None = None

    @property
    def accounted(self) -> int:
        return self.records_out + self.quarantined + self.merged + self.bronze_only

    @property
    def balanced(self) -> bool:
        return self.records_in == self.accounted

    def explain(self) -> str:
        return (
            f"{self.stage} → {self.table_name}: in {self.records_in} ≠ out {self.records_out} + quarantined "
            f"{self.quarantined} + merged {self.merged} + bronze_only {self.bronze_only} = {self.accounted}"
        )


def check(entries: Iterable[Entry]) -> None:
    """Raise naming every stage whose counts do not add up."""
    bad = [e.explain() for e in entries if not e.balanced]
    if bad:
        raise LedgerImbalance("the ledger does not add up:\n  " + "\n  ".join(bad))


def record(lake: Lake, run_id: str, entries: Iterable[Entry], *, now: datetime | None = None) -> list[Entry]:
    """Write the entries for this run (replacing earlier ones of the same stage/table), then check them."""
    stamp = now or datetime.now(UTC)
    entries = list(entries)
    rows = [{**asdict(e), "run_id": run_id, "balanced": e.balanced, "recorded_at": stamp} for e in entries]
    if rows:
        lake.upsert(LEDGER.name, pa.Table.from_pylist(rows, schema=LEDGER.schema))
    check(entries)
    return entries


def for_run(lake: Lake, run_id: str | None = None) -> list[dict[str, object]]:
    """Ledger rows of one run (the latest when none is given), in stage order."""
    table = lake.read(LEDGER.name)
    rows = table.to_pylist()
    if not rows:
        return []
    if run_id is None:
        run_id = str(max(rows, key=lambda r: r["recorded_at"])["run_id"])
    order = {"ingest": 0, "silver": 1, "deid_text": 2, "standardize": 3, "gate": 4, "release": 5, "gold": 6, "impute": 7}
    picked = [r for r in rows if r["run_id"] == run_id]
    return sorted(picked, key=lambda r: (order.get(str(r["stage"]), 9), str(r["table_name"])))


def runs(lake: Lake) -> list[str]:
    """Run ids in the ledger, oldest first."""
    table = lake.read(LEDGER.name, columns=["run_id", "recorded_at"]).to_pylist()
    first: dict[str, datetime] = {}
    for row in table:
        run = str(row["run_id"])
        first[run] = min(first.get(run, row["recorded_at"]), row["recorded_at"])
    return sorted(first, key=lambda r: first[r])
