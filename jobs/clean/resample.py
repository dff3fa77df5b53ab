"""Resampling: irregular vital-sign samples → a fixed time grid per person, device and LOINC code.

Per key (person, device, code) the samples' times are first corrected by the device's clock
offset (``VITALS_CLOCK_OFFSETS``: a monitor that runs 95 s fast is moved back 95 s), samples
repeating a corrected time are merged as duplicates (the last one received wins), and the
rest fall into buckets ``[start, start + every)``: each bucket holds the mean, min, max and
last value and the number of samples. The grid is dense from the key's first to its last
bucket. An empty bucket inside a short gap (the samples either side at most ``max_gap`` apart)
carries the previous value forward in ``value_last`` (``filled``); the buckets of a longer gap
stay missing — nothing is interpolated across a gap the device was not measuring.

Every sample ends in exactly one bucket's ``sample_count``, is merged as a duplicate, or is
quarantined (``resample.no_value``: no value or time to place it); :func:`resample` reports the
three counts. The function is pure (Arrow in, Arrow out, Polars inside) and works per key, so
Spark can run it per group (``applyInArrow``).

Incremental runs: :func:`touched_window` picks, per key, the samples the buckets touched by new
samples depend on — those buckets' every sample, back to the previous sample and on to the next
(the empty buckets between them change when a sample lands in a gap).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import polars as pl
import pyarrow as pa

from medlake.jobs.clean.config import VITALS_CLOCK_OFFSETS
from medlake.quarantine import SCHEMA as QUARANTINE_SCHEMA
from medlake.quarantine import quarantine_rows

KEY = ("person_key", "device_id", "code")
RULE_NO_VALUE = "resample.no_value"

BUCKET_SCHEMA = pa.schema(
    [
        pa.field("person_key", pa.string()),
        pa.field("device_id", pa.string()),
        pa.field("code", pa.string()),
        pa.field("value_unit", pa.string()),
        pa.field("bucket_start", pa.timestamp("us", tz="UTC")),
        pa.field("value_mean", pa.float64()),
        pa.field("value_min", pa.float64()),
        pa.field("value_max", pa.float64()),
        pa.field("value_last", pa.float64()),
        pa.field("sample_count", pa.int64()),
        pa.field("filled", pa.bool_()),
        pa.field("_record_hash", pa.string()),
    ]
)


@dataclass(frozen=True)
class Resampled:
    """The grid rows, and what happened to each input sample."""

    buckets: pa.Table
    samples_in: int
    counted: int  # samples in some bucket's sample_count
    merged: int  # duplicates of a (key, corrected time) already counted
    quarantined: pa.Table  # quarantine rows of samples with no value or time

    @property
    def balanced(self) -> bool:
        return self.samples_in == self.counted + self.merged + int(self.quarantined.num_rows)


def corrected(frame: pl.DataFrame, offsets: Mapping[str, timedelta]) -> pl.DataFrame:
    """The samples with ``_at``: ``measured_at`` plus their device's clock offset."""
    offset = pl.col("device_id").replace_strict(
        {d: int(o / timedelta(microseconds=1)) for d, o in offsets.items()},
        default=0,
        return_dtype=pl.Int64,
    )
    return frame.with_columns(
        (pl.col("measured_at") + pl.duration(microseconds=offset)).alias("_at")
    )


def resample(
    samples: pa.Table,
    *,
    every: timedelta,
    max_gap: timedelta,
    clock_offsets: Mapping[str, timedelta] = VITALS_CLOCK_OFFSETS,
    table_name: str = "silver.vitals_1min",
) -> Resampled:
    """Samples (person_key, device_id, code, value_num, value_unit, measured_at) on the grid."""
    if every <= timedelta(0) or max_gap < timedelta(0):
        raise ValueError("resampling needs a positive bucket width and a non-negative max gap")
    frame = pl.from_arrow(samples.select([*KEY, "value_num", "value_unit", "measured_at"]))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_row_index("_order")
    placeable = (
        pl.col("value_num").is_not_null()
        & pl.col("value_num").is_not_nan()
        & pl.col("measured_at").is_not_null()
    )
    refused = frame.filter(~placeable.fill_null(False))
    frame = corrected(frame.filter(placeable.fill_null(False)), clock_offsets)
    # sorted by key and time once: duplicates are neighbours (the last received last), and so
    # are the samples of one bucket, which a run id then groups cheaply
    key = pl.concat_str(*KEY, separator="\x1f").cast(pl.Categorical).to_physical()
    frame = frame.with_columns(key.alias("_key")).sort("_key", "_at", "_order")
    repeated = pl.all_horizontal([pl.col(c) == pl.col(c).shift(-1) for c in ("_key", "_at")])
    unique = frame.filter(~repeated.fill_null(False))
    merged = frame.height - unique.height
    width = f"{int(every / timedelta(microseconds=1))}us"
    unique = unique.with_columns(pl.col("_at").dt.truncate(width).alias("bucket_start"))
    unique = unique.with_columns(pl.struct("_key", "bucket_start").rle_id().alias("_bucket"))
    stats = (
        unique.group_by("_bucket", maintain_order=True)
        .agg(
            *(pl.col(c).first() for c in (*KEY, "bucket_start")),
            pl.col("value_unit").last(),
            pl.col("value_num").mean().alias("value_mean"),
            pl.col("value_num").min().alias("value_min"),
            pl.col("value_num").max().alias("value_max"),
            pl.col("value_num").last().alias("value_last"),
            pl.len().cast(pl.Int64).alias("sample_count"),
            pl.col("_at").first().alias("_first"),
            pl.col("_at").last().alias("_last"),
        )
        .drop("_bucket")
    )
    buckets = _dense(stats, width=width, max_gap=max_gap)
    return Resampled(
        buckets=_with_hash(buckets),
        samples_in=samples.num_rows,
        counted=int(stats["sample_count"].sum() or 0),
        merged=merged,
        quarantined=_refused(refused, table_name=table_name),
    )


