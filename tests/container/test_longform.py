"""Long-form audio: VAD windows and chunks lose no word, duplicate none, and place every
segment at its true global time."""

from __future__ import annotations

import re

import numpy as np
import pytest

from whisper_contract import RequestOptions, Transcript, render
from whisper_contract.formats import MIN_CUE_S
from whisper_eval.wer import normalize, wer
from whisper_server import pipeline, vad
from whisper_server.backends import load_backend
from whisper_server.backends.base import CHUNK_SAMPLES, SAMPLE_RATE
from whisper_server.settings import Settings


def _check_monotonic(t: Transcript) -> None:
    last_start = 0.0
    for seg in t.segments:
        assert seg.start >= last_start - 0.05, (seg, last_start)
        assert seg.end >= seg.start
        assert seg.end <= t.duration + 0.05
        last_start = seg.start


def _check_placement(t: Transcript, long_file) -> None:
    """Every segment lies inside (or within half a second of) the clip it transcribes."""
    spans = [(start, end) for _, start, end in long_file.placements]
    for seg in t.segments:
        mid = (seg.start + seg.end) / 2
        assert any(s - 0.5 <= mid <= e + 0.5 for s, e in spans), (seg, spans)


def _check_each_clip(t: Transcript, long_file, bound: float) -> None:
    """Per clip: the text of the segments placed on it matches its reference (so nothing is
    lost at a boundary, nothing decoded twice, nothing moved to another clip)."""
    for clip, start, end in long_file.placements:
        text = " ".join(s.text for s in t.segments if start - 0.5 <= (s.start + s.end) / 2 <= end + 0.5)
        assert wer(clip.reference, text) <= bound, (clip.name, text)


def test_long_file_over_http(tiny_server, long_file, flac):
    assert len(long_file.audio) / SAMPLE_RATE > 60
    r = tiny_server.post(flac(long_file.audio), params={"word_timestamps": "true"}, timeout=300)
    assert r.status_code == 200, r.text
    t = Transcript.from_json(r.text)
    assert t.duration == pytest.approx(len(long_file.audio) / SAMPLE_RATE, abs=0.05)
    assert wer(long_file.reference, t.text) <= 0.15
    ref_words = len(normalize(long_file.reference).split())
    hyp_words = len(normalize(t.text).split())
    assert abs(hyp_words - ref_words) <= 0.05 * ref_words, (hyp_words, ref_words)
    _check_monotonic(t)
    _check_placement(t, long_file)
    _check_each_clip(t, long_file, bound=0.35)
    words = [w for s in t.segments for w in s.words]
    assert all(b.start >= a.start - 0.05 for a, b in zip(words, words[1:]))
    _check_no_overlap(t)
    for fmt in ("srt", "vtt"):  # the writers the server and the completion Lambda use
        _check_cues(render(t, fmt))


def _check_no_overlap(t: Transcript) -> None:
    """Ordered, never overlapping (a re-decoded stretch must not land inside another segment)."""
    for a, b in zip(t.segments, t.segments[1:]):
        assert b.start >= a.end, (a, b)


def _check_cues(body: str) -> None:
    times = [(_secs(a), _secs(b)) for a, b in re.findall(r"^(\S+) --> (\S+)$", body, flags=re.M)]
    assert times
    for start, end in times:
        assert end - start >= MIN_CUE_S - 1e-9, (start, end)
    for (_, a_end), (b_start, _) in zip(times, times[1:]):
        assert b_start >= a_end


def _secs(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope="module")
def tiny_backend(tiny_en_dir):
    settings = Settings(model_dir=str(tiny_en_dir), device="cpu", batch_size=4, cpu_threads=2)
    backend = load_backend(settings)
    yield settings, backend
    backend.close()


def test_small_windows_split_nothing(tiny_backend, short_long_file, flac, tmp_path, monkeypatch):
    """With 8 s windows, speech regions straddle window ends all the time: carrying them
    over must lose and repeat no word."""
    settings, backend = tiny_backend
    long_file = short_long_file
    path = tmp_path / "long.flac"
    path.write_bytes(flac(long_file.audio))
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 8 * SAMPLE_RATE)
    chunks = list(pipeline.vad_chunks(iter(np.array_split(long_file.audio, 40))))
    assert len(chunks) >= 3
    pieces = [(g / SAMPLE_RATE, (g + n) / SAMPLE_RATE) for c in chunks for _, g, n in c.pieces]
    for (_, a_end), (b_start, _) in zip(pieces, pieces[1:]):
        assert a_end <= b_start  # disjoint, in order: nothing decoded twice
    assert all(len(c.audio) <= CHUNK_SAMPLES for c in chunks)
    assert all(len(c.audio) == sum(n for _, _, n in c.pieces) for c in chunks)
    for clip, start, end in long_file.placements:  # every clip's speech is inside the pieces
        covered = sum(max(0.0, min(end, e) - max(start, s)) for s, e in pieces)
        assert covered >= 0.85 * (end - start), clip.name
    t = pipeline.transcribe_file(path, RequestOptions(), backend, settings)
    assert wer(long_file.reference, t.text) <= 0.15, t.text
    _check_monotonic(t)
    _check_no_overlap(t)
    _check_placement(t, long_file)
    _check_each_clip(t, long_file, bound=0.35)


def test_long_silence_is_not_carried_forever(monkeypatch):
    """Minutes of silence after speech: the window buffer stays bounded."""
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 10 * SAMPLE_RATE)
    blocks = (np.zeros(SAMPLE_RATE * 5, dtype=np.float32) for _ in range(60))  # 5 minutes
    seen = []
    real = vad.speech_regions

    def spy(probs, n_samples, params):
        seen.append(n_samples)
        return real(probs, n_samples, params)

    monkeypatch.setattr(vad, "speech_regions", spy)
    assert list(pipeline.vad_chunks(blocks)) == []
    assert max(seen) <= 16 * SAMPLE_RATE


def test_vad_off_uses_fixed_windows(tiny_backend, short_long_file, flac, tmp_path):
    settings, backend = tiny_backend
    path = tmp_path / "long.flac"
    path.write_bytes(flac(short_long_file.audio))
    t = pipeline.transcribe_file(path, RequestOptions(vad=False), backend, settings)
    _check_monotonic(t)
    assert t.duration == pytest.approx(len(short_long_file.audio) / SAMPLE_RATE, abs=0.01)
    assert t.duration > 30 and max(s.end for s in t.segments) > 30  # the second window was decoded
    assert wer(short_long_file.reference, t.text) <= 0.3
