"""Trigger Lambda: S3 "object created" events (through SQS) -> InvokeEndpointAsync.

For each new audio object it reads the options from the object's user metadata (falling back
to ``DEFAULT_OPTIONS``), writes a job record to the output bucket, then submits the object's
S3 URI to the async endpoint. Bad options become ``<key>.error.json`` at once (no GPU time).
A failure to submit is reported in ``batchItemFailures`` so SQS retries it and finally moves
it to the DLQ; nothing is swallowed. Duplicate S3 events find the job record and do nothing.

Imports only the standard library, boto3 and ``whisper_contract`` (copied into the asset).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import boto3
from botocore.exceptions import ClientError

from whisper_contract import ContractError, ErrorCode, ErrorRecord, RequestOptions, env
from whisper_contract.jobs import FAILED, PENDING, SUBMITTED, JobRecord, utc_now
from whisper_contract.keys import (
    error_key, inference_id, is_audio_key, is_internal_key, job_key, plain_etag, s3_uri,
)

log = logging.getLogger("whisper.submit")
if logging.getLogger("whisper").level == logging.NOTSET:  # Lambda: INFO; a host process may choose
    logging.getLogger("whisper").setLevel(logging.INFO)

# Metadata that common upload tools add on their own (rclone, s3cmd); anything else in user
# metadata is an option, and an unknown option is an error rather than silently ignored.
IGNORED_METADATA = frozenset({"mtime", "btime", "md5chksum", "s3cmd-attrs"})
OPTION_ALIASES = {"format": "formats", "output": "formats"}
DEFAULT_TIMEOUT_S = 3600
MAX_ASYNC_INPUT_BYTES = 1_000_000_000  # SageMaker async inference's payload limit (1 GB)
DEFAULT_TTL_S = 6 * 3600


def _clients() -> tuple[Any, Any]:
    # Per invocation, not per module: endpoint URLs come from the environment (the local
    # pipeline points them at loopback), and boto3 caches its models, so this is cheap.
    return boto3.client("s3"), boto3.client("sagemaker-runtime")


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _is_precondition(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def options_from(metadata: dict[str, str], defaults: str) -> RequestOptions:
    """Metadata wins over the deployment's defaults, key by key."""
    pairs: dict[str, str] = {}
    for raw_key, value in parse_qsl(defaults or "", keep_blank_values=True):
        key = raw_key.strip().lower().replace("-", "_")
        pairs[OPTION_ALIASES.get(key, key)] = value
    for raw_key, value in metadata.items():
        if raw_key.lower() in IGNORED_METADATA:
            continue
        key = raw_key.strip().lower().replace("-", "_")
        pairs[OPTION_ALIASES.get(key, key)] = value
    return RequestOptions.from_pairs(pairs)


def _unwrap(body: str) -> dict[str, Any]:
    message = json.loads(body)
    # S3 -> SNS -> SQS without raw delivery wraps the event once more.
    if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
        message = json.loads(message["Message"])
    return message


