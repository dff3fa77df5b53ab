"""What one landing record may cost: the bounds every parser checks, and the reads that keep them.

A hostile or broken feed must not take the run with it: a gigabyte in one field, JSON nested a
million deep, a segment of a million fields, a VCF header naming a million samples, a gzip bomb,
a DICOM element claiming more bytes than its file has, a record whose check never ends. Each is
quarantined under its own rule id with the limit in the reason (file, offset, rule and limit,
never a value), and the run goes on:

==========================  ================================================================
``limit.record_bytes``      a record (line, HL7 message, FHIR resource, ``.json`` file) over
                            ``MEDLAKE__LIMITS__RECORD_BYTES``
``limit.json_depth``        JSON nested deeper than ``MEDLAKE__LIMITS__JSON_DEPTH``
``limit.hl7_fields``        an HL7 v2 segment with more fields than ``MEDLAKE__LIMITS__HL7_FIELDS``
``limit.vcf_samples``       a VCF header naming more samples than ``MEDLAKE__LIMITS__VCF_SAMPLES``
``limit.decompressed_bytes`` a gzip file inflating past ``MEDLAKE__LIMITS__DECOMPRESSED_BYTES``
``limit.dicom_element_length`` a DICOM element declaring more bytes than its whole file holds
``limit.record_seconds``    parsing one record taking longer than ``MEDLAKE__LIMITS__RECORD_SECONDS``
==========================  ================================================================

Memory: line-oriented files are read through :func:`read_bounded`, which never holds a line over
the record limit: such a line is replaced by a short marker naming its length (its line break
kept, so line numbers stay true), and the record holding the marker is quarantined under
``limit.record_bytes``. A quarantine row keeps at most :data:`QUARANTINED_PREFIX` bytes of a
record refused for a limit; the file itself stays in landing.

Settings reach the parsers through :func:`using` (a context variable the ingest task sets from
``Settings().limits``), so no parser signature changes; without it the defaults apply.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import orjson

from medlake.config import LimitsSettings

Limits = LimitsSettings

#: the most of a record refused for a limit that its quarantine row keeps
QUARANTINED_PREFIX = 64 * 1024
#: bytes read from a landing file at a time
CHUNK = 1024 * 1024

_CURRENT: ContextVar[LimitsSettings | None] = ContextVar("medlake_limits", default=None)
_DEFAULT = LimitsSettings()
_MARKER = re.compile("\x1a<a line of (\\d+) bytes, over the record limit, not read>\x1a")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class LimitExceeded(Exception):
    """A record (or file) over one of the limits, with its rule id and a reason naming the limit."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(reason)
        self.rule_id = rule_id
        self.reason = reason


def current() -> LimitsSettings:
    """The limits in force: those :func:`using` set, else the defaults."""
    return _CURRENT.get() or _DEFAULT


@contextmanager
def using(limits: LimitsSettings) -> Iterator[LimitsSettings]:
    """Parse with these limits inside the block (the ingest task passes ``Settings().limits``)."""
    token = _CURRENT.set(limits)
    try:
        yield limits
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True)
class Bound:
    """A step with the limits in force where it was made: called in a worker process or a Spark
    executor (where the context variable is unset), it runs under the same limits."""

    fn: Callable[..., Any]
    limits: LimitsSettings

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with using(self.limits):
            result = self.fn(*args, **kwargs)
        if isinstance(result, Iterator):  # a reader: its body runs as it is iterated
            return _iterated_under(result, self.limits)
        return result


def _iterated_under(items: Iterator[Any], limits: LimitsSettings) -> Iterator[Any]:
    """The items, each produced under ``limits`` (a generator's body runs at each ``next``, after
    the call that made it has returned)."""
    while True:
        with using(limits):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


def bound(fn: Callable[..., Any]) -> Bound:
    """``fn`` bound to the limits in force now (see :class:`Bound`)."""
    return Bound(fn, current())


def clip(text: str | None) -> str | None:
    """At most :data:`QUARANTINED_PREFIX` characters of a record refused for a limit."""
    if text is None or len(text) <= QUARANTINED_PREFIX:
        return text
    return text[:QUARANTINED_PREFIX]


# -- reading files without holding a huge line -------------------------------------------------


def marker(length: int) -> bytes:
    """What stands in for a line of ``length`` bytes that is over the record limit."""
    return f"\x1a<a line of {length} bytes, over the record limit, not read>\x1a".encode("ascii")


