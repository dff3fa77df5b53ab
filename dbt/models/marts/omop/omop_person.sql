-- OMOP CDM v5.4 PERSON: one row per person with a known year of birth (OMOP requires it; a
-- person without one is left out of every OMOP table). Demographics come from the surviving
-- patient record. The birth date is silver's, already shifted per patient by a keyed offset:
-- year, month and day of birth are the shifted date's parts, so they are not the real ones
-- (ages and intervals survive the shift; HIPAA Safe Harbor would allow the real year only).
-- Race and ethnicity arrive as free text: kept as source values, concept 0 until mapped.

with

persons as (

    select * from {{ ref('int_omop__persons') }}

),

concepts as (

    select * from {{ ref('int_omop__source_to_concept') }}

),

final as (

    select
        persons.person_id,
        coalesce(gender_concepts.concept_id, 0) as gender_concept_id,
        cast(extract(year from persons.birth_date) as integer) as year_of_birth,
        cast(extract(month from persons.birth_date) as integer) as month_of_birth,
        cast(extract(day from persons.birth_date) as integer) as day_of_birth,
        cast(persons.birth_date as {{ type_timestamptz() }}) as birth_datetime,
        cast(0 as integer) as race_concept_id,
        cast(0 as integer) as ethnicity_concept_id,
        cast(null as bigint) as location_id,
        cast(null as bigint) as provider_id,
        cast(null as bigint) as care_site_id,
        {{ omop_varchar('persons.person_key', 50) }} as person_source_value,
        {{ omop_varchar('persons.gender', 50) }} as gender_source_value,
        cast(0 as integer) as gender_source_concept_id,
        {{ omop_varchar('persons.race', 50) }} as race_source_value,
        cast(0 as integer) as race_source_concept_id,
        {{ omop_varchar('persons.ethnicity', 50) }} as ethnicity_source_value,
        cast(0 as integer) as ethnicity_source_concept_id
    from persons
    left join concepts as gender_concepts
        on gender_concepts.source_vocabulary_id = 'Gender'
        and lower(persons.gender) = gender_concepts.source_code

)

select * from final
