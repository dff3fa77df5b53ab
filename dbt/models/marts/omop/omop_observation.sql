-- OMOP CDM v5.4 OBSERVATION: one row per silver observation in the Observation domain (see
-- int_omop__observations_by_domain: social history, survey answers, coded or text findings
-- without a numeric value), with its value as text, code or number as the source gave it.

with

observations as (

    select * from {{ ref('int_omop__observations_by_domain') }}

),

visits as (

    select * from {{ ref('omop_visit_occurrence') }}

),

concepts as (

    select * from {{ ref('int_omop__source_to_concept') }}

),

final as (

    select
        {{ omop_id('observations.observation_key') }} as observation_id,
        observations.person_id,
        observations.concept_id as observation_concept_id,
        cast(observations.effective_at as date) as observation_date,
        observations.effective_at as observation_datetime,
        {{ omop_ehr_type_concept_id() }} as observation_type_concept_id,
        observations.value_num as value_as_number,
        {{ omop_varchar('observations.value_text', 60) }} as value_as_string,
        cast(null as integer) as value_as_concept_id,
        cast(null as integer) as qualifier_concept_id,
        case when observations.value_unit is not null then coalesce(units.concept_id, 0) end
            as unit_concept_id,
        cast(null as bigint) as provider_id,
        visits.visit_occurrence_id,
        cast(null as bigint) as visit_detail_id,
        {{ omop_varchar('observations.code', 50) }} as observation_source_value,
        observations.source_concept_id as observation_source_concept_id,
        {{ omop_varchar('observations.value_unit', 50) }} as unit_source_value,
        cast(null as {{ type_varchar() }}) as qualifier_source_value,
        {{ omop_varchar('observations.value_code', 50) }} as value_source_value,
        cast(null as bigint) as observation_event_id,
        cast(null as integer) as obs_event_field_concept_id
    from observations
    left join concepts as units
        on units.source_vocabulary_id = 'UCUM'
        and observations.value_unit = units.source_code
    left join visits
        on {{ omop_id('observations.encounter_key') }} = visits.visit_occurrence_id
    where observations.domain_id = 'Observation'

)

select * from final
