"""``whisper-sm cost`` and the cost lines of ``whisper-sm status`` (issue 16), against moto's
SageMaker, CloudWatch, S3 and CloudFormation, and a botocore Stubber for the exact metric query."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto import mock_aws

from whisper_cli import core, cost_report
from whisper_cli.main import main
from whisper_contract.jobs import COMPLETED, FAILED, PENDING, JobRecord, KeyIndex
from whisper_contract.keys import job_key, key_index_key
from whisper_contract.result import Cost

REGION = "eu-west-1"
ENDPOINT = "whisper-dev"


def _stack(outputs: dict[str, str]) -> str:
    return json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
                       "Outputs": {k: {"Value": v} for k, v in outputs.items()}})


@pytest.fixture
def deployed(monkeypatch):
    """A dev deployment in moto: stacks with their outputs, an ml.c5.4xlarge endpoint (moto's enum of
    instance types predates g5), the output bucket."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for var in core.OVERRIDE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_model(ModelName="m", ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
                        PrimaryContainer={"Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/w:1"})
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1,
             "InstanceType": "ml.c5.4xlarge"}])
        sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="c")
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName="Whisper-dev-Storage", TemplateBody=_stack({"InputBucketName": "in",
                                                                                "OutputBucketName": "out"}))
        cfn.create_stack(StackName="Whisper-dev-Endpoint", TemplateBody=_stack({"EndpointName": ENDPOINT}))
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="out", CreateBucketConfiguration={"LocationConstraint": REGION})
        yield s3, boto3.client("cloudwatch", region_name=REGION)


def _instance_minutes(cloudwatch, times: list[datetime], variant: str = "AllTraffic") -> None:
    """One CPUUtilization datapoint per running instance per minute, as SageMaker publishes them."""
    dims = [{"Name": "EndpointName", "Value": ENDPOINT}, {"Name": "VariantName", "Value": variant}]
    for start in range(0, len(times), 20):
        cloudwatch.put_metric_data(Namespace="/aws/sagemaker/Endpoints", MetricData=[
            {"MetricName": "CPUUtilization", "Dimensions": dims, "Timestamp": t, "Value": 40.0}
            for t in times[start:start + 20]])


def _job(s3, job_id: str, state: str, completed_at: datetime | None, cost: Cost | None) -> None:
    record = JobRecord(job_id, "in", f"{job_id}.mp3", state, "", cost=cost,
                       completed_at=completed_at.isoformat().replace("+00:00", "Z") if completed_at else None)
    s3.put_object(Bucket="out", Key=job_key(job_id), Body=record.to_json().encode())


def test_cost_over_a_period_adds_instance_minutes_and_the_job_records(deployed, capsys) -> None:
    s3, cloudwatch = deployed
    now = datetime.now(timezone.utc)
    # Two instances for 30 minutes inside the last 2 hours (60 instance-minutes), and one hour
    # of a third three hours ago (outside the period).
    minutes = [now - timedelta(minutes=40 + i) for i in range(30)]
    _instance_minutes(cloudwatch, minutes + minutes)
    _instance_minutes(cloudwatch, [now - timedelta(hours=3, minutes=i) for i in range(60)])
    half_hour = Cost(compute_seconds=70.0, instance_seconds=60.0, audio_seconds=1800.0, instance_type="ml.g5.xlarge",
                     queue_seconds=95.0, price_per_hour=1.408, estimated_usd=0.023467)
    _job(s3, "a", COMPLETED, now - timedelta(minutes=30), half_hour)
    _job(s3, "b", COMPLETED, now - timedelta(minutes=20), Cost(50.0, 30.0, 1800.0, "ml.g5.xlarge",
                                                             queue_seconds=12.0, estimated_usd=0.011733))
    _job(s3, "c", FAILED, now - timedelta(minutes=10), None)  # finished, no transcript, no cost
    _job(s3, "old", COMPLETED, now - timedelta(days=2), half_hour)  # finished before the period
    _job(s3, "running", PENDING, None, None)
    s3.put_object(Bucket="out", Key=key_index_key("a.mp3"), Body=KeyIndex("in", "a.mp3", "a.mp3", "a").to_json())

    assert main(["cost", "--env", "dev", "--since", "2h", "--json"]) == 0
    spend = json.loads(capsys.readouterr().out)
    assert (spend["instance_type"], spend["price_per_hour"]) == ("ml.c5.4xlarge", 0.952)
    assert spend["instance_hours"] == 1.0 and spend["instance_usd"] == 0.952
    assert (spend["jobs"], spend["jobs_with_cost"], spend["audio_hours"]) == (3, 2, 1.0)
    assert spend["jobs_usd"] == pytest.approx(0.0352)
    assert spend["usd_per_audio_hour"] == 0.952  # the instance spend over the audio it transcribed
    # 90 of the 3,600 instance-seconds went into transcripts: the rest is cold start and idle tail.
    assert spend["unattributed_share"] == pytest.approx(1 - 90 / 3600, abs=0.001)
    assert spend["queue_seconds_max"] == 95.0

    assert main(["cost", "--env", "dev", "--since", "1d"]) == 0  # the table prints too
    assert "ml.c5.4xlarge" in capsys.readouterr().out


