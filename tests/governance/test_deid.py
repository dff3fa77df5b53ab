"""Safe Harbor helpers: keyed date shifts, ZIP3 with restricted prefixes, ages over 89 grouped."""

from __future__ import annotations

from datetime import date

import pytest

from medlake.governance.deid import age_band, date_shift_days, zip3
from medlake.governance.pseudonyms import record_key, source_key

KEY = b"\x01" * 32


def test_date_shift_is_stable_keyed_nonzero_and_bounded():
    shifts = [date_shift_days(KEY, f"person-{i}", max_days=30) for i in range(2000)]
    assert all(s != 0 and -30 <= s <= 30 for s in shifts)
    assert len(set(shifts)) == 60  # every offset in ±30 except 0 is used
    assert date_shift_days(KEY, "person-1", max_days=30) == shifts[1]
    assert [date_shift_days(b"\x02" * 32, f"person-{i}", max_days=30) for i in range(50)] != shifts[:50]


@pytest.mark.parametrize(("postal", "expected"), [("02115", "021"), ("03601", "000"), ("141 34", "141"), ("12", None), (None, None)])
def test_zip3(postal, expected):
    assert zip3(postal) == expected


@pytest.mark.parametrize(("birth", "at", "expected"), [(date(1930, 6, 1), date(2020, 6, 1), "90+"),
                                                        (date(1931, 6, 2), date(2020, 6, 1), "88"),
                                                        (date(1931, 6, 1), date(2020, 6, 1), "89")])
def test_age_band_groups_over_89(birth, at, expected):
    assert age_band(birth, at) == expected


def test_pseudonyms_depend_on_key_system_and_kind():
    assert source_key(KEY, "fhir", "1") == source_key(KEY, "fhir", "1")
    assert source_key(KEY, "fhir", "1") != source_key(KEY, "hl7v2", "1")
    assert source_key(KEY, "fhir", "1") != source_key(b"\x02" * 32, "fhir", "1")
    assert record_key(KEY, "Observation", "fhir", "1") != record_key(KEY, "Encounter", "fhir", "1")
    with pytest.raises(ValueError):
        source_key(b"", "fhir", "1")


def test_k_anonymity_counts_classes_and_those_below_k():
    from medlake.governance.deid import k_anonymity

    rows = [{"age_band": "40-44", "gender": "female"}] * 5 + [
        {"age_band": "90+", "gender": "male"},
        {"age_band": "90+", "gender": None},
        {"age_band": "90+", "gender": None},
    ]
    k = k_anonymity(rows, ("age_band", "gender"), k=5)
    assert (k["population"], k["classes"], k["smallest_class"]) == (8, 3, 1)
    assert (k["classes_below_k"], k["records_in_classes_below_k"]) == (2, 3)
