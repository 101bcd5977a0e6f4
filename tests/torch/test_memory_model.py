"""The memory model that picks the torch backend's batch from the GPU and the model
(torch_backend.memory_estimate / max_batch_size), checked on the CPU: its terms against what
the code really allocates, and its picks for the GPUs SageMaker serves on, by their memory."""

from __future__ import annotations

import pytest
import torch

from whisper_server.backends.torch_backend import (BATCH_BUCKETS, GIB, GPUS, TorchBackend, max_batch_size,
                                                   memory_estimate, parameter_count)
from whisper_server.backends.torch_model import PRESETS, random_model


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_terms_match_real_allocations(name):
    dims = PRESETS[name]
    model = random_model(dims, "cpu", torch.float32)
    real = sum(p.numel() for p in model.parameters())
    assert abs(parameter_count(dims) - real) / real < 0.02  # biases and norms left out
    for cross_int8, cross_bytes in ((False, None), (True, 1)):
        state = model.decoder.new_state(3, cross_int8=cross_int8)
        caches = sum(t.numel() * t.element_size() for t in (state.self_k, state.self_v, state.cross_k, state.cross_v))
        est = memory_estimate(dims, 3, dtype_bytes=4, cross_bytes=cross_bytes and 1)
        encoder_activations = 3 * 12 * dims.n_audio_ctx * dims.n_audio_state * 4
        assert est.batch * est.per_row - encoder_activations == caches


# What the model picks on each serving GPU in bf16 (docs/torch-backend.md's table).
EXPECTED = {
    ("A10G", "large-v3"): 32, ("A10G", "large-v3-turbo"): 128, ("A10G", "base"): 256,
    ("L4", "large-v3"): 32, ("L4", "large-v3-turbo"): 128, ("L4", "base"): 256,
    ("H100", "large-v3"): 128, ("H100", "large-v3-turbo"): 256, ("H100", "base"): 256,
}


@pytest.mark.parametrize("gpu,model", sorted(EXPECTED))
def test_picks_the_largest_bucket_that_fits_each_serving_gpu(gpu, model):
    dims, memory = PRESETS[model], GPUS[gpu].memory_bytes
    batch = max_batch_size(dims, memory)
    assert batch == EXPECTED[gpu, model]
    budget = int(memory * 0.9) - 2 * GIB
    assert memory_estimate(dims, batch).total <= budget
    if batch != BATCH_BUCKETS[-1]:
        assert memory_estimate(dims, BATCH_BUCKETS[BATCH_BUCKETS.index(batch) + 1]).total > budget


def test_more_memory_never_means_a_smaller_batch():
    dims = PRESETS["large-v3"]
    picks = [max_batch_size(dims, gib * GIB) for gib in range(4, 200, 4)]
    assert picks == sorted(picks) and picks[0] == 1 and picks[-1] == BATCH_BUCKETS[-1]
    assert max_batch_size(dims, 5 * 10**9) == 1  # never zero, even when nothing fits
    # int8 cross-attention caches hold twice the rows on the same card
    assert max_batch_size(dims, GPUS["A10G"].memory_bytes, cross_bytes=1) == 2 * EXPECTED["A10G", "large-v3"]


def test_the_backend_takes_its_batch_from_the_reported_memory(tiny_en_dir, monkeypatch):
    """On CUDA the batch comes from the card's reported memory (simulated here), and the
    server's batcher uses the backend's choice when WHISPER_BATCH_SIZE is unset."""
    from whisper_server.backends import torch_backend
    from whisper_server.batcher import batch_size
    from whisper_server.settings import Settings

    dims = PRESETS["large-v3"]
    for gpu in GPUS.values():
        monkeypatch.setattr(torch_backend, "_gpu_memory", lambda device, gpu=gpu: gpu.memory_bytes)
        assert torch_backend.default_max_batch(dims, "cuda", 2) == EXPECTED[gpu.name, "large-v3"]
    assert torch_backend.default_max_batch(dims, "cpu", 4) == 8
    backend = TorchBackend.from_model_dir(tiny_en_dir, device="cpu")
    assert batch_size(Settings(batch_size=0), backend) == backend.max_batch == 8
    assert batch_size(Settings(batch_size=6), backend) == 6
