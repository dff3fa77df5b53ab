"""The patient's own names (the note's deny list) are redacted wherever they stand: no keep-list
rule undoes them, not even the one that keeps a common English word opening a sentence."""

from __future__ import annotations

from medlake.governance.text_deid import text_deidentifier


def test_the_patients_own_name_is_redacted_when_it_opens_a_line_as_a_common_word() -> None:
    engine = text_deidentifier()
    text = "TEST, PROVIDER"  # an HL7 v2 OBX value of the CDC corpus, patient family name TEST
    (own,) = engine.analyze_batch([text], deny_lists=[["TEST", "GPCSCOVID"]])
    assert any(text[s.start : s.end] == "TEST" for s in own)
    (other,) = engine.analyze_batch([text], deny_lists=[["GPCSCOVID"]])
    assert not any(text[s.start : s.end] == "TEST" for s in other)  # a common word otherwise
