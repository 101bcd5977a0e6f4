"""A small, honest stand-in for the SageMaker async inference runtime, on loopback.

It speaks the one operation the trigger Lambda uses, ``InvokeEndpointAsync``, exactly as
botocore's service model describes it (``POST /endpoints/{EndpointName}/async-invocations``,
request fields in ``X-Amzn-SageMaker-*`` headers, ``202`` with the inference id in the JSON
body and the output/failure locations in response headers), so an unmodified
``boto3.client("sagemaker-runtime", endpoint_url=...)`` calls it. Then it does what the
service does: queue the request, run at most ``max_concurrency`` at a time against the
container's ``POST /invocations``, write ``<S3OutputPath>/<id>.out`` or
``<S3FailurePath>/<id>-error.out``, and publish the documented notification to the success
or error SNS topic. Requests older than their TTL expire with a failure notification.

Not modelled: scaling from zero, instance counts, SigV4 checks, IncludeInferenceResponseIn.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import httpx

from whisper_contract.keys import parse_s3_uri

log = logging.getLogger("whisper_local.sagemaker")

_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/async-invocations/?$")
_INFERENCE_ID = re.compile(r"\A\S[\x20-\x7e]*\Z")
MAX_INLINE_BODY = 128_000  # documented limit of the inline Body parameter


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AsyncEndpointConfig:
    """The parts of ``AsyncInferenceConfig`` + ``CreateEndpoint`` that the stand-in honours."""

    endpoint_name: str
    container_url: str  # http://127.0.0.1:PORT of the real container
    s3_output_path: str  # s3://bucket/prefix/
    s3_failure_path: str
    success_topic_arn: str
    error_topic_arn: str
    aws_endpoint_url: str  # moto
    region: str = "us-east-1"
    max_concurrency: int = 2  # MaxConcurrentInvocationsPerInstance (one instance)


@dataclass
class _Request:
    inference_id: str
    input_location: str | None
    body: bytes | None
    content_type: str
    accept: str
    custom_attributes: str | None
    ttl_s: int
    timeout_s: int
    output_location: str
    failure_location: str
    received_at: float = field(default_factory=time.time)
    received_iso: str = field(default_factory=_now_iso)


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


class _ValidationError(Exception):
    pass


class _Utf8Headers:
    """botocore sends header values as UTF-8 bytes; http.server decodes them as Latin-1."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.headers.get(name)
        if value is None:
            return default
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value


