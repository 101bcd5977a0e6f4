"""On a real GPU (skipped elsewhere): the build's GPU probe, the serving-side architecture gate,
and the BLS feature computation on CUDA, which is where production runs it."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_probe_reads_the_real_gpu() -> None:
    from whisper_engines.build import probe_gpu

    info = probe_gpu()
    assert info.name.startswith("NVIDIA") and info.arch.startswith("sm") and info.arch[2:].isdigit()


def test_engines_for_another_architecture_are_refused_on_a_real_gpu(spec) -> None:
    from whisper_contract.engine_spec import EngineManifest
    from whisper_engines.build import probe_gpu
    from whisper_server.backends.triton_backend import compatibility_problems

    here = probe_gpu().arch
    other = "sm70" if here != "sm70" else "sm86"
    manifest = lambda arch: EngineManifest(  # noqa: E731
        spec=spec, version="v", tensorrt_llm_version="0.0.0-not-installed", gpu_name="x", gpu_arch=arch,
        git_revision="r", built_at="t", model_root="/opt/ml/model", checksums={}, verification={})
    assert compatibility_problems(manifest(other)) == [
        f"engines were built for {other} (x), this GPU is {here}"]
    assert compatibility_problems(manifest(here)) == []


def test_log_mel_on_cuda_matches_transformers() -> None:
    import torch
    from transformers import WhisperFeatureExtractor

    from whisper_engines.bls_features import log_mel

    t = np.arange(12 * 16_000) / 16_000
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    extractor = WhisperFeatureExtractor(feature_size=128)
    expected = extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0]
    filters = torch.from_numpy(np.asarray(extractor.mel_filters)).cuda()
    ours = log_mel(torch.from_numpy(audio).cuda(), filters)
    assert ours.is_cuda
    np.testing.assert_allclose(ours.cpu().numpy(), expected, atol=1e-3)
