"""Resampling vital signs onto a fixed grid: hand-made edge cases with expected rows, and
properties (every sample counted once, merged or quarantined; incremental = all at once)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake.jobs.clean.resample import RULE_NO_VALUE, resample, touched_window

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SCHEMA = pa.schema(
    [
        ("person_key", pa.string()),
        ("device_id", pa.string()),
        ("code", pa.string()),
        ("value_num", pa.float64()),
        ("value_unit", pa.string()),
        ("measured_at", pa.timestamp("us", tz="UTC")),
    ]
)


def sample(
    seconds: float,
    value: float | None,
    *,
    device: str = "MON-1",
    code: str = "8867-4",
    person: str = "p1",
) -> dict[str, Any]:
    return {
        "person_key": person,
        "device_id": device,
        "code": code,
        "value_num": value,
        "value_unit": "/min",
        "measured_at": T0 + timedelta(seconds=seconds),
    }


def table(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def by_minute(result_rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int((r["bucket_start"] - T0) / MIN): r for r in result_rows}


def test_mean_min_max_last_and_count_per_bucket() -> None:
    result = resample(
        table(sample(5, 60), sample(50, 80), sample(20, 70), sample(65, 90)),
        every=MIN,
        max_gap=5 * MIN,
        clock_offsets={},
    )
    rows = by_minute(result.buckets.to_pylist())
    assert set(rows) == {0, 1}
    first = rows[0]
    assert (first["value_mean"], first["value_min"], first["value_max"]) == (70, 60, 80)
    assert first["value_last"] == 80  # the latest by time, not by arrival
    assert (first["sample_count"], first["filled"]) == (3, False)
    assert (rows[1]["value_mean"], rows[1]["sample_count"]) == (90, 1)
    assert (result.samples_in, result.counted, result.merged) == (4, 4, 0)


def test_a_20_minute_gap_stays_missing_at_1_minute() -> None:
    result = resample(
        table(sample(0, 60), sample(60, 61), sample(60 + 21 * 60, 75)),
        every=MIN,
        max_gap=5 * MIN,
        clock_offsets={},
    )
    rows = by_minute(result.buckets.to_pylist())
    assert sorted(rows) == list(range(23))  # a dense grid from the first to the last bucket
    for minute in range(2, 22):
        empty = rows[minute]
        assert empty["sample_count"] == 0
        assert empty["value_last"] is None and empty["value_mean"] is None, minute
        assert not empty["filled"]
    assert rows[22]["value_last"] == 75


def test_a_short_gap_carries_the_last_value_forward_but_no_statistics() -> None:
    result = resample(
        table(sample(0, 60), sample(3 * 60 + 10, 64)), every=MIN, max_gap=5 * MIN, clock_offsets={}
    )
    rows = by_minute(result.buckets.to_pylist())
    for minute in (1, 2):
        assert rows[minute]["value_last"] == 60 and rows[minute]["filled"]
        assert rows[minute]["value_mean"] is None and rows[minute]["sample_count"] == 0
    assert rows[3]["value_last"] == 64 and not rows[3]["filled"]


def test_clock_skew_correction_moves_samples_into_earlier_buckets() -> None:
    samples = table(sample(30, 60, device="FAST"), sample(100, 70, device="FAST"))
    plain = by_minute(
        resample(samples, every=MIN, max_gap=5 * MIN, clock_offsets={}).buckets.to_pylist()
    )
    fixed = by_minute(
        resample(
            samples, every=MIN, max_gap=5 * MIN, clock_offsets={"FAST": timedelta(seconds=-95)}
        ).buckets.to_pylist()
    )
    assert sorted(plain) == [0, 1]
    # 10:00:30 - 95 s = 09:58:55, 10:01:40 - 95 s = 10:00:05
    assert sorted(fixed) == [-2, -1, 0]
    assert fixed[-2]["value_last"] == 60 and fixed[0]["value_last"] == 70
    assert fixed[-1]["filled"]


def test_only_the_listed_device_is_corrected() -> None:
    samples = table(sample(30, 60, device="FAST"), sample(30, 61, device="GOOD"))
    rows = resample(
        samples, every=MIN, max_gap=5 * MIN, clock_offsets={"FAST": timedelta(seconds=-95)}
    ).buckets.to_pylist()
    assert {(r["device_id"], int((r["bucket_start"] - T0) / MIN)) for r in rows} == {
        ("FAST", -2),
        ("GOOD", 0),
    }


def test_duplicate_samples_are_merged_the_last_received_wins() -> None:
    result = resample(
        table(sample(10, 60), sample(10, 60), sample(10, 66), sample(40, 70)),
        every=MIN,
        max_gap=5 * MIN,
        clock_offsets={},
    )
    (row,) = result.buckets.to_pylist()
    assert (row["sample_count"], row["value_min"], row["value_max"]) == (2, 66, 70)
    assert (result.counted, result.merged) == (2, 2)


def test_keys_are_resampled_apart() -> None:
    result = resample(
        table(sample(10, 60), sample(10, 95, code="59408-5"), sample(10, 50, person="p2")),
        every=MIN,
        max_gap=5 * MIN,
        clock_offsets={},
    )
    assert result.buckets.num_rows == 3 and result.merged == 0


def test_samples_without_a_value_are_quarantined_with_a_reason() -> None:
    result = resample(
        table(sample(10, 60), sample(20, None), sample(30, float("nan"))),
        every=MIN,
        max_gap=5 * MIN,
        clock_offsets={},
    )
    assert result.counted == 1 and result.quarantined.num_rows == 2
    assert set(result.quarantined.column("rule_id").to_pylist()) == {RULE_NO_VALUE}
    assert all("numeric value" in r for r in result.quarantined.column("reason").to_pylist())
    assert result.balanced


def test_hour_grid() -> None:
    hours = timedelta(hours=1)
    result = resample(
        table(sample(60, 60), sample(3000, 80), sample(3 * 3600 + 5, 90)),
        every=hours,
        max_gap=3 * hours,
        clock_offsets={},
    )
    rows = result.buckets.to_pylist()
    assert [r["sample_count"] for r in rows] == [2, 0, 0, 1]
    assert rows[0]["value_mean"] == 70
    assert [r["value_last"] for r in rows] == [80, 80, 80, 90]  # a 3 h gap: within the max gap


def test_the_window_reaches_back_to_the_previous_sample_and_on_to_the_next() -> None:
    old = [sample(0, 60), sample(60, 61), sample(30 * 60, 62), sample(40 * 60, 63)]
    new = [sample(10 * 60, 70)]
    window = touched_window(table(*old, *new), table(*new), every=MIN, clock_offsets={})
    assert sorted(window.column("value_num").to_pylist()) == [61, 62, 70]
    other = touched_window(
        table(*old), table(sample(0, 1, person="p9")), every=MIN, clock_offsets={}
    )
    assert other.num_rows == 0


def test_bad_grid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="positive bucket width"):
        resample(table(sample(0, 1)), every=timedelta(0), max_gap=MIN)


# --- properties -----------------------------------------------------------------------------

sample_strategy = st.lists(
    st.tuples(
        st.integers(0, 3 * 3600),  # seconds after T0
        st.sampled_from(["MON-1", "FAST"]),
        st.sampled_from(["8867-4", "59408-5"]),
        st.one_of(st.none(), st.floats(30, 200, allow_nan=False)),
    ),
    min_size=0,
    max_size=60,
)
OFFSETS = {"FAST": timedelta(seconds=-95)}


def _table(drawn: list[tuple[int, str, str, float | None]]) -> pa.Table:
    return table(*(sample(s, v, device=d, code=c) for s, d, c, v in drawn))


@settings(max_examples=60, deadline=None)
@given(drawn=sample_strategy, minutes=st.sampled_from([1, 5, 60]))
def test_every_sample_is_counted_once_merged_or_quarantined(
    drawn: list[tuple[int, str, str, float | None]], minutes: int
) -> None:
    every = timedelta(minutes=minutes)
    result = resample(_table(drawn), every=every, max_gap=5 * MIN, clock_offsets=OFFSETS)
    assert result.samples_in == len(drawn)
    assert result.counted + result.merged + result.quarantined.num_rows == len(drawn)
    # an independent count: distinct (key, corrected time) per bucket
    placed = {
        (d, c, T0 + timedelta(seconds=s) + OFFSETS.get(d, timedelta(0)))
        for s, d, c, v in drawn
        if v is not None
    }
    expected = Counter((d, c, T0 + ((at - T0) // every) * every) for d, c, at in placed)
    got = {
        (r["device_id"], r["code"], r["bucket_start"]): r["sample_count"]
        for r in result.buckets.to_pylist()
        if r["sample_count"]
    }
    assert got == dict(expected)
    assert result.counted == len(placed)


@settings(max_examples=40, deadline=None)
@given(drawn=sample_strategy, split=st.integers(0, 60), minutes=st.sampled_from([1, 60]))
def test_recomputing_touched_buckets_equals_resampling_everything(
    drawn: list[tuple[int, str, str, float | None]], split: int, minutes: int
) -> None:
    every, gap = timedelta(minutes=minutes), timedelta(minutes=5 * minutes)
    values = [d for d in drawn if d[3] is not None]
    first, second = _table(values[:split]), _table(values[split:])
    everything = _table(values)

    def rows(t: pa.Table) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        return {
            (r["person_key"], r["device_id"], r["code"], r["bucket_start"]): (
                r["value_mean"],
                r["value_min"],
                r["value_max"],
                r["value_last"],
                r["sample_count"],
                r["filled"],
            )
            for r in t.to_pylist()
        }

    silver = rows(resample(first, every=every, max_gap=gap, clock_offsets=OFFSETS).buckets)
    window = touched_window(everything, second, every=every, clock_offsets=OFFSETS)
    silver |= rows(resample(window, every=every, max_gap=gap, clock_offsets=OFFSETS).buckets)
    once = rows(resample(everything, every=every, max_gap=gap, clock_offsets=OFFSETS).buckets)
    assert silver == once
