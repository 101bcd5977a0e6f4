"""Weights for torch_model.Whisper from a CTranslate2 model.bin or a Hugging Face checkpoint.

CTranslate2's binary layout (src/models/model.cc, version 6): a uint32 version, the spec
name and revision, then each variable as name, rank, dims, dtype id, byte count and raw
little-endian data, then aliases (name -> other variable). Strings are a uint16 length
followed by the bytes and a NUL. int8 weights carry a ``<name>_scale`` per output row.

Hugging Face layout: ``WhisperForConditionalGeneration``'s state dict (model.safetensors),
which is what the model bucket holds in production.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .torch_model import Dims, Whisper

# CTranslate2 DataType ids (include/ctranslate2/types.h).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_BF16 = 5


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin, aliases resolved, int8 weights dequantised."""
    data = memoryview(Path(path).read_bytes())
    offset = 0

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal offset
        (n,) = take("<H")
        text = bytes(data[offset : offset + n]).rstrip(b"\0").decode()
        offset += n
        return text

    (version,) = take("<I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is too old (need >= 5)")
    spec = string()
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: not a Whisper model (spec {spec!r})")
    take("<I")  # spec revision
    (count,) = take("<I")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        shape = take("<" + "I" * rank)
        dtype_id, nbytes = take("<BI")
        raw = bytes(data[offset : offset + nbytes])
        offset += nbytes
        if dtype_id == _CT2_BF16:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(shape)
        elif dtype_id in _CT2_DTYPES:
            out[name] = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
        else:
            raise ValueError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
    (aliases,) = take("<I")
    for _ in range(aliases):
        alias, target = string(), string()
        out[alias] = out[target]
    for name in [n for n in out if n.endswith("weight") and out[n].dtype == np.int8]:
        scale = out[name + "_scale"].astype(np.float32)
        out[name] = out[name].astype(np.float32) / scale.reshape(-1, *([1] * (out[name].ndim - 1)))
    return out


def dims_from_ct2(v: Mapping[str, np.ndarray]) -> Dims:
    enc_layers = sum(1 for n in v if n.startswith("encoder/layer_") and n.endswith("ffn/linear_0/bias"))
    dec_layers = sum(1 for n in v if n.startswith("decoder/layer_") and n.endswith("ffn/linear_0/bias"))
    vocab, d_text = v["decoder/embeddings/weight"].shape
    return Dims(
        n_mels=v["encoder/conv1/weight"].shape[1],
        n_audio_state=v["encoder/conv1/weight"].shape[0],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=enc_layers,
        n_vocab=vocab,
        n_text_state=d_text,
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=dec_layers,
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
    )


def _ct2_names(dims: Dims) -> dict[str, str]:
    """Our parameter name -> CTranslate2 variable name."""
    m = {
        "encoder.conv1.weight": "encoder/conv1/weight",
        "encoder.conv1.bias": "encoder/conv1/bias",
        "encoder.conv2.weight": "encoder/conv2/weight",
        "encoder.conv2.bias": "encoder/conv2/bias",
        "encoder.positions": "encoder/position_encodings/encodings",
        "encoder.ln_post.weight": "encoder/layer_norm/gamma",
        "encoder.ln_post.bias": "encoder/layer_norm/beta",
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "decoder.positional_embedding": "decoder/position_encodings/encodings",
        "decoder.ln.weight": "decoder/layer_norm/gamma",
        "decoder.ln.bias": "decoder/layer_norm/beta",
    }

    def ln(ours: str, theirs: str) -> None:
        m[f"{ours}.weight"], m[f"{ours}.bias"] = f"{theirs}/gamma", f"{theirs}/beta"

    def lin(ours: str, theirs: str) -> None:
        m[f"{ours}.weight"], m[f"{ours}.bias"] = f"{theirs}/weight", f"{theirs}/bias"

    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            o, t = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            ln(f"{o}.attn_ln", f"{t}/self_attention/layer_norm")
            lin(f"{o}.attn.qkv", f"{t}/self_attention/linear_0")
            lin(f"{o}.attn.out", f"{t}/self_attention/linear_1")
            ln(f"{o}.mlp_ln", f"{t}/ffn/layer_norm")
            lin(f"{o}.mlp.0", f"{t}/ffn/linear_0")
            lin(f"{o}.mlp.2", f"{t}/ffn/linear_1")
            if side == "decoder":
                ln(f"{o}.cross_ln", f"{t}/attention/layer_norm")
                lin(f"{o}.cross.q", f"{t}/attention/linear_0")
                lin(f"{o}.cross.kv", f"{t}/attention/linear_1")
                lin(f"{o}.cross.out", f"{t}/attention/linear_2")
    return m


def state_dict_from_ct2(path: Path) -> tuple[Dims, dict[str, torch.Tensor]]:
    v = read_ct2(path)
    dims = dims_from_ct2(v)
    state = {ours: torch.from_numpy(np.array(v[theirs])) for ours, theirs in _ct2_names(dims).items()}
    return dims, state


