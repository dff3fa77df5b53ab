"""Read silver Delta tables (written by delta-rs) as dbt-duckdb sources, at a pinned version.

This is dbt-duckdb's ``delta`` plugin with one fix: ``as_of_version: 0`` is honoured (the
built-in plugin tests the version for truthiness and silently reads the latest version
instead), and the table is read single-threaded into Arrow. Sources name it with ``meta: {plugin: medlake_delta, delta_table_path: ...}``.
It only reads: the marts are written back to the lake as Delta by medlake.jobs.gold.
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.duckdb.plugins import delta
from dbt.adapters.duckdb.utils import SourceConfig
from deltalake import DeltaTable


class Plugin(delta.Plugin):
    def load(self, source_config: SourceConfig) -> Any:
        if "delta_table_path" not in source_config:
            raise ValueError(f"source {source_config.table_name()} has no meta.delta_table_path")
        path = source_config["delta_table_path"]
        if not DeltaTable.is_deltatable(path):
            raise FileNotFoundError(
                f"source {source_config.table_name()}: no Delta table at {path} "
                "(is --vars '{lake: <lake root>}' set? build_gold creates missing silver tables "
                "empty before running dbt)"
            )
        table = DeltaTable(path, storage_options=source_config.get("storage_options") or None)
        version = source_config.get("as_of_version")
        if version not in (None, ""):
            table.load_as_version(int(version))
        # Materialized single-threaded: DuckDB's threaded scan of a delta-rs dataset can leave a
        # thread that aborts the process at exit (deltalake 1.6). Silver tables fit in memory.
        return table.to_pyarrow_dataset().to_table(use_threads=False)
