"""Ingestion, completion, engine build, dashboard, and the Lambda code assets."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from stacks.engine_build import BUILDSPEC, GPU_ENVIRONMENT
from whisper_constructs.lambda_asset import CONTRACT_DIR, handler_source, stage_lambda_asset
from whisper_contract import env as env_names
from whisper_contract import keys
from whisper_contract.engine_spec import EngineBuildSpec

Synth = Any  # the fixture type lives in conftest.py (not importable under importlib mode)


def resources(synth: Synth, stack: Any, kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in synth.template_json(stack)["Resources"].items() if v["Type"] == kind}


def statements(synth: Synth, stack: Any) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for p in resources(synth, stack, "AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"] if "Sid" in s}


def check_queue_fed_function(synth: Synth, stack: Any, env_keys: set[str], timeout: int) -> dict[str, Any]:
    t = synth.template(stack)
    queues = resources(synth, stack, "AWS::SQS::Queue")
    assert len(queues) == 2
    main = next(q["Properties"] for q in queues.values() if "RedrivePolicy" in q["Properties"])
    assert main["RedrivePolicy"]["maxReceiveCount"] == 5
    assert main["VisibilityTimeout"] == 6 * timeout
    for q in queues.values():
        assert "KmsMasterKeyId" in q["Properties"]
    fn = next(iter(resources(synth, stack, "AWS::Lambda::Function").values()))["Properties"]
    assert fn["Runtime"] == "python3.14" and fn["Architectures"] == ["arm64"] and fn["Handler"] == "handler.handler"
    assert fn["Timeout"] == timeout
    assert set(fn["Environment"]["Variables"]) == env_keys
    assert "LoggingConfig" in fn  # its own log group, KMS-encrypted, with retention
    t.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": synth.cfg.log_retention_days,
                                                      "KmsKeyId": Match.any_value()})
    t.has_resource_properties("AWS::Lambda::EventSourceMapping", {
        "FunctionResponseTypes": ["ReportBatchItemFailures"], "BatchSize": 10,
        "ScalingConfig": {"MaximumConcurrency": synth.cfg.lambda_max_concurrency}})
    t.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "ApproximateNumberOfMessagesVisible", "Namespace": "AWS/SQS",
        "Threshold": synth.cfg.dlq_alarm_threshold, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": [{"Fn::ImportValue": Match.string_like_regexp("OpsTopic")}]})
    role = next(r for r in resources(synth, stack, "AWS::IAM::Role").values()
                if "lambda.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
                and "BucketNotificationsHandler" not in json.dumps(r))
    assert "ManagedPolicyArns" not in role["Properties"]  # no AWSLambdaBasicExecutionRole
    return fn


def test_ingestion_s3_to_sqs_to_trigger(dev: Synth) -> None:
    ing = dev.stacks.ingestion
    fn = check_queue_fed_function(dev, ing, {env_names.ENDPOINT_NAME, env_names.OUTPUT_BUCKET,
                                             env_names.DEFAULT_OPTIONS, env_names.INVOCATION_TIMEOUT_S,
                                             env_names.REQUEST_TTL_S}, 60)
    env = fn["Environment"]["Variables"]
    assert env[env_names.ENDPOINT_NAME] == "whisper-dev"
    assert env[env_names.DEFAULT_OPTIONS] == dev.cfg.default_options
    assert (env[env_names.INVOCATION_TIMEOUT_S], env[env_names.REQUEST_TTL_S]) == ("3600", "21600")
    t = dev.template(ing)
    t.has_resource_properties("Custom::S3BucketNotifications", {
        "NotificationConfiguration": {"QueueConfigurations": [{"Events": ["s3:ObjectCreated:*"],
                                                               "QueueArn": Match.any_value()}]},
        "Managed": False})
    t.has_resource_properties("AWS::SQS::QueuePolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Action": Match.array_with(["sqs:SendMessage"]),
                           "Principal": {"Service": "s3.amazonaws.com"}})])}})


def test_trigger_permissions_are_scoped(dev: Synth) -> None:
    s = statements(dev, dev.stacks.ingestion)
    _assert_deletes_only_output_names(s)
    assert s["InvokeEndpoint"]["Action"] == "sagemaker:InvokeEndpointAsync"
    assert "endpoint/whisper-dev" in json.dumps(s["InvokeEndpoint"]["Resource"])
    assert s["ReadInput"]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert "whisper-dev-input-" in json.dumps(s["ReadInput"])
    _assert_lists_only_the_two_buckets(s)
    assert s["JobRecords"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert "/_jobs/*" in json.dumps(s["JobRecords"]["Resource"])
    assert "/*.error.json" in json.dumps(s["ErrorRecords"]["Resource"])
    assert s["UseDataKey"]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_completion_topics_to_sqs_with_raw_delivery_to_completer(dev: Synth) -> None:
    comp = dev.stacks.completion
    check_queue_fed_function(dev, comp, {env_names.OUTPUT_BUCKET}, 120)  # (INPUT_BUCKET was never read)
    subs = resources(dev, comp, "AWS::SNS::Subscription")
    assert len(subs) == 2
    topics = set()
    for sub in subs.values():
        p = sub["Properties"]
        assert (p["Protocol"], p["RawMessageDelivery"]) == ("sqs", True)
        topics.add(json.dumps(p["TopicArn"]))
    assert any("SuccessTopic" in t for t in topics) and any("ErrorTopic" in t for t in topics)
    s = statements(dev, comp)
    assert s["ReadAsyncResultsAndJobs"]["Action"] == "s3:GetObject"
    read = json.dumps(s["ReadAsyncResultsAndJobs"]["Resource"])
    assert "/_async/*" in read and "/_jobs/*" in read
    assert s["WriteResults"]["Action"] == "s3:PutObject"
    _assert_deletes_only_output_names(s)
    assert "whisper-dev-input-" in json.dumps(s["HeadInput"]["Resource"])
    _assert_lists_only_the_two_buckets(s)


def _assert_deletes_only_output_names(s: dict) -> None:
    """Both Lambdas replace a key's earlier outputs: DeleteObject on the output suffixes only
    (never job records, never the input bucket). Without it, S3 answers AccessDenied in AWS
    while moto, which checks no IAM, lets the delete through."""
    replace = s["ReplaceOutputs"]
    assert replace["Action"] == "s3:DeleteObject"
    resources = json.dumps(replace["Resource"])
    for suffix in keys.OUTPUT_SUFFIXES:
        assert f"/*{suffix}" in resources
    assert len(replace["Resource"]) == len(keys.OUTPUT_SUFFIXES)
    assert "input" not in resources and "_jobs" not in resources
    deletes = [st for st in s.values() if "s3:DeleteObject" in json.dumps(st["Action"])]
    assert deletes == [replace]


def _assert_lists_only_the_two_buckets(s: dict) -> None:
    """ListBucket turns a missing key's 403 into a 404; on the two pipeline buckets only."""
    listing = s["TellMissingFromForbidden"]
    assert listing["Action"] == "s3:ListBucket"
    text = json.dumps(listing["Resource"])
    assert "whisper-dev-input-" in text and "whisper-dev-output-" in text and "/*" not in text


