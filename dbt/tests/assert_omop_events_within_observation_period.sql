-- Returns rows if an OMOP event of a person falls outside the person's observation period, or
-- the person has events but no period: omop_observation_period missed an event table, and
-- OHDSI analyses (which only count time under observation) would silently drop the event.

{%- set events = [
    ('omop_visit_occurrence', 'visit_start_date'),
    ('omop_condition_occurrence', 'condition_start_date'),
    ('omop_drug_exposure', 'drug_exposure_start_date'),
    ('omop_measurement', 'measurement_date'),
    ('omop_observation', 'observation_date'),
    ('omop_death', 'death_date'),
] %}

with

event_dates as (

    {%- for model, date_column in events %}
    select '{{ model }}' as event_table, person_id, {{ date_column }} as event_date
    from {{ ref(model) }}
    {{ "union all" if not loop.last }}
    {%- endfor %}

),

periods as (

    select * from {{ ref('omop_observation_period') }}

)

select
    event_dates.event_table,
    event_dates.person_id,
    event_dates.event_date
from event_dates
left join periods
    on event_dates.person_id = periods.person_id
    and event_dates.event_date between periods.observation_period_start_date
        and periods.observation_period_end_date
where periods.person_id is null
