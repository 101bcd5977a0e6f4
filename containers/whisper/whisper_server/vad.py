"""Voice activity detection: Silero VAD v6 in NumPy, and the rule that turns its
probabilities into speech regions.

Why our own: the pipeline used faster-whisper's VAD, which runs the ONNX model one
512-sample window after another through onnxruntime (about 455x real time on one core,
docs/benchmarks.md) and imports CTranslate2 on the way, so a torch-only image could not
use it. The network is small (an STFT, four 3-tap convolutions, one LSTM cell): its
convolutions run for all windows at once as matrix products, and only the LSTM step is
sequential. Long inputs are cut into streams that step in lockstep, each warmed up on the
audio just before it, so the sequential part costs a few thousand steps per hour of audio;
with torch (the GPU) all those steps are one fused LSTM call (cuDNN) instead of a Python
loop. ``VadStream`` carries the context and the LSTM state from one piece of a file to the
next, so the pipeline runs each window once, however the file is cut into look-ahead buffers.

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

    def lstm(self, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> Any:
        """A fused LSTM over (streams, steps, 128), or None: step it in Python (_lstm_steps)."""
        return None


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

    def lstm(self, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> Any:
        """torch's LSTM (cuDNN on CUDA): every step of every stream in one call, where a
        Python loop would launch a dozen small kernels per 32 ms step."""
        torch = self.xp
        # torch's gate order is (i, f, g, o); Silero's ONNX export is (i, o, f, g).
        order = np.r_[0:_HIDDEN, 2 * _HIDDEN:4 * _HIDDEN, _HIDDEN:2 * _HIDDEN]
        net = torch.nn.LSTM(_HIDDEN, _HIDDEN, batch_first=True).to(self.device).requires_grad_(False)
        with torch.no_grad():
            net.weight_ih_l0.copy_(self.asarray(w_ih[order]))
            net.weight_hh_l0.copy_(self.asarray(w_hh[order]))
            net.bias_ih_l0.copy_(self.asarray(bias[order]))
            net.bias_hh_l0.zero_()  # the file's biases are pre-summed

        def run(batch: Any, h: Any, c: Any) -> tuple[Any, tuple[Any, Any]]:
            with torch.no_grad():
                out, (h, c) = net(batch, (h[None].contiguous(), c[None].contiguous()))
            return out, (h[0], c[0])

        return run


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
        self._run_lstm = ops.lstm(w["lstm_w"], w["lstm_r"], w["lstm_b"]) or self._lstm_steps
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
        stream = VadStream(self)
        return np.concatenate([stream.feed(audio), stream.flush()])

    def windows(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Probabilities of ``x``'s (n, 64 + 512) windows (context + samples) that follow
        LSTM ``state`` (None: the start of the audio), and the state after the last one."""
        hidden, state = self._lstm(self._encode(self.ops.asarray(x)), state)
        return self.ops.numpy(self._decode(hidden)), state

    def _encode(self, x: Any) -> Any:
        """(n, 576) samples -> (n, 128) LSTM inputs, all windows at once."""
        ops = self.ops
        n = len(x)
        frames = x[:, self._frames].reshape(n * 4, _N_FFT)  # 4 frames per window; 2-D for one GEMM
        spec = (frames @ self._basis).reshape(n, 4, -1)  # (n, 4, 258)
        h = ops.sqrt(spec[..., : _N_FFT // 2 + 1] ** 2 + spec[..., _N_FFT // 2 + 1 :] ** 2)  # (n, 4, 129)
        for weight, bias, stride in self._conv:
            h = ops.relu(self._conv3(h, weight, bias, stride))
        return h[:, 0, :]

    def _conv3(self, x: Any, weight: Any, bias: Any, stride: int) -> Any:
        """Kernel-3, padding-1 convolution, time-major: (n, t, cin) -> (n, t_out, cout),
        as one matrix product over every window and tap."""
        n, t, cin = x.shape
        edge = self.ops.zeros((n, 1, cin))
        xp = self.ops.cat([edge, x, edge], axis=1)
        t_out = (t - 1) // stride + 1
        taps = self.ops.cat([xp[:, k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=2)
        return (taps.reshape(n * t_out, 3 * cin) @ weight + bias).reshape(n, t_out, -1)

    def _lstm(self, x: Any, state: Any) -> tuple[Any, Any]:
        """Hidden states for the inputs, in lockstep streams for long inputs (_layout), and
        the state after the last input."""
        ops = self.ops
        n = len(x)
        starts, steps, pick = _layout(n)
        batch = ops.cat([x[None, s : s + steps] for s in starts], axis=0)  # (streams, steps, 128)
        h0 = ops.zeros((len(starts), _HIDDEN))
        c0 = ops.zeros((len(starts), _HIDDEN))
        if state is not None:  # stream 0 goes on from where the last call ended
            h0[0], c0[0] = state[0][0], state[1][0]
        out, (h, c) = self._run_lstm(batch, h0, c0)
        # The last stream ends at the last input, so its final state is the one to carry.
        return out.reshape(len(starts) * steps, _HIDDEN)[ops.index(pick)], (h[-1:], c[-1:])

    def _lstm_steps(self, batch: Any, h: Any, c: Any) -> tuple[Any, tuple[Any, Any]]:
        """The LSTM over (streams, steps, 128), one step at a time (Silero's gate order)."""
        ops = self.ops
        xw = batch @ self._lstm_w + self._lstm_b
        out = []
        for t in range(batch.shape[1]):
            g = xw[:, t] + h @ self._lstm_r
            i = ops.sigmoid(g[:, :_HIDDEN])
            o = ops.sigmoid(g[:, _HIDDEN : 2 * _HIDDEN])
            f = ops.sigmoid(g[:, 2 * _HIDDEN : 3 * _HIDDEN])
            c = f * c + i * ops.tanh(g[:, 3 * _HIDDEN :])
            h = o * ops.tanh(c)
            out.append(h[:, None])
        return ops.cat(out, axis=1), (h, c)

    def _decode(self, hidden: Any) -> Any:
        return self.ops.sigmoid(self.ops.relu(hidden) @ self._out_w + self._out_b)


def _layout(n: int) -> tuple[list[int], int, np.ndarray]:
    """Lockstep streams over ``n`` LSTM inputs: where each stream starts, the steps each
    takes, and where each input's output lies in the flattened (streams x steps) result.
    Up to STREAM_WINDOWS + WARMUP_WINDOWS inputs: one stream, exact. Beyond: stream 0
    starts at the first input (from the carried state), stream s at WARMUP_WINDOWS before
    the span it answers for (from zeros), and the last one ends at the last input, so all
    take the same steps and the last one's final state is the state to carry on with."""
    span, warm = STREAM_WINDOWS, WARMUP_WINDOWS
    if n <= span + warm:
        return [0], n, np.arange(n)
    streams, steps = -(-n // span), span + warm
    starts = [0] + [s * span - warm for s in range(1, streams - 1)] + [n - steps]
    windows = np.arange(n)
    stream = np.minimum(windows // span, streams - 1)
    return starts, steps, stream * steps + windows - np.asarray(starts)[stream]


class VadStream:
    """Speech probabilities of one audio stream fed in pieces of any size. Each window runs
    once: the 64 samples of context and the LSTM state carry from piece to piece, so a long
    file costs one pass, not one per look-ahead buffer. Fed whole, it is ``probabilities``."""

    def __init__(self, net: SileroVad) -> None:
        self.net = net
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole window
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._state: Any = None
        self.windows = 0  # probabilities returned so far

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities of the windows that ``audio`` completes."""
        data = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = len(data) // WINDOW * WINDOW
        self._pending = data[whole:]
        return self._run(data[:whole])

    def flush(self) -> np.ndarray:
        """The last, partial window, zero-padded (nothing if the audio ended on a boundary)."""
        if not len(self._pending):
            return np.zeros(0, dtype=np.float32)
        last = np.zeros(WINDOW, dtype=np.float32)
        last[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return self._run(last)

    def _run(self, samples: np.ndarray) -> np.ndarray:
        n = len(samples) // WINDOW
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = samples.reshape(n, WINDOW)
        context = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._state = self.net.windows(np.concatenate([context, windows], axis=1), self._state)
        self.windows += n
        return probs


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
