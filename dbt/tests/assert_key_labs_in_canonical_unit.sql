-- Returns rows if a key lab or vital reaches silver in a unit other than the canonical UCUM unit
-- of its LOINC code: unit normalization missed it. The mart leaves such values out (it never
-- averages pounds with kilograms), so this warns rather than fails: the values are not lost,
-- they wait in silver for normalization.
{{ config(severity='warn') }}

{%- set key_labs = var('key_labs') %}

select
    observation_key,
    code as loinc_code,
    value_unit
from {{ ref('stg_silver__observations') }}
where code_system = '{{ var("loinc_system") }}'
    and value_num is not null
    and value_unit is not null
    and (
        {%- for loinc_code, lab in key_labs.items() %}
        (code = '{{ loinc_code }}' and value_unit <> '{{ lab.unit }}')
        {{- " or" if not loop.last }}
        {%- endfor %}
    )