def state_dict_from_hf(hf: Mapping[str, torch.Tensor]) -> tuple[Dims, dict[str, torch.Tensor]]:
    """Convert ``WhisperForConditionalGeneration``'s state dict (keys ``model.encoder...``)."""
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    enc_layers = sum(1 for k in hf if k.startswith("encoder.layers.") and k.endswith("fc1.bias"))
    dec_layers = sum(1 for k in hf if k.startswith("decoder.layers.") and k.endswith("fc1.bias"))
    emb = hf["decoder.embed_tokens.weight"]
    conv1 = hf["encoder.conv1.weight"]
    d_audio = conv1.shape[0]
    d_text = emb.shape[1]
    # Head counts are not in the weights; every published Whisper uses 64-dim heads.
    dims = Dims(conv1.shape[1], d_audio, d_audio // 64, enc_layers, emb.shape[0], d_text, d_text // 64,
                dec_layers, hf["encoder.embed_positions.weight"].shape[0], hf["decoder.embed_positions.weight"].shape[0])
    s: dict[str, torch.Tensor] = {
        "encoder.conv1.weight": conv1, "encoder.conv1.bias": hf["encoder.conv1.bias"],
        "encoder.conv2.weight": hf["encoder.conv2.weight"], "encoder.conv2.bias": hf["encoder.conv2.bias"],
        "encoder.positions": hf["encoder.embed_positions.weight"],
        "encoder.ln_post.weight": hf["encoder.layer_norm.weight"], "encoder.ln_post.bias": hf["encoder.layer_norm.bias"],
        "decoder.token_embedding.weight": emb,
        "decoder.positional_embedding": hf["decoder.embed_positions.weight"],
        "decoder.ln.weight": hf["decoder.layer_norm.weight"], "decoder.ln.bias": hf["decoder.layer_norm.bias"],
    }

    def qkv(p: str, o: str) -> None:
        q, k, v = (hf[f"{p}.{x}_proj.weight"] for x in "qkv")
        s[f"{o}.qkv.weight"] = torch.cat([q, k, v])
        qb, vb = hf[f"{p}.q_proj.bias"], hf[f"{p}.v_proj.bias"]
        s[f"{o}.qkv.bias"] = torch.cat([qb, torch.zeros_like(qb), vb])
        s[f"{o}.out.weight"], s[f"{o}.out.bias"] = hf[f"{p}.out_proj.weight"], hf[f"{p}.out_proj.bias"]

    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            p, o = f"{side}.layers.{i}", f"{side}.blocks.{i}"
            qkv(f"{p}.self_attn", f"{o}.attn")
            s[f"{o}.attn_ln.weight"], s[f"{o}.attn_ln.bias"] = hf[f"{p}.self_attn_layer_norm.weight"], hf[f"{p}.self_attn_layer_norm.bias"]
            s[f"{o}.mlp_ln.weight"], s[f"{o}.mlp_ln.bias"] = hf[f"{p}.final_layer_norm.weight"], hf[f"{p}.final_layer_norm.bias"]
            s[f"{o}.mlp.0.weight"], s[f"{o}.mlp.0.bias"] = hf[f"{p}.fc1.weight"], hf[f"{p}.fc1.bias"]
            s[f"{o}.mlp.2.weight"], s[f"{o}.mlp.2.bias"] = hf[f"{p}.fc2.weight"], hf[f"{p}.fc2.bias"]
            if side == "decoder":
                c = f"{p}.encoder_attn"
                s[f"{o}.cross_ln.weight"], s[f"{o}.cross_ln.bias"] = hf[f"{p}.encoder_attn_layer_norm.weight"], hf[f"{p}.encoder_attn_layer_norm.bias"]
                s[f"{o}.cross.q.weight"], s[f"{o}.cross.q.bias"] = hf[f"{c}.q_proj.weight"], hf[f"{c}.q_proj.bias"]
                kb = torch.zeros_like(hf[f"{c}.v_proj.bias"])
                s[f"{o}.cross.kv.weight"] = torch.cat([hf[f"{c}.k_proj.weight"], hf[f"{c}.v_proj.weight"]])
                s[f"{o}.cross.kv.bias"] = torch.cat([kb, hf[f"{c}.v_proj.bias"]])
                s[f"{o}.cross.out.weight"], s[f"{o}.cross.out.bias"] = hf[f"{c}.out_proj.weight"], hf[f"{c}.out_proj.bias"]
    return dims, s


def build(dims: Dims, state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32) -> Whisper:
    """A ready model: weights in ``dtype`` on ``device`` (the log-mel stays float32)."""
    with torch.device("meta"):
        model = Whisper(dims)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    # The mel filters and window are computed, not loaded.
    missing = [k for k in missing if not k.startswith("mel.")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.mel = type(model.mel)(dims.n_mels).to(device)
    model.encoder.to(dtype)
    model.decoder.to(dtype)
    return model.eval()


def load_model_dir(model_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Whisper:
    """model.bin (CTranslate2) or model.safetensors / pytorch_model.bin (Hugging Face)."""
    model_dir = Path(model_dir)
    if (model_dir / "model.bin").exists():
        dims, state = state_dict_from_ct2(model_dir / "model.bin")
    elif (model_dir / "model.safetensors").exists():
        from safetensors.torch import load_file

        dims, state = state_dict_from_hf(load_file(str(model_dir / "model.safetensors")))
    elif (model_dir / "pytorch_model.bin").exists():
        dims, state = state_dict_from_hf(torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True))
    else:
        raise FileNotFoundError(f"{model_dir}: no model.bin, model.safetensors or pytorch_model.bin")
    cfg = model_dir / "config.json"
    if cfg.exists():  # HF configs name the head counts; trust them over the 64-dim guess
        c = json.loads(cfg.read_text())
        if "encoder_attention_heads" in c:
            from dataclasses import replace

            dims = replace(dims, n_audio_head=c["encoder_attention_heads"], n_text_head=c["decoder_attention_heads"])
    return build(dims, state, device, dtype)
