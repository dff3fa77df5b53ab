-- Returns rows if a window does not start at a multiple of var vitals_window_hours (counted from
-- 1970-01-01 00:00 UTC), does not last that long, or holds no sample: windows would overlap,
-- shift or be empty.

{%- set window_seconds = (var('vitals_window_hours') | int) * 3600 %}

select
    person_key,
    window_start,
    window_end,
    sample_count
from {{ ref('ml_vitals_windows') }}
where {{ epoch_seconds('window_start') }} % {{ window_seconds }} <> 0
    or {{ epoch_seconds('window_end') }} - {{ epoch_seconds('window_start') }} <> {{ window_seconds }}
    or sample_count < 1
