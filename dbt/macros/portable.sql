{#- Type names and functions that DuckDB and Spark spell differently. Models use these (and
    dbt's cross-database macros: dbt.position, ...) wherever the SQL would differ, so the project
    compiles and builds the same tables on both targets. A new difference gets a macro here,
    with a default__ (DuckDB's spelling) and a spark__ implementation. -#}

{#- A string type: DuckDB's varchar, Spark's string (Spark's varchar needs a length). -#}
{% macro type_varchar() -%}
    {{ return(adapter.dispatch('type_varchar', 'medlake')()) }}
{%- endmacro %}

{% macro default__type_varchar() -%}
    {{ return('varchar') }}
{%- endmacro %}

{% macro spark__type_varchar() -%}
    {{ return('string') }}
{%- endmacro %}

{#- An instant (UTC): DuckDB's timestamptz, Spark's timestamp (TIMESTAMP_LTZ, shown in the
    session time zone, which medlake sets to UTC). -#}
{% macro type_timestamptz() -%}
    {{ return(adapter.dispatch('type_timestamptz', 'medlake')()) }}
{%- endmacro %}

{% macro default__type_timestamptz() -%}
    {{ return('timestamptz') }}
{%- endmacro %}

{% macro spark__type_timestamptz() -%}
    {{ return('timestamp') }}
{%- endmacro %}

{#- The Spark spelling of a type named as DuckDB (and the OMOP contracts in the YAML) name it:
    varchar -> string, timestamp with time zone / timestamptz -> timestamp; others unchanged. -#}
{% macro spark_type_name(type) -%}
    {%- set name = type | trim | lower -%}
    {%- if name == 'varchar' or name.startswith('varchar(') -%}
        {{ return('string') }}
    {%- elif name in ('timestamptz', 'timestamp with time zone') -%}
        {{ return('timestamp') }}
    {%- else -%}
        {{ return(type) }}
    {%- endif -%}
{%- endmacro %}

{#- dbt.cast on Spark, with the type translated: dbt checks an enforced contract by casting null
    to each declared data_type, so the YAML's DuckDB type names work on Spark too. -#}
{% macro spark__cast(field, type) -%}
    cast({{ field }} as {{ spark_type_name(type) }})
{%- endmacro %}

{#- An OHDSI Athena vocabulary file (tab-separated, no quoting, every column text) as a relation.
    DuckDB reads it with read_csv. Spark SQL has no table function taking CSV options, so the
    spark target refuses vocabulary_dir for now (its concepts come from the shipped seed). -#}
{% macro athena_csv(path) -%}
    {{ return(adapter.dispatch('athena_csv', 'medlake')(path)) }}
{%- endmacro %}

{% macro default__athena_csv(path) -%}
    read_csv(
        '{{ path | replace("'", "''") }}',
        delim = '\t', header = true, quote = '', escape = '', all_varchar = true
    )
{%- endmacro %}

{% macro spark__athena_csv(path) -%}
    {{ exceptions.raise_compiler_error(
        "vocabulary_dir is not supported on the spark target yet (" ~ path ~ "): "
        ~ "build with the duckdb target, or without vocabulary_dir"
    ) }}
{%- endmacro %}

{#- An enforced contract's NOT NULL columns on Spark. dbt-spark alters each column to NOT NULL,
    which open-source Delta refuses on an existing column ("Cannot change nullable column to
    non-nullable"); a CHECK (<column> is not null) constraint is what Delta offers instead: it
    verifies the rows already written and rejects any later write of a null. build_gold then
    writes these columns non-nullable to gold, as on DuckDB. -#}
{% macro spark__alter_column_set_constraints(relation, column_dict) -%}
    {%- for column_name in column_dict -%}
        {%- set column = column_dict[column_name] -%}
        {%- for constraint in column['constraints'] -%}
            {%- if constraint.type != 'not_null' -%}
                {{ exceptions.warn('Invalid constraint for column ' ~ column_name ~ '. Only `not_null` is supported.') }}
            {%- else -%}
                {%- set quoted_name = adapter.quote(column_name) if column['quote'] else column_name -%}
                {%- call statement() -%}
                    alter table {{ relation }} add constraint {{ column_name }}_not_null
                    check ({{ quoted_name }} is not null)
                {%- endcall -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endfor -%}
{%- endmacro %}


{# The start of the fixed window of `seconds` holding the timestamp `ts`: windows start at
   multiples of `seconds` counted from 1970-01-01 00:00 UTC. #}
{% macro window_start(ts, seconds) -%}
    {{ return(adapter.dispatch('window_start', 'medlake')(ts, seconds)) }}
{%- endmacro %}

{% macro default__window_start(ts, seconds) -%}
    to_timestamp(floor({{ epoch_seconds(ts) }} / {{ seconds }}) * {{ seconds }})
{%- endmacro %}

{% macro spark__window_start(ts, seconds) -%}
    timestamp_seconds(cast(floor({{ epoch_seconds(ts) }} / {{ seconds }}) * {{ seconds }} as bigint))
{%- endmacro %}


{# Seconds since 1970-01-01 00:00 UTC of the timestamp `ts`. #}
{% macro epoch_seconds(ts) -%}
    {{ return(adapter.dispatch('epoch_seconds', 'medlake')(ts)) }}
{%- endmacro %}

{% macro default__epoch_seconds(ts) -%}
    epoch({{ ts }})
{%- endmacro %}

{% macro spark__epoch_seconds(ts) -%}
    unix_timestamp({{ ts }})
{%- endmacro %}
