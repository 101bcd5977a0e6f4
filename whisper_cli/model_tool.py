"""``whisper-sm model``: put an environment's model into its model bucket, and the deploy guard.

    whisper-sm model --env dev --model large-v3        # hub -> convert -> upload (idempotent)
    whisper-sm model --env dev --source ./my-model      # a local folder instead of the hub
    whisper-sm model --env dev --check                  # what `make deploy` runs before the endpoint

Runs on the user's machine (internet for the hub). The form depends on the environment's
``backend``/``packaging`` in cdk.json: faster-whisper gets a CTranslate2 folder converted with
the environment's ``compute_type`` as quantization; torch gets the Hugging Face safetensors as
published; triton gets them at ``engine_build.base_model_prefix`` for the engine build; dlc gets
``make package-dlc``'s tarball. Every file is uploaded with its sha256 in the object metadata,
then the manifest (whisper_contract.model_manifest) last; a file whose remote sha256 already
matches is not uploaded again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stacks.config import EnvConfig, load_env_config
from whisper_contract.engine_spec import MANIFEST_NAME as ENGINE_MANIFEST_NAME
from whisper_contract.engine_spec import EngineManifest
from whisper_contract.model_manifest import (
    MANIFEST_NAME, SHA256_METADATA, ModelFile, ModelManifest, manifest_key, object_key, sha256_file,
)

# stacks/application.py names stacks f"{APP_NAME}-{env}-<Part>"; stacks/storage.py has the output.
STORAGE_STACK = "Whisper-{env}-Storage"
MODEL_BUCKET_OUTPUT = "ModelBucketName"
MODEL_BUCKET_ENV = "WHISPER_MODEL_BUCKET"  # overrides the stack output (a hand-built deployment)
# What a Whisper checkpoint needs from the hub: config, tokenizer, preprocessor, the safetensors
# weights. The openai repos also carry fp32 shards, .bin, msgpack and h5 copies of the same weights.
HF_ALLOW = ("*.json", "*.txt", "*.safetensors")
HF_IGNORE = ("*.fp32*", ".*")
# Copied next to CTranslate2's model.bin: faster-whisper reads the tokenizer and the mel size
# (preprocessor_config.json: large-v3 has 128 mel bins, earlier models 80).
CT2_COPY = ("tokenizer.json", "preprocessor_config.json")
EXIT_OK, EXIT_MISSING, EXIT_ENGINES_MISSING = 0, 1, 3


@dataclass(frozen=True)
class ModelTarget:
    """Where an environment's endpoint (or engine build) reads its model, and in what form."""

    env: str
    model_id: str
    backend: str
    location: str  # prefix (ends with /) or a .tar.gz key in the model bucket
    format: str  # ModelManifest.format
    quantization: str  # CTranslate2 quantization applied on conversion, or "none"

    @classmethod
    def of(cls, cfg: EnvConfig) -> "ModelTarget":
        quantization = "none" if cfg.compute_type == "default" else cfg.compute_type
        if cfg.packaging == "dlc":
            return cls(cfg.name, cfg.model_id, cfg.backend, cfg.model_data_key, "dlc-tarball", quantization)
        if cfg.backend == "faster-whisper":
            return cls(cfg.name, cfg.model_id, cfg.backend, cfg.model_data_key, "ctranslate2", quantization)
        if cfg.backend == "torch":
            return cls(cfg.name, cfg.model_id, cfg.backend, cfg.model_data_key, "huggingface", "none")
        assert cfg.engine_build is not None  # config validation requires it for triton
        return cls(cfg.name, cfg.model_id, cfg.backend, cfg.engine_build.base_model_prefix, "huggingface", "none")

    @property
    def accepts(self) -> tuple[str, ...]:
        """Forms the backend loads (torch_convert reads CTranslate2's model.bin too)."""
        return ("huggingface", "ctranslate2") if self.backend == "torch" and self.format == "huggingface" \
            else (self.format,)

    @property
    def make_command(self) -> str:
        return f"make model ENV={self.env} MODEL={self.model_id}"


def hub_repo(model: str) -> str:
    """``large-v3`` -> ``openai/whisper-large-v3``; a full ``owner/name`` is taken as is."""
    return model if "/" in model else f"openai/whisper-{model}"


# --- local files ------------------------------------------------------------------------
def source_kind(path: Path) -> str:
    if path.is_file() and path.name.endswith(".tar.gz"):
        return "dlc-tarball"
    if (path / "model.bin").is_file() and (path / "config.json").is_file():
        return "ctranslate2"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "huggingface"
    raise ValueError(f"{path} is neither a CTranslate2 Whisper folder (config.json + model.bin), a Hugging Face "
                     "checkpoint (config.json + *.safetensors) nor a model.tar.gz from `make package-dlc`")


