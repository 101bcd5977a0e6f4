"""Conversations with a known answer to "who spoke when", built from single-speaker clips:
each speaker's clips are cut at their pauses into turns, and the turns of the speakers are
laid end to end in rotation with short silences between them. The reference turns are exact
(each turn is trimmed to its speech by the VAD), so DER measures the diarization alone plus
the transcript's own missed or extra speech."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from whisper_eval.der import Turn
from whisper_server import vad

SAMPLE_RATE = vad.SAMPLE_RATE
# Pauses of at least 300 ms separate turns; no padding, so a turn is its speech alone.
_PAUSES = vad.VadParams(min_silence_ms=300, speech_pad_ms=50)


@dataclass(frozen=True)
class Conversation:
    audio: np.ndarray  # 16 kHz mono float32
    turns: list[Turn]  # reference: (start s, end s, speaker)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def split_turns(samples: np.ndarray, max_turn_s: float) -> list[np.ndarray]:
    """``samples`` cut at pauses into pieces of speech of at most about ``max_turn_s``
    (a longer stretch without a pause stays whole), silence at their ends trimmed."""
    regions = vad.speech_regions(vad.model().probabilities(samples), len(samples), _PAUSES)
    pieces: list[list[tuple[int, int]]] = []
    for start, end in regions:
        if pieces and end - pieces[-1][0][0] <= max_turn_s * SAMPLE_RATE:
            pieces[-1].append((start, end))
        else:
            pieces.append([(start, end)])
    return [samples[p[0][0]:p[-1][1]] for p in pieces]


def build(speakers: Mapping[str, Sequence[np.ndarray]], *, gap_s: float = 0.6, max_turn_s: float = 8.0) -> Conversation:
    """The speakers' turns in rotation (a speaker whose turns run out drops out), ``gap_s``
    of silence between turns and at both ends."""
    queues = {name: [t for clip in clips for t in split_turns(clip, max_turn_s)] for name, clips in speakers.items()}
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    parts, turns, at = [gap], [], len(gap)
    while any(queues.values()):
        for name, queue in queues.items():
            if not queue:
                continue
            piece = queue.pop(0)
            turns.append((at / SAMPLE_RATE, (at + len(piece)) / SAMPLE_RATE, name))
            parts += [piece, gap]
            at += len(piece) + len(gap)
    return Conversation(np.concatenate(parts).astype(np.float32), turns)
