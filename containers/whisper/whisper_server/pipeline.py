"""Long-form transcription: stream, segment at silences, decode in batches, place globally.

Audio arrives as 30 s blocks and collects in a window of at most ``WINDOW_SECONDS``. Silero
VAD (vad.py, run once over the file) marks the speech in the window; speech regions are laid end to
end into chunks of at most 30 s of speech (silences left out, times mapped back), so no word
is split between two chunks and none is decoded twice. The last region of a window may run on into the next
one, so it is carried over rather than cut. Chunks are decoded ``batch_size`` at a time;
the language is detected once, on the first chunk of speech. The front end (decode, VAD,
chunking) runs in a thread of its own, at most a batch ahead (``produce``), so it works
while the model decodes; in the server the backend is a ``Batcher`` (batcher.py) whose
batches mix the chunks of concurrent requests. Memory stays bounded by the window, the
queue and the batch, whatever the file's length.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from whisper_contract import ContractError, ErrorCode, RequestOptions, Segment, Timings, Transcript, Word
from whisper_contract.postprocess import finish
from whisper_server import audio, diarize, vad
from whisper_server.batcher import batch_size
from whisper_server.backends.base import CHUNK_SAMPLES, SAMPLE_RATE, Backend, DecodeOptions
from whisper_server.decoding import is_silence
from whisper_server.settings import Settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 240
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
# A speech region followed by this much silence at the window's end is complete.
SETTLED_SILENCE_SAMPLES = SAMPLE_RATE
# faster-whisper's batched pipeline settings: short pauses split, regions stay <= 30 s.
VAD_PARAMS = vad.VadParams(max_speech_s=CHUNK_SAMPLES / SAMPLE_RATE, min_silence_ms=160)
# A segment is split where at least this much silence was cut out of its chunk.
SPLIT_GAP_S = 1.0
FIXED_PIECE_SAMPLES = 5 * SAMPLE_RATE
# The front end runs at most this many chunks (30 s each, 1.9 MB) ahead of the model, per
# request: a batch's worth, capped so 64 requests in flight hold at most ~4 GB of queued audio.
MAX_AHEAD = 32
# Stretches of speech at least this long with no decoded word get a second decode.
MIN_MISSED_S = 1.0


@dataclass(frozen=True)
class Chunk:
    """Up to 30 s of speech: one or more VAD regions laid end to end, silences between them
    left out (as faster-whisper's batched pipeline does): Whisper given two sentences with
    seconds of silence between them tends to transcribe only the first."""

    audio: np.ndarray
    pieces: tuple[tuple[int, int, int], ...]  # (sample in chunk, file-global sample, length)

    @property
    def start_s(self) -> float:
        return self.pieces[0][1] / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        _, start, length = self.pieces[-1]
        return (start + length) / SAMPLE_RATE

    def to_global(self, t: float, is_end: bool = False) -> float:
        """Chunk-relative seconds -> file seconds. A time on the seam between two pieces
        belongs to the earlier piece when it ends something and to the later when it starts."""
        sample = t * SAMPLE_RATE
        chosen = self.pieces[-1]
        for piece in self.pieces:
            at, _, length = piece
            if sample < at + length or (is_end and sample <= at + length):
                chosen = piece
                break
        at, start, length = chosen
        return round((start + min(max(sample - at, 0), length)) / SAMPLE_RATE, 3)

    def _piece_of(self, t: float) -> int:
        sample = t * SAMPLE_RATE
        for i, (at, _, length) in enumerate(self.pieces):
            if sample < at + length:
                return i
        return len(self.pieces) - 1

    def _clamped(self, t: float, piece: int) -> float:
        at, start, length = self.pieces[piece]
        return round((start + min(max(t * SAMPLE_RATE - at, 0), length)) / SAMPLE_RATE, 3)

    def place(self, seg: Segment) -> list[Segment]:
        """File-global copies of a chunk-relative segment. With words, a segment that spans
        two pieces is split where the silence was cut out, and every time stays inside its
        own piece (alignment can put a word's end a little past the seam)."""
        words = seg.words or ()
        if not words or "".join(w.word for w in words) != seg.text:
            return [replace(seg, start=self.to_global(seg.start), end=self.to_global(seg.end, is_end=True),
                            words=None if seg.words is None else ())]
        groups: list[list[Word]] = []
        last_piece = -1
        for w in words:
            piece = self._piece_of((w.start + w.end) / 2)
            if not groups or (piece != last_piece and self._gap_before(piece) >= SPLIT_GAP_S):
                groups.append([])
            last_piece = piece
            groups[-1].append(replace(w, start=self._clamped(w.start, piece), end=self._clamped(w.end, piece)))
        return [replace(seg, start=group[0].start, end=group[-1].end, text="".join(w.word for w in group),
                        words=tuple(group)) for group in groups]

    def _gap_before(self, piece: int) -> float:
        """Seconds of silence cut out just before ``piece``."""
        if piece == 0:
            return 0.0
        _, prev_start, prev_length = self.pieces[piece - 1]
        return (self.pieces[piece][1] - prev_start - prev_length) / SAMPLE_RATE


    def uncovered(self, segments: list[Segment]) -> list["Chunk"]:
        """Runs of pieces (of at least ``MIN_MISSED_S`` of audio) that no decoded word falls
        in, as new chunks. Needs word times; without them nothing is reported."""
        if not segments or any(seg.words is None for seg in segments):
            return []
        hit = {self._piece_of((w.start + w.end) / 2) for seg in segments for w in seg.words or ()}
        runs: list[list[int]] = []
        for i in range(len(self.pieces)):
            if i in hit:
                continue
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        missed = []
        for run in runs:
            pieces = [self.pieces[i] for i in run]
            if sum(n for _, _, n in pieces) < MIN_MISSED_S * SAMPLE_RATE:
                continue
            audio_parts, new_pieces, at = [], [], 0
            for old_at, start, length in pieces:
                audio_parts.append(self.audio[old_at:old_at + length])
                new_pieces.append((at, start, length))
                at += length
            missed.append(Chunk(np.concatenate(audio_parts), tuple(new_pieces)))
        return missed


def _units(seg: Segment) -> list[tuple[float, Segment]]:
    """What ``merge`` may reorder: a segment's words (each as a one-word segment) when they
    spell its text, else the whole segment; keyed by their middle."""
    words = seg.words or ()
    if not words or "".join(w.word for w in words) != seg.text:
        return [((seg.start + seg.end) / 2, seg)]
    return [((w.start + w.end) / 2, replace(seg, start=w.start, end=w.end, text=w.word, words=(w,))) for w in words]


def merge(segments: list[Segment]) -> list[Segment]:
    """File order, no overlaps. A re-decoded stretch of missed speech lies inside the span of
    the first-pass segment whose words surround it: that segment is cut there, so each part
    keeps its own words, instead of the stretch being inserted inside it. Whatever overlap is
    left (alignment jitter) is clamped: a segment starts no earlier than the previous ends."""
    units = sorted(((mid, i, unit) for i, seg in enumerate(segments) for mid, unit in _units(seg)),
                   key=lambda u: u[0])
    runs: list[tuple[int, list[Segment]]] = []
    for _, i, unit in units:
        if runs and runs[-1][0] == i:
            runs[-1][1].append(unit)
        else:
            runs.append((i, [unit]))
    out: list[Segment] = []
    for i, parts in runs:
        seg = segments[i]
        if parts[0].words and parts[0].words is not seg.words:  # rebuilt from words
            words = tuple(w for p in parts for w in p.words or ())
            seg = replace(seg, start=words[0].start, end=words[-1].end, text="".join(w.word for w in words),
                          words=words)
        if out and seg.start < out[-1].end:
            start = out[-1].end
            words = None if seg.words is None else tuple(
                replace(w, start=max(w.start, start), end=max(w.end, start)) for w in seg.words)
            seg = replace(seg, start=start, end=max(seg.end, start), words=words)
        out.append(seg)
    return out


def _group(regions: list[dict[str, int]]) -> list[list[dict[str, int]]]:
    """Consecutive regions whose speech adds up to at most 30 s share a chunk."""
    groups: list[list[dict[str, int]]] = []
    total = CHUNK_SAMPLES + 1
    for region in regions:
        length = region["end"] - region["start"]
        if total + length > CHUNK_SAMPLES:
            groups.append([])
            total = 0
        groups[-1].append(region)
        total += length
    return groups


def _chunk(buffer: np.ndarray, offset: int, regions: list[dict[str, int]]) -> Chunk:
    pieces, at = [], 0
    for r in regions:
        length = r["end"] - r["start"]
        pieces.append((at, offset + r["start"], length))
        at += length
    return Chunk(np.concatenate([buffer[r["start"]:r["end"]] for r in regions]), tuple(pieces))


def validate(options: RequestOptions, backend: Backend) -> None:
    """Reject what the model cannot do (its declared ``capabilities``) before any audio is decoded."""
    caps = backend.capabilities
    if options.word_timestamps and not caps.word_timestamps:
        raise ContractError(ErrorCode.BAD_OPTION,
                            f"word_timestamps is not available with the {backend.info.backend} backend; "
                            "use the faster-whisper or torch backend")
    if options.redact != "none" and not caps.word_timestamps:
        raise ContractError(ErrorCode.BAD_OPTION,
                            f"redact needs word timings, which the {backend.info.backend} backend cannot give; "
                            "use the faster-whisper or torch backend")
    if not caps.multilingual:
        if options.language not in (None, "en"):
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"model {backend.info.model!r} is English-only: it cannot transcribe "
                                f"language {options.language!r}")
        if options.task == "translate":
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"model {backend.info.model!r} is English-only: it cannot translate")