def model_files(path: Path, target: ModelTarget) -> dict[str, Path]:
    """Relative path -> local file of what gets uploaded (hidden files and old manifests left out).
    A tarball is uploaded under the name the endpoint reads, whatever it is called locally."""
    if path.is_file():
        return {target.location.rsplit("/", 1)[-1]: path}
    fmt = source_kind(path)
    files = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in Path(rel).parts) or p.name == MANIFEST_NAME:
            continue
        if fmt == "huggingface" and not (any(fnmatch.fnmatch(p.name, a) for a in HF_ALLOW)
                                         and not any(fnmatch.fnmatch(p.name, i) for i in HF_IGNORE)):
            continue
        files[rel] = p
    return files


def fetch(model: str, revision: str | None, cache_dir: Path | None = None) -> tuple[Path, str, str]:
    """Download a checkpoint from the Hugging Face hub: (folder, repo id, commit sha)."""
    from huggingface_hub import HfApi, snapshot_download

    repo = hub_repo(model)
    sha = HfApi().model_info(repo, revision=revision).sha or revision or "main"
    folder = snapshot_download(repo, revision=sha, cache_dir=cache_dir, allow_patterns=list(HF_ALLOW),
                               ignore_patterns=list(HF_IGNORE))
    return Path(folder), repo, sha


def convert_to_ct2(hf_dir: Path, out_dir: Path, quantization: str) -> Path:
    """CTranslate2 conversion, as faster-whisper's own docs do it (ct2-transformers-converter)."""
    from ctranslate2.converters import TransformersConverter

    copy = [name for name in CT2_COPY if (hf_dir / name).is_file()]
    TransformersConverter(str(hf_dir), copy_files=copy).convert(
        str(out_dir), quantization=None if quantization == "none" else quantization, force=True)
    return out_dir


def prepare(target: ModelTarget, source: Path, work_dir: Path,
            log: Callable[[str], None] = print) -> tuple[Path, str]:
    """The folder (or tarball) to upload for ``target``, converted from ``source`` if needed,
    and the quantization that conversion applied ("as-provided" when none ran)."""
    kind = source_kind(source)
    if target.format == "dlc-tarball":
        if kind == "dlc-tarball":
            return source, "as-provided"
        from whisper_server.package_dlc import build

        ct2, quantization = (source, "as-provided") if kind == "ctranslate2" else prepare(
            ModelTarget(target.env, target.model_id, "faster-whisper", "", "ctranslate2", target.quantization),
            source, work_dir, log)
        log(f"packaging {ct2} for the stock SageMaker PyTorch container")
        return build(ct2, work_dir / Path(target.location).name), quantization
    if kind in target.accepts:
        return source, "as-provided"
    if target.format == "ctranslate2" and kind == "huggingface":
        log(f"converting {source} to CTranslate2 (quantization {target.quantization})")
        return convert_to_ct2(source, work_dir / "ct2", target.quantization), target.quantization
    raise ValueError(f"backend {target.backend!r} needs a {target.format} model; {source} is {kind}")


