"""whisper_eval.der: the diarization error rate against hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from whisper_eval.der import der, hungarian

REF = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]


def test_labels_are_mapped_not_compared_by_name() -> None:
    result = der(REF, [(0.0, 10.0, "S2"), (10.0, 20.0, "S1")])
    assert result.der == 0.0 and result.mapping == {"S2": "a", "S1": "b"}


def test_one_speaker_for_two_is_half_confusion() -> None:
    result = der(REF, [(0.0, 20.0, "S1")], collar=0.0)
    assert result.confusion == pytest.approx(10.0) and result.der == pytest.approx(0.5)


def test_missed_and_false_alarm() -> None:
    result = der(REF, [(0.0, 5.0, "x"), (10.0, 25.0, "y")], collar=0.0)
    assert (result.missed, result.false_alarm, result.confusion) == pytest.approx((5.0, 5.0, 0.0))
    assert result.der == pytest.approx(0.5)


def test_the_collar_forgives_boundaries_only() -> None:
    late = [(0.0, 10.2, "x"), (10.2, 20.0, "y")]
    assert der(REF, late, collar=0.0).confusion == pytest.approx(0.2)
    assert der(REF, late, collar=0.25).der == 0.0
    assert der(REF, [(0.0, 12.0, "x"), (12.0, 20.0, "y")], collar=0.25).confusion == pytest.approx(1.75)


def test_hungarian_is_optimal_where_greedy_is_not() -> None:
    gain = np.array([[10, 9, 0], [9, 0, 0], [0, 0, 1]])
    pairs = hungarian(gain)
    assert sorted(pairs) == [(0, 1), (1, 0), (2, 2)]  # 9 + 9 + 1, not greedy's 10 + 0 + 1
    rng = np.random.default_rng(3)
    for rows, cols in ((4, 4), (3, 5), (5, 2)):
        m = rng.integers(0, 50, (rows, cols))
        assert sum(m[r, c] for r, c in hungarian(m)) == _brute_force(m)


def _brute_force(m: np.ndarray) -> int:
    if m.shape[0] < m.shape[1]:
        return _brute_force(m.T)
    return max(sum(int(m[r, c]) for c, r in enumerate(rows)) for rows in itertools.permutations(range(m.shape[0]), m.shape[1]))
