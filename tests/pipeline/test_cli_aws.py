"""whisper-sm against AWS: names come from the deployed stacks' outputs (moto CloudFormation)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from whisper_cli import core


def template(outputs: dict[str, str]) -> str:
    return json.dumps({
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    })


@pytest.fixture
def cloud(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    for var in core.OVERRIDE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        yield boto3.client("cloudformation", region_name="eu-west-1")


def test_resolves_buckets_and_endpoint_from_the_environments_stacks(cloud):
    cloud.create_stack(StackName="WhisperStorage-dev", TemplateBody=template(
        {"InputBucketName": "in-dev", "OutputBucketName": "out-dev", "ModelBucketName": "m"}))
    cloud.create_stack(StackName="WhisperEndpoint-dev", TemplateBody=template({"EndpointName": "whisper-dev"}))
    cloud.create_stack(StackName="WhisperStorage-prod", TemplateBody=template(
        {"InputBucketName": "in-prod", "OutputBucketName": "out-prod"}))

    target = core.resolve("dev")

    assert (target.input_bucket, target.output_bucket, target.endpoint_name) == ("in-dev", "out-dev", "whisper-dev")


def test_missing_outputs_name_what_is_missing(cloud):
    cloud.create_stack(StackName="WhisperStorage-dev", TemplateBody=template({"InputBucketName": "in-dev"}))
    with pytest.raises(RuntimeError, match="OutputBucketName, EndpointName"):
        core.resolve("dev")


def test_environment_variables_override_stack_outputs(cloud, monkeypatch):
    monkeypatch.setenv("WHISPER_INPUT_BUCKET", "mine-in")
    monkeypatch.setenv("WHISPER_OUTPUT_BUCKET", "mine-out")
    monkeypatch.setenv("WHISPER_ENDPOINT_NAME", "mine-ep")
    target = core.resolve("prod")
    assert (target.input_bucket, target.output_bucket, target.endpoint_name) == ("mine-in", "mine-out", "mine-ep")


def test_collect_takes_audio_from_folders_and_refuses_named_non_audio(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.mp3").write_bytes(b"x")
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "one.flac").write_bytes(b"x")
    pairs = core.collect([tmp_path / "d", tmp_path / "one.flac"], prefix="p/")
    assert [k for _, k in pairs] == ["p/d/sub/a.mp3", "p/one.flac"]
    with pytest.raises(ValueError, match="audio file extension"):
        core.collect([tmp_path / "d" / "notes.txt"])


def test_status_reads_instances_and_backlog(cloud, capsys):
    sm = boto3.client("sagemaker", region_name="eu-west-1")
    sm.create_model(ModelName="m", ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
                    PrimaryContainer={"Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/w:1"})
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
        {"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.g4dn.xlarge"}])
    sm.create_endpoint(EndpointName="whisper-dev", EndpointConfigName="c")
    cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1")
    for value in (3, 7):
        cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[{
            "MetricName": "ApproximateBacklogSize", "Value": value,
            "Dimensions": [{"Name": "EndpointName", "Value": "whisper-dev"}]}])
    cloud.create_stack(StackName="WhisperAll-dev", TemplateBody=template(
        {"InputBucketName": "i", "OutputBucketName": "o", "EndpointName": "whisper-dev"}))

    from whisper_cli.main import main

    assert main(["status", "--env", "dev", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["endpoint_status"], status["instances"], status["backlog"]) == ("InService", 1, 7)


def test_non_ascii_options_are_refused_before_upload(tmp_path):
    from whisper_contract import RequestOptions

    target = core.Target("dev", "i", "o", "e", s3=None)  # never reached
    with pytest.raises(ValueError, match="initial_prompt must be ASCII"):
        core.upload(target, [(tmp_path / "a.mp3", "a.mp3")], RequestOptions(initial_prompt="Grüße"))
