"""Speaker embeddings: the small interface diarization needs, and Resemblyzer's GE2E voice
encoder in NumPy behind it.

The encoder (Wan et al., "Generalized end-to-end loss for speaker verification", 2018, as
trained and shipped by Resemblyzer, Apache-2.0) is a 3-layer LSTM over 40-band mel frames;
its weights came out of the Resemblyzer wheel (tools/convert_voice_encoder.py says how), so
the image needs no torch, librosa or model download for it. tests/container/test_speakers.py
checks this forward pass against torch's LSTM with the same weights.

A stronger model (an ECAPA-TDNN, WavLM, ...) baked into the image at build time fits behind
``Embedder``: anything with ``window_samples`` and ``embed`` (windows -> L2-normalised rows),
chosen in ``load_embedder``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000
WEIGHTS = Path(__file__).parent / "assets" / "ge2e_voice_encoder.npz"
# Resemblyzer's hparams: 25 ms windows every 10 ms; partial utterances of 160 frames (1.6 s).
_N_FFT, _HOP = 400, 160
PARTIAL_FRAMES = 160
# Its preprocessing raises quiet audio to -30 dBFS (never lowers it) before the mel frames.
_TARGET_DBFS = -30.0
_BATCH = 64  # windows per forward pass: bounds the memory of the LSTM's activations


class Embedder(Protocol):
    """Fixed-length windows of 16 kHz audio in, one L2-normalised embedding per window out."""

    name: str
    window_samples: int

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """(n, window_samples) float32 -> (n, dim) float32, each row of unit length."""
        ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


class Ge2eEncoder:
    """Resemblyzer's VoiceEncoder.forward on NumPy arrays."""

    name = "resemblyzer-ge2e"
    window_samples = PARTIAL_FRAMES * _HOP

    def __init__(self, weights: Path = WEIGHTS) -> None:
        with np.load(weights) as w:
            self.layers = [(w[f"w_ih{i}"], w[f"w_hh{i}"], w[f"b{i}"]) for i in range(3)]
            self.linear_w, self.linear_b = w["linear_w"], w["linear_b"]
            self.mel_filters = w["mel_filters"]
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float32)  # periodic Hann

    def mels(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) -> (n, PARTIAL_FRAMES, 40): librosa.feature.melspectrogram's power mel
        frames (centred, zero-padded), as Resemblyzer computes them."""
        rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1, keepdims=True))
        gain = np.where(rms > 0, 10 ** (_TARGET_DBFS / 20) / np.maximum(rms, 1e-12), 1.0)
        x = windows * np.maximum(gain, 1.0).astype(np.float32)
        padded = np.pad(x, ((0, 0), (_N_FFT // 2, _N_FFT // 2)))
        starts = np.arange(PARTIAL_FRAMES) * _HOP
        frames = padded[:, starts[:, None] + np.arange(_N_FFT)] * self.window
        power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
        return (power @ self.mel_filters.T).astype(np.float32)

    def forward(self, mels: np.ndarray) -> np.ndarray:
        """(n, frames, 40) -> (n, 256): the last layer's final hidden state, linear, ReLU, L2-norm."""
        x = mels
        h = np.zeros((len(mels), 0), dtype=np.float32)
        for w_ih, w_hh, b in self.layers:
            hidden = w_hh.shape[0]
            xw = x @ w_ih + b  # every frame's input projection at once; only h @ w_hh is sequential
            h = np.zeros((len(x), hidden), dtype=np.float32)
            c = np.zeros_like(h)
            out = np.empty((len(x), x.shape[1], hidden), dtype=np.float32)
            for t in range(x.shape[1]):
                gates = xw[:, t] + h @ w_hh
                i, f, g, o = np.split(gates, 4, axis=1)  # torch's gate order
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                out[:, t] = h
            x = out
        raw = np.maximum(h @ self.linear_w + self.linear_b, 0)
        return (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def embed(self, windows: np.ndarray) -> np.ndarray:
        parts = [self.forward(self.mels(windows[i:i + _BATCH])) for i in range(0, len(windows), _BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.linear_w.shape[1]), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    """The embedding model, loaded once per process (5 MB of weights)."""
    return Ge2eEncoder()