def test_status_shows_the_instances_backlog_and_spend_today(deployed, capsys) -> None:
    _, cloudwatch = deployed
    now = datetime.now(timezone.utc)
    times = [now - timedelta(minutes=i) for i in range(2, 7)]  # whole minutes: the current one is still open
    _instance_minutes(cloudwatch, times)
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[{
        "MetricName": "ApproximateBacklogSize", "Value": 6,
        "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT}]}])
    assert main(["status", "--env", "dev", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = sum(t >= midnight for t in times)  # a run just after 00:00 UTC sees fewer
    assert (status["instances"], status["backlog"], status["instance_type"]) == (1, 6, "ml.c5.4xlarge")
    assert status["instance_hours_today"] == round(today / 60, 3)
    assert status["spend_today_usd"] == pytest.approx(today * 0.952 / 60, abs=1e-6)


def test_the_instance_minutes_query_is_the_one_sagemaker_publishes() -> None:
    """Namespace /aws/sagemaker/Endpoints, EndpointName + VariantName, SampleCount, and a period
    that keeps a 7-day window within one call's 1,440 datapoints: the Stubber refuses anything else."""
    from botocore.stub import Stubber

    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    cloudwatch = boto3.client("cloudwatch", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    end = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    start = end - timedelta(days=7)
    with Stubber(sagemaker) as sm_stub, Stubber(cloudwatch) as cw_stub:
        sm_stub.add_response("describe_endpoint", {
            "EndpointName": "ep", "EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/ep", "EndpointConfigName": "c",
            "EndpointStatus": "InService", "CreationTime": end, "LastModifiedTime": end}, {"EndpointName": "ep"})
        sm_stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "c", "EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:endpoint-config/c",
            "CreationTime": end, "ProductionVariants": [
                {"VariantName": v, "ModelName": "m", "InstanceType": "ml.g6.xlarge"} for v in ("blue", "green")]},
            {"EndpointConfigName": "c"})
        for variant, counts in (("blue", [60, 60, 30]), ("green", [15])):
            cw_stub.add_response("get_metric_statistics", {"Datapoints": [
                {"Timestamp": end - timedelta(hours=i), "SampleCount": c} for i, c in enumerate(counts)]}, {
                "Namespace": "/aws/sagemaker/Endpoints", "MetricName": "CPUUtilization", "Statistics": ["SampleCount"],
                "Dimensions": [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": variant}],
                "StartTime": start, "EndTime": end, "Period": 3600})
        instance_type, variants = cost_report.endpoint_shape(sagemaker, "ep")
        assert cost_report.instance_minutes(cloudwatch, "ep", variants, start, end) == 165
        sm_stub.assert_no_pending_responses()
        cw_stub.assert_no_pending_responses()
    assert (instance_type, variants) == ("ml.g6.xlarge", ["blue", "green"])


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("7d", timedelta(days=7)),
    ("2026-12-01", timedelta(days=2, hours=12)), ("2026-12-03T11:00:00+01:00", timedelta(hours=2)),
])
def test_since_takes_durations_and_iso_times(text: str, expected: timedelta) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    assert now - cost_report.parse_since(text, now) == expected


def test_bad_periods_are_refused_with_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="30m, 12h, 7d"):
        cost_report.parse_since("last week", datetime.now(timezone.utc))
    assert [cost_report.period_for(timedelta(days=d)) for d in (1, 5, 60)] == [60, 300, 3600]
    with pytest.raises(ValueError, match="at most 60 days"):
        cost_report.period_for(timedelta(days=61))


def test_status_without_permission_for_the_endpoint_config_still_answers() -> None:
    from botocore.stub import Stubber

    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)

    class Session:
        def client(self, name):
            return {"sagemaker": sagemaker}[name]

    with Stubber(sagemaker) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "ep", "EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/ep", "EndpointConfigName": "c",
            "EndpointStatus": "InService", "CreationTime": now, "LastModifiedTime": now}, {"EndpointName": "ep"})
        stub.add_client_error("describe_endpoint_config", "AccessDeniedException", "not allowed", 400)
        lines = cost_report.status_spend(Session(), "ep", now=now)
    assert list(lines) == ["cost"] and "AccessDeniedException" in lines["cost"]
