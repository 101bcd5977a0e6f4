"""Fault injection around the real local pipeline, only at boundaries these tests own.

- The container is the real server behind ``chaos_container.py`` (injected 4xx/5xx, SIGKILL
  mid-request with restart), launched through ``PipelineConfig.container_cmd``.
- The trigger Lambda reaches the SageMaker stand-in through ``EndpointFaultProxy`` (throttling
  and 5xx answers in the service's own error format), by pointing
  ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` at it.
- Both Lambdas build their S3 clients from boto3's default session; ``S3Faults`` registers a
  botocore ``before-parameter-build`` hook there that raises ``ClientError`` (or a crash) per
  rule. The stand-in's own clients come from a separate session and are not affected.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from whisper_contract.keys import error_key, job_key
from whisper_local.pipeline import LocalPipeline, LocalState, PipelineConfig

CHAOS = Path(__file__).with_name("chaos_container.py")
MAX_RECEIVE_COUNT = 5  # the deployed queues' value (constructs/queue_function.py)
RESULTS = Path("build/faults/summary.json")


# --- SageMaker runtime faults -----------------------------------------------------------------
_ENDPOINT_ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "503": (503, "ServiceUnavailable", "Service unavailable"),
    "500": (500, "InternalFailure", "Internal failure"),
}


class EndpointFaultProxy:
    """Forwards InvokeEndpointAsync to the stand-in unless a queued fault answers first."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.actions: deque[str] = deque()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=30)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def queue(self, *actions: str) -> None:
        with self.lock:
            self.actions.extend(actions)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    action = proxy.actions.popleft() if proxy.actions else "pass"
                    proxy.counts[action] += 1
                if action in _ENDPOINT_ERRORS:
                    status, code, message = _ENDPOINT_ERRORS[action]
                    self._send(status, json.dumps({"message": message}).encode(),
                               {"Content-Type": "application/json", "x-amzn-ErrorType": code})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                response = proxy.http.post(f"{proxy.target}{self.path}", content=body, headers=headers)
                keep = {k: v for k, v in response.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")}
                self._send(response.status_code, response.content, keep)

        return Handler


# --- S3 faults in the Lambdas -----------------------------------------------------------------
class SimulatedCrash(BaseException):
    """The Lambda runtime dying half-way (out of memory, timeout). A BaseException so the
    handler's own per-message ``except Exception`` cannot catch it: the whole batch fails."""


def crashable(handler: Callable[[dict, Any], Any]) -> Callable[[dict, Any], Any]:
    """What Lambda does when the runtime dies: the invocation fails and the whole batch
    returns to the queue (the poller keeps every message when the handler raises)."""

    def run(event: dict, context: Any) -> Any:
        try:
            return handler(event, context)
        except SimulatedCrash as crash:
            raise RuntimeError(f"the function crashed: {crash}") from None

    return run


@dataclass
class S3Rule:
    stage: str  # "submit" or "complete": which Lambda's thread
    operation: str  # botocore operation name, e.g. "PutObject"
    matches: Callable[[dict[str, Any]], bool]
    error: str = "InternalError"  # an S3 error code, or "crash" for SimulatedCrash
    times_per_key: int = 1
    hits: Counter = field(default_factory=Counter)


class S3Faults:
    """``before-parameter-build`` hook on boto3's default session (what the handlers use)."""

    def __init__(self) -> None:
        self.rules: list[S3Rule] = []
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        boto3._get_default_session().events.register("before-parameter-build.s3", self._hook)

    def close(self) -> None:
        boto3._get_default_session().events.unregister("before-parameter-build.s3", self._hook)

    def add(self, *rules: S3Rule) -> None:
        with self.lock:
            self.rules.extend(rules)

    def clear(self) -> None:
        with self.lock:
            self.rules = []

    def _hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        stage = threading.current_thread().name.removeprefix("lambda-")
        with self.lock:
            for rule in self.rules:
                if rule.stage != stage or rule.operation != model.name or not rule.matches(params):
                    continue
                key = (params.get("Bucket"), params.get("Key"))
                if rule.hits[key] >= rule.times_per_key:
                    continue
                rule.hits[key] += 1
                self.injected[f"{stage}:{model.name}:{rule.error}"] += 1
                break
            else:
                return
        if rule.error == "crash":
            raise SimulatedCrash(f"simulated crash before {model.name} {params.get('Key')}")
        raise ClientError({"Error": {"Code": rule.error, "Message": "injected fault"},
                           "ResponseMetadata": {"HTTPStatusCode": 500}}, model.name)


# --- the pipeline -----------------------------------------------------------------------------
@dataclass
class Harness:
    state: LocalState
    pipeline: LocalPipeline
    endpoint: EndpointFaultProxy
    s3faults: S3Faults
    s3: Any
    sqs: Any
    tap_url: str
    results: dict[str, dict[str, Any]]

    rule = S3Rule  # the tests build rules without importing this module

    @property
    def container_url(self) -> str:
        return self.state.container_url

    def chaos(self, *actions: str) -> dict[str, Any]:
        return httpx.post(f"{self.container_url}/_chaos", json={"actions": list(actions)}, timeout=5).json()

    def chaos_status(self) -> dict[str, Any]:
        return httpx.get(f"{self.container_url}/_chaos", timeout=5).json()

    def runtime_counts(self) -> dict[str, int]:
        assert self.pipeline.runtime is not None
        return dict(self.pipeline.runtime.status())

    def upload(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.state.input_bucket, Key=key, Body=body)

    def outcome(self, key: str) -> dict[str, bool]:
        listed = self.s3.list_objects_v2(Bucket=self.state.output_bucket, Prefix=key).get("Contents", [])
        names = {o["Key"] for o in listed}
        return {"transcript": f"{key}.json" in names, "error": error_key(key) in names}

    def queue_depth(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def settle(self, keys: list[str], timeout_s: float = 120) -> None:
        """Until every key has a result AND every queue and the endpoint are idle (late
        duplicates and retries included)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = all(any(self.outcome(k).values()) for k in keys)
            idle = (self.runtime_counts()["backlog"] == 0
                    and self.queue_depth(self.state.ingest_queue_url) == 0
                    and self.queue_depth(self.state.complete_queue_url) == 0)
            if done and idle:
                return
            time.sleep(0.5)
        raise AssertionError(f"not settled in {timeout_s} s: {[(k, self.outcome(k)) for k in keys]} "
                             f"{self.runtime_counts()}")

    def tapped(self) -> list[str]:
        """Every SageMaker notification published so far (the tap queue's copies)."""
        bodies = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.tap_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = got.get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(m["Body"])
                self.sqs.delete_message(QueueUrl=self.tap_url, ReceiptHandle=m["ReceiptHandle"])

    def job(self, inference_id: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.state.output_bucket, Key=job_key(inference_id))["Body"].read()
        return json.loads(body)

    def record(self, name: str, keys: list[str], injected: dict[str, int], before: dict[str, int],
               expect_errors: int | None = None) -> dict[str, Any]:
        """Check the invariant (exactly one transcript or one error record per input, empty
        DLQs) and keep the counts for docs/reliability.md."""
        outcomes = {k: self.outcome(k) for k in keys}
        after = self.runtime_counts()
        summary = {
            "uploaded": len(keys),
            "transcripts": sum(o["transcript"] and not o["error"] for o in outcomes.values()),
            "error_records": sum(o["error"] and not o["transcript"] for o in outcomes.values()),
            "both": sum(o["transcript"] and o["error"] for o in outcomes.values()),
            "lost": sum(not (o["transcript"] or o["error"]) for o in outcomes.values()),
            "invocations_accepted": after["accepted"] - before["accepted"],
            "ingest_dlq": self.queue_depth(self.state.ingest_dlq_url),
            "complete_dlq": self.queue_depth(self.state.complete_dlq_url),
            "faults_injected": injected,
        }
        self.results[name] = summary
        assert summary["both"] == 0 and summary["lost"] == 0, (name, outcomes)
        assert summary["transcripts"] + summary["error_records"] == len(keys)
        assert summary["ingest_dlq"] == 0 and summary["complete_dlq"] == 0, summary
        if expect_errors is not None:
            assert summary["error_records"] == expect_errors, (name, outcomes)
        return summary


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("faults")
    config = PipelineConfig(
        name="faults", state_path=root / "state.json", log_dir=root / "logs", visibility_timeout_s=2,
        max_receive_count=MAX_RECEIVE_COUNT, max_concurrency=2,
        # One message per batch: a crash fails its whole batch, so with larger batches a message's
        # receive count would also count its neighbours' faults, and how many share a batch
        # depends on the machine's speed (a loaded one coalesces them into the DLQ).
        batch_size=1,
        container_cmd=[sys.executable, str(CHAOS), "--port", "{port}"],
        container_env={"WHISPER_CPU_THREADS": "1", "WHISPER_MAX_QUEUE": "16"},
    )
    pipeline = LocalPipeline(config)
    results: dict[str, dict[str, Any]] = {}
    with pipeline as state:
        assert pipeline.runtime is not None
        endpoint = EndpointFaultProxy(pipeline.runtime.url)
        os.environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = endpoint.url  # restored by the pipeline
        s3faults = S3Faults()
        for poller in pipeline.pollers:
            poller.handler = crashable(poller.handler)
        s3, sqs, sns = state.client("s3"), state.client("sqs"), state.client("sns")
        tap_url = sqs.create_queue(QueueName="faults-tap")["QueueUrl"]
        tap_arn = sqs.get_queue_attributes(QueueUrl=tap_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in sns.list_topics()["Topics"]:
            if topic["TopicArn"].endswith((":faults-success", ":faults-error")):
                sns.subscribe(TopicArn=topic["TopicArn"], Protocol="sqs", Endpoint=tap_arn,
                              Attributes={"RawMessageDelivery": "true"})
        try:
            yield Harness(state, pipeline, endpoint, s3faults, s3, sqs, tap_url, results)
        finally:
            s3faults.close()
            endpoint.stop()
            if results:
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=2))
                print(json.dumps(results, indent=2))
