"""Voice activity detection: Silero VAD v6 in NumPy, and the rule that turns its
probabilities into speech regions.

Why our own: the pipeline used faster-whisper's VAD, which runs the ONNX model one
512-sample window after another through onnxruntime (about 455x real time on one core,
docs/benchmarks.md) and imports CTranslate2 on the way, so a torch-only image could not
use it. The network is small (an STFT, four 3-tap convolutions, one LSTM cell): its
convolutions run for all windows at once as matrix products, and only the LSTM step is
sequential. Long inputs are cut into streams that step in lockstep, each warmed up on the
audio just before it, so the sequential part costs a few hundred steps per hour of audio.

The weights (assets/silero_vad_v6.npz) are the ONNX initializers of Silero VAD v6 as
faster-whisper ships it (MIT licence, github.com/snakers4/silero-vad); the LSTM biases are
pre-summed and nothing else changed. tests/container/test_vad.py checks the probabilities
against onnxruntime on real speech.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples per probability (32 ms)
CONTEXT = 64  # samples of the previous window the model sees
_N_FFT, _HOP = 256, 128
_HIDDEN = 128
WEIGHTS = Path(__file__).parent / "assets" / "silero_vad_v6.npz"
# Lockstep streams: each covers STREAM_WINDOWS windows after WARMUP_WINDOWS of the audio
# before it (whose outputs are dropped). With 8 s of warm-up, 0.3 % of the windows of a
# 10-minute mix of our clips fall on the other side of 0.5 than in one sequential pass.
STREAM_WINDOWS = 2048
WARMUP_WINDOWS = 256


@dataclass(frozen=True)
class VadParams:
    """Silero's hysteresis rule, in the units its authors document."""

    threshold: float = 0.5
    neg_threshold: float | None = None  # default: threshold - 0.15
    min_speech_ms: int = 0
    min_silence_ms: int = 2000
    max_speech_s: float = float("inf")
    speech_pad_ms: int = 400


class _NumpyOps:
    """The few array operations the network needs; _TorchOps has the same names."""

    def __init__(self) -> None:
        self.xp = np

    def asarray(self, a: np.ndarray) -> Any:
        return np.asarray(a, dtype=np.float32)

    def index(self, a: np.ndarray) -> Any:
        return a

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape, dtype=np.float32)

    def cat(self, parts: list[Any], axis: int) -> Any:
        return np.concatenate(parts, axis=axis)

    def relu(self, x: Any) -> Any:
        return np.maximum(x, 0)

    def sigmoid(self, x: Any) -> Any:
        return 1.0 / (1.0 + np.exp(-x))

    def tanh(self, x: Any) -> Any:
        return np.tanh(x)

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)


