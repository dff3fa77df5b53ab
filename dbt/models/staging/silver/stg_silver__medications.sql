with

source as (

    select * from {{ source('silver', 'medications') }}

),

renamed as (

    select
        -- keys
        medication_key,
        person_key,
        encounter_key,

        -- the order
        status as medication_status,
        intent as medication_intent,
        code_system,
        code,
        code_display,
        rxnorm_code,
        dosage_text,

        -- time (UTC, shifted per patient by silver)
        cast(authored_at as {{ type_timestamptz() }}) as authored_at,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
