-- Every source code the OMOP marts can look up, with the concept of the code itself
-- (source_concept_id) and the standard concept it maps to (concept_id, 0 when it maps to none).
-- Always: the small concept table medlake ships (seed omop_source_to_concept). When var
-- vocabulary_dir names a folder of OHDSI Athena vocabulary CSVs (tab-separated CONCEPT.csv and
-- CONCEPT_RELATIONSHIP.csv, as Athena's download unpacks them), its LOINC, SNOMED, ICD10CM,
-- RxNorm and UCUM concepts are added and take precedence over the seed: the target is the
-- valid 'Maps to' relationship to a standard concept (the lowest concept id when a code maps to
-- several; OMOP would emit one row per target). Gender and Visit rows map FHIR codes and come
-- from the seed only.

{%- set vocabulary_dir = var('vocabulary_dir', '') %}

with

shipped as (

    select
        source_vocabulary_id,
        source_code,
        source_concept_id,
        concept_id,
        concept_name,
        domain_id,
        'medlake seed' as mapped_by
    from {{ ref('omop_source_to_concept') }}

),

{%- if vocabulary_dir %}

athena_concept as (

    select
        cast(concept_id as integer) as concept_id,
        concept_name,
        domain_id,
        vocabulary_id,
        concept_code,
        standard_concept
    from {{ athena_csv(vocabulary_dir ~ '/CONCEPT.csv') }}
    where vocabulary_id in ('LOINC', 'SNOMED', 'ICD10CM', 'RxNorm', 'UCUM')
        or standard_concept = 'S'

),

athena_maps_to as (

    select
        cast(concept_id_1 as integer) as source_concept_id,
        cast(concept_id_2 as integer) as target_concept_id
    from {{ athena_csv(vocabulary_dir ~ '/CONCEPT_RELATIONSHIP.csv') }}
    where relationship_id = 'Maps to'
        and coalesce(invalid_reason, '') = ''

),

athena_ranked as (

    select
        source.vocabulary_id as source_vocabulary_id,
        source.concept_code as source_code,
        source.concept_id as source_concept_id,
        coalesce(target.concept_id, 0) as concept_id,
        coalesce(target.concept_name, 'No matching concept') as concept_name,
        coalesce(target.domain_id, source.domain_id) as domain_id,
        row_number() over (
            partition by source.vocabulary_id, source.concept_code
            order by target.concept_id nulls last
        ) as target_rank
    from athena_concept as source
    left join athena_maps_to as maps_to
        on source.concept_id = maps_to.source_concept_id
    left join athena_concept as target
        on maps_to.target_concept_id = target.concept_id
        and target.standard_concept = 'S'
    where source.vocabulary_id in ('LOINC', 'SNOMED', 'ICD10CM', 'RxNorm', 'UCUM')

),

athena as (

    select
        source_vocabulary_id,
        source_code,
        source_concept_id,
        concept_id,
        concept_name,
        domain_id,
        'athena' as mapped_by
    from athena_ranked
    where target_rank = 1

),

combined as (

    select * from athena
    union all
    select shipped.*
    from shipped
    left join athena
        on shipped.source_vocabulary_id = athena.source_vocabulary_id
        and shipped.source_code = athena.source_code
    where athena.source_code is null

),

{%- else %}

combined as (

    select * from shipped

),

{%- endif %}

final as (

    select
        cast(source_vocabulary_id as {{ type_varchar() }}) as source_vocabulary_id,
        cast(source_code as {{ type_varchar() }}) as source_code,
        cast(source_concept_id as integer) as source_concept_id,
        cast(concept_id as integer) as concept_id,
        cast(concept_name as {{ type_varchar() }}) as concept_name,
        cast(domain_id as {{ type_varchar() }}) as domain_id,
        cast(mapped_by as {{ type_varchar() }}) as mapped_by
    from combined

)

select * from final
