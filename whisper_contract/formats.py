"""Render a transcript as JSON, plain text, SRT or VTT. One writer per format, one lookup."""

from __future__ import annotations

from typing import Callable

from whisper_contract import captions
from whisper_contract.captions import MIN_CUE_S  # noqa: F401  (re-exported: tests and writers share it)
from whisper_contract.result import Cue, Segment, Transcript

CONTENT_TYPES = {
    "json": "application/json; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cue_text(text: str) -> str:
    """One line of cue text that cannot end the cue or start another: WebVTT cue text must
    not contain ``-->`` or a blank line, and ``&``/``<`` start escapes and tags (W3C WebVTT,
    "WebVTT cue text"); SRT readers take the same tags. Whitespace, line breaks included,
    becomes single spaces."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def labelled(seg: Segment, text: str) -> str:
    """A TXT line with the segment's speaker: ``[S1] text``."""
    return text if seg.speaker is None else f"{captions.speaker_prefix(seg.speaker)}{text}"


def _cues(t: Transcript) -> tuple[Cue, ...]:
    """The container's cues (built while word timings existed); for a transcript without
    them, the same rules over its segments (whisper_contract.captions)."""
    if t.captions is not None:
        return t.captions
    return captions.build(t.segments, captions.CaptionRules.from_options(t.options))


def to_json(t: Transcript) -> str:
    return t.to_json()


def to_txt(t: Transcript) -> str:
    return "\n".join(labelled(s, s.text.strip()) for s in t.segments if s.text.strip()) + "\n"


def _lines(cue: Cue, mark: str = "") -> str:
    lines = [_cue_text(line) for line in cue.lines]
    lines[0] = mark + lines[0]
    return "\n".join(lines)


def _srt_speaker(cue: Cue) -> str:
    return "" if cue.speaker is None else captions.speaker_prefix(_cue_text(cue.speaker))


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}\n"
        f"{_lines(cue, (captions.LOW_CONFIDENCE_MARK if cue.low_confidence else '') + _srt_speaker(cue))}\n"
        for i, cue in enumerate(_cues(t), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    threshold = t.options.get("confidence_threshold")
    note = "NOTE low confidence" + (f" (below {threshold})" if threshold is not None else "") + "\n"
    for cue in _cues(t):
        if cue.low_confidence:
            blocks.append(note)  # a NOTE block may stand between cues (W3C WebVTT, "WebVTT comment")
        # The speaker as WebVTT's voice span (W3C WebVTT, "WebVTT cue voice span"); it may stay open.
        voice = "" if cue.speaker is None else f"<v {_cue_text(cue.speaker)}>"
        blocks.append(f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}\n{_lines(cue, voice)}\n")
    return "\n".join(blocks)


WRITERS: dict[str, Callable[[Transcript], str]] = {
    "json": to_json,
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
}


def render(t: Transcript, fmt: str) -> str:
    try:
        return WRITERS[fmt](t)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(WRITERS)}") from None
