"""Subtitle writers and the segment merge keep cues valid: ordered, never overlapping,
never zero-length, and no text can forge a cue (issue 12 item 12)."""

from __future__ import annotations

import re

import pytest

from whisper_contract import ModelInfo, Segment, Timings, Transcript, Word, render

CUE_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def cues(body: str, fmt: str) -> list[tuple[float, float, str]]:
    """Parse SRT/VTT strictly: every block is (index,) timing, one or two lines of text
    (the default caption rules), returned joined by a space."""
    blocks = body.strip("\n").split("\n\n")
    if fmt == "vtt":
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    out = []
    for i, block in enumerate(b for b in blocks if b):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines.pop(0) == str(i + 1), block
        match = CUE_TIME.match(lines[0])
        assert match, block
        assert 2 <= len(lines) <= 3 and all(line.strip() for line in lines[1:]), block
        assert not any("-->" in line for line in lines[1:])
        out.append((_seconds(*match.groups()[:4]), _seconds(*match.groups()[4:]), " ".join(lines[1:])))
    return out


def check_cues(parsed: list[tuple[float, float, str]]) -> None:
    for start, end, _ in parsed:
        assert end - start >= 0.1 - 1e-9, (start, end)
    for (_, a_end, _), (b_start, _, _) in zip(parsed, parsed[1:]):
        assert b_start >= a_end


def check_segments(t: Transcript) -> None:
    for a, b in zip(t.segments, t.segments[1:]):
        assert b.start >= a.end, (a, b)
    for seg in t.segments:
        assert seg.end >= seg.start


def transcript(*segments: Segment) -> Transcript:
    return Transcript(text="".join(s.text for s in segments).strip(), language="en", language_probability=1.0,
                      duration=60.0, segments=segments, model=ModelInfo("tiny.en", "faster-whisper", "x"),
                      timings=Timings(processing_seconds=1.0))


def seg(i: int, start: float, end: float, text: str, words: tuple[Word, ...] | None = None) -> Segment:
    return Segment(id=i, start=start, end=end, text=text, avg_logprob=-0.2, no_speech_prob=0.01, words=words)


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_crafted_text_cannot_forge_a_cue(fmt):
    evil = " hi\n\n2\n00:00:05,000 --> 00:00:09,000\nforged <b>&amp; cue</b>"
    parsed = cues(render(transcript(seg(0, 1.0, 2.0, evil), seg(1, 3.0, 4.0, " next")), fmt), fmt)
    assert len(parsed) == 2
    assert parsed[0][2] == "hi 2 00:00:05,000 --&gt; 00:00:09,000 forged &lt;b&gt;&amp;amp; cue&lt;/b&gt;"


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_zero_length_and_overlapping_segments_give_valid_cues(fmt):
    t = transcript(seg(0, 694.064, 694.064, " zero"), seg(1, 694.064, 694.1, " same start"),
                   seg(2, 694.08, 696.0, " overlaps"), seg(3, 700.0, 699.0, " backwards"), seg(4, 701.0, 702.0, "  "))
    parsed = cues(render(t, fmt), fmt)
    assert [c[2] for c in parsed] == ["zero", "same start", "overlaps", "backwards"]
    check_cues(parsed)


def test_merge_cuts_a_segment_around_a_re_decoded_stretch():
    from whisper_server.pipeline import merge

    def w(start: float, end: float, text: str) -> Word:
        return Word(start, end, text, 0.9)

    outer = seg(0, 10.0, 20.0, " one two three four",
                (w(10.0, 10.5, " one"), w(10.6, 11.0, " two"), w(18.0, 18.5, " three"), w(19.0, 20.0, " four")))
    missed = seg(1, 12.0, 17.0, " in between", (w(12.0, 14.0, " in"), w(14.5, 17.0, " between")))
    merged = merge([outer, missed])
    assert [s.text for s in merged] == [" one two", " in between", " three four"]
    assert [(s.start, s.end) for s in merged] == [(10.0, 11.0), (12.0, 17.0), (18.0, 20.0)]
    check_segments(transcript(*merged))
    # A segment without words cannot be cut: an overlap is clamped, order kept.
    clamped = merge([seg(0, 0.0, 5.0, " a"), seg(1, 4.0, 6.0, " b")])
    assert [(s.start, s.end) for s in clamped] == [(0.0, 5.0), (5.0, 6.0)]
