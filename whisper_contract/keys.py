"""S3 key conventions shared by the trigger Lambda, the completion Lambda and the CLI.

The transcript of ``s3://<input>/<key>`` lands in the output bucket at ``<base>.<fmt>``
(e.g. ``calls/a.mp3.json``); a failure lands at ``<base>.error.json``, where ``<base>`` is
``output_base(key)``: the key itself, except for keys that would collide with the pipeline's
own namespaces or exceed S3's key length (see there). Job records that map an async inference
id back to its input, and the per-key index, live under ``JOBS_PREFIX`` in the output bucket.
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
KEY_INDEX_PREFIX = JOBS_PREFIX + "by-key/"
INTERNAL_PREFIXES = (JOBS_PREFIX, "_async/")  # the output bucket's own namespaces
# S3 object keys are at most 1,024 bytes of UTF-8 ("Naming Amazon S3 objects",
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html).
MAX_KEY_BYTES = 1024
FORMAT_SUFFIXES = (".json", ".txt", ".srt", ".vtt")  # one per whisper_contract.options.FORMATS
OUTPUT_SUFFIXES = FORMAT_SUFFIXES + (ERROR_SUFFIX,)  # IAM's delete patterns (*.json covers the copies)
# redact_output=both: the transcript before redaction, <base>.unredacted.<fmt> (issue 17).
UNREDACTED_VARIANT = "unredacted"
UNREDACTED_SUFFIXES = tuple(f".{UNREDACTED_VARIANT}{s}" for s in FORMAT_SUFFIXES)
_LONGEST_SUFFIX = max(len(s.encode()) for s in OUTPUT_SUFFIXES + UNREDACTED_SUFFIXES)
SHORTENED_MARK = "~"  # <start of the key>~<hash of the whole key>
_HASH_CHARS = 32


def is_audio_key(key: str) -> bool:
    return posixpath.splitext(key.lower())[1] in AUDIO_EXTENSIONS and not key.endswith("/")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def output_base(input_key: str) -> str:
    """The output-bucket name that ``input_key``'s results start with (the one rule).

    1. Keys under the output bucket's own namespaces (``_jobs/``, ``_async/``, also spelt
       with more leading underscores) get one more ``_``: ``_jobs/a.mp3`` -> ``__jobs/a.mp3``.
       Injective, and no result starts with a single-underscore internal prefix.
    2. If the longest output name (``<base>.error.json``) would exceed ``MAX_KEY_BYTES``, the
       base is the key's first bytes (cut at a character boundary), ``~``, and 32 hex
       characters of the SHA-256 of the whole key, so every output name fits. The job record
       and the key index (``key_index_key``) record it, and this function recomputes it.
    """
    base = input_key
    if input_key.lstrip("_") != input_key and ("_" + input_key.lstrip("_")).startswith(INTERNAL_PREFIXES):
        base = "_" + input_key
    if len(base.encode("utf-8")) + _LONGEST_SUFFIX <= MAX_KEY_BYTES:
        return base
    tail = SHORTENED_MARK + _sha256(input_key)[:_HASH_CHARS]
    room = MAX_KEY_BYTES - _LONGEST_SUFFIX - len(tail)
    head = base.encode("utf-8")[:room].decode("utf-8", errors="ignore")  # drops a cut character
    return head + tail


def output_keys(input_key: str, formats: tuple[str, ...] | list[str], variant: str = "") -> dict[str, str]:
    """Where each requested format of ``input_key``'s transcript is written; ``variant``
    ``"unredacted"`` names the copy before redaction (``<base>.unredacted.<fmt>``)."""
    if variant not in ("", UNREDACTED_VARIANT):
        raise ValueError(f"unknown output variant {variant!r}")
    base = output_base(input_key) + (f".{variant}" if variant else "")
    return {fmt: f"{base}.{fmt}" for fmt in formats}


def error_key(input_key: str) -> str:
    return output_base(input_key) + ERROR_SUFFIX


def all_output_keys(input_key: str) -> tuple[str, ...]:
    """Every name a job for ``input_key`` may write: what is not the current job's is stale."""
    base = output_base(input_key)
    return tuple(base + suffix for suffix in OUTPUT_SUFFIXES + UNREDACTED_SUFFIXES)


def revision(version_id: str | None, sequencer: str | None, etag: str | None, event_time: str | None) -> str:
    """What tells one upload of a key from another, as an S3 event says it.

    The version id where the bucket is versioned; else the event's ``sequencer``, which S3
    gives every PUT/DELETE event and which grows for each later event on the same key ("Event
    message structure", https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
    Duplicate deliveries of one event carry the same value; a re-upload of the same bytes does
    not. Events without either (hand-made, replayed) fall back to ETag + event time.
    """
    if version_id:
        return f"v:{version_id}"
    if sequencer:
        return f"s:{sequencer.upper()}"
    return f"e:{etag or ''}@{event_time or ''}"


def event_order(sequencer: str | None, event_time: str | None) -> str | None:
    """A string that sorts later events of one key after earlier ones, or None if unknown.

    Sequencers are hex strings of varying length: S3 says to left-pad the shorter with zeros
    and compare lexicographically (same page as ``revision``). Event times are the fallback.
    """
    if sequencer:
        return "s:" + sequencer.upper().rjust(64, "0")
    if event_time:
        return "t:" + event_time
    return None


def is_older(order: str | None, than: str | None) -> bool:
    """True only when both orders are known, of one kind, and ``order`` is strictly earlier."""
    if order is None or than is None or order[:2] != than[:2]:
        return False
    return order < than


def inference_id(bucket: str, key: str, revision_: str | None) -> str:
    """Deterministic id for one upload of one object, so duplicate S3 events map to one job.

    SageMaker allows 64 characters; a SHA-256 prefix keeps it short and free of key characters.
    """
    return f"w-{_sha256(bucket + chr(0) + key + chr(0) + (revision_ or ''))[:40]}"


def key_index_key(input_key: str) -> str:
    """The output-bucket record of the latest job of ``input_key`` (``jobs.KeyIndex``)."""
    return f"{KEY_INDEX_PREFIX}{_sha256(input_key)[:40]}.json"


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
    """Keys the pipeline itself writes in the output bucket: records, raw async results, errors."""
    return key.startswith(INTERNAL_PREFIXES) or key.endswith(ERROR_SUFFIX)
