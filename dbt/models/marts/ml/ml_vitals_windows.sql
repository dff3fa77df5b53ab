-- One row per person and fixed window of var vitals_window_hours hours (default 6) in which any
-- of the person's devices measured a vital sign: per vital its mean, min, max and last value and
-- the share of the window's hours that have samples. Windows do not overlap and start at
-- multiples of the window length counted from 1970-01-01 00:00 UTC (on silver's shifted times).
-- A vital not measured in a window stays null (coverage 0): nothing is interpolated or carried
-- here; imputing is the consumer's choice.

{%- set window_hours = var('vitals_window_hours') | int %}
{%- if window_hours < 1 %}
    {{ exceptions.raise_compiler_error(
        "var vitals_window_hours must be a whole number of hours >= 1, not "
        ~ var('vitals_window_hours')
    ) }}
{%- endif %}
{%- set window_seconds = window_hours * 3600 %}
{%- set window_vitals = var('window_vitals') %}

with

hourly as (

    select * from {{ ref('int_vitals__devices_merged_per_hour') }}

),

windowed as (

    select
        *,
        {{ window_start('hour_start', window_seconds) }} as window_start
    from hourly

),

-- one row per person, window and vital: hours without samples do not count anywhere
per_vital as (

    select
        person_key,
        window_start,
        loinc_code,
        sum(value_mean * sample_count) / sum(sample_count) as value_mean,
        min(value_min) as value_min,
        max(value_max) as value_max,
        max_by(value_last, hour_start) as value_last,
        count(*) / {{ window_hours }} as coverage,
        cast(sum(sample_count) as bigint) as sample_count
    from windowed
    group by person_key, window_start, loinc_code

),

final as (

    select
        person_key,
        window_start,
        window_start + interval {{ window_hours }} hour as window_end,

        -- per vital, in the canonical UCUM unit of its LOINC code
        {%- for loinc_code, vital in window_vitals.items() %}
        {%- set this = "case when loinc_code = '" ~ loinc_code ~ "' then " %}
        max({{ this }}value_mean end) as {{ vital.feature }}_mean,
        max({{ this }}value_min end) as {{ vital.feature }}_min,
        max({{ this }}value_max end) as {{ vital.feature }}_max,
        max({{ this }}value_last end) as {{ vital.feature }}_last,
        coalesce(max({{ this }}coverage end), 0.0) as {{ vital.feature }}_coverage,
        {%- endfor %}

        cast(sum(sample_count) as bigint) as sample_count,

        -- lineage
        {{ "'" ~ (var('run_id') | string | replace("'", "''")) ~ "'" }} as _run_id

    from per_vital
    group by person_key, window_start

)

select * from final
