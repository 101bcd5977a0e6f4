"""The CLI: dry-run commands from ENGINE_* settings, and start-build against moto (CloudFormation + CodeBuild)."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from whisper_contract.engine_spec import EngineBuildSpec
from whisper_engines.cli import find_convert_script, git_revision, main, start_build

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_prints_the_commands_from_env_settings(spec: EngineBuildSpec, tmp_path: Path) -> None:
    env = {**spec.to_env(), "ENGINE_MAX_BATCH": "12", "ENGINE_WEIGHT_ONLY": "int4", "ENGINE_VERSION": "v7",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "whisper_engines", "build", "--dry-run", "--work-dir", str(tmp_path),
                          "--trtllm-root", "/trt"], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "# artifact: s3://example-model-bucket/engines/large-v3/v7/"
    convert, encoder, decoder = (shlex.split(line) for line in lines[1:])
    assert convert[1] == "/trt/examples/models/core/whisper/convert_checkpoint.py"
    assert convert[-3:] == ["--use_weight_only", "--weight_only_precision", "int4"]
    assert encoder[0] == decoder[0] == "trtllm-build"
    assert encoder[encoder.index("--max_batch_size") + 1] == decoder[decoder.index("--max_batch_size") + 1] == "12"
    assert not (tmp_path / "artifact").exists()  # a dry run touches nothing


def test_missing_settings_are_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "whisper_engines", "build", "--dry-run"],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode != 0 and "ENGINE_MODEL_NAME" in proc.stderr


def test_find_convert_script_in_either_layout(tmp_path: Path) -> None:
    old = tmp_path / "examples" / "whisper" / "convert_checkpoint.py"
    old.parent.mkdir(parents=True)
    old.write_text("")
    assert find_convert_script(tmp_path) == old
    with pytest.raises(FileNotFoundError, match="convert_checkpoint.py"):
        find_convert_script(tmp_path / "nowhere")


def test_git_revision_of_this_checkout() -> None:
    rev = git_revision(REPO)
    assert len(rev.removesuffix("-dirty")) == 40


TEMPLATE = {
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    "Outputs": {"EngineBuildProjectName": {"Value": "whisper-dev-engines-abc"}},
}


@mock_aws
def test_start_build_finds_the_project_from_stack_outputs() -> None:
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    codebuild = boto3.client("codebuild", region_name="us-east-1")
    cfn.create_stack(StackName="Whisper-dev-EngineBuild", TemplateBody=json.dumps(TEMPLATE))
    role = boto3.client("iam", region_name="us-east-1").create_role(
        RoleName="cb", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    codebuild.create_project(
        name="whisper-dev-engines-abc", source={"type": "S3", "location": "bucket/source.zip"},
        artifacts={"type": "NO_ARTIFACTS"}, serviceRole=role,
        environment={"type": "LINUX_GPU_CONTAINER", "image": "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3",
                     "computeType": "BUILD_GENERAL1_SMALL"})
    sent: list[dict] = []

    class Recording:  # the real (moto) client, with start_build's arguments noted
        def __getattr__(self, name: str):
            return getattr(codebuild, name)

        def start_build(self, **kwargs):
            sent.append(kwargs)
            return codebuild.start_build(**kwargs)

    out = io.StringIO()
    build = start_build(Recording(), cfn, "dev", revision="f" * 40, version="v9", out=out)
    assert sent == [{"projectName": "whisper-dev-engines-abc", "environmentVariablesOverride": [
        {"name": "ENGINE_GIT_REVISION", "value": "f" * 40, "type": "PLAINTEXT"},
        {"name": "ENGINE_VERSION", "value": "v9", "type": "PLAINTEXT"}]}]
    assert build["projectName"] == "whisper-dev-engines-abc"
    assert "started" in out.getvalue() and "whisper-dev-engines-abc" in out.getvalue()
    listed = codebuild.list_builds_for_project(projectName="whisper-dev-engines-abc")["ids"]
    assert listed == [build["id"]]


@mock_aws
def test_start_build_without_the_stack_says_what_to_do() -> None:
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    codebuild = boto3.client("codebuild", region_name="us-east-1")
    with pytest.raises(SystemExit, match="Whisper-prod-EngineBuild not found.*make deploy ENV=prod"):
        start_build(codebuild, cfn, "prod", revision="r")


def test_cli_help_lists_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "build" in text and "start-build" in text


def test_verify_checksums_of_a_downloaded_artifact(tmp_path: Path, spec: EngineBuildSpec) -> None:
    from whisper_contract.engine_spec import EngineManifest
    from whisper_engines.storage import checksums

    artifact = tmp_path / "artifact"
    (artifact / "engines" / "decoder").mkdir(parents=True)
    (artifact / "engines" / "decoder" / "rank0.engine").write_bytes(b"\x00engine")
    manifest = EngineManifest(spec=spec, version="v3", tensorrt_llm_version="0.20.0", gpu_name="NVIDIA A10G",
                              gpu_arch="sm86", git_revision="r", built_at="t", model_root="/opt/ml/model",
                              checksums=checksums(artifact), verification={"passed": True})
    (artifact / "manifest.json").write_text(manifest.to_json())
    cmd = [sys.executable, "-m", "whisper_engines", "verify", "--checksums-only", str(artifact)]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0 and "checksums: ok (1 files, version v3" in ok.stdout
    (artifact / "engines" / "decoder" / "rank0.engine").write_bytes(b"\x00truncated")
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "changed engines/decoder/rank0.engine" in bad.stderr
