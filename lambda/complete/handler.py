"""Completion Lambda: SageMaker async notifications (SNS -> SQS) -> transcript files.

Success: read the container's JSON transcript from the async output object, add where the
audio came from and when, and write every requested format under the input key's output
names in the output bucket. Failure: write ``<key>.error.json`` with the failure reason and
the container's own error body. Either way every other output name of the key is deleted,
so the key's results are exactly this job's. The job record (written by the trigger) says
which input and which formats; its state makes duplicate notifications no-ops, and a crash
half-way simply redoes the same writes on retry. A job that is no longer its key's latest
upload (the key index) writes nothing. Failures go back to SQS (``batchItemFailures``), then
the DLQ.

Notification shape (SageMaker developer guide, "Check prediction results"): ``inferenceId``,
``invocationStatus`` ("Completed" or "Failed"), ``requestParameters.inputLocation``,
``responseParameters.outputLocation`` on success, ``failureReason`` on error; ``eventTime``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import boto3
from botocore.exceptions import ClientError

from whisper_contract import CONTENT_TYPES, ErrorCode, ErrorRecord, RequestOptions, SourceInfo, Transcript, env
from whisper_contract.formats import render
from whisper_contract.jobs import COMPLETED, FAILED, SUBMITTED, SUPERSEDED, JobRecord, utc_now
from whisper_contract.keys import error_key, output_keys, parse_s3_uri, plain_etag
from whisper_contract.postprocess import copies
from whisper_contract.prices import priced
from whisper_lambdas.common import OutputStore, handle_batch, is_forbidden, is_missing, logger, unwrap_sns

log = logger("complete")

MAX_FAILURE_BODY = 16_384  # bytes of a non-JSON failure body kept in the error record
STATUS_COMPLETED = "Completed"
ERROR_CONTENT_TYPE = "application/json; charset=utf-8"


def parse_notification(body: str) -> dict[str, Any]:
    message = unwrap_sns(body)
    if not isinstance(message, dict) or "inferenceId" not in message or "invocationStatus" not in message:
        raise ValueError(f"not a SageMaker async notification: {body[:200]!r}")
    return message


def failure_location(notification: Mapping[str, Any], job: JobRecord) -> str | None:
    response = notification.get("responseParameters") or {}
    found = notification.get("failureLocation") or response.get("failureLocation") or job.failure_location
    return str(found) if found else None


class Completer:
    def __init__(self, s3: Any, environ: Mapping[str, str]) -> None:
        self.s3 = s3
        self.output_bucket = environ[env.OUTPUT_BUCKET]
        self.store = OutputStore(s3, self.output_bucket)

    def message(self, body: str) -> None:
        notification = parse_notification(body)
        job_id = notification["inferenceId"]
        job, job_etag = self._job(notification)
        if job.finished:
            log.info("duplicate: %s is already %s", job_id, job.state)
            return
        latest, index_etag = self.store.latest(job)
        if not latest or self._input_replaced(job):
            self.store.save_job(job.advance(SUPERSEDED, completed_at=utc_now(),
                                            message="the input object was replaced before this job finished"),
                                if_match=job_etag)
            log.warning("superseded: s3://%s/%s changed since %s was submitted", job.input_bucket, job.input_key,
                        job_id)
            return
        if notification["invocationStatus"] == STATUS_COMPLETED:
            self.success(notification, job, job_etag, index_etag)
        else:
            self.failure(notification, job, job_etag, index_etag)

    # --- outcomes -----------------------------------------------------------------------
    def success(self, notification: Mapping[str, Any], job: JobRecord, job_etag: str | None,
                index_etag: str | None) -> None:
        location = (notification.get("responseParameters") or {}).get("outputLocation") or job.output_location
        if not location:
            raise ValueError(f"{job.inference_id}: success notification without an output location")
        raw = self._read(location)
        if raw is None:
            raise FileNotFoundError(f"{job.inference_id}: async output {location} does not exist (yet)")
        try:
            transcript = Transcript.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # A 200 whose body is not a transcript is a container bug: say so next to the input.
            self._write_error(job, job_etag, index_etag, ErrorRecord(
                code=ErrorCode.INTERNAL.value, status=500,
                message=f"the endpoint's output is not a transcript: {exc}",
                details={"output_location": location, "output_head": raw[:2000].decode("utf-8", "replace")}))
            return

        formats = self._formats(job, transcript)
        completed_at = notification.get("eventTime") or utc_now()
        transcript = dataclasses.replace(
            transcript,
            source=SourceInfo(bucket=job.input_bucket, key=job.input_key, version_id=job.version_id,
                              etag=job.etag, inference_id=job.inference_id),
            timings=dataclasses.replace(transcript.timings, submitted_at=job.submitted_at, completed_at=completed_at),
            # The container measured; the queue wait and the dollars are known only here.
            cost=None if transcript.cost is None else priced(transcript.cost, job.submitted_at),
        )
        # redact_output=both: the unredacted copy too, under its own names (keys.output_keys).
        files = {key: (render(copy, fmt), CONTENT_TYPES[fmt])
                 for variant, copy in copies(transcript).items()
                 for fmt, key in output_keys(job.input_key, formats, variant).items()}
        written = self.store.publish(job, files, index_etag, record=job_etag is not None)
        self.store.save_job(job.advance(COMPLETED, completed_at=completed_at, result_keys=written,
                                        cost=transcript.cost), if_match=job_etag)
        log.info("completed %s: wrote %s", job.inference_id, ", ".join(written))

    def failure(self, notification: Mapping[str, Any], job: JobRecord, job_etag: str | None,
                index_etag: str | None) -> None:
        reason = str(notification.get("failureReason") or f"invocation status {notification['invocationStatus']}")
        location = failure_location(notification, job)
        body = self._read(location) if location else None
        details: dict[str, Any] = {"failure_reason": reason, "failure_location": location}
        record = None
        if body is not None:
            try:
                container = ErrorRecord.from_json(body)  # the container's own JSON error
                record = dataclasses.replace(container, details={**container.details, **details})
            except (ValueError, KeyError, TypeError):
                details["failure_body"] = body[:MAX_FAILURE_BODY].decode("utf-8", "replace")
        else:
            details["failure_body"] = None
        if record is None:
            record = ErrorRecord(code=ErrorCode.INFERENCE_FAILED.value, message=reason, status=500, details=details)
        self._write_error(job, job_etag, index_etag, record, completed_at=notification.get("eventTime"))

    # --- helpers ------------------------------------------------------------------------
    def _write_error(self, job: JobRecord, job_etag: str | None, index_etag: str | None, record: ErrorRecord,
                     completed_at: str | None = None) -> None:
        source = {"bucket": job.input_bucket, "key": job.input_key, "version_id": job.version_id,
                  "etag": job.etag, "inference_id": job.inference_id}
        record = dataclasses.replace(record, details={**record.details, "source": source,
                                                      "submitted_at": job.submitted_at})
        files = {error_key(job.input_key): (record.to_json(), ERROR_CONTENT_TYPE)}
        written = self.store.publish(job, files, index_etag, record=job_etag is not None)
        self.store.save_job(job.advance(FAILED, completed_at=completed_at or utc_now(), result_keys=written,
                                        message=record.message), if_match=job_etag)
        log.warning("failed %s: %s (%s)", job.inference_id, record.message, record.code)

    def _formats(self, job: JobRecord, transcript: Transcript) -> tuple[str, ...]:
        if job.options or not transcript.options.get("formats"):
            return RequestOptions.from_query(job.options).formats
        return tuple(transcript.options["formats"])  # job rebuilt from the notification alone

    def _job(self, notification: Mapping[str, Any]) -> tuple[JobRecord, str | None]:
        job_id = str(notification["inferenceId"])
        found = self.store.job(job_id)
        if found is not None:
            return found
        # No record: someone invoked the endpoint directly. The input location still says
        # where the results belong, so they are written rather than lost.
        input_location = (notification.get("requestParameters") or {}).get("inputLocation")
        if not input_location:
            raise LookupError(f"no job record for {job_id} and no input location in the notification")
        bucket, key = parse_s3_uri(input_location)
        log.warning("no job record for %s; using the notification's input location %s", job_id, input_location)
        return JobRecord(inference_id=job_id, input_bucket=bucket, input_key=key, state=SUBMITTED, options=""), None

    def _input_replaced(self, job: JobRecord) -> bool:
        """The input changed since the job was submitted (its newer upload may not have an
        index entry yet: the trigger may not have seen its event)."""
        if job.etag is None and job.version_id is None:
            return False
        try:
            head = self.s3.head_object(Bucket=job.input_bucket, Key=job.input_key)
        except ClientError as exc:
            if is_missing(exc) or is_forbidden(exc):
                return False  # deleted after upload (or not ours to read): still deliver the result
            raise
        if job.version_id:
            return head.get("VersionId") not in (None, job.version_id)
        return plain_etag(head.get("ETag")) != job.etag

    def _read(self, location: str) -> bytes | None:
        bucket, key = parse_s3_uri(location)
        try:
            body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return body


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS batch -> ``{"batchItemFailures": [...]}`` (ReportBatchItemFailures)."""
    return handle_batch(event, Completer(boto3.client("s3"), os.environ).message, log)


