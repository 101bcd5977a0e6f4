"""Endpoint (model, async config, endpoint) and Scaling (target min 0, step policies, alarms)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from whisper_contract import env as env_names
from whisper_contract import keys

Synth = Any  # the fixture type lives in conftest.py (not importable under importlib mode)


def resources(synth: Synth, stack: Any, kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in synth.template_json(stack)["Resources"].items() if v["Type"] == kind}


def one(synth: Synth, stack: Any, kind: str) -> dict[str, Any]:
    found = resources(synth, stack, kind)
    assert len(found) == 1, f"expected one {kind}, got {list(found)}"
    return next(iter(found.values()))["Properties"]


def output_url(bucket_purpose: str, env: str, prefix: str) -> dict[str, Any]:
    return {"Fn::Join": ["", [f"s3://whisper-{env}-{bucket_purpose}-", {"Ref": "AWS::AccountId"}, "-",
                              {"Ref": "AWS::Region"}, f"/{prefix}"]]}


def test_async_config_has_output_and_failure_paths_topics_key_and_concurrency(any_env: Synth) -> None:
    ep = any_env.stacks.endpoint
    config = one(any_env, ep, "AWS::SageMaker::EndpointConfig")["AsyncInferenceConfig"]
    env = any_env.cfg.name
    out = config["OutputConfig"]
    assert out["S3OutputPath"] == output_url("output", env, keys.ASYNC_OUTPUT_PREFIX)
    assert out["S3FailurePath"] == output_url("output", env, keys.ASYNC_FAILURE_PREFIX)
    assert "Fn::ImportValue" in json.dumps(out["KmsKeyId"])  # the Storage stack's key
    topics = {k: v["Ref"] for k, v in out["NotificationConfig"].items()}
    sns = resources(any_env, ep, "AWS::SNS::Topic")
    assert set(topics) == {"SuccessTopic", "ErrorTopic"} and set(topics.values()) <= set(sns)
    assert all("KmsMasterKeyId" in t["Properties"] for t in sns.values())
    assert config["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": any_env.cfg.max_concurrent_invocations}


def test_variant_and_storage_key(dev: Synth) -> None:
    config = one(dev, dev.stacks.endpoint, "AWS::SageMaker::EndpointConfig")
    variant = config["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic" and variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 1  # SageMaker starts with one; scaling takes it to 0
    # Without an AMI override async GPU hosts run driver 470 / CUDA 11.4; the image needs CUDA 12.4.
    assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1"
    # ml.g5 has NVMe instance storage: SageMaker rejects a volume KmsKeyId for it.
    assert "KmsKeyId" not in config


def test_endpoint_uses_config_and_a_fixed_name(dev: Synth) -> None:
    endpoint = one(dev, dev.stacks.endpoint, "AWS::SageMaker::Endpoint")
    assert endpoint["EndpointName"] == "whisper-dev"
    assert "Fn::GetAtt" in endpoint["EndpointConfigName"]


def test_updates_keep_the_scaled_instance_count(any_env: Synth) -> None:
    """Without it, every image/model/config update resets the variant to InitialInstanceCount."""
    endpoint = one(any_env, any_env.stacks.endpoint, "AWS::SageMaker::Endpoint")
    assert endpoint["RetainAllVariantProperties"] is True
    assert "ExcludeRetainedVariantProperties" not in endpoint


def test_byoc_model_env_image_and_model_prefix(dev: Synth) -> None:
    model = one(dev, dev.stacks.endpoint, "AWS::SageMaker::Model")
    container = model["PrimaryContainer"]
    assert container["Environment"] == {
        env_names.BACKEND: "faster-whisper", env_names.DEVICE: "cuda", env_names.COMPUTE_TYPE: "float16",
        env_names.MODEL_NAME: "large-v3", env_names.MODEL_DIR: "/opt/ml/model",
        # the container gives up 300 s before SageMaker's 3600 s: its readable timeout error wins
        env_names.MAX_CONCURRENCY: "4", env_names.REQUEST_TIMEOUT_S: "3300",
        env_names.INSTANCE_TYPE: "ml.g5.xlarge",  # the transcripts' cost blocks are priced for it
    }
    assert "Fn::ImportValue" in json.dumps(container["Image"])  # the ECR copy from the Image stack
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": output_url("models", "dev", "models/faster-whisper-large-v3/"),
        "S3DataType": "S3Prefix", "CompressionType": "None"}
    assert model["EnableNetworkIsolation"] is False and "VpcConfig" not in model


def test_prod_endpoint_is_vpc_only_with_network_isolation(prod: Synth) -> None:
    model = one(prod, prod.stacks.endpoint, "AWS::SageMaker::Model")
    assert model["EnableNetworkIsolation"] is True
    assert len(model["VpcConfig"]["Subnets"]) == 2 and len(model["VpcConfig"]["SecurityGroupIds"]) == 1
    t = prod.template(prod.stacks.endpoint)
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    t.resource_count_is("AWS::EC2::InternetGateway", 0)
    t.resource_count_is("AWS::EC2::VPCEndpoint", 7)
    t.resource_count_is("AWS::EC2::FlowLog", 1)


@pytest.fixture(scope="module")
def dlc(synth_variant: Any) -> Synth:
    return synth_variant("dev", {"packaging": "dlc", "backend": "torch", "model_data_key": "dlc/large-v3/model.tar.gz"})


def test_dlc_packaging_uses_the_stock_pytorch_image_and_torchserve_settings(dlc: Synth) -> None:
    assert dlc.stacks.image is None  # no image to build or copy
    ep = dlc.template_json(dlc.stacks.endpoint)
    container = one(dlc, dlc.stacks.endpoint, "AWS::SageMaker::Model")["PrimaryContainer"]
    # Environment-agnostic stack: the registry account comes from a region mapping at deploy time.
    image = json.dumps(container["Image"])
    assert "Fn::FindInMap" in image and "pytorch-inference:2.6.0-gpu-py312" in image
    mapping = next(iter(ep["Mappings"].values()))
    assert mapping["us-east-1"]["value"] == "763104351884"
    env = container["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py"
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert env["TS_MAX_REQUEST_SIZE"] == env["TS_MAX_RESPONSE_SIZE"] == "1000000000"
    assert env["TS_DEFAULT_RESPONSE_TIMEOUT"] == env[env_names.REQUEST_TIMEOUT_S] == "3300"
    assert container["ModelDataUrl"] == output_url("models", "dev", "dlc/large-v3/model.tar.gz")
    pull = [s for p in resources(dlc, dlc.stacks.endpoint, "AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"] if s.get("Sid") == "PullImage"]
    assert "repository/pytorch-inference" in json.dumps(pull)


def test_dlc_image_account_is_a_literal_when_the_region_is_known(synth_variant: Any) -> None:
    synth = synth_variant("dev", {"packaging": "dlc", "backend": "torch",
                                  "model_data_key": "dlc/model.tar.gz"}, region="eu-west-1")
    container = one(synth, synth.stacks.endpoint, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert json.dumps(container["Image"]).startswith('{"Fn::Join": ["", ["763104351884.dkr.ecr.eu-west-1.')
    assert "Mappings" not in synth.template_json(synth.stacks.endpoint)


def test_triton_backend_serves_the_configured_engine_version(synth_variant: Any) -> None:
    dev_build = json.loads((Path(__file__).parents[2] / "cdk.json").read_text())[
        "context"]["environments"]["dev"]["engine_build"]
    synth = synth_variant("dev", {"backend": "triton", "engine_build": {**dev_build, "serve_version": "v20261123-1"},
                                  "inference_ami_version": "al2-ami-sagemaker-inference-gpu-2-1"})
    container = one(synth, synth.stacks.endpoint, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert container["Environment"][env_names.BACKEND] == "triton"
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"] == output_url(
        "models", "dev", "engines/large-v3/v20261123-1/")
    # The serving image is built FROM the engine build's image: same TensorRT-LLM version.
    assert synth.stacks.image is not None
    image = next(iter(synth.asset_manifest(synth.stacks.image)["dockerImages"].values()))["source"]
    assert image["dockerFile"] == "containers/whisper/Dockerfile.triton"
    assert image["dockerBuildArgs"] == {"TRITON_IMAGE": dev_build["build_image"]}
    # CUDA 12.8 on driver 535: forward compatibility (serve loads the image's compat libraries).
    variant = one(synth, synth.stacks.endpoint, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-2-1"


def test_scalable_target_min_zero_and_service_linked_role(any_env: Synth) -> None:
    target = one(any_env, any_env.stacks.endpoint, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0 and target["MaxCapacity"] == any_env.cfg.max_instances
    assert target["ServiceNamespace"] == "sagemaker"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["ResourceId"] == f"endpoint/whisper-{any_env.cfg.name}/variant/AllTraffic"
    assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in json.dumps(target["RoleARN"])


def policies_by_alarm(synth: Synth) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Metric name + comparison -> (alarm properties, step policy configuration)."""
    ep = synth.stacks.endpoint
    policies = resources(synth, ep, "AWS::ApplicationAutoScaling::ScalingPolicy")
    out = {}
    for alarm in resources(synth, ep, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        actions = [a["Ref"] for a in props.get("AlarmActions", []) if "Ref" in a and a["Ref"] in policies]
        if actions:
            out[f"{props['MetricName']} {props['ComparisonOperator']}"] = (
                props, policies[actions[0]]["Properties"]["StepScalingPolicyConfiguration"])
    return out


def test_step_policies_exact_metrics_thresholds_and_adjustments(dev: Synth) -> None:
    cfg = dev.cfg
    found = policies_by_alarm(dev)
    assert set(found) == {
        "HasBacklogWithoutCapacity GreaterThanOrEqualToThreshold",
        "ApproximateBacklogSizePerInstance GreaterThanOrEqualToThreshold",
        "ApproximateBacklogSizePerInstance LessThanThreshold",
    }
    for alarm, policy in found.values():
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "whisper-dev"}]  # ONLY EndpointName
        assert alarm["Period"] == 60 and alarm["Statistic"] == "Average"
        assert policy["AdjustmentType"] == "ChangeInCapacity" and policy["MetricAggregationType"] == "Average"

    alarm, policy = found["HasBacklogWithoutCapacity GreaterThanOrEqualToThreshold"]
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["TreatMissingData"]) == (1, 1, "notBreaching")
    assert policy["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    assert policy["Cooldown"] == cfg.scale_out_cooldown_s

    alarm, policy = found["ApproximateBacklogSizePerInstance GreaterThanOrEqualToThreshold"]
    target = cfg.backlog_per_instance_target
    assert (alarm["Threshold"], alarm["EvaluationPeriods"]) == (target, 2)
    assert policy["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": target, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": target, "ScalingAdjustment": 2}]
    assert policy["Cooldown"] == cfg.scale_out_cooldown_s

    alarm, policy = found["ApproximateBacklogSizePerInstance LessThanThreshold"]
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (
        1, cfg.scale_in_idle_minutes, cfg.scale_in_idle_minutes)
    assert alarm["TreatMissingData"] == "missing"
    assert policy["StepAdjustments"] == [{"MetricIntervalUpperBound": 0, "ScalingAdjustment": -1}]
    assert policy["Cooldown"] == cfg.scale_in_cooldown_s


def _sagemaker_metrics_in(template: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(namespace, metric, dimension names) of every alarm and dashboard metric on SageMaker."""
    from whisper_constructs.sagemaker_metrics import ENDPOINT_NAMESPACE, INSTANCE_NAMESPACE

    found = []
    for resource in template["Resources"].values():
        props = resource["Properties"]
        if resource["Type"] == "AWS::CloudWatch::Alarm" and props["Namespace"] in (ENDPOINT_NAMESPACE, INSTANCE_NAMESPACE):
            found.append((props["Namespace"], props["MetricName"], [d["Name"] for d in props["Dimensions"]]))
        if resource["Type"] == "AWS::CloudWatch::Dashboard":
            # The body is an Fn::Join of JSON text and tokens (function/queue names): tokens -> "X".
            body = json.loads("".join(p if isinstance(p, str) else "X" for p in props["DashboardBody"]["Fn::Join"][1]))
            for widget in body["widgets"]:
                for metric in widget["properties"].get("metrics", []):
                    names = [m for m in metric if isinstance(m, str)]
                    if names and names[0] in (ENDPOINT_NAMESPACE, INSTANCE_NAMESPACE):  # (not an expression)
                        found.append((names[0], names[1], names[2::2]))
    return found


def test_every_alarm_and_widget_uses_the_dimensions_sagemaker_publishes(any_env: Synth) -> None:
    from whisper_constructs.sagemaker_metrics import SAGEMAKER_METRICS

    found = [m for stack in any_env.stacks.all() for m in _sagemaker_metrics_in(any_env.template_json(stack))]
    assert len(found) >= 5 + 12  # 5 endpoint alarms, 12 dashboard metrics
    for namespace, metric, dimensions in found:
        spec = SAGEMAKER_METRICS[metric]
        assert (namespace, sorted(dimensions)) == (spec.namespace, sorted(spec.dimensions)), metric
    five_xx = [d for _, metric, d in found if metric == "Invocation5XXErrors"]
    assert ["EndpointName", "VariantName"] in [sorted(d) for d in five_xx]  # the alarm can fire


def test_ops_alarms_on_age_and_failures_go_to_the_ops_topic(dev: Synth) -> None:
    t = dev.template(dev.stacks.endpoint)
    ops_topic = Match.array_with([Match.object_like({"Fn::ImportValue": Match.string_like_regexp("OpsTopic")})])
    t.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "ApproximateAgeOfOldestRequest", "Statistic": "Maximum", "Period": 300,
        "Threshold": dev.cfg.oldest_request_alarm_s, "ComparisonOperator": "GreaterThanThreshold",
        "AlarmActions": ops_topic})
    t.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "Invocation5XXErrors", "Statistic": "Sum", "Period": 300,
        "Threshold": dev.cfg.failure_alarm_threshold, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": ops_topic})


def test_endpoint_log_group_is_created_first_with_kms_and_retention(dev: Synth) -> None:
    t = dev.template(dev.stacks.endpoint)
    t.has_resource_properties("AWS::Logs::LogGroup", {
        "LogGroupName": "/aws/sagemaker/Endpoints/whisper-dev", "RetentionInDays": 14,
        "KmsKeyId": Match.any_value()})
    endpoint = next(v for v in dev.template_json(dev.stacks.endpoint)["Resources"].values()
                    if v["Type"] == "AWS::SageMaker::Endpoint")
    assert any(d.startswith("EndpointLogs") for d in endpoint["DependsOn"])


def test_execution_role_is_least_privilege(any_env: Synth) -> None:
    ep = any_env.stacks.endpoint
    role = next(r for r in resources(any_env, ep, "AWS::IAM::Role").values()
                if "sagemaker.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"]))
    assert "ManagedPolicyArns" not in role["Properties"]
    statements = {s["Sid"]: s for p in resources(any_env, ep, "AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"] if "Sid" in s}
    env = any_env.cfg.name
    assert statements["WriteAsyncResults"]["Action"] == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert json.dumps(statements["WriteAsyncResults"]["Resource"]).count("/_async/") == 2
    assert f"whisper-{env}-models-" in json.dumps(statements["ReadModelArtifact"]["Resource"])
    assert statements["ListModelPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["models/faster-whisper-large-v3/*"]}}
    assert statements["PublishResults"]["Action"] == "sns:Publish" and len(statements["PublishResults"]["Resource"]) == 2
    assert statements["UseDataKey"]["Resource"] != "*"
    assert statements["PullImage"]["Resource"] != "*"
