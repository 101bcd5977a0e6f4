"""whisper-sm against AWS: names come from the deployed stacks' outputs (moto CloudFormation)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from whisper_cli import core
from whisper_contract import RequestOptions

REPO = Path(__file__).resolve().parents[2]
REPO_CDK_JSON = REPO / "cdk.json"
SNAPSHOTS = REPO / "tests" / "infra" / "snapshots"


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
    cloud.create_stack(StackName="Whisper-dev-Storage", TemplateBody=template(
        {"InputBucketName": "in-dev", "OutputBucketName": "out-dev", "ModelBucketName": "m"}))
    cloud.create_stack(StackName="Whisper-dev-Endpoint", TemplateBody=template({"EndpointName": "whisper-dev"}))
    cloud.create_stack(StackName="Whisper-prod-Storage", TemplateBody=template(
        {"InputBucketName": "in-prod", "OutputBucketName": "out-prod"}))

    target = core.resolve("dev")

    assert (target.input_bucket, target.output_bucket, target.endpoint_name) == ("in-dev", "out-dev", "whisper-dev")


def test_only_the_environments_own_stacks_are_read(cloud):
    """`dev` is a substring of many stack names in a shared account; only the exact names the
    CDK app gives count (moto CloudFormation lists stacks in creation order)."""
    cloud.create_stack(StackName="Whisper-dev-Storage", TemplateBody=template(
        {"InputBucketName": "in-dev", "OutputBucketName": "out-dev"}))
    cloud.create_stack(StackName="Whisper-dev-Endpoint", TemplateBody=template({"EndpointName": "whisper-dev"}))
    for impostor in ("payments-dev-db", "Whisper-devtest-Storage", "Whisper-dev-Storage-old"):
        cloud.create_stack(StackName=impostor, TemplateBody=template(
            {"InputBucketName": "theirs", "OutputBucketName": "theirs", "EndpointName": "theirs"}))

    target = core.resolve("dev")

    assert (target.input_bucket, target.output_bucket, target.endpoint_name) == ("in-dev", "out-dev", "whisper-dev")


def test_an_environment_without_its_own_stacks_is_not_found_by_substring(cloud):
    cloud.create_stack(StackName="payments-dev-db", TemplateBody=template(
        {"InputBucketName": "theirs", "OutputBucketName": "theirs", "EndpointName": "theirs"}))
    with pytest.raises(RuntimeError, match="Whisper-dev-Storage, Whisper-dev-Endpoint"):
        core.resolve("dev")


@pytest.mark.parametrize("env_name", sorted(json.loads(REPO_CDK_JSON.read_text())["context"]["environments"]))
def test_stack_names_are_those_of_the_cdk_app(env_name):
    """The CLI cannot import the CDK app (a user's venv has no aws_cdk). The reviewed template
    snapshots carry the app's stack names, and tests/infra checks them against the app."""
    for part, outputs in core.OUTPUT_STACKS.items():
        snapshot = json.loads((SNAPSHOTS / env_name / f"{core.stack_name(env_name, part)}.json").read_text())
        assert set(outputs) <= set(snapshot["Outputs"]), part


def test_missing_outputs_name_what_is_missing(cloud):
    cloud.create_stack(StackName="Whisper-dev-Storage", TemplateBody=template({"InputBucketName": "in-dev"}))
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
    cloud.create_stack(StackName="Whisper-dev-Storage", TemplateBody=template(
        {"InputBucketName": "i", "OutputBucketName": "o"}))
    cloud.create_stack(StackName="Whisper-dev-Endpoint", TemplateBody=template({"EndpointName": "whisper-dev"}))

    from whisper_cli.main import main

    assert main(["status", "--env", "dev", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["endpoint_status"], status["instances"], status["backlog"]) == ("InService", 1, 7)


def test_non_ascii_options_are_refused_before_upload(tmp_path):
    from whisper_contract import RequestOptions

    target = core.Target("dev", "i", "o", "e", s3=None)  # never reached
    with pytest.raises(ValueError, match="initial_prompt must be ASCII"):
        core.upload(target, [(tmp_path / "a.mp3", "a.mp3")], RequestOptions(initial_prompt="Grüße"))


def test_options_the_user_gives_survive_the_deployments_defaults(moto_url, monkeypatch, tmp_path):
    """`submit --formats json` against a deployment whose DEFAULT_OPTIONS ask for four formats:
    the trigger (real handler, moto S3 in server mode) must run the job with json only, and
    still take from the defaults what the user did not say (vad=false here)."""
    import uuid

    from botocore.stub import ANY, Stubber

    from whisper_cli.main import _options, build_parser
    from whisper_contract import env
    from whisper_contract.jobs import JobRecord, KeyIndex
    from whisper_contract.keys import job_key, key_index_key, plain_etag
    from whisper_lambdas.submit.handler import Submitter, Upload

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto_url)
    suffix = uuid.uuid4().hex[:8]
    inp, out = f"cli-in-{suffix}", f"cli-out-{suffix}"
    s3.create_bucket(Bucket=inp)
    s3.create_bucket(Bucket=out)
    audio = tmp_path / "a.flac"
    audio.write_bytes(b"fLaC not really, the endpoint is stubbed")
    args = build_parser().parse_args(["submit", str(audio), "--formats", "json", "--language", "auto"])
    options, explicit = _options(args)
    [sub] = core.upload(core.Target("dev", inp, out, "e", s3), [(audio, "a.flac")], options, explicit=explicit)

    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    head = s3.head_object(Bucket=inp, Key="a.flac")
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint_async", {"InferenceId": "w-stubbed", "OutputLocation": "s3://o/x.out"},
                          {"EndpointName": "e", "InputLocation": f"s3://{inp}/a.flac", "InferenceId": ANY,
                           "CustomAttributes": "vad=false", "ContentType": ANY, "Accept": ANY,
                           "InvocationTimeoutSeconds": ANY, "RequestTTLSeconds": ANY})
        Submitter(s3, runtime, {env.ENDPOINT_NAME: "e", env.OUTPUT_BUCKET: out,
                                env.DEFAULT_OPTIONS: "formats=json,txt,srt,vtt&vad=false&language=en"}).submit(
            Upload(bucket=inp, key="a.flac", version_id=None, sequencer="0055AED6DCD90281E5",
                   etag=plain_etag(head["ETag"]), size=head["ContentLength"], event_time=None))
        stub.assert_no_pending_responses()

    index = KeyIndex.from_json(s3.get_object(Bucket=out, Key=key_index_key("a.flac"))["Body"].read())
    record = JobRecord.from_json(s3.get_object(Bucket=out, Key=job_key(index.latest_job))["Body"].read())
    ran = RequestOptions.from_query(record.options)
    assert (ran.formats, ran.language, ran.vad) == (("json",), None, False)


