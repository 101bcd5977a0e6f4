"""Our Silero VAD (whisper_server.vad) against the one faster-whisper runs through onnxruntime,
on real speech: the same probabilities, the same regions from the same probabilities, and
lockstep streams that stay close to one sequential pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper import vad as fw_vad

from whisper_server import audio, vad

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
