"""The SageMaker async stand-in, called by an unmodified boto3 sagemaker-runtime client."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from whisper_contract import ErrorRecord, Transcript
from whisper_local.sagemaker_async import AsyncEndpointConfig, AsyncRuntime


@pytest.fixture
def endpoint(fake_aws_env, fake_container_url):
    moto_url = fake_aws_env
    s3 = boto3.client("s3", endpoint_url=moto_url)
    sns = boto3.client("sns", endpoint_url=moto_url)
    sqs = boto3.client("sqs", endpoint_url=moto_url)
    suffix = uuid.uuid4().hex[:8]
    bucket = f"sm-{suffix}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"notes-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topics = {}
    for kind in ("success", "error"):
        topics[kind] = sns.create_topic(Name=f"{kind}-{suffix}")["TopicArn"]
        sns.subscribe(TopicArn=topics[kind], Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    runtime = AsyncRuntime(AsyncEndpointConfig(
        endpoint_name="ep", container_url=fake_container_url, s3_output_path=f"s3://{bucket}/_async/output/",
        s3_failure_path=f"s3://{bucket}/_async/failure", success_topic_arn=topics["success"],
        error_topic_arn=topics["error"], aws_endpoint_url=moto_url, max_concurrency=2)).start()
    client = boto3.client("sagemaker-runtime", endpoint_url=runtime.url)

    def notification():
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, WaitTimeSeconds=10)
        message = got["Messages"][0]
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return json.loads(message["Body"])

    yield client, s3, bucket, notification, runtime, topics
    runtime.stop()


def test_success_writes_the_output_and_publishes_the_documented_notification(endpoint):
    client, s3, bucket, notification, runtime, topics = endpoint
    s3.put_object(Bucket=bucket, Key="in/a b.flac", Body=b"fLaC" + b"\0" * 100)

    response = client.invoke_endpoint_async(
        EndpointName="ep", InputLocation=f"s3://{bucket}/in/a b.flac", InferenceId="job-1",
        CustomAttributes="language=de&formats=srt", ContentType="audio/flac", Accept="application/json",
        InvocationTimeoutSeconds=60, RequestTTLSeconds=600)

    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["InferenceId"] == "job-1"
    assert response["OutputLocation"] == f"s3://{bucket}/_async/output/job-1.out"
    assert response["FailureLocation"] == f"s3://{bucket}/_async/failure/job-1-error.out"
    note = notification()
    assert note["invocationStatus"] == "Completed" and note["inferenceId"] == "job-1"
    assert note["requestParameters"]["inputLocation"] == f"s3://{bucket}/in/a b.flac"
    assert note["responseParameters"]["outputLocation"] == response["OutputLocation"]
    assert {"awsRegion", "eventTime", "receivedTime", "eventSource", "eventName"} <= set(note)
    transcript = Transcript.from_json(s3.get_object(Bucket=bucket, Key="_async/output/job-1.out")["Body"].read())
    assert transcript.language == "de"  # custom attributes reached the container
    assert transcript.options["formats"] == ["srt"]
    assert transcript.text.startswith("fake transcript of 104 bytes")


def test_model_error_writes_the_failure_object_and_publishes_to_the_error_topic(endpoint):
    client, s3, bucket, notification, runtime, topics = endpoint
    s3.put_object(Bucket=bucket, Key="bad.wav", Body=b"garbage")
    response = client.invoke_endpoint_async(EndpointName="ep", InputLocation=f"s3://{bucket}/bad.wav")
    note = notification()
    assert note["invocationStatus"] == "Failed" and note["inferenceId"] == response["InferenceId"]
    assert "(422)" in note["failureReason"]
    _, key = response["FailureLocation"].split(f"s3://{bucket}/")
    error = ErrorRecord.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert error.code == "corrupt_audio"
    assert runtime.status()["failed"] == 1


def test_validation_errors_are_botocore_validation_errors(endpoint):
    client, s3, bucket, *_ = endpoint
    with pytest.raises(ClientError) as err:
        client.invoke_endpoint_async(EndpointName="other", InputLocation=f"s3://{bucket}/x.wav")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_missing_input_object_fails_with_a_notification(endpoint):
    client, s3, bucket, notification, *_ = endpoint
    response = client.invoke_endpoint_async(EndpointName="ep", InputLocation=f"s3://{bucket}/nope.wav")
    note = notification()
    assert note["invocationStatus"] == "Failed" and note["inferenceId"] == response["InferenceId"]
    assert "NoSuchKey" in note["failureReason"]