def test_status_queries_each_metric_with_the_dimensions_aws_publishes():
    """Backlog metrics carry EndpointName alone, invocation metrics EndpointName+VariantName:
    the Stubber refuses any call whose Dimensions differ, so a wrong set cannot read as 'no data'."""
    from datetime import datetime, timedelta, timezone

    from botocore.stub import ANY, Stubber

    sagemaker = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    now = datetime.now(timezone.utc)
    endpoint = {"EndpointName": "ep", "EndpointStatus": "InService", "EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/ep",
                "EndpointConfigName": "c", "CreationTime": now, "LastModifiedTime": now, "ProductionVariants": [
                    {"VariantName": "blue", "CurrentInstanceCount": 2, "DesiredInstanceCount": 3},
                    {"VariantName": "green", "CurrentInstanceCount": 1, "DesiredInstanceCount": 1}]}

    def expect(stub, metric, statistic, dims, values):
        stub.add_response("get_metric_statistics", {"Datapoints": [
            {"Timestamp": now - timedelta(minutes=i), statistic: v} for i, v in enumerate(values)]}, {
            "Namespace": "AWS/SageMaker", "MetricName": metric, "Dimensions": dims, "Statistics": [statistic],
            "StartTime": ANY, "EndTime": ANY, "Period": 60})

    ep = {"Name": "EndpointName", "Value": "ep"}
    with Stubber(sagemaker) as sm_stub, Stubber(cloudwatch) as cw_stub:
        sm_stub.add_response("describe_endpoint", endpoint, {"EndpointName": "ep"})
        expect(cw_stub, "ApproximateBacklogSize", "Maximum", [ep], [4, 9])  # newest first: 4 is the latest
        for metric, per_variant in (("Invocation4XXErrors", (1, 2)), ("Invocation5XXErrors", (0, 5))):
            for variant, value in zip(("blue", "green"), per_variant):
                expect(cw_stub, metric, "Sum", [ep, {"Name": "VariantName", "Value": variant}], [value])

        class Session:
            def client(self, name):
                return {"sagemaker": sagemaker, "cloudwatch": cloudwatch}[name]

        status = core.aws_status(Session(), "ep")
        sm_stub.assert_no_pending_responses()
        cw_stub.assert_no_pending_responses()

    assert (status["instances"], status["desired_instances"], status["backlog"]) == (3, 4, 4)
    assert (status["client_errors_10min"], status["model_errors_10min"]) == (3, 5)


