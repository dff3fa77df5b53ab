{#- Whole years from birth_date to at_date: the age on at_date, as a birthday count. -#}
{% macro age_in_years(birth_date, at_date) -%}
    (
        extract(year from {{ at_date }}) - extract(year from {{ birth_date }})
        - case
            when extract(month from {{ at_date }}) * 100 + extract(day from {{ at_date }})
                < extract(month from {{ birth_date }}) * 100 + extract(day from {{ birth_date }})
            then 1
            else 0
        end
    )
{%- endmacro %}

{#- A five-year age band ('0-4', ..., '85-89'), ages above var('age_top_code') as '90+'
    (HIPAA Safe Harbor). Null when the age is unknown or negative (birth after the date). -#}
{% macro age_band(age_years) -%}
    {%- set top = var('age_top_code') | int -%}
    case
        when {{ age_years }} is null or {{ age_years }} < 0 then null
        when {{ age_years }} > {{ top }} then '{{ top + 1 }}+'
        else
            cast(cast(floor({{ age_years }} / 5) * 5 as integer) as {{ type_varchar() }})
            || '-'
            || cast(least(cast(floor({{ age_years }} / 5) * 5 as integer) + 4, {{ top }}) as {{ type_varchar() }})
    end
{%- endmacro %}
