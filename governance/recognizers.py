"""Medical PHI recognizers for Presidio: MRNs, clinical dates, phones, ages over 89, sites, SSNs.

Presidio's defaults are tuned for general PII; clinical notes carry identifiers in the shapes
below. Every pattern is a :class:`~presidio_analyzer.PatternRecognizer`, so the analyzer's
context enhancer can raise a weak match when a cue word ("MRN", "DOB", "call") is nearby.
Person names spaCy's small model misses are found with the first and last names Faker ships
for its locales (:class:`NameGazetteerRecognizer`).

Presidio matches with ``re.IGNORECASE`` by default; patterns that depend on capital letters
(site names, names after a title) switch it off locally with ``(?-i:...)``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from typing import Any

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

LANGUAGE = "en"

#: Entity types these recognizers emit, beyond Presidio's own.
MRN = "MEDICAL_RECORD_NUMBER"
HOSPITAL = "HOSPITAL"
AGE_OVER_89 = "AGE_OVER_89"
STREET_ADDRESS = "STREET_ADDRESS"

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
    validation (``validate_result``/``invalidate_result``) and results are Presidio's."""

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        """Every pattern's non-empty, not invalidated matches, duplicates removed."""
        flags: int = regex_flags or self.global_regex_flags or 0
        name: str = self.name  # type: ignore[has-type]
        patterns: list[Pattern] = self.patterns  # type: ignore[has-type]
        results: list[RecognizerResult] = []
        for pattern in patterns:
            for match in _compiled(pattern.regex, flags).finditer(text):
                start, end = match.span()
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
        return EntityRecognizer.remove_duplicates(results)


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


@cache
def _compiled(pattern: str, flags: int) -> regex.Pattern[str]:
    return regex.compile(pattern, flags=flags)


def _recognizer(
    entity: str,
    name: str,
    patterns: list[tuple[str, str, float]],
    *,
    context: list[str] | None = None,
) -> PatternRecognizer:
    return LeanPatternRecognizer(
        supported_entity=entity,
        name=name,
        supported_language=LANGUAGE,
        patterns=[
            Pattern(name=label, regex=regex, score=score) for label, regex, score in patterns
        ],
        context=context or [],
    )


def mrn_recognizer() -> PatternRecognizer:
    """Medical record numbers: ``MRN-0012345``, ``MRN: 12345678``, ``MRN#1234567``, bare digits after a cue."""
    return _recognizer(
        MRN,
        "MrnRecognizer",
        [
            ("mrn prefixed", r"\bMRN\s*[-:#]?\s*\d{4,10}\b", 0.9),
            ("medical record number", r"(?<=medical record number)\s*[:#]?\s*\d{4,10}\b", 0.8),
            ("bare record digits (weak)", r"\b\d{6,10}\b", 0.05),
        ],
        context=["mrn", "medical record", "record number", "chart", "patient id"],
    )


def date_recognizer() -> PatternRecognizer:
    """Dates as clinicians write them: 03/05/2024, 2024-03-05, 5 Mar 2024, March 5, 2024."""
    return _recognizer(
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
        ],
        context=["dob", "born", "date", "seen", "on", "since", "admitted", "discharged"],
    )


