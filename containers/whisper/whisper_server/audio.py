"""Decode any audio FFmpeg knows into 16 kHz mono float32 (mixed, or one channel), a bounded
block at a time.

PyAV (FFmpeg) reads the spooled request body from disk and a resampler downmixes and
converts it; the caller gets a generator of blocks, so a one-hour file never sits in memory
decoded. Every failure becomes a ContractError with a code the caller can act on and a
message about the user's file; FFmpeg's own words (paths, errno values, function names) go
to the log only.

What a body may be: one file that holds its own audio. FFmpeg opens it with an allow-list of
demuxers and only the ``file`` protocol, so playlists and references (ffconcat, HLS, DASH,
SDP, image sequences) never open another file or URL on the uploader's behalf.
"""

from __future__ import annotations

import logging
import struct
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
# Demuxers a body may be read with: containers and raw streams that carry their audio in the
# file itself. Deliberately absent: every demuxer that opens other files or URLs (concat /
# ffconcat, hls, dash, sdp, rtp, rtsp, image2, tee, imf, ...), and text, subtitle and image
# formats. FFmpeg checks the list before the demuxer reads anything (``format_whitelist``).
ALLOWED_FORMATS = frozenset({
    "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf", "dts", "dtshd", "eac3",
    "flac", "flv", "gsm", "iff", "loas", "matroska", "mlp", "mov", "mp3", "mpc", "mpc8", "mpeg", "mpegts",
    "nistsphere", "ogg", "rm", "shn", "sox", "tak", "truehd", "tta", "voc", "w64", "wav", "wv", "xwma",
})
_OPEN_OPTIONS = {"format_whitelist": ",".join(sorted(ALLOWED_FORMATS)), "protocol_whitelist": "file"}
# First bytes of common media files: if FFmpeg cannot open a file that starts like one of
# these, the file is a damaged recording (corrupt_audio), not a wrong upload (not_audio).
_MEDIA_MAGIC = (b"RIFF", b"fLaC", b"ID3", b"OggS", b"\x1aE\xdf\xa3", b"FORM", b"#!AMR", b"MThd")
# First bytes of playlists and stream descriptions FFmpeg would follow if it were allowed to.
_REFERENCE_MAGIC = (b"ffconcat", b"#EXTM3U", b"<?xml", b"<MPD", b"v=0", b"[playlist]")
# Raw streams of constant-size frames: a last frame shorter than all the others was cut.
_RAW_CBR = {("ac3", "ac3"), ("eac3", "eac3"), ("dts", "dca"), ("mp3", "mp2"), ("mp3", "mp1")}


@dataclass(frozen=True)
class AudioInfo:
    format: str
    codec: str
    sample_rate: int
    channels: int
    declared_duration: float | None  # seconds, from the container header (may be absent)


def _head(path: Path, size: int = 65536) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


def _looks_like_media(head: bytes) -> bool:
    if head[4:8] == b"ftyp":  # mp4/m4a/mov
        return True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return True
    return head.startswith(_MEDIA_MAGIC)


def _looks_like_reference(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_REFERENCE_MAGIC)


def _open(path: Path) -> "av.container.InputContainer":
    if path.stat().st_size == 0:
        raise ContractError(ErrorCode.EMPTY_INPUT, "the request body is empty: send the audio file's bytes")
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore", options=_OPEN_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        log.info("FFmpeg cannot open the body: %s", exc)
        head = _head(path)
        if _looks_like_media(head):
            raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                "the file looks like audio but cannot be read (truncated or damaged)") from None
        if _looks_like_reference(head):
            raise ContractError(ErrorCode.UNSUPPORTED_MEDIA,
                                "the body is a playlist or a list of other files (ffconcat, HLS, DASH, SDP), "
                                "not audio; such lists are never followed: upload the audio file itself") from None
        raise ContractError(ErrorCode.NOT_AUDIO, "the body is not an audio or video file FFmpeg can read") from None
    # Belt and braces: the whitelist above already refused any other demuxer.
    if not set(container.format.name.split(",")) & ALLOWED_FORMATS:
        container.close()
        raise ContractError(ErrorCode.UNSUPPORTED_MEDIA, "the body is not a supported audio or video file")
    try:
        _check_declared_size(path, container.format.name)
    except ContractError:
        container.close()
        raise
    return container


def _check_declared_size(path: Path, format_name: str) -> None:
    """Containers whose header says how many bytes of audio follow: FFmpeg quietly decodes
    what is there when the file ends early, so compare the header with the file's size."""
    size = path.stat().st_size
    fmt = format_name.split(",")[0]
    end = _voc_end(path) if fmt == "voc" else _declared_end(_head(path), fmt)
    if end is not None and size < end:
        raise ContractError(ErrorCode.CORRUPT_AUDIO,
                            f"the file is truncated: its header says the audio runs to byte {end:,}, but the file "
                            f"ends at byte {size:,} ({100 * size / end:.0f} %)")


def _declared_end(head: bytes, fmt: str) -> int | None:
    """The byte offset where the header says the audio ends, or None (not declared, or
    "unknown length", as streaming writers put it: 0 or all ones)."""
    if fmt in ("wav", "avi") and head[:4] == b"RIFF" and len(head) >= 12:
        if head[8:12] == b"AVI ":
            (riff,) = struct.unpack_from("<I", head, 4)
            return None if riff in (0, 0xFFFFFFFF) else 8 + riff
        at = 12
        while at + 8 <= len(head):  # WAVE chunks: id, size (little-endian), data, pad to even
            cid, csize = head[at:at + 4], struct.unpack_from("<I", head, at + 4)[0]
            if cid == b"data":
                return None if csize in (0, 0xFFFFFFFF) else at + 8 + csize
            at += 8 + csize + (csize & 1)
        return None
    if fmt == "w64" and len(head) >= 24 and head[:4] == b"riff":
        (total,) = struct.unpack_from("<Q", head, 16)  # 64-bit size of the whole file
        return total or None
    if fmt == "caf" and head[:4] == b"caff":
        at = 8
        while at + 12 <= len(head):  # CAF chunks: type, signed 64-bit big-endian size
            ctype, csize = head[at:at + 4], struct.unpack_from(">q", head, at + 4)[0]
            if ctype == b"data":
                return None if csize < 0 else at + 12 + csize  # -1: "until the end of the file"
            if csize < 0:
                return None
            at += 12 + csize
        return None
    return None


