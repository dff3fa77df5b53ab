"""Rebuild ``clinical_words.txt``: the words of ICD-10-CM's diagnosis descriptions and of the
RxNorm drug names, LOINC observation names, SNOMED CT condition, procedure and allergy names
and CVX vaccine names the corpus' Synthea records use, case-folded, one a line.

    .venv/bin/python governance/deid_words/build_clinical_words.py ../shared/corpus/terminology

ICD-10-CM (CDC/NCHS, April 2026, as ``simple_icd_10_cm`` ships it) is US Government work in the
public domain; the other display strings are the corpus' ``derived_synthea_*.tsv`` (Synthea,
Apache-2.0). Words of
two letters or fewer and numbers are left out. The de-identifier reads the file, never this script.
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from pathlib import Path

WORD = re.compile(r"[^\W\d_]{3,}")


def words_of(terminology: Path) -> set[str]:
    """Case-folded words of the ICD-10-CM descriptions and the RxNorm displays in ``terminology``."""
    words: set[str] = set()
    with gzip.open(
        terminology / "icd10cm_2026_codes_descriptions.tsv.gz", "rt", encoding="utf-8"
    ) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            words.update(w.casefold() for w in WORD.findall(row["description"]))
    for name in (
        "derived_synthea_rxnorm.tsv",
        "derived_synthea_loinc_ucum.tsv",
        "derived_synthea_condition_procedure_allergy_codes.tsv",
        "derived_synthea_cvx.tsv",
    ):
        with open(terminology / name, encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                words.update(w.casefold() for w in WORD.findall(row["display"]))
    return words


def main(argv: list[str]) -> int:
    terminology = Path(argv[1])
    out = Path(__file__).with_name("clinical_words.txt")
    header = (
        "# Clinical words that are nobody's name: ICD-10-CM 2026 diagnosis descriptions (public\n"
        "# domain, CDC/NCHS); RxNorm, LOINC, SNOMED CT and CVX display names seen in the corpus'\n"
        "# Synthea records (Apache-2.0).\n"
        "# Built by build_clinical_words.py; one case-folded word a line.\n"
    )
    out.write_text(header + "\n".join(sorted(words_of(terminology))) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
