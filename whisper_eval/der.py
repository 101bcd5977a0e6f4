"""Diarization error rate (NIST RT / pyannote.metrics' definition), on 10 ms frames.

DER = (missed speech + false alarm + speaker confusion) / reference speech, after the
one-to-one mapping of hypothesis to reference speakers that maximises their overlap
(Hungarian algorithm). A ``collar`` of seconds either side of every reference turn
boundary is not scored (0.25 s is the usual choice: boundaries are not exact to a word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from whisper_contract import Segment

import numpy as np

FRAME_S = 0.01

Turn = tuple[float, float, str]  # start s, end s, speaker


@dataclass(frozen=True)
class DerResult:
    der: float
    missed: float  # seconds
    false_alarm: float
    confusion: float
    reference: float  # scored reference speech, seconds
    mapping: dict[str, str]  # hypothesis speaker -> reference speaker


def _frames(turns: Sequence[Turn], speakers: list[str], n: int) -> np.ndarray:
    grid = np.zeros((n, len(speakers)), dtype=bool)
    for start, end, who in turns:
        grid[round(start / FRAME_S):round(end / FRAME_S), speakers.index(who)] = True
    return grid


def hungarian(gain: np.ndarray) -> list[tuple[int, int]]:
    """Row/column pairs of a rectangular gain matrix with the largest total gain
    (Kuhn-Munkres with potentials, O(n^3))."""
    rows, cols = gain.shape
    size = max(rows, cols)
    cost = np.zeros((size, size))
    cost[:rows, :cols] = gain.max(initial=0) - gain
    u, v = np.zeros(size + 1), np.zeros(size + 1)
    match = np.zeros(size + 1, dtype=int)  # match[col] = row, 1-based; 0: free
    for row in range(1, size + 1):
        match[0], col0 = row, 0
        slack, way, used = np.full(size + 1, np.inf), np.zeros(size + 1, dtype=int), np.zeros(size + 1, dtype=bool)
        while match[col0]:
            used[col0] = True
            r0 = match[col0]
            delta, col1 = np.inf, 0
            for col in range(1, size + 1):
                if used[col]:
                    continue
                cur = cost[r0 - 1, col - 1] - u[r0] - v[col]
                if cur < slack[col]:
                    slack[col], way[col] = cur, col0
                if slack[col] < delta:
                    delta, col1 = slack[col], col
            for col in range(size + 1):
                if used[col]:
                    u[match[col]] += delta
                    v[col] -= delta
                else:
                    slack[col] -= delta
            col0 = col1
        while col0:
            col1 = way[col0]
            match[col0] = match[col1]
            col0 = col1
    return [(match[c] - 1, c - 1) for c in range(1, size + 1) if match[c] - 1 < rows and c - 1 < cols]


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.25) -> DerResult:
    end = max([e for _, e, _ in [*reference, *hypothesis]], default=0.0)
    n = round(end / FRAME_S) + 1
    ref_names = sorted({w for _, _, w in reference})
    hyp_names = sorted({w for _, _, w in hypothesis})
    ref, hyp = _frames(reference, ref_names, n), _frames(hypothesis, hyp_names, n)
    scored = np.ones(n, dtype=bool)
    for start, stop, _ in reference:
        for edge in (start, stop):
            scored[max(0, round((edge - collar) / FRAME_S)):round((edge + collar) / FRAME_S)] = False
    ref, hyp = ref[scored], hyp[scored]
    overlap = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # frames each pair speaks together
    pairs = hungarian(overlap) if ref_names and hyp_names else []
    correct = np.zeros(len(ref), dtype=np.int64)
    for r, h in pairs:
        correct += ref[:, r] & hyp[:, h]
    n_ref, n_hyp = ref.sum(axis=1), hyp.sum(axis=1)
    missed = np.maximum(n_ref - n_hyp, 0).sum() * FRAME_S
    false_alarm = np.maximum(n_hyp - n_ref, 0).sum() * FRAME_S
    confusion = (np.minimum(n_ref, n_hyp) - correct).sum() * FRAME_S
    total = n_ref.sum() * FRAME_S
    return DerResult(der=float((missed + false_alarm + confusion) / total) if total else 0.0,
                     missed=float(missed), false_alarm=float(false_alarm), confusion=float(confusion),
                     reference=float(total), mapping={hyp_names[h]: ref_names[r] for r, h in pairs})


def turns_of(segments: Sequence[Segment]) -> list[Turn]:
    """Hypothesis turns: the labelled segments of a transcript."""
    return [(s.start, s.end, s.speaker) for s in segments if s.speaker is not None]
