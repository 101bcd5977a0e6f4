"""Per-environment configuration: one typed, frozen record per environment, validated once.

Values come from ``cdk.json`` context ``environments.<name>`` (select with ``-c env=<name>``);
account and region come from ``CDK_DEFAULT_ACCOUNT``/``CDK_DEFAULT_REGION`` (the stacks are
environment-agnostic when those are absent). Every error names the key and what it accepts,
because a typo in a deploy config should fail ``cdk synth``, not a deploy an hour later.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from whisper_contract.engine_spec import DTYPES, ENGINE_MODELS, WEIGHT_ONLY, EngineBuildSpec
from whisper_contract.errors import ContractError
from whisper_contract.options import RequestOptions

BACKENDS = ("faster-whisper", "torch", "triton")
PACKAGINGS = ("byoc", "dlc")
REMOVAL_POLICIES = ("destroy", "retain")
COMPUTE_TYPES = ("float16", "int8_float16", "int8", "bfloat16", "default")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)
# SageMaker limits for async endpoints.
MAX_INVOCATION_TIMEOUT_S = 3600
MIN_INVOCATION_TIMEOUT_S = 60
# The container must give up (and answer its readable `timeout` error) before SageMaker's own
# invocation timeout fires, which produces only a bare failure: this much earlier, at least.
MIN_TIMEOUT_MARGIN_S = 30
MAX_REQUEST_TTL_S = 21600
MAX_CONCURRENT_INVOCATIONS = 1000


@dataclass(frozen=True)
class InstanceFamily:
    gpu: str | None  # None: CPU only
    gpu_arch: str | None  # CUDA compute capability as TensorRT-LLM names it
    instance_storage: bool  # local NVMe: SageMaker rejects a volume KmsKeyId for these


# Serving families we know how to configure. Anything else fails synth with this list.
INSTANCE_FAMILIES: dict[str, InstanceFamily] = {
    "g4dn": InstanceFamily("T4", "sm75", True),
    "g5": InstanceFamily("A10G", "sm86", True),
    "g6": InstanceFamily("L4", "sm89", True),
    "g6e": InstanceFamily("L40S", "sm89", True),
    "p4d": InstanceFamily("A100", "sm80", True),
    "p5": InstanceFamily("H100", "sm90", True),
    "m5": InstanceFamily(None, None, False),
    "c5": InstanceFamily(None, None, False),
    "c6i": InstanceFamily(None, None, False),
    "m6i": InstanceFamily(None, None, False),
}

# CodeBuild on-demand GPU compute types and the serving families whose GPU they match.
# Only SMALL (1x A10G, sm86) matches a SageMaker family (ml.g5); LARGE is 4x V100 (sm70),
# which no TensorRT-LLM release we target supports and no ml.* family we serve on uses.
# L4 (ml.g6) is not offered on-demand; see docs/infrastructure.md for reserved fleets.
CODEBUILD_GPU_PAIRS: dict[str, str] = {"g5": "BUILD_GENERAL1_SMALL"}
# Regions where CodeBuild offers the LINUX_GPU_CONTAINER environment type. Source: the CodeBuild
# API reference (ProjectEnvironment.type / Fleet.environmentType, as shipped in botocore 1.44.5's
# codebuild service model): "LINUX_GPU_CONTAINER is available only in regions US East (N. Virginia),
# US East (Ohio), US West (Oregon), EU (Ireland), EU (Frankfurt), Asia Pacific (Tokyo), and Asia
# Pacific (Sydney)". (Older releases of that page list more regions; these seven are in both.)
CODEBUILD_GPU_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1",
                         "ap-northeast-1", "ap-southeast-2")


# --- GPU host AMI vs image CUDA ---------------------------------------------------------------
@dataclass(frozen=True)
class InferenceAmi:
    """A ProductionVariant ``InferenceAmiVersion``: the host's NVIDIA driver and the families it runs on."""

    driver: int  # NVIDIA driver branch
    cuda: tuple[int, int]  # newest CUDA the driver supports natively
    families: tuple[str, ...]


