-- OMOP CDM v5.4 CONDITION_OCCURRENCE: one row per diagnosis or problem that was not refuted or
-- entered in error, of a person in omop_person, with a start date (onset, else the recorded
-- date, else the start of its encounter). The standard concept comes from the SNOMED CT code
-- when there is one, else from the ICD-10-CM code; condition_source_value is the code as the
-- source coded it (ICD-10-CM when present, else SNOMED CT) and condition_source_concept_id
-- that code's own concept (0 when unknown).

with

conditions as (

    select * from {{ ref('stg_silver__conditions') }}

),

encounters as (

    select * from {{ ref('stg_silver__encounters') }}

),

persons as (

    select * from {{ ref('int_omop__persons') }}

),

visits as (

    select * from {{ ref('omop_visit_occurrence') }}

),

concepts as (

    select * from {{ ref('int_omop__source_to_concept') }}

),

diagnoses as (

    select
        conditions.*,
        persons.person_id,
        {{ omop_icd10cm_dotted('conditions.icd10cm_code') }} as icd10cm_dotted,
        coalesce(
            cast(conditions.onset_at as date),
            conditions.recorded_date,
            cast(encounters.started_at as date)
        ) as start_date,
        coalesce(conditions.onset_at, encounters.started_at) as start_datetime
    from conditions
    inner join persons
        on conditions.person_key = persons.person_key
    left join encounters
        on conditions.encounter_key = encounters.encounter_key
    where coalesce(conditions.verification_status, '') not in ('refuted', 'entered-in-error')

),

final as (

    select
        {{ omop_id('diagnoses.condition_key') }} as condition_occurrence_id,
        diagnoses.person_id,
        coalesce(snomed.concept_id, icd10cm.concept_id, 0) as condition_concept_id,
        diagnoses.start_date as condition_start_date,
        diagnoses.start_datetime as condition_start_datetime,
        cast(diagnoses.abated_at as date) as condition_end_date,
        diagnoses.abated_at as condition_end_datetime,
        {{ omop_ehr_type_concept_id() }} as condition_type_concept_id,
        cast(null as integer) as condition_status_concept_id,
        cast(null as {{ type_varchar() }}) as stop_reason,
        cast(null as bigint) as provider_id,
        visits.visit_occurrence_id,
        cast(null as bigint) as visit_detail_id,
        {{ omop_varchar('coalesce(diagnoses.icd10cm_dotted, diagnoses.snomed_code)', 50) }}
            as condition_source_value,
        case
            when diagnoses.icd10cm_dotted is not null then coalesce(icd10cm.source_concept_id, 0)
            else coalesce(snomed.source_concept_id, 0)
        end as condition_source_concept_id,
        cast(null as {{ type_varchar() }}) as condition_status_source_value
    from diagnoses
    left join concepts as snomed
        on snomed.source_vocabulary_id = 'SNOMED'
        and diagnoses.snomed_code = snomed.source_code
    left join concepts as icd10cm
        on icd10cm.source_vocabulary_id = 'ICD10CM'
        and diagnoses.icd10cm_dotted = icd10cm.source_code
    left join visits
        on {{ omop_id('diagnoses.encounter_key') }} = visits.visit_occurrence_id
    where diagnoses.start_date is not null

)

select * from final
