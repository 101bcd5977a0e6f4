"""Trigger Lambda: S3 "object created" events (through SQS) -> InvokeEndpointAsync.

For each upload of an audio object it reads the options from the object's user metadata
over ``DEFAULT_OPTIONS``, makes the upload its key's latest (the key index orders uploads by
the events' ``sequencer``), writes a job record to the output bucket, then submits the
object's S3 URI to the async endpoint. Bad options, empty, oversized or vanished objects
become ``<key>.error.json`` at once (no GPU time), replacing any earlier results of the key.
A failure to submit is reported in ``batchItemFailures`` so SQS retries it and finally moves
it to the DLQ; nothing is swallowed. Duplicate deliveries of one event find the job record
and do nothing; every new upload (version, or sequencer) is a new job.

Imports only the standard library, boto3, ``whisper_lambdas.common`` and ``whisper_contract``
(all three copied into the asset).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import unquote_plus

import boto3
from botocore.exceptions import ClientError

from whisper_contract import ContractError, ErrorCode, RequestOptions, env
from whisper_contract.jobs import FAILED, PENDING, SUBMITTED, SUPERSEDED, JobRecord, utc_now
from whisper_contract.keys import (
    error_key, event_order, inference_id, is_audio_key, output_base, plain_etag, revision, s3_uri,
)
from whisper_lambdas.common import OutputStore, handle_batch, is_missing, logger, unwrap_sns

log = logger("submit")

# Metadata that common upload tools add on their own (rclone, s3cmd); anything else in user
# metadata is an option, and an unknown option is an error rather than silently ignored.
IGNORED_METADATA = frozenset({"mtime", "btime", "md5chksum", "s3cmd-attrs"})
DEFAULT_TIMEOUT_S = 3600
MAX_ASYNC_INPUT_BYTES = 1_000_000_000  # SageMaker async inference's payload limit (1 GB)
DEFAULT_TTL_S = 6 * 3600
ERROR_CONTENT_TYPE = "application/json; charset=utf-8"


def _clients() -> tuple[Any, Any]:
    # Per invocation, not per module: endpoint URLs come from the environment (the local
    # pipeline points them at loopback), and boto3 caches its models, so this is cheap.
    return boto3.client("s3"), boto3.client("sagemaker-runtime")


def options_from(metadata: Mapping[str, str], defaults: str) -> RequestOptions:
    """Metadata wins over the deployment's defaults, name by name (aliases included)."""
    pairs = [(k, v) for k, v in metadata.items() if k.lower() not in IGNORED_METADATA]
    return RequestOptions.with_defaults(defaults, pairs)


@dataclass(frozen=True)
class Upload:
    """One ``ObjectCreated`` record: which object, and which upload of it."""

    bucket: str
    key: str
    version_id: str | None
    sequencer: str | None
    etag: str | None
    size: int | None
    event_time: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Upload:
        obj = record["s3"]["object"]
        return cls(bucket=record["s3"]["bucket"]["name"],
                   key=unquote_plus(obj["key"]),  # S3 events URL-encode keys (spaces arrive as '+')
                   version_id=obj.get("versionId") or None, sequencer=obj.get("sequencer") or None,
                   etag=plain_etag(obj.get("eTag")), size=obj.get("size"), event_time=record.get("eventTime"))


