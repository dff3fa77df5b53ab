"""The compiled-pattern cache of the recognizers is bounded: every note brings its own deny-list
patterns (the patient's names and identifiers), so an unbounded cache grew with every note a
worker process ever saw."""

from __future__ import annotations

from medlake.governance import recognizers


def _deny(i: int) -> recognizers.PatternRecognizer:
    deny = recognizers.record_recognizer([f"Okafor{i}", f"MRN-{i:07d}"], entity="RECORD_NAME")
    assert deny is not None
    return deny


def test_per_note_deny_lists_do_not_grow_the_pattern_cache_without_bound() -> None:
    recognizers._compiled.cache_clear()
    first = _deny(0)
    assert len(first.analyze("seen by okafor0 today, MRN-0000000 on file", ["RECORD_NAME"])) == 2
    for i in range(1, recognizers.COMPILED_KEPT + 50):  # as many notes' deny lists
        for pattern in _deny(i).patterns:
            recognizers._compiled(pattern.regex, first.global_regex_flags)
    assert recognizers._compiled.cache_info().currsize == recognizers.COMPILED_KEPT
    # the first note's pattern fell out: a later note of that patient compiles it again
    again = _deny(0).analyze("okafor0 called back", ["RECORD_NAME"])
    assert [(r.start, r.end) for r in again] == [(0, 7)]
