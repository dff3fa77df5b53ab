"""Truecasing of notes written without case cues, so that name and place detection does not
lean on capitals a note does not have.

A line of two words or more is *caseless* when it is shouted (at least 80 % of its cased
letters are capitals: "PT LIVES IN EMPORIA W/ DAUGHTER"). A flat line ("dr smith paged re:
hypotension") is left as it is: the name recognizers have lower-case rules and cues of their
own. In a caseless line every word gets the case an ordinary note would give it:

- a word after a name cue ("dr", "son", "wife", :func:`governance.recognizers.clinical_rules`)
  that is not clinical shorthand, or a known first or last name or place that is not a common
  English word, is capitalised ("Smith", "Emporia");
- clinical shorthand and every other English word is lower case ("cxr", "foley", "acute");
- a short word English text rarely uses is an acronym, in capitals ("VIHC"); a longer one
  stays lower case (a rare clinical word far more often than an unlisted name).

Lines with ordinary case are left as they are. The result has the same length as the input,
character for character, so spans found in it are spans of the original.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_LINE = re.compile(r"[^\n]+")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
#: A cased word opening a line or a sentence: its capital says nothing.
_OPENING = re.compile(r"(?:^|[.!?:;]\s+)[\s\"'(*>-]*$")

#: Share of cased letters in capitals above which a line is shouted.
SHOUTED = 0.8
#: Zipf frequency (wordfreq) at or above which a known name is a common English word ("Bill").
COMMON_NAME_ZIPF = 4.0
#: A pair of known names ("cynthia rath", "kulas, josh") may be commoner words than one alone.
COMMON_PAIR_ZIPF = 5.0
#: Below this Zipf frequency a word is rare in English: an acronym or a name.
UNKNOWN_ZIPF = 2.5
#: Rare words up to this length are acronyms.
ACRONYM_MAX = 5


@dataclass(frozen=True)
class Lexicon:
    """What truecasing knows: case-folded names, places, clinical words, stop words, name cues."""

    names: frozenset[str]
    places: frozenset[str]
    clinical: frozenset[str]
    stop_words: frozenset[str]
    name_cues: frozenset[str]
    not_names: frozenset[str]
    zipf: Callable[[str], float]
    medical_ending: Callable[[str], bool]
    #: Names that make a word a name alone (not only beside another name or after a cue);
    #: ``None``: all of ``names``.
    lone_names: frozenset[str] | None = None


def caseless(line: str) -> bool:
    """Whether ``line`` is shouted, with two words or more (a line that is one word, "ESPOO",
    is left as it is). Flat lines are left too: the name recognizers have lower-case rules of
    their own, which mixed case would break."""
    upper = sum(map(str.isupper, line))  # (map over the characters: a third of a generator's time)
    if upper < 4 * SHOUTED:
        return False  # most lines: hardly a capital
    lower = sum(map(str.islower, line))
    if upper + lower < 4 or upper < SHOUTED * (upper + lower):
        return False
    return len(_WORD.findall(line)) >= 2


def truecase(text: str, lexicon: Lexicon) -> str:
    """``text`` with its caseless lines truecased (same length, same offsets)."""
    if not any(caseless(m.group()) for m in _LINE.finditer(text)):
        return text
    out = list(text)
    for line in _LINE.finditer(text):
        if not caseless(line.group()):
            continue
        words = list(_WORD.finditer(text, line.start(), line.end()))
        paired = _name_pairs(text, words, lexicon)
        previous, previous_end = "", -10
        for i, match in enumerate(words):
            word = match.group()
            gap = text[previous_end : match.start()]
            cue = previous if gap.strip(" \t.") == "" else ""
            cased = word.title() if i in paired else _case(word, cue, lexicon)
            if len(cased) == len(word):
                out[match.start() : match.end()] = cased
            previous, previous_end = word.casefold(), match.end()
    return "".join(out)


def _name_pairs(text: str, words: list[re.Match[str]], lex: Lexicon) -> set[int]:
    """Indexes of words that make a name with their neighbour: a known first name then a known
    last name ("cynthia rath"), or a last name, a comma and a first name ("kulas, josh"; both
    may be unknown when English hardly uses either: "maraldo, araceli")."""
    out: set[int] = set()
    for i in range(len(words) - 1):
        a, b = words[i].group().casefold(), words[i + 1].group().casefold()
        gap = text[words[i].end() : words[i + 1].start()]
        if gap not in (" ", ", ") or not (_pair_word(a, lex) and _pair_word(b, lex)):
            continue  # (a pair word is neither clinical shorthand nor a stop word)
        rare_a, rare_b = lex.zipf(a) < UNKNOWN_ZIPF, lex.zipf(b) < UNKNOWN_ZIPF
        known_a, known_b = a in lex.names, b in lex.names
        # both known, or one known and the other a word English rarely uses ("armandina considine"),
        # or a last name, a comma and a first name English rarely uses ("maraldo, araceli")
        if (known_a or rare_a) and (known_b or rare_b) and (known_a or known_b or gap == ", "):
            out.update((i, i + 1))
    return out


def _pair_word(key: str, lex: Lexicon) -> bool:
    return (
        len(key) > 1
        and key not in lex.clinical
        and key not in lex.stop_words
        and key not in lex.name_cues
        and lex.zipf(key) < COMMON_PAIR_ZIPF
    )


def _case(word: str, previous: str, lex: Lexicon) -> str:
    """The case an ordinary note would give ``word`` after the word ``previous``."""
    key = word.casefold()
    if key in lex.clinical or key in lex.stop_words or len(key) < 2:
        return word.lower()
    if previous in lex.name_cues and key not in lex.not_names:
        return word.title()
    if len(previous) == 1 and key in lex.names:
        return word.title()  # "S. FISHER": a name after an initial
    lone = lex.names if lex.lone_names is None else lex.lone_names
    known = key in lone or key in lex.places
    if word.isupper() and key in lex.places:
        return word.title()  # "AUSTRIA", "READING": the place recognizer asks a cue of common words
    frequency = lex.zipf(key)
    if known and frequency < COMMON_NAME_ZIPF:
        return word.title()
    if frequency < UNKNOWN_ZIPF and not known and len(key) <= ACRONYM_MAX:
        return word.upper()
    return word.lower()