class _TorchOps(_NumpyOps):
    def __init__(self, device: str) -> None:
        import torch  # only images with the torch backend have it

        self.xp = torch
        self.device = torch.device(device)

    def asarray(self, a: np.ndarray) -> Any:
        return self.xp.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def index(self, a: np.ndarray) -> Any:
        return self.xp.as_tensor(a, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.xp.zeros(shape, dtype=self.xp.float32, device=self.device)

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.xp.cat(parts, dim=axis)

    def relu(self, x: Any) -> Any:
        return self.xp.relu(x)

    def sigmoid(self, x: Any) -> Any:
        return self.xp.sigmoid(x)

    def tanh(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def sqrt(self, x: Any) -> Any:
        return self.xp.sqrt(x)

    def numpy(self, x: Any) -> np.ndarray:
        return x.float().cpu().numpy()


class SileroVad:
    """The network, written once over NumPy (CPU images) or torch (``device``, e.g. cuda)."""

    def __init__(self, weights: Path = WEIGHTS, device: str | None = None) -> None:
        self.ops = ops = _TorchOps(device) if device else _NumpyOps()
        # Every matrix is laid out in NumPy once, then handed to the array library.
        w = dict(np.load(weights))
        # Conv weights (cout, cin, 3) as (3 * cin, cout), tap-major, to match _conv3's taps.
        self._conv = [(ops.asarray(w[f"conv{i}_w"].transpose(2, 1, 0).reshape(-1, len(w[f"conv{i}_w"]))),
                       ops.asarray(w[f"conv{i}_b"]), stride) for i, stride in enumerate((1, 2, 2, 1))]
        self._lstm_w, self._lstm_r = ops.asarray(w["lstm_w"].T), ops.asarray(w["lstm_r"].T)
        self._lstm_b = ops.asarray(w["lstm_b"])
        self._out_w, self._out_b = ops.asarray(w["out_w"][0]), ops.asarray(w["out_b"][0])
        # The model's STFT is a periodic-Hann DFT (its basis matches to 1e-7): real parts,
        # then imaginary parts, as one (256, 258) matrix.
        n, k = np.arange(_N_FFT), np.arange(_N_FFT // 2 + 1)[:, None]
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / _N_FFT)
        angle = 2 * np.pi * k * n / _N_FFT
        self._basis = ops.asarray(np.concatenate([np.cos(angle) * hann, -np.sin(angle) * hann]).T)
        # Reflect-pad by 128 and cut frames 1-4 of 256 every 128 samples: one gather index.
        padded = np.concatenate([np.arange(_N_FFT // 2, 0, -1), np.arange(CONTEXT + WINDOW),
                                 CONTEXT + WINDOW - 2 - np.arange(_N_FFT // 2)])
        starts = np.arange(_HOP, len(padded) - _N_FFT + 1, _HOP)
        self._frames = ops.index(padded[starts[:, None] + np.arange(_N_FFT)])

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window of ``audio`` (zero-padded at the end)."""
        audio = np.asarray(audio, dtype=np.float32)
        n = -(-len(audio) // WINDOW)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros((n + 1) * WINDOW, dtype=np.float32)  # one window of zeros in front
        padded[WINDOW : WINDOW + len(audio)] = audio
        windows = padded.reshape(n + 1, WINDOW)
        x = np.concatenate([windows[:-1, -CONTEXT:], windows[1:]], axis=1)  # (n, 64 + 512)
        return self.ops.numpy(self._decode(self._lstm(self._encode(self.ops.asarray(x)))))

    def _encode(self, x: Any) -> Any:
        """(n, 576) samples -> (n, 4*128) LSTM input projections, all windows at once."""
        ops = self.ops
        n = len(x)
        frames = x[:, self._frames].reshape(n * 4, _N_FFT)  # 4 frames per window; 2-D for one GEMM
        spec = (frames @ self._basis).reshape(n, 4, -1)  # (n, 4, 258)
        h = ops.sqrt(spec[..., : _N_FFT // 2 + 1] ** 2 + spec[..., _N_FFT // 2 + 1 :] ** 2)  # (n, 4, 129)
        for weight, bias, stride in self._conv:
            h = ops.relu(self._conv3(h, weight, bias, stride))
        return h[:, 0, :] @ self._lstm_w + self._lstm_b  # (n, 512)

    def _conv3(self, x: Any, weight: Any, bias: Any, stride: int) -> Any:
        """Kernel-3, padding-1 convolution, time-major: (n, t, cin) -> (n, t_out, cout),
        as one matrix product over every window and tap."""
        n, t, cin = x.shape
        edge = self.ops.zeros((n, 1, cin))
        xp = self.ops.cat([edge, x, edge], axis=1)
        t_out = (t - 1) // stride + 1
        taps = self.ops.cat([xp[:, k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=2)
        return (taps.reshape(n * t_out, 3 * cin) @ weight + bias).reshape(n, t_out, -1)

    def _lstm(self, xw: Any) -> Any:
        """Hidden states for the projected inputs, in lockstep streams for long inputs."""
        ops = self.ops
        n = len(xw)
        streams = max(1, -(-n // STREAM_WINDOWS))
        warm = WARMUP_WINDOWS if streams > 1 else 0
        span = min(n, STREAM_WINDOWS)
        # Stream s holds windows [s*span - warm, (s+1)*span); stream 0's warm-up is zeros
        # with the state held at zero, so it starts exactly where the model would.
        front = ops.cat([ops.zeros((warm, xw.shape[1])), xw, ops.zeros((streams * span - n, xw.shape[1]))], axis=0)
        batch = ops.cat([front[None, s * span : s * span + warm + span] for s in range(streams)], axis=0)
        h = ops.zeros((streams, _HIDDEN))
        c = ops.zeros((streams, _HIDDEN))
        keep = ops.asarray((np.arange(streams) > 0).astype(np.float32))[:, None]
        out = []
        for t in range(warm + span):
            g = batch[:, t] + h @ self._lstm_r
            i = ops.sigmoid(g[:, :_HIDDEN])
            o = ops.sigmoid(g[:, _HIDDEN : 2 * _HIDDEN])
            f = ops.sigmoid(g[:, 2 * _HIDDEN : 3 * _HIDDEN])
            c = f * c + i * ops.tanh(g[:, 3 * _HIDDEN :])
            h = o * ops.tanh(c)
            if t < warm:
                h, c = h * keep, c * keep
            else:
                out.append(h[:, None])
        return ops.cat(out, axis=1).reshape(streams * span, _HIDDEN)[:n]

    def _decode(self, hidden: Any) -> Any:
        return self.ops.sigmoid(self.ops.relu(hidden) @ self._out_w + self._out_b)


@functools.lru_cache(maxsize=2)
def model(device: str | None = None) -> SileroVad:
    """One network per device (None: NumPy on the CPU)."""
    return SileroVad(device=device)


def speech_regions(probs: np.ndarray, n_samples: int, params: VadParams) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech, by Silero's rule: speech starts at a window
    at or above ``threshold`` and ends after ``min_silence_ms`` below ``neg_threshold``;
    a region longer than ``max_speech_s`` is cut at its last silence of >= 98 ms (or hard
    at the limit); regions shorter than ``min_speech_ms`` are dropped; then each side is
    padded by ``speech_pad_ms``, splitting shorter gaps between neighbours in half."""
    sr = SAMPLE_RATE
    neg = params.neg_threshold if params.neg_threshold is not None else max(params.threshold - 0.15, 0.01)
    pad = sr * params.speech_pad_ms / 1000
    min_speech = sr * params.min_speech_ms / 1000
    min_silence = sr * params.min_silence_ms / 1000
    max_speech = sr * params.max_speech_s - WINDOW - 2 * pad
    cut_silence = sr * 98 / 1000

    regions: list[list[int]] = []
    start: int | None = None
    silence_at = 0  # where the current stretch below neg began (0: none)
    last_cut = next_start = 0  # a usable cut inside a long region, and where speech resumed after it
    for i, p in enumerate(probs):
        at = WINDOW * i
        if p >= params.threshold and silence_at:
            silence_at = 0
            if next_start < last_cut:
                next_start = at
        if start is None:
            if p >= params.threshold:
                start = at
            continue
        if at - start > max_speech:
            if last_cut:
                regions.append([start, last_cut])
                start = next_start if next_start >= last_cut else None
            else:
                regions.append([start, at])
                start = None
            last_cut = next_start = silence_at = 0
            if start is None:
                continue
        if p < neg:
            silence_at = silence_at or at
            if at - silence_at > cut_silence:
                last_cut = silence_at
            if at - silence_at >= min_silence:
                if silence_at - start > min_speech:
                    regions.append([start, silence_at])
                start = None
                last_cut = next_start = silence_at = 0
    if start is not None and n_samples - start > min_speech:
        regions.append([start, n_samples])

    for k, region in enumerate(regions):
        if k == 0:
            region[0] = int(max(0, region[0] - pad))
        if k + 1 < len(regions):
            gap = regions[k + 1][0] - region[1]
            if gap < 2 * pad:
                region[1] += int(gap // 2)
                regions[k + 1][0] = int(max(0, regions[k + 1][0] - gap // 2))
            else:
                region[1] = int(min(n_samples, region[1] + pad))
                regions[k + 1][0] = int(max(0, regions[k + 1][0] - pad))
        else:
            region[1] = int(min(n_samples, region[1] + pad))
    return [(int(a), int(b)) for a, b in regions]
