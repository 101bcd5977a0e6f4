"""Whisper written for inference in PyTorch: GPU log-mel, encoder, and a static-cache decoder.

The maths is openai/whisper's (pre-norm transformer, GELU, learned decoder positions,
sinusoidal encoder positions, tied output projection). What differs is the decoder's memory
layout, chosen so one decode step is a fixed sequence of kernels that a CUDA graph can replay:

* self-attention keys/values live in a preallocated cache ``[layers, batch, heads, ctx, dh]``
  written in place at the current position (a device tensor, so the graph never changes);
* cross-attention keys/values are computed once per chunk from the encoder output and kept
  in a cache of the same form (they are what each step must read: the bandwidth bound);
* attention is ``scaled_dot_product_attention`` (fused kernels on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .torch_kernels import attend_int8, quantize

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_FRAMES = 3000  # 30 s of 10 ms frames: the encoder's fixed input length
N_AUDIO_CTX = N_FRAMES // 2


@dataclass(frozen=True)
class Dims:
    n_mels: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_audio_ctx: int = N_AUDIO_CTX
    n_text_ctx: int = 448


# Shapes of the published checkpoints (openai/whisper __init__.py model dims).
PRESETS: dict[str, Dims] = {
    "tiny.en": Dims(80, 384, 6, 4, 51864, 384, 6, 4),
    "base": Dims(80, 512, 8, 6, 51865, 512, 8, 6),
    "large-v3": Dims(128, 1280, 20, 32, 51866, 1280, 20, 32),
    "large-v3-turbo": Dims(128, 1280, 20, 32, 51866, 1280, 20, 4),
}


# --------------------------------------------------------------------------- features

def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters (librosa.filters.mel's defaults),
    which is what Whisper's mel_filters.npz holds."""
    f_min, f_max = 0.0, sr / 2
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        mel = f / f_sp
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """Batched log-mel features on the model's device, as faster-whisper computes them.

    Each chunk gets 160 trailing zero samples, the usual centred STFT, and the ``max - 8``
    floor over its own frames; frames past the chunk's end are zeros in log-mel space (so a
    short chunk sees exactly the input faster-whisper's pad_or_trim gives the encoder).
    """

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels)), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """audio: float32 [B, S] zero-padded; lengths: samples per row. -> [B, n_mels, 3000]."""
        audio = audio.float()
        need = N_FRAMES * HOP_LENGTH + HOP_LENGTH
        if audio.shape[1] < need:
            audio = F.pad(audio, (0, need - audio.shape[1]))
        stft = torch.stft(audio[:, :need], N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = stft[..., :N_FRAMES].abs() ** 2
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        n_valid = torch.clamp((lengths.to(audio.device) + HOP_LENGTH) // HOP_LENGTH, max=N_FRAMES)
        valid = torch.arange(N_FRAMES, device=audio.device)[None, :] < n_valid[:, None]  # [B, T]
        peak = log_spec.masked_fill(~valid[:, None, :], -1e9).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return ((log_spec + 4.0) / 4.0).masked_fill(~valid[:, None, :], 0.0)


# --------------------------------------------------------------------------- blocks

class SelfAttention(nn.Module):
    """Fused q/k/v projection (the key bias is zero: Whisper's key has none)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # each [B, H, T, dh]

    def merge(self, o: Tensor) -> Tensor:
        b, h, t, dh = o.shape
        return self.out(o.transpose(1, 2).reshape(b, t, h * dh))


class CrossAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def keys_values(self, enc: Tensor) -> tuple[Tensor, Tensor]:
        b, t, _ = enc.shape
        k, v = self.kv(enc).view(b, t, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v


class MLP(nn.Sequential):
    def __init__(self, d: int) -> None:
        super().__init__(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.mlp_ln = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def params(self) -> tuple[Tensor, ...]:
        a, m = self.attn, self.mlp
        return (self.attn_ln.weight, self.attn_ln.bias, a.qkv.weight, a.qkv.bias, a.out.weight, a.out.bias,
                self.mlp_ln.weight, self.mlp_ln.bias, m[0].weight, m[0].bias, m[2].weight, m[2].bias)


def encoder_block(x: Tensor, heads: int, ln1w: Tensor, ln1b: Tensor, qkvw: Tensor, qkvb: Tensor, ow: Tensor,
                  ob: Tensor, ln2w: Tensor, ln2b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """One encoder block as a function of its weights, so that a single torch.compile'd
    graph serves all 32 blocks (a compiled method would recompile for each module)."""
    b, t, d = x.shape
    h = F.layer_norm(x, (d,), ln1w, ln1b)
    q, k, v = F.linear(h, qkvw, qkvb).view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    x = x + F.linear(o, ow, ob)
    h = F.gelu(F.linear(F.layer_norm(x, (d,), ln2w, ln2b), w1, b1))
    return x + F.linear(h, w2, b2)


class Encoder(nn.Module):
    def __init__(self, dims: Dims) -> None:
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)
        self.heads = dims.n_audio_head
        self.block_fn = encoder_block

    def compile(self) -> None:  # type: ignore[override]
        """Fuse each block's layer norms, GELU and residual adds (torch.compile, CUDA)."""
        self.block_fn = torch.compile(encoder_block)

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions
        for block in self.blocks:
            x = self.block_fn(x, self.heads, *block.params())
        return self.ln_post(x)


@dataclass
class DecodeState:
    """Preallocated caches for one batch of sequences decoded in lockstep."""

    self_k: Tensor  # [L, B, H, ctx, dh]
    self_v: Tensor
    cross_k: Tensor  # [L, B, H, audio_ctx, dh], fp16/bf16 or int8
    cross_v: Tensor
    cross_ks: Tensor | None = None  # int8 cache only: scales [L, B, H, audio_ctx]
    cross_vs: Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.self_k.shape[1]


class DecoderBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.cross_ln = nn.LayerNorm(d)
        self.cross = CrossAttention(d, heads)
        self.mlp_ln = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x: Tensor, layer: int, state: DecodeState, positions: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.attn.split(self.attn_ln(x))
        # Write this step's keys/values at their positions, then attend over the whole cache
        # with a mask: shapes never change, so the step can be captured in a CUDA graph.
        if positions.ndim == 1:  # every row at the same positions
            state.self_k[layer].index_copy_(2, positions, k)
            state.self_v[layer].index_copy_(2, positions, v)
        else:  # one position per row (continuous batching: rows join at different times)
            rows = torch.arange(k.shape[0], device=k.device)
            state.self_k[layer][rows, :, positions[:, 0]] = k[:, :, 0]
            state.self_v[layer][rows, :, positions[:, 0]] = v[:, :, 0]
        o = F.scaled_dot_product_attention(q, state.self_k[layer], state.self_v[layer], attn_mask=mask)
        x = x + self.attn.merge(o)
        b, t, _ = x.shape
        q = self.cross.q(self.cross_ln(x)).view(b, t, self.cross.heads, -1).transpose(1, 2)
        if state.cross_ks is None:
            o = F.scaled_dot_product_attention(q, state.cross_k[layer], state.cross_v[layer])
        else:
            o = attend_int8(q, state.cross_k[layer], state.cross_ks[layer], state.cross_v[layer], state.cross_vs[layer])
        x = x + self.cross.out(o.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.mlp_ln(x))


class Decoder(nn.Module):
    def __init__(self, dims: Dims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.dims = dims
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(DecoderBlock(d, dims.n_text_head) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)

    def new_state(self, batch: int, ctx: int | None = None, cross_int8: bool = False) -> DecodeState:
        """Caches for ``batch`` rows and ``ctx`` positions; ``cross_int8`` halves the bytes
        each step reads from the cross-attention cache (torch_kernels.py)."""
        dims = self.dims
        ctx = ctx or dims.n_text_ctx
        ref = self.positional_embedding
        dh = dims.n_text_state // dims.n_text_head
        L, H = dims.n_text_layer, dims.n_text_head
        kw = dict(device=ref.device, dtype=torch.int8 if cross_int8 else ref.dtype)
        scales = dict(device=ref.device, dtype=torch.float16)
        return DecodeState(
            self_k=torch.zeros(L, batch, H, ctx, dh, device=ref.device, dtype=ref.dtype),
            self_v=torch.zeros(L, batch, H, ctx, dh, device=ref.device, dtype=ref.dtype),
            cross_k=torch.zeros(L, batch, H, dims.n_audio_ctx, dh, **kw),
            cross_v=torch.zeros(L, batch, H, dims.n_audio_ctx, dh, **kw),
            cross_ks=torch.ones(L, batch, H, dims.n_audio_ctx, **scales) if cross_int8 else None,
            cross_vs=torch.ones(L, batch, H, dims.n_audio_ctx, **scales) if cross_int8 else None,
        )

    @torch.no_grad()
    def set_cross(self, state: DecodeState, enc: Tensor, rows: slice | Tensor = slice(None)) -> None:
        """Compute every layer's cross-attention keys/values for ``enc`` once, into ``rows``."""
        for i, block in enumerate(self.blocks):
            k, v = block.cross.keys_values(enc)
            if state.cross_ks is None:
                state.cross_k[i][rows] = k
                state.cross_v[i][rows] = v
            else:
                state.cross_k[i][rows], state.cross_ks[i][rows] = quantize(k)
                state.cross_v[i][rows], state.cross_vs[i][rows] = quantize(v)

    def forward(self, tokens: Tensor, start: Tensor, state: DecodeState) -> Tensor:
        """tokens [B, T] placed at positions start..start+T-1 -> logits of the last position [B, V].

        ``start`` is [1] (all rows at one position) or, for one token per row, [B] (each row
        at its own position: continuous batching)."""
        t = tokens.shape[1]
        ctx = state.self_k.shape[3]
        keys = torch.arange(ctx, device=tokens.device)
        if start.numel() == 1 or t > 1:
            positions = start[:1] + torch.arange(t, device=tokens.device)
            mask = keys[None, :] <= positions[:, None]  # [T, ctx]
            pos_emb = self.positional_embedding.index_select(0, positions)
        else:
            positions = start[:, None]  # [B, 1]
            mask = (keys[None, :] <= positions)[:, None, None, :]  # [B, 1, 1, ctx]
            pos_emb = self.positional_embedding.index_select(0, start)[:, None, :]
        x = self.token_embedding(tokens) + pos_emb
        for i, block in enumerate(self.blocks):
            x = block(x, i, state, positions, mask)
        x = self.ln(x[:, -1])
        return (x @ self.token_embedding.weight.T).float()


    @torch.no_grad()
    def attention_logits(self, tokens: Tensor, enc: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One pass over the whole sequence ``tokens`` [1, T] (no cache): logits at every
        position [T, V], and each layer's cross-attention logits q·kᵀ/√dh [H, T, audio_ctx],
        which openai timing.py reads from the alignment heads."""
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:t]
        qks = []
        for block in self.blocks:
            q, k, v = block.attn.split(block.attn_ln(x))
            x = x + block.attn.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
            q = block.cross.q(block.cross_ln(x)).view(1, t, block.cross.heads, -1).transpose(1, 2)
            ck, cv = block.cross.keys_values(enc)
            qk = (q.float() @ ck.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
            qks.append(qk[0])
            o = qk.softmax(-1).to(cv.dtype) @ cv
            x = x + block.cross.out(o.transpose(1, 2).reshape(1, t, -1))
            x = x + block.mlp(block.mlp_ln(x))
        return (self.ln(x[0]) @ self.token_embedding.weight.T).float(), qks


class Whisper(nn.Module):
    def __init__(self, dims: Dims) -> None:
        super().__init__()
        self.dims = dims
        self.mel = LogMel(dims.n_mels)
        self.encoder = Encoder(dims)
        self.decoder = Decoder(dims)

    @property
    def device(self) -> torch.device:
        return self.decoder.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.positional_embedding.dtype

    @torch.no_grad()
    def features(self, audio: Tensor, lengths: Tensor) -> Tensor:
        return self.mel(audio, lengths).to(self.dtype)


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> Tensor:
    """The encoder's fixed positions (openai/whisper model.py), for random-weight models."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def random_model(dims: Dims, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16,
                 seed: int = 0) -> Whisper:
    """A model of the given shape with small random weights: for throughput, not transcripts."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Whisper(dims)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
        elif p.ndim >= 2:
            p.data.normal_(0, 0.02)
    model.encoder.positions.copy_(sinusoids(dims.n_audio_ctx, dims.n_audio_state))
    model.mel.to(device)  # its buffers come from numpy, which ignores the device context
    model.encoder.to(dtype)
    model.decoder.to(dtype)
    return model.eval()
