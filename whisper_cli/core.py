"""What ``whisper-sm`` does, without the terminal: find the deployment, upload, follow, download.

A deployment is either real AWS (bucket and endpoint names from the CloudFormation stack
outputs of the chosen environment) or the local pipeline (its state file). Progress is read
from the job records the trigger and completion Lambdas keep in the output bucket, so a
file is "done" exactly when its transcript or its ``.error.json`` has been written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

import boto3
from botocore.exceptions import ClientError

from whisper_contract import RequestOptions
from whisper_contract.jobs import FINAL_STATES, JobRecord, KeyIndex
from whisper_contract.keys import (ERROR_SUFFIX, UNREDACTED_SUFFIXES, inference_id, is_audio_key, job_key,
                                   key_index_key, plain_etag)

LOCAL = "local"
# CloudFormation output keys the CDK stacks publish (stacks/storage.py, the endpoint stack).
OUTPUT_KEYS = {"input_bucket": "InputBucketName", "output_bucket": "OutputBucketName", "endpoint_name": "EndpointName"}
# The stacks that publish them, by the part of their name after ``Whisper-<env>-``.
OUTPUT_STACKS = {"Storage": ("InputBucketName", "OutputBucketName"), "Endpoint": ("EndpointName",)}
# Environment variables that override the stack outputs (e.g. for a hand-built deployment).
OVERRIDE_ENV = {"input_bucket": "WHISPER_INPUT_BUCKET", "output_bucket": "WHISPER_OUTPUT_BUCKET",
                "endpoint_name": "WHISPER_ENDPOINT_NAME"}
UPLOADED = "uploaded"  # no job record yet: the trigger has not seen the object


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper-sagemaker"


@dataclass
class Target:
    env_name: str
    input_bucket: str
    output_bucket: str
    endpoint_name: str
    s3: Any
    session: Any = None  # boto3 session (AWS only)
    status_url: str | None = None  # local stand-in's status endpoint

    def status(self) -> dict[str, Any]:
        if self.status_url:
            import httpx

            return httpx.get(self.status_url, timeout=5).json()
        return aws_status(self.session, self.endpoint_name)


def resolve(env_name: str, *, state_path: Path | None = None, profile: str | None = None) -> Target:
    if env_name == LOCAL:
        from whisper_local.pipeline import LocalState

        state = LocalState.read(state_path)
        return Target(env_name, state.input_bucket, state.output_bucket, state.endpoint_name, state.client("s3"),
                      status_url=f"{state.sagemaker_url}/_local/status")
    session = boto3.session.Session(profile_name=profile)
    names = stack_outputs(session.client("cloudformation"), env_name)
    for field, var in OVERRIDE_ENV.items():
        if os.environ.get(var):
            names[field] = os.environ[var]
    missing = [OUTPUT_KEYS[f] for f in OUTPUT_KEYS if not names.get(f)]
    if missing:
        stacks = ", ".join(stack_name(env_name, part) for part in OUTPUT_STACKS)
        raise RuntimeError(f"the stacks {stacks} of environment {env_name!r} do not have the outputs "
                           f"{', '.join(missing)}; deploy it (make deploy ENV={env_name}) or set "
                           f"{', '.join(OVERRIDE_ENV.values())}")
    return Target(env_name, names["input_bucket"], names["output_bucket"], names["endpoint_name"],
                  session.client("s3"), session=session)


def stack_name(env_name: str, part: str) -> str:
    """The name the CDK app gives a stack of an environment (stacks/application.py; the
    snapshots in tests/infra/snapshots/<env>/ are named so, which a test checks)."""
    return f"Whisper-{env_name}-{part}"


def stack_outputs(cloudformation: Any, env_name: str) -> dict[str, str]:
    """Outputs of exactly the environment's stacks that publish them, by our keys. Exact
    names, never a substring: ``dev`` must not find ``payments-dev-db``'s outputs."""
    wanted = {v: k for k, v in OUTPUT_KEYS.items()}
    found: dict[str, str] = {}
    for part, keys in OUTPUT_STACKS.items():
        try:
            stacks = cloudformation.describe_stacks(StackName=stack_name(env_name, part))["Stacks"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationError":  # "Stack ... does not exist"
                continue
            raise
        for stack in stacks:
            if stack["StackStatus"].endswith("_FAILED"):
                continue
            for output in stack.get("Outputs", []):
                if output["OutputKey"] in keys:
                    found[wanted[output["OutputKey"]]] = output["OutputValue"]
    return found


# AWS/SageMaker dimensions, as AWS publishes them (SageMaker guide "Alarms and logs for tracking
# metrics from asynchronous endpoints"): the async backlog metrics carry EndpointName alone,
# the invocation metrics EndpointName and VariantName; a query with another set finds nothing.
BACKLOG_METRICS = ("ApproximateBacklogSize", "HasBacklogWithoutCapacity")
VARIANT_METRICS = ("Invocation4XXErrors", "Invocation5XXErrors")
INSTANCE_METRICS = ("CPUUtilization",)  # namespace /aws/sagemaker/Endpoints, EndpointName + VariantName too
STATUS_WINDOW = timedelta(minutes=10)


def metric_dimensions(metric: str, endpoint_name: str, variant_name: str | None = None) -> list[dict[str, str]]:
    dims = [{"Name": "EndpointName", "Value": endpoint_name}]
    if metric in BACKLOG_METRICS:
        return dims
    if metric in VARIANT_METRICS + INSTANCE_METRICS and variant_name:
        return dims + [{"Name": "VariantName", "Value": variant_name}]
    raise ValueError(f"no dimension rule for {metric!r} (variant {variant_name!r})")


def aws_status(session: Any, endpoint_name: str) -> dict[str, Any]:
    """Instances from DescribeEndpoint; the latest backlog and the last 10 minutes' errors
    from CloudWatch."""
    endpoint = session.client("sagemaker").describe_endpoint(EndpointName=endpoint_name)
    variants = endpoint.get("ProductionVariants", [])
    cloudwatch = session.client("cloudwatch")
    now = datetime.now(timezone.utc)

    def points(metric: str, statistic: str, variant: str | None = None) -> list[dict[str, Any]]:
        stats = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName=metric, Dimensions=metric_dimensions(metric, endpoint_name, variant),
            StartTime=now - STATUS_WINDOW, EndTime=now + timedelta(minutes=1), Period=60, Statistics=[statistic])
        return sorted(stats.get("Datapoints", []), key=lambda p: p["Timestamp"])

    backlog = points("ApproximateBacklogSize", "Maximum")
    status: dict[str, Any] = {
        "endpoint_name": endpoint_name, "endpoint_status": endpoint.get("EndpointStatus"),
        "instances": sum(v.get("CurrentInstanceCount", 0) for v in variants),
        "desired_instances": sum(v.get("DesiredInstanceCount", 0) for v in variants),
        "backlog": backlog[-1]["Maximum"] if backlog else None,
        "backlog_at": backlog[-1]["Timestamp"].isoformat() if backlog else None,
    }
    for metric, name in zip(VARIANT_METRICS, ("client_errors_10min", "model_errors_10min")):
        status[name] = sum(p["Sum"] for v in variants for p in points(metric, "Sum", v["VariantName"]))
    return status


