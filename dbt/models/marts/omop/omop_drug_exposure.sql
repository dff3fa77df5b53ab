-- OMOP CDM v5.4 DRUG_EXPOSURE: one row per medication order that was or is meant to be taken
-- (not a draft, cancelled or entered in error), of a person in omop_person, with the time it
-- was written. The exposure starts and, with no duration in silver, ends on the day of the
-- order (OMOP's convention when neither an end date nor days_supply is known). The sig is the
-- dosage text; drug_source_value the RxNorm code (else the source code).

with

medications as (

    select * from {{ ref('stg_silver__medications') }}

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

orders as (

    select
        medications.*,
        persons.person_id,
        coalesce(medications.rxnorm_code, medications.code) as drug_code
    from medications
    inner join persons
        on medications.person_key = persons.person_key
    where medications.authored_at is not null
        and coalesce(medications.medication_status, '') not in ('draft', 'cancelled', 'entered-in-error')

),

final as (

    select
        {{ omop_id('orders.medication_key') }} as drug_exposure_id,
        orders.person_id,
        coalesce(drugs.concept_id, 0) as drug_concept_id,
        cast(orders.authored_at as date) as drug_exposure_start_date,
        orders.authored_at as drug_exposure_start_datetime,
        cast(orders.authored_at as date) as drug_exposure_end_date,
        cast(null as {{ type_timestamptz() }}) as drug_exposure_end_datetime,
        cast(null as date) as verbatim_end_date,
        {{ omop_ehr_type_concept_id() }} as drug_type_concept_id,
        {{ omop_varchar("case when orders.medication_status = 'stopped' then 'stopped' end", 20) }}
            as stop_reason,
        cast(null as integer) as refills,
        cast(null as double) as quantity,
        cast(null as integer) as days_supply,
        cast(orders.dosage_text as {{ type_varchar() }}) as sig,
        cast(null as integer) as route_concept_id,
        cast(null as {{ type_varchar() }}) as lot_number,
        cast(null as bigint) as provider_id,
        visits.visit_occurrence_id,
        cast(null as bigint) as visit_detail_id,
        {{ omop_varchar('orders.drug_code', 50) }} as drug_source_value,
        coalesce(drugs.source_concept_id, 0) as drug_source_concept_id,
        cast(null as {{ type_varchar() }}) as route_source_value,
        cast(null as {{ type_varchar() }}) as dose_unit_source_value
    from orders
    left join concepts as drugs
        on drugs.source_vocabulary_id = 'RxNorm'
        and orders.rxnorm_code = drugs.source_code
    left join visits
        on {{ omop_id('orders.encounter_key') }} = visits.visit_occurrence_id

)

select * from final
