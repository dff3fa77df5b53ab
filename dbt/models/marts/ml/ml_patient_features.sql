-- One row per person: the features a model trains on. No exact dates leave this mart: the age
-- is a five-year band at the person's index date (their last encounter start or last
-- observation, whichever is later), ages over 89 grouped as '90+'.

{%- set key_labs = var('key_labs') %}
{%- set condition_flags = var('condition_flags') %}

with

persons as (

    select * from {{ ref('int_patients__one_per_person') }}

),

encounters as (

    select * from {{ ref('stg_silver__encounters') }}

),

observations as (

    select * from {{ ref('stg_silver__observations') }}

),

key_labs as (

    select * from {{ ref('int_observations__key_labs_per_person') }}

),

conditions as (

    select * from {{ ref('stg_silver__conditions') }}

),

medications as (

    select * from {{ ref('stg_silver__medications') }}

),

-- encounters that took place (not planned, cancelled or entered in error)
encounter_summary as (

    select
        person_key,
        count(distinct encounter_key) as encounter_count,
        max(started_at) as last_encounter_at
    from encounters
    where coalesce(encounter_status, '') not in ('planned', 'cancelled', 'entered-in-error')
    group by person_key

),

observation_summary as (

    select
        person_key,
        max(effective_at) as last_observation_at
    from observations
    where coalesce(observation_status, '') not in ('entered-in-error', 'cancelled')
    group by person_key

),

index_dates as (

    select
        persons.person_key,
        cast(
            greatest(encounter_summary.last_encounter_at, observation_summary.last_observation_at)
            as date
        ) as index_date
    from persons
    left join encounter_summary
        on persons.person_key = encounter_summary.person_key
    left join observation_summary
        on persons.person_key = observation_summary.person_key

),

lab_features as (

    select
        person_key,
        {%- for loinc_code, lab in key_labs.items() %}
        max(case when loinc_code = '{{ loinc_code }}' then value_last end) as {{ lab.feature }}_last,
        max(case when loinc_code = '{{ loinc_code }}' then value_mean end) as {{ lab.feature }}_mean
        {{- "," if not loop.last }}
        {%- endfor %}
    from key_labs
    group by person_key

),

-- a diagnosis counts unless it was refuted or entered in error
condition_features as (

    select
        person_key,
        {%- for flag, codes in condition_flags.items() %}
        max(
            case
                when {% for prefix in codes.icd10cm_prefixes -%}
                    upper(icd10cm_code) like '{{ prefix }}%' or {% endfor -%}
                    snomed_code in (
                        {%- for code in codes.snomed_codes -%}
                        '{{ code }}'{{ ", " if not loop.last }}
                        {%- endfor -%}
                    )
                then 1
                else 0
            end
        ) = 1 as has_{{ flag }}
        {{- "," if not loop.last }}
        {%- endfor %}
    from conditions
    where coalesce(verification_status, '') not in ('refuted', 'entered-in-error')
    group by person_key

),

-- orders that were or are meant to be taken (not drafts, cancelled or entered in error)
medication_features as (

    select
        person_key,
        count(distinct coalesce(rxnorm_code, code_system || '|' || code)) as medication_count,
        count(distinct medication_key) as medication_order_count
    from medications
    where coalesce(medication_status, '') not in ('draft', 'cancelled', 'entered-in-error')
    group by person_key

),

final as (

    select
        persons.person_key,

        -- demographics
        persons.gender,
        {{ age_band(age_in_years('persons.birth_date', 'index_dates.index_date')) }} as age_band,
        coalesce(persons.is_deceased, false) as is_deceased,

        -- utilization
        coalesce(encounter_summary.encounter_count, 0) as encounter_count,

        -- key labs and vitals, in the canonical UCUM unit of their LOINC code
        {%- for loinc_code, lab in key_labs.items() %}
        lab_features.{{ lab.feature }}_last,
        lab_features.{{ lab.feature }}_mean,
        {%- endfor %}

        -- conditions
        {%- for flag in condition_flags %}
        coalesce(condition_features.has_{{ flag }}, false) as has_{{ flag }},
        {%- endfor %}

        -- medications
        coalesce(medication_features.medication_count, 0) as medication_count,
        coalesce(medication_features.medication_order_count, 0) as medication_order_count,

        -- lineage
        {{ "'" ~ (var('run_id') | string | replace("'", "''")) ~ "'" }} as _run_id

    from persons
    left join index_dates
        on persons.person_key = index_dates.person_key
    left join encounter_summary
        on persons.person_key = encounter_summary.person_key
    left join lab_features
        on persons.person_key = lab_features.person_key
    left join condition_features
        on persons.person_key = condition_features.person_key
    left join medication_features
        on persons.person_key = medication_features.person_key

)

select * from final
