"""Schema drift: element paths that no view reads are reported, and the run goes on."""

from __future__ import annotations

from medlake.jobs.views.coverage import describe, element_paths, read_paths, unread_elements
from medlake.jobs.views.engine import compile_view

VIEW = compile_view(
    {
        "resource": "Observation",
        "constant": [{"name": "loinc", "valueUri": "http://loinc.org"}],
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "code", "path": "code.coding.where(system = %loinc).first().code"},
                    {"name": "value", "path": "value.ofType(Quantity).value"},
                    {"name": "has_components", "path": "component.exists()"},
                ]
            },
            {"forEach": "component", "column": [{"name": "c", "path": "code.coding.first().code"}]},
        ],
    }
)
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
    "valueQuantity": {"value": 72, "unit": "/min"},
    "component": [{"code": {"coding": [{"code": "x"}]}}],
}


def test_read_paths_follow_navigation_functions_and_choice_types() -> None:
    assert {".".join(p) for p in read_paths(VIEW)} == {
        "id",
        "code.coding.system",
        "code.coding.code",
        "valueQuantity.value",
        "component.code.coding.code",
    }


def test_element_paths_name_extensions_by_url() -> None:
    resource = {
        "resourceType": "Patient",
        "extension": [{"url": "http://x/ward", "valueString": "B"}],
    }
    assert element_paths(resource) == {("extension(http://x/ward)", "valueString")}


def test_an_unknown_extension_and_an_unexpected_element_are_reported_with_counts() -> None:
    drifted = {
        **OBSERVATION,
        "id": "o2",
        "extension": [{"url": "http://hospital.example/fhir/ward", "valueString": "B"}],
        "bodySite": {"coding": [{"code": "368209003"}]},
    }
    unread = unread_elements([OBSERVATION, drifted, {"resourceType": "Patient", "id": "p"}], [VIEW])
    assert unread == {
        "Observation": {
            "Observation.code.text": 2,
            "Observation.valueQuantity.unit": 2,
            "Observation.extension(http://hospital.example/fhir/ward).valueString": 1,
            "Observation.bodySite.coding.code": 1,
        }
    }
    (line,) = describe(unread, limit=2)
    assert line.startswith(
        "Observation: 4 element path(s) no view reads: Observation.code.text (2)"
    )
    assert line.endswith("and 2 more")
    assert VIEW.rows([drifted]) == [
        {"id": "o2", "code": "8867-4", "value": 72, "has_components": True, "c": "x"}
    ]