# --- submissions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    path: str
    key: str
    inference_id: str


def collect(paths: Iterable[Path], prefix: str = "") -> list[tuple[Path, str]]:
    """(file, key) pairs: files as named, directories recursively (audio files only)."""
    pairs: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_audio_key(p.name)):
                pairs.append((file, prefix + f"{path.name}/{file.relative_to(path).as_posix()}"))
        elif path.is_file():
            if not is_audio_key(path.name):
                raise ValueError(f"{path} does not have an audio file extension; the pipeline would skip it")
            pairs.append((path, prefix + path.name))
        else:
            raise FileNotFoundError(path)
    return pairs


def upload(target: Target, pairs: list[tuple[Path, str]], options: RequestOptions, *,
           explicit: Iterable[str] = (), progress: Callable[[int], None] | None = None) -> list[Submission]:
    """Upload with ``options`` as user metadata; the options named in ``explicit`` travel even
    where they equal the defaults, everything else is left to the deployment's DEFAULT_OPTIONS."""
    # The trigger reads the same names back from the object's user metadata.
    metadata = dict(parse_qsl(options.to_query(explicit), keep_blank_values=True))
    for name, value in metadata.items():
        if not value.isascii():
            raise ValueError(f"option {name} must be ASCII: it travels as S3 object metadata")
    submissions = []
    for path, key in pairs:
        target.s3.upload_file(str(path), target.input_bucket, key, ExtraArgs={"Metadata": metadata},
                              Callback=progress)
        head = target.s3.head_object(Bucket=target.input_bucket, Key=key)
        job = inference_id(target.input_bucket, key, head.get("VersionId") or plain_etag(head.get("ETag")))
        submissions.append(Submission(str(path), key, job))
    return submissions


def manifest_path(env_name: str) -> Path:
    return cache_dir() / f"last-submit-{env_name}.json"


def save_manifest(env_name: str, submissions: list[Submission]) -> Path:
    path = manifest_path(env_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(s) for s in submissions], indent=2))
    return path


def load_manifest(env_name: str) -> list[Submission]:
    try:
        return [Submission(**s) for s in json.loads(manifest_path(env_name).read_text())]
    except FileNotFoundError:
        raise RuntimeError(f"nothing submitted to {env_name!r} from this machine yet; name the keys instead") from None