def phone_recognizer() -> PatternRecognizer:
    """North American phones incl. the fictional 555 exchange Presidio's validator rejects."""
    return _recognizer(
        "PHONE_NUMBER",
        "ClinicalPhoneRecognizer",
        [
            ("(nnn) nnn-nnnn", r"\(\d{3}\)\s*\d{3}[-.\s]\d{4}\b", 0.85),
            ("nnn-nnn-nnnn", r"\b\d{3}[-.]\d{3}[-.]\d{4}(?:\s*(?:x|ext\.?)\s*\d{1,5})?\b", 0.8),
            ("+1 nnn nnn nnnn", r"\+1[\s.-]?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}\b", 0.85),
            ("international", r"\+\d{1,3}[\s.-]?(?:\(0\))?\d{2,5}(?:[\s.-]\d{2,5}){1,4}\b", 0.7),
            ("(nn) nnn-nnn", r"\(\d{2,4}\)\s*\d{3}-\d{3,4}\b", 0.7),
            ("digit groups", r"(?<![\d-])\b\d{2,5}(?:[ .]\d{2,4}){2,4}\b(?![-/]\d)", 0.45),
            ("two groups (weak)", r"(?<![\d-])\b\d{2,5}[ .]\d{6,8}\b", 0.3),
            ("local nnn nnnn (weak)", r"(?<![\d/.-])\b\d{3,4}[ .-]\d{4}\b(?![-/.]\d)", 0.3),
            ("(nn) nnnn nnnn", r"\(\d{2,4}\)\s*\d{3,4}[ .-]?\d{4}\b", 0.7),
            ("ten digits (weak)", r"(?<![\d-])\b\d{10}\b", 0.3),
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
    and a note needs them."""
    age = r"(?:9\d|1[0-2]\d)"
    return _recognizer(
        AGE_OVER_89,
        "AgeOver89Recognizer",
        [
            ("n-year-old", rf"\b{age}[-\s]?(?:year|yr)s?[-\s]?old\b", 0.9),
            ("aged n", rf"\b(?:aged?|age:)\s*{age}\b", 0.9),
            ("n y/o", rf"\b{age}\s*(?:y/?o|yo|years? of age)\b", 0.9),
            (
                "turned n",
                rf"\b(?:turned|turns|turning|age of|was|is)\s+{age}(?=\s+(?:years?|yrs?)\b)",
                0.9,
            ),
            (
                "turned n (alone)",
                rf"\b(?:turned|turns|turning|at the age of)\s+{age}\b(?![./:-]?\d)",
                0.8,
            ),
        ],
    )


def hospital_recognizer() -> PatternRecognizer:
    """Care sites: ``St. Mary's Hospital``, ``Riverside Medical Center``, ``Ward 7B``."""
    word = r"(?:St\.|[A-Z][\w'’.&-]*)"
    kind = r"(?:Hospital|Medical Center|Medical Centre|Health Center|Clinic|Infirmary|Ward|Hospice)"
    return _recognizer(
        HOSPITAL,
        "HospitalRecognizer",
        [
            ("named site", rf"(?-i:\b{word}(?:\s+(?:of\s+)?{word}){{0,4}}\s+{kind}\b)", 0.85),
            ("numbered ward", r"(?-i:\b(?:Ward|Unit|Bed|Room)\s+\d{1,3}[A-Z]?\b)", 0.6),
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
    number = rf"\d{{1,5}}(?:[A-Za-z](?<!\ds))?\b(?![ \t]+(?i:{_DOSE_UNIT})\b)\.?"
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
    by_suffix = rf"\d{{1,6}}\s+(?:\d{{1,6}}\s+)?(?:{word}\s+){{1,4}}(?i:{_STREET_SUFFIX})\b\.?"
    not_month = rf"(?!(?i:{_MONTH})\b)"
    not_unit = rf"(?!(?i:{_DOSE_UNIT})\b)"  # "325 MG Oral Tablet. Take 2" is a dose
    by_number = rf"\d{{1,6}}\s+(?:\d{{1,6}}\s+)?{not_month}{not_unit}{name}(?:\s+{word}){{0,3}}\s+{number}"
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
    type_after_any = rf"[\p{{L}}.]++(?=[ \t]+\d)(?<=[ \t](?i:{_TYPE_AFTER}|{_TYPE_AFTER_CAPITALISED}))"
    after_name = (
        rf"(?:{lead}(?:{any_word}[ \t]+){{1,3}}{type_after}"  # after a house number
        rf"|(?:{lead})?{name}(?:[ \t]+{any_word}){{0,2}}[ \t]+{type_after_any}"
        rf"|\p{{Ll}}[\p{{L}}'’.-]*+[ \t]+{type_after})"  # one lower-case word: "hegyalja út"
        rf"[ \t]+{number}"
    )
    # lower case: "12 birch hollow 4 st.", "0605 linden 21 apt. 9": a number, words, (a number,)
    # then a unit or a street type in lower case (capitalised "ST" is a segment in an ECG)
    lower = rf"\d{{1,6}}[ \t]+(?:\d{{1,6}}[ \t]+)?{not_month}{not_unit}{any_word}(?:[ \t]+{not_unit}{any_word}){{0,2}}"
    lower_street = rf"{lower}(?:[ \t]+\d{{1,5}})?[ \t]+(?-i:street|avenue|road|boulevard|st\.|rd\.|ave\.)"
    lower_unit = rf"{lower}[ \t]+{number}(?=[ \t]*,?[ \t]*(?i:apt|apartment|suite|ste)\.?[ \t]*#?\d)"
    return _recognizer(
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
            (
                "name number (weak)",
                rf"(?-i:\b{not_month}{name}(?:\s+{word}){{0,2}}\s+\d{{1,5}}[a-z]?\b)",
                0.25,
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
                r"(?:(?<=zip:\s)|(?<=zip code is )|(?<=zip code: )|(?<=postal code: ))[\dA-Z]{2,5}(?:[ -][\dA-Z]{2,4})?\b",
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
    )


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
    after_cue = "|".join(f"(?<=\\b{re.escape(c)})" for c in cues)
    strong_cues = (
        "my name is ",
        "call me ",
        "calls me ",
        "named him ",
        "named her ",
        "follow up with ",
        "my kid ",
    )
    after_strong_cue = "|".join(f"(?<=\\b{re.escape(c)})" for c in strong_cues)
    not_a_word = (  # "call me on Monday", "call me back"
        r"(?!(?:on|at|in|when|back|if|after|before|about|tomorrow|today|tonight|later|soon|asap"
        r"|again|anytime|and|or|to|for|with|please|now|then|there|here)\b)"
    )
    capital = r"[A-ZÀ-Þ][\w'’-]+"
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
                rf"(?:{after_cue})(?-i:{capital}(?:\s+(?:[A-Z]\.?\s+)?{capital}){{0,2}})",
                0.5,
            ),
            (
                "strong cue, any case",
                rf"(?:{after_strong_cue}){not_a_word}[^\W\d_][\w'’-]+(?:\s+(?:[^\W\d_]\.?\s+)?(?!and\b|in\b|for\b|on\b|at\b|to\b)[^\W\d_][\w'’-]+)?",
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


def medical_recognizers() -> list[EntityRecognizer]:
    """Every recognizer of this module, ready for ``RecognizerRegistry.add_recognizer``."""
    return [
        mrn_recognizer(),
        date_recognizer(),
        phone_recognizer(),
        age_over_89_recognizer(),
        hospital_recognizer(),
        ssn_recognizer(),
        account_number_recognizer(),
        street_address_recognizer(),
        titled_name_recognizer(),
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
CLINICAL_WORDS = frozenset(_CLINICAL_WORDS.split())

#: After an eponymous name the word is a disease, sign or device, not a person.
EPONYM_AFTER = re.compile(
    r"(?:['’]s)?\s+(?:disease|syndrome|sign|test|palsy|reflex|score|scale|criteria|classification"
    r"|procedure|operation|catheter|tube|maneuver|manoeuvre|phenomenon|fracture|tumou?r|lymphoma"
    r"|ulcer|node|triad|law|position|disorder|anomaly|deformity|contracture|esophagus|oesophagus"
    r"|thyroiditis|encephalopathy|ataxia|dystrophy|stain|solution|formula|equation|method)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-Z]\.?")
_CAPITALISED_PAIR = re.compile(
    r"(?<![\w'’-])([A-ZÀ-ÞĀ-ž][^\W\d_A-Z]+) ([A-ZÀ-ÞĀ-ž][^\W\d_A-Z]+)(?![\w'’-])"
)
_LOWER_LIST = re.compile(r"\b[a-z]+(?:, [a-z]+)+,? (?:and|or) [a-z]+\b")
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


class NameGazetteerRecognizer(EntityRecognizer):
    """Person names spaCy's small model misses, from a name list rather than a model: a run of two
    or more known names ("Maureen Thibault", "leone mazzi", "Codey M Ross"), one capitalised
    known name inside a sentence ("... shouted at Todd"), or one opening a sentence as its subject
    or speaker ("Dexter lives on", "Ubul: ..."). Common English words that are also names count
    only inside a full name; eponyms ("Parkinson's disease") are skipped."""

    def __init__(self, stop_words: frozenset[str] = frozenset()) -> None:
        super().__init__(
            supported_entities=["PERSON"],
            name="NameGazetteerRecognizer",
            supported_language=LANGUAGE,
        )
        self.stop_words = stop_words

    def load(self) -> None:
        self.first, self.last, self.common = gazetteer()

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
        return results

    def _half_known_pairs(self, text: str) -> list[Any]:
        """Two capitalised words, a known first name and an unknown one after it ("Lina
        Artemova"), or an unknown one before a known last name ("Rościsław Dudek")."""
        out: list[RecognizerResult] = []
        for pair in _CAPITALISED_PAIR.finditer(text):
            first, last = pair.group(1).casefold(), pair.group(2).casefold()
            if {first, last} & (self.common | self.stop_words) or EPONYM_AFTER.match(
                text, pair.end()
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

    def _is_name(self, word: str) -> bool:
        key = word.casefold()
        if key in self.stop_words or len(key) < 2:
            return False
        parts = re.split(r"['’-]", key)
        return key in self.first or key in self.last or all(p in self.last for p in parts)

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
            if shapes == {"title"} or full:
                score = 0.65 if full else 0.5
                return [
                    RecognizerResult("PERSON", start, end, score if shapes != {"lower"} else 0.5)
                ]
        if len(names) != 1 or len(words) != 1 or shapes != {"title"} or keys[0] in self.common:
            return []
        if not _sentence_start(text, start):
            return [RecognizerResult("PERSON", start, end, 0.5)]
        after = text[end : end + 3]
        if after[:1] in (":", ",") or after[:2] in ("'s", "’s") or _SUBJECT_VERB.match(text, end):
            return [RecognizerResult("PERSON", start, end, 0.45)]
        return []


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
