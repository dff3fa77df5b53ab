with

source as (

    select * from {{ source('silver', 'vitals_1h') }}

),

renamed as (

    select
        -- keys
        person_key,
        device_id,
        code as loinc_code,

        -- the hour (UTC, clock-skew corrected and shifted per patient by silver)
        cast(bucket_start as {{ type_timestamptz() }}) as hour_start,

        -- the values of the hour, in the canonical UCUM unit of its code
        value_unit,
        cast(value_mean as double) as value_mean,
        cast(value_min as double) as value_min,
        cast(value_max as double) as value_max,
        cast(value_last as double) as value_last,
        cast(sample_count as bigint) as sample_count,
        filled as is_filled,

        -- lineage
        _record_hash as silver_record_hash,
        _run_id as silver_run_id

    from source

)

select * from renamed