# Source: SageMaker API reference, ProductionVariant.InferenceAmiVersion
# (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariant.html, as shipped in
# botocore 1.44.5): gpu-2 and gpu-2-1 = driver 535 / CUDA 12.2, gpu-3-1 = driver 550 / CUDA 12.4
# ("-1": NVIDIA Container Toolkit with CUDA-compat mounting disabled). Instance families: the same
# page (botocore 1.36.20 text) lists "ml.g4dn.*, ml.g5.*, ml.g6.*, ml.p3.*, ml.p4d.*, ml.p4de.*, ml.p5.*";
# the guide "Best practices to minimize interruptions during GPU driver upgrades"
# (https://docs.aws.amazon.com/sagemaker/latest/dg/inference-gpu-drivers.html) lists these AMIs as the
# override for async endpoints, whose default host on ml.g4dn/g5/p4d is driver 470 / CUDA 11.4 and on
# ml.g6/p5 driver 470 "CUDA 12.2" -- too old for every GPU image here, so the override is mandatory.
# al2023-ami-sagemaker-inference-gpu-4-1 (driver 580 / CUDA 13.0) exists in the enum, but no page I
# could read lists its instance families; ml.g6e appears in none of these lists. Both stay out until
# checked.
_AMI_FAMILIES = ("g4dn", "g5", "g6", "p4d", "p5")
INFERENCE_AMIS: dict[str, InferenceAmi] = {
    "al2-ami-sagemaker-inference-gpu-2": InferenceAmi(535, (12, 2), _AMI_FAMILIES),
    "al2-ami-sagemaker-inference-gpu-2-1": InferenceAmi(535, (12, 2), _AMI_FAMILIES),
    "al2-ami-sagemaker-inference-gpu-3-1": InferenceAmi(550, (12, 4), _AMI_FAMILIES),
}
DEFAULT_GPU_AMI = "al2-ami-sagemaker-inference-gpu-3-1"


@dataclass(frozen=True)
class ServingImage:
    """What the endpoint runs: our Dockerfile or the stock DLC, and the CUDA it needs from the host."""

    kind: str  # byoc-gpu | byoc-cpu | byoc-triton | dlc
    description: str
    dockerfile: str | None = None  # byoc only, relative to the repository root
    cuda: tuple[int, int] | None = None  # None: no GPU code
    min_driver: int = 0  # driver branch that runs `cuda` natively
    # Driver branches on which NVIDIA supports the image's CUDA forward-compatibility libraries on
    # data-center GPUs; `serve` puts them on the library path when the host driver is older.
    compat_drivers: tuple[int, ...] = ()


# CUDA 12.4 needs driver >= 550 natively (nvidia/cuda 12.4.1 base, the 2.6 PyTorch inference DLC).
BYOC_GPU = ServingImage("byoc-gpu", "GPU image containers/whisper/Dockerfile (nvidia/cuda:12.4.1)",
                        "containers/whisper/Dockerfile", (12, 4), 550)
BYOC_CPU = ServingImage("byoc-cpu", "CPU image containers/whisper/Dockerfile.cpu",
                        "containers/whisper/Dockerfile.cpu")
# NGC Triton images by tag. Source: "Triton Inference Server Release 25.xx" release notes, "Driver
# Requirements" (https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/): 25.01 is
# based on CUDA 12.8, "which requires NVIDIA Driver release 570 or later. However, if you are running
# on a data center GPU ... you can use NVIDIA driver release 470.57 (or later R470), 525.85 (or later
# R525), 535.86 (or later R535), or 545.23 (or later R545)" -- not R550.
TRITON_IMAGES: dict[str, ServingImage] = {
    "25.01-trtllm-python-py3": ServingImage(
        "byoc-triton", "Triton image containers/whisper/Dockerfile.triton FROM tritonserver:25.01 (CUDA 12.8)",
        "containers/whisper/Dockerfile.triton", (12, 8), 570, (470, 525, 535, 545)),
}
DLC_GPU_CUDA: dict[str, tuple[int, int]] = {"2.6.0-gpu-py312": (12, 4)}  # PyTorch 2.6 inference DLC: cu124

_INSTANCE_RE = re.compile(r"^ml\.([a-z0-9]+)\.([0-9]*x?large|xlarge)$")
_ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


class ConfigError(ValueError):
    """Bad or missing per-environment configuration; the message names the key."""


@dataclass(frozen=True)
class EngineBuildConfig:
    """The CodeBuild project that compiles TensorRT-LLM engines (section ``engine_build``)."""

    build_image: str  # explicit image URI (an NGC TensorRT-LLM/Triton image mirrored to ECR, say)
    base_model_prefix: str  # Hugging Face weights in the model bucket
    artifact_prefix: str = "engines"
    model_name: str = "large-v3"
    lora_prefix: str = ""
    dtype: str = "float16"
    weight_only: str = "none"
    max_batch: int = 16
    max_beam: int = 4
    max_input_len: int = 14
    max_output_len: int = 434
    timeout_minutes: int = 180
    serve_version: str = ""  # artifact version the endpoint serves when backend is triton