def test_engine_build_project_gpu_image_compute_env_and_role(dev: Synth) -> None:
    eb = dev.stacks.engine_build
    assert eb is not None
    project = next(iter(resources(dev, eb, "AWS::CodeBuild::Project").values()))["Properties"]
    environment = project["Environment"]
    assert environment["Type"] == GPU_ENVIRONMENT == "LINUX_GPU_CONTAINER"
    assert environment["ComputeType"] == "BUILD_GENERAL1_SMALL"  # 1x A10G = ml.g5; never the LARGE default
    assert environment["Image"] == dev.cfg.engine_build.build_image
    assert environment["PrivilegedMode"] is False
    variables = {v["Name"]: v["Value"] for v in environment["EnvironmentVariables"]}
    spec = EngineBuildSpec.from_env({k: v for k, v in variables.items() if isinstance(v, str)} | {
        "ENGINE_MODEL_BUCKET": "bucket"})
    assert spec.gpu_arch == "sm86" and spec.model_name == "large-v3" and spec.max_batch == 16
    assert spec.base_model_prefix == "hf/openai-whisper-large-v3/" and spec.artifact_prefix == "engines/large-v3"
    assert "whisper-dev-models-" in json.dumps(variables["ENGINE_MODEL_BUCKET"])
    assert project["TimeoutInMinutes"] == 180 and project["ConcurrentBuildLimit"] == 1
    assert "EncryptionKey" in project and project["Source"]["Type"] == "S3"
    assert project["LogsConfig"]["CloudWatchLogs"]["Status"] == "ENABLED"
    s = statements(dev, eb)
    assert "/hf/openai-whisper-large-v3/*" in json.dumps(s["ReadWeights"]["Resource"])
    assert s["WriteArtifacts"]["Action"] == ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    assert "/engines/large-v3/*" in json.dumps(s["WriteArtifacts"]["Resource"])
    outputs = dev.template_json(eb)["Outputs"]
    assert "EngineBuildProjectName" in outputs


