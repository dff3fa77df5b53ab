with

source as (

    select * from {{ source('silver', 'encounters') }}

),

renamed as (

    select
        -- keys
        encounter_key,
        person_key,

        -- details
        status as encounter_status,
        class_code as encounter_class,
        type_system as encounter_type_system,
        type_code as encounter_type_code,
        type_display as encounter_type_display,
        site,

        -- times (UTC, shifted per patient by silver)
        cast(start_at as {{ type_timestamptz() }}) as started_at,
        cast(end_at as {{ type_timestamptz() }}) as ended_at,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
