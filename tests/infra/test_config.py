"""EnvConfig: cdk.json's environments validate, and bad config fails with the key and allowed values."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from typing import Any

import pytest

from stacks.config import (
    BACKENDS,
    DEFAULT_GPU_AMI,
    INFERENCE_AMIS,
    INSTANCE_FAMILIES,
    PACKAGINGS,
    ConfigError,
    EnvConfig,
    load_env_config,
    parse_env_config,
)
from stacks.image import REPO_ROOT

CONTEXT = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
DEV = CONTEXT["environments"]["dev"]


def with_(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(DEV)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_env_config("dev", raw)
    return str(info.value)


def test_every_environment_in_cdk_json_is_valid() -> None:
    names = sorted(CONTEXT["environments"])
    assert {"dev", "prod"} <= set(names)
    for name in names:
        cfg = load_env_config(CONTEXT, name, account="111111111111", region="eu-west-1")
        assert isinstance(cfg, EnvConfig) and cfg.name == name
        assert (cfg.account, cfg.region) == ("111111111111", "eu-west-1")


def test_dev_destroys_and_prod_retains() -> None:
    assert load_env_config(CONTEXT, "dev").removal_policy == "destroy"
    assert load_env_config(CONTEXT, "prod").removal_policy == "retain"
    assert load_env_config(CONTEXT, "dev").min_instances == 0


def test_config_is_frozen() -> None:
    cfg = load_env_config(CONTEXT, "dev")
    with pytest.raises(Exception):
        cfg.max_instances = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"backend": "whisperx"}, "environments.dev.backend must be one of faster-whisper, torch, triton; got 'whisperx'"),
        ({"packaging": "zip"}, "environments.dev.packaging must be one of byoc, dlc"),
        ({"instance_type": "ml.x9.huge"}, "environments.dev.instance_type must be ml.<family>.<size> with family one of g4dn, g5, g6"),
        ({"instance_type": None}, "environments.dev.instance_type is missing (required)"),
        ({"model_id": None}, "environments.dev.model_id is missing (required)"),
        ({"min_instances": -1}, "environments.dev.min_instances must be at least 0; got -1"),
        ({"min_instances": 3, "max_instances": 2}, "environments.dev.max_instances must be at least 3; got 2"),
        ({"max_instances": "4"}, "environments.dev.max_instances must be an integer, got '4'"),
        ({"max_concurrent_invocations": 0}, "environments.dev.max_concurrent_invocations must be between 1 and 1000"),
        ({"invocation_timeout_s": 7200}, "environments.dev.invocation_timeout_s must be between 60 and 3600; got 7200"),
        ({"request_ttl_s": 30}, "environments.dev.request_ttl_s must be between 60 and 21600"),
        ({"removal_policy": "snapshot"}, "environments.dev.removal_policy must be one of destroy, retain; got 'snapshot'"),
        ({"log_retention_days": 10}, "environments.dev.log_retention_days must be one of 1, 3, 5, 7, 14, 30"),
        ({"alarm_emails": ["not-an-email"]}, "environments.dev.alarm_emails must be a list of e-mail addresses"),
        ({"default_options": "langauge=en"}, "environments.dev.default_options is not a valid options string"),
        ({"tracing": "yes"}, "environments.dev.tracing must be true or false, got 'yes'"),
        ({"instance_typo": "ml.g5.xlarge"}, "environments.dev.instance_typo is not a known setting; known settings: instance_type"),
        ({"model_data_key": "/abs/path/"}, "environments.dev.model_data_key must be an S3 key or prefix"),
        ({"model_data_key": "models/model.bin"}, "environments.dev.model_data_key must end with .tar.gz"),
        ({"backend": "torch", "instance_type": "ml.m5.xlarge"}, "environments.dev.instance_type must be a GPU family for backend 'torch'"),
        ({"packaging": "dlc"}, "environments.dev.model_data_key must name a model.tar.gz (built by `make package-dlc`)"),
        ({"backend": "triton"}, "environments.dev.engine_build.serve_version is required when backend is 'triton'"),
    ],
)
def test_bad_config_names_the_key_and_the_allowed_values(change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_(**change))


def test_engine_build_errors_name_the_nested_key() -> None:
    eb = dict(DEV["engine_build"])
    assert "environments.dev.engine_build.model_name must be one of large-v3, large-v3-turbo" in error_of(
        with_(engine_build={**eb, "model_name": "large-v2"}))
    assert "environments.dev.engine_build.weight_only must be one of none, int8, int4" in error_of(
        with_(engine_build={**eb, "weight_only": "fp8"}))
    assert "environments.dev.engine_build.build_image is missing (required)" in error_of(
        with_(engine_build={k: v for k, v in eb.items() if k != "build_image"}))
    assert "environments.dev.engine_build.max_beams is not a known setting" in error_of(
        with_(engine_build={**eb, "max_beams": 4}))
    assert "must not exceed Whisper's 448 decoder positions" in error_of(
        with_(engine_build={**eb, "max_input_len": 100, "max_output_len": 400}))


def test_engine_build_on_a_gpu_codebuild_cannot_provide_fails_with_the_supported_pairs() -> None:
    message = error_of(with_(instance_type="ml.g6.xlarge"))
    assert "CodeBuild has no on-demand GPU matching ml.g6.xlarge (L4, sm89)" in message
    assert "Supported pairs: ml.g5.* <-> CodeBuild LINUX_GPU_CONTAINER BUILD_GENERAL1_SMALL (1x A10G, sm86)" in message
    # Without an engine build, ml.g6 is a fine serving choice for faster-whisper.
    assert parse_env_config("dev", with_(instance_type="ml.g6.xlarge", engine_build=None)).family.gpu == "L4"


def test_gpu_arch_follows_the_serving_family() -> None:
    cfg = parse_env_config("dev", with_(instance_type="ml.g5.12xlarge"))
    spec = cfg.engine_spec("bucket")
    assert spec.gpu_arch == INSTANCE_FAMILIES["g5"].gpu_arch == "sm86"
    assert cfg.codebuild_compute_type == "BUILD_GENERAL1_SMALL"


def test_environment_selection_errors() -> None:
    with pytest.raises(ConfigError, match=r"context env is missing: pass -c env=<name> with name one of dev, prod"):
        load_env_config(CONTEXT, None)
    with pytest.raises(ConfigError, match=r"context env must be one of dev, prod; got 'staging'"):
        load_env_config(CONTEXT, "staging")
    with pytest.raises(ConfigError, match="cdk.json context environments is missing"):
        load_env_config({}, "dev")
    with pytest.raises(ConfigError, match="environment names must be 1-12 lowercase"):
        load_env_config({"environments": {"Prod_EU": DEV}}, "Prod_EU")


def test_backends_match_the_container_contract() -> None:
    from whisper_contract import env

    assert BACKENDS == ("faster-whisper", "torch", "triton")
    assert "faster-whisper | torch | triton" in open(env.__file__).read()


def test_cdk_cli_reports_a_bad_environment_through_app_py() -> None:
    """The real entry point: the CDK CLI runs app.py, which must fail with the message, fast."""
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    cdk = REPO_ROOT / "node_modules" / ".bin" / "cdk"
    if not cdk.exists():
        pytest.skip("node_modules missing: run `make install`")
    result = subprocess.run(
        [str(cdk), "synth", "-c", "env=staging", "-o", "/tmp/whisper-cdk-bad-env", "-q"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "configuration error: context env must be one of dev, prod; got 'staging'" in result.stderr + result.stdout


def test_python_app_py_alone_explains_how_to_run_it() -> None:
    import sys

    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    env.pop("CDK_CONTEXT_JSON", None)
    result = subprocess.run([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "`python app.py` alone does not read cdk.json" in result.stderr


# --- GPU host AMI vs image CUDA (issue 11.1) ---------------------------------------------------

GPU2, GPU21, GPU31 = (f"al2-ami-sagemaker-inference-gpu-{v}" for v in ("2", "2-1", "3-1"))


def triton(**changes: Any) -> dict[str, Any]:
    return with_(**{"backend": "triton", "engine_build": {**DEV["engine_build"], "serve_version": "v1"}, **changes})


def test_gpu_environments_get_an_ami_whose_driver_runs_the_image() -> None:
    for name in ("dev", "prod"):
        cfg = load_env_config(CONTEXT, name)
        assert cfg.ami_version == DEFAULT_GPU_AMI == GPU31
        assert INFERENCE_AMIS[GPU31].driver >= cfg.serving_image.min_driver == 550
    assert parse_env_config("dev", with_(instance_type="ml.m5.xlarge", engine_build=None)).ami_version is None


@pytest.mark.parametrize(("raw", "expected"), [
    (with_(inference_ami_version=GPU2),
     f"environments.dev.inference_ami_version must be one of {GPU31}; got '{GPU2}': its driver 535 (CUDA 12.2) "
     "cannot run the GPU image containers/whisper/Dockerfile (nvidia/cuda:12.4.1), which needs driver >= 550"),
    (triton(),
     f"environments.dev.inference_ami_version must be one of {GPU2}, {GPU21}; got '{GPU31}': its driver 550 "
     "(CUDA 12.4) cannot run the Triton image"),
    (with_(inference_ami_version="al2-ami-sagemaker-inference-gpu-9"),
     f"environments.dev.inference_ami_version must be one of {GPU31}; got 'al2-ami-sagemaker-inference-gpu-9'"),
    (with_(instance_type="ml.g6e.xlarge", engine_build=None),
     "environments.dev.inference_ami_version must be one of none: no known AMI runs this image on ml.g6e"),
    (with_(instance_type="ml.m5.xlarge", engine_build=None, inference_ami_version=GPU31),
     "environments.dev.inference_ami_version must be absent for CPU instance ml.m5.xlarge"),
    (triton(engine_build={**DEV["engine_build"], "serve_version": "v1",
                          "build_image": "nvcr.io/nvidia/tritonserver:23.05-py3"}),
     "environments.dev.engine_build.build_image must be a tritonserver image with tag one of 25.01-trtllm-python-py3"),
])
def test_host_driver_mismatch_fails_with_the_key_and_the_allowed_amis(raw: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raw)


def test_triton_runs_on_a_535_host_through_forward_compatibility() -> None:
    cfg = parse_env_config("dev", triton(inference_ami_version=GPU21))
    image = cfg.serving_image
    assert image.dockerfile == "containers/whisper/Dockerfile.triton" and image.cuda == (12, 8)
    assert INFERENCE_AMIS[GPU21].driver < image.min_driver and INFERENCE_AMIS[GPU21].driver in image.compat_drivers


# Every backend x packaging x instance kind: the image it runs on, or the key its refusal names.
MATRIX = {
    ("faster-whisper", "byoc", "ml.g5.xlarge"): "containers/whisper/Dockerfile",
    ("faster-whisper", "byoc", "ml.m5.xlarge"): "containers/whisper/Dockerfile.cpu",
    ("faster-whisper", "dlc", "ml.g5.xlarge"): "dlc 2.6.0-gpu-py312",
    ("faster-whisper", "dlc", "ml.m5.xlarge"): "error dlc_image_tag must be a pytorch-inference tag containing '-cpu-'",
    ("torch", "byoc", "ml.g5.xlarge"): "error packaging must be dlc for backend 'torch'",
    ("torch", "byoc", "ml.m5.xlarge"): "error instance_type must be a GPU family for backend 'torch'",
    ("torch", "dlc", "ml.g5.xlarge"): "dlc 2.6.0-gpu-py312",
    ("torch", "dlc", "ml.m5.xlarge"): "error instance_type must be a GPU family for backend 'torch'",
    ("triton", "byoc", "ml.g5.xlarge"): "containers/whisper/Dockerfile.triton",
    ("triton", "byoc", "ml.m5.xlarge"): "error instance_type must be a GPU family for backend 'triton'",
    ("triton", "dlc", "ml.g5.xlarge"): "error packaging must be byoc for backend 'triton'",
    ("triton", "dlc", "ml.m5.xlarge"): "error instance_type must be a GPU family for backend 'triton'",
}


def test_the_matrix_covers_every_combination() -> None:
    assert set(MATRIX) == {(b, p, i) for b in BACKENDS for p in PACKAGINGS for i in ("ml.g5.xlarge", "ml.m5.xlarge")}


@pytest.mark.parametrize(("backend", "packaging", "instance_type"), sorted(MATRIX))
def test_every_backend_packaging_instance_combination_has_an_image_or_a_refusal(
        backend: str, packaging: str, instance_type: str) -> None:
    gpu = instance_type.startswith("ml.g")
    raw = triton() if backend == "triton" else with_(backend=backend)
    raw.update(instance_type=instance_type, packaging=packaging)
    if packaging == "dlc":
        raw["model_data_key"] = "dlc/model.tar.gz"
    if backend == "triton":
        raw["inference_ami_version"] = GPU21 if gpu else None
    else:
        raw.pop("engine_build")
    raw = {k: v for k, v in raw.items() if v is not None}
    expected = MATRIX[(backend, packaging, instance_type)]
    if expected.startswith("error "):
        assert f"environments.dev.{expected.removeprefix('error ')}" in error_of(raw)
        return
    cfg = parse_env_config("dev", raw)
    image = cfg.serving_image
    assert (image.dockerfile or f"dlc {cfg.dlc_image_tag}") == expected
    assert (image.cuda is not None) == gpu  # a GPU instance gets a CUDA image, a CPU one none


def test_container_timeout_is_below_the_invocation_timeout_with_a_margin() -> None:
    assert load_env_config(CONTEXT, "dev").container_request_timeout_s == 3300
    for timeout in (60, 61, 600, 1800, 3599, 3600):
        cfg = parse_env_config("dev", with_(invocation_timeout_s=timeout))
        assert 0 < cfg.container_request_timeout_s <= timeout - 30
    assert "invocation_timeout_s must be between 60 and 3600; got 59" in error_of(with_(invocation_timeout_s=59))


def test_engine_build_refuses_a_region_without_codebuild_gpu() -> None:
    with pytest.raises(ConfigError, match=r"engine_build: CodeBuild has no LINUX_GPU_CONTAINER builds in ap-south-1; "
                                          r"the region must be one of us-east-1, us-east-2, us-west-2"):
        parse_env_config("dev", with_(), region="ap-south-1")
    assert parse_env_config("dev", with_(engine_build=None), region="ap-south-1").region == "ap-south-1"
