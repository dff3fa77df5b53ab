{{ config(severity='warn') }}
-- Returns rows if an encounter starts before the person's birth date: the birth date or the
-- encounter's time is wrong in the source (date shifting keeps intervals, so it cannot cause
-- this). A warning, not an error: the age band of such a person may be off by the error.

select
    encounters.encounter_key,
    encounters.person_key
from {{ ref('stg_silver__encounters') }} as encounters
inner join {{ ref('int_patients__one_per_person') }} as persons
    on encounters.person_key = persons.person_key
where cast(encounters.started_at as date) < persons.birth_date
