"""LoRA merge (peft) and the Hugging Face -> openai/whisper checkpoint layout, on a tiny random Whisper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from whisper_engines import checkpoint

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

LORA_R = 4
LORA_ALPHA = 16


def _tiny_config():
    return transformers.WhisperConfig(
        vocab_size=51866, num_mel_bins=128, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=448,
    )


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = transformers.WhisperForConditionalGeneration(_tiny_config())
    base.save_pretrained(root / "base")
    # init_lora_weights=False: B is random too, so the merge changes the weights (B=0 would not).
    config = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"],
                             init_lora_weights=False)
    peft.get_peft_model(transformers.WhisperForConditionalGeneration.from_pretrained(root / "base"),
                        config).save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def test_merge_equals_base_plus_scaled_lora_product(base_and_adapter: tuple[Path, Path]) -> None:
    base_dir, adapter_dir = base_and_adapter
    base = transformers.WhisperForConditionalGeneration.from_pretrained(base_dir).state_dict()
    adapter = peft.load_peft_weights(str(adapter_dir))
    merged = checkpoint.load_merged_model(base_dir, adapter_dir).state_dict()

    scale = LORA_ALPHA / LORA_R
    adapted = 0
    for name, weight in base.items():
        prefix = name.removesuffix(".weight")
        a_key = f"base_model.model.{prefix}.lora_A.weight"
        if a_key in adapter:
            b = adapter[f"base_model.model.{prefix}.lora_B.weight"]
            expected = weight + scale * (b @ adapter[a_key])
            torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(merged[name], weight)
            adapted += 1
        else:
            torch.testing.assert_close(merged[name], weight)
    # q_proj and v_proj in 2 encoder self-attn + 2 decoder self-attn + 2 decoder cross-attn layers.
    assert adapted == 2 * 2 * 3
    assert set(merged) == set(base)


def test_openai_checkpoint_layout(base_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    base_dir, adapter_dir = base_and_adapter
    path = checkpoint.prepare_checkpoint(base_dir, tmp_path, "large-v3", lora_dir=adapter_dir)
    assert path == tmp_path / "large-v3.pt"
    saved = torch.load(path, map_location="cpu")
    assert saved["dims"] == {
        "n_mels": 128, "n_vocab": 51866, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2,
        "n_audio_layer": 2, "n_text_ctx": 448, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 2,
    }
    state = saved["model_state_dict"]
    assert all(t.dtype == torch.float16 for t in state.values())
    # Every name TensorRT-LLM's whisper converter reads (openai/whisper's module tree).
    expected = {"encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight", "encoder.conv2.bias",
                "encoder.ln_post.weight", "encoder.ln_post.bias", "encoder.positional_embedding",
                "decoder.token_embedding.weight", "decoder.positional_embedding", "decoder.ln.weight",
                "decoder.ln.bias"}
    for side in ("encoder", "decoder"):
        attns = ("attn", "cross_attn") if side == "decoder" else ("attn",)
        for i in range(2):
            block = f"{side}.blocks.{i}"
            for attn in attns:
                expected |= {f"{block}.{attn}.{p}.weight" for p in ("query", "key", "value", "out")}
                expected |= {f"{block}.{attn}.{p}.bias" for p in ("query", "value", "out")}
                expected |= {f"{block}.{attn}_ln.weight", f"{block}.{attn}_ln.bias"}
            expected |= {f"{block}.mlp.{j}.{k}" for j in (0, 2) for k in ("weight", "bias")}
            expected |= {f"{block}.mlp_ln.weight", f"{block}.mlp_ln.bias"}
    assert set(state) == expected
    # The merged LoRA weights are what got written, not the base ones.
    merged = checkpoint.load_merged_model(base_dir, adapter_dir).state_dict()
    torch.testing.assert_close(state["decoder.blocks.1.cross_attn.value.weight"],
                               merged["model.decoder.layers.1.encoder_attn.v_proj.weight"].half())
    assert state["encoder.conv1.weight"].shape == (32, 128, 3)


def test_unknown_weight_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="model.encoder.something_new"):
        checkpoint.openai_name("model.encoder.something_new.weight")
    assert re.fullmatch(r"decoder\.blocks\.3\.cross_attn\.key\.weight",
                        checkpoint.openai_name("model.decoder.layers.3.encoder_attn.k_proj.weight"))
