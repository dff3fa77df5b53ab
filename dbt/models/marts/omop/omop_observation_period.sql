-- OMOP CDM v5.4 OBSERVATION_PERIOD: one period per person, from the first to the last date of
-- any of their OMOP events (visits, conditions, drug exposures, measurements, observations and
-- death). A person with no event has no period. Its id derives from the person key, so it is
-- stable across runs like every other OMOP id.

with

event_dates as (

    select person_id, visit_start_date as start_date, visit_end_date as end_date
    from {{ ref('omop_visit_occurrence') }}
    union all
    select person_id, condition_start_date, coalesce(condition_end_date, condition_start_date)
    from {{ ref('omop_condition_occurrence') }}
    union all
    select person_id, drug_exposure_start_date, drug_exposure_end_date
    from {{ ref('omop_drug_exposure') }}
    union all
    select person_id, measurement_date, measurement_date
    from {{ ref('omop_measurement') }}
    union all
    select person_id, observation_date, observation_date
    from {{ ref('omop_observation') }}
    union all
    select person_id, death_date, death_date
    from {{ ref('omop_death') }}

),

periods as (

    select
        person_id,
        min(start_date) as observation_period_start_date,
        max(greatest(start_date, end_date)) as observation_period_end_date
    from event_dates
    group by person_id

),

final as (

    select
        {{ omop_id("cast(periods.person_id as " ~ type_varchar() ~ ") || '|observation_period'") }}
            as observation_period_id,
        periods.person_id,
        periods.observation_period_start_date,
        periods.observation_period_end_date,
        {{ omop_ehr_type_concept_id() }} as period_type_concept_id
    from periods

)

select * from final