class Submitter:
    def __init__(self, s3: Any, runtime: Any, environ: Mapping[str, str]) -> None:
        self.s3 = s3
        self.runtime = runtime
        self.endpoint = environ[env.ENDPOINT_NAME]
        self.output_bucket = environ[env.OUTPUT_BUCKET]
        self.store = OutputStore(s3, self.output_bucket)
        self.defaults = environ.get(env.DEFAULT_OPTIONS, "")
        self.timeout_s = int(environ.get(env.INVOCATION_TIMEOUT_S) or DEFAULT_TIMEOUT_S)
        self.ttl_s = int(environ.get(env.REQUEST_TTL_S) or DEFAULT_TTL_S)

    # --- one SQS message ----------------------------------------------------------------
    def message(self, body: str) -> None:
        event = unwrap_sns(body)
        if not isinstance(event, dict):
            raise ValueError(f"not an S3 event notification: {body[:200]!r}")
        if event.get("Event") == "s3:TestEvent":
            log.info("skip: s3:TestEvent for bucket %s", event.get("Bucket"))
            return
        records = event.get("Records")
        if not isinstance(records, list):
            raise ValueError(f"not an S3 event notification: {body[:200]!r}")
        for record in records:
            self.record(record)

    def record(self, record: Mapping[str, Any]) -> None:
        name = record.get("eventName", "")
        if not name.startswith("ObjectCreated:"):
            log.info("skip: event %s is not an object creation", name)
            return
        upload = Upload.from_record(record)
        if upload.bucket == self.output_bucket:
            log.info("skip: s3://%s/%s is in the output bucket", upload.bucket, upload.key)
            return
        if not is_audio_key(upload.key):
            log.info("skip: s3://%s/%s does not have an audio file extension", upload.bucket, upload.key)
            return
        self.submit(upload)

    # --- one upload ---------------------------------------------------------------------
    def submit(self, up: Upload) -> None:
        rev = revision(up.version_id, up.sequencer, up.etag, up.event_time)
        job_id = inference_id(up.bucket, up.key, rev)
        found = self.store.job(job_id)
        existing = found[0] if found else None
        if existing is not None and existing.state != PENDING:
            log.info("duplicate: %s for s3://%s/%s is already %s", job_id, up.bucket, up.key, existing.state)
            return
        job = existing or JobRecord(
            inference_id=job_id, input_bucket=up.bucket, input_key=up.key, state=PENDING, options="",
            version_id=up.version_id, etag=up.etag, size=up.size, submitted_at=utc_now(), revision=rev,
            order=event_order(up.sequencer, up.event_time), output_base=output_base(up.key))

        head_args = {"Bucket": up.bucket, "Key": up.key, **({"VersionId": up.version_id} if up.version_id else {})}
        try:
            head = self.s3.head_object(**head_args)
        except ClientError as exc:
            if not is_missing(exc):
                raise
            head = None
        if head is not None and not up.version_id and up.etag and plain_etag(head.get("ETag")) != up.etag:
            # Overwritten since this event: the newer upload has its own event and job.
            log.info("skip: s3://%s/%s was replaced since this event (etag %s)", up.bucket, up.key, up.etag)
            return
        if head is not None:
            modified = head.get("LastModified")
            job = replace(job, size=head.get("ContentLength", job.size),
                          last_modified=modified.isoformat() if modified is not None else None)

        index_etag = self.store.claim(job)
        if index_etag is None:
            self.store.save_job(job.advance(SUPERSEDED, completed_at=utc_now(),
                                            message="a later upload of this key was seen first"))
            log.info("superseded: %s is older than the latest upload of s3://%s/%s", job_id, up.bucket, up.key)
            return
        problem = self._problem(head, job)
        if problem is not None:
            self._fail_fast(job, problem, index_etag)
            return
        try:
            options = options_from((head or {}).get("Metadata") or {}, self.defaults)
            custom_attributes = options.to_custom_attributes()
        except ContractError as exc:
            self._fail_fast(job, exc, index_etag)
            return

        job_etag = found[1] if found else None
        if existing is None:
            job = replace(job, options=options.to_query())
            job_etag = self.store.save_job(job, create=True)
            if job_etag is None:  # a concurrent duplicate created it first; it submits
                log.info("duplicate: %s was created concurrently", job_id)
                return

        assert head is not None  # _problem() reported a missing object
        response = self.runtime.invoke_endpoint_async(
            EndpointName=self.endpoint,
            InputLocation=s3_uri(up.bucket, up.key),
            InferenceId=job_id,
            CustomAttributes=custom_attributes,
            ContentType=head.get("ContentType") or "application/octet-stream",
            Accept="application/json",
            InvocationTimeoutSeconds=self.timeout_s,
            RequestTTLSeconds=self.ttl_s,
        )
        submitted = job.advance(SUBMITTED, output_location=response.get("OutputLocation"),
                                failure_location=response.get("FailureLocation"))
        if self.store.save_job(submitted, if_match=job_etag) is None:
            # The completion Lambda already moved the job on; its state is the newer one.
            log.info("job %s changed while submitting; keeping the newer record", job_id)
        log.info("submitted s3://%s/%s as %s -> %s", up.bucket, up.key, job_id, response.get("OutputLocation"))

    # --- helpers ------------------------------------------------------------------------
    @staticmethod
    def _problem(head: Mapping[str, Any] | None, job: JobRecord) -> ContractError | None:
        """Why this upload cannot be transcribed at all, found without GPU time."""
        if head is None:
            return ContractError(ErrorCode.MISSING_OBJECT, "the object was deleted before it could be transcribed")
        if job.size == 0:
            return ContractError(ErrorCode.EMPTY_INPUT, "the object is empty (0 bytes)")
        if job.size is not None and job.size > MAX_ASYNC_INPUT_BYTES:
            return ContractError(ErrorCode.INPUT_TOO_LARGE,
                                 f"the object is {job.size} bytes; SageMaker async inference accepts "
                                 f"at most {MAX_ASYNC_INPUT_BYTES} (split the recording)")
        return None

    def _fail_fast(self, job: JobRecord, exc: ContractError, index_etag: str) -> None:
        record = exc.to_record(bucket=job.input_bucket, key=job.input_key, version_id=job.version_id,
                               etag=job.etag, inference_id=job.inference_id, stage="submit")
        key = error_key(job.input_key)
        written = self.store.publish(job, {key: (record.to_json(), ERROR_CONTENT_TYPE)}, index_etag)
        self.store.save_job(job.advance(FAILED, completed_at=utc_now(), result_keys=written, message=exc.message))
        log.warning("rejected s3://%s/%s without invoking: %s (%s)", job.input_bucket, job.input_key, exc.message,
                    exc.code.value)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS batch -> ``{"batchItemFailures": [...]}`` (ReportBatchItemFailures)."""
    s3, runtime = _clients()
    return handle_batch(event, Submitter(s3, runtime, os.environ).message, log)