def bound_lines(chunks: Iterable[bytes], *, line_bytes: int) -> bytes:
    """The concatenated chunks with every line longer than ``line_bytes`` replaced by its marker.

    Never holds more of an over-long line than one chunk; line breaks are kept. Works chunk by
    chunk (a regular expression finds long lines inside a chunk), not line by line: a file of a
    billion short lines costs no more than its bytes.
    """
    if line_bytes <= 0:
        return b"".join(chunks)
    long_line = re.compile(rb"[^\n]{%d,}" % (line_bytes + 1))
    out = bytearray()
    carry = bytearray()  # the unfinished line, while it is within the limit
    skipped = -1  # bytes of the unfinished line once it is over the limit, else -1
    for chunk in chunks:
        first = chunk.find(b"\n")
        if first < 0:  # the unfinished line goes on
            if skipped >= 0:
                skipped += len(chunk)
            elif len(carry) + len(chunk) > line_bytes:
                skipped = len(carry) + len(chunk)
                carry.clear()
            else:
                carry += chunk
            continue
        size = (skipped if skipped >= 0 else len(carry)) + first
        if size > line_bytes:
            out += marker(size)
        else:
            out += carry
            out += chunk[:first]
        out += b"\n"
        carry.clear()
        skipped = -1
        last = chunk.rfind(b"\n")
        middle = chunk[first + 1 : last + 1]  # whole lines, each with its line break
        if len(middle) > line_bytes + 1 and long_line.search(middle):
            middle = long_line.sub(lambda m: marker(len(m.group())), middle)
        out += middle
        tail = chunk[last + 1 :]
        if len(tail) > line_bytes:
            skipped = len(tail)
        else:
            carry += tail
    if skipped >= 0:
        out += marker(skipped)
    else:
        out += carry
    return bytes(out)


def bounded_lines(chunks: Iterable[bytes], *, line_bytes: int) -> Iterator[bytes]:
    """The lines of the chunks (without their line breaks), one at a time, every line longer than
    ``line_bytes`` replaced by its marker (0: no limit): what :func:`bound_lines` gives, split,
    streamed. Holds one chunk and one line within the limit, never more of an over-long line."""
    carry = bytearray()  # the unfinished line, while it is within the limit
    skipped = -1  # bytes of the unfinished line once it is over the limit, else -1
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if end < 0:  # the unfinished line goes on into the next chunk
                if skipped >= 0:
                    skipped += len(piece)
                elif line_bytes and len(carry) + len(piece) > line_bytes:
                    skipped = len(carry) + len(piece)
                    carry.clear()
                else:
                    carry += piece
                break
            size = (skipped if skipped >= 0 else len(carry)) + len(piece)
            if line_bytes and size > line_bytes:
                yield marker(size)
            elif carry:
                yield bytes(carry) + piece
            else:
                yield piece
            carry.clear()
            skipped = -1
            start = end + 1
    if skipped >= 0:
        yield marker(skipped)
    elif carry:
        yield bytes(carry)


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes, :data:`CHUNK` at a time."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk



def _inflated(handle: BinaryIO, *, name: str, cap: int) -> Iterator[bytes]:
    """The decompressed bytes of gzip data (every member, as BGZF writes), stopped past ``cap``.

    Raises :class:`LimitExceeded` (``limit.decompressed_bytes``) as soon as the output passes the
    cap, and ``OSError``/``EOFError``/``zlib.error`` for data that is not gzip or is cut short.
    """
    total = 0
    with gzip.GzipFile(fileobj=handle, mode="rb") as inflating:
        while chunk := inflating.read(CHUNK):
            total += len(chunk)
            if cap and total > cap:
                raise LimitExceeded(
                    "limit.decompressed_bytes",
                    f"{name}: inflates past {cap} bytes, the limit of decompressed bytes per file "
                    "(MEDLAKE__LIMITS__DECOMPRESSED_BYTES): a gzip bomb, or an extract to split",
                )
            yield chunk


def read_bounded(path: Path, *, name: str, gzipped: bool = False) -> bytes:
    """A landing file's bytes (decompressed when ``gzipped``), lines over the record limit replaced
    by their marker; :class:`LimitExceeded` when a gzip file inflates past its limit."""
    limits = current()
    if not gzipped:
        return bound_lines(file_chunks(path), line_bytes=limits.record_bytes)
    with path.open("rb") as handle:
        return bound_lines(
            _inflated(handle, name=name, cap=limits.decompressed_bytes), line_bytes=limits.record_bytes
        )


def gunzip_bounded(data: bytes, *, name: str) -> bytes:
    """Gzip (or BGZF) bytes decompressed, stopped past the decompressed-size limit."""
    return b"".join(_inflated(io.BytesIO(data), name=name, cap=current().decompressed_bytes))


# -- per-record checks ----------------------------------------------------------------------


def oversize(text: str | None) -> int | None:
    """The length of a line :func:`bound_lines` cut out of this record, if it holds one."""
    if not text or "\x1a" not in text:
        return None
    found = _MARKER.search(text)
    return int(found.group(1)) if found else None


def check_bytes(text: str | None, *, where: str) -> None:
    """``limit.record_bytes`` when the record is (or held a line) over the record limit."""
    limit = current().record_bytes
    if not text or not limit:
        return
    cut = oversize(text)
    size = cut if cut is not None else (len(text.encode("utf-8")) if len(text) * 4 > limit else 0)
    if size > limit:
        said = "holds a line of" if cut is not None else "is"
        raise LimitExceeded(
            "limit.record_bytes",
            f"{where}: {said} {size} bytes, over the limit of {limit} bytes per record "
            "(MEDLAKE__LIMITS__RECORD_BYTES)",
        )


