with

source as (

    select * from {{ source('silver', 'observations') }}

),

renamed as (

    select
        -- keys
        observation_key,
        person_key,
        encounter_key,

        -- what was measured
        status as observation_status,
        category as observation_category,
        code_system,
        code,
        code_display,
        panel_code,

        -- the value, in the canonical UCUM unit of its code
        cast(value_num as double) as value_num,
        value_unit,
        value_text,
        value_code,
        data_absent_reason,
        interpretation,
        cast(ref_low as double) as reference_low,
        cast(ref_high as double) as reference_high,

        -- time (UTC, shifted per patient by silver)
        cast(effective_at as {{ type_timestamptz() }}) as effective_at,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