def vad_device(backend: Backend) -> str | None:
    """The VAD runs on the torch backend's GPU (images with torch); elsewhere in NumPy."""
    return backend.info.device if backend.info.backend == "torch" and backend.info.device != "cpu" else None


def vad_chunks(blocks: Iterator[np.ndarray], device: str | None = None) -> Iterator[Chunk]:
    """Chunks of speech (<= 30 s each, cut at silences) from a stream of 16 kHz blocks.

    The VAD runs once over the file (a VadStream); the buffer keeps the probabilities of its
    windows, so audio carried over to the next look-ahead window is not run again. The
    buffer starts on a window boundary; ``lead`` is how much of it was already chunked."""
    stream = vad.VadStream(vad.model(device))
    buffer = np.zeros(0, dtype=np.float32)
    probs = np.zeros(0, dtype=np.float32)  # one per window of buffer, from its start
    offset = 0  # global index of buffer[0], a multiple of vad.WINDOW
    fed = lead = 0  # samples of buffer given to the VAD / already chunked
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
        if len(buffer) <= lead:
            break
        probs = np.concatenate([probs, stream.feed(buffer[fed:])] + ([stream.flush()] if done else []))
        fed = len(buffer)
        regions = [{"start": max(a, lead), "end": b}
                   for a, b in vad.speech_regions(probs, len(buffer), VAD_PARAMS) if b > lead]
        if done:
            cut = len(buffer)
        elif not regions:
            cut = max(lead, len(buffer) - SETTLED_SILENCE_SAMPLES)  # keep a little: speech may start here
        elif len(buffer) - regions[-1]["end"] >= SETTLED_SILENCE_SAMPLES:
            cut = regions[-1]["end"]
        else:  # the last region may continue in the next block: decide it next time
            cut = regions[-1]["start"]
            regions = regions[:-1]
        for group in _group(regions):
            yield _chunk(buffer, offset, group)
        drop = cut // vad.WINDOW * vad.WINDOW
        buffer, probs = buffer[drop:], probs[drop // vad.WINDOW:]
        offset, fed, lead = offset + drop, fed - drop, cut - drop


def fixed_chunks(blocks: Iterator[np.ndarray]) -> Iterator[Chunk]:
    """vad=false: plain 30 s windows (words at the cuts may be split)."""
    offset = 0
    for block in audio.rechunk(blocks, CHUNK_SAMPLES):
        # Contiguous sub-pieces: they change no time, but let a skipped stretch be found.
        pieces = tuple((at, offset + at, min(FIXED_PIECE_SAMPLES, len(block) - at))
                       for at in range(0, len(block), FIXED_PIECE_SAMPLES))
        yield Chunk(block, pieces)
        offset += len(block)


_END = object()


def produce(chunks: Iterator[Chunk], ahead: int) -> Iterator[Chunk]:
    """``chunks`` (decode, resample, VAD: the CPU front end), run in a thread of their own
    at most ``ahead`` chunks in front of the caller, so the model decodes one batch while
    the next is cut, and memory stays bounded whatever the file's length. An error in the
    front end is raised here, where the generator itself would have raised it; when the
    caller stops (an error, a cancel, or done), the front end stops at its next chunk."""
    ready: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for chunk in chunks:
                if not put((chunk, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            put((None, exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # closes the audio file now, on this thread

    thread = threading.Thread(target=run, name="front-end", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5.0)  # a block being decoded finishes first; never hang the request


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
                    deadline: float | None = None, cancel: threading.Event | None = None,
                    channel: int | None = None) -> Transcript:
    """``channel``: that channel alone (channels=separate transcribes each this way)."""
    started = time.perf_counter()
    validate(options, backend)
    info = audio.probe(path)
    if info.declared_duration and info.declared_duration > settings.max_audio_s:
        raise ContractError(ErrorCode.INPUT_TOO_LONG,
                            f"the audio lasts {info.declared_duration:.0f} s; at most "
                            f"{settings.max_audio_s:.0f} s are allowed")
    if options.channels == "separate" and channel is None:
        # Each channel unfinished; confidence, redaction and captions once, over the merge.
        return finish(diarize.merge_channels([
            transcribe_file(path, options, backend, settings, deadline=deadline, cancel=cancel, channel=c)
            for c in range(max(info.channels, 1))]), options)
    budget = _Budget(settings, deadline, cancel)
    blocks = budget.count(audio.iter_blocks(path, channel=channel))
    size = batch_size(settings, backend)
    chunks = produce(vad_chunks(blocks, vad_device(backend)) if options.vad else fixed_chunks(blocks),
                     ahead=min(size, MAX_AHEAD))

    language, language_probability = options.language, 1.0
    decode: DecodeOptions | None = None
    decode_seconds = 0.0
    segments: list[Segment] = []
    batch: list[Chunk] = []
    speech: list[tuple[int, int]] = []  # the VAD's regions (first sample, length), for diarization

    def decode_batch(todo: list[Chunk], retry: bool) -> None:
        nonlocal decode_seconds
        budget.check()
        t0 = time.perf_counter()
        results = backend.transcribe_chunks([c.audio for c in todo], decode)
        decode_seconds += time.perf_counter() - t0
        missed: list[Chunk] = []
        for chunk, chunk_segments in zip(todo, results):
            kept = [seg for seg in chunk_segments if seg.text.strip()
                    and not is_silence(seg.avg_logprob, seg.no_speech_prob)]
            for seg in kept:
                segments.extend(chunk.place(seg))
            if not retry:
                missed += chunk.uncovered(kept)
        if missed:
            # Whisper sometimes stops early in a chunk (end of text after the first sentence);
            # the speech it skipped is decoded again on its own rather than lost.
            log.info("re-decoding %d stretch(es) of speech the first pass skipped", len(missed))
            decode_batch(missed, retry=True)

    def flush() -> None:
        decode_batch(batch, retry=False)
        log.info("decoded %d chunks up to %.1f s", len(batch), batch[-1].end_s)
        batch.clear()

    for chunk in chunks:
        if decode is None:
            if language is None:
                language, language_probability = backend.detect_language(chunk.audio)
                if not backend.multilingual:
                    language_probability = 1.0
            decode = DecodeOptions(language=language, task=options.task, beam_size=options.beam_size,
                                   # whenever the backend can: word times place text correctly
                                   # across cut-out silences
                                   word_timestamps=backend.capabilities.word_timestamps,
                                   initial_prompt=options.initial_prompt, hotwords=options.hotwords)
        batch.append(chunk)
        speech += [(start, length) for _, start, length in chunk.pieces]
        if len(batch) >= size:
            flush()
    if batch:
        flush()

    segments = merge(segments)
    if options.speakers is not None:
        segments = diarize.diarize(path, segments, speech, options, channel=channel, check=budget.check)
    segments = [replace(seg, id=i) for i, seg in enumerate(segments)]
    duration = round(budget.samples / SAMPLE_RATE, 3)
    text = "".join(s.text for s in segments).strip()
    if not text:
        # No speech is an answer, not an error (as Amazon Transcribe and OpenAI's API do): a
        # batch of silent voicemails must not fill the error alarms.
        segments = []
    transcript = Transcript(
        text=text,
        no_speech=not text,
        language=language or "en",
        language_probability=round(float(language_probability), 4),
        duration=duration,
        segments=tuple(segments),
        model=backend.info,
        timings=Timings(processing_seconds=round(time.perf_counter() - started, 3),
                        decode_seconds=round(decode_seconds, 3)),
        options=options.to_dict(),
    )
    # Confidence, redaction and captions need the word timings; finish drops them unless asked
    # for. A single channel of channels=separate is finished after the merge, above.
    return transcript if channel is not None else finish(transcript, options)
