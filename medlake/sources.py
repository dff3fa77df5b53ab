"""What a source DAG (dags/medlake_sources.py) is made of beyond its task: its schedule, sensor,
pool and retries (``MEDLAKE__AIRFLOW__*``), and the bronze asset events it emits.

- Schedule (``MEDLAKE__AIRFLOW__SOURCE_SCHEDULE``): unset, the DAG runs when `medlake run`
  triggers it; a cron expression or preset, on that schedule, each run first waiting (a sensor,
  rescheduled so it holds no worker slot) for files in its landing folder; ``asset``, on an event
  of its landing folder's asset ``landing.<kind>`` (a delivery system posts it through the REST API).
- Pool: one per source, ``medlake_<kind>`` with ``MEDLAKE__AIRFLOW__POOL_SLOTS`` slots, made by
  `medlake run` when it starts the local Airflow (:func:`pools`), so one source's backlog cannot
  take every worker slot from the others.
- Retries: ``MEDLAKE__AIRFLOW__RETRIES``, per source over it ``MEDLAKE__AIRFLOW__SOURCE_RETRIES``.
- Asset events: each bronze table the ingest wrote, with the lake, the Delta version it left and
  the run id in ``extra``; the curation run they trigger reads bronze at exactly those versions
  (:func:`trigger_versions`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medlake.config import Settings
from medlake.registry import SOURCE_DAGS

#: the schedule setting's value that schedules a source DAG on its landing folder's asset
ASSET = "asset"


def pool(kind: str) -> str:
    """The Airflow pool of a source's tasks: ``medlake_fhir``."""
    return f"medlake_{kind}"


def pools(settings: Settings) -> dict[str, int]:
    """Every source's pool and its slots."""
    return {pool(kind): settings.airflow.pool_slots for kind in SOURCE_DAGS.values()}


def retries(settings: Settings, kind: str) -> int:
    return settings.airflow.source_retries.get(kind, settings.airflow.retries)


def schedule(settings: Settings) -> str | None:
    """The cron schedule of the source DAGs, ``asset``, or None (triggered only)."""
    value = (settings.airflow.source_schedule or "").strip()
    return value or None


def sensed(settings: Settings) -> bool:
    """A cron-scheduled run waits for files in its landing folder first."""
    found = schedule(settings)
    return found is not None and found != ASSET


def has_files(landing: str | Path, kind: str) -> bool:
    """Whether ``landing/<kind>/`` holds a file (hidden ones, a delivery still being copied, aside)."""
    folder = Path(landing) / kind
    if not folder.is_dir():
        return False
    return any(
        p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        for p in folder.rglob("*")
    )


def bronze_versions(lake: str | Path, tables: Iterable[str], versions: Mapping[str, object]) -> dict[str, int | None]:
    """Each bronze table's Delta version after this run's ingest: the version it wrote, else the
    current one (None: the table does not exist yet, nothing ever landed)."""
    from medlake.lake import Lake

    target = Lake(Path(lake).resolve())
    found: dict[str, int | None] = {}
    for table in tables:
        wrote = versions.get(table)
        found[table] = wrote if isinstance(wrote, int) else target.version(table)
    return found


