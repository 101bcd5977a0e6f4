"""Caption rules (max_line_chars, max_lines, max_cue_s, min_gap_ms) and confidence flags:
properties over generated word timings, strict SRT/VTT parsing, the no-word-timings
fallback, and the options' validation (issue 17 part B)."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_contract import ContractError, ModelInfo, RequestOptions, Segment, Timings, Transcript, Word, render
from whisper_contract.captions import (LOW_CONFIDENCE_MARK, MIN_CUE_S, CaptionRules, build, segment_confidence,
                                       segment_words, with_confidence)
from whisper_contract.postprocess import finish

TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
CUE_TIME = re.compile(f"^{TIME} --> {TIME}$")


def _s(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse(body: str, fmt: str) -> list[tuple[float, float, list[str], bool]]:
    """Strict SRT/VTT: numbered blocks (SRT) or a WEBVTT header and NOTE blocks (VTT), a
    timing line, then non-empty text lines. Returns (start, end, lines, low confidence)."""
    blocks = body.rstrip("\n").split("\n\n")
    out: list[tuple[float, float, list[str], bool]] = []
    note = False
    if fmt == "vtt":
        assert blocks.pop(0) == "WEBVTT"
    for block in blocks:
        lines = block.split("\n")
        if fmt == "vtt" and lines[0].startswith("NOTE"):
            assert len(lines) == 1 and "-->" not in lines[0]
            note = True
            continue
        if fmt == "srt":
            assert lines.pop(0) == str(len(out) + 1), block
        match = CUE_TIME.match(lines[0])
        assert match, block
        text = lines[1:]
        assert text and all(line.strip() and "-->" not in line for line in text), block
        low = note if fmt == "vtt" else text[0].startswith(LOW_CONFIDENCE_MARK)
        if fmt == "srt" and low:
            text[0] = text[0][len(LOW_CONFIDENCE_MARK):]
        out.append((_s(*match.groups()[:4]), _s(*match.groups()[4:]), text, low))
        note = False
    return out


def transcript(segments: tuple[Segment, ...], **options: object) -> Transcript:
    return Transcript(text="".join(s.text for s in segments).strip(), language="en", language_probability=1.0,
                      duration=max([s.end for s in segments] + [0.0]), segments=segments,
                      model=ModelInfo("base", "faster-whisper", "x"), timings=Timings(processing_seconds=1.0),
                      options=dict(options))


# --- generated word timings ---------------------------------------------------------------
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz&<>'.,-", min_size=1, max_size=14)


@st.composite
def segments(draw: st.DrawFn) -> tuple[Segment, ...]:
    out, t = [], 0.0
    for i in range(draw(st.integers(1, 5))):
        words = []
        t += draw(st.floats(0.0, 2.0))
        for _ in range(draw(st.integers(1, 30))):
            length = draw(st.floats(0.0, 1.5))
            lead = " " if not words or draw(st.integers(0, 4)) else ""  # some words glue on: "5" "-5"
            words.append(Word(round(t, 3), round(t + length, 3), lead + draw(token), draw(st.floats(0.0, 1.0))))
            t += length + draw(st.floats(0.0, 0.5))
        seg = Segment(i, words[0].start, words[-1].end, "".join(w.word for w in words), -0.3, 0.01, tuple(words))
        out.append(with_confidence(seg, 0.5))
    return tuple(out)


rules = st.builds(CaptionRules, max_line_chars=st.integers(10, 60), max_lines=st.integers(1, 3),
                  max_cue_s=st.floats(1.0, 10.0), min_gap_ms=st.integers(0, 500))


@settings(max_examples=150, deadline=None)
@given(segments(), rules)
def test_cues_respect_every_rule_and_never_split_a_word(segs, r):
    cues = build(segs, r)
    shown = [word for cue in cues for line in cue.lines for word in line.split(" ")]
    spoken = [w for seg in segs for w in " ".join(seg.text.split()).split(" ")]
    assert shown == spoken  # every word once, whole, in order
    for cue in cues:
        assert 1 <= len(cue.lines) <= r.max_lines
        for i, line in enumerate(cue.lines):
            width = r.max_line_chars - (len(LOW_CONFIDENCE_MARK) if cue.low_confidence and i == 0 else 0)
            assert len(line) <= width or " " not in line, (line, width)  # only a lone long word overflows
        assert MIN_CUE_S - 1e-6 <= cue.end - cue.start <= r.max_cue_s + 1e-6
    for a, b in zip(cues, cues[1:]):
        assert b.start >= a.end + r.min_gap_ms / 1000 - 1e-6


@settings(max_examples=60, deadline=None)
@given(segments())
@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_srt_and_vtt_validate_and_carry_the_cues(fmt, segs):
    t = finish(transcript(segs), RequestOptions(formats=(fmt,)))
    parsed = parse(render(t, fmt), fmt)
    assert len(parsed) == len(t.captions)
    for (start, end, lines, low), cue in zip(parsed, t.captions):
        assert (start, end, low) == (pytest.approx(cue.start, abs=1e-6), pytest.approx(cue.end, abs=1e-6),
                                     cue.low_confidence)
        unescaped = [line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for line in lines]
        assert unescaped == list(cue.lines)


def test_defaults_two_lines_of_42_and_7_seconds():
    words = tuple(Word(i * 0.3, i * 0.3 + 0.25, f" word{i:02d}", 0.9) for i in range(40))
    seg = Segment(0, 0.0, 12.0, "".join(w.word for w in words), -0.1, 0.01, words)
    cues = build((seg,))
    assert [len(c.lines) for c in cues][:2] == [2, 2]
    assert all(len(line) <= 42 for c in cues for line in c.lines)
    assert cues[0].lines[0] == " ".join(f"word{i:02d}" for i in range(6))  # 6 x 6 chars + 5 spaces = 41
    assert all(c.end - c.start <= 7.0 for c in cues)


def test_min_gap_shortens_the_cue_before():
    words = (Word(0.0, 1.0, " one", 0.9), Word(1.0, 2.0, " two", 0.9))
    segs = (Segment(0, 0.0, 1.0, " one", -0.1, 0.01, words[:1]), Segment(1, 1.0, 2.0, " two", -0.1, 0.01, words[1:]))
    cues = build(segs, CaptionRules(min_gap_ms=200))
    assert [(c.start, c.end) for c in cues] == [(0.0, 0.8), (1.0, 2.0)]


def test_without_word_timings_the_text_is_shared_out_by_characters():
    seg = Segment(0, 10.0, 30.0, " " + " ".join(["abcd"] * 30), -0.1, 0.01, None)
    words = segment_words(seg)
    assert len(words) == 30 and words[0].start == 10.0 and words[-1].end == 30.0
    assert all(b.start == a.end for a, b in zip(words, words[1:]))
    cues = build((seg,))
    assert all(c.end - c.start <= 7.0 and len(c.lines) <= 2 for c in cues)
    assert sum(len(line.split()) for c in cues for line in c.lines) == 30


def test_segment_confidence_and_low_confidence_flags():
    words = (Word(0.0, 0.5, " maybe", 0.2), Word(0.5, 1.0, " this", 0.4))
    low = Segment(0, 0.0, 1.0, " maybe this", -0.9, 0.01, words)
    assert segment_confidence(low) == 0.3
    assert segment_confidence(Segment(1, 0, 1, " x", -0.105, 0.0, None)) == round(math.exp(-0.105), 3)
    sure = Segment(1, 2.0, 3.0, " sure", -0.05, 0.01, (Word(2.0, 3.0, " sure", 0.97),))
    options = RequestOptions(confidence_threshold=0.5, word_timestamps=True)
    t = finish(transcript((low, sure), **options.to_dict()), options)
    assert [(s.confidence, s.low_confidence) for s in t.segments] == [(0.3, True), (0.97, False)]
    data = json.loads(t.to_json())
    assert data["segments"][0]["low_confidence"] is True and data["schema_version"] == "1.1"
    assert data["captions"][0] == {"start": 0.0, "end": 1.0, "lines": ["maybe this"], "low_confidence": True}
    vtt = render(t, "vtt")
    assert "NOTE low confidence (below 0.5)\n\n00:00:00.000 --> 00:00:01.000\nmaybe this\n" in vtt
    assert render(t, "srt").startswith("1\n00:00:00,000 --> 00:00:01,000\n(?) maybe this\n\n2\n")
    assert [low for *_, low in parse(vtt, "vtt")] == [True, False]


def test_a_transcript_of_schema_1_0_still_renders():
    old = {"text": "Hi.", "language": "en", "language_probability": 1.0, "duration": 1.0, "schema_version": "1.0",
           "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": " Hi.", "avg_logprob": -0.1,
                         "no_speech_prob": 0.0}],
           "model": {"model": "base", "backend": "faster-whisper", "version": "x"},
           "timings": {"processing_seconds": 1.0}, "options": {"formats": ["json"]}}
    t = Transcript.from_dict(old)
    assert t.captions is None and t.segments[0].confidence is None
    assert render(t, "srt") == "1\n00:00:00,000 --> 00:00:01,000\nHi.\n"


@pytest.mark.parametrize("query, message", [
    ("max_line_chars=5", "max_line_chars must be between 10 and 200"),
    ("max_line_chars=forty", "max_line_chars must be an integer"),
    ("max_lines=0", "max_lines must be between 1 and 5"),
    ("max_cue_s=0.5", "max_cue_s must be between 1 and 60"),
    ("max_cue_s=inf", "max_cue_s must be between"),
    ("min_gap_ms=-1", "min_gap_ms must be between 0 and 2000"),
    ("min_gap_ms=1.5", "min_gap_ms must be an integer"),
])
def test_bad_caption_options_are_bad_option(query, message):
    with pytest.raises(ContractError, match=message) as err:
        RequestOptions.from_query(query)
    assert err.value.code.value == "bad_option"


def test_caption_options_reach_the_rules():
    options = RequestOptions.from_pairs({"max-line-chars": "32", "max_lines": "1", "max_cue_s": "4.5",
                                         "min_gap_ms": "80"})
    assert options.caption_rules == CaptionRules(max_line_chars=32, max_lines=1, max_cue_s=4.5, min_gap_ms=80)
    assert CaptionRules.from_options(options.to_dict()) == options.caption_rules
    assert RequestOptions().caption_rules == CaptionRules()


@pytest.mark.parametrize("query", ["", "max_line_chars=20&max_lines=1&max_cue_s=3&min_gap_ms=120"])
def test_real_audio_captions_follow_the_rules_and_validate(tiny_en_dir, query):
    """53 s of read verse (several chunks) through the real pipeline with tiny.en."""
    from whisper_eval.clips import clip
    from whisper_server.backends import load_backend
    from whisper_server.pipeline import transcribe_file
    from whisper_server.settings import Settings

    settings = Settings(model_dir=str(tiny_en_dir), device="cpu", cpu_threads=2)
    options = RequestOptions.from_query(query + "&language=en" if query else "language=en")
    t = transcribe_file(clip("sonnet-001").path, options, load_backend(settings), settings)
    r = options.caption_rules
    assert t.captions and t.segments[0].words is None  # cues were built from words, then words dropped
    shown = [w for cue in t.captions for line in cue.lines for w in line.split(" ")]
    assert shown == " ".join(t.text.split()).split(" ")  # every word, whole, in order
    for fmt in ("srt", "vtt"):
        parsed = parse(render(t, fmt), fmt)
        assert len(parsed) == len(t.captions) >= 6
        for (start, end, lines, low), cue in zip(parsed, t.captions):
            assert 1 <= len(lines) <= r.max_lines and low == cue.low_confidence
            written = [(LOW_CONFIDENCE_MARK if low and fmt == "srt" else "") + lines[0], *lines[1:]]
            assert all(len(line) <= r.max_line_chars or " " not in line.removeprefix(LOW_CONFIDENCE_MARK)
                       for line in written)
            assert MIN_CUE_S - 1e-6 <= end - start <= r.max_cue_s + 1e-6
        for a, b in zip(parsed, parsed[1:]):
            assert b[0] >= a[1] + r.min_gap_ms / 1000 - 1e-6


def test_text_without_spaces_breaks_between_words_and_joins_them_without_spaces():
    """Japanese/Chinese: Whisper's words carry no spaces; a line still breaks between words."""
    text = "今日は天気がとても良いので公園まで歩いて行きましょうそれから駅前の喫茶店でゆっくり話しましょう"
    pieces = [text[i:i + 2] for i in range(0, len(text), 2)]
    words = tuple(Word(i * 0.2, i * 0.2 + 0.2, p, 0.9) for i, p in enumerate(pieces))
    seg = Segment(0, 0.0, words[-1].end, text, -0.1, 0.01, words)
    cues = build((seg,), CaptionRules(max_line_chars=16))
    assert "".join(line for c in cues for line in c.lines) == text
    assert all(len(line) <= 16 for c in cues for line in c.lines) and len(cues) >= 2
    mixed = (Word(0.0, 0.3, " 価格は", 0.9), Word(0.3, 0.6, "5", 0.9), Word(0.6, 0.9, "-5", 0.9), Word(0.9, 1.2, "円", 0.9))
    assert build((Segment(0, 0.0, 1.2, " 価格は5-5円", -0.1, 0.0, mixed),))[0].lines == ("価格は5-5円",)
