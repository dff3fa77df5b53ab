"""Build ``bench/data/held_out_2_values.json`` and ``bench/data/dev_2_values.json``: the value
lists of the second held-out set of ``bench/clinical_notes.py`` and of a second dev set, from a
source the recognizers and the first two sets never used.

Names and towns come from the ``mimesis`` package's data (MIT licence; English, British,
Australian and Canadian locales), not from Faker (the name gazetteer of
``governance/recognizers.py``) nor from the corpus' Synthea records (the dev and first held-out
sets): every value either of those sets can plant is removed, so the three sets share no
name, surname, town or hospital. Hospitals are made from these surnames and towns with care-site
words. Each value is marked with whether the recognizers' own lists (Faker names, GeoNames
places) hold it, so the benchmark can report names no list of ours knows apart.

The second dev set (to read while tuning, as the first) draws from mimesis's other European
locales, less every value of the held-out 2 lists, so the two never share a value.

mimesis is not a dependency of the project; this script reads an unpacked wheel, run once:

    python3 -m pip download mimesis==19.0.0 --no-deps -d /tmp/mim
    unzip -q /tmp/mim/mimesis-19.0.0-py3-none-any.whl -d /tmp/mim/x
    .venv/bin/python bench/build_held_out_2.py /tmp/mim/x
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from clinical_notes import _hospital_names, _synthea_values

from medlake.governance.recognizers import gazetteer, place_names

DATA = Path(__file__).resolve().parent / "data"
OUT = DATA / "held_out_2_values.json"
DEV_OUT = DATA / "dev_2_values.json"
LOCALES = ("en", "en-gb", "en-au", "en-ca")
#: The dev set's lists are a seeded sample of this many values each (its locales hold ~30,000).
SAMPLE_SIZE = 2000
DEV_SAMPLE_SEED = 1207
DEV_LOCALES = ("de", "nl", "it", "es", "fr", "pl", "sv", "da", "no", "fi", "pt", "cs", "hu")
VERSION = "19.0.0"
#: Care-site words a hospital name is made of (not the Synthea organisation names).
SITE_FORMS = (
    "{last} Memorial Hospital",
    "{town} Regional Medical Center",
    "{town} General Hospital",
    "{last} Family Clinic",
    "St. {first}'s Hospital",
    "{town} Community Health Center",
    "{last} County Hospital",
    "{town} Urgent Care",
)


def build(
    unpacked: Path,
    locales: tuple[str, ...] = LOCALES,
    exclude: frozenset[str] = frozenset(),
    sample: int = 0,
) -> dict[str, object]:
    """The value lists of ``locales``, less Synthea's values and ``exclude`` (case-folded);
    with ``sample`` (a seed), :data:`SAMPLE_SIZE` values of each list."""
    data = unpacked / "mimesis" / "datasets"
    first: set[str] = set()
    last: set[str] = set()
    towns: set[str] = set()
    for locale in locales:
        person = json.loads((data / locale / "person.json").read_text(encoding="utf-8"))
        for names in person["names"].values():
            first.update(names)
        surnames = person["surnames"]
        last.update(surnames if isinstance(surnames, list) else
                    [s for group in surnames.values() for s in group])
        address = json.loads((data / locale / "address.json").read_text(encoding="utf-8"))
        towns.update(address.get("city", []))
    synthea = _synthea_values()
    used = {v.casefold() for key in ("first", "last", "town") for v in synthea[key]}
    used |= {v.casefold() for v in _hospital_names(synthea["org"])} | exclude
    plain = re.compile(r"[A-Za-z][A-Za-z' .-]+")

    def fresh(values: set[str]) -> list[str]:
        return sorted(v for v in values if plain.fullmatch(v) and v.casefold() not in used)

    known_first, known_last, _ = gazetteer()
    known_names = known_first | known_last
    places = place_names()[0]
    first_names, last_names, town_names = fresh(first), fresh(last - first), fresh(towns)
    if sample:  # a seeded sample keeps the vendored file small
        rng = random.Random(sample)
        first_names, last_names, town_names = (
            sorted(rng.sample(values, min(len(values), SAMPLE_SIZE)))
            for values in (first_names, last_names, town_names)
        )
    return {
        "source": f"mimesis {VERSION} (MIT licence), datasets {', '.join(locales)}: person.json "
        "names and surnames, address.json cities; less every value of the corpus' Synthea "
        "records (the dev and first held-out sets)",
        "first": first_names,
        "last": last_names,
        "town": town_names,
        "site_forms": list(SITE_FORMS),
        "unlisted_first": [v for v in first_names if v.casefold() not in known_names],
        "unlisted_last": [v for v in last_names if v.casefold() not in known_names],
        "towns_geonames_holds": sum(1 for v in town_names if v.casefold() in places),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("unpacked", type=Path, help="an unpacked mimesis wheel")
    args = parser.parse_args(argv)
    held_out = build(args.unpacked)
    taken = frozenset(
        v.casefold() for key in ("first", "last", "town") for v in held_out[key]  # type: ignore[attr-defined]
    )
    dev = build(args.unpacked, DEV_LOCALES, exclude=taken, sample=DEV_SAMPLE_SEED)
    DATA.mkdir(parents=True, exist_ok=True)
    for path, values in ((OUT, held_out), (DEV_OUT, dev)):
        path.write_text(json.dumps(values, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        counts = {k: len(v) for k, v in values.items() if isinstance(v, list)}
        print(f"wrote {path}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