def build_manifest(target: ModelTarget, ready: Path, files: dict[str, Path], *, model_id: str, source: str,
                   revision: str, quantization: str) -> ModelManifest:
    return ModelManifest(
        model_id=model_id, backend=target.backend, format=source_kind(ready), source=source, revision=revision,
        quantization=quantization,
        files=tuple(ModelFile(rel, p.stat().st_size, sha256_file(p)) for rel, p in sorted(files.items())),
        created_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


# --- S3 ---------------------------------------------------------------------------------
def model_bucket(cloudformation: Any, env: str) -> str:
    """The Storage stack's model bucket (CloudFormation DescribeStacks), or $WHISPER_MODEL_BUCKET."""
    if os.environ.get(MODEL_BUCKET_ENV):
        return os.environ[MODEL_BUCKET_ENV]
    stack = STORAGE_STACK.format(env=env)
    try:
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except cloudformation.exceptions.ClientError:
        raise RuntimeError(f"stack {stack} is not deployed; deploy it first: make deploy ENV={env}") from None
    for output in stacks[0].get("Outputs", []):
        if output["OutputKey"] == MODEL_BUCKET_OUTPUT:
            return str(output["OutputValue"])
    raise RuntimeError(f"stack {stack} has no {MODEL_BUCKET_OUTPUT} output")


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _remote_matches(s3: Any, bucket: str, key: str, entry: ModelFile) -> bool:
    head = _head(s3, bucket, key)
    return (head is not None and head["ContentLength"] == entry.size
            and head.get("Metadata", {}).get(SHA256_METADATA) == entry.sha256)


def read_manifest(s3: Any, bucket: str, location: str) -> tuple[str | None, ModelManifest | None, str]:
    """(raw text or None if absent, parsed manifest or None, parse problem)."""
    from botocore.exceptions import ClientError

    try:
        raw = s3.get_object(Bucket=bucket, Key=manifest_key(location))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None, None, ""
        raise
    try:
        return raw.decode("utf-8", "replace"), ModelManifest.from_json(raw), ""
    except ValueError as exc:
        return raw.decode("utf-8", "replace"), None, str(exc)


@dataclass
class UploadReport:
    uploaded: list[str] = field(default_factory=list)  # keys written (files, then the manifest)
    skipped: list[str] = field(default_factory=list)  # keys whose remote sha256 already matched
    removed: list[str] = field(default_factory=list)  # keys of the previous manifest no longer listed


def upload(s3: Any, bucket: str, location: str, files: dict[str, Path], manifest: ModelManifest,
           progress: Callable[[int], None] = lambda n: None) -> UploadReport:
    """Make ``location`` hold exactly ``manifest``'s files, touching only what differs.

    A manifest exists only while every file it lists is in place: when anything must change,
    the old manifest goes first and the new one is written last, so a deploy or an endpoint
    start in between sees "no model" rather than a mix of two models.
    """
    report = UploadReport()
    key_of = {f.path: object_key(location, f.path) for f in manifest.files}
    todo = [f for f in manifest.files if not _remote_matches(s3, bucket, key_of[f.path], f)]
    report.skipped = [key_of[f.path] for f in manifest.files if f not in todo]
    for f in manifest.files:
        if f not in todo:
            progress(f.size)
    _, old, _ = read_manifest(s3, bucket, location)
    stale = [object_key(location, f.path) for f in (old.files if old else ()) if f.path not in key_of]
    if not todo and not stale and old is not None and _same_model(old, manifest):
        return report  # nothing differs: not even the manifest is rewritten
    s3.delete_object(Bucket=bucket, Key=manifest_key(location))
    for f in todo:
        s3.upload_file(str(files[f.path]), bucket, key_of[f.path],
                       ExtraArgs={"Metadata": {SHA256_METADATA: f.sha256}}, Callback=progress)
        report.uploaded.append(key_of[f.path])
    for key in stale:  # SageMaker copies everything under the prefix to /opt/ml/model
        s3.delete_object(Bucket=bucket, Key=key)
        report.removed.append(key)
    s3.put_object(Bucket=bucket, Key=manifest_key(location), Body=manifest.to_json().encode(),
                  ContentType="application/json")
    report.uploaded.append(manifest_key(location))
    return report


def _same_model(a: ModelManifest, b: ModelManifest) -> bool:
    """Equal but for when it was written."""
    return a.to_json().replace(a.created_at, "") == b.to_json().replace(b.created_at, "")


# --- the deploy guard -------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    code: int  # EXIT_OK, EXIT_MISSING or EXIT_ENGINES_MISSING
    message: str


def check(s3: Any, bucket: str, cfg: EnvConfig) -> Verdict:
    """Is the model the endpoint (or, for triton, the engine build) reads complete in S3?"""
    target = ModelTarget.of(cfg)
    where = f"s3://{bucket}/{target.location}"
    fix = f"Upload it with:\n  {target.make_command}\n(from the hub; add SOURCE=<folder> to upload a local model)"
    raw, manifest, problem = read_manifest(s3, bucket, target.location)
    if raw is None:
        return Verdict(EXIT_MISSING, f"No model at {where} (no {manifest_key(target.location).rsplit('/', 1)[-1]}): "
                                     f"the endpoint of {cfg.name} would not start. {fix}")
    if manifest is None:
        return Verdict(EXIT_MISSING, f"s3://{bucket}/{manifest_key(target.location)} is not a valid model manifest "
                                     f"({problem}). {fix}")
    if manifest.model_id != cfg.model_id:
        return Verdict(EXIT_MISSING, f"The model at {where} is {manifest.model_id}, but cdk.json says model_id "
                                     f"{cfg.model_id} for {cfg.name}. {fix}")
    if manifest.format not in target.accepts:
        return Verdict(EXIT_MISSING, f"The model at {where} is a {manifest.format} model (prepared for backend "
                                     f"{manifest.backend}), but {cfg.name} uses backend {target.backend}, which loads "
                                     f"{' or '.join(target.accepts)}. {fix}")
    for f in manifest.files:
        if not _remote_matches(s3, bucket, object_key(target.location, f.path), f):
            return Verdict(EXIT_MISSING, f"s3://{bucket}/{object_key(target.location, f.path)} is missing or does "
                                         f"not match the manifest (size {f.size}, sha256 {f.sha256[:12]}…). {fix}")
    ok = (f"Model ok: {where} holds {manifest.model_id} for {manifest.backend} ({manifest.format}, "
          f"quantization {manifest.quantization}), {len(manifest.files)} files, {manifest.total_bytes / 1e9:.2f} GB, "
          f"from {manifest.source}@{manifest.revision}.")
    if cfg.backend != "triton":
        return Verdict(EXIT_OK, ok)
    return _check_engines(s3, bucket, cfg, ok)


def _check_engines(s3: Any, bucket: str, cfg: EnvConfig, base_ok: str) -> Verdict:
    """triton serves a built engine artifact; its manifest.json is written last by the build."""
    from botocore.exceptions import ClientError

    assert cfg.engine_build is not None
    location = cfg.model_data_prefix_or_key
    version = cfg.engine_build.serve_version
    build = (f"Build them (the EngineBuild stack is deployed now):\n"
             f"  .venv/bin/python -m whisper_engines start-build --env {cfg.name} --version {version} --wait\n"
             f"then run make deploy ENV={cfg.name} again.")
    try:
        raw = s3.get_object(Bucket=bucket, Key=location + ENGINE_MANIFEST_NAME)["Body"].read()
    except ClientError:
        return Verdict(EXIT_ENGINES_MISSING, f"{base_ok}\nNo engines at s3://{bucket}/{location} "
                                             f"(engine_build.serve_version {version}). {build}")
    try:
        passed = EngineManifest.from_json(raw).verification.get("passed") is True
    except (ValueError, TypeError, KeyError) as exc:
        return Verdict(EXIT_ENGINES_MISSING, f"{base_ok}\ns3://{bucket}/{location}{ENGINE_MANIFEST_NAME} is not a "
                                             f"valid engine manifest ({exc}). {build}")
    if not passed:
        return Verdict(EXIT_ENGINES_MISSING, f"{base_ok}\nThe engines at s3://{bucket}/{location} did not pass "
                                             f"their verification. {build}")
    return Verdict(EXIT_OK, f"{base_ok}\nEngines ok: s3://{bucket}/{location}.")


# --- the command ------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="environment in cdk.json (dev, prod, ...)")
    p.add_argument("--profile", help="AWS profile")
    p.add_argument("--config", type=Path, default=Path("cdk.json"), help="the CDK app's cdk.json")
    p.add_argument("--model", help="hub model: large-v3, large-v3-turbo, ... or owner/name (default: model_id)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit; default main)")
    p.add_argument("--source", type=Path, help="a local model folder (or model.tar.gz) instead of the hub")
    p.add_argument("--check", action="store_true", help="only check the model bucket (the deploy guard)")


def run(args: argparse.Namespace) -> int:
    import boto3
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    console = Console(stderr=True, soft_wrap=True)  # messages are asserted and copied whole: no wrapping
    cfg = load_env_config(json.loads(args.config.read_text())["context"], args.env)
    session = boto3.session.Session(profile_name=args.profile)
    s3 = session.client("s3")
    bucket = model_bucket(session.client("cloudformation"), cfg.name)
    if args.check:
        verdict = check(s3, bucket, cfg)
        console.print(verdict.message, style="green" if verdict.code == EXIT_OK else "red", highlight=False)
        return verdict.code

    target = ModelTarget.of(cfg)
    with tempfile.TemporaryDirectory(prefix="whisper-model-") as tmp:
        if args.source is not None:
            source, origin, revision = args.source, str(args.source.resolve()), "local"
        else:
            with console.status(f"downloading {hub_repo(args.model or cfg.model_id)} from the Hugging Face hub"):
                source, origin, revision = fetch(args.model or cfg.model_id, args.revision)
        ready, quantization = prepare(target, source, Path(tmp), log=lambda m: console.print(m, highlight=False))
        files = model_files(ready, target)
        with console.status("checksumming"):
            manifest = build_manifest(target, ready, files, model_id=args.model or cfg.model_id, source=origin,
                                      revision=revision, quantization=quantization)
        with Progress(TextColumn("[bold]upload[/bold]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("upload", total=manifest.total_bytes)
            report = upload(s3, bucket, target.location, files, manifest, progress=lambda n: bar.advance(task, n))
    where = f"s3://{bucket}/{target.location}"
    if not report.uploaded:
        console.print(f"{where} already holds this model ({len(report.skipped)} files, same sha256): nothing uploaded")
    else:
        console.print(f"{where}: uploaded {len(report.uploaded) - 1} files + manifest, {len(report.skipped)} "
                      f"unchanged, {len(report.removed)} removed")
    if cfg.backend == "triton":
        console.print(f"Next: make deploy ENV={cfg.name} (deploys the EngineBuild stack), then build the engines "
                      "as it says (make build-engines)")
    else:
        console.print(f"Next: make deploy ENV={cfg.name}")
    return EXIT_OK
