"""Row-level releases meet their privacy model: generalized along hierarchies, suppressed, or refused."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pytest

from medlake.governance.release import PrivacyModel, ReleaseRefused, anonymize, zip3_state

BANDS = ["0-4", "5-9", "10-14", "15-19", "20-24", "25-29", "30-34", "35-39", "40-44", "45-49", "50-54",
         "55-59", "60-64", "65-69", "70-74", "75-79", "80-84", "85-89", "90+"]


def _people(n: int, *, seed: int = 7) -> pa.Table:
    rng = random.Random(seed)
    return pa.table({
        "person_key": [f"p{i:04d}" for i in range(n)],
        "age_band": [rng.choice(BANDS) for _ in range(n)],
        "gender": [rng.choice(["female", "male", "male", "female", "other"]) for _ in range(n)],
        "zip3": [rng.choice(["021", "100", "606", "900", "941", "000"]) for _ in range(n)],
        "has_diabetes": [rng.random() < 0.2 for _ in range(n)],
    })


def _smallest(table: pa.Table, quasi: list[str]) -> int:
    return min(Counter(tuple(r[q] for q in quasi) for r in table.select(quasi).to_pylist()).values())


def test_a_release_below_k_is_generalized_and_suppressed_until_k_holds():
    data = _people(500)
    quasi = ["age_band", "gender", "zip3"]
    assert _smallest(data, quasi) < 5  # as stored, some people are alone in their class
    done = anonymize(data, quasi, PrivacyModel(k=5))
    assert _smallest(done.data, quasi) >= 5
    assert done.achieved["smallest_class"] >= 5 and done.achieved["classes_below_k"] == 0
    assert done.suppressed == 500 - done.data.num_rows <= 50
    assert any(done.levels.values())  # something had to be generalized
    manifest = done.manifest()
    assert manifest["model"] == {"k_anonymity": 5, "max_suppression": 0.1}
    assert manifest["records_suppressed"] == done.suppressed and 0 < manifest["information_loss"] < 1
    assert set(manifest["hierarchies"]) == set(quasi)
    assert manifest["hierarchies"]["zip3"]["levels"] == ["zip3", "state", "*"]


def test_the_least_generalization_that_meets_k_is_chosen():
    data = pa.table({"age_band": ["40-44"] * 5 + ["45-49"] * 5, "gender": ["female"] * 10})
    done = anonymize(data, ["age_band", "gender"], PrivacyModel(k=5))
    assert done.levels == {"age_band": 0, "gender": 0} and done.suppressed == 0
    assert done.information_loss == 0
    merged = anonymize(data, ["age_band", "gender"], PrivacyModel(k=10))
    assert merged.levels == {"age_band": 1, "gender": 0}  # 10-year band, not gender away
    assert set(merged.data.column("age_band").to_pylist()) == {"40-49"}


def test_a_release_that_cannot_reach_k_is_refused_with_the_reason():
    data = _people(30)
    with pytest.raises(ReleaseRefused, match=r"cannot meet k=50 over age_band, gender, zip3: even at .* would suppress 30 of 30"):
        anonymize(data, ["age_band", "gender", "zip3"], PrivacyModel(k=50))
    # fully generalized, 500 people are one class: k holds, at a high information loss
    done = anonymize(_people(500), ["age_band", "gender", "zip3"], PrivacyModel(k=200, max_suppression=0.0))
    assert done.suppressed == 0 and done.information_loss > 0.5


def test_l_diversity_of_a_sensitive_column_is_met_or_refused():
    data = _people(500)
    done = anonymize(data, ["age_band", "gender"], PrivacyModel(k=5, l_diversity=2, sensitive="has_diabetes"))
    assert done.achieved["l_diversity"] >= 2
    rows = done.data.select(["age_band", "gender", "has_diabetes"]).to_pylist()
    classes: dict[tuple, set] = {}
    for r in rows:
        classes.setdefault((r["age_band"], r["gender"]), set()).add(r["has_diabetes"])
    assert all(len(v) >= 2 for v in classes.values())
    with pytest.raises(ReleaseRefused, match="l=3 over has_diabetes"):  # a boolean has only two values
        anonymize(data, ["age_band", "gender"], PrivacyModel(k=5, l_diversity=3, sensitive="has_diabetes"))


def test_hierarchies_age_zip_and_dates():
    from datetime import date

    from medlake.governance.release import AGE_BAND, DATE, ZIP3

    assert [AGE_BAND.generalize("45-49", level) for level in range(4)] == ["45-49", "40-49", "40-59", "*"]
    assert AGE_BAND.generalize("90+", 2) == "90+"
    assert [ZIP3.generalize("021", level) for level in range(3)] == ["021", "MA", "*"]
    assert zip3_state("000") == "*" and zip3_state("941") == "CA" and zip3_state("606") == "IL"
    assert [DATE.generalize(date(2024, 3, 9), level) for level in range(4)] == [date(2024, 3, 9), "2024-03", "2024", "*"]
