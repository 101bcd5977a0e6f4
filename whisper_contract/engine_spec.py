"""What a TensorRT-LLM engine build produces, as the CDK app passes it to CodeBuild.

The CDK app turns per-environment config into these environment variables on the build
project; the build script (``whisper_engines``) reads them back. One dataclass, so the two
sides cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

ENGINE_MODELS = ("large-v3", "large-v3-turbo")
DTYPES = ("float16", "bfloat16")
WEIGHT_ONLY = ("none", "int8", "int4")
_PREFIX = "ENGINE_"


@dataclass(frozen=True)
class EngineBuildSpec:
    model_name: str  # Whisper architecture: large-v3 or large-v3-turbo
    model_bucket: str
    base_model_prefix: str  # Hugging Face format weights under s3://model_bucket/<prefix>
    artifact_prefix: str  # engines + Triton repository + manifest land under <prefix>/<version>/
    lora_prefix: str = ""  # optional PEFT LoRA adapter merged before conversion
    dtype: str = "float16"
    weight_only: str = "none"
    max_batch: int = 16
    max_beam: int = 4
    max_input_len: int = 14  # prompt tokens (decoder)
    max_output_len: int = 434  # 448 decoder positions (Whisper) minus max_input_len
    gpu_arch: str = "sm86"  # must equal the serving GPU's architecture (A10G = sm86)

    def __post_init__(self) -> None:
        if self.model_name not in ENGINE_MODELS:
            raise ValueError(f"model_name must be one of {ENGINE_MODELS}, got {self.model_name!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.weight_only not in WEIGHT_ONLY:
            raise ValueError(f"weight_only must be one of {WEIGHT_ONLY}, got {self.weight_only!r}")
        for name in ("max_batch", "max_beam", "max_input_len", "max_output_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_input_len + self.max_output_len > 448:
            raise ValueError("max_input_len + max_output_len must not exceed Whisper's 448 decoder positions")

    def to_env(self) -> dict[str, str]:
        return {_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "EngineBuildSpec":
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is None:
                continue
            kwargs[f.name] = int(raw) if f.type == "int" else raw
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in kwargs]
        if missing:
            raise ValueError("missing build settings: " + ", ".join(_PREFIX + m.upper() for m in missing))
        return cls(**kwargs)  # type: ignore[arg-type]
