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
    INSTANCE_FAMILIES,
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
        ({"invocation_timeout_s": 7200}, "environments.dev.invocation_timeout_s must be between 1 and 3600; got 7200"),
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
