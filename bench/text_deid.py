"""Free-text de-identification benchmark: recall, precision and speed of governance.text_deid,
set by set, next to plain Presidio in the same run.

    .venv/bin/python bench/text_deid.py                 # every set, plain Presidio beside it
    .venv/bin/python bench/text_deid.py --sets dev --misses 5   # one set, 5 missed spans per type
    .venv/bin/python bench/text_deid.py --planted       # also the sample hospital's planted PHI

The labelled sets, printed separately and never pooled:

- ``in_sample``: the 1,600 presidio-research texts (``tests/corpus/deid/presidio_*.json``).
  General-domain text; the recognizers were written while reading its misses, so its figures
  are in-sample and optimistic.
- ``dev``: 400 ICU nursing / clinical-note style texts from ``bench/clinical_notes.py`` (dev
  seed, dev half of the value lists). Read and tuned on.
- ``held_out``: 400 notes of the same generator, its held-out seed and the *other* half of every
  value list (names, towns and hospitals the dev set never shows). Never read, never tuned on.
- ``held_out_2``: 400 notes of the same generator with a third seed and values from another
  source (``mimesis``'s English names and towns, no Synthea value; ``bench/data/``), built after
  ``held_out`` had been used to report. Never read, never tuned on. Names with a word no list of
  the recognizers holds are scored apart as ``PERSON_UNLISTED`` (and count in "names").
- ``dev_2``: 400 notes with a fourth seed and values of held-out 2's kind (mimesis's other
  European locales, less every held-out 2 value): read and tuned on, like ``dev``.
- ``dev_3`` / ``held_out_3``: 400 documents each of seven other kinds (discharge summaries,
  radiology and pathology reports, ED triage in capitals, portal messages, consult letters,
  clinician questions; about one in eight with no PHI) from ``clinical_notes.generate_kinds``:
  other templates, their own seeds, held-out 2's value lists split in halves by hash (dev 3
  one half, held-out 3 the other). ``held_out_3`` is never read and never tuned on.
- ``hard``: 60 ICU and nursing lines written by hand, no generator (``bench/data/
  hard_icu_lines.jsonl``): upper case and shorthand, dates without a year, two-digit years,
  lower-case names and towns, common-word first names ("son bill", "wife joy"), pagers and
  extensions, phones with odd spacing, record numbers with letters and hyphens, hospital
  acronyms; 14 lines with no PHI (vent settings, clock times, brand drugs, eponyms). Written
  and committed before it was first run; run once as held-out, then tuned on (the fifth pass:
  in-sample since).
- ``hard_2``: 95 lines written by hand, no generator (``bench/data/hard_notes_2.jsonl``), of
  other note kinds than ``hard``: ED triage, nursing handoff, phone messages, discharge
  instructions, pathology and radiology addenda, social work; 151 planted PHI, 20 lines with
  none. Written and committed before it was first run; run before and after the fifth pass,
  then tuned on (the sixth pass read its misses: in-sample since).
- ``hard_3``: 95 lines written blind by another writer (``bench/data/hard_notes_3.jsonl``): it
  read neither the rules nor the other sets' misses; ICU flowsheets, SBAR handoffs, ED triage,
  case management, pharmacy, OR, telephone and portal messages, discharge, therapy, psychiatry,
  chaplain, home health, lab call-backs; 206 planted PHI, 27 lines with none. Run held out
  twice (once on the rules before the sixth pass, once after), then tuned on: the seventh pass
  read its misses and false positives (in-sample since). A new blind set is the held-out
  figure from then on.
- ``hard_4``: 106 lines written blind by another writer (``bench/data/hard_notes_4.jsonl``),
  who read neither the rules, their tests nor any set's misses, and committed it before any
  de-identifier ran on it: discharge and operative notes, ED and EMS, dialysis, infusion, L&D,
  NICU, dental, ophthalmology, wound care, hospice, infection control, radiology and pathology,
  blood bank, prior-auth and referral letters, interpreter and consent notes; 331 planted PHI
  (335 gold spans), 43 lines with none. Run held out once, on the seventh pass's rules, then
  tuned on: the eighth pass read its misses and false positives (in-sample since). A new blind
  set is the held-out figure from then on.
- ``hard_5``: 108 lines written blind by a third writer (``bench/data/hard_notes_5.jsonl``), who
  read neither the rules, their tests, the other sets nor any set's misses, and committed it
  before any de-identifier ran on it: SOAP and H&P notes, cardiology, endoscopy, sleep, PFT,
  EEG/EMG, psychiatry and addiction medicine, palliative care, rehab and SNF transfers,
  pharmacy, anticoagulation, diabetes education, transplant, genetics, occupational health,
  physicals, patients' e-mails, coding and billing, guardianship and holds, police and EMS
  hand-offs, death and autopsy notes, chart corrections; 274 planted PHI (275 gold spans), 44
  lines with none. Run held out once, on the eighth pass's rules, then tuned on: the ninth pass
  read its misses and false positives (in-sample since). A new blind set is the held-out figure
  from then on.
- ``hard_6``: 109 lines written blind by a fourth writer (``bench/data/hard_notes_6.jsonl``), who
  read neither the rules, their tests, the other sets nor any set's misses, and committed it
  before any de-identifier ran on it; 329 planted PHI (331 gold spans), 45 lines with none.
  Held out: run on the ninth pass's rules, its misses not read.
- ``synthea_notes`` (speed only, unlabelled): 400 of the corpus' Synthea DocumentReference
  notes, decoded as the pipeline decodes them (long, structured: the data plane's notes step).
- ``meddocan``: the 50 MEDDOCAN test documents (Spanish clinical cases, BRAT), types mapped to
  the ones below. Real clinical text, held out, in a language the English engine was not built
  for: a floor, not a goal.

A gold span is *found* when one predicted span covers at least 50 % of its characters, whatever
the types (PHI replaced under the wrong label is still removed). A predicted span is *correct*
when at least 50 % of its characters lie inside gold spans. Recall is per gold type, precision
per predicted type. "Key types" are names, dates, phones and record numbers (the issue's 99 %
targets). Speed is texts per CPU-second of this process through the batch engine, after a
warm-up batch (steadier than wall-clock on a shared machine; wall-clock is printed too).

``--planted`` adds the sample hospital's planted PHI (``medlake.sample.generate``): each note
de-identified with the patient's structured record as deny list; a planted string counts as
removed when it no longer occurs in the output. Writes ``bench/out/text_deid.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from medlake.governance.text_deid import (
    LANGUAGE,
    SPACY_MODEL,
    TextDeidentifier,
    deidentify_batch,
    narrative_text,
    record_deny_list,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus" / "deid"
CORPUS_FILES = ("presidio_synth_dataset_v2.json", "presidio_generated_small.json")
MEDDOCAN = CORPUS / "meddocan_es_test_brat"
OUT = ROOT / "bench" / "out" / "text_deid.json"
BASELINE = {"recall": 0.658, "precision": 0.870, "texts_per_s": 368.0}
TARGET = {"recall": 0.95, "key_type_recall": 0.99, "texts_per_s": 2 * BASELINE["texts_per_s"]}
COVER = 0.5
BATCH = 128
WORKERS = 2
#: Gold types that HIPAA Safe Harbor does not require removing and this de-identifier keeps on
#: purpose: ages up to 89 (only older ages are replaced), job titles, nationalities/religions.
SAFE_HARBOR_KEPT = ("AGE", "TITLE", "NRP", "SEX", "COUNTRY")
#: Gold types of the issue's 99 % targets (names, dates, phones, record numbers), every set's spelling.
KEY_TYPES = {
    "PERSON": "names",
    "PERSON_UNLISTED": "names",
    "DATE_TIME": "dates",
    "DATE": "dates",
    "PHONE_NUMBER": "phones",
    "PHONE": "phones",
    "RECORD_ID": "record numbers",
    "MEDICAL_RECORD_NUMBER": "record numbers",
}


@dataclass(frozen=True)
class Gold:
    start: int
    end: int
    entity_type: str


# ---------------------------------------------------------------------------------------------
# (a) labelled corpus


def load_corpus(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The presidio-research texts and their gold spans (in-sample)."""
    items: list[dict[str, Any]] = []
    for name in CORPUS_FILES:
        items.extend(json.loads((CORPUS / name).read_text(encoding="utf-8")))
    if limit:
        items = items[:limit]
    texts = [item["full_text"] for item in items]
    gold = [
        [Gold(s["start_position"], s["end_position"], s["entity_type"]) for s in item["spans"]]
        for item in items
    ]
    return texts, gold


