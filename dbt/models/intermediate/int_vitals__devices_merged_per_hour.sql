-- One row per person, vital sign and hour with samples: the samples of all the person's devices
-- in that hour pooled, as if one device had measured them all. A bedside monitor and a cuff (or
-- an arterial line) measuring the same vital in the same hour give one mean weighted by their
-- sample counts, the smaller minimum and the larger maximum. Which device measured last within
-- the hour is not known at hourly resolution, so the hour's last value is the value_last of the
-- device with the most samples in it (ties: the first device_id).
-- Hours without a sample (carried-forward or empty) are left out, and so are values in a unit
-- other than the canonical one of their code (silver converts every value, so none should be).

{%- set window_vitals = var('window_vitals') %}

with

vitals as (

    select * from {{ ref('stg_silver__vitals_1h') }}

),

measured as (

    select *
    from vitals
    where sample_count > 0
        and value_mean is not null
        and (
            {%- for loinc_code, vital in window_vitals.items() %}
            (loinc_code = '{{ loinc_code }}' and value_unit = '{{ vital.unit }}')
            {{- " or" if not loop.last }}
            {%- endfor %}
        )

),

ranked as (

    select
        *,
        row_number() over (
            partition by person_key, loinc_code, hour_start
            order by sample_count desc, device_id
        ) as device_rank
    from measured

),

final as (

    select
        person_key,
        loinc_code,
        hour_start,
        sum(value_mean * sample_count) / sum(sample_count) as value_mean,
        min(value_min) as value_min,
        max(value_max) as value_max,
        max(case when device_rank = 1 then value_last end) as value_last,
        cast(sum(sample_count) as bigint) as sample_count,
        count(*) as device_count
    from ranked
    group by person_key, loinc_code, hour_start

)

select * from final
