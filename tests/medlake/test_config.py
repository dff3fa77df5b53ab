"""The README's settings table lists every setting `medlake config` knows, with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medlake.config import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z0-9_]+)`[^|]* \| ([^|]*) \|", README.read_text(), re.MULTILINE)
    return {name: default.strip() for name, default in rows}


@pytest.mark.parametrize(("name", "default"), [(n, d) for n, d, _ in settings_table()])
def test_every_setting_is_in_the_readme_table_with_its_default(name: str, default: str) -> None:
    documented = readme_settings()
    assert name in documented, f"{name} is missing from the README's settings table"
    shown = "unset" if default in ("None", "") else default  # no value: the README says unset
    assert documented[name] == shown