def _voc_end(path: Path) -> int | None:
    """Where the last block of a Creative Voice file ends (blocks: type, 24-bit size; type 0
    ends the file). Walked with seeks: a long recording has thousands of blocks."""
    with path.open("rb") as fh:
        head = fh.read(26)
        if len(head) < 26:
            return None
        at, end = struct.unpack_from("<H", head, 20)[0], None
        while True:
            fh.seek(at)
            block = fh.read(4)
            if len(block) < 4 or block[0] == 0:
                return end
            at += 4 + int.from_bytes(block[1:4], "little")
            end = at


def _audio_stream(container: "av.container.InputContainer") -> "av.audio.stream.AudioStream":
    if container.streams.audio:
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            # e.g. a WAV whose format tag names no codec (0, or 0xFFFE without its extension)
            raise ContractError(ErrorCode.UNSUPPORTED_MEDIA,
                                f"the {container.format.name} file's audio uses a codec FFmpeg cannot decode")
        return stream
    name = container.format.name
    if container.streams.video:
        raise ContractError(ErrorCode.NO_AUDIO_STREAM, f"the {name} file has no audio track")
    raise ContractError(ErrorCode.NOT_AUDIO, f"the {name} file holds no audio")


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


def _needs_own_downmix(layout: "av.AudioLayout") -> bool:
    """FFmpeg downmixes named layouts, and bare channel counts it has a default layout for
    (1-8, 10, 12, 14, 16, 24); it refuses any other bare count (a PCM WAV with 9, 13, 32 or
    200 channels and no channel mask), so those are mixed here."""
    if not layout.channels or any(channel.name != "NONE" for channel in layout.channels):
        return False
    try:
        av.AudioLayout(f"{len(layout.channels)}c")
    except ValueError:
        return True
    return False


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    if samples.dtype.kind == "u":  # u8 PCM: 128 is silence
        return (samples.astype(np.float32) - 128) / 128
    return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)


def _to_mono(frame: "av.AudioFrame", channel: int | None = None) -> "av.AudioFrame":
    """The channels' average, or channel ``channel`` alone, as a mono float frame at the
    frame's own rate."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved: (1, samples * channels)
        samples = samples.reshape(-1, len(frame.layout.channels)).T
    if channel is None:
        mono = _as_float(samples).mean(axis=0, dtype=np.float32)
    else:
        mono = _as_float(samples[channel])
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono.reshape(1, -1)), format="flt", layout="mono")
    out.sample_rate = frame.sample_rate
    return out


def _finite(samples: np.ndarray) -> np.ndarray:
    """NaN -> 0, anything beyond full scale (Inf, 1e30) -> +-1: one bad sample in a float file
    would otherwise turn a whole 30 s window's features into NaN (no text, or a decode that
    loops until the time limit)."""
    if (np.abs(samples) <= 1.0).all():  # False for NaN too
        return samples
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def iter_blocks(path: Path, block_samples: int = BLOCK_SAMPLES, channel: int | None = None) -> Iterator[np.ndarray]:
    """Yield the first audio stream as 16 kHz mono float32 blocks of ``block_samples``
    (the last one shorter), every sample finite and within [-1, 1]: the channels mixed, or
    channel ``channel`` (0-based) alone. Raises ContractError for unreadable or truncated input."""
    with _open(path) as container:
        stream = _audio_stream(container)
        declared = _declared_duration(container, stream)
        n_channels = int(stream.codec_context.channels or 0)
        if channel is not None and not 0 <= channel < n_channels:
            raise ContractError(ErrorCode.BAD_OPTION, f"channel {channel} does not exist: the audio has "
                                f"{n_channels} channel(s)")
        # One channel alone is picked here, before the resampler, which would mix them.
        own_downmix = channel is not None or _needs_own_downmix(stream.codec_context.layout)
        raw_cbr = (container.format.name, stream.codec_context.name) in _RAW_CBR
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        pending_len = 0
        total = 0
        packet_sizes: list[int] = []

        def frames() -> Iterator[np.ndarray]:
            try:
                for packet in container.demux(stream):
                    if raw_cbr and packet.size:
                        packet_sizes.append(packet.size)
                    for frame in packet.decode():
                        for out in resampler.resample(_to_mono(frame, channel) if own_downmix else frame):
                            yield _finite(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):  # flush the resampler's tail
                    yield _finite(out.to_ndarray().reshape(-1))
            except av.FFmpegError as exc:
                log.info("decoding stopped after %.1f s: %s", total / SAMPLE_RATE, exc)
                raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                    f"the audio is damaged after {total / SAMPLE_RATE:.1f} s and cannot be decoded "
                                    "further") from None

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
        if len(packet_sizes) > 1 and packet_sizes[-1] < min(packet_sizes[:-1]):
            raise ContractError(ErrorCode.CORRUPT_AUDIO,
                                f"the file is truncated: it ends in the middle of an audio frame after {decoded:.1f} s")


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


def decode_all(path: Path, channel: int | None = None) -> np.ndarray:
    """The whole file at once: for short clips and tests only."""
    blocks = list(iter_blocks(path, channel=channel))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
