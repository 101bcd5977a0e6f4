"""Audio files made from samples, through PyAV as any user's encoder would make them.

One encoder for the tests and benchmarks that need FLAC, WAV, MP3, WavPack… bodies built from
real speech (or from hostile sample values: float formats keep NaN/Inf as given).
"""

from __future__ import annotations

import io

import av
import numpy as np

SAMPLE_RATE = 16_000
# Integer sample formats: (full scale, dtype, offset); float formats are written as given.
_INTEGER = {"s16": (32767, np.int16, 0), "u8": (127, np.uint8, 128), "s32": (2_147_000_000, np.int32, 0)}


def encode(samples: np.ndarray, fmt: str = "flac", codec: str = "flac", sample_format: str = "s16",
           rate: int = SAMPLE_RATE, *, block: int = 4096, bit_rate: int | None = None) -> bytes:
    """16 kHz float samples, mono ``(n,)`` or stereo ``(2, n)``, -> the bytes of a ``fmt`` file
    in ``codec`` at ``rate`` (resampled by linear interpolation when ``rate`` is not 16 kHz)."""
    pcm = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    if pcm.shape[0] > 2:
        raise ValueError(f"mono or stereo only, got {pcm.shape[0]} channels")
    if rate != SAMPLE_RATE:
        n = pcm.shape[1]
        at = np.arange(n * rate // SAMPLE_RATE) * SAMPLE_RATE / rate
        pcm = np.stack([np.interp(at, np.arange(n), ch) for ch in pcm]).astype(np.float32)
    if sample_format in _INTEGER:
        scale, dtype, offset = _INTEGER[sample_format]
        pcm = (np.clip(pcm, -1, 1) * scale + offset).astype(dtype)
    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    planar = sample_format.endswith("p")
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        for start in range(0, pcm.shape[1], block):
            part = pcm[:, start:start + block]
            # Packed formats interleave channels in one plane; planar ones keep a plane per channel.
            part = part if planar or pcm.shape[0] == 1 else part.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=sample_format, layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()
