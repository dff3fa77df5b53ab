{#- source(), as dbt's, except on Spark: a silver source is the Delta table at
    <lake>/silver/<table> read at its pinned version (var silver_versions), as
    delta.`<path>` VERSION AS OF <n>. On DuckDB the medlake_delta plugin (the source's meta)
    does the same, so both targets read the same silver rows. -#}
{% macro source(source_name, table_name) -%}
    {%- set relation = builtins.source(source_name, table_name) -%}
    {{ return(adapter.dispatch('source_relation', 'medlake')(source_name, table_name, relation)) }}
{%- endmacro %}

{% macro default__source_relation(source_name, table_name, relation) -%}
    {{ return(relation) }}
{%- endmacro %}

{% macro spark__source_relation(source_name, table_name, relation) -%}
    {%- if source_name != 'silver' -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- set path = var('lake') ~ '/silver/' ~ table_name -%}
    {%- set version = var('silver_versions').get(table_name, '') -%}
    {%- set pinned = '' if version in (none, '') else ' version as of ' ~ (version | int) -%}
    {{ return('delta.`' ~ path ~ '`' ~ pinned) }}
{%- endmacro %}

{#- Spark: schemas (the session's catalog databases) live under <lake>/gold/_dbt/spark/, not in
    the session's warehouse folder (by default spark-warehouse/ in the working directory). -#}
{% macro spark__create_schema(relation) -%}
    {%- call statement('create_schema') -%}
        create schema if not exists {{ relation }}
        location '{{ var("lake") }}/gold/_dbt/spark/{{ relation.schema }}.db'
    {%- endcall -%}
{%- endmacro %}
