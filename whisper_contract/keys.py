"""S3 key conventions shared by the trigger Lambda, the completion Lambda and the CLI.

The transcript of ``s3://<input>/<key>`` lands in the output bucket at ``<key>.<fmt>``
(e.g. ``calls/a.mp3.json``); a failure lands at ``<key>.error.json``. Job records that map
an async inference id back to its input live under ``JOBS_PREFIX`` in the output bucket.
"""

from __future__ import annotations

import hashlib
import posixpath

# What the trigger submits. Anything FFmpeg decodes would do; the list keeps stray files
# (e.g. ``.DS_Store``, ``notes.txt``) from costing GPU time. Skips are logged, not silent.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .m4a .mp4 .aac .ogg .oga .opus .webm .mkv .mov .wma .amr .aiff .aif .3gp".split()
)
ERROR_SUFFIX = ".error.json"
JOBS_PREFIX = "_jobs/"
ASYNC_OUTPUT_PREFIX = "_async/output/"
ASYNC_FAILURE_PREFIX = "_async/failure/"
MAX_KEY_BYTES = 1024


def is_audio_key(key: str) -> bool:
    return posixpath.splitext(key.lower())[1] in AUDIO_EXTENSIONS and not key.endswith("/")


def output_keys(input_key: str, formats: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Where each requested format of ``input_key``'s transcript is written."""
    return {fmt: f"{input_key}.{fmt}" for fmt in formats}


def error_key(input_key: str) -> str:
    return input_key + ERROR_SUFFIX


def inference_id(bucket: str, key: str, version_or_etag: str | None) -> str:
    """Deterministic id for one version of one object, so duplicate S3 events map to one job.

    SageMaker allows 64 characters; a SHA-256 prefix keeps it short and free of key characters.
    """
    digest = hashlib.sha256(f"{bucket}\0{key}\0{version_or_etag or ''}".encode()).hexdigest()
    return f"w-{digest[:40]}"


def job_key(inference_id_: str) -> str:
    return f"{JOBS_PREFIX}{inference_id_}.json"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key). Keys keep their characters as S3 stores them."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def plain_etag(etag: str | None) -> str | None:
    """ETags arrive quoted from HeadObject and bare in S3 events; ids must not depend on that."""
    return etag.strip('"') if etag else None


def is_internal_key(key: str) -> bool:
    """Keys the pipeline itself writes: never inputs, even in a shared bucket."""
    return key.startswith((JOBS_PREFIX, ASYNC_OUTPUT_PREFIX, ASYNC_FAILURE_PREFIX)) or key.endswith(ERROR_SUFFIX)
