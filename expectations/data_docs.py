"""Great Expectations Data Docs: the gate's validation results as a static HTML site in the lake.

The site is ``<lake>/_quality/data_docs/`` (``index.html`` plus one page per suite and validation).
It is rebuilt once per gate task from that task's validation results, so its index shows the
latest gate run; the compliance report links :func:`index_path`. Pages show the expectations,
their results and up to GX's sample of unexpected values of staged (pseudonymized, date-shifted)
rows; they hold no direct identifier the staging tables do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlake.lake import Lake

#: the site's name in the GX context
SITE = "medlake"
#: where the site lives below the lake root
DATA_DOCS_DIR = Path("_quality") / "data_docs"


def site_dir(lake: Lake) -> Path:
    """The folder of the lake's Data Docs site."""
    return lake.root / DATA_DOCS_DIR


def index_path(lake: Lake) -> Path:
    """The site's entry page (exists once a gate run with a suite has built it)."""
    return site_dir(lake) / "index.html"


def add_site(context: Any, folder: Path) -> None:
    """Give a GX context a filesystem Data Docs site in ``folder``."""
    context.add_data_docs_site(
        SITE,
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(folder),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def build(context: Any, folder: Path) -> Path:
    """Render the context's validation results into the site in ``folder``; its index.html."""
    folder.mkdir(parents=True, exist_ok=True)
    context.build_data_docs(site_names=[SITE])
    index = folder / "index.html"
    if not index.is_file():
        raise RuntimeError(f"Great Expectations built no Data Docs index at {index}")
    return index
