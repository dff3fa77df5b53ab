-- OMOP CDM v5.4 VISIT_OCCURRENCE: one row per encounter that took place (not planned,
-- cancelled or entered in error) and has a start time, of a person in omop_person. The visit
-- concept comes from the FHIR encounter class (IMP, AMB, EMER; others 0). A visit still open
-- ends on its start date: OMOP requires an end date, and the ETL date would make the table
-- differ from run to run. preceding_visit_occurrence_id is the person's visit that started
-- just before (ties broken by encounter key).

with

encounters as (

    select * from {{ ref('stg_silver__encounters') }}

),

persons as (

    select * from {{ ref('int_omop__persons') }}

),

concepts as (

    select * from {{ ref('int_omop__source_to_concept') }}

),

visits as (

    select
        encounters.*,
        persons.person_id
    from encounters
    inner join persons
        on encounters.person_key = persons.person_key
    where encounters.started_at is not null
        and coalesce(encounters.encounter_status, '') not in ('planned', 'cancelled', 'entered-in-error')

),

final as (

    select
        {{ omop_id('visits.encounter_key') }} as visit_occurrence_id,
        visits.person_id,
        coalesce(visit_concepts.concept_id, 0) as visit_concept_id,
        cast(visits.started_at as date) as visit_start_date,
        visits.started_at as visit_start_datetime,
        cast(coalesce(visits.ended_at, visits.started_at) as date) as visit_end_date,
        visits.ended_at as visit_end_datetime,
        {{ omop_ehr_type_concept_id() }} as visit_type_concept_id,
        cast(null as bigint) as provider_id,
        cast(null as bigint) as care_site_id,
        {{ omop_varchar('visits.encounter_class', 50) }} as visit_source_value,
        cast(0 as integer) as visit_source_concept_id,
        cast(null as integer) as admitted_from_concept_id,
        cast(null as {{ type_varchar() }}) as admitted_from_source_value,
        cast(null as integer) as discharged_to_concept_id,
        cast(null as {{ type_varchar() }}) as discharged_to_source_value,
        lag({{ omop_id('visits.encounter_key') }}) over (
            partition by visits.person_id
            order by visits.started_at, visits.encounter_key
        ) as preceding_visit_occurrence_id
    from visits
    left join concepts as visit_concepts
        on visit_concepts.source_vocabulary_id = 'Visit'
        and visits.encounter_class = visit_concepts.source_code

)

select * from final
