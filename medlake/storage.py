"""A lake on an S3-compatible object store: where its tables are, and how delta-rs reaches them.

A lake given as ``s3://bucket/prefix`` keeps its Delta tables there and its few local files (locks,
the audit log's signed head, run summaries, reports, archived DICOM files, dbt's DuckDB file) in
the folder :func:`medlake.config.lake_root` maps the URI to. :class:`LakePath` is a path in that
folder whose ``str()`` is the table's URI: code that opens a Delta table with ``str(path)`` reaches
the object store, and code that locks or writes a file beside it (``os.open``, ``Path.open``, which
use ``os.fspath``) writes the local file.

delta-rs reads the endpoint and credentials from ``AWS_*`` variables and the CA from
``SSL_CERT_FILE``; :func:`use_object_store` sets them from the ``MEDLAKE__S3__*`` settings once per
process (secrets read from their files, never logged).
"""

from __future__ import annotations

import os
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING

from medlake.config import object_uri

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from medlake.config import S3Settings

_configured = False


class LakePath(PosixPath):
    """A local path below a remote lake's folder; ``str()`` is the object-store URI of the same
    place, ``os.fspath()`` the local file (see the module's docstring)."""

    def __str__(self) -> str:
        local = super().__str__()
        return object_uri(Path(local)) or local

    def __fspath__(self) -> str:
        return super().__str__()


def storage_options(settings: S3Settings) -> dict[str, str]:
    """delta-rs storage options (object_store's AWS keys) for the object store of the settings."""
    options = {"AWS_REGION": settings.region}
    if settings.endpoint:
        options["AWS_ENDPOINT_URL"] = settings.endpoint
        if settings.endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    for name, path, env in (
        ("AWS_ACCESS_KEY_ID", settings.access_key_file, "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", settings.secret_key_file, "AWS_SECRET_ACCESS_KEY"),
    ):
        value = _read_secret(path) if path is not None else os.environ.get(env)
        if value:
            options[name] = value
    return options


def use_object_store(settings: S3Settings | None = None, *, force: bool = False) -> None:
    """Point this process's delta-rs (and its children) at the object store of the settings."""
    global _configured
    if _configured and not force:
        return
    if settings is None:
        from medlake.config import Settings

        settings = Settings().s3
    os.environ.update(storage_options(settings))
    if settings.ca_file is not None:
        os.environ["SSL_CERT_FILE"] = str(settings.ca_file)  # rustls (delta-rs) and OpenSSL read it
        os.environ["AWS_CA_BUNDLE"] = str(settings.ca_file)  # boto3 (MLflow's artifact client)
    _configured = True


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem over the object store holding ``location``, and the path in it of ``location``."""
    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    use_object_store()
    scheme, _, rest = location.partition("://")
    bucket = rest.split("/", 1)[0]
    handler = DeltaStorageHandler(f"{scheme}://{bucket}", dict(storage_options_from_env()))
    return pafs.PyFileSystem(handler), rest.split("/", 1)[1] if "/" in rest else ""


def storage_options_from_env() -> dict[str, str]:
    keys = ("AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return {k: os.environ[k] for k in keys if os.environ.get(k)}


def delta_tables(location: str) -> list[str]:
    """The folders below ``location`` holding a ``_delta_log``, relative to it ('/'-separated)."""
    import pyarrow.fs as pafs

    fs, prefix = filesystem(location)
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    found: set[str] = set()
    for info in fs.get_file_info(selector):
        parts = info.path[len(prefix):].strip("/").split("/")
        if "_delta_log" in parts:
            found.add("/".join(parts[: parts.index("_delta_log")]))
    return sorted(f for f in found if f)


def delete_tree(location: str) -> None:
    """Remove every object below ``location`` (a run's scratch tables, dbt-spark's seeds), and the
    folder markers the store keeps below it: versitygw keeps ``…/_delta_log/_staged_commits/``
    once its files are gone, which object_store neither lists nor deletes, and dbt-spark then
    refuses to create a table over a folder that is "not empty and also not a Delta table"."""
    import pyarrow.fs as pafs

    fs, prefix = filesystem(location)
    for info in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            fs.delete_file(info.path)
    if location.partition("://")[0] in ("s3", "s3a"):
        _delete_folder_markers(location)


def _delete_folder_markers(location: str) -> None:
    """Delete every key left below an ``s3://`` location (folder markers), deepest first, through
    the S3 API itself (boto3, in the ``infra`` extra that an object-store lake is deployed with)."""
    import boto3

    env = storage_options_from_env()
    bucket, _, prefix = location.partition("://")[2].partition("/")
    client = boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL"),
        region_name=env.get("AWS_REGION"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
    )
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        for item in page.get("Contents", [])
    ]
    for key in sorted(keys, reverse=True):  # a folder's keys before the folder's own marker
        client.delete_object(Bucket=bucket, Key=key)


def _read_secret(path: Path) -> str:
    mode = path.stat().st_mode & 0o077
    if mode:
        raise PermissionError(f"{path} is readable by others: chmod 600 {path}")
    return path.read_text(encoding="utf-8").strip()


def lake_path(root: Path | str) -> Path:
    """``root`` as a :class:`LakePath` when it is a remote lake's folder, else as a plain path."""
    return LakePath(root) if object_uri(Path(root)) is not None else Path(root)