@dataclass(frozen=True)
class EnvConfig:
    name: str
    instance_type: str
    model_id: str
    backend: str
    packaging: str = "byoc"
    account: str | None = None
    region: str | None = None
    min_instances: int = 0
    max_instances: int = 1
    max_concurrent_invocations: int = 1
    model_data_key: str = ""  # key (.tar.gz) or prefix (ends with /) in the model bucket
    compute_type: str = "float16"
    dlc_image_tag: str = "2.6.0-gpu-py312"  # stock pytorch-inference image tag (packaging dlc)
    inference_ami_version: str = ""  # "": DEFAULT_GPU_AMI on GPU families, none on CPU families
    invocation_timeout_s: int = MAX_INVOCATION_TIMEOUT_S
    request_ttl_s: int = MAX_REQUEST_TTL_S
    default_options: str = "formats=json,txt,srt,vtt"
    backlog_per_instance_target: float = 4.0  # scale out above this many queued requests per instance
    scale_out_cooldown_s: int = 300
    # Cost-tuned defaults (docs/cost.md, checked by tests/unit/test_cost_model.py): wait about one
    # cold start before scaling in (the break-even of idling against starting again), and once
    # idle, let each further instance go after one metric period plus its lag, not later.
    scale_in_cooldown_s: int = 120
    scale_in_idle_minutes: int = 7  # consecutive empty-backlog minutes before removing an instance
    oldest_request_alarm_s: int = 1800
    failure_alarm_threshold: int = 1  # Invocation5XXErrors per 5 minutes
    dlq_alarm_threshold: int = 1
    removal_policy: str = "destroy"
    log_retention_days: int = 30
    input_expiration_days: int = 30
    output_expiration_days: int = 0  # 0: keep transcripts
    model_noncurrent_days: int = 90
    alarm_emails: tuple[str, ...] = ()
    lambda_max_concurrency: int = 10  # SQS event source cap (protects the account's Lambda pool)
    tracing: bool = False
    vpc_only: bool = False  # endpoint in isolated subnets with network isolation
    engine_build: EngineBuildConfig | None = None

    # --- derived values --------------------------------------------------------------
    @property
    def instance_family(self) -> str:
        return self.instance_type.split(".")[1]

    @property
    def family(self) -> InstanceFamily:
        return INSTANCE_FAMILIES[self.instance_family]

    @property
    def ami_version(self) -> str | None:
        """The production variant's InferenceAmiVersion (None on CPU families)."""
        if self.family.gpu is None:
            return None
        return self.inference_ami_version or DEFAULT_GPU_AMI

    @property
    def container_request_timeout_s(self) -> int:
        """The container's own request timeout: below SageMaker's invocation timeout by a margin,
        so a long request ends as our readable ``timeout`` error, not SageMaker's bare failure."""
        return self.invocation_timeout_s - max(MIN_TIMEOUT_MARGIN_S, self.invocation_timeout_s // 12)

    @property
    def serving_image(self) -> ServingImage:
        """The image this backend x packaging x family runs on (validation refused the rest)."""
        if self.packaging == "dlc":
            cuda = DLC_GPU_CUDA.get(self.dlc_image_tag)
            return ServingImage("dlc", f"stock PyTorch inference DLC {self.dlc_image_tag}", None, cuda,
                                550 if cuda else 0)
        if self.backend == "triton":
            assert self.engine_build is not None
            return TRITON_IMAGES[_image_tag(self.engine_build.build_image)]
        return BYOC_GPU if self.family.gpu else BYOC_CPU

    @property
    def retain(self) -> bool:
        return self.removal_policy == "retain"

    def bucket_name(self, purpose: str) -> str:
        """Deterministic bucket name, unique per environment, account and region.

        Other stacks refer to the buckets by this name instead of by CloudFormation exports, so
        stacks stay independently updatable and IAM resources read the same in every review.
        """
        from aws_cdk import Aws  # the pseudo parameters resolve at deploy time

        return f"whisper-{self.name}-{purpose}-{Aws.ACCOUNT_ID}-{Aws.REGION}"

    @property
    def codebuild_compute_type(self) -> str:
        return CODEBUILD_GPU_PAIRS[self.instance_family]

    def engine_spec(self, model_bucket: str) -> EngineBuildSpec:
        eb = self.engine_build
        assert eb is not None
        return EngineBuildSpec(
            model_name=eb.model_name, model_bucket=model_bucket, base_model_prefix=eb.base_model_prefix,
            artifact_prefix=eb.artifact_prefix, lora_prefix=eb.lora_prefix, dtype=eb.dtype,
            weight_only=eb.weight_only, max_batch=eb.max_batch, max_beam=eb.max_beam,
            max_input_len=eb.max_input_len, max_output_len=eb.max_output_len,
            gpu_arch=self.family.gpu_arch or "",
        )

    @property
    def model_data_prefix_or_key(self) -> str:
        """What the endpoint's model reads from the model bucket."""
        if self.backend == "triton":
            assert self.engine_build is not None
            return f"{self.engine_build.artifact_prefix.rstrip('/')}/{self.engine_build.serve_version}/"
        return self.model_data_key


# --- loading and validation ---------------------------------------------------------------

def _where(env: str, key: str) -> str:
    return f"cdk.json context environments.{env}.{key}"


def _take(raw: dict[str, Any], env: str, key: str, kind: type, default: Any = dataclasses.MISSING) -> Any:
    if key not in raw:
        if default is dataclasses.MISSING:
            raise ConfigError(f"{_where(env, key)} is missing (required)")
        return default
    value = raw.pop(key)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{_where(env, key)} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{_where(env, key)} must be a number, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{_where(env, key)} must be true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{_where(env, key)} must be a string, got {value!r}")
    return float(value) if kind is float else value


def _one_of(env: str, key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise ConfigError(f"{_where(env, key)} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def _between(env: str, key: str, value: float, low: float, high: float | None = None) -> Any:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{_where(env, key)} must be {bound}; got {value!r}")
    return value


def _prefix(env: str, key: str, value: str) -> str:
    if value.startswith("/") or ".." in value or not _PREFIX_RE.match(value):
        raise ConfigError(
            f"{_where(env, key)} must be an S3 key or prefix relative to the model bucket "
            f"(letters, digits, / - _ . no leading / or ..); got {value!r}"
        )
    return value


def _engine_build(env: str, raw_in: Any) -> EngineBuildConfig:
    sub = "engine_build."
    if not isinstance(raw_in, dict):
        raise ConfigError(f"{_where(env, 'engine_build')} must be an object (or absent to disable); got {raw_in!r}")
    raw = {sub + k: v for k, v in raw_in.items()}  # so _take's messages name the full key
    fields = EngineBuildConfig.__dataclass_fields__

    def take(name: str, kind: type) -> Any:
        return _take(raw, env, sub + name, kind, fields[name].default)

    cfg = EngineBuildConfig(
        build_image=take("build_image", str),
        base_model_prefix=_prefix(env, sub + "base_model_prefix", take("base_model_prefix", str)),
        artifact_prefix=_prefix(env, sub + "artifact_prefix", take("artifact_prefix", str)),
        model_name=_one_of(env, sub + "model_name", take("model_name", str), ENGINE_MODELS),
        lora_prefix=_prefix(env, sub + "lora_prefix", take("lora_prefix", str)),
        dtype=_one_of(env, sub + "dtype", take("dtype", str), DTYPES),
        weight_only=_one_of(env, sub + "weight_only", take("weight_only", str), WEIGHT_ONLY),
        max_batch=_between(env, sub + "max_batch", take("max_batch", int), 1, 256),
        max_beam=_between(env, sub + "max_beam", take("max_beam", int), 1, 8),
        max_input_len=_between(env, sub + "max_input_len", take("max_input_len", int), 1, 448),
        max_output_len=_between(env, sub + "max_output_len", take("max_output_len", int), 1, 448),
        timeout_minutes=_between(env, sub + "timeout_minutes", take("timeout_minutes", int), 5, 2160),
        serve_version=_prefix(env, sub + "serve_version", take("serve_version", str)),
    )
    if not cfg.build_image.strip():
        raise ConfigError(f"{_where(env, sub + 'build_image')} must name a container image URI")
    if not cfg.base_model_prefix:
        raise ConfigError(f"{_where(env, sub + 'base_model_prefix')} must name the weights' prefix")
    if cfg.max_input_len + cfg.max_output_len > 448:
        raise ConfigError(
            f"{_where(env, sub + 'max_input_len')} + max_output_len must not exceed Whisper's 448 decoder positions"
        )
    _unknown(env, {k[len(sub):]: v for k, v in raw.items()}, EngineBuildConfig, prefix=sub)
    return cfg


def _unknown(env: str, leftover: dict[str, Any], cls: type, prefix: str = "") -> None:
    if leftover:
        known = ", ".join(f.name for f in dataclasses.fields(cls) if f.name not in ("name", "account", "region"))
        raise ConfigError(
            f"{_where(env, prefix + sorted(leftover)[0])} is not a known setting; known settings: {known}"
        )


def parse_env_config(
    env_name: str, raw_in: Mapping[str, Any], *, account: str | None = None, region: str | None = None
) -> EnvConfig:
    """Validate one environment's raw context and build its EnvConfig."""
    if not isinstance(raw_in, Mapping):
        raise ConfigError(f"cdk.json context environments.{env_name} must be an object; got {raw_in!r}")
    raw = dict(raw_in)
    env = env_name
    f = EnvConfig.__dataclass_fields__

    def take(key: str, kind: type) -> Any:
        default = f[key].default
        if default is dataclasses.MISSING:
            return _take(raw, env, key, kind)
        return _take(raw, env, key, kind, default)

    instance_type = take("instance_type", str)
    m = _INSTANCE_RE.match(instance_type)
    if not m or m.group(1) not in INSTANCE_FAMILIES:
        raise ConfigError(
            f"{_where(env, 'instance_type')} must be ml.<family>.<size> with family one of "
            f"{', '.join(INSTANCE_FAMILIES)}; got {instance_type!r}"
        )
    backend = _one_of(env, "backend", take("backend", str), BACKENDS)
    packaging = _one_of(env, "packaging", take("packaging", str), PACKAGINGS)
    min_instances = _between(env, "min_instances", take("min_instances", int), 0)
    max_instances = _between(env, "max_instances", take("max_instances", int), max(1, min_instances))
    emails = raw.pop("alarm_emails", [])
    if not isinstance(emails, list) or not all(isinstance(e, str) and _EMAIL_RE.match(e) for e in emails):
        raise ConfigError(f"{_where(env, 'alarm_emails')} must be a list of e-mail addresses; got {emails!r}")
    engine_raw = raw.pop("engine_build", None)

    cfg = EnvConfig(
        name=env_name,
        account=account,
        region=region,
        instance_type=instance_type,
        model_id=take("model_id", str),
        backend=backend,
        packaging=packaging,
        min_instances=min_instances,
        max_instances=max_instances,
        max_concurrent_invocations=_between(
            env, "max_concurrent_invocations", take("max_concurrent_invocations", int), 1, MAX_CONCURRENT_INVOCATIONS
        ),
        model_data_key=_prefix(env, "model_data_key", take("model_data_key", str)),
        compute_type=_one_of(env, "compute_type", take("compute_type", str), COMPUTE_TYPES),
        dlc_image_tag=take("dlc_image_tag", str),
        inference_ami_version=take("inference_ami_version", str),
        invocation_timeout_s=_between(
            env, "invocation_timeout_s", take("invocation_timeout_s", int), MIN_INVOCATION_TIMEOUT_S,
            MAX_INVOCATION_TIMEOUT_S,
        ),
        request_ttl_s=_between(env, "request_ttl_s", take("request_ttl_s", int), 60, MAX_REQUEST_TTL_S),
        default_options=take("default_options", str),
        backlog_per_instance_target=_between(
            env, "backlog_per_instance_target", take("backlog_per_instance_target", float), 0.1
        ),
        scale_out_cooldown_s=_between(env, "scale_out_cooldown_s", take("scale_out_cooldown_s", int), 0, 3600),
        scale_in_cooldown_s=_between(env, "scale_in_cooldown_s", take("scale_in_cooldown_s", int), 0, 3600),
        scale_in_idle_minutes=_between(env, "scale_in_idle_minutes", take("scale_in_idle_minutes", int), 1, 1440),
        oldest_request_alarm_s=_between(env, "oldest_request_alarm_s", take("oldest_request_alarm_s", int), 60),
        failure_alarm_threshold=_between(env, "failure_alarm_threshold", take("failure_alarm_threshold", int), 1),
        dlq_alarm_threshold=_between(env, "dlq_alarm_threshold", take("dlq_alarm_threshold", int), 1),
        removal_policy=_one_of(env, "removal_policy", take("removal_policy", str), REMOVAL_POLICIES),
        log_retention_days=_one_of(env, "log_retention_days", take("log_retention_days", int), LOG_RETENTION_DAYS),
        input_expiration_days=_between(env, "input_expiration_days", take("input_expiration_days", int), 1),
        output_expiration_days=_between(env, "output_expiration_days", take("output_expiration_days", int), 0),
        model_noncurrent_days=_between(env, "model_noncurrent_days", take("model_noncurrent_days", int), 1),
        alarm_emails=tuple(emails),
        lambda_max_concurrency=_between(env, "lambda_max_concurrency", take("lambda_max_concurrency", int), 2, 1000),
        tracing=take("tracing", bool),
        vpc_only=take("vpc_only", bool),
        engine_build=None if engine_raw is None else _engine_build(env, engine_raw),
    )
    _unknown(env, raw, EnvConfig)
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: EnvConfig) -> None:
    env = cfg.name
    try:
        RequestOptions.from_query(cfg.default_options)
    except ContractError as exc:
        raise ConfigError(f"{_where(env, 'default_options')} is not a valid options string: {exc}") from None
    gpu = cfg.family.gpu is not None
    if cfg.backend in ("torch", "triton") and not gpu:
        raise ConfigError(
            f"{_where(env, 'instance_type')} must be a GPU family for backend {cfg.backend!r} "
            f"(one of {', '.join(k for k, v in INSTANCE_FAMILIES.items() if v.gpu)}); got {cfg.instance_type!r}"
        )
    if cfg.packaging == "dlc":
        if cfg.backend == "triton":
            raise ConfigError(f"{_where(env, 'packaging')} must be byoc for backend 'triton' (allowed with dlc: "
                              "faster-whisper, torch)")
        if not cfg.model_data_key.endswith(".tar.gz"):
            raise ConfigError(
                f"{_where(env, 'model_data_key')} must name a model.tar.gz (built by `make package-dlc`) "
                f"when packaging is dlc; got {cfg.model_data_key!r}"
            )
    if cfg.backend == "triton":
        if cfg.engine_build is None or not cfg.engine_build.serve_version:
            raise ConfigError(
                f"{_where(env, 'engine_build.serve_version')} is required when backend is 'triton' "
                "(the engine artifact version the endpoint serves)"
            )
    elif not cfg.model_data_key:
        raise ConfigError(f"{_where(env, 'model_data_key')} is missing (required for backend {cfg.backend!r})")
    if cfg.model_data_key and not (cfg.model_data_key.endswith(".tar.gz") or cfg.model_data_key.endswith("/")):
        raise ConfigError(
            f"{_where(env, 'model_data_key')} must end with .tar.gz (compressed model) or / (a prefix copied "
            f"as is); got {cfg.model_data_key!r}"
        )
    _check_image_matrix(cfg)
    _check_host_driver(cfg)
    if cfg.engine_build is not None and cfg.region and cfg.region not in CODEBUILD_GPU_REGIONS:
        raise ConfigError(
            f"{_where(env, 'engine_build')}: CodeBuild has no LINUX_GPU_CONTAINER builds in {cfg.region}; "
            f"the region must be one of {', '.join(CODEBUILD_GPU_REGIONS)} (or remove engine_build)"
        )
    if cfg.engine_build is not None and cfg.instance_family not in CODEBUILD_GPU_PAIRS:
        pairs = "; ".join(f"ml.{fam}.* <-> CodeBuild LINUX_GPU_CONTAINER {ct} (1x A10G, sm86)"
                          for fam, ct in CODEBUILD_GPU_PAIRS.items())
        raise ConfigError(
            f"{_where(env, 'engine_build')}: CodeBuild has no on-demand GPU matching {cfg.instance_type} "
            f"({cfg.family.gpu}, {cfg.family.gpu_arch}); TensorRT-LLM engines only run on the GPU that built them. "
            f"Supported pairs: {pairs}. Remove engine_build or serve on ml.g5."
        )


def _image_tag(uri: str) -> str:
    return uri.rsplit("/", 1)[-1].partition(":")[2]


def _check_image_matrix(cfg: EnvConfig) -> None:
    """Every backend x packaging x family either has an image that can run it or fails here."""
    env = cfg.name
    if cfg.backend == "torch" and cfg.packaging == "byoc":
        raise ConfigError(
            f"{_where(env, 'packaging')} must be dlc for backend 'torch' (allowed with byoc: faster-whisper, "
            "triton): the byoc images carry no PyTorch; the stock PyTorch inference DLC does"
        )
    if cfg.packaging == "dlc":
        kind = "-gpu-" if cfg.family.gpu else "-cpu-"
        if kind not in cfg.dlc_image_tag:
            raise ConfigError(
                f"{_where(env, 'dlc_image_tag')} must be a pytorch-inference tag containing {kind!r} for "
                f"{cfg.instance_type}; got {cfg.dlc_image_tag!r}"
            )
        if cfg.family.gpu and cfg.dlc_image_tag not in DLC_GPU_CUDA:
            raise ConfigError(
                f"{_where(env, 'dlc_image_tag')} must be one of {', '.join(DLC_GPU_CUDA)} (GPU DLC tags whose "
                f"CUDA is known to this app); got {cfg.dlc_image_tag!r}"
            )
    if cfg.backend == "triton":
        assert cfg.engine_build is not None
        if _image_tag(cfg.engine_build.build_image) not in TRITON_IMAGES:
            raise ConfigError(
                f"{_where(env, 'engine_build.build_image')} must be a tritonserver image with tag one of "
                f"{', '.join(TRITON_IMAGES)} (tags whose CUDA and driver needs are known) when backend is "
                f"'triton'; got {cfg.engine_build.build_image!r}"
            )


def _runs_on(image: ServingImage, ami: InferenceAmi) -> bool:
    return ami.driver >= image.min_driver or ami.driver in image.compat_drivers


def _check_host_driver(cfg: EnvConfig) -> None:
    """The host AMI's NVIDIA driver must run the image's CUDA (natively or via forward compatibility)."""
    env, key = cfg.name, "inference_ami_version"
    if cfg.family.gpu is None:
        if cfg.inference_ami_version:
            raise ConfigError(f"{_where(env, key)} must be absent for CPU instance {cfg.instance_type} "
                              f"(GPU host AMIs only); got {cfg.inference_ami_version!r}")
        return
    image = cfg.serving_image
    fits = [name for name, ami in INFERENCE_AMIS.items()
            if cfg.instance_family in ami.families and _runs_on(image, ami)]
    name = cfg.ami_version
    ami = INFERENCE_AMIS.get(name or "")
    if ami is not None and name in fits:
        return
    if ami is None:
        problem = "not a GPU InferenceAmiVersion this app knows"
    elif cfg.instance_family not in ami.families:
        problem = f"it does not run on ml.{cfg.instance_family}"
    else:
        assert image.cuda is not None
        compat = f", or driver {'/'.join(map(str, image.compat_drivers))} with forward compatibility" \
            if image.compat_drivers else ""
        problem = (f"its driver {ami.driver} (CUDA {ami.cuda[0]}.{ami.cuda[1]}) cannot run the {image.description}, "
                   f"which needs driver >= {image.min_driver}{compat}")
    allowed = ", ".join(fits) if fits else f"none: no known AMI runs this image on ml.{cfg.instance_family}"
    raise ConfigError(f"{_where(env, key)} must be one of {allowed}; got {name!r}: {problem}")


def load_env_config(context: Mapping[str, Any], env_name: str | None, *, account: str | None = None,
                    region: str | None = None) -> EnvConfig:
    """Pick ``environments.<env_name>`` out of the app context and validate it."""
    envs = context.get("environments")
    if not isinstance(envs, Mapping) or not envs:
        raise ConfigError("cdk.json context environments is missing: it must map environment names to settings "
                          "(run the app through the CDK CLI, e.g. `npx cdk synth -c env=dev`; `python app.py` "
                          "alone does not read cdk.json)")
    allowed = ", ".join(sorted(envs))
    bad = [name for name in envs if not _ENV_NAME_RE.match(name)]
    if bad:
        raise ConfigError(f"cdk.json context environments.{bad[0]}: environment names must be 1-12 lowercase "
                          "letters, digits or dashes (they become part of bucket and stack names)")
    if not env_name:
        raise ConfigError(f"context env is missing: pass -c env=<name> with name one of {allowed}")
    if env_name not in envs:
        raise ConfigError(f"context env must be one of {allowed}; got {env_name!r}")
    return parse_env_config(env_name, envs[env_name], account=account, region=region)
