"""Who spoke when: ``channels=separate`` (one transcript per channel, merged by time) and
``speakers=auto|N`` (speaker diarization of mono audio).

Diarization is a step after transcription, over the segments and the speech regions the
pipeline's VAD found: fixed windows across the speech are embedded by the voice encoder
(``voice_encoder.Embedder``), streamed from the file block by block; the embeddings are
clustered (agglomerative, average linkage on cosine distance: stop at a threshold for
``auto``, at k for N); every window then goes to the nearest cluster centroid, and every
word gets the speaker of the window centred nearest to it. A segment whose words change
speaker is split there. Memory: the audio of one block plus the embeddings (1 KB per
0.8 s of speech); time: about one embedding per 0.8 s of speech (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from whisper_contract import RequestOptions, Segment, Transcript, Timings
from whisper_server import audio
from whisper_server.backends.base import SAMPLE_RATE
from whisper_server.voice_encoder import Embedder, load_embedder

log = logging.getLogger(__name__)

WINDOW_HOP_S = 0.8  # half a 1.6 s window: every stretch of speech is seen by two windows
# A speech region shorter than this gets no window of its own (its words take the nearest).
MIN_REGION_S = 0.3
# Cosine distance at which speakers=auto stops merging clusters: measured on two- and
# three-speaker mixes of the corpus (benchmarks/diarize_bench.py, docs/benchmarks.md).
AUTO_THRESHOLD = 0.4
# A cluster of fewer windows (about 3 s of speech) is noise, a cough or a stray window, not a speaker.
MIN_SPEAKER_WINDOWS = 4
# Agglomerative clustering is O(n^2) in memory and O(n^2) per merge: beyond this many windows
# (about 13 minutes of speech), consecutive windows are clustered in groups.
MAX_ITEMS = 1000
_EMBED_BATCH = 64

Regions = Sequence[tuple[int, int]]  # (first sample, length), file-global


# --- channels -------------------------------------------------------------------------------

def channel_label(channel: int) -> str:
    return f"CH{channel}"


def merge_channels(transcripts: Sequence[Transcript]) -> Transcript:
    """One transcript from one per channel (in channel order): segments and words labelled
    with their channel and speaker ``CH<n>``, in time order."""
    segments = sorted(
        (replace(seg, channel=c, speaker=channel_label(c),
                 words=None if seg.words is None else tuple(
                     replace(w, channel=c, speaker=channel_label(c)) for w in seg.words))
         for c, t in enumerate(transcripts) for seg in t.segments),
        key=lambda s: (s.start, s.channel))
    segments = [replace(seg, id=i) for i, seg in enumerate(segments)]
    text = " ".join(s.text.strip() for s in segments if s.text.strip())
    # The language of the channel with the most speech (each was detected on its own).
    main = max(transcripts, key=lambda t: sum(s.end - s.start for s in t.segments))
    first = transcripts[0]
    return replace(
        first, text=text, no_speech=not text, segments=tuple(segments),
        language=main.language, language_probability=main.language_probability,
        duration=max(t.duration for t in transcripts),
        timings=Timings(processing_seconds=round(sum(t.timings.processing_seconds for t in transcripts), 3),
                        decode_seconds=round(sum(t.timings.decode_seconds or 0.0 for t in transcripts), 3)),
    )


# --- speakers -------------------------------------------------------------------------------

def window_starts(regions: Regions, window: int, hop: int = int(WINDOW_HOP_S * SAMPLE_RATE)) -> np.ndarray:
    """Sorted first samples of the embedding windows: across each region every ``hop``
    samples (the last one flush with the region's end); one centred window on a region
    shorter than a window."""
    starts: list[int] = []
    for start, length in regions:
        if length < MIN_REGION_S * SAMPLE_RATE:
            continue
        if length <= window:
            starts.append(max(0, start + length // 2 - window // 2))
            continue
        n = 1 + math.ceil((length - window) / hop)
        starts += [start + round(k * (length - window) / (n - 1)) for k in range(n)]
    return np.array(sorted(starts), dtype=np.int64)


def embed_windows(blocks: Iterator[np.ndarray], starts: np.ndarray, embedder: Embedder,
                  check: Callable[[], None] = lambda: None) -> np.ndarray:
    """Embeddings of the windows at ``starts`` (sorted), read from a stream of blocks: only
    the audio from the next window on is kept. A window past the end is zero-padded."""
    window = embedder.window_samples
    done: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # file-global index of buffer[0]
    i = 0

    def flush() -> None:
        if pending:
            done.append(embedder.embed(np.stack(pending)))
            pending.clear()
            check()

    def take(end_of_audio: bool) -> None:
        nonlocal i
        while i < len(starts) and (end_of_audio or starts[i] + window <= offset + len(buffer)):
            piece = buffer[starts[i] - offset:starts[i] - offset + window]
            pending.append(np.pad(piece, (0, window - len(piece))))
            i += 1
            if len(pending) >= _EMBED_BATCH:
                flush()

    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        take(end_of_audio=False)
        # Drop what no window still needs (at most the whole buffer: the next may start later).
        drop = min((int(starts[i]) if i < len(starts) else offset + len(buffer)) - offset, len(buffer))
        buffer, offset = buffer[drop:], offset + drop
    take(end_of_audio=True)
    flush()
    return np.concatenate(done) if done else np.zeros((0, 0), dtype=np.float32)


def linkage(x: np.ndarray) -> list[tuple[int, int, float]]:
    """Average-linkage clustering of unit rows on cosine distance, to the end: the merges
    ``(kept, retired, distance)`` in order (distances never decrease)."""
    n = len(x)
    d = 1.0 - (x @ x.T).astype(np.float64)
    np.fill_diagonal(d, np.inf)
    sizes = np.ones(n)
    merges = []
    for _ in range(n - 1):
        i, j = divmod(int(np.argmin(d)), n)
        merges.append((i, j, float(d[i, j])))
        # Lance-Williams update for average linkage; row and column j retire.
        merged = (sizes[i] * d[i] + sizes[j] * d[j]) / (sizes[i] + sizes[j])
        d[i, :] = merged
        d[:, i] = merged
        d[j, :] = np.inf
        d[:, j] = np.inf
        d[i, i] = np.inf
        sizes[i] += sizes[j]
    return merges


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _partition(n: int, merges: Sequence[tuple[int, int, float]]) -> np.ndarray:
    label = np.arange(n)
    for i, j, _ in merges:
        label[label == j] = i
    return label


def _level(n: int, merges: Sequence[tuple[int, int, float]], lo: int, hi: int, threshold: float) -> int:
    """How many merges to apply. Only clusters of at least MIN_SPEAKER_WINDOWS count as
    speakers (an outlier window would otherwise hold out as a "speaker" of its own until
    the last merge): stop at ``threshold``, then move to the nearest level with
    ``lo``..``hi`` such clusters."""
    sizes = np.ones(n, dtype=np.int64)
    big = [int((sizes >= MIN_SPEAKER_WINDOWS).sum())]  # big[t]: speaker-sized clusters after t merges
    for i, j, _ in merges:
        before = int(sizes[i] >= MIN_SPEAKER_WINDOWS) + int(sizes[j] >= MIN_SPEAKER_WINDOWS)
        sizes[i] += sizes[j]
        big.append(big[-1] - before + int(sizes[i] >= MIN_SPEAKER_WINDOWS))
    at = next((t for t, (_, _, dist) in enumerate(merges) if dist > threshold), len(merges))
    if big[at] > hi:
        return next(t for t in range(at, len(big)) if big[t] <= hi)
    if big[at] < lo:
        fits = [t for t in range(at) if big[t] >= lo]
        return fits[-1] if fits else int(np.argmax(big))
    return at


def cluster(embeddings: np.ndarray, lo: int, hi: int, auto: bool, threshold: float = AUTO_THRESHOLD) -> np.ndarray:
    """A speaker index (0, 1, ... in order of first appearance) per window: ``lo``..``hi``
    speakers, as many as the threshold finds when ``auto``, else as many as ``hi`` allows."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    group = math.ceil(n / MAX_ITEMS)  # consecutive windows clustered together on long files
    item_of = np.arange(n) // group
    items = _unit(np.add.reduceat(embeddings, np.arange(0, n, group), axis=0))
    merges = linkage(items)
    label = _partition(len(items), merges[:_level(len(items), merges, lo, hi, threshold if auto else math.inf)])[item_of]
    clusters, counts = np.unique(label, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    # Speakers: the speaker-sized clusters, or the largest ones where too few are (short audio).
    wanted = max(min(lo, len(clusters)), int((counts >= MIN_SPEAKER_WINDOWS).sum()))
    speakers = clusters[np.sort(order[:min(wanted, hi)])]
    centroids = _unit(np.stack([embeddings[label == c].sum(axis=0) for c in speakers]))
    # Every window goes to the closest speaker: this places the windows of clusters too small
    # to be speakers, and windows that were clustered in a group across a change of speaker.
    nearest = np.argmax(embeddings @ centroids.T, axis=1)
    if len(np.unique(nearest)) < len(speakers):  # a speaker lost every window: keep the clusters
        nearest = np.where(np.isin(label, speakers), np.searchsorted(speakers, label).clip(0, len(speakers) - 1),
                           nearest)
    _, first = np.unique(nearest, return_index=True)
    rank = {int(nearest[f]): r for r, f in enumerate(sorted(first))}
    return np.array([rank[int(c)] for c in nearest], dtype=np.int64)


def speaker_label(index: int) -> str:
    return f"S{index + 1}"


def _speaker_at(centres: np.ndarray, speakers: np.ndarray, t: float) -> str:
    """The speaker of the window centred nearest to ``t`` seconds."""
    at = int(np.searchsorted(centres, t))
    if at == len(centres) or (at > 0 and t - centres[at - 1] < centres[at] - t):
        at -= 1
    return speaker_label(int(speakers[at]))


def label_segments(segments: Sequence[Segment], centres: np.ndarray, speakers: np.ndarray) -> list[Segment]:
    """Speakers on segments and words; a segment is split where its words change speaker.
    ``centres``: seconds, sorted; ``speakers``: an index per centre."""
    if not len(centres):  # speech too short to embed: one speaker
        return [replace(s, speaker=speaker_label(0),
                        words=None if s.words is None else tuple(replace(w, speaker=speaker_label(0)) for w in s.words))
                for s in segments]
    out: list[Segment] = []
    for seg in segments:
        words = seg.words or ()
        if words and "".join(w.word for w in words) == seg.text:
            labelled = [replace(w, speaker=_speaker_at(centres, speakers, (w.start + w.end) / 2)) for w in words]
            for speaker, run in itertools.groupby(labelled, key=lambda w: w.speaker):
                part = tuple(run)
                out.append(replace(seg, start=part[0].start, end=part[-1].end, text="".join(w.word for w in part),
                                   words=part, speaker=speaker))
            continue
        inside = speakers[np.searchsorted(centres, seg.start):np.searchsorted(centres, seg.end, side="right")]
        if len(inside):
            speaker = speaker_label(Counter(inside.tolist()).most_common(1)[0][0])
        else:
            speaker = _speaker_at(centres, speakers, (seg.start + seg.end) / 2)
        out.append(replace(seg, speaker=speaker, words=None if seg.words is None else tuple(
            replace(w, speaker=speaker) for w in seg.words)))
    return out


def diarize(path: Path, segments: Sequence[Segment], regions: Regions, options: RequestOptions, *,
            channel: int | None = None, check: Callable[[], None] = lambda: None,
            embedder: Embedder | None = None) -> list[Segment]:
    """``segments`` labelled with speakers, from the audio of ``path`` and the VAD's
    speech ``regions``."""
    started = time.perf_counter()
    embedder = embedder or load_embedder()
    starts = window_starts(regions, embedder.window_samples)
    embeddings = embed_windows(audio.iter_blocks(path, channel=channel), starts, embedder, check)
    lo, hi = options.speaker_range
    speakers = cluster(embeddings, lo, hi, auto=options.speakers == "auto")
    centres = (starts + embedder.window_samples / 2) / SAMPLE_RATE
    labelled = label_segments(segments, centres, speakers)
    log.info("diarized %d windows into %d speaker(s) in %.1f s", len(starts),
             len(set(speakers.tolist())) or (1 if segments else 0), time.perf_counter() - started)
    return labelled