def for_keys(target: Target, keys: list[str]) -> list[Submission]:
    """Submissions for objects already in the input bucket (their current version)."""
    subs = []
    for key in keys:
        head = target.s3.head_object(Bucket=target.input_bucket, Key=key)
        job = inference_id(target.input_bucket, key, head.get("VersionId") or plain_etag(head.get("ETag")))
        subs.append(Submission("", key, job))
    return subs


# --- following and fetching ------------------------------------------------------------
def job(target: Target, submission: Submission) -> JobRecord | None:
    """The job of the key's latest upload. Job ids depend on the S3 event (version id or
    sequencer), so the key index says which one that is."""
    def read(key: str) -> bytes | None:
        try:
            return target.s3.get_object(Bucket=target.output_bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    index = read(key_index_key(submission.key))
    body = read(job_key(KeyIndex.from_json(index).latest_job)) if index is not None else None
    return JobRecord.from_json(body) if body is not None else None


def wait(target: Target, submissions: list[Submission], *, timeout_s: float = 3600, poll_s: float = 1.0,
         on_change: Callable[[Submission, str, JobRecord | None], None] | None = None) -> dict[str, JobRecord | None]:
    """Poll job records until every submission is finished (or the timeout passes)."""
    states: dict[str, JobRecord | None] = {s.key: None for s in submissions}
    seen: dict[str, str] = {}
    deadline = time.time() + timeout_s
    while True:
        for sub in submissions:
            record = states[sub.key]
            if record is not None and record.finished:
                continue
            record = job(target, sub)
            states[sub.key] = record
            state = record.state if record else UPLOADED
            if seen.get(sub.key) != state:
                seen[sub.key] = state
                if on_change:
                    on_change(sub, state, record)
        if all(r is not None and r.state in FINAL_STATES for r in states.values()) or time.time() > deadline:
            return states
        time.sleep(poll_s)


# --- local file names -------------------------------------------------------------------
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems (ext4, XFS, APFS)
HASH_CHARS = 16  # hex digits of SHA-256 that stand in for the cut part of a long name
KEPT_SUFFIXES = (ERROR_SUFFIX, *UNREDACTED_SUFFIXES, ".json", ".txt", ".srt", ".vtt")  # what the pipeline writes


class UnsafeKey(ValueError):
    """An output key that would be written outside the download folder."""


def local_path(out_dir: Path, key: str) -> Path:
    """Where the output object ``key`` is written under ``out_dir``.

    The key's own path where that is possible. A path component longer than NAME_MAX bytes
    is cut at a character boundary and ends in ``~`` + HASH_CHARS hex digits of the SHA-256 of
    the key up to that component, plus the format suffix (``.json``, ``.error.json``...), so
    the same key always maps to the same name and two long keys do not share one (download()
    refuses a key whose name another key of the same run already took). Keys that could
    leave ``out_dir`` (absolute, ``.``/``..``/empty components, NUL) raise UnsafeKey.
    """
    parts = key.split("/")
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise UnsafeKey(f"refusing to write {key!r}: it would land outside {out_dir} "
                        "(absolute, empty, '.' or '..' path components)")
    local = []
    for i, part in enumerate(parts):
        if len(part.encode()) > NAME_MAX:
            suffix = next((s for s in KEPT_SUFFIXES if part.endswith(s)), "") if i == len(parts) - 1 else ""
            digest = hashlib.sha256("/".join(parts[: i + 1]).encode()).hexdigest()[:HASH_CHARS]
            tail = f"~{digest}{suffix}"
            head = part[: len(part) - len(suffix)].encode()[: NAME_MAX - len(tail.encode())]
            part = head.decode(errors="ignore") + tail  # errors="ignore" drops a cut character
        local.append(part)
    return out_dir.joinpath(*local)


@dataclass(frozen=True)
class Fetched:
    key: str  # output-bucket key
    path: Path | None  # where it was written; None if it was refused
    problem: str | None = None  # why it was refused
    renamed: bool = False  # written under a cut name (see local_path)


def download(target: Target, record: JobRecord, out_dir: Path, taken: dict[Path, str] | None = None) -> list[Fetched]:
    """Every file the job wrote, each under its local_path(); a key that cannot be written
    safely is refused with the reason and the others are still fetched. ``taken`` (path ->
    key) spans one run of several jobs, so no key overwrites another one's file."""
    taken = {} if taken is None else taken
    fetched = []
    for key in record.result_keys:
        try:
            dest = local_path(out_dir, key)
        except UnsafeKey as exc:
            fetched.append(Fetched(key, None, str(exc)))
            continue
        if taken.setdefault(dest, key) != key:
            fetched.append(Fetched(key, None, f"refusing to write {key!r}: {dest} is {taken[dest]!r}'s"))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        target.s3.download_file(target.output_bucket, key, str(dest))
        fetched.append(Fetched(key, dest, renamed=dest != out_dir.joinpath(*key.split("/"))))
    return fetched
