"""The Triton model repository, generated from the build spec: no hand-edited config copies.

Two models, as in TensorRT-LLM's whisper recipe:
- ``whisper_bls`` (Python backend): audio -> log-mel -> prompt -> ``tensorrt_llm`` -> text.
  Its inputs and output keep the names, types and shapes of the upstream whisper BLS model
  (TEXT_PREFIX, WAV, WAV_LENS -> TRANSCRIPTS) and add optional decode controls and scores.
- ``tensorrt_llm`` (TensorRT-LLM backend): the encoder and decoder engines, in-flight batching.

Every number in the generated files comes from the EngineBuildSpec or from ServingConfig
(recorded in the manifest), and tests change each one to see the files follow.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from whisper_contract.engine_spec import EngineBuildSpec
from whisper_engines.commands import N_MELS

BLS_MODEL = "whisper_bls"
LLM_MODEL = "tensorrt_llm"
_HERE = Path(__file__).resolve().parent
N_FFT_BINS = 201  # mel filter rows: n_fft 400 // 2 + 1
_TRITON_DTYPE = {"float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}


@dataclass(frozen=True)
class ServingConfig:
    """Triton-side settings that do not change the engines (changeable without a rebuild)."""

    kv_cache_free_gpu_mem_fraction: float = 0.5
    cross_kv_cache_fraction: float = 0.5  # share of the KV cache for cross-attention (recipe: 0.5)
    bls_instances: int = 4  # Python BLS instances: feature extraction runs in parallel
    max_queue_delay_us: int = 1000  # how long Triton waits to fill a batch


class Bare(str):
    """An enum value written without quotes (``KIND_CPU``)."""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Bare):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"cannot write {value!r} in protobuf text format")


def to_pbtxt(fields: Sequence[tuple[str, Any]], indent: int = 0) -> str:
    """Protobuf text format from (name, value) pairs; dict = message, list = repeated."""
    pad = "  " * indent
    lines: list[str] = []
    for name, value in fields:
        if isinstance(value, dict):
            lines.append(f"{pad}{name} {{")
            lines.append(to_pbtxt(list(value.items()), indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{name} [")
            items = [f"{pad}  {{\n{to_pbtxt(list(item.items()), indent + 2)}\n{pad}  }}" for item in value]
            lines.append(",\n".join(items))
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [ {', '.join(_value(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_value(value)}")
    return "\n".join(line for line in lines if line)


def _tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "data_type": Bare(dtype), "dims": dims}
    if optional:
        out["optional"] = True
    return out


def _parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def bls_config(spec: EngineBuildSpec, serving: ServingConfig) -> str:
    fields: list[tuple[str, Any]] = [
        ("name", BLS_MODEL),
        ("backend", "python"),
        ("max_batch_size", spec.max_batch),
        ("input", [
            _tensor("TEXT_PREFIX", "TYPE_STRING", [1]),
            _tensor("WAV", "TYPE_FP32", [-1]),
            _tensor("WAV_LENS", "TYPE_INT32", [1], optional=True),
            # Ours, optional: beam width (1 = greedy), sampling temperature, decode length cap.
            _tensor("BEAM_WIDTH", "TYPE_INT32", [1], optional=True),
            _tensor("TEMPERATURE", "TYPE_FP32", [1], optional=True),
            _tensor("MAX_NEW_TOKENS", "TYPE_INT32", [1], optional=True),
        ]),
        ("output", [
            _tensor("TRANSCRIPTS", "TYPE_STRING", [1]),
            # Ours: for Whisper's avg_logprob and language probability.
            _tensor("LOGPROB_SUM", "TYPE_FP32", [1]),
            _tensor("TOKEN_COUNT", "TYPE_INT32", [1]),
        ]),
        ("parameters", _parameters({
            "n_mels": N_MELS[spec.model_name],
            "max_input_len": spec.max_input_len,
            "max_output_len": spec.max_output_len,
            "max_beam": spec.max_beam,
            "feature_dtype": spec.dtype,
            "llm_model": LLM_MODEL,
        })),
        ("dynamic_batching", {"max_queue_delay_microseconds": serving.max_queue_delay_us}),
        ("instance_group", [{"count": serving.bls_instances, "kind": Bare("KIND_CPU")}]),
    ]
    return to_pbtxt(fields) + "\n"


def llm_config(spec: EngineBuildSpec, serving: ServingConfig, model_root: str) -> str:
    feature_type = _TRITON_DTYPE[spec.dtype]
    fields: list[tuple[str, Any]] = [
        ("name", LLM_MODEL),
        ("backend", "tensorrtllm"),
        ("max_batch_size", spec.max_batch),
        ("model_transaction_policy", {"decoupled": False}),
        ("dynamic_batching", {
            "preferred_batch_size": [spec.max_batch],
            "max_queue_delay_microseconds": serving.max_queue_delay_us,
        }),
        ("input", [
            _tensor("encoder_input_features", feature_type, [-1, -1], optional=True),
            _tensor("encoder_output_lengths", "TYPE_INT32", [1], optional=True),
            _tensor("input_lengths", "TYPE_INT32", [1]),
            _tensor("request_output_len", "TYPE_INT32", [1]),
            _tensor("decoder_input_ids", "TYPE_INT32", [-1], optional=True),
            _tensor("decoder_input_lengths", "TYPE_INT32", [1], optional=True),
            _tensor("end_id", "TYPE_INT32", [1], optional=True),
            _tensor("pad_id", "TYPE_INT32", [1], optional=True),
            _tensor("beam_width", "TYPE_INT32", [1], optional=True),
            _tensor("temperature", "TYPE_FP32", [1], optional=True),
            _tensor("runtime_top_k", "TYPE_INT32", [1], optional=True),
            _tensor("runtime_top_p", "TYPE_FP32", [1], optional=True),
            _tensor("random_seed", "TYPE_UINT64", [1], optional=True),
            _tensor("return_log_probs", "TYPE_BOOL", [1], optional=True),
            _tensor("exclude_input_in_output", "TYPE_BOOL", [1], optional=True),
            _tensor("streaming", "TYPE_BOOL", [1], optional=True),
        ]),
        ("output", [
            _tensor("output_ids", "TYPE_INT32", [-1, -1]),
            _tensor("sequence_length", "TYPE_INT32", [-1]),
            _tensor("cum_log_probs", "TYPE_FP32", [-1]),
            _tensor("output_log_probs", "TYPE_FP32", [-1, -1]),
        ]),
        ("instance_group", [{"count": 1, "kind": Bare("KIND_CPU")}]),
        ("parameters", _parameters({
            "max_beam_width": spec.max_beam,
            "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
            "gpt_model_type": "inflight_fused_batching",
            "gpt_model_path": f"{model_root}/engines/decoder",
            "encoder_model_path": f"{model_root}/engines/encoder",
            # Enough KV cache for every sequence of a full batch at full beam and length.
            "max_tokens_in_paged_kv_cache": spec.max_batch * spec.max_beam
            * (spec.max_input_len + spec.max_output_len),
            "max_attention_window_size": spec.max_input_len + spec.max_output_len,
            "batch_scheduler_policy": "guaranteed_no_evict",
            "kv_cache_free_gpu_mem_fraction": serving.kv_cache_free_gpu_mem_fraction,
            "cross_kv_cache_fraction": serving.cross_kv_cache_fraction,
            "exclude_input_in_output": "true",
            "enable_kv_cache_reuse": "false",
            "enable_chunked_context": "false",
            "normalize_log_probs": "false",
            "encoder_input_features_data_type": feature_type,
            "logits_datatype": "TYPE_FP32",
        })),
    ]
    return to_pbtxt(fields) + "\n"


def write_repository(out: Path, spec: EngineBuildSpec, *, model_root: str, tokenizer_json: Path,
                     mel_filters: np.ndarray, serving: ServingConfig = ServingConfig()) -> Path:
    """Write the complete repository under ``out``; returns ``out``.

    ``model_root`` is the absolute folder the engines sit under at serving time (SageMaker
    unpacks the artifact to /opt/ml/model); the Triton backend relocates it if it differs.
    """
    if not model_root.startswith("/"):
        raise ValueError(f"model_root must be absolute, got {model_root!r}")
    n_mels = N_MELS[spec.model_name]
    if mel_filters.shape != (N_FFT_BINS, n_mels):
        raise ValueError(f"mel filters must be ({N_FFT_BINS}, {n_mels}) for {spec.model_name}, "
                         f"got {mel_filters.shape}")
    bls = out / BLS_MODEL
    (bls / "1").mkdir(parents=True, exist_ok=True)
    (bls / "config.pbtxt").write_text(bls_config(spec, serving))
    shutil.copyfile(_HERE / "bls_model.py", bls / "1" / "model.py")
    shutil.copyfile(_HERE / "bls_features.py", bls / "1" / "bls_features.py")
    shutil.copyfile(tokenizer_json, bls / "1" / "tokenizer.json")
    np.save(bls / "1" / "mel_filters.npy", mel_filters.astype(np.float32))
    llm = out / LLM_MODEL
    (llm / "1").mkdir(parents=True, exist_ok=True)
    (llm / "config.pbtxt").write_text(llm_config(spec, serving, model_root.rstrip("/")))
    # Triton needs the version folder; the tensorrtllm backend reads the engines elsewhere.
    (llm / "1" / ".keep").write_text("")
    return out

