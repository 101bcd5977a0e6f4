"""WER/CER and the shipped clip manifest used by tests and benchmarks."""

from whisper_eval.clips import SHIPPED, clip, load_clips
from whisper_eval.wer import cer, wer


def test_wer_normalises_like_whisper() -> None:
    assert wer("Hello, World!", "hello world") == 0.0
    assert wer("MISTER SMITH SAID", "Mr. Smith said.") == 0.0
    assert wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert wer("", "") == 0.0 and wer("", "noise") == 1.0


def test_cer_ignores_spaces() -> None:
    assert cer("广州市 房地产", "广州市房地产") == 0.0
    assert cer("广州市房地产", "广州房地产") == 1 / 6


def test_shipped_manifest_matches_files() -> None:
    clips = load_clips()
    assert len(clips) >= 8
    for c in clips:
        assert c.path.is_file() and c.path.parent == SHIPPED
        assert c.reference and c.duration > 0
    assert {c.language for c in clips} >= {"en", "ja", "zh"}
    assert clip("opus").sample_rate == 48000
