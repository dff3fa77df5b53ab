{#- OMOP type concept of every record medlake writes: 32817 'EHR' (vocabulary Type Concept).
    All silver data comes from EHR extracts (FHIR, HL7 v2, CSV); when a source kind with a
    better-fitting type concept arrives, map it here. -#}
{% macro omop_ehr_type_concept_id() -%}
    cast(32817 as integer)
{%- endmacro %}

{#- A value cut to the varchar(n) length the OMOP CDM gives the field, so the table loads into
    a CDM database built from the OHDSI DDL. -#}
{% macro omop_varchar(value, length) -%}
    cast(left(cast({{ value }} as {{ type_varchar() }}), {{ length }}) as {{ type_varchar() }})
{%- endmacro %}

{#- An ICD-10-CM code in the dotted form OHDSI's vocabulary uses (E119 -> E11.9). -#}
{% macro omop_icd10cm_dotted(code) -%}
    case
        when {{ code }} is null then null
        when {{ dbt.position("'.'", code) }} > 0 or length(trim({{ code }})) <= 3 then upper(trim({{ code }}))
        else upper(left(trim({{ code }}), 3)) || '.' || upper(substr(trim({{ code }}), 4))
    end
{%- endmacro %}

{#- The OMOP vocabulary_id of a FHIR code system URI; null for systems OMOP has no vocabulary for. -#}
{% macro omop_vocabulary_id(system) -%}
    case {{ system }}
        when 'http://loinc.org' then 'LOINC'
        when 'http://snomed.info/sct' then 'SNOMED'
        when 'http://hl7.org/fhir/sid/icd-10-cm' then 'ICD10CM'
        when 'http://www.nlm.nih.gov/research/umls/rxnorm' then 'RxNorm'
        when 'http://unitsofmeasure.org' then 'UCUM'
    end
{%- endmacro %}
