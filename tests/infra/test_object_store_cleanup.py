"""Dropping a folder of an ``s3://`` lake leaves nothing below it on a real S3 server (versitygw).

versitygw keeps a Delta log's empty ``_staged_commits/`` folder as an object once its files are
gone; object_store neither lists nor deletes it, and dbt-spark then refused to create its seed
table over the "not empty" folder on the second curation run of ``make prod-demo``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from medlake import storage

pytestmark = [pytest.mark.infra]

REPO = Path(__file__).resolve().parents[2]
VERSITYGW = REPO / ".venv" / "infra-bin" / "versitygw"
ACCESS, SECRET = "medlake-test", "medlake-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    assert VERSITYGW.exists(), f"no {VERSITYGW}: make infra-test-deps builds it"
    (tmp_path / "data" / "lake").mkdir(parents=True)
    port = _free_port()
    env = {"ROOT_ACCESS_KEY_ID": ACCESS, "ROOT_SECRET_ACCESS_KEY": SECRET, "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        [str(VERSITYGW), "--port", f"127.0.0.1:{port}", "posix", str(tmp_path / "data")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ALLOW_HTTP", "true"),
                            ("AWS_ACCESS_KEY_ID", ACCESS), ("AWS_SECRET_ACCESS_KEY", SECRET),
                            ("AWS_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(storage, "_configured", True)  # the variables above are the store's
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS, aws_secret_access_key=SECRET)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dropping_a_folder_removes_its_files_and_the_folder_markers_the_store_keeps(s3) -> None:
    keys = ["gold/seeds/codes/_delta_log/00000000000000000000.json", "gold/seeds/codes/part-0.parquet",
            "gold/seeds/codes/_delta_log/_staged_commits/", "gold/other/part-0.parquet"]
    for key in keys:
        s3.put_object(Bucket="lake", Key=key, Body=b"" if key.endswith("/") else b"rows")

    storage.delete_tree("s3://lake/gold/seeds/codes")

    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lake").get("Contents", []))
    assert left == ["gold/other/part-0.parquet"]
