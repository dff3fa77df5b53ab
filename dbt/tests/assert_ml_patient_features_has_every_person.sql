-- Returns rows if a person of silver.patients has no row in ml_patient_features: the mart lost
-- a person between silver and gold (a join or filter dropped them).

select distinct patients.person_key
from {{ ref('stg_silver__patients') }} as patients
left join {{ ref('ml_patient_features') }} as features
    on patients.person_key = features.person_key
where features.person_key is null
