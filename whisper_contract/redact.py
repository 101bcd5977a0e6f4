"""PII redaction over a transcript's words, so every timing is kept. Standard library only.

Each recogniser looks at the word list (written forms such as ``555-234-5678`` or
``john.smith@example.com`` as Whisper writes them, and spoken ones such as "five five five",
"john dot smith at example dot com") and returns spans of words; each span becomes one word
``[PII:<TYPE>]`` with the span's start and end, so SRT/VTT cues and word timings stay right.
What a span held is never kept in the redacted transcript (``Transcript.redaction`` records
only the type and the times).

Person names are not recognised: that needs a named-entity model, and none that ships its
weights in a registry package runs offline here (see the README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from whisper_contract.captions import segment_words
from whisper_contract.result import RedactedSpan, Redaction, Segment, Transcript, Word

# Option values (``redact_types``) -> the tag's type.
PII_TYPES = ("phone", "email", "card", "iban", "ssn", "nino", "dob")

_EDGE = " \t\n,;:!?\"'()[]{}<>"
_SENTENCE_END = ".,;:!?"
_DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_REPEAT = {"double": 2, "triple": 3}
_NUMBER_SEPARATORS = re.compile(r"[-./()+\s]")
_DATE = re.compile(r"^(\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{1,2}-\d{1,2})$")
_CONNECTORS = {"dot": ".", "underscore": "_", "dash": "-", "hyphen": "-"}
_LOCAL = re.compile(r"^[a-z0-9._%+-]+$")
_DOMAIN = re.compile(r"^[a-z0-9.-]+$")
_EMAIL = re.compile(r"^[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(\.[a-z0-9-]+)*\.([a-z]{2,})$")
# Top-level domains an address may end in: any two-letter country code, or these. Without
# the list "me at john.smith" would read as an address.
_GENERIC_TLDS = frozenset("com org net edu gov mil int info biz name pro mobi app dev io ai co email online "
                          "site tech store shop cloud".split())
_IBAN_START = re.compile(r"^[A-Z]{2}\d{2}")
_NINO = re.compile(r"^(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]$")
_MONTHS = frozenset("january february march april may june july august september october november december "
                    "jan feb mar apr jun jul aug sep sept oct nov dec".split())
_DAY = re.compile(r"^(0?[1-9]|[12]\d|3[01])(st|nd|rd|th)?$")
_YEAR = re.compile(r"^(19|20)\d\d$")
_DOB_TRIGGERS = frozenset("born birth birthday birthdate dob".split())
_DATE_GLUE = frozenset("of the".split())
_SSN_CONTEXT = frozenset("social security ssn".split())


@dataclass(frozen=True)
class Span:
    first: int  # indices into the flat word list, inclusive
    last: int
    type: str


def core(word: str) -> str:
    """A word without surrounding punctuation or a sentence's final full stop (``.com`` keeps
    its leading dot)."""
    return word.strip(_EDGE).rstrip(".").strip(_EDGE)


def luhn_valid(digits: str) -> bool:
    """The Luhn check every payment card number passes (ISO/IEC 7812-1)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: two letters, two check digits, up to 30 more; mod-97 of the rearranged
    number is 1."""
    text = text.upper()
    if not (15 <= len(text) <= 34 and _IBAN_START.match(text) and text.isalnum()):
        return False
    rearranged = text[4:] + text[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --- recognisers: (cores, lowered cores) -> spans ------------------------------------------
def _emails(cores: Sequence[str], lower: Sequence[str]) -> list[Span]:
    spans = []
    for a, token in enumerate(lower):
        if token != "at" and "@" not in token:
            continue
        first = last = a
        if token == "at":  # spoken: the address is the words either side
            if a == 0 or a + 1 >= len(lower) or not _LOCAL.match(lower[a - 1]) or not _DOMAIN.match(lower[a + 1]):
                continue
            first, last = a - 1, a + 1
        while first > 0:  # "john" ".smith", or "john" "dot" "smith"
            if lower[first][:1] in "._-" and _LOCAL.match(lower[first - 1]):
                first -= 1
            elif first > 1 and lower[first - 1] in _CONNECTORS and _LOCAL.match(lower[first - 2]):
                first -= 2
            else:
                break
        while last + 1 < len(lower):  # "example" ".com", or "example" "dot" "com"
            if lower[last + 1][:1] == "." and _DOMAIN.match(lower[last + 1]):
                last += 1
            elif last + 2 < len(lower) and lower[last + 1] in _CONNECTORS and _DOMAIN.match(lower[last + 2]):
                last += 2
            else:
                break
        text = "".join("@" if i == a and token == "at" else _CONNECTORS.get(lower[i], lower[i])
                       for i in range(first, last + 1))
        match = _EMAIL.match(text)
        if match and (len(match.group(2)) == 2 or match.group(2) in _GENERIC_TLDS):
            spans.append(Span(first, last, "email"))
    return spans


def _longest_from(cores: Sequence[str], start: int, max_words: int, valid: Callable[[str], bool]) -> int | None:
    """The last index of the longest run of words from ``start`` whose joined letters and
    digits pass ``valid`` (IBANs and NI numbers are written in groups)."""
    found, text = None, ""
    for i in range(start, min(start + max_words, len(cores))):
        part = cores[i].replace(" ", "")
        if not part.isalnum():
            break
        text += part.upper()
        if valid(text):
            found = i
    return found


def _ibans(cores: Sequence[str], lower: Sequence[str]) -> list[Span]:
    spans = []
    for i, token in enumerate(cores):
        if _IBAN_START.match(token.upper()) and (last := _longest_from(cores, i, 10, iban_valid)) is not None:
            spans.append(Span(i, last, "iban"))
    return spans


def _ninos(cores: Sequence[str], lower: Sequence[str]) -> list[Span]:
    spans = []
    for i, token in enumerate(cores):
        if token[:1].isalpha() and (last := _longest_from(cores, i, 5, lambda t: bool(_NINO.match(t)))) is not None:
            spans.append(Span(i, last, "nino"))
    return spans


def _is_date_part(token: str) -> bool:
    return token in _MONTHS or bool(_DAY.match(token) or _YEAR.match(token) or _DATE.match(token))


def _dates_of_birth(cores: Sequence[str], lower: Sequence[str]) -> list[Span]:
    """A date (month names, days, years, 12/05/1980) within a few words after "born",
    "birth", "birthday", "DOB": a date alone is not personal data."""
    spans = []
    for t, token in enumerate(lower):
        if token not in _DOB_TRIGGERS:
            continue
        i = next((j for j in range(t + 1, min(t + 5, len(lower))) if _is_date_part(lower[j])), None)
        if i is None:
            continue
        last = i
        while last + 1 < len(lower) and (_is_date_part(lower[last + 1]) or lower[last + 1] in _DATE_GLUE):
            last += 1
        while lower[last] in _DATE_GLUE:
            last -= 1
        if any(lower[j] in _MONTHS or _YEAR.match(lower[j]) or _DATE.match(lower[j]) for j in range(i, last + 1)):
            spans.append(Span(i, last, "dob"))
    return spans


def _number_word(lower: Sequence[str], i: int) -> tuple[str, list[int]] | None:
    """The digits a word stands for and their written groups (``555-234`` -> 3, 3), or None."""
    token = lower[i]
    if token in _DIGIT_WORDS:
        return _DIGIT_WORDS[token], [1]
    if token in _REPEAT and i + 1 < len(lower) and lower[i + 1] in _DIGIT_WORDS:
        return "", []  # "double five": the next word carries the digit, repeated below
    if _DATE.match(token) or not token or token.startswith(":"):
        return None
    groups = [g for g in _NUMBER_SEPARATORS.split(token) if g]
    if groups and all(g.isdigit() for g in groups):
        return "".join(groups), [len(g) for g in groups]
    return None


def _numbers(cores: Sequence[str], lower: Sequence[str]) -> list[Span]:
    """Runs of number words: a US SSN (written 3-2-4, or nine digits after "social
    security"/"SSN"), a card number (13-19 digits passing Luhn), else a phone number
    (7-15 digits)."""
    spans = []
    i = 0
    while i < len(lower):
        first, digits, groups = i, "", []
        while i < len(lower):
            found = _number_word(lower, i)
            if found is None:
                break
            if lower[i] == "oh" and not digits and (i + 1 >= len(lower) or _number_word(lower, i + 1) is None):
                break  # "oh" is a zero only next to other digits
            part, sizes = found
            if i > 0 and lower[i - 1] in _REPEAT and lower[i] in _DIGIT_WORDS:
                part *= _REPEAT[lower[i - 1]]
            digits += part
            groups += sizes
            i += 1
        if not digits:
            i += 1
            continue
        context = set(lower[max(0, first - 4):first])
        kind = None
        if groups == [3, 2, 4] or (len(digits) == 9 and context & _SSN_CONTEXT):
            kind = "ssn"
        elif 13 <= len(digits) <= 19 and luhn_valid(digits):
            kind = "card"
        elif 7 <= len(digits) <= 15:
            kind = "phone"
        if kind:
            spans.append(Span(first, i - 1, kind))
    return spans


# Earlier recognisers win where spans overlap: an IBAN's digits are not a phone number, nor
# is a date of birth.
RECOGNISERS: tuple[Callable[[Sequence[str], Sequence[str]], list[Span]], ...] = (
    _emails, _ibans, _ninos, _dates_of_birth, _numbers)


def find(words: Sequence[str], types: Sequence[str] = PII_TYPES) -> list[Span]:
    """Non-overlapping spans of personal data of ``types`` in a list of words, in order."""
    cores = [core(w) for w in words]
    lower = [c.lower() for c in cores]
    taken: set[int] = set()
    chosen: list[Span] = []
    for recognise in RECOGNISERS:
        for span in recognise(cores, lower):
            indices = set(range(span.first, span.last + 1))
            if indices & taken:
                continue
            taken |= indices  # claimed even when its type is not redacted: it is not another type
            if span.type in types:
                chosen.append(span)
    return sorted(chosen, key=lambda s: s.first)


def tag(kind: str) -> str:
    return f"[PII:{kind.upper()}]"


def _tag_word(words: Sequence[Word], kind: str) -> Word:
    """One word in place of ``words``: their times, the first one's leading space and the
    last one's closing punctuation (which says nothing about the data)."""
    text = words[-1].word.rstrip()
    trail = text[len(text.rstrip(_SENTENCE_END)):]
    lead = " " if words[0].word[:1].isspace() else ""
    return Word(start=words[0].start, end=words[-1].end, word=lead + tag(kind) + trail,
                probability=min(w.probability for w in words))


def redact(t: Transcript, types: Sequence[str] = PII_TYPES) -> Transcript:
    """``t`` with every span of ``types`` replaced (words, segment text, full text)."""
    flat = [(si, w) for si, seg in enumerate(t.segments) for w in segment_words(seg)]
    spans = find([w.word for _, w in flat], types)
    starts = {s.first: s for s in spans}
    per_segment: list[list[Word]] = [[] for _ in t.segments]
    placed: list[tuple[int, Span, Word]] = []
    i = 0
    while i < len(flat):
        si, word = flat[i]
        if i in starts:
            span = starts[i]
            word = _tag_word([w for _, w in flat[span.first:span.last + 1]], span.type)
            placed.append((si, span, word))
            i = span.last + 1
        else:
            i += 1
        per_segment[si].append(word)
    # A segment whose first words ended up in a span begun in the segment before starts
    # where its remaining words do (the span's tag ends the earlier segment).
    headless = {flat[j][0] for _, span, _ in placed for j in range(span.first, span.last + 1)
                if flat[j][0] != flat[span.first][0]}
    segments: list[Segment] = []
    new_id: dict[int, int] = {}
    for si, (seg, words) in enumerate(zip(t.segments, per_segment)):
        if not words:
            continue  # all of it was inside a span that began in an earlier segment
        new_id[si] = len(segments)
        segments.append(replace(seg, id=len(segments), start=words[0].start if si in headless else seg.start,
                                end=max(seg.end, words[-1].end), text="".join(w.word for w in words),
                                words=tuple(words)))
    spans_out = tuple(RedactedSpan(type=span.type, start=word.start, end=word.end, segment=new_id[si])
                      for si, span, word in placed)
    return replace(t, segments=tuple(segments), text="".join(s.text for s in segments).strip(),
                   redaction=Redaction(types=tuple(types), spans=spans_out))
