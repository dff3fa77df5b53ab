"""A local Spark session with delta-spark, shared by the Spark tests and stopped at the end."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from medlake.config import SparkSettings
from medlake.engines.spark import spark_session


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """Spark local[2] with the delta-spark jars from .venv/jars; starts in a few seconds."""
    session = spark_session(SparkSettings(master="local[2]"), app_name="medlake-tests")
    yield session
    session.stop()
    # py4j logs from __del__ after pytest has closed its streams: keep it quiet at exit
    logging.getLogger("py4j").setLevel(logging.WARNING)
