-- The people of the OMOP marts: one per person_key whose surviving patient record has a birth
-- date (OMOP requires a year of birth; a person without one is left out of every OMOP table),
-- with their OMOP person_id (omop_id of the person key: the same on every run) and the
-- demographics of that record. Every OMOP event table joins here on person_key, so no event
-- points at a person omop_person does not hold.

with

persons as (

    select * from {{ ref('int_patients__one_per_person') }}

),

patients as (

    select * from {{ ref('stg_silver__patients') }}

),

final as (

    select
        persons.person_key,
        {{ omop_id('persons.person_key') }} as person_id,
        persons.gender,
        persons.birth_date,
        persons.deceased_date,
        patients.race,
        patients.ethnicity
    from persons
    inner join patients
        on persons.surviving_source_key = patients.source_key
    where persons.birth_date is not null

)

select * from final
