"""Entity-resolution benchmark: Splink linkage time, peak memory and accuracy on synthetic patients.

    .venv/bin/python bench/linkage.py --records 100000     # the figure the README quotes
    .venv/bin/python bench/linkage.py --records 5000 --seed 3

Generates ``--records`` patient identities (vault-shaped, like fhir/hl7v2 ``patient_identities``)
of which a share are second registrations of an earlier person with the sample hospital's kinds
of variation (typo or swapped letters in a name, nickname, missing middle name, reformatted
phone, a one-digit birth-date typo, a moved address), plus twins (same family, birth date,
address and phone; another given name) that must stay apart. Names are drawn Zipf-like from
the sample vocabulary and from syllable-built names, so common names collide as in a city.

Prints the time of :func:`medlake.jobs.clean.dedup.features` and :func:`~dedup.link` (u by random
sampling, m by EM at this size), the peak RSS of the process, and precision/recall of the
pairs that end in one cluster against the planted duplicates.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from medlake.jobs.clean import dedup
from medlake.sample.vocab import FAMILY, FEMALE_GIVEN, MALE_GIVEN, NICKNAMES, STREET_SUFFIXES

SYLLABLES = (
    "an",
    "ber",
    "cal",
    "dor",
    "el",
    "fen",
    "gar",
    "hal",
    "is",
    "jor",
    "ka",
    "lin",
    "mor",
    "nes",
    "ol",
    "per",
    "quin",
    "ros",
    "sten",
    "tor",
    "ul",
    "ven",
    "wes",
    "yor",
)


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


class Names:
    """A name pool drawn Zipf-like: weight 1 / (rank + offset). The offset sets how common the
    commonest name is: ~0.3% for family names (offset 50 over ~20k), ~3% for given names (offset
    5 over ~600), close to US figures (Smith ~0.8%, James ~3% of men)."""

    def __init__(self, pool: list[str], offset: int) -> None:
        self.pool = pool
        total, self.cumulative = 0.0, []
        for rank in range(len(pool)):
            total += 1 / (rank + 1 + offset)
            self.cumulative.append(total)

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.pool, cum_weights=self.cumulative)[0]


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(1, len(text))
    return text[:i] + rng.choice("aeinorstl") + text[i + 1 :]


def _swap(rng: random.Random, text: str) -> str:
    i = rng.randrange(1, max(len(text) - 1, 2))
    return text[:i] + text[i + 1 : i + 2] + text[i : i + 1] + text[i + 2 :]


def _phone_format(rng: random.Random, digits: str) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rng.choice((f"{a}-{b}-{c}", f"({a}) {b}-{c}", f"+1 {a} {b} {c}", f"{a}.{b}.{c}", digits))


def people(records: int, *, seed: int) -> tuple[list[dict[str, Any]], set[frozenset[str]]]:
    """Identities and the set of planted duplicate pairs (source keys)."""
    rng = random.Random(seed)
    families = Names(
        list(FAMILY) + sorted({_name(rng, rng.choice((2, 3))) for _ in range(20000)}), 50
    )
    females = Names(list(FEMALE_GIVEN) + sorted({_name(rng, 2) + "a" for _ in range(600)}), 5)
    males = Names(list(MALE_GIVEN) + sorted({_name(rng, 2) for _ in range(600)}), 5)
    out: list[dict[str, Any]] = []
    planted: set[frozenset[str]] = set()
    base: list[dict[str, Any]] = []
    registrations: dict[str, list[str]] = {}  # a person's first source key → all its source keys
    while len(out) < records:
        roll = rng.random()
        if base and roll < 0.06:  # a second registration of someone
            original = rng.choice(base)
            variant = _variant(rng, original, len(out))
            planted.update(
                frozenset((k, variant["source_key"])) for k in registrations[original["source_key"]]
            )
            registrations[original["source_key"]].append(variant["source_key"])
            out.append(variant)
            continue
        female = rng.random() < 0.5
        given = (females if female else males).draw(rng)
        middle = (females if female else males).draw(rng) if rng.random() < 0.4 else None
        person = {
            "source_key": f"r{len(out):07d}",
            "source_system": "bench",
            "names": [
                {"family": families.draw(rng), "given": [given] + ([middle] if middle else [])}
            ],
            "birth_date": (date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))).isoformat(),
            "telecom": [
                {
                    "system": "phone",
                    "value": f"{rng.randrange(200, 999)}{rng.randrange(10**6, 10**7)}",
                }
            ],
            "address": [
                {
                    "line": [
                        f"{rng.randrange(1, 9999)} {_name(rng, 2)} {rng.choice(STREET_SUFFIXES)}"
                    ],
                    "city": _name(rng, 2),
                    "postalCode": f"{rng.randrange(1000, 99999):05d}",
                }
            ],
            "_sex": "female" if female else "male",
        }
        person["person_key"] = person["source_key"]
        out.append(person)
        base.append(person)
        registrations[person["source_key"]] = [person["source_key"]]
        if rng.random() < 0.01 and len(out) < records:  # a twin: everything shared but the name
            twin = {**person, "source_key": f"r{len(out):07d}"}
            twin["person_key"] = twin["source_key"]
            twin["names"] = [
                {**person["names"][0], "given": [(females if female else males).draw(rng)]}
            ]
            if twin["names"][0]["given"][0] != given:
                out.append(twin)
    return out, planted


def _variant(rng: random.Random, original: dict[str, Any], index: int) -> dict[str, Any]:
    name = dict(original["names"][0])
    given = list(name["given"])
    changes = rng.sample(
        ["typo", "swap", "nickname", "middle", "phone", "birth", "moved"], rng.choice((1, 2))
    )
    variant = {**original, "source_key": f"r{index:07d}", "person_key": f"r{index:07d}"}
    for change in changes:
        if change in ("typo", "swap"):
            edit = _typo if change == "typo" else _swap
            if rng.random() < 0.5:
                name["family"] = edit(rng, name["family"])
            else:
                given[0] = edit(rng, given[0])
        elif change == "nickname" and given[0] in NICKNAMES:
            given[0] = NICKNAMES[given[0]]
        elif change == "middle":
            del given[1:]
        elif change == "phone":
            digits = original["telecom"][0]["value"]
            variant["telecom"] = [{"system": "phone", "value": _phone_format(rng, digits)}]
        elif change == "birth":
            born = original["birth_date"]
            i = rng.choice((8, 9))
            variant["birth_date"] = born[:i] + str((int(born[i]) + 1) % 10) + born[i + 1 :]
        elif change == "moved":
            variant["address"] = [
                {
                    "line": [f"{rng.randrange(1, 9999)} {_name(rng, 2)} Road"],
                    "city": "Elsewhere",
                    "postalCode": f"{rng.randrange(1000, 99999):05d}",
                }
            ]
    variant["names"] = [{**name, "given": given}]
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--merge-threshold", type=float, default=dedup.LinkOptions().threshold)
    parser.add_argument("--review-threshold", type=float, default=dedup.LinkOptions().review_threshold)
    args = parser.parse_args()
    options = dedup.LinkOptions(threshold=args.merge_threshold, review_threshold=args.review_threshold)

    identities, planted = people(args.records, seed=args.seed)
    sex = {i["source_key"]: i["_sex"] for i in identities}
    start = time.perf_counter()
    records = dedup.features(identities, sex=sex)
    featured = time.perf_counter()
    linkage = dedup.link(records, options)
    linked = time.perf_counter()

    members: dict[str, list[str]] = defaultdict(list)
    for row in linkage.clusters.to_pylist():
        members[row["cluster"]].append(row["source_key"])
    found = {
        frozenset((a, b))
        for group in members.values()
        for i, a in enumerate(group)
        for b in group[i + 1 :]
    }
    hits = len(found & planted)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"records                {records.num_rows:>10,}")
    print(f"planted duplicate pairs{len(planted):>10,}")
    print(f"features               {featured - start:>9.1f} s")
    print(
        f"splink linkage         {linked - featured:>9.1f} s   (u by sampling, m by EM: "
        f"{'yes' if records.num_rows >= dedup.LinkOptions().em_min_records else 'no, priors'})"
    )
    print(f"model                  {linkage.model}")
    print(f"links at threshold     {linkage.links.num_rows:>10,}   (merge at {options.threshold})")
    queued = {frozenset((r["source_key_l"], r["source_key_r"])) for r in linkage.review.to_pylist()}
    print(f"review queue           {len(queued):>10,}   ({len(queued & planted):,} planted duplicates)")
    print(f"kept apart by rules    {linkage.refused:>10,}")
    print(f"persons                {len(members):>10,}")
    print(f"precision              {hits / len(found) if found else 0:>10.3f}")
    print(f"recall                 {hits / len(planted) if planted else 0:>10.3f}")
    print(f"false merged pairs     {len(found - planted):>10,}")
    print(f"recall merged|queued   {len(planted & (found | queued)) / len(planted) if planted else 0:>10.3f}")
    print(f"peak RSS               {peak_mib:>9.0f} MiB")


if __name__ == "__main__":
    main()
