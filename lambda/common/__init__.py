"""Code both Lambdas share (``whisper_lambdas.common``), shipped in both assets.

- S3 error classification: ``is_missing`` / ``is_precondition`` / ``is_forbidden``.
- Message bodies: ``unwrap_sns`` (S3 -> SNS -> SQS, or SNS -> SQS without raw delivery).
- ``handle_batch``: the SQS partial-batch-failure loop (``ReportBatchItemFailures``).
- ``logger``: the ``whisper.*`` loggers at INFO unless a host process chose a level. In AWS
  the function's log format can be JSON (Lambda formats stdlib records itself, ``extra=``
  fields included), so nothing here formats.
- ``OutputStore``: records and results in the output bucket: job records, the per-key index
  (``jobs.KeyIndex``) that orders uploads of one key, and ``publish``, which leaves exactly
  one job's files under a key's output names.

Standard library, botocore's ``ClientError`` and ``whisper_contract`` only (boto3 and
botocore are in the Lambda runtime). aws-lambda-powertools would have to be bundled into
both assets for what is a dozen lines here.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping, Protocol

from botocore.exceptions import ClientError

from whisper_contract.jobs import JobRecord, KeyIndex, utc_now
from whisper_contract.keys import all_output_keys, is_older, job_key, key_index_key, output_base

JSON_CONTENT_TYPE = "application/json"
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_FORBIDDEN = frozenset({"403", "AccessDenied"})


# --- S3 errors --------------------------------------------------------------------------------
def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    """No such key (S3 says 404 only to callers with s3:ListBucket; else 403)."""
    return error_code(exc) in _MISSING


def is_precondition(exc: ClientError) -> bool:
    """A conditional write (If-Match / If-None-Match) lost to another writer."""
    return error_code(exc) in _PRECONDITION


def is_forbidden(exc: ClientError) -> bool:
    return error_code(exc) in _FORBIDDEN


# --- messages ---------------------------------------------------------------------------------
def unwrap_sns(body: str) -> Any:
    """The JSON message of an SQS body, with an SNS envelope (no raw delivery) removed."""
    message = json.loads(body)
    if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
        message = json.loads(message["Message"])
    return message


def handle_batch(event: Mapping[str, Any], handle: Callable[[str], None], log: logging.Logger) -> dict[str, Any]:
    """Call ``handle`` with each SQS message body; failures go to ``batchItemFailures``.

    With ReportBatchItemFailures, SQS redelivers only the named messages and finally moves
    them to the DLQ (alarmed), so nothing is swallowed here.
    """
    failures = []
    for message in event.get("Records", []):
        try:
            handle(message["body"])
        except Exception:
            log.exception("failed message %s", message.get("messageId"))
            failures.append({"itemIdentifier": message["messageId"]})
    return {"batchItemFailures": failures}


def logger(name: str) -> logging.Logger:
    parent = logging.getLogger("whisper")
    if parent.level == logging.NOTSET:  # Lambda: INFO; a host process (local pipeline) may choose
        parent.setLevel(logging.INFO)
    return logging.getLogger(f"whisper.{name}")


# --- the output bucket ------------------------------------------------------------------------
class S3Client(Protocol):
    """The four calls used here, as boto3's S3 client has them."""

    def get_object(self, **kwargs: Any) -> Any: ...
    def put_object(self, **kwargs: Any) -> Any: ...
    def delete_objects(self, **kwargs: Any) -> Any: ...
    def head_object(self, **kwargs: Any) -> Any: ...


class IndexConflict(RuntimeError):
    """Another writer changed a key's index between our read and write: retry the message."""


