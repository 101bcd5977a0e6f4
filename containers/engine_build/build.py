"""One engine build, start to finish, as the CodeBuild project runs it.

download weights (+ LoRA) -> merge + OpenAI-format checkpoint -> convert_checkpoint.py ->
trtllm-build encoder/decoder -> Triton repository -> verify on this GPU -> manifest -> upload.

The compile commands go through a ``Runner`` so tests (and ``--dry-run``) see the exact argv
without TensorRT-LLM; the GPU probe and the verification are injected for the same reason.
"""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from whisper_contract.engine_spec import MANIFEST_NAME, EngineBuildSpec, EngineManifest
from whisper_engines import storage
from whisper_engines.checkpoint import prepare_checkpoint
from whisper_engines.commands import BuildPaths, Tools, convert_command, decoder_build_command, encoder_build_command
from whisper_engines.repository import ServingConfig, write_repository

SERVE_ROOT = "/opt/ml/model"  # where SageMaker puts the model data in the serving container


class BuildFailed(RuntimeError):
    """The build must stop and nothing may be uploaded."""


class Runner(Protocol):
    def __call__(self, cmd: list[str]) -> None: ...


def run_command(cmd: list[str]) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    arch: str  # "sm86"


def probe_gpu() -> GpuInfo:
    """The build GPU, from nvidia-smi (compute capability 8.6 -> sm86)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()
    name, cap = (part.strip() for part in out[0].split(","))
    return GpuInfo(name=name, arch="sm" + cap.replace(".", ""))


def tensorrt_llm_version() -> str:
    from importlib.metadata import version

    return version("tensorrt_llm")


@dataclass(frozen=True)
class BuildContext:
    spec: EngineBuildSpec
    paths: BuildPaths
    tools: Tools
    version: str
    git_revision: str
    model_root: str = SERVE_ROOT
    serving: ServingConfig = ServingConfig()


def default_version(git_revision: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{git_revision[:7]}" if git_revision and git_revision != "unknown" else stamp


def plan(ctx: BuildContext) -> list[list[str]]:
    """The compile commands of this build, in order (what ``--dry-run`` prints)."""
    return [convert_command(ctx.spec, ctx.paths, ctx.tools),
            encoder_build_command(ctx.spec, ctx.paths, ctx.tools),
            decoder_build_command(ctx.spec, ctx.paths, ctx.tools)]


def run_build(ctx: BuildContext, *, s3: Any, runner: Runner = run_command,
              gpu: Callable[[], GpuInfo] = probe_gpu, trtllm_version: Callable[[], str] = tensorrt_llm_version,
              verify: Callable[[Path], Mapping[str, object]] | None = None,
              log: Callable[[str], None] = print) -> EngineManifest:
    spec, paths = ctx.spec, ctx.paths
    # Fail before hours of work: engines only run on the GPU architecture that built them.
    info = gpu()
    if spec.gpu_arch and info.arch != spec.gpu_arch:
        raise BuildFailed(f"this build GPU is {info.name} ({info.arch}) but the serving GPU is {spec.gpu_arch}; "
                          "engines built here would not load there")
    key_prefix = storage.artifact_prefix(spec.artifact_prefix, ctx.version)
    if s3.list_objects_v2(Bucket=spec.model_bucket, Prefix=key_prefix + MANIFEST_NAME).get("KeyCount", 0):
        raise BuildFailed(f"s3://{spec.model_bucket}/{key_prefix} already holds a finished artifact")

    log(f"downloading s3://{spec.model_bucket}/{spec.base_model_prefix}")
    storage.download_prefix(s3, spec.model_bucket, spec.base_model_prefix, paths.base_dir)
    lora_dir = None
    if spec.lora_prefix:
        log(f"downloading LoRA adapter s3://{spec.model_bucket}/{spec.lora_prefix}")
        storage.download_prefix(s3, spec.model_bucket, spec.lora_prefix, paths.lora_dir)
        lora_dir = paths.lora_dir
    log("merging and converting to the openai/whisper checkpoint layout")
    prepare_checkpoint(paths.base_dir, paths.openai_dir, spec.model_name, lora_dir=lora_dir, dtype=spec.dtype)

    for cmd in plan(ctx):
        runner(cmd)
    for engine in (paths.encoder_engine, paths.decoder_engine):
        if not (engine / "config.json").is_file():
            raise BuildFailed(f"trtllm-build left no engine in {engine}")

    from transformers import WhisperFeatureExtractor

    mel_filters = WhisperFeatureExtractor.from_pretrained(str(paths.base_dir)).mel_filters
    write_repository(paths.triton_repo, spec, model_root=ctx.model_root,
                     tokenizer_json=paths.base_dir / "tokenizer.json", mel_filters=mel_filters, serving=ctx.serving)

    def manifest(verification: Mapping[str, object]) -> EngineManifest:
        return EngineManifest(
            spec=spec, version=ctx.version, tensorrt_llm_version=trtllm_version(), gpu_name=info.name,
            gpu_arch=info.arch, git_revision=ctx.git_revision,
            built_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            model_root=ctx.model_root, checksums=storage.checksums(paths.artifact),
            verification=dict(verification),
        )

    # The serving backend reads the manifest, so verification runs against a provisional one.
    (paths.artifact / MANIFEST_NAME).write_text(manifest({"passed": False, "pending": True}).to_json())
    result = dict(verify(paths.artifact)) if verify is not None else {"passed": False, "skipped": True}
    if verify is not None and not result.get("passed"):
        raise BuildFailed(f"verification failed, nothing uploaded: {result}")
    final = manifest(result)
    (paths.artifact / MANIFEST_NAME).write_text(final.to_json())
    log(f"uploading to s3://{spec.model_bucket}/{key_prefix}")
    storage.upload_artifact(s3, paths.artifact, spec.model_bucket, key_prefix, final)
    log(f"done: s3://{spec.model_bucket}/{key_prefix} (verification: {result})")
    return final
