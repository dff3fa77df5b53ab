{#- An OMOP integer key (person_id, visit_occurrence_id, ...) from one of our string keys:
    the first 60 bits of the MD5 of the key, as a positive bigint. The same key gives the same
    id on every run, every engine and every DuckDB or Spark version (DuckDB's hash() is not
    promised to be stable across versions; a row_number over sorted keys renumbers every row
    after the first new key). 60 bits: one chance in ~2.3e5 of any collision among 10 million
    keys, which the unique tests on every *_id would catch. -#}
{% macro omop_id(key) -%}
    {{ return(adapter.dispatch('omop_id', 'medlake')(key)) }}
{%- endmacro %}

{% macro default__omop_id(key) -%}
    cast(('0x' || left(md5(cast({{ key }} as {{ type_varchar() }})), 15)) as bigint)
{%- endmacro %}

{% macro spark__omop_id(key) -%}
    cast(conv(left(md5(cast({{ key }} as string)), 15), 16, 10) as bigint)
{%- endmacro %}
