"""Decode any audio FFmpeg knows into 16 kHz mono float32, a bounded block at a time.

PyAV (FFmpeg) reads the spooled request body from disk and a resampler downmixes and
converts it; the caller gets a generator of blocks, so a one-hour file never sits in memory
decoded. Every failure becomes a ContractError with a code the caller can act on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from whisper_contract import ContractError, ErrorCode
from whisper_server.backends.base import SAMPLE_RATE

log = logging.getLogger(__name__)

BLOCK_SECONDS = 30
BLOCK_SAMPLES = BLOCK_SECONDS * SAMPLE_RATE
# A container that declares a length but yields less than this share of it was cut short.
TRUNCATION_RATIO = 0.9
# First bytes of common media files: if FFmpeg cannot open a file that starts like one of
# these, the file is a damaged recording (corrupt_audio), not a wrong upload (not_audio).
_MEDIA_MAGIC = (b"RIFF", b"fLaC", b"ID3", b"OggS", b"\x1aE\xdf\xa3", b"FORM", b"#!AMR", b"MThd")
# FFmpeg "formats" that open almost any bytes (text, images) and never carry audio.
_NON_MEDIA_FORMATS = {"tty", "image2", "image2pipe", "lrc", "srt", "webvtt", "ass", "mpl2"}


@dataclass(frozen=True)
class AudioInfo:
    format: str
    codec: str
    sample_rate: int
    channels: int
    declared_duration: float | None  # seconds, from the container header (may be absent)


def _looks_like_media(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    if head[4:8] == b"ftyp":  # mp4/m4a/mov
        return True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return True
    return head.startswith(_MEDIA_MAGIC)


def _open(path: Path) -> "av.container.InputContainer":
    if path.stat().st_size == 0:
        raise ContractError(ErrorCode.EMPTY_INPUT, "the request body is empty: send the audio file's bytes")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if _looks_like_media(path):
            raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                f"the file looks like audio but cannot be read (truncated or damaged): {exc}") from None
        raise ContractError(ErrorCode.NOT_AUDIO,
                            "the body is not an audio or video file FFmpeg can read") from None


def _audio_stream(container: "av.container.InputContainer") -> "av.audio.stream.AudioStream":
    if container.streams.audio:
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            # e.g. a WAV whose format tag names no codec (0, or 0xFFFE without its extension)
            raise ContractError(ErrorCode.UNSUPPORTED_MEDIA,
                                f"the {container.format.name} file's audio uses a codec FFmpeg cannot decode")
        return stream
    name = container.format.name
    if container.streams.video and not (name in _NON_MEDIA_FORMATS or name.endswith("_pipe")):
        raise ContractError(ErrorCode.NO_AUDIO_STREAM, f"the {name} file has no audio track")
    raise ContractError(ErrorCode.NOT_AUDIO, f"the body is not audio (FFmpeg reads it as {name!r})")


def _declared_duration(container: "av.container.InputContainer", stream: "av.audio.stream.AudioStream") -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe(path: Path) -> AudioInfo:
    """Open the file and describe its first audio stream, or raise a ContractError."""
    with _open(path) as container:
        stream = _audio_stream(container)
        return AudioInfo(
            format=container.format.name,
            codec=stream.codec_context.name,
            sample_rate=int(stream.codec_context.sample_rate or 0),
            channels=int(stream.codec_context.channels or 0),
            declared_duration=_declared_duration(container, stream),
        )


def iter_blocks(path: Path, block_samples: int = BLOCK_SAMPLES) -> Iterator[np.ndarray]:
    """Yield the first audio stream as 16 kHz mono float32 blocks of ``block_samples``
    (the last one shorter). Raises ContractError for unreadable or truncated input."""
    with _open(path) as container:
        stream = _audio_stream(container)
        declared = _declared_duration(container, stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        pending_len = 0
        total = 0

        def frames() -> Iterator[np.ndarray]:
            try:
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        for out in resampler.resample(frame):
                            yield out.to_ndarray().reshape(-1)
                for out in resampler.resample(None):  # flush the resampler's tail
                    yield out.to_ndarray().reshape(-1)
            except av.FFmpegError as exc:
                raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                    f"the audio is damaged after {total / SAMPLE_RATE:.1f} s: {exc}") from None

        for samples in frames():
            pending.append(samples)
            pending_len += len(samples)
            total += len(samples)
            while pending_len >= block_samples:
                joined = np.concatenate(pending)
                yield joined[:block_samples]
                rest = joined[block_samples:]
                pending, pending_len = ([rest], len(rest)) if len(rest) else ([], 0)
        if pending_len:
            yield np.concatenate(pending)
        decoded = total / SAMPLE_RATE
        if total == 0:
            raise ContractError(ErrorCode.CORRUPT_AUDIO, "the file has an audio track but no decodable audio")
        if declared and decoded < declared * TRUNCATION_RATIO:
            raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                f"the file is truncated: it declares {declared:.1f} s of audio but only "
                                f"{decoded:.1f} s could be decoded")


def rechunk(blocks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Regroup a stream of blocks into blocks of exactly ``size`` samples (the last shorter)."""
    pending = np.zeros(0, dtype=np.float32)
    for block in blocks:
        pending = np.concatenate([pending, block]) if len(pending) else block
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if len(pending):
        yield pending


def decode_all(path: Path) -> np.ndarray:
    """The whole file at once: for short clips and tests only."""
    blocks = list(iter_blocks(path))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
