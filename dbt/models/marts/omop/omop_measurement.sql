-- OMOP CDM v5.4 MEASUREMENT: one row per numeric or laboratory/vital-sign observation (silver
-- observations in the Measurement domain: a known concept of that domain, else category
-- laboratory or vital-signs, else any numeric value) that was not entered in error or
-- cancelled, of a person in omop_person, with an effective time. Values are in the canonical
-- UCUM unit of their code (silver converted them); unit_source_value is that unit.

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
        {{ omop_id('observations.observation_key') }} as measurement_id,
        observations.person_id,
        observations.concept_id as measurement_concept_id,
        cast(observations.effective_at as date) as measurement_date,
        observations.effective_at as measurement_datetime,
        cast(null as {{ type_varchar() }}) as measurement_time,
        {{ omop_ehr_type_concept_id() }} as measurement_type_concept_id,
        cast(null as integer) as operator_concept_id,
        observations.value_num as value_as_number,
        cast(null as integer) as value_as_concept_id,
        case when observations.value_unit is not null then coalesce(units.concept_id, 0) end
            as unit_concept_id,
        observations.reference_low as range_low,
        observations.reference_high as range_high,
        cast(null as bigint) as provider_id,
        visits.visit_occurrence_id,
        cast(null as bigint) as visit_detail_id,
        {{ omop_varchar('observations.code', 50) }} as measurement_source_value,
        observations.source_concept_id as measurement_source_concept_id,
        {{ omop_varchar('observations.value_unit', 50) }} as unit_source_value,
        case when observations.value_unit is not null then coalesce(units.source_concept_id, 0) end
            as unit_source_concept_id,
        {{ omop_varchar(
            'coalesce(observations.value_text, observations.value_code, '
            ~ 'cast(observations.value_num as ' ~ type_varchar() ~ '))',
            50
        ) }} as value_source_value,
        cast(null as bigint) as measurement_event_id,
        cast(null as integer) as meas_event_field_concept_id
    from observations
    left join concepts as units
        on units.source_vocabulary_id = 'UCUM'
        and observations.value_unit = units.source_code
    left join visits
        on {{ omop_id('observations.encounter_key') }} = visits.visit_occurrence_id
    where observations.domain_id = 'Measurement'

)

select * from final
