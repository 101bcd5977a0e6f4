"""Subtitle cues from word timings, and per-segment confidence. Standard library only.

One segmentation for SRT, VTT and the JSON ``captions`` block (``build``): a cue holds at
most ``max_lines`` lines of at most ``max_line_chars`` characters and lasts at most
``max_cue_s``; consecutive cues are at least ``min_gap_ms`` apart. Words are never split
(a single word longer than a line gets a line of its own), and a cue never spans two
segments: Whisper's segments end at sentence boundaries, a natural place to change cue.
Without word timings the words are estimated: the segment's text split at spaces, its time
shared out in proportion to the characters (``segment_words``).
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from whisper_contract.result import Cue, Segment, Word

# A cue shorter than this cannot be read; a zero-length one is invalid WebVTT (its end must
# be greater than its start: W3C WebVTT, "collect WebVTT cue timings and settings").
MIN_CUE_S = 0.1
# SRT has no comments: a low-confidence cue starts with this (VTT says it in a NOTE instead).
LOW_CONFIDENCE_MARK = "(?) "


def speaker_prefix(speaker: str) -> str:
    """What TXT and SRT put before a labelled segment's text (VTT uses a voice span)."""
    return f"[{speaker}] "


@dataclass(frozen=True)
class CaptionRules:
    """The caption options (``RequestOptions`` validates them; defaults as in the issue)."""

    max_line_chars: int = 42
    max_lines: int = 2
    max_cue_s: float = 7.0
    min_gap_ms: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "CaptionRules":
        """From a transcript's ``options`` block; a transcript written before these options
        existed gets the defaults."""
        default = cls()
        return cls(max_line_chars=int(options.get("max_line_chars") or default.max_line_chars),
                   max_lines=int(options.get("max_lines") or default.max_lines),
                   max_cue_s=float(options.get("max_cue_s") or default.max_cue_s),
                   min_gap_ms=int(options.get("min_gap_ms") or default.min_gap_ms))


def segment_confidence(seg: Segment) -> float:
    """Mean word probability where words exist (what the words shown were based on), else
    exp(avg_logprob), the mean token probability in log space."""
    if seg.words:
        value = sum(w.probability for w in seg.words) / len(seg.words)
    else:
        value = math.exp(min(seg.avg_logprob, 0.0))
    return round(min(max(value, 0.0), 1.0), 3)


def with_confidence(seg: Segment, threshold: float) -> Segment:
    confidence = segment_confidence(seg)
    return replace(seg, confidence=confidence, low_confidence=confidence < threshold)


def words_spell_text(seg: Segment) -> bool:
    return bool(seg.words) and "".join(w.word for w in seg.words or ()) == seg.text


def segment_words(seg: Segment) -> tuple[Word, ...]:
    """The segment's words; estimated (see the module docstring) when it has none that spell
    its text."""
    if seg.words is not None and words_spell_text(seg):
        return seg.words
    tokens = seg.text.split()
    if not tokens:
        return ()
    total = sum(len(t) for t in tokens)
    span = max(seg.end - seg.start, 0.0)
    probability = seg.confidence if seg.confidence is not None else segment_confidence(seg)
    out, at = [], 0
    for token in tokens:
        start = seg.start + span * at / total
        at += len(token)
        out.append(Word(start=round(start, 3), end=round(seg.start + span * at / total, 3), word=" " + token,
                        probability=probability))
    return tuple(out)


def _wide(ch: str) -> bool:
    """Chinese, Japanese (and other full-width) characters: such text has no spaces, and
    Whisper's words there carry none, yet a line may break between any two of them."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _tokens(words: Iterable[Word]) -> list[tuple[Word, str]]:
    """What a reader sees as words, each with what joins it to the one before (" " or "").
    Whisper's words with no leading space (``-5`` after ``5``, ``.smith`` after ``John``)
    belong to the word before them, so ``5-5-5`` and ``John.smith`` are never split over two
    lines; next to full-width text they stay words of their own, joined without a space."""
    out: list[tuple[Word, str]] = []
    for w in words:
        text = " ".join(w.word.split())
        if not text:
            continue
        glued = bool(out) and not w.word[:1].isspace()
        if glued and not (_wide(text[0]) or _wide(out[-1][0].word[-1])):
            prev, joiner = out[-1]
            out[-1] = (replace(prev, end=max(prev.end, w.end), word=prev.word + text), joiner)
        else:
            out.append((replace(w, word=text), "" if glued else " "))
    return out


def _split(words: Iterable[Word], rules: CaptionRules, reserved: int) -> list[tuple[float, float, list[str]]]:
    """One segment's words -> (start, end, lines), greedily: a word goes on the current line
    if it fits, else on a new line if the cue has room, else it starts a new cue; it also
    starts a new cue when the cue would last longer than max_cue_s."""
    cues: list[tuple[float, float, list[str]]] = []
    for word, joiner in _tokens(words):
        text = word.word
        if cues:
            start, _, lines = cues[-1]
            width = rules.max_line_chars - (reserved if len(lines) == 1 else 0)
            if word.end - start <= rules.max_cue_s:
                if len(lines[-1]) + len(joiner) + len(text) <= width:
                    lines[-1] += joiner + text
                    cues[-1] = (start, word.end, lines)
                    continue
                if len(lines) < rules.max_lines:
                    lines.append(text)
                    cues[-1] = (start, word.end, lines)
                    continue
        cues.append((word.start, word.end, [text]))
    return cues


def build(segments: Iterable[Segment], rules: CaptionRules = CaptionRules()) -> tuple[Cue, ...]:
    """Cues in time order, each at least MIN_CUE_S and at most max_cue_s long (whole
    milliseconds, as written), each starting at least min_gap_ms after the previous ends
    (the previous cue is shortened for the gap where it can be, else this one starts later)."""
    gap = rules.min_gap_ms / 1000
    out: list[Cue] = []
    for seg in sorted(segments, key=lambda s: s.start):
        # The first line leaves room for what the writers put before it: the low-confidence
        # mark and the speaker label ("[S1] ").
        reserved = (len(LOW_CONFIDENCE_MARK) if seg.low_confidence else 0) + (
            len(speaker_prefix(seg.speaker)) if seg.speaker is not None else 0)
        for start, end, lines in _split(segment_words(seg), rules, reserved):
            if out:
                prev = out[-1]
                if start < prev.end + gap and start - gap >= prev.start + MIN_CUE_S:
                    out[-1] = prev = replace(prev, end=round(max(min(prev.end, start - gap), prev.start + MIN_CUE_S), 3))
                start = max(start, prev.end + gap)
            start = round(max(start, 0.0), 3)
            longest = math.floor(round((start + rules.max_cue_s) * 1000, 6)) / 1000  # whole ms, not past the limit
            end = min(round(max(end, start + MIN_CUE_S), 3), longest)
            out.append(Cue(start=start, end=end, lines=tuple(lines), low_confidence=seg.low_confidence,
                           speaker=seg.speaker))
    return tuple(out)
