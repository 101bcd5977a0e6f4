"""What a TensorRT-LLM engine build produces, as the CDK app passes it to CodeBuild.

The CDK app turns per-environment config into these environment variables on the build
project; the build script (``whisper_engines``) reads them back. One dataclass, so the two
sides cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
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


MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class EngineManifest:
    """What a finished engine build contains, written last next to the engines.

    The build writes it after every other file is uploaded, so an artifact version without a
    manifest is an incomplete one. The Triton backend reads it to know the limits the engines
    were built with (batch, beam, lengths) and where the Triton configs expect the files.
    """

    spec: EngineBuildSpec
    version: str  # the artifact version: <artifact_prefix>/<version>/
    tensorrt_llm_version: str
    gpu_name: str  # e.g. "NVIDIA A10G", from the build GPU
    gpu_arch: str  # measured on the build GPU, e.g. "sm86"; the serving GPU must match
    git_revision: str
    built_at: str  # ISO-8601 UTC
    model_root: str  # absolute path the Triton configs point at (SageMaker: /opt/ml/model)
    checksums: Mapping[str, str]  # path relative to the artifact root -> sha256 hex
    verification: Mapping[str, object]  # clip, reference, hypothesis, wer, passed
    schema_version: str = MANIFEST_SCHEMA_VERSION

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["checksums"] = dict(sorted(self.checksums.items()))
        data["verification"] = dict(self.verification)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "EngineManifest":
        data = json.loads(text)
        if str(data.get("schema_version")) != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"engine manifest schema {data.get('schema_version')!r} is not supported")
        data["spec"] = EngineBuildSpec(**data["spec"])
        return cls(**data)
