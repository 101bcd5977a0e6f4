"""Verification on the build GPU: transcribe a known clip with the new engines, through the
same Triton backend the endpoint uses, and fail the build if the text is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# LibriSpeech test-clean 1221-135766-0002 (Ogg/Opus copy shipped in tests/data/audio), the clip TensorRT-LLM's whisper example uses too.
DEFAULT_CLIP = "en_librispeech_test-clean_1221-135766-0002.opus"
MAX_WER = 0.10  # large-v3 gets this clip right; a broken engine produces garbage, not 10% errors


def decode_16k_mono(path: Path) -> "np.ndarray":
    """Any audio file as float32 16 kHz mono (PyAV; the build image has no faster-whisper)."""
    import av
    import numpy as np

    pieces = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
        for frame in container.decode(audio=0):
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float32)


def verify_artifact(artifact: Path, *, clip_name: str = DEFAULT_CLIP, max_wer: float = MAX_WER,
                    **launch: Any) -> dict[str, object]:
    from whisper_eval.clips import clip
    from whisper_eval.wer import wer
    from whisper_server.backends.base import CHUNK_SAMPLES, DecodeOptions
    from whisper_server.backends.triton_backend import TritonBackend

    sample = clip(clip_name)
    audio = decode_16k_mono(sample.path)[:CHUNK_SAMPLES]
    backend = TritonBackend.from_model_dir(artifact, **launch)
    try:
        language, probability = backend.detect_language(audio)
        (segments,) = backend.transcribe_chunks([audio], DecodeOptions(language=sample.language, beam_size=1))
    finally:
        backend.close()
    hypothesis = "".join(s.text for s in segments).strip()
    error = wer(sample.reference, hypothesis, sample.language)
    return {
        "clip": clip_name, "reference": sample.reference, "hypothesis": hypothesis, "wer": round(error, 4),
        "max_wer": max_wer, "detected_language": language, "language_probability": round(probability, 4),
        "passed": error <= max_wer and language == sample.language,
    }
