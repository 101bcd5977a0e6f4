"""Lambda's SQS event source mapping, locally: poll a queue, call a real handler function.

It builds the same event Lambda builds (``Records`` with ``messageId``, ``receiptHandle``,
``body``, ``attributes``, ``eventSource: aws:sqs``...), honours ``batchItemFailures``
(ReportBatchItemFailures: only the named messages stay on the queue; an exception or a
malformed answer keeps the whole batch), and deletes the rest. Messages left on the queue
reappear after the queue's visibility timeout, and the queue's own redrive policy moves a
message to its DLQ after ``maxReceiveCount`` receives: moto implements both, as SQS does.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("whisper_local.lambda")

Handler = Callable[[dict[str, Any], Any], Any]

# Lambda runs one event per process; here both functions share one process, and the
# handlers create clients from boto3's default session, which is not thread-safe. So one
# handler call at a time (they are short: the transcription itself runs in the container).
_ONE_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class LambdaContext:
    """The attributes of Lambda's context object that handlers commonly read."""

    function_name: str
    aws_request_id: str
    deadline: float
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    return {"Records": [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": m.get("MessageAttributes", {}),
            "md5OfBody": m.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        }
        for m in messages
    ]}


def failed_ids(result: Any, batch_ids: set[str]) -> set[str]:
    """The messages to keep, per Lambda's ReportBatchItemFailures rules."""
    if result is None:
        return set()
    if not isinstance(result, dict):
        return set(batch_ids)
    failures = result.get("batchItemFailures") or []
    ids = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not item or item not in batch_ids:
            return set(batch_ids)  # Lambda treats an unknown identifier as a failed batch
        ids.add(item)
    return ids


class SqsPoller:
    def __init__(self, *, name: str, sqs: Any, queue_url: str, handler: Handler, batch_size: int = 10,
                 timeout_s: float = 60, wait_s: int = 1, region: str = "us-east-1") -> None:
        self.name = name
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.region = region
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"lambda-{name}", daemon=True)
        self.invocations = 0
        self.errors = 0

    def start(self) -> "SqsPoller":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.wait_s + self.timeout_s)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:  # the poller must outlive a bad moment of the queue service
                log.exception("%s: polling failed", self.name)
                self.stopping.wait(1)

    def poll_once(self) -> int:
        """One receive + invoke + delete round; returns how many messages it received."""
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size,
                                       WaitTimeSeconds=self.wait_s, AttributeNames=["All"],
                                       MessageAttributeNames=["All"])
        messages = got.get("Messages", [])
        if not messages:
            return 0
        event = sqs_event(messages, self.queue_arn, self.region)
        context = LambdaContext(function_name=self.name, aws_request_id=str(uuid.uuid4()),
                                deadline=time.time() + self.timeout_s)
        batch_ids = {m["MessageId"] for m in messages}
        self.invocations += 1
        try:
            with _ONE_AT_A_TIME:
                result = self.handler(event, context)
            keep = failed_ids(result, batch_ids)
        except Exception:
            log.exception("%s: handler raised; the whole batch returns to the queue", self.name)
            keep = batch_ids
        if keep:
            self.errors += 1
        done = [m for m in messages if m["MessageId"] not in keep]
        for start in range(0, len(done), 10):
            chunk = done[start:start + 10]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
        return len(messages)