class OutputStore:
    def __init__(self, s3: S3Client, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    # --- plain objects ----------------------------------------------------------------------
    def read(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag), or None if there is no such object."""
        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return got["Body"].read(), str(got["ETag"])

    def put(self, key: str, body: str, *, content_type: str = JSON_CONTENT_TYPE, if_match: str | None = None,
            create: bool = False) -> str | None:
        """Write; the new ETag, or None if the condition (``if_match`` / ``create``) failed."""
        conditions = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"} if create else {}
        try:
            put = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode("utf-8"),
                                     ContentType=content_type, **conditions)
        except ClientError as exc:
            if conditions and is_precondition(exc):
                return None
            raise
        return str(put["ETag"])

    # --- job records ------------------------------------------------------------------------
    def job(self, job_id: str) -> tuple[JobRecord, str] | None:
        got = self.read(job_key(job_id))
        return None if got is None else (JobRecord.from_json(got[0]), got[1])

    def save_job(self, job: JobRecord, *, if_match: str | None = None, create: bool = False) -> str | None:
        return self.put(job_key(job.inference_id), job.to_json(), if_match=if_match, create=create)

    # --- the per-key index ------------------------------------------------------------------
    def index(self, input_key: str) -> tuple[KeyIndex, str] | None:
        got = self.read(key_index_key(input_key))
        return None if got is None else (KeyIndex.from_json(got[0]), got[1])

    def claim(self, job: JobRecord) -> str | None:
        """Make ``job`` the latest upload of its key, unless a later upload already is; the
        index's new ETag, or None for an event older than one already seen (S3 does not
        deliver events in order)."""
        current = self.index(job.input_key)
        if current is not None:
            index, etag = current
            if index.latest_job == job.inference_id:
                return etag
            if is_older(job.order, index.latest_order):
                return None
            claimed = KeyIndex(**{**_fields(index), "latest_job": job.inference_id, "latest_order": job.order,
                                  "updated_at": utc_now()})
        else:
            etag = None
            claimed = KeyIndex(input_bucket=job.input_bucket, input_key=job.input_key,
                               output_base=output_base(job.input_key), latest_job=job.inference_id,
                               latest_order=job.order, updated_at=utc_now())
        new_etag = self.put(key_index_key(job.input_key), claimed.to_json(), if_match=etag, create=etag is None)
        if new_etag is None:
            raise IndexConflict(f"the index of {job.input_key!r} changed while claiming it for {job.inference_id}")
        return new_etag

    def latest(self, job: JobRecord) -> tuple[bool, str | None]:
        """(is ``job`` its key's latest upload, the index's ETag). No index (a job from before
        the index existed, or an endpoint invoked by hand): it is."""
        current = self.index(job.input_key)
        if current is None:
            return True, None
        return current[0].latest_job == job.inference_id, current[1]

    def publish(self, job: JobRecord, files: Mapping[str, tuple[str, str]], index_etag: str | None, *,
                record: bool = True) -> tuple[str, ...]:
        """Write ``files`` ({key: (body, content type)}) and delete every other output name of
        the key, so its output prefix holds exactly this job's files; then record them in the
        index (``index_etag`` from ``claim``/``latest``; not for a job without a record, which
        must not displace the key's latest upload). Deletes of names that do not exist are
        no-ops, so a retry after a crash simply does it all again.
        """
        for key, (body, content_type) in files.items():
            self.put(key, body, content_type=content_type)
        stale = [k for k in all_output_keys(job.input_key) if k not in files]
        if stale:
            done = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in stale],
                                                                      "Quiet": True})
            if done.get("Errors"):
                raise RuntimeError(f"could not delete stale outputs of {job.input_key!r}: {done['Errors']}")
        written = tuple(files)
        if not record:
            return written
        index = KeyIndex(input_bucket=job.input_bucket, input_key=job.input_key,
                         output_base=output_base(job.input_key), latest_job=job.inference_id,
                         latest_order=job.order, published_job=job.inference_id, result_keys=written,
                         updated_at=utc_now())
        if index_etag is None:
            self.put(key_index_key(job.input_key), index.to_json())
        elif self.put(key_index_key(job.input_key), index.to_json(), if_match=index_etag) is None:
            # A newer upload claimed the key while these files were written. Its own job
            # publishes after its inference, replacing every one of these names.
            raise IndexConflict(f"{job.input_key!r} got a newer upload while {job.inference_id} published")
        return written


def _fields(index: KeyIndex) -> dict[str, Any]:
    return {name: getattr(index, name) for name in index.__dataclass_fields__}