def json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings not counted)."""
    deepest = depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text) if '"' in text else text):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_json_depth(text: str | None, *, where: str) -> None:
    """``limit.json_depth`` when the JSON text nests deeper than the limit."""
    limit = current().json_depth
    if not text or not limit or text.count("[") + text.count("{") <= limit:
        return
    depth = json_depth(text)
    if depth > limit:
        raise LimitExceeded(
            "limit.json_depth",
            f"{where}: JSON nested {depth} deep, over the limit of {limit} (MEDLAKE__LIMITS__JSON_DEPTH)",
        )


def check_json(text: str | None, *, where: str) -> None:
    """Both limits of a JSON record: its bytes and its depth."""
    check_bytes(text, where=where)
    check_json_depth(text, where=where)


def check_fields(segment: str, separator: str, *, where: str) -> None:
    """``limit.hl7_fields`` when one HL7 v2 segment has more fields than the limit."""
    limit = current().hl7_fields
    if not limit or len(segment) <= limit:
        return
    fields = segment.count(separator)  # MSH-1 is the separator itself; elsewhere the id is field 0
    if fields > limit:
        raise LimitExceeded(
            "limit.hl7_fields",
            f"{where}: segment {segment[:3]!r} has {fields} fields, over the limit of {limit} "
            "(MEDLAKE__LIMITS__HL7_FIELDS)",
        )


def check_samples(count: int, *, where: str) -> None:
    """``limit.vcf_samples`` when a VCF header names more samples than the limit."""
    limit = current().vcf_samples
    if limit and count > limit:
        raise LimitExceeded(
            "limit.vcf_samples",
            f"{where}: the header names {count} samples, over the limit of {limit} per file "
            "(MEDLAKE__LIMITS__VCF_SAMPLES)",
        )


# -- time per record ------------------------------------------------------------------------


class Clock:
    """Interrupts the check of one record when it runs past the time limit.

    In the main thread a periodic real-time timer (SIGALRM, every :data:`TICK` s or a quarter of
    the limit) looks at how long the current record has taken and raises inside a stuck check; a
    record costs two clock reads and no system call. In other threads a record over the limit is
    refused after it returns. Use: ``with clock() as c: ... with c.record(where): check(...)``.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.interrupts = (
            seconds > 0
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )
        self._where = ""
        self._started: float | None = None

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        started = self._started
        if started is not None and time.monotonic() - started > self.seconds:
            self._started = None
            raise LimitExceeded("limit.record_seconds", self._reason())

    def _reason(self) -> str:
        return (
            f"{self._where}: parsing it took longer than {self.seconds:g} s, the limit per record "
            "(MEDLAKE__LIMITS__RECORD_SECONDS)"
        )

    def record(self, where: str) -> Clock:
        """Time the ``with`` block as the check of one record named ``where``."""
        self._where = where
        return self

    def __enter__(self) -> None:
        if self.seconds > 0:
            self._started = time.monotonic()

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        started, self._started = self._started, None
        if error is None and started is not None and time.monotonic() - started > self.seconds:
            raise LimitExceeded("limit.record_seconds", self._reason())


#: how often the timer looks at the current record, at most
TICK = 1.0


@contextmanager
def clock() -> Iterator[Clock]:
    """A :class:`Clock` under the current time limit, its timer running for the block."""
    timer = Clock(current().record_seconds)
    if not timer.interrupts:
        yield timer
        return
    tick = min(TICK, timer.seconds / 4)
    previous = signal.signal(signal.SIGALRM, timer._alarm)
    resumed = signal.setitimer(signal.ITIMER_REAL, tick, tick)
    try:
        yield timer
    finally:
        signal.setitimer(signal.ITIMER_REAL, *resumed)
        signal.signal(signal.SIGALRM, previous)


# -- JSON that is JSON ------------------------------------------------------------------------


class NonFiniteNumber(ValueError):
    """JSON text holding NaN, Infinity or a number beyond a double (1e400): Python reads them, JSON has none."""


def _constant(name: str) -> float:
    raise NonFiniteNumber(name)


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise NonFiniteNumber(text[:20])
    return number


def loads(text: str | bytes) -> Any:
    """``json.loads`` refusing NaN, ±Infinity and numbers beyond a double (:class:`NonFiniteNumber`).

    Check the depth first (:func:`check_json_depth`): json.loads recurses, and a deep enough text
    raises RecursionError. orjson parses first (it refuses NaN, Infinity and numbers beyond a
    double too, 3-4x faster); what it refuses the standard library parses again, to accept what
    JSON allows and orjson does not (integers beyond 64 bits) and to say why the rest is refused.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)


__all__ = [
    "QUARANTINED_PREFIX",
    "Bound",
    "Clock",
    "LimitExceeded",
    "Limits",
    "NonFiniteNumber",
    "bound_lines",
    "bounded_lines",
    "check_bytes",
    "check_fields",
    "check_json",
    "check_json_depth",
    "check_samples",
    "clip",
    "clock",
    "current",
    "file_chunks",
    "gunzip_bounded",
    "loads",
    "oversize",
    "read_bounded",
    "using",
]
