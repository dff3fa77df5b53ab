-- Returns rows if an encounter ends before it starts: silver's per-patient date shift or the
-- source itself broke the encounter's interval, and durations computed from it would be negative.

select
    encounter_key,
    started_at,
    ended_at
from {{ ref('stg_silver__encounters') }}
where ended_at < started_at
