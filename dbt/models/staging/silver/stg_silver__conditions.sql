with

source as (

    select * from {{ source('silver', 'conditions') }}

),

renamed as (

    select
        -- keys
        condition_key,
        person_key,
        encounter_key,

        -- status
        clinical_status,
        verification_status,

        -- codes
        code_system,
        code,
        code_display,
        icd10cm_code,
        snomed_code,

        -- times (UTC, shifted per patient by silver)
        cast(onset_at as {{ type_timestamptz() }}) as onset_at,
        cast(abatement_at as {{ type_timestamptz() }}) as abated_at,
        cast(recorded_date as date) as recorded_date,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
