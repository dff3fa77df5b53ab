-- Returns rows if an OMOP visit ends before it starts: CDM tools (Achilles, the Data Quality
-- Dashboard) reject such visits, and lengths of stay computed from them would be negative.

select
    visit_occurrence_id,
    visit_start_date,
    visit_end_date
from {{ ref('omop_visit_occurrence') }}
where visit_end_date < visit_start_date
