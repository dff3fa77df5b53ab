-- Returns rows if a window's vital lies outside silver's physiological bounds, its mean or last
-- value outside its min..max, or its coverage outside 0..1 (0 exactly when it was not measured):
-- the mart mixed units, codes or hours.

{%- set window_vitals = var('window_vitals') %}

with

windows as (

    select * from {{ ref('ml_vitals_windows') }}

),

per_vital as (

    {%- for loinc_code, vital in window_vitals.items() %}
    select
        person_key,
        window_start,
        '{{ vital.feature }}' as vital,
        {{ vital.low }} as low,
        {{ vital.high }} as high,
        {{ vital.feature }}_mean as value_mean,
        {{ vital.feature }}_min as value_min,
        {{ vital.feature }}_max as value_max,
        {{ vital.feature }}_last as value_last,
        {{ vital.feature }}_coverage as coverage
    from windows
    {{ "union all" if not loop.last }}
    {%- endfor %}

)

select *
from per_vital
where value_min < low
    or value_max > high
    or value_mean < value_min - 1e-9
    or value_mean > value_max + 1e-9
    or value_last < value_min
    or value_last > value_max
    or coverage < 0
    or coverage > 1
    or (coverage = 0) <> (value_mean is null)
