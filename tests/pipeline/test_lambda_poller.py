"""The local SQS -> Lambda event source: batchItemFailures, visibility timeout, redrive to the DLQ."""

from __future__ import annotations

import json
import time
import uuid

import boto3

from whisper_local.lambda_poller import SqsPoller, failed_ids


def queue_with_dlq(sqs, max_receive_count=2):
    suffix = uuid.uuid4().hex[:8]
    dlq = sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName=f"q-{suffix}", Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})})["QueueUrl"]
    return queue, dlq


def count(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"]) + int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def test_poison_message_reaches_the_dlq_and_good_ones_are_deleted(fake_aws_env):
    sqs = boto3.client("sqs", endpoint_url=fake_aws_env)
    queue, dlq = queue_with_dlq(sqs)
    seen: list[dict] = []

    def handler(event, context):
        seen.append(event)
        assert context.get_remaining_time_in_millis() > 0
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "poison"]}

    sqs.send_message(QueueUrl=queue, MessageBody="good")
    sqs.send_message(QueueUrl=queue, MessageBody="poison")
    poller = SqsPoller(name="t", sqs=sqs, queue_url=queue, handler=handler, batch_size=10, wait_s=1)
    deadline = time.time() + 20
    while time.time() < deadline and count(sqs, dlq) == 0:
        poller.poll_once()
    record = seen[0]["Records"][0]
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"].endswith(queue.rsplit("/", 1)[1])
    assert {"messageId", "receiptHandle", "body", "attributes", "messageAttributes", "awsRegion"} <= set(record)
    bodies = [r["body"] for e in seen for r in e["Records"]]
    assert bodies.count("good") == 1  # deleted after its success
    assert bodies.count("poison") == 2  # maxReceiveCount receives, then moved
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in dead] == ["poison"]
    assert count(sqs, queue) == 0


def test_an_exception_keeps_the_whole_batch():
    assert failed_ids(None, {"a", "b"}) == set()
    assert failed_ids({"batchItemFailures": []}, {"a", "b"}) == set()
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": "a"}]}, {"a", "b"}) == {"a"}
    # Lambda's rules: an unknown or empty identifier fails the whole batch.
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, {"a", "b"}) == {"a", "b"}
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}) == {"a", "b"}
    assert failed_ids("oops", {"a"}) == {"a"}


def test_a_raising_handler_returns_messages_to_the_queue(fake_aws_env):
    sqs = boto3.client("sqs", endpoint_url=fake_aws_env)
    queue, dlq = queue_with_dlq(sqs, max_receive_count=5)
    sqs.send_message(QueueUrl=queue, MessageBody="x")

    def boom(event, context):
        raise RuntimeError("crash")

    poller = SqsPoller(name="t", sqs=sqs, queue_url=queue, handler=boom, wait_s=1)
    assert poller.poll_once() == 1
    assert count(sqs, queue) == 1 and count(sqs, dlq) == 0
