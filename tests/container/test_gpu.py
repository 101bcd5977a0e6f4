"""CUDA: the faster-whisper backend in float16 and int8_float16 gives the CPU's transcript
(run on a GPU machine; skipped elsewhere by tests/conftest.py)."""

from __future__ import annotations

import pytest

from whisper_contract import RequestOptions
from whisper_eval.clips import clip
from whisper_eval.wer import wer
from whisper_server.backends import load_backend
from whisper_server.pipeline import transcribe_file
from whisper_server.settings import Settings


@pytest.mark.gpu
@pytest.mark.parametrize("compute_type", ["float16", "int8_float16"])
def test_cuda_matches_reference(tiny_en_dir, compute_type):
    settings = Settings(model_dir=str(tiny_en_dir), device="cuda", compute_type=compute_type)
    backend = load_backend(settings)
    assert (backend.info.device, backend.info.compute_type) == ("cuda", compute_type)
    for name in ("LJ001-0001", "sonnet"):
        c = clip(name)
        t = transcribe_file(c.path, RequestOptions(word_timestamps=True), backend, settings)
        assert wer(c.reference, t.text) <= 0.2, t.text
    backend.close()