class AsyncRuntime:
    """The HTTP front (any thread) plus ``max_concurrency`` worker threads."""

    def __init__(self, config: AsyncEndpointConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        # Loopback moto accepts any credentials; explicit ones keep real ones out of reach.
        session = boto3.session.Session(region_name=config.region, aws_access_key_id="testing",
                                        aws_secret_access_key="testing", aws_session_token="testing")
        self.s3 = session.client("s3", endpoint_url=config.aws_endpoint_url)
        self.sns = session.client("sns", endpoint_url=config.aws_endpoint_url)
        self.http = httpx.Client(timeout=None)
        self.queue: queue.Queue[_Request | None] = queue.Queue()
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "in_flight": 0, "completed": 0, "failed": 0, "expired": 0}
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self.threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"endpoint_name": self.config.endpoint_name, "backlog": self.queue.qsize() + self.counts["in_flight"],
                    "queued": self.queue.qsize(), "max_concurrency": self.config.max_concurrency,
                    "instances": 1, **self.counts}

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> "AsyncRuntime":
        serve = threading.Thread(target=self.server.serve_forever, name="sagemaker-http", daemon=True)
        serve.start()
        self.threads.append(serve)
        for i in range(self.config.max_concurrency):
            worker = threading.Thread(target=self._work, name=f"sagemaker-worker-{i}", daemon=True)
            worker.start()
            self.threads.append(worker)
        return self

    def stop(self) -> None:
        for _ in range(self.config.max_concurrency):
            self.queue.put(None)
        self.server.shutdown()
        self.server.server_close()
        for thread in self.threads:
            thread.join(timeout=10)
        self.http.close()

    # --- the API ------------------------------------------------------------------------
    def accept(self, name: str, headers: Any, body: bytes) -> _Request:
        if name != self.config.endpoint_name:
            raise _ValidationError(f"Endpoint {name} of account 000000000000 not found.")
        input_location = headers.get("X-Amzn-SageMaker-InputLocation")
        if bool(input_location) == bool(body):
            raise _ValidationError("Provide exactly one of InputLocation and Body.")
        if input_location:
            try:
                parse_s3_uri(input_location)
            except ValueError as exc:
                raise _ValidationError(str(exc)) from None
        if len(body) > MAX_INLINE_BODY:
            raise _ValidationError(f"Body is larger than {MAX_INLINE_BODY} bytes.")
        inference_id = headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        if len(inference_id) > 64 or not _INFERENCE_ID.match(inference_id):
            raise _ValidationError("InferenceId must be 1-64 printable characters.")
        custom = headers.get("X-Amzn-SageMaker-Custom-Attributes")
        if custom is not None and len(custom) > 1024:
            raise _ValidationError("CustomAttributes is longer than 1024 characters.")
        ttl_s = int(headers.get("X-Amzn-SageMaker-RequestTTLSeconds") or 21600)
        timeout_s = int(headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds") or 900)
        if not 60 <= ttl_s <= 21600 or not 1 <= timeout_s <= 3600:
            raise _ValidationError("RequestTTLSeconds must be 60-21600 and InvocationTimeoutSeconds 1-3600.")
        output_dir = self.config.s3_output_path
        extension = headers.get("X-Amzn-SageMaker-S3OutputPathExtension")
        if extension:
            output_dir = _join(output_dir, extension.strip("/"))
        filename = headers.get("X-Amzn-SageMaker-Filename") or f"{inference_id}.out"
        request = _Request(
            inference_id=inference_id, input_location=input_location, body=body or None,
            content_type=headers.get("X-Amzn-SageMaker-Content-Type") or "application/octet-stream",
            accept=headers.get("X-Amzn-SageMaker-Accept") or "application/json",
            custom_attributes=custom, ttl_s=ttl_s, timeout_s=timeout_s,
            output_location=_join(output_dir, filename),
            failure_location=_join(self.config.s3_failure_path, f"{inference_id}-error.out"),
        )
        with self.lock:
            self.counts["accepted"] += 1
        self.queue.put(request)
        return request

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

            def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.rstrip("/") in ("/ping", "/_local/status"):
                    self._reply(200, runtime.status())
                else:
                    self._reply(404, {"message": f"no route {self.path}"}, {"x-amzn-ErrorType": "UnknownOperationException"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                match = _PATH.match(self.path.split("?", 1)[0])
                if not match:
                    self._reply(404, {"message": f"no route {self.path}"}, {"x-amzn-ErrorType": "UnknownOperationException"})
                    return
                try:
                    request = runtime.accept(match["name"], _Utf8Headers(self.headers), body)
                except (_ValidationError, ValueError) as exc:
                    self._reply(400, {"message": str(exc)}, {"x-amzn-ErrorType": "ValidationError"})
                    return
                self._reply(HTTPStatus.ACCEPTED, {"InferenceId": request.inference_id}, {
                    "X-Amzn-SageMaker-OutputLocation": request.output_location,
                    "X-Amzn-SageMaker-FailureLocation": request.failure_location,
                })

        return Handler

    # --- the work -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            request = self.queue.get()
            if request is None:
                return
            with self.lock:
                self.counts["in_flight"] += 1
            try:
                self._run(request)
            except Exception as exc:  # S3/SNS trouble: report it as the service would
                log.exception("inference %s failed outside the model", request.inference_id)
                try:
                    self._fail(request, f"InternalServerError: {exc}", None, "failed")
                except Exception:  # the worker must survive to serve the rest of the queue
                    log.exception("could not even report the failure of %s", request.inference_id)
            finally:
                with self.lock:
                    self.counts["in_flight"] -= 1

    def _run(self, request: _Request) -> None:
        if time.time() - request.received_at > request.ttl_s:
            self._fail(request, "Request expired: it waited longer than its RequestTTLSeconds.", None, "expired")
            return
        if request.input_location:
            bucket, key = parse_s3_uri(request.input_location)
            audio = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            audio = request.body or b""
        headers = {"Content-Type": request.content_type, "Accept": request.accept,
                   "X-Amzn-SageMaker-Inference-Id": request.inference_id}
        if request.custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = request.custom_attributes
        try:
            response = self.http.post(f"{self.config.container_url}/invocations", content=audio, headers=headers,
                                      timeout=request.timeout_s)
        except httpx.TimeoutException:
            self._fail(request, f"ModelError: invocation timed out after {request.timeout_s} s.", None, "failed")
            return
        except httpx.HTTPError as exc:
            self._fail(request, f"ModelError: could not reach the model container: {exc}", None, "failed")
            return
        if response.status_code // 100 != 2:
            kind = "client" if response.status_code < 500 else "server"
            self._fail(request, f"ClientError: Received {kind} error ({response.status_code}) from model. "
                                "See the container's log for more information.", response.content, "failed")
            return
        bucket, key = parse_s3_uri(request.output_location)
        content_type = response.headers.get("Content-Type", "application/json")
        self.s3.put_object(Bucket=bucket, Key=key, Body=response.content, ContentType=content_type)
        self._publish(self.config.success_topic_arn, request, "Completed", {
            "responseParameters": {"contentType": content_type, "outputLocation": request.output_location},
        })
        with self.lock:
            self.counts["completed"] += 1

    def _fail(self, request: _Request, reason: str, body: bytes | None, counter: str) -> None:
        if body is not None:
            bucket, key = parse_s3_uri(request.failure_location)
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        self._publish(self.config.error_topic_arn, request, "Failed", {"failureReason": reason})
        with self.lock:
            self.counts[counter] += 1

    def _publish(self, topic_arn: str, request: _Request, status: str, extra: dict[str, Any]) -> None:
        request_parameters = {"contentType": request.content_type, "endpointName": self.config.endpoint_name}
        if request.input_location:
            request_parameters["inputLocation"] = request.input_location
        if request.custom_attributes:
            request_parameters["customAttributes"] = request.custom_attributes
        message = {
            "awsRegion": self.config.region,
            "eventTime": _now_iso(),
            "receivedTime": request.received_iso,
            "invocationStatus": status,
            "requestParameters": request_parameters,
            **extra,
            "inferenceId": request.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        self.sns.publish(TopicArn=topic_arn, Message=json.dumps(message))
