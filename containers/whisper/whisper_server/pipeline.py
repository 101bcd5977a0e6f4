"""Long-form transcription: stream, segment at silences, decode in batches, place globally.

Audio arrives as 30 s blocks and collects in a window of at most ``WINDOW_SECONDS``. Silero
VAD (faster-whisper's copy) marks the speech in the window; speech regions merge into
chunks of at most 30 s that start and end at silences, so no word is split between two
chunks and none is decoded twice. The last region of a window may run on into the next
one, so it is carried over rather than cut. Chunks are decoded ``batch_size`` at a time;
the language is detected once, on the first chunk of speech. Memory stays bounded by the
window and the batch, whatever the file's length.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from whisper_contract import ContractError, ErrorCode, RequestOptions, Segment, Timings, Transcript
from whisper_server import audio
from whisper_server.backends.base import CHUNK_SAMPLES, SAMPLE_RATE, Backend, DecodeOptions
from whisper_server.settings import Settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 240
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
# A speech region followed by this much silence at the window's end is complete.
SETTLED_SILENCE_SAMPLES = SAMPLE_RATE
# Regions further apart than this start a new chunk: long silences inside a chunk only
# invite hallucinations.
MAX_GAP_SAMPLES = 3 * SAMPLE_RATE
# faster-whisper's batched pipeline settings: short pauses split, regions stay <= 30 s.
VAD_OPTIONS = VadOptions(max_speech_duration_s=CHUNK_SAMPLES / SAMPLE_RATE, min_silence_duration_ms=160)
# Whisper's rule for a segment that is silence dressed up as text.
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0


@dataclass(frozen=True)
class Chunk:
    offset: int  # first sample, file-global
    audio: np.ndarray

    @property
    def start_s(self) -> float:
        return self.offset / SAMPLE_RATE


def validate(options: RequestOptions, backend: Backend) -> None:
    """Reject what the model cannot do before any audio is decoded."""
    if not backend.multilingual:
        if options.language not in (None, "en"):
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"model {backend.info.model!r} is English-only: it cannot transcribe "
                                f"language {options.language!r}")
        if options.task == "translate":
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"model {backend.info.model!r} is English-only: it cannot translate")


def _merge(regions: list[dict[str, int]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for region in regions:
        start, end = region["start"], region["end"]
        if spans and end - spans[-1][0] <= CHUNK_SAMPLES and start - spans[-1][1] <= MAX_GAP_SAMPLES:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def vad_chunks(blocks: Iterator[np.ndarray]) -> Iterator[Chunk]:
    """Chunks of speech (<= 30 s each, cut at silences) from a stream of 16 kHz blocks."""
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # global index of buffer[0]
    blocks = iter(blocks)
    done = False
    while not done:
        block = next(blocks, None)
        if block is None:
            done = True
        else:
            buffer = np.concatenate([buffer, block]) if len(buffer) else block
            if len(buffer) < WINDOW_SAMPLES:
                continue
        if not len(buffer):
            break
        regions = get_speech_timestamps(buffer, VAD_OPTIONS)
        if done:
            cut = len(buffer)
        elif not regions:
            cut = max(0, len(buffer) - SETTLED_SILENCE_SAMPLES)  # keep a little: speech may start here
        elif len(buffer) - regions[-1]["end"] >= SETTLED_SILENCE_SAMPLES:
            cut = regions[-1]["end"]
        else:  # the last region may continue in the next block: decide it next time
            cut = regions[-1]["start"]
            regions = regions[:-1]
        for start, end in _merge(regions):
            yield Chunk(offset + start, buffer[start:end].copy())
        buffer = buffer[cut:]
        offset += cut


def fixed_chunks(blocks: Iterator[np.ndarray]) -> Iterator[Chunk]:
    """vad=false: plain 30 s windows (words at the cuts may be split)."""
    offset = 0
    for block in audio.rechunk(blocks, CHUNK_SAMPLES):
        yield Chunk(offset, block)
        offset += len(block)


class _Budget:
    """Cuts the job short on the request deadline, a cancel (client gone, shutdown) or
    audio longer than allowed."""

    def __init__(self, settings: Settings, deadline: float | None, cancel: threading.Event | None) -> None:
        self.deadline = deadline
        self.cancel = cancel
        self.timeout_s = settings.request_timeout_s
        self.max_samples = int(settings.max_audio_s * SAMPLE_RATE)
        self.samples = 0

    def count(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self.samples += len(block)
            if self.samples > self.max_samples:
                raise ContractError(ErrorCode.INPUT_TOO_LONG,
                                    f"the audio is longer than the {self.max_samples / SAMPLE_RATE:.0f} s allowed")
            self.check()
            yield block

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ContractError(ErrorCode.TIMEOUT, "the request was cancelled before it finished "
                                "(time limit reached or server shutting down)")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ContractError(ErrorCode.TIMEOUT, f"the request took longer than {self.timeout_s:.0f} s")


def transcribe_file(path: Path, options: RequestOptions, backend: Backend, settings: Settings, *,
                    deadline: float | None = None, cancel: threading.Event | None = None) -> Transcript:
    started = time.perf_counter()
    validate(options, backend)
    info = audio.probe(path)
    if info.declared_duration and info.declared_duration > settings.max_audio_s:
        raise ContractError(ErrorCode.INPUT_TOO_LONG,
                            f"the audio lasts {info.declared_duration:.0f} s; at most "
                            f"{settings.max_audio_s:.0f} s are allowed")
    budget = _Budget(settings, deadline, cancel)
    blocks = budget.count(audio.iter_blocks(path))
    chunks = vad_chunks(blocks) if options.vad else fixed_chunks(blocks)

    language, language_probability = options.language, 1.0
    decode: DecodeOptions | None = None
    decode_seconds = 0.0
    segments: list[Segment] = []
    batch: list[Chunk] = []

    def flush() -> None:
        nonlocal decode_seconds
        budget.check()
        t0 = time.perf_counter()
        results = backend.transcribe_chunks([c.audio for c in batch], decode)
        decode_seconds += time.perf_counter() - t0
        for chunk, chunk_segments in zip(batch, results):
            for seg in chunk_segments:
                if not seg.text.strip():
                    continue
                if seg.no_speech_prob > NO_SPEECH_PROB and seg.avg_logprob < LOW_LOGPROB:
                    continue
                segments.append(seg.shifted(chunk.start_s, len(segments)))
        log.info("decoded %d chunks up to %.1f s", len(batch), batch[-1].start_s + len(batch[-1].audio) / SAMPLE_RATE)
        batch.clear()

    for chunk in chunks:
        if decode is None:
            if language is None:
                language, language_probability = backend.detect_language(chunk.audio)
                if not backend.multilingual:
                    language_probability = 1.0
            decode = DecodeOptions(language=language, task=options.task, beam_size=options.beam_size,
                                   word_timestamps=options.word_timestamps,
                                   initial_prompt=options.initial_prompt, hotwords=options.hotwords)
        batch.append(chunk)
        if len(batch) >= settings.batch_size:
            flush()
    if batch:
        flush()

    duration = round(budget.samples / SAMPLE_RATE, 3)
    text = "".join(s.text for s in segments).strip()
    if not text:
        raise ContractError(ErrorCode.NO_SPEECH, f"no speech was found in {duration:.1f} s of audio",
                            duration=duration)
    return Transcript(
        text=text,
        language=language or "en",
        language_probability=round(float(language_probability), 4),
        duration=duration,
        segments=tuple(segments),
        model=backend.info,
        timings=Timings(processing_seconds=round(time.perf_counter() - started, 3),
                        decode_seconds=round(decode_seconds, 3)),
        options=options.to_dict(),
    )
