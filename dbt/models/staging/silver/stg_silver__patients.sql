with

source as (

    select * from {{ source('silver', 'patients') }}

),

renamed as (

    select
        -- keys
        source_key,
        person_key,
        source_system,

        -- demographics (dates already shifted per patient by silver)
        gender,
        cast(birth_date as date) as birth_date,
        cast(deceased as boolean) as is_deceased,
        cast(deceased_date as date) as deceased_date,
        zip3,
        state,
        country,
        marital_status,
        race,
        ethnicity,
        language,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
