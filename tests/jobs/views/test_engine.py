"""The ViewDefinition engine: rows and typed tables from FHIR resources."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from medlake.jobs.views.engine import ViewError, compile_path, compile_view, load_view

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "birthDate": "1970-03-04",
    "name": [{"family": "Doe", "given": ["Jane", "Q"]}, {"family": "Roe"}],
    "address": [],
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "component": [
        {
            "code": {"coding": [{"code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"code": "8462-4"}]},
            "valueQuantity": {"value": 80.5, "unit": "mm[Hg]"},
        },
    ],
}


def test_typed_table_with_foreach_and_reference_keys() -> None:
    view = compile_view(
        {
            "resource": "Observation",
            "select": [
                {
                    "column": [
                        {"name": "id", "path": "getResourceKey()"},
                        {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                        {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)"},
                    ]
                },
                {
                    "forEach": "component",
                    "column": [
                        {"name": "position", "path": "%rowIndex", "type": "integer"},
                        {"name": "code", "path": "code.coding.first().code"},
                        {
                            "name": "value",
                            "path": "value.ofType(Quantity).value",
                            "type": "decimal",
                        },
                    ],
                },
            ],
        }
    )
    table = view.table([OBSERVATION, PATIENT])
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("position").type == pa.int64()
    assert table.to_pylist() == [
        {
            "id": "o1",
            "patient": "p1",
            "encounter": None,
            "position": 0,
            "code": "8480-6",
            "value": 120.0,
        },
        {
            "id": "o1",
            "patient": "p1",
            "encounter": None,
            "position": 1,
            "code": "8462-4",
            "value": 80.5,
        },
    ]


def test_for_each_or_null_union_collection_and_where() -> None:
    view = compile_view(
        {
            "resource": "Patient",
            "constant": [{"name": "born_after", "valueDate": "1960-01-01"}],
            "where": [{"path": "birthDate > %born_after"}],
            "select": [
                {"column": [{"name": "given", "path": "name.given", "collection": True}]},
                {"forEachOrNull": "address", "column": [{"name": "zip", "path": "postalCode"}]},
                {
                    "unionAll": [
                        {"forEach": "name", "column": [{"name": "family", "path": "family"}]},
                        {"column": [{"name": "family", "path": "'(none)'"}]},
                    ]
                },
            ],
        }
    )
    old = {**PATIENT, "id": "p2", "birthDate": "1950-01-01"}
    assert view.rows([PATIENT, old]) == [
        {"given": ["Jane", "Q"], "zip": None, "family": "Doe"},
        {"given": ["Jane", "Q"], "zip": None, "family": "Roe"},
        {"given": ["Jane", "Q"], "zip": None, "family": "(none)"},
    ]
    assert view.table([PATIENT]).schema.field("given").type == pa.list_(pa.string())


def test_a_multi_valued_column_names_the_resource() -> None:
    view = compile_view(
        {"resource": "Patient", "select": [{"column": [{"name": "family", "path": "name.family"}]}]}
    )
    with pytest.raises(ViewError, match=r"'family'.*Patient/p1.*collection: true"):
        view.rows([PATIENT])


def test_repeat_walks_nested_items_depth_first() -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {"linkId": "1", "item": [{"linkId": "1.1"}]},
            {"linkId": "2", "answer": [{"item": [{"linkId": "2.1"}]}]},
        ],
    }
    view = compile_view(
        {
            "resource": "QuestionnaireResponse",
            "select": [
                {"repeat": ["item", "answer.item"], "column": [{"name": "link", "path": "linkId"}]}
            ],
        }
    )
    assert [r["link"] for r in view.rows([response])] == ["1", "1.1", "2", "2.1"]


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"select": [{"column": [{"name": "id", "path": "id"}]}]}, "'resource'"),
        ({"resource": "Patient", "select": [{"forEach": "@@"}]}, "not valid FHIRPath"),
        (
            {
                "resource": "Patient",
                "constant": [{"name": "x"}],
                "select": [{"column": [{"name": "a", "path": "%x"}]}],
            },
            "exactly one value",
        ),
        (
            {
                "resource": "Patient",
                "select": [
                    {
                        "unionAll": [
                            {"column": [{"name": "a", "path": "id"}]},
                            {"column": [{"name": "b", "path": "id"}]},
                        ]
                    }
                ],
            },
            "differ from the first branch",
        ),
        (
            {
                "resource": "Patient",
                "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}],
            },
            "more than once",
        ),
    ],
)
def test_invalid_views_are_refused_with_the_reason(definition: dict, message: str) -> None:
    with pytest.raises(ViewError, match=message):
        compile_view(definition)


def test_load_view_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"resource": "Patient", "select": []}))
    with pytest.raises(ViewError, match="broken.json"):
        load_view(path)


IDENTIFIED = {
    **PATIENT,
    "identifier": [
        {"system": "urn:a", "value": "1"},
        {"type": {"coding": [{"system": "urn:t", "code": "MR"}]}, "system": "urn:h", "value": "42"},
    ],
    "extension": [{"url": "urn:race", "extension": [{"url": "text", "valueString": "W"}]}],
    "deceasedBoolean": False,
}


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (PATIENT, "name.given"),
        (PATIENT, "name.first().given.first()"),
        (PATIENT, "address.exists()"),
        (PATIENT, "deceased.exists()"),
        (IDENTIFIED, "deceased.ofType(boolean)"),
        (IDENTIFIED, "extension(%race).last().extension('text').first().value.ofType(string)"),
        (
            IDENTIFIED,
            "identifier.where(type.coding.where(system = %t and code = 'MR').exists() and value.exists()).value",
        ),
        (IDENTIFIED, "identifier.where(system = %t).empty()"),
        (OBSERVATION, "component.value.ofType(Quantity).value"),
        (OBSERVATION, "component.code.coding.where(code = '8462-4').code"),
        (OBSERVATION, "code.coding.where(system = %loinc).first().code"),
    ],
)
def test_plain_paths_read_from_the_json_agree_with_fhirpathpy(
    resource: dict, expression: str
) -> None:
    from medlake.jobs.views.engine import _compile_fhirpath, _Navigation, _plain

    env = {"race": "urn:race", "t": "urn:t", "loinc": "http://loinc.org", "resource": resource}
    fast = compile_path(expression)
    assert isinstance(fast, _Navigation) and fast.walk(resource, env) is not None
    assert fast(resource, env) == [_plain(v) for v in _compile_fhirpath(expression)(resource, env)]
