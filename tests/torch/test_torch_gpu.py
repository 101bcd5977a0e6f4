"""GPU-only checks of the torch backend's CUDA paths (skipped without CUDA; see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from whisper_server.backends.torch_backend import StepRunner
from whisper_server.backends.torch_kernels import attend_int8, attend_int8_reference, quantize
from whisper_server.backends.torch_model import Dims, random_model

pytestmark = pytest.mark.gpu
SMALL = Dims(80, 256, 4, 2, 51865, 256, 4, 2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("per_row", [False, True])
def test_cuda_graph_step_matches_eager(per_row):
    model = random_model(SMALL, "cuda", torch.float16, seed=3)
    dec = model.decoder
    enc = model.encoder(torch.randn(4, 80, 3000, device="cuda", dtype=torch.float16))
    graphed = dec.new_state(4, ctx=32)
    eager = dec.new_state(4, ctx=32)
    runner = StepRunner(dec, graphed, use_graph=True, per_row=per_row)
    prompt = torch.tensor([[50258, 50259, 50360, 50364]], device="cuda").expand(4, -1)
    zero = torch.zeros(1, dtype=torch.long, device="cuda")
    for state in (graphed, eager):
        dec.set_cross(state, enc)
        dec(prompt, zero, state)
    token = torch.randint(0, 50000, (4, 1), device="cuda")
    for step in range(6):
        pos = torch.full((4,), 4 + step, device="cuda") if per_row else 4 + step
        start = pos if per_row else torch.tensor([pos], device="cuda")
        got = runner(token, pos).clone()
        want = dec(token, start, eager)
        assert _rel(got, want) < 1e-2, step
        token = want.argmax(-1, keepdim=True)


def test_per_row_positions_match_shared_positions():
    model = random_model(SMALL, "cuda", torch.float16, seed=4)
    dec = model.decoder
    enc = model.encoder(torch.randn(2, 80, 3000, device="cuda", dtype=torch.float16))
    a, b = dec.new_state(2, ctx=16), dec.new_state(2, ctx=16)
    prompt = torch.tensor([[50258, 50259, 50360, 50364]], device="cuda").expand(2, -1)
    zero = torch.zeros(1, dtype=torch.long, device="cuda")
    for state in (a, b):
        dec.set_cross(state, enc)
        dec(prompt, zero, state)
    token = torch.tensor([[400], [500]], device="cuda")
    shared = dec(token, torch.tensor([4], device="cuda"), a)
    per_row = dec(token, torch.tensor([4, 4], device="cuda"), b)
    assert _rel(per_row, shared) < 1e-3


@pytest.mark.parametrize("batch", [1, 64])
def test_int8_kernel_matches_reference(batch):
    q = torch.randn(batch, 20, 1, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(batch, 20, 1500, 64, device="cuda", dtype=torch.float16) * 2
    v = torch.randn(batch, 20, 1500, 64, device="cuda", dtype=torch.float16)
    k8, ks = quantize(k)
    v8, vs = quantize(v)
    got = attend_int8(q, k8, ks, v8, vs)
    ref = attend_int8_reference(q.double(), k8, ks.double(), v8, vs.double())
    assert _rel(got, ref) < 2e-3
    exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert _rel(got, exact) < 3e-2