def test_get_refuses_an_unsafe_key_and_still_fetches_the_rest(cloud, monkeypatch, tmp_path, capsys):
    """A job record (anyone who can write the output bucket can forge one) naming `../…`
    costs that one file, never the others nor a write outside --out; a key too long for a
    local file name is written under its cut name."""
    from whisper_cli.main import main
    from whisper_contract.jobs import COMPLETED, JobRecord, KeyIndex
    from whisper_contract.keys import inference_id, job_key, key_index_key, plain_etag

    for var, value in {"WHISPER_INPUT_BUCKET": "in-b", "WHISPER_OUTPUT_BUCKET": "out-b", "WHISPER_ENDPOINT_NAME": "e"}.items():
        monkeypatch.setenv(var, value)
    s3 = boto3.client("s3", region_name="eu-west-1")
    for bucket in ("in-b", "out-b"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    long_key = "x" * 251 + ".mp3"
    wanted = ["../escape.json", "a.mp3.json", f"{long_key}.json", "a.mp3.srt"]
    for key in ("a.mp3", long_key):
        s3.put_object(Bucket="in-b", Key=key, Body=b"ID3")
        etag = plain_etag(s3.head_object(Bucket="in-b", Key=key)["ETag"])
        job = inference_id("in-b", key, etag)
        results = tuple(k for k in wanted if k.startswith(key) or (key == "a.mp3" and k.startswith("..")))
        for result in results:
            s3.put_object(Bucket="out-b", Key=result, Body=result.encode())
        s3.put_object(Bucket="out-b", Key=job_key(job), Body=JobRecord(
            job, "in-b", key, COMPLETED, "", etag=etag, result_keys=results).to_json().encode())
        s3.put_object(Bucket="out-b", Key=key_index_key(key), Body=KeyIndex(
            "in-b", key, key, job, published_job=job, result_keys=results).to_json().encode())
    out = tmp_path / "out"

    code = main(["get", "a.mp3", long_key, "--env", "dev", "--out", str(out)])

    assert code == 1  # something was refused, and the exit status says so
    assert "refusing to write '../escape.json'" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "escape.json").exists()
    written = {p.name: p.read_text() for p in out.iterdir()}
    assert {written["a.mp3.json"], written["a.mp3.srt"]} == {"a.mp3.json", "a.mp3.srt"}
    [cut] = [name for name in written if name.startswith("xxx")]
    assert written[cut] == f"{long_key}.json" and cut.endswith(".json") and len(cut.encode()) <= 255
