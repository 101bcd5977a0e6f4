"""The exact TensorRT-LLM commands a build runs, derived from one EngineBuildSpec.

Pure functions returning argv lists, so tests check every flag without a GPU, and the build
prints them before running them (``--dry-run`` prints and stops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whisper_contract.engine_spec import EngineBuildSpec

# Whisper's encoder reads 30 s of log-mel frames (100 per second); TensorRT-LLM's whisper
# recipe sizes the encoder and the decoder's cross-attention input with this number.
MEL_FRAMES = 3000
# large-v3 and large-v3-turbo both take 128 mel bins (large-v2 and older: 80).
N_MELS = {"large-v3": 128, "large-v3-turbo": 128}


@dataclass(frozen=True)
class BuildPaths:
    """Where each stage reads and writes inside the build's scratch folder."""

    work: Path

    @property
    def base_dir(self) -> Path:  # Hugging Face weights from the model bucket
        return self.work / "hf-base"

    @property
    def lora_dir(self) -> Path:  # PEFT adapter from the model bucket (optional)
        return self.work / "lora"

    @property
    def openai_dir(self) -> Path:  # <model_name>.pt for convert_checkpoint.py
        return self.work / "openai"

    @property
    def trtllm_checkpoint(self) -> Path:
        return self.work / "trtllm-checkpoint"

    @property
    def artifact(self) -> Path:  # everything under here is uploaded, nothing else
        return self.work / "artifact"

    @property
    def encoder_engine(self) -> Path:
        return self.artifact / "engines" / "encoder"

    @property
    def decoder_engine(self) -> Path:
        return self.artifact / "engines" / "decoder"

    @property
    def triton_repo(self) -> Path:
        return self.artifact / "triton"


@dataclass(frozen=True)
class Tools:
    """Where TensorRT-LLM's tools live in the build image (see Dockerfile)."""

    python: str = "python3"
    convert_script: str = "/opt/tensorrt_llm/examples/models/core/whisper/convert_checkpoint.py"
    trtllm_build: str = "trtllm-build"


def convert_command(spec: EngineBuildSpec, paths: BuildPaths, tools: Tools) -> list[str]:
    cmd = [
        tools.python, tools.convert_script,
        "--model_dir", str(paths.openai_dir),
        "--model_name", spec.model_name,
        "--dtype", spec.dtype,
        "--output_dir", str(paths.trtllm_checkpoint),
    ]
    if spec.weight_only != "none":
        cmd += ["--use_weight_only", "--weight_only_precision", spec.weight_only]
    return cmd


def encoder_build_command(spec: EngineBuildSpec, paths: BuildPaths, tools: Tools) -> list[str]:
    return [
        tools.trtllm_build,
        "--checkpoint_dir", str(paths.trtllm_checkpoint / "encoder"),
        "--output_dir", str(paths.encoder_engine),
        "--moe_plugin", "disable",
        "--max_batch_size", str(spec.max_batch),
        # The recipe: no GEMM plugin for the encoder, BERT attention plugin in the model dtype.
        "--gemm_plugin", "disable",
        "--bert_attention_plugin", spec.dtype,
        "--max_input_len", str(MEL_FRAMES),
        "--max_seq_len", str(MEL_FRAMES),
    ]


def decoder_build_command(spec: EngineBuildSpec, paths: BuildPaths, tools: Tools) -> list[str]:
    return [
        tools.trtllm_build,
        "--checkpoint_dir", str(paths.trtllm_checkpoint / "decoder"),
        "--output_dir", str(paths.decoder_engine),
        "--moe_plugin", "disable",
        "--max_beam_width", str(spec.max_beam),
        "--max_batch_size", str(spec.max_batch),
        # Prompt tokens plus generated tokens: the decoder's whole sequence.
        "--max_seq_len", str(spec.max_input_len + spec.max_output_len),
        "--max_input_len", str(spec.max_input_len),
        "--max_encoder_input_len", str(MEL_FRAMES),
        "--gemm_plugin", spec.dtype,
        "--bert_attention_plugin", spec.dtype,
        "--gpt_attention_plugin", spec.dtype,
        # Paged KV cache and packed inputs: what the C++ runtime's in-flight batching needs.
        "--paged_kv_cache", "enable",
        "--remove_input_padding", "enable",
    ]
