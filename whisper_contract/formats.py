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
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cues(segments: tuple[Segment, ...]) -> list[tuple[float, float, str]]:
    """Subtitle cues: non-empty text, end never before start."""
    cues = []
    for seg in segments:
        text = seg.text.strip()
        if text:
            cues.append((seg.start, max(seg.end, seg.start), text))
    return cues


def to_json(t: Transcript) -> str:
    return t.to_json()


def to_txt(t: Transcript) -> str:
    return "\n".join(s.text.strip() for s in t.segments if s.text.strip()) + "\n"


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(t.segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    blocks += [f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n"
               for start, end, text in _cues(t.segments)]
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
