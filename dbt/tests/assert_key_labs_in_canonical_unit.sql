-- Returns rows if a key lab or vital reaches gold in a unit other than the canonical UCUM unit
-- of its LOINC code: silver's unit normalization missed it, and the mart's means would mix
-- units (pounds averaged with kilograms).

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
