-- silver.patients holds one row per patient record per source; entity resolution gives the
-- records of one real person the same person_key. Keep one record per person: the one with
-- the most complete demographics, ties broken by source system and source key so the choice
-- is the same on every run.

with

patients as (

    select * from {{ ref('stg_silver__patients') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by person_key
            order by
                case when birth_date is null then 1 else 0 end,
                case when gender is null then 1 else 0 end,
                source_system,
                source_key
        ) as survivorship_rank,
        count(*) over (partition by person_key) as source_record_count
    from patients

),

final as (

    select
        person_key,
        source_key as surviving_source_key,
        source_record_count,
        gender,
        birth_date,
        is_deceased,
        deceased_date
    from ranked
    where survivorship_rank = 1

)

select * from final