class Submitter:
    def __init__(self, s3: Any, runtime: Any, environ: dict[str, str] | os._Environ) -> None:
        self.s3 = s3
        self.runtime = runtime
        self.endpoint = environ[env.ENDPOINT_NAME]
        self.output_bucket = environ[env.OUTPUT_BUCKET]
        self.defaults = environ.get(env.DEFAULT_OPTIONS, "")
        self.timeout_s = int(environ.get(env.INVOCATION_TIMEOUT_S) or DEFAULT_TIMEOUT_S)
        self.ttl_s = int(environ.get(env.REQUEST_TTL_S) or DEFAULT_TTL_S)

    # --- one SQS message ----------------------------------------------------------------
    def message(self, body: str) -> None:
        event = _unwrap(body)
        if event.get("Event") == "s3:TestEvent":
            log.info("skip: s3:TestEvent for bucket %s", event.get("Bucket"))
            return
        records = event.get("Records")
        if not isinstance(records, list):
            raise ValueError(f"not an S3 event notification: {body[:200]!r}")
        for record in records:
            self.record(record)

    def record(self, record: dict[str, Any]) -> None:
        name = record.get("eventName", "")
        if not name.startswith("ObjectCreated:"):
            log.info("skip: event %s is not an object creation", name)
            return
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])  # S3 events URL-encode keys (spaces arrive as '+')
        if bucket == self.output_bucket or is_internal_key(key):
            log.info("skip: s3://%s/%s is the pipeline's own output", bucket, key)
            return
        if not is_audio_key(key):
            log.info("skip: s3://%s/%s does not have an audio file extension", bucket, key)
            return
        self.submit(bucket, key, obj.get("versionId"), plain_etag(obj.get("eTag")), obj.get("size"))

    # --- one object ---------------------------------------------------------------------
    def submit(self, bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None) -> None:
        job_id = inference_id(bucket, key, version_id or etag)
        existing = self._read_job(job_id)
        if existing is not None and existing.state != PENDING:
            log.info("duplicate: %s for s3://%s/%s is already %s", job_id, bucket, key, existing.state)
            return

        head_args = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        try:
            head = self.s3.head_object(**head_args)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            self._fail_fast(bucket, key, version_id, etag, job_id, ContractError(
                ErrorCode.MISSING_OBJECT, "the object was deleted before it could be transcribed"))
            return
        if not version_id and etag and plain_etag(head.get("ETag")) != etag:
            # Overwritten since this event: the newer upload has its own event and job.
            log.info("skip: s3://%s/%s was replaced since this event (etag %s)", bucket, key, etag)
            return
        size = head.get("ContentLength", size)

        if size == 0:
            self._fail_fast(bucket, key, version_id, etag, job_id, ContractError(
                ErrorCode.EMPTY_INPUT, "the object is empty (0 bytes)"))
            return
        if size is not None and size > MAX_ASYNC_INPUT_BYTES:
            self._fail_fast(bucket, key, version_id, etag, job_id, ContractError(
                ErrorCode.INPUT_TOO_LARGE, f"the object is {size} bytes; SageMaker async inference accepts "
                                           f"at most {MAX_ASYNC_INPUT_BYTES} (split the recording)"))
            return
        try:
            options = options_from(head.get("Metadata") or {}, self.defaults)
            custom_attributes = options.to_custom_attributes()
        except ContractError as exc:
            self._fail_fast(bucket, key, version_id, etag, job_id, exc)
            return

        job = existing or JobRecord(
            inference_id=job_id, input_bucket=bucket, input_key=key, state=PENDING,
            options=options.to_query(), version_id=version_id, etag=etag, size=size,
            submitted_at=utc_now(),
        )
        job_etag = self._write_job(job, create=existing is None)
        if job_etag is None:  # a concurrent duplicate created it first; it submits
            log.info("duplicate: %s was created concurrently", job_id)
            return

        response = self.runtime.invoke_endpoint_async(
            EndpointName=self.endpoint,
            InputLocation=s3_uri(bucket, key),
            InferenceId=job_id,
            CustomAttributes=custom_attributes,
            ContentType=head.get("ContentType") or "application/octet-stream",
            Accept="application/json",
            InvocationTimeoutSeconds=self.timeout_s,
            RequestTTLSeconds=self.ttl_s,
        )
        submitted = job.advance(SUBMITTED, output_location=response.get("OutputLocation"),
                                failure_location=response.get("FailureLocation"))
        try:
            self.s3.put_object(Bucket=self.output_bucket, Key=job_key(job_id), Body=submitted.to_json().encode(),
                               ContentType="application/json", IfMatch=job_etag)
        except ClientError as exc:
            if not _is_precondition(exc):
                raise
            # The completion Lambda already moved the job on; its state is the newer one.
            log.info("job %s changed while submitting; keeping the newer record", job_id)
        log.info("submitted s3://%s/%s as %s -> %s", bucket, key, job_id, response.get("OutputLocation"))

    # --- helpers ------------------------------------------------------------------------
    def _read_job(self, job_id: str) -> JobRecord | None:
        try:
            body = self.s3.get_object(Bucket=self.output_bucket, Key=job_key(job_id))["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return JobRecord.from_json(body)

    def _write_job(self, job: JobRecord, *, create: bool) -> str | None:
        """Write the record; return its ETag, or None if ``create`` lost a race."""
        extra = {"IfNoneMatch": "*"} if create else {}
        try:
            put = self.s3.put_object(Bucket=self.output_bucket, Key=job_key(job.inference_id),
                                     Body=job.to_json().encode(), ContentType="application/json", **extra)
        except ClientError as exc:
            if create and _is_precondition(exc):
                return None
            raise
        return put["ETag"]

    def _fail_fast(self, bucket: str, key: str, version_id: str | None, etag: str | None, job_id: str,
                   exc: ContractError) -> None:
        record: ErrorRecord = exc.to_record(bucket=bucket, key=key, version_id=version_id, etag=etag,
                                            inference_id=job_id, stage="submit")
        self.s3.put_object(Bucket=self.output_bucket, Key=error_key(key), Body=record.to_json().encode(),
                           ContentType="application/json; charset=utf-8")
        job = JobRecord(inference_id=job_id, input_bucket=bucket, input_key=key, state=FAILED, options="",
                        version_id=version_id, etag=etag, submitted_at=utc_now(), completed_at=utc_now(),
                        result_keys=(error_key(key),), message=exc.message)
        self.s3.put_object(Bucket=self.output_bucket, Key=job_key(job_id), Body=job.to_json().encode(),
                           ContentType="application/json")
        log.warning("rejected s3://%s/%s without invoking: %s (%s)", bucket, key, exc.message, exc.code.value)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS batch -> ``{"batchItemFailures": [...]}`` (ReportBatchItemFailures)."""
    s3, runtime = _clients()
    submitter = Submitter(s3, runtime, os.environ)
    failures = []
    for message in event.get("Records", []):
        try:
            submitter.message(message["body"])
        except Exception:
            # Throttling, 5xx, a malformed message: SQS redelivers it, and after
            # maxReceiveCount it lands in the DLQ (alarmed). Never dropped here.
            log.exception("failed to submit message %s", message.get("messageId"))
            failures.append({"itemIdentifier": message["messageId"]})
    return {"batchItemFailures": failures}
