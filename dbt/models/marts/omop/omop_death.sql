-- OMOP CDM v5.4 DEATH: one row per person in omop_person whose surviving patient record has a
-- date of death (shifted per patient like every silver date). A person known to be deceased
-- without a date is not here: OMOP requires death_date. The cause is not in silver.

with

persons as (

    select * from {{ ref('int_omop__persons') }}

),

final as (

    select
        person_id,
        deceased_date as death_date,
        cast(deceased_date as {{ type_timestamptz() }}) as death_datetime,
        {{ omop_ehr_type_concept_id() }} as death_type_concept_id,
        cast(null as integer) as cause_concept_id,
        cast(null as {{ type_varchar() }}) as cause_source_value,
        cast(null as integer) as cause_source_concept_id
    from persons
    where deceased_date is not null

)

select * from final
