-- Silver observations on their way to OMOP, each with its person_id, concepts and OMOP domain:
-- the domain of its standard concept when the code is known; else Measurement for laboratory
-- and vital-sign results and for any numeric value, Observation for the rest (social history,
-- survey answers, coded or text findings). Left out: values entered in error or cancelled,
-- values without an effective time (OMOP requires a date) and those of people not in
-- omop_person. omop_measurement and omop_observation each take one domain.

with

observations as (

    select * from {{ ref('stg_silver__observations') }}

),

persons as (

    select * from {{ ref('int_omop__persons') }}

),

concepts as (

    select * from {{ ref('int_omop__source_to_concept') }}

),

kept as (

    select
        observations.*,
        persons.person_id
    from observations
    inner join persons
        on observations.person_key = persons.person_key
    where observations.effective_at is not null
        and coalesce(observations.observation_status, '') not in ('entered-in-error', 'cancelled')

),

final as (

    select
        kept.*,
        coalesce(code_concepts.concept_id, 0) as concept_id,
        coalesce(code_concepts.source_concept_id, 0) as source_concept_id,
        case
            when code_concepts.concept_id > 0 and code_concepts.domain_id in ('Measurement', 'Observation')
                then code_concepts.domain_id
            when kept.observation_category in ('laboratory', 'vital-signs') then 'Measurement'
            when kept.value_num is not null then 'Measurement'
            else 'Observation'
        end as domain_id
    from kept
    left join concepts as code_concepts
        on code_concepts.source_vocabulary_id = {{ omop_vocabulary_id('kept.code_system') }}
        and kept.code = code_concepts.source_code

)

select * from final
