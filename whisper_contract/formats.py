"""Render a transcript as JSON, plain text, SRT or VTT. One writer per format, one lookup."""

from __future__ import annotations

from typing import Callable

from whisper_contract.result import Segment, Transcript

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


# A cue shorter than this cannot be read; a zero-length one is invalid WebVTT (its end must
# be greater than its start: W3C WebVTT, "collect WebVTT cue timings and settings").
MIN_CUE_S = 0.1


def _cue_text(text: str) -> str:
    """One line of cue text that cannot end the cue or start another: WebVTT cue text must
    not contain ``-->`` or a blank line, and ``&``/``<`` start escapes and tags (W3C WebVTT,
    "WebVTT cue text"); SRT readers take the same tags. Whitespace, line breaks included,
    becomes single spaces."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def labelled(seg: Segment, text: str, vtt: bool = False) -> str:
    """``text`` with the segment's speaker: ``[S1] text``, or WebVTT's voice span ``<v S1>text``."""
    if seg.speaker is None:
        return text
    return f"<v {seg.speaker}>{text}" if vtt else f"[{seg.speaker}] {text}"


def _cues(segments: tuple[Segment, ...], vtt: bool = False) -> list[tuple[float, float, str]]:
    """Subtitle cues in time order: non-empty text, each at least MIN_CUE_S long (times in
    whole milliseconds, as written), none starting before the previous one ends."""
    cues: list[tuple[float, float, str]] = []
    for seg in sorted(segments, key=lambda s: s.start):
        text = _cue_text(seg.text)
        if not text:
            continue
        text = labelled(seg, text, vtt)
        start = round(max(seg.start, cues[-1][1] if cues else 0.0), 3)
        end = round(max(seg.end, start + MIN_CUE_S), 3)
        cues.append((start, end, text))
    return cues


def to_json(t: Transcript) -> str:
    return t.to_json()


def to_txt(t: Transcript) -> str:
    return "\n".join(labelled(s, s.text.strip()) for s in t.segments if s.text.strip()) + "\n"


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(t.segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    blocks += [f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n"
               for start, end, text in _cues(t.segments, vtt=True)]
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