def load_generated(split: str, limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The clinical-note generator's dev or held-out notes and their planted spans."""
    from clinical_notes import generate  # bench/ is on the path when this file runs

    notes = generate(split)  # type: ignore[arg-type]
    if limit:
        notes = notes[:limit]
    return [n.text for n in notes], [[Gold(*span) for span in n.spans] for n in notes]


def load_kinds(split: str, limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The documents of other kinds (discharge, radiology, pathology, triage, portal, consult,
    questions) of ``dev_3`` or ``held_out_3`` and their planted spans."""
    from clinical_notes import generate_kinds

    notes = generate_kinds(split)
    if limit:
        notes = notes[:limit]
    return [n.text for n in notes], [[Gold(*span) for span in n.spans] for n in notes]


HARD = ROOT / "bench" / "data" / "hard_icu_lines.jsonl"
HARD_2 = ROOT / "bench" / "data" / "hard_notes_2.jsonl"
HARD_3 = ROOT / "bench" / "data" / "hard_notes_3.jsonl"
HARD_4 = ROOT / "bench" / "data" / "hard_notes_4.jsonl"
HARD_5 = ROOT / "bench" / "data" / "hard_notes_5.jsonl"
HARD_6 = ROOT / "bench" / "data" / "hard_notes_6.jsonl"


def load_hand_written(path: Path, limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """A hand-written set (``bench/data/hard_*.jsonl``): each row's ``phi`` lists [value, type]
    pairs, every whole-word occurrence of a value is gold; a value that does not occur in its
    row is an error of the set, not a miss."""
    texts: list[str] = []
    gold: list[list[Gold]] = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        row = json.loads(line)
        texts.append(row["text"])
        spans: set[Gold] = set()
        for value, kind in row["phi"]:
            found = {
                Gold(m.start(), m.end(), kind)
                for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", row["text"])
            }
            if not found:
                raise ValueError(f"{path.name} row {row['id']}: {value!r} is not a whole word of its text")
            spans |= found
        gold.append(sorted(spans, key=lambda g: g.start))
    return texts, gold


def load_hard(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 60 handwritten ICU and nursing lines of ``bench/data/hard_icu_lines.jsonl``."""
    return load_hand_written(HARD, limit)


def load_hard_2(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 95 handwritten lines of other note kinds of ``bench/data/hard_notes_2.jsonl``."""
    return load_hand_written(HARD_2, limit)


def load_hard_3(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 95 lines of ``bench/data/hard_notes_3.jsonl``, written blind (its writer read neither
    the rules nor the other sets' misses)."""
    return load_hand_written(HARD_3, limit)


def load_hard_4(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 106 lines of ``bench/data/hard_notes_4.jsonl``, written blind (its writer read neither
    the rules nor any set's misses); in-sample since the eighth pass."""
    return load_hand_written(HARD_4, limit)


def load_hard_5(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 108 lines of ``bench/data/hard_notes_5.jsonl``, written blind (its writer read neither
    the rules, the other sets nor any set's misses)."""
    return load_hand_written(HARD_5, limit)


def load_hard_6(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The 109 lines of ``bench/data/hard_notes_6.jsonl``, written blind (its writer read neither
    the rules, their tests, the other sets nor any set's misses): the held-out set."""
    return load_hand_written(HARD_6, limit)


#: MEDDOCAN's 20 types mapped to this benchmark's: who they identify, not how Spanish names them.
MEDDOCAN_TYPES = {
    "NOMBRE_SUJETO_ASISTENCIA": "PERSON",
    "NOMBRE_PERSONAL_SANITARIO": "PERSON",
    "FAMILIARES_SUJETO_ASISTENCIA": "PERSON",
    "FECHAS": "DATE",
    "TERRITORIO": "LOCATION",
    "CALLE": "STREET_ADDRESS",
    "PAIS": "COUNTRY",
    "HOSPITAL": "HOSPITAL",
    "INSTITUCION": "HOSPITAL",
    "CENTRO_SALUD": "HOSPITAL",
    "ID_SUJETO_ASISTENCIA": "RECORD_ID",
    "ID_CONTACTO_ASISTENCIAL": "RECORD_ID",
    "ID_ASEGURAMIENTO": "RECORD_ID",
    "ID_TITULACION_PERSONAL_SANITARIO": "RECORD_ID",
    "NUMERO_TELEFONO": "PHONE",
    "NUMERO_FAX": "PHONE",
    "CORREO_ELECTRONICO": "EMAIL_ADDRESS",
    "EDAD_SUJETO_ASISTENCIA": "AGE",
    "SEXO_SUJETO_ASISTENCIA": "SEX",
    "OTROS_SUJETO_ASISTENCIA": "OTHER",
}


def load_meddocan(limit: int | None) -> tuple[list[str], list[list[Gold]]]:
    """The MEDDOCAN test documents (BRAT) with their types mapped (:data:`MEDDOCAN_TYPES`)."""
    texts: list[str] = []
    gold: list[list[Gold]] = []
    for ann in sorted(MEDDOCAN.glob("*.ann"))[:limit]:
        texts.append(ann.with_suffix(".txt").read_text(encoding="utf-8"))
        spans = []
        for line in ann.read_text(encoding="utf-8").splitlines():
            if not line.startswith("T"):
                continue
            kind, *offsets = line.split("\t")[1].replace(";", " ").split(" ")
            spans.append(Gold(int(offsets[0]), int(offsets[-1]), MEDDOCAN_TYPES.get(kind, kind)))
        gold.append(spans)
    return texts, gold


SETS: dict[str, tuple[str, Callable[[int | None], tuple[list[str], list[list[Gold]]]]]] = {
    "in_sample": ("presidio-research, IN-SAMPLE (rules were written against it)", load_corpus),
    "dev": ("generated clinical notes, DEV (tuned on)", lambda n: load_generated("dev", n)),
    "held_out": (
        "generated clinical notes, HELD-OUT (never tuned on)",
        lambda n: load_generated("held_out", n),
    ),
    "held_out_2": (
        "generated clinical notes, HELD-OUT 2 (other value source, never tuned on)",
        lambda n: load_generated("held_out_2", n),
    ),
    "dev_2": (
        "generated clinical notes, DEV 2 (held-out 2's kind of values, tuned on)",
        lambda n: load_generated("dev_2", n),
    ),
    "dev_3": (
        "generated documents of other kinds, DEV 3 (tuned on)",
        lambda n: load_kinds("dev_3", n),
    ),
    "held_out_3": (
        "generated documents of other kinds, HELD-OUT 3 (other templates, never tuned on)",
        lambda n: load_kinds("held_out_3", n),
    ),
    "hard": (
        "handwritten ICU lines, HARD (run once held out, then tuned on: IN-SAMPLE since the fifth pass)",
        load_hard,
    ),
    "hard_2": (
        "handwritten lines of other note kinds, HARD 2 (run held out twice, then tuned on: IN-SAMPLE since the sixth pass)",
        load_hard_2,
    ),
    "hard_3": (
        "handwritten lines written blind, HARD 3 (run held out twice, then tuned on: IN-SAMPLE since the seventh pass)",
        load_hard_3,
    ),
    "hard_4": (
        "handwritten lines written blind, HARD 4 (run held out once, then tuned on: IN-SAMPLE since the eighth pass)",
        load_hard_4,
    ),
    "hard_5": (
        "handwritten lines written blind, HARD 5 (run held out once, then tuned on: IN-SAMPLE since the ninth pass)",
        load_hard_5,
    ),
    "hard_6": ("handwritten lines written blind, HARD 6, HELD-OUT (its misses not read)", load_hard_6),
    "meddocan": ("MEDDOCAN Spanish clinical cases, HELD-OUT", load_meddocan),
}


SYNTHEA_NOTES = ROOT / "tests" / "corpus" / "fhir" / "synthea_bulk_10pt" / "DocumentReference.000.ndjson"


def load_synthea_notes(limit: int | None) -> list[str]:
    """The corpus' Synthea DocumentReference notes, decoded as the pipeline decodes them: long
    structured notes with Synthea's names, unlabelled (a speed set only)."""
    from medlake.governance.text_deid import decode_attachment

    notes: list[str] = []
    for line in SYNTHEA_NOTES.read_text(encoding="utf-8").splitlines():
        for content in json.loads(line).get("content") or []:
            attachment = content.get("attachment") or {}
            if attachment.get("data"):
                notes.append(decode_attachment(attachment))
    return notes[: limit or SPEED_NOTES]


#: Synthea notes timed (of 1,215): enough for a steady rate, short enough on a shared machine.
SPEED_NOTES = 400


def bench_speed_only(deid: TextDeidentifier, texts: list[str], baseline: bool) -> dict[str, Any]:
    """Texts per CPU-second of medlake's whole de-identification and, beside it, of plain
    Presidio's analysis (what the pipeline's notes step does, on its kind of note)."""
    _, rate, cpu_rate = timed(lambda t: deid.deidentify_batch(t, surrogate_key=b"bench"), texts)
    out: dict[str, Any] = {
        "texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / max(len(texts), 1)),
        "texts_per_s": round(rate, 1),
        "texts_per_cpu_s": round(cpu_rate, 1),
    }
    if baseline:
        batch = _plain_presidio()
        _, _, plain_cpu = timed(
            lambda t: list(batch.analyze_iterator(t, language=LANGUAGE, batch_size=BATCH)), texts
        )
        out["plain_presidio_texts_per_cpu_s"] = round(plain_cpu, 1)
        out["speedup_cpu"] = round(cpu_rate / plain_cpu, 2)
    return out


def covered(start: int, end: int, spans: Sequence[tuple[int, int]]) -> float:
    """The largest share of [start, end) one span covers."""
    size = max(end - start, 1)
    return max((max(0, min(end, e) - max(start, s)) / size for s, e in spans), default=0.0)


def inside_gold(start: int, end: int, gold: Sequence[Gold]) -> float:
    """The share of [start, end) that lies inside any gold span."""
    inside = sum(1 for i in range(start, end) if any(g.start <= i < g.end for g in gold))
    return inside / max(end - start, 1)


def score_corpus(
    predicted: list[list[tuple[int, int, str]]], gold: list[list[Gold]]
) -> dict[str, Any]:
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    emitted: Counter[str] = Counter()
    for spans, golds in zip(predicted, gold):
        bounds = [(s, e) for s, e, _ in spans]
        for g in golds:
            total[g.entity_type] += 1
            found[g.entity_type] += covered(g.start, g.end, bounds) >= COVER
        for s, e, kind in spans:
            emitted[kind] += 1
            correct[kind] += inside_gold(s, e, golds) >= COVER
    clean = [spans for spans, golds in zip(predicted, gold) if not golds]
    recall = sum(found.values()) / max(sum(total.values()), 1)
    precision = sum(correct.values()) / max(sum(emitted.values()), 1)
    phi = [t for t in total if t not in SAFE_HARBOR_KEPT]
    key: dict[str, list[int]] = {}
    for t in total:
        if t in KEY_TYPES:
            into = key.setdefault(KEY_TYPES[t], [0, 0])
            into[0] += found[t]
            into[1] += total[t]
    return {
        "recall": round(recall, 4),
        "recall_key_types": {k: round(f / max(n, 1), 4) for k, (f, n) in sorted(key.items())},
        "recall_safe_harbor_types": round(
            sum(found[t] for t in phi) / max(sum(total[t] for t in phi), 1), 4
        ),
        "precision": round(precision, 4),
        "gold_spans": sum(total.values()),
        "phi_free_texts": len(clean),
        "phi_free_texts_redacted": sum(1 for spans in clean if spans),
        "predicted_spans": sum(emitted.values()),
        "recall_by_type": {
            t: {"recall": round(found[t] / total[t], 4), "found": found[t], "gold": total[t]}
            for t in sorted(total, key=lambda t: -total[t])
        },
        "precision_by_type": {
            t: {
                "precision": round(correct[t] / emitted[t], 4),
                "correct": correct[t],
                "predicted": emitted[t],
            }
            for t in sorted(emitted, key=lambda t: -emitted[t])
        },
    }


def print_misses(
    texts: list[str], predicted: list[list[tuple[int, int, str]]], gold: list[list[Gold]], n: int
) -> None:
    """Up to ``n`` missed gold spans per type, in context, to see what a recognizer lacks."""
    misses: dict[str, list[str]] = {}
    for text, spans, golds in zip(texts, predicted, gold):
        bounds = [(s, e) for s, e, _ in spans]
        for g in golds:
            if covered(g.start, g.end, bounds) < COVER:
                around = f"{text[max(0, g.start - 30) : g.start]}[[{text[g.start : g.end]}]]"
                around += text[g.end : g.end + 20]
                misses.setdefault(g.entity_type, []).append(around.replace("\n", " / "))
    for kind, items in sorted(misses.items(), key=lambda kv: -len(kv[1])):
        print(f"\nmissed {kind}: {len(items)}")
        for item in items[:n]:
            print(f"  {item!r}")


def print_false_positives(
    texts: list[str], predicted: list[list[tuple[int, int, str]]], gold: list[list[Gold]], n: int
) -> None:
    """Up to ``n`` predicted spans per type that lie mostly outside gold, in context."""
    wrong: dict[str, list[str]] = {}
    for text, spans, golds in zip(texts, predicted, gold):
        for s, e, kind in spans:
            if inside_gold(s, e, golds) < COVER:
                around = f"{text[max(0, s - 30) : s]}<<{text[s:e]}>>{text[e : e + 20]}"
                wrong.setdefault(kind, []).append(around.replace("\n", " / "))
    for kind, items in sorted(wrong.items(), key=lambda kv: -len(kv[1])):
        print(f"\nfalse {kind}: {len(items)}")
        for item in items[:n]:
            print(f"  {item!r}")


def timed(
    run: Callable[[list[str]], list[Any]], texts: list[str]
) -> tuple[list[Any], float, float]:
    """The output, texts per wall-clock second and texts per CPU second of this process (the
    latter is steadier on a shared machine)."""
    run(texts[:BATCH])  # warm-up: first-call caches, regex compilation
    wall, cpu = time.perf_counter(), time.process_time()
    out = run(texts)
    return (
        out,
        len(texts) / (time.perf_counter() - wall),
        len(texts) / max(time.process_time() - cpu, 1e-9),
    )


def bench_corpus(
    deid: TextDeidentifier,
    texts: list[str],
    gold: list[list[Gold]],
    misses: int = 0,
    *,
    workers: bool = False,
) -> dict[str, Any]:
    """medlake's spans scored against ``gold``, and its speed: analysis alone, then the whole
    de-identification (what the pipeline runs), in one process and with ``workers``."""
    spans, analyse_rate, _ = timed(lambda t: deid.analyze_batch(t), texts)
    done, deid_rate, deid_cpu_rate = timed(
        lambda t: deid.deidentify_batch(t, surrogate_key=b"bench"), texts
    )
    parallel_rate = 0.0
    if workers:  # what the pipeline does with a large batch: one worker process per core
        _, parallel_rate, _ = timed(
            lambda t: deidentify_batch(t, surrogate_key=b"bench", workers=WORKERS, min_parallel=1),
            texts,
        )
    predicted = [[(s.start, s.end, s.entity_type) for s in row] for row in spans]
    if misses:
        print_misses(texts, predicted, gold, misses)
        print_false_positives(texts, predicted, gold, misses)
    return {
        **score_corpus(predicted, gold),
        "texts": len(texts),
        "texts_per_s_analyze": round(analyse_rate, 1),
        "texts_per_s": round(deid_rate, 1),
        "texts_per_cpu_s": round(deid_cpu_rate, 1),
        "texts_per_s_2_processes": round(parallel_rate, 1),
        "texts_not_english": sum(1 for d in done if not d.supported),
    }


@cache
def _plain_presidio() -> Any:
    """Plain Presidio: default recognizers and spaCy mapping, the same small model, batched."""
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp_engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": LANGUAGE, "model_name": SPACY_MODEL}],
        }
    ).create_engine()
    return BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=[LANGUAGE]))


def bench_baseline(texts: list[str], gold: list[list[Gold]]) -> dict[str, Any]:
    """Plain Presidio's spans scored against ``gold``, and its speed, in this run."""
    batch = _plain_presidio()
    results, rate, cpu_rate = timed(
        lambda t: batch.analyze_iterator(t, language=LANGUAGE, batch_size=BATCH), texts
    )
    predicted = [[(r.start, r.end, r.entity_type) for r in row] for row in results]
    return {
        **score_corpus(predicted, gold),
        "texts": len(texts),
        "texts_per_s": round(rate, 1),
        "texts_per_cpu_s": round(cpu_rate, 1),
    }


# ---------------------------------------------------------------------------------------------
# (b) the sample hospital's planted PHI

_DATE = re.compile(r"^(\d{1,2}/\d{1,2}/\d{4}|\d{4}-\d{2}-\d{2}|[A-Z][a-z]+ \d{1,2}, \d{4})$")


def _resources(path: Path) -> list[dict[str, Any]]:
    """A landing file's resources in offset order (bundle entries or ndjson lines)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ndjson":
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line) if line.strip() else {})
            except json.JSONDecodeError:
                out.append({})
        return out
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return []
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return [(e or {}).get("resource") or {} for e in doc.get("entry") or []]
    return [doc] if isinstance(doc, dict) else []


def _ref_id(reference: str | None) -> str:
    return re.split(r"[/:]", reference or "")[-1]


def _note_text(resource: dict[str, Any], path: str) -> str:
    if path == "Encounter.text.div":
        return str(narrative_text(str((resource.get("text") or {}).get("div") or "")))
    return " ".join(str(n.get("text") or "") for n in resource.get("note") or [])


def planted_notes(
    landing: Path,
) -> tuple[list[str], list[list[str]], list[str], list[list[str]], dict[str, set[str]]]:
    """Texts, planted PHI per text, patient ids, the patients' deny lists, and the truth's phi."""
    truth = json.loads((landing / "_truth.json").read_text(encoding="utf-8"))
    files: dict[str, list[dict[str, Any]]] = {}
    patients: dict[str, dict[str, Any]] = {}
    for path in sorted((landing / "fhir").rglob("*")):
        if path.is_file() and path.suffix in (".json", ".ndjson"):
            resources = _resources(path)
            files[str(path.relative_to(landing))] = resources
            for res in resources:
                if isinstance(res, dict) and res.get("resourceType") == "Patient" and res.get("id"):
                    patients[res["id"]] = res
    texts, phi, person_ids, deny = [], [], [], []
    for item in truth["free_text"]:
        res = files[item["file"]][item["offset"] - 1]
        pid = _ref_id((res.get("subject") or {}).get("reference"))
        patient = patients.get(pid, {})
        identity = {
            "local_id": patient.get("id"),
            "names": patient.get("name") or [],
            "birth_date": patient.get("birthDate"),
            "telecom": patient.get("telecom") or [],
            "address": patient.get("address") or [],
            "identifiers": patient.get("identifier") or [],
        }
        texts.append(_note_text(res, item["path"]))
        phi.append(list(item["phi"]))
        person_ids.append(pid)
        deny.append(record_deny_list(identity))
    return texts, phi, person_ids, deny, {k: set(v) for k, v in truth["phi"].items()}


def phi_kind(value: str, known: dict[str, set[str]]) -> str:
    if value in known.get("mrns", set()):
        return "mrn"
    if value in known.get("phones", set()):
        return "phone"
    if value in known.get("ssns", set()):
        return "ssn"
    if _DATE.match(value):
        return "date"
    return "name"


def bench_planted(deid: TextDeidentifier, *, patients: int, seed: int) -> dict[str, Any]:
    from medlake.sample import generate

    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp) / "landing"
        generate(landing, patients=patients, seed=seed)
        texts, phi, person_ids, deny, known = planted_notes(landing)
    result: dict[str, Any] = {"patients": patients, "seed": seed, "notes": len(texts)}
    for label, lists in (("with_record", deny), ("without_record", None)):
        outs = deid.deidentify_batch(
            texts, deny_lists=lists, surrogate_key=b"bench", person_keys=person_ids
        )
        removed: Counter[str] = Counter()
        total: Counter[str] = Counter()
        name_part_leaks = 0
        for out, planted in zip(outs, phi):
            lowered = out.text.casefold()
            for value in planted:
                kind = phi_kind(value, known)
                total[kind] += 1
                removed[kind] += value.casefold() not in lowered
                if kind == "name":
                    name_part_leaks += any(
                        re.search(rf"\b{re.escape(part.casefold())}\b", lowered)
                        for part in value.split()
                    )
        result[label] = {
            "recall": round(sum(removed.values()) / max(sum(total.values()), 1), 4),
            "recall_by_kind": {
                k: {
                    "recall": round(removed[k] / total[k], 4),
                    "removed": removed[k],
                    "planted": total[k],
                }
                for k in sorted(total)
            },
            "notes_with_a_name_part_left": name_part_leaks,
        }
    return result


# ---------------------------------------------------------------------------------------------


def _print_corpus(title: str, r: dict[str, Any]) -> None:
    print(
        f"\n{title}: {r['texts']} texts, recall {r['recall']:.1%} "
        f"({r['recall_safe_harbor_types']:.1%} without {', '.join(SAFE_HARBOR_KEPT)}), "
        f"precision {r['precision']:.1%}, "
        f"{r['texts_per_s']:.0f} texts/s ({r['texts_per_cpu_s']:.0f} per CPU-second)"
    )
    keys = ", ".join(f"{k} {v:.1%}" for k, v in r["recall_key_types"].items())
    print(
        f"  key types: {keys}; PHI-free texts with something redacted: "
        f"{r['phi_free_texts_redacted']} of {r['phi_free_texts']}"
    )
    if "texts_not_english" in r:
        print(f"  texts read as not English (flagged for review): {r['texts_not_english']}")
    print(
        f"  {'gold type':<20}{'recall':>8}{'found':>8}{'gold':>7}   {'predicted type':<24}{'precision':>10}{'n':>7}"
    )
    rec = list(r["recall_by_type"].items())
    pre = list(r["precision_by_type"].items())
    for i in range(max(len(rec), len(pre))):
        left = (
            f"  {rec[i][0]:<20}{rec[i][1]['recall']:>8.1%}{rec[i][1]['found']:>8}{rec[i][1]['gold']:>7}"
            if i < len(rec)
            else " " * 45
        )
        right = (
            f"   {pre[i][0]:<24}{pre[i][1]['precision']:>10.1%}{pre[i][1]['predicted']:>7}"
            if i < len(pre)
            else ""
        )
        print(left + right)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets", nargs="+", choices=list(SETS), default=list(SETS), help="labelled sets to score"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N texts of each set")
    parser.add_argument("--no-baseline", action="store_true", help="skip plain Presidio")
    parser.add_argument(
        "--no-speed-set", action="store_true", help="skip timing the Synthea notes (unlabelled)"
    )
    parser.add_argument("--workers", action="store_true", help="also time 2 worker processes")
    parser.add_argument("--planted", action="store_true", help="also the sample hospital's planted PHI")
    parser.add_argument("--patients", type=int, default=200, help="sample hospital size for --planted")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--misses", type=int, default=0, help="print up to N missed gold spans per type")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    deid = TextDeidentifier()
    load_s = time.perf_counter() - started
    report: dict[str, Any] = {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "model": SPACY_MODEL,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "engine_load_s": round(load_s, 2),
        "scoring": f"gold found when one predicted span covers >= {COVER:.0%} of it (any type); "
        f"predicted correct when >= {COVER:.0%} of it lies in gold spans",
        "target": TARGET,
        "sets": {},
    }
    for name in args.sets:
        title, load = SETS[name]
        texts, gold = load(args.limit)
        if args.misses:
            print(f"\n=== misses, {title}")
        ours = bench_corpus(deid, texts, gold, args.misses, workers=args.workers)
        entry: dict[str, Any] = {"title": title, "medlake": ours}
        _print_corpus(f"{name}: {title}\n  medlake", ours)
        if not args.no_baseline:
            plain = bench_baseline(texts, gold)
            entry["plain_presidio"] = plain
            entry["speedup_cpu"] = round(ours["texts_per_cpu_s"] / plain["texts_per_cpu_s"], 2)
            _print_corpus("  plain Presidio, same run", plain)
            print(
                f"  speed: medlake {ours['texts_per_cpu_s']:.0f} texts per CPU-second, plain Presidio "
                f"{plain['texts_per_cpu_s']:.0f}: {entry['speedup_cpu']}x"
            )
        if args.workers:
            print(f"  with {WORKERS} worker processes: {ours['texts_per_s_2_processes']:.0f} texts/s")
        report["sets"][name] = entry
    if not args.no_speed_set:
        texts = load_synthea_notes(args.limit)
        speed = bench_speed_only(deid, texts, baseline=not args.no_baseline)
        report["synthea_notes_speed"] = speed
        versus = (
            f", plain Presidio {speed['plain_presidio_texts_per_cpu_s']:.1f}: "
            f"{speed['speedup_cpu']}x"
            if "speedup_cpu" in speed
            else ""
        )
        print(
            f"\nsynthea_notes: {speed['texts']} Synthea DocumentReference notes (unlabelled, "
            f"{speed['mean_chars']} characters on average), speed only: medlake "
            f"{speed['texts_per_cpu_s']:.1f} per CPU-second ({speed['texts_per_s']:.1f}/s wall)"
            f"{versus}"
        )
    if args.planted:
        report["planted"] = bench_planted(deid, patients=args.patients, seed=args.seed)
        planted = report["planted"]
        print(f"\nsample hospital: {planted['notes']} notes with planted PHI ({planted['patients']} patients)")
        for label in ("with_record", "without_record"):
            kinds = ", ".join(
                f"{k} {v['recall']:.1%} ({v['removed']}/{v['planted']})"
                for k, v in planted[label]["recall_by_kind"].items()
            )
            print(f"  {label:<15} recall {planted[label]['recall']:.1%}: {kinds}")
    print("\nsummary (recall / key types names-dates-phones-record numbers / precision / speed vs Presidio per CPU-s):")
    for name, entry in report["sets"].items():
        ours = entry["medlake"]
        keys = " ".join(f"{k} {v:.1%}" for k, v in ours["recall_key_types"].items())
        plain = entry.get("plain_presidio")
        versus = f"; Presidio recall {plain['recall']:.1%}, precision {plain['precision']:.1%}" if plain else ""
        print(
            f"  {name:<10} recall {ours['recall']:.1%} ({ours['recall_safe_harbor_types']:.1%} Safe Harbor types) "
            f"| {keys} | precision {ours['precision']:.1%} | {entry.get('speedup_cpu', '-')}x{versus}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