def _dense(stats: pl.DataFrame, *, width: str, max_gap: timedelta) -> pl.DataFrame:
    """Every bucket from each key's first to its last, empty ones filled only inside short gaps."""
    if stats.height == 0:
        none = pl.from_arrow(BUCKET_SCHEMA.empty_table())
        assert isinstance(none, pl.DataFrame)
        return none.drop("_record_hash")
    grid = (
        stats.group_by(list(KEY))
        .agg(
            pl.datetime_ranges(
                pl.col("bucket_start").min(), pl.col("bucket_start").max(), interval=width
            )
            .first()
            .alias("bucket_start")
        )
        .explode("bucket_start")
    )
    joined = grid.join(stats, on=[*KEY, "bucket_start"], how="left").sort([*KEY, "bucket_start"])
    # the sample before an empty bucket (last of the previous non-empty bucket) and after it
    joined = joined.with_columns(
        pl.col("_last").forward_fill().over(list(KEY)).alias("_prev_at"),
        pl.col("value_last").forward_fill().over(list(KEY)).alias("_prev_value"),
        pl.col("value_unit").forward_fill().over(list(KEY)).alias("_unit"),
        pl.col("_first").backward_fill().over(list(KEY)).alias("_next_at"),
    )
    empty = pl.col("sample_count").is_null()
    short = (pl.col("_next_at") - pl.col("_prev_at")) <= pl.lit(max_gap)
    return joined.select(
        *KEY,
        pl.col("_unit").alias("value_unit"),
        "bucket_start",
        "value_mean",
        "value_min",
        "value_max",
        pl.when(~empty)
        .then(pl.col("value_last"))
        .when(short)
        .then(pl.col("_prev_value"))
        .otherwise(None)
        .alias("value_last"),
        pl.col("sample_count").fill_null(0),
        (empty & short).fill_null(False).alias("filled"),
    )


def _with_hash(buckets: pl.DataFrame) -> pa.Table:
    """The rows as Arrow, each with a content hash of its key and values (silver lineage: what a
    bucket held when it was computed; Polars' seeded 64-bit row hash, in decimal)."""
    hashed = buckets.with_columns(buckets.hash_rows(seed=0).cast(pl.String).alias("_record_hash"))
    return hashed.to_arrow().select(BUCKET_SCHEMA.names).cast(BUCKET_SCHEMA)


def _refused(rows: pl.DataFrame, *, table_name: str) -> pa.Table:
    if rows.height == 0:
        return QUARANTINE_SCHEMA.empty_table()
    records = [
        {
            "rule_id": RULE_NO_VALUE,
            "reason": f"sample of LOINC {r['code']} from device {r['device_id']} has no "
            + ("time" if r["measured_at"] is None else "numeric value")
            + " to place on the grid",
            "record_id": f"{r['person_key']}|{r['device_id']}|{r['code']}",
            "raw_record": str({k: r[k] for k in (*KEY, "measured_at")}),
        }
        for r in rows.to_dicts()
    ]
    return quarantine_rows(records, table_name=table_name)


def touched_window(
    samples: pa.Table,
    new: pa.Table,
    *,
    every: timedelta,
    clock_offsets: Mapping[str, timedelta] = VITALS_CLOCK_OFFSETS,
) -> pa.Table:
    """The samples the buckets touched by ``new`` depend on, from all ``samples`` (old and new).

    Per key with new samples: every sample from the bucket of the last sample before the new
    ones' first bucket to the bucket of the first sample after their last (or the new ones' own
    first and last buckets when nothing is before or after). Keys without new samples: none.
    """
    if new.num_rows == 0 or samples.num_rows == 0:
        return samples.slice(0, 0)
    width = f"{int(every / timedelta(microseconds=1))}us"

    def bucketed(table: pa.Table) -> pl.DataFrame:
        frame = pl.from_arrow(table.select([*KEY, "measured_at"]))
        assert isinstance(frame, pl.DataFrame)
        frame = frame.with_row_index("_position").filter(pl.col("measured_at").is_not_null())
        frame = corrected(frame, clock_offsets)
        return frame.with_columns(pl.col("_at").dt.truncate(width).alias("_bucket"))

    old = bucketed(samples)
    span = (
        bucketed(new)
        .group_by(list(KEY))
        .agg(pl.col("_bucket").min().alias("_lo"), pl.col("_bucket").max().alias("_hi"))
    )
    keyed = old.join(span, on=list(KEY), how="inner")
    before = (
        keyed.filter(pl.col("_bucket") < pl.col("_lo"))
        .group_by(list(KEY))
        .agg(pl.col("_bucket").max().alias("_from"))
    )
    after = (
        keyed.filter(pl.col("_bucket") > pl.col("_hi"))
        .group_by(list(KEY))
        .agg(pl.col("_bucket").min().alias("_to"))
    )
    window = (
        span.join(before, on=list(KEY), how="left")
        .join(after, on=list(KEY), how="left")
        .select(
            *KEY,
            pl.coalesce("_from", "_lo").alias("_from"),
            pl.coalesce("_to", "_hi").alias("_to"),
        )
    )
    picked = keyed.join(window, on=list(KEY), how="inner").filter(
        pl.col("_bucket").is_between(pl.col("_from"), pl.col("_to"))
    )
    positions = picked["_position"].sort().to_list()
    return samples.take(pa.array(positions, pa.int64()))
