"""What medlake leaves on disk is for the service principal only: folders 0700, files 0600.

The lake (Delta files, the dbt DuckDB file and its compiled SQL, run summaries, reports, the
lineage events), ``$MEDLAKE_HOME`` (keys, Airflow's logs and database, MLflow's runs) hold PHI or
data derived from it. Access control lives in medlake's read paths (governance/access.py); a
world-readable file would let any local user read around it. The lake root and ``$MEDLAKE_HOME``
are made 0700, which closes everything below them even where a library (DuckDB, Airflow,
MLflow) created a file 0644; files medlake itself writes outside the lake are made 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (created when missing)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def private_tree(path: Path) -> None:
    """Every folder under ``path`` 0700 and every file 0600 (symlinks are left alone)."""
    if not path.exists():
        return
    os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            target = Path(folder, name)
            if not target.is_symlink():
                os.chmod(target, PRIVATE_DIR)
        for name in files:
            target = Path(folder, name)
            if not target.is_symlink():
                os.chmod(target, PRIVATE_FILE)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (0600), folder created 0700 when missing."""
    if not path.parent.exists():
        private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, PRIVATE_FILE)
    return path
