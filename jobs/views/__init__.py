"""SQL-on-FHIR v2 ViewDefinitions: which FHIR element fills which silver column.

- ``engine``: compiles and evaluates a ViewDefinition over FHIR resources (``medlake views test``
  runs the official conformance suite against it).
- ``definitions/``: one view per FHIR-fed silver table, read by ``medlake.jobs.ingest.fhir``.
- ``coverage``: schema drift, the elements in bronze that no view reads.
- ``tables``: extra silver tables from a folder of views (``examples/immunizations.json``).
"""
