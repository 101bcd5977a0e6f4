"""moto in server mode on loopback, fresh buckets per test, and real S3 event messages."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
import pytest


REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_url(moto_url: str) -> str:
    """The session's moto server, with S3 events carrying ``sequencer``/``versionId`` as AWS's
    do (the server runs in this process, so wrapping moto's event builder reaches it)."""
    from whisper_local import moto_s3_events

    moto_s3_events.install()
    return moto_url


@dataclass
class Aws:
    url: str
    s3: Any
    sqs: Any
    input_bucket: str
    output_bucket: str
    events_queue: str

    def upload(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Upload, then return the SQS event Lambda would get: moto's own S3 notification."""
        self.s3.put_object(Bucket=self.input_bucket, Key=key, Body=body, Metadata=metadata or {})
        return self.next_event()

    def next_event(self) -> dict[str, Any]:
        got = self.sqs.receive_message(QueueUrl=self.events_queue, MaxNumberOfMessages=1, WaitTimeSeconds=2)
        message = got["Messages"][0]
        self.sqs.delete_message(QueueUrl=self.events_queue, ReceiptHandle=message["ReceiptHandle"])
        return sqs_event(message["Body"])

    @staticmethod
    def event(*bodies: str) -> dict[str, Any]:
        return sqs_event(*bodies)

    @staticmethod
    def job_id(event: dict[str, Any]) -> str:
        """The inference id the trigger gives the (first) upload in an SQS event from moto."""
        from urllib.parse import unquote_plus

        from whisper_contract.keys import inference_id, revision

        record = json.loads(event["Records"][0]["body"])["Records"][0]
        obj = record["s3"]["object"]
        return inference_id(record["s3"]["bucket"]["name"], unquote_plus(obj["key"]),
                            revision(obj.get("versionId"), obj.get("sequencer"), obj.get("eTag"), record["eventTime"]))

    def output(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()

    def output_keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.output_bucket).get("Contents", []))


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {"Records": [
        {"messageId": str(uuid.uuid4()), "receiptHandle": "rh", "body": body, "attributes": {},
         "messageAttributes": {}, "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
         "awsRegion": REGION}
        for body in bodies
    ]}


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                        "AWS_ENDPOINT_URL": moto_url}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto_url)
    sqs = boto3.client("sqs", endpoint_url=moto_url)
    suffix = uuid.uuid4().hex[:8]
    aws = Aws(moto_url, s3, sqs, f"in-{suffix}", f"out-{suffix}", "")
    s3.create_bucket(Bucket=aws.input_bucket)
    s3.create_bucket(Bucket=aws.output_bucket)
    queue = sqs.create_queue(QueueName=f"events-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=aws.input_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    aws.events_queue = queue
    test_event = aws.next_event()  # S3 sends s3:TestEvent when notifications are configured
    assert json.loads(test_event["Records"][0]["body"])["Event"] == "s3:TestEvent"
    aws.first_event = test_event  # type: ignore[attr-defined]
    monkeypatch.setenv("OUTPUT_BUCKET", aws.output_bucket)
    monkeypatch.setenv("INPUT_BUCKET", aws.input_bucket)
    monkeypatch.setenv("ENDPOINT_NAME", "whisper-test")
    monkeypatch.setenv("DEFAULT_OPTIONS", "formats=json,txt")
    monkeypatch.setenv("INVOCATION_TIMEOUT_S", "900")
    monkeypatch.setenv("REQUEST_TTL_S", "3600")
    return aws
