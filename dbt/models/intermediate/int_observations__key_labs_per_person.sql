-- The key labs and vitals of the feature marts (var key_labs), summarized per person and LOINC
-- code: the last value (latest effective time; undated values count as oldest), the mean and
-- how many values there were. Values entered in error or cancelled do not count, and neither do
-- values in a unit other than the code's canonical UCUM unit (pounds are never averaged with
-- kilograms; the cleaning step's unit normalization converts them before they reach silver).

with

observations as (

    select * from {{ ref('stg_silver__observations') }}

),

key_lab_values as (

    select
        person_key,
        code as loinc_code,
        observation_key,
        value_num,
        effective_at
    from observations
    where code_system = '{{ var("loinc_system") }}'
        and (
            {%- for loinc_code, lab in var('key_labs').items() %}
            (code = '{{ loinc_code }}' and value_unit = '{{ lab.unit }}')
            {{- " or" if not loop.last }}
            {%- endfor %}
        )
        and value_num is not null
        and coalesce(observation_status, '') not in ('entered-in-error', 'cancelled')

),

ranked as (

    select
        *,
        row_number() over (
            partition by person_key, loinc_code
            order by effective_at desc nulls last, observation_key desc
        ) as recency_rank
    from key_lab_values

),

summarized as (

    select
        person_key,
        loinc_code,
        count(*) as value_count,
        avg(value_num) as value_mean,
        max(case when recency_rank = 1 then value_num end) as value_last,
        max(case when recency_rank = 1 then effective_at end) as last_effective_at
    from ranked
    group by person_key, loinc_code

),

final as (

    select * from summarized

)

select * from final