def bronze_events(
    lake: str | Path,
    own: Mapping[str, int | None],
    run_id: str,
    named: Mapping[str, int] | None = None,
    engine: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``extra`` of each of a run's bronze tables' asset event: the lake, the table's version
    (``own``), the run id, ``versions``: every bronze version the event names for curation
    (its own, and those of the other sources of the same delivery, :func:`announce`), and the
    engine the run was asked for (``medlake run --engine``; empty: the setting), which the
    curation run it triggers runs on too (:func:`trigger_engine`)."""
    root = str(Path(lake).resolve())
    versions = dict(named or {name: v for name, v in own.items() if v is not None})
    return {
        table: {"lake": root, "run_id": run_id, "version": version, "versions": versions, "engine": engine or ""}
        for table, version in own.items()
    }


def trigger_engine(events: Mapping[Any, Iterable[Any]]) -> str | None:
    """The engine the triggering bronze events name (one; none named: None, the setting's)."""
    named = {
        str((getattr(e, "extra", None) or {}).get("engine") or "") for found in events.values() for e in found
    } - {""}
    if len(named) > 1:
        raise ValueError(f"one curation run runs on one engine; its triggers name {sorted(named)}")
    return named.pop() if named else None


def last_versions(ingested: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """The bronze versions a run's mapped ingests left (their XComs, in batch order): the last
    version each table got."""
    found: dict[str, int] = {}
    for result in ingested:
        versions = result.get("versions") if isinstance(result, Mapping) else None
        for name, version in (versions or {}).items() if isinstance(versions, Mapping) else ():
            if isinstance(version, int):
                found[str(name)] = max(version, found.get(str(name), version))
    return found


def trigger_versions(
    events: Mapping[Any, Iterable[Any]], lake: str
) -> dict[str, int]:
    """From a run's triggering asset events: each bronze table → the highest version its events
    name for this lake (events of several source runs may have queued up before the run)."""
    found: dict[str, int] = {}
    for asset, queued in events.items():
        for event in queued:
            name = getattr(getattr(event, "asset", None), "name", None) or getattr(asset, "name", None)
            extra = getattr(event, "extra", None) or {}
            if extra.get("lake") != lake:
                continue
            named = dict(extra.get("versions") or {})
            if name is not None:
                named[str(name)] = extra.get("version")
            for table, version in named.items():
                if isinstance(version, int):
                    found[table] = max(version, found.get(table, version))
    return found


# --- large landings: file batches, one mapped ingest task each -----------------------------------

#: files every batch of a kind carries (the CSV mapping files say how to read the extracts)
SHARED_SUFFIXES: dict[str, tuple[str, ...]] = {"csv": (".mapping.yaml", ".mapping.yml")}
PLANS = "_landing_batches"


def _units(folder: Path, kind: str) -> tuple[list[list[str]], list[str]]:
    """The landing files of a kind as units that stay together (a file and its companions with the
    same stem in the same folder: a PhysioNet header and its signal, a VCF and its index), and the
    files every batch carries; paths relative to the landing folder, hidden ones left out."""
    shared_suffixes = SHARED_SUFFIXES.get(kind, ())
    units: dict[tuple[str, str], list[str]] = {}
    shared: list[str] = []
    if not folder.is_dir():
        return [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        name = f"{kind}/{relative.as_posix()}"
        if path.name.endswith(shared_suffixes):
            shared.append(name)
        else:
            units.setdefault((relative.parent.as_posix(), path.name.split(".")[0]), []).append(name)
    return list(units.values()), shared


def plan_batches(landing: str | Path, kind: str, lake: str | Path, *, run_id: str, size: int) -> list[int]:
    """Split ``landing/<kind>/`` into batches of about ``size`` files (0: one batch), written to
    ``<lake>/_landing_batches/<run>/<kind>.json`` so a retried task reads the same batch; returns the
    batch numbers (what the ingest task is mapped over). One batch: the folder itself is ingested."""
    units, shared = _units(Path(landing) / kind, kind)
    batches: list[list[str]] = []
    for unit in units:
        if not batches or (size and len(batches[-1]) + len(unit) > size):
            batches.append([])
        batches[-1].extend(unit)
    if len(batches) <= 1:
        return [0]
    path = _plan_path(lake, run_id, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"landing": str(Path(landing).resolve()), "shared": shared, "batches": batches}))
    return list(range(len(batches)))


def batch_landing(lake: str | Path, kind: str, *, run_id: str, batch: int, landing: str | Path) -> tuple[str, str]:
    """The landing folder and batch id of one mapped ingest: the landing folder itself under the run
    id when there is one batch; else a folder of links to the batch's files (the same relative
    names, so bronze and the quarantine name files as an unbatched run does) under the batch id
    ``<run id>.b<n>``, its own batch in bronze and in the pending ledger."""
    path = _plan_path(lake, run_id, kind)
    if not path.is_file():
        return str(landing), run_id
    plan = json.loads(path.read_text())
    view = path.parent / f"{kind}-{batch:05d}"
    if view.exists():
        shutil.rmtree(view)
    for name in [*plan["shared"], *plan["batches"][batch]]:
        link = view / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(plan["landing"]) / name)
    return str(view), f"{run_id}.b{batch:05d}"


def _plan_path(lake: str | Path, run_id: str, kind: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return Path(lake).resolve() / PLANS / safe / f"{kind}.json"


def drop_batch_landing(landing: str | Path) -> None:
    """Remove a batch's folder of links after its ingest (never the landing folder itself)."""
    path = Path(landing)
    if path.parent.parent.name == PLANS and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


# --- one delivery, several sources: announced together -------------------------------------------

DELIVERIES = "_deliveries"


def announce(
    lake: str | Path, kind: str, versions: Mapping[str, int | None], *, delivery: str,
    sources: Iterable[str], timeout: float, poll: float = 2.0,
) -> dict[str, int]:
    """The bronze versions a source run's event names when `medlake run` delivered several sources
    at once (``delivery``: its id; ``sources``: the kinds it triggered): this source's, and those
    of every other source of the delivery that has published by the time all have, or ``timeout``
    seconds have passed (a failed source names nothing). Each source run writes its versions to
    ``<lake>/_deliveries/<delivery>/<kind>.json`` and waits for the others, so the curation run the
    first event triggers reads the whole delivery (a lab row and its patient's record, from two
    sources, curated together) and the later ones find it curated. No delivery: this source's."""
    import time

    own = {name: v for name, v in versions.items() if isinstance(v, int)}
    if not delivery:
        return own
    folder = Path(lake).resolve() / DELIVERIES / "".join(c if c.isalnum() or c in "-_." else "_" for c in delivery)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{kind}.json"
    (folder / f".{kind}.tmp").write_text(json.dumps(own))
    (folder / f".{kind}.tmp").replace(marker)
    wanted = set(sources) | {kind}
    deadline = time.monotonic() + timeout
    while not all((folder / f"{k}.json").is_file() for k in wanted) and time.monotonic() < deadline:
        time.sleep(poll)
    found: dict[str, int] = {}
    for k in sorted(wanted):
        path = folder / f"{k}.json"
        if path.is_file():
            found.update(json.loads(path.read_text()))
    return {**found, **own}


def pending_at(lake: str | Path, versions: Mapping[str, int]) -> dict[str, list[str]]:
    """The batches not yet curated in the bronze tables at the versions a trigger names."""
    from medlake.lake import Lake
    from medlake.pending import pending

    return pending(Lake(Path(lake).resolve()), versions=versions)
