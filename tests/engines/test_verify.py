"""The build's verification step, through the real Triton backend and tritonserver (stand-in model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_engines.verify import DEFAULT_CLIP, verify_artifact

pytest.importorskip("tritonclient.grpc")
REFERENCE = "YET THESE THOUGHTS AFFECTED HESTER PRYNNE LESS WITH HOPE THAN APPREHENSION"


def _verify(artifact: Path, triton_dist: dict, text: str, language: str) -> dict[str, object]:
    env = {**triton_dist["env"], "WHISPER_STANDIN_LOG": str(artifact / "log.jsonl"),
           "WHISPER_STANDIN_TEXT": text, "WHISPER_STANDIN_LANGUAGE": language}
    return verify_artifact(artifact, tritonserver=triton_dist["tritonserver"],
                           backend_directory=triton_dist["backend_directory"], env=env, startup_timeout_s=60)


def test_right_text_passes_wrong_text_fails(standin_artifact: Path, triton_dist: dict) -> None:
    good = _verify(standin_artifact, triton_dist, "Yet these thoughts affected Hester Prynne less with hope "
                                                  "than apprehension.", "en")
    assert good["passed"] is True and good["wer"] == 0.0 and good["clip"] == DEFAULT_CLIP
    assert good["reference"] == REFERENCE and good["detected_language"] == "en"
    bad = _verify(standin_artifact, triton_dist, "Yet these thoughts affected Esther's prime less.", "en")
    assert bad["passed"] is False and bad["wer"] > 0.3
    wrong_language = _verify(standin_artifact, triton_dist, REFERENCE.lower(), "de")
    assert wrong_language["passed"] is False and wrong_language["wer"] == 0.0


def test_decode_matches_faster_whisper() -> None:
    import numpy as np
    from faster_whisper.audio import decode_audio

    from whisper_engines.verify import decode_16k_mono
    from whisper_eval.clips import clip

    path = clip(DEFAULT_CLIP).path
    ours, theirs = decode_16k_mono(path), decode_audio(str(path), sampling_rate=16000)
    assert abs(len(ours) - len(theirs)) <= 160 and abs(len(ours) / 16000 - 4.832) < 0.05
    n = min(len(ours), len(theirs))
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > 0.99