def test_engine_build_buildspec_comes_from_the_file(dev: Synth) -> None:
    import yaml

    eb = dev.stacks.engine_build
    project = next(iter(resources(dev, eb, "AWS::CodeBuild::Project").values()))["Properties"]
    assert yaml.safe_load(project["Source"]["BuildSpec"]) == yaml.safe_load(BUILDSPEC.read_text())


def test_engine_build_source_zip_holds_what_the_buildspec_runs(dev: Synth) -> None:
    files = dev.asset_manifest(dev.stacks.engine_build)["files"]
    staged = [dev.outdir / a["source"]["path"] for a in files.values() if a["source"].get("packaging") == "zip"]
    assert len(staged) == 1
    root = staged[0]
    for path in ("containers/engine_build/build.py", "containers/whisper/whisper_server/backends/base.py",
                 "whisper_contract/engine_spec.py", "whisper_eval/clips.py", "tests/data/audio/MANIFEST.tsv"):
        assert (root / path).is_file(), path
    assert sorted(p.name for p in root.iterdir()) == ["containers", "pyproject.toml", "tests", "whisper_build",
                                                      "whisper_contract", "whisper_eval"]
    assert not (root / "containers" / "whisper" / "serve").exists()  # only what the build needs
    assert not list(root.rglob("__pycache__"))


