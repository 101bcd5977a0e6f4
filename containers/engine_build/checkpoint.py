"""Model weights before TensorRT-LLM: merge a LoRA adapter, then write the OpenAI layout.

TensorRT-LLM's whisper ``convert_checkpoint.py`` reads ``<model_dir>/<model_name>.pt`` in the
layout of openai/whisper (``{"dims": ..., "model_state_dict": ...}``), while fine-tuned models
and adapters come in the Hugging Face layout. Both steps run on CPU, so they are tested here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

# Hugging Face WhisperForConditionalGeneration name -> openai/whisper name, applied in order.
# The inverse of the table in transformers' (no longer shipped) convert_openai_to_hf.py.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"^model\.encoder\.conv", "encoder.conv"),
    (r"\.self_attn\.q_proj\.", ".attn.query."),
    (r"\.self_attn\.k_proj\.", ".attn.key."),
    (r"\.self_attn\.v_proj\.", ".attn.value."),
    (r"\.self_attn\.out_proj\.", ".attn.out."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn\.q_proj\.", ".cross_attn.query."),
    (r"\.encoder_attn\.k_proj\.", ".cross_attn.key."),
    (r"\.encoder_attn\.v_proj\.", ".cross_attn.value."),
    (r"\.encoder_attn\.out_proj\.", ".cross_attn.out."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
)
# The output projection is tied to the token embedding in Whisper; openai/whisper has no copy.
_DROPPED = ("proj_out.weight",)


def openai_name(hf_name: str) -> str:
    name = hf_name
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    if name.startswith("model."):
        raise KeyError(f"no openai/whisper name for Hugging Face weight {hf_name!r}")
    return name


def openai_dims(hf_config: Any) -> dict[str, int]:
    """The ``dims`` block of an openai/whisper checkpoint, from a transformers WhisperConfig."""
    return {
        "n_mels": hf_config.num_mel_bins,
        "n_vocab": hf_config.vocab_size,
        "n_audio_ctx": hf_config.max_source_positions,
        "n_audio_state": hf_config.d_model,
        "n_audio_head": hf_config.encoder_attention_heads,
        "n_audio_layer": hf_config.encoder_layers,
        "n_text_ctx": hf_config.max_target_positions,
        "n_text_state": hf_config.d_model,
        "n_text_head": hf_config.decoder_attention_heads,
        "n_text_layer": hf_config.decoder_layers,
    }


def to_openai_state_dict(hf_state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, tensor in hf_state_dict.items():
        if name in _DROPPED:
            continue
        target = openai_name(name)
        if target in out:
            raise KeyError(f"two Hugging Face weights map to {target!r}")
        out[target] = tensor
    return out


def load_merged_model(base_dir: Path, lora_dir: Path | None = None) -> Any:
    """The base model, with the LoRA adapter merged into its weights when one is given."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    if lora_dir is not None:
        from peft import PeftModel

        # merge_and_unload folds W + scale * B @ A into each adapted Linear and returns the
        # plain transformers model, so nothing downstream knows an adapter existed.
        model = PeftModel.from_pretrained(model, str(lora_dir)).merge_and_unload()
    model.eval()
    return model


def write_openai_checkpoint(model: Any, out_dir: Path, model_name: str, dtype: str = "float16") -> Path:
    """Write ``<out_dir>/<model_name>.pt`` as convert_checkpoint.py expects it."""
    import torch

    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    state = {k: v.detach().to(torch_dtype).contiguous()
             for k, v in to_openai_state_dict(model.state_dict()).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_name}.pt"
    torch.save({"dims": openai_dims(model.config), "model_state_dict": state}, path)
    return path


def prepare_checkpoint(base_dir: Path, out_dir: Path, model_name: str, *, lora_dir: Path | None = None,
                       dtype: str = "float16") -> Path:
    """Merge (optional) and convert: the one call the build makes before TensorRT-LLM."""
    return write_openai_checkpoint(load_merged_model(base_dir, lora_dir), out_dir, model_name, dtype)
