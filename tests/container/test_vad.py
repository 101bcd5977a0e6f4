"""Our Silero VAD (whisper_server.vad) against the one faster-whisper runs through onnxruntime,
on real speech: the same probabilities, the same regions from the same probabilities, and
lockstep streams that stay close to one sequential pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper import vad as fw_vad

from whisper_server import audio, pipeline, vad

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
CLIPS = sorted(AUDIO.glob("*.flac")) + sorted(AUDIO.glob("*.mp3"))


@pytest.fixture(scope="module")
def pcm() -> list[np.ndarray]:
    return [audio.decode_all(p) for p in CLIPS]


def _onnx(x: np.ndarray) -> np.ndarray:
    # faster-whisper's model zeroes the last 64 samples of its input in place: give it a copy,
    # and compare all windows but the last.
    return fw_vad.get_vad_model()(x.copy()).reshape(-1)


def test_probabilities_match_onnxruntime(pcm):
    ours = vad.SileroVad()
    for path, x in zip(CLIPS, pcm):
        x = x[: len(x) // vad.WINDOW * vad.WINDOW]
        assert len(x) // vad.WINDOW <= vad.STREAM_WINDOWS  # one sequential pass: exact
        diff = np.abs(ours.probabilities(x) - _onnx(x))[:-1]
        assert diff.max() < 1e-4, (path.name, diff.max())


def test_torch_gives_the_numpy_probabilities(pcm):
    pytest.importorskip("torch")
    x = np.concatenate(pcm)  # long enough for several streams
    a = vad.SileroVad().probabilities(x)
    b = vad.SileroVad(device="cpu").probabilities(x)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("params", [
    vad.VadParams(max_speech_s=30, min_silence_ms=160),  # the pipeline's
    vad.VadParams(),  # Silero's defaults
    vad.VadParams(threshold=0.6, min_speech_ms=250, min_silence_ms=100, max_speech_s=8, speech_pad_ms=30),
])
def test_regions_follow_the_same_rule_as_faster_whisper(pcm, params, monkeypatch):
    x = np.concatenate(pcm)
    probs = vad.SileroVad().probabilities(x)
    n = -(-len(x) // vad.WINDOW)
    monkeypatch.setattr(fw_vad, "get_vad_model", lambda: (lambda padded: probs[:n]))
    theirs = fw_vad.get_speech_timestamps(x, fw_vad.VadOptions(
        threshold=params.threshold, min_speech_duration_ms=params.min_speech_ms,
        max_speech_duration_s=params.max_speech_s, min_silence_duration_ms=params.min_silence_ms,
        speech_pad_ms=params.speech_pad_ms))
    ours = vad.speech_regions(probs, len(x), params)
    assert ours == [(r["start"], r["end"]) for r in theirs]
    assert ours  # speech was found, so the rule was exercised


def test_streams_stay_close_to_one_sequential_pass(pcm, monkeypatch):
    x = np.concatenate(pcm * 3)  # ~6 minutes: several streams
    model = vad.SileroVad()
    streamed = model.probabilities(x)
    monkeypatch.setattr(vad, "STREAM_WINDOWS", 10**9)
    sequential = model.probabilities(x)
    flips = np.mean((streamed >= 0.5) != (sequential >= 0.5))
    assert flips < 0.01, flips
    assert np.abs(streamed - sequential).mean() < 0.01


def test_silence_and_empty_input():
    model = vad.SileroVad()
    assert model.probabilities(np.zeros(0, dtype=np.float32)).shape == (0,)
    probs = model.probabilities(np.zeros(vad.SAMPLE_RATE * 5, dtype=np.float32))
    assert vad.speech_regions(probs, vad.SAMPLE_RATE * 5, vad.VadParams()) == []


def _pieces(x: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(x), 12))
    return np.split(x, cuts)  # uneven pieces, some empty, most not on a window boundary


@pytest.mark.parametrize("device", [None, "cpu"])  # NumPy steps; torch's fused LSTM
def test_stream_fed_in_pieces_is_one_sequential_pass(pcm, device, monkeypatch):
    if device:
        pytest.importorskip("torch")
    x = np.concatenate(pcm)  # ~2 minutes
    model = vad.SileroVad(device=device)
    stream = vad.VadStream(model)
    fed = np.concatenate([stream.feed(p) for p in _pieces(x, 0)] + [stream.flush()])
    monkeypatch.setattr(vad, "STREAM_WINDOWS", 10**9)  # one stream over the whole input
    whole = vad.SileroVad().probabilities(x)
    assert fed.shape == whole.shape == (-(-len(x) // vad.WINDOW),)
    assert np.abs(fed - whole).max() < 1e-4
    assert stream.windows == len(whole)


def _todays_regions(x: np.ndarray) -> list[tuple[int, int]]:
    """What the pipeline did before VadStream for audio shorter than its look-ahead window:
    one VAD pass over the whole clip, then the rule."""
    return vad.speech_regions(vad.SileroVad().probabilities(x), len(x), pipeline.VAD_PARAMS)


def test_pipeline_regions_equal_todays_on_the_shipped_clips():
    clips = sorted(p for p in AUDIO.iterdir() if p.suffix in (".flac", ".mp3", ".m4a", ".opus"))
    assert len(clips) >= 8
    for path in clips:
        x = audio.decode_all(path)
        chunks = list(pipeline.vad_chunks(audio.iter_blocks(path)))
        regions = [(g, g + n) for c in chunks for _, g, n in c.pieces]
        assert regions == _todays_regions(x), path.name
        assert regions, path.name  # speech found: the comparison means something


def test_pipeline_runs_each_window_once(pcm, monkeypatch):
    """A file longer than the look-ahead window: the VAD sees each window once (the carried
    part of a window is not run again), and the chunks still cover the speech."""
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 20 * vad.SAMPLE_RATE)
    x = np.concatenate(pcm)
    runs = []
    real = vad.SileroVad.windows

    def spy(self, windows, state):
        runs.append(len(windows))
        return real(self, windows, state)

    monkeypatch.setattr(vad.SileroVad, "windows", spy)
    chunks = list(pipeline.vad_chunks(iter(np.array_split(x, 30))))
    assert len(runs) > 3 and sum(runs) == -(-len(x) // vad.WINDOW)
    pieces = [(g, g + n) for c in chunks for _, g, n in c.pieces]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(pieces, pieces[1:]))
    speech = _todays_regions(x)
    covered = sum(max(0, min(e, b) - max(s, a)) for a, b in speech for s, e in pieces)
    assert covered >= 0.97 * sum(b - a for a, b in speech)