def test_engine_build_ecr_image_is_pulled_with_the_service_role(synth_variant: Any) -> None:
    import copy

    from stacks.image import REPO_ROOT

    eb = copy.deepcopy(json.loads((REPO_ROOT / "cdk.json").read_text())["context"]["environments"]["dev"]
                       ["engine_build"])
    eb["build_image"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/trtllm-build:0.20.0"
    synth = synth_variant("dev", {"engine_build": eb})
    project = next(iter(resources(synth, synth.stacks.engine_build, "AWS::CodeBuild::Project").values()))
    assert project["Properties"]["Environment"]["ImagePullCredentialsType"] == "SERVICE_ROLE"
    assert project["Properties"]["Environment"]["Type"] == "LINUX_GPU_CONTAINER"


def test_no_engine_build_stack_without_the_section(synth_variant: Any) -> None:
    synth = synth_variant("dev", {"engine_build": None, "instance_type": "ml.g6.xlarge"})
    assert synth.stacks.engine_build is None


def test_dashboard_covers_the_operational_signals(dev: Synth) -> None:
    body = json.dumps(next(iter(resources(dev, dev.stacks.operations, "AWS::CloudWatch::Dashboard").values())))
    for metric in ("ApproximateBacklogSize", "ApproximateBacklogSizePerInstance", "HasBacklogWithoutCapacity",
                   "ApproximateAgeOfOldestRequest", "Invocation4XXErrors", "Invocation5XXErrors", "ModelLatency",
                   "CPUUtilization", "Errors", "Throttles", "ApproximateNumberOfMessagesVisible"):
        assert f'\\"{metric}\\"' in body, metric
    assert '\\"/aws/sagemaker/Endpoints\\",\\"CPUUtilization\\"' in body  # instance metrics' namespace
    assert "GPUUtilization" in body
    # Async endpoints do not publish these; a widget on them would stay empty forever.
    for absent in ("\\\"Invocations\\\",\\\"EndpointName", "InvocationsPerInstance", "OverheadLatency"):
        assert absent not in body


def test_stack_outputs_the_cli_reads(dev: Synth) -> None:
    outputs = {k for s in dev.stacks.all() for k in dev.template_json(s).get("Outputs", {})}
    assert {"InputBucketName", "OutputBucketName", "ModelBucketName", "EndpointName", "SuccessTopicArn",
            "ErrorTopicArn", "OpsTopicArn", "IngestQueueUrl", "IngestDlqUrl", "CompletionQueueUrl",
            "CompletionDlqUrl", "EngineBuildProjectName", "ImageUri"} <= outputs
    names = [s.stack_name for s in dev.stacks.all()]
    assert names == ["Whisper-dev-Storage", "Whisper-dev-Image", "Whisper-dev-EngineBuild", "Whisper-dev-Endpoint",
                     "Whisper-dev-Ingestion", "Whisper-dev-Completion", "Whisper-dev-Operations"]


# --- Lambda code assets ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["submit", "complete"])
def test_lambda_asset_holds_the_handler_and_the_contract(dev: Synth, name: str) -> None:
    stack = dev.stacks.ingestion if name == "submit" else dev.stacks.completion
    files = dev.asset_manifest(stack)["files"]
    fn = next(iter(resources(dev, stack, "AWS::Lambda::Function").values()))["Properties"]
    key = fn["Code"]["S3Key"]
    asset = next(a for a in files.values() if a["destinations"] and
                 next(iter(a["destinations"].values()))["objectKey"] == key)
    staged = dev.outdir / asset["source"]["path"]
    contract = sorted(p.name for p in (staged / "whisper_contract").iterdir())
    assert contract == sorted([p.name for p in CONTRACT_DIR.glob("*.py")] + ["prices.json"])  # + its package data
    if handler_source(name).is_file():
        assert (staged / "handler.py").read_bytes() == handler_source(name).read_bytes()
    assert not list(staged.rglob("__pycache__"))


def test_staging_is_fresh_and_deterministic(tmp_path: Path) -> None:
    first = stage_lambda_asset("submit", tmp_path)
    (first / "stale.py").write_text("x = 1\n")
    second = stage_lambda_asset("submit", tmp_path)
    assert first != second and not (second / "stale.py").exists()
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*.py") if p.name != "stale.py") == \
        sorted(p.relative_to(second).as_posix() for p in second.rglob("*.py"))


def test_staged_handler_imports_with_only_the_staged_files(tmp_path: Path) -> None:
    """What Lambda does: import handler.py from the asset root, with nothing else on the path."""
    import subprocess
    import sys

    staged = stage_lambda_asset("complete", tmp_path)
    code = "import handler, whisper_contract; print(callable(handler.handler), whisper_contract.__file__)"
    # -B: no __pycache__ left in the asset folder to be counted below (Lambda compiles on import).
    result = subprocess.run([sys.executable, "-E", "-s", "-B", "-c", code], cwd=staged, capture_output=True,
                            text=True, timeout=60)
    ok, contract_file = result.stdout.split()
    assert ok == "True", result.stderr
    assert contract_file.startswith(str(staged))  # the staged copy, not the repository's
    with zipfile.ZipFile(tmp_path / "x.zip", "w", zipfile.ZIP_DEFLATED) as z:  # and it is small, zipped as CDK does
        for p in staged.rglob("*"):
            z.write(p, p.relative_to(staged))
    assert (tmp_path / "x.zip").stat().st_size < 200_000
