"""The job record: how an async inference id maps back to the audio object it transcribes.

``InvokeEndpointAsync`` writes its result under a generated name, so the trigger Lambda
stores one record per job at ``keys.job_key(inference_id)`` in the output bucket. The
completion Lambda reads it to know where the transcript goes and which formats were asked
for; the CLI reads it to follow progress. The ``state`` field makes both Lambdas idempotent:
a duplicate event for a job that is already past a state does nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from whisper_contract.result import Cost
from whisper_contract.result import _known_fields as _block  # the transcript's tolerant block reader

JOB_SCHEMA_VERSION = "1"

PENDING = "pending"  # record written, endpoint not yet called (or the call failed and will retry)
SUBMITTED = "submitted"  # InvokeEndpointAsync accepted the request
COMPLETED = "completed"  # transcript files written
FAILED = "failed"  # <key>.error.json written
SUPERSEDED = "superseded"  # the input was replaced by a newer upload before this job finished
STATES = (PENDING, SUBMITTED, COMPLETED, FAILED, SUPERSEDED)
FINAL_STATES = frozenset({COMPLETED, FAILED, SUPERSEDED})


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobRecord:
    inference_id: str
    input_bucket: str
    input_key: str
    state: str
    options: str  # RequestOptions.to_query(): the options this job runs with
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    submitted_at: str | None = None
    output_location: str | None = None  # as InvokeEndpointAsync returned them
    failure_location: str | None = None
    completed_at: str | None = None
    result_keys: tuple[str, ...] = ()  # output-bucket keys written for this job
    message: str | None = None  # why the job ended where it did (failure reason, supersession)
    revision: str | None = None  # keys.revision(): which upload of the key (version or sequencer)
    order: str | None = None  # keys.event_order(): sorts this upload among the key's uploads
    last_modified: str | None = None  # the object's LastModified as HeadObject gave it (ISO 8601)
    output_base: str | None = None  # keys.output_base(input_key): where its results are named
    cost: Cost | None = None  # the transcript's cost block, set on completion (whisper-sm cost sums these)
    schema_version: str = JOB_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"job state must be one of {STATES}, got {self.state!r}")

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def advance(self, state: str, **changes: Any) -> JobRecord:
        return replace(self, state=state, **changes)

    def to_json(self) -> str:
        return _to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        return _from_json(cls, text)


@dataclass(frozen=True)
class KeyIndex:
    """``keys.key_index_key(input_key)``: the latest upload of one input key and its results.

    The trigger sets ``latest_job`` (only ever forward, by ``order``); the job that writes
    results sets ``published_job`` and ``result_keys``. A job that is not ``latest_job`` when
    it finishes is superseded and writes nothing, so the output prefix of a key only ever holds
    the files of its latest upload. Users and the CLI find a key's results here, including
    the shortened name of a long key (``output_base``).
    """

    input_bucket: str
    input_key: str
    output_base: str
    latest_job: str
    latest_order: str | None = None
    published_job: str | None = None
    result_keys: tuple[str, ...] = ()
    updated_at: str | None = None
    schema_version: str = JOB_SCHEMA_VERSION

    def to_json(self) -> str:
        return _to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyIndex:
        return _from_json(cls, text)


_Record = TypeVar("_Record", "JobRecord", "KeyIndex")


def _to_json(record: JobRecord | KeyIndex) -> str:
    data = asdict(record)
    data["result_keys"] = list(record.result_keys)  # JSON has no tuples
    return json.dumps(data, ensure_ascii=False, indent=2)


def _from_json(cls: type[_Record], text: str | bytes) -> _Record:
    kwargs = _known_fields(cls, text)
    kwargs["result_keys"] = tuple(kwargs.get("result_keys") or ())
    if "cost" in kwargs:  # JobRecord only
        kwargs["cost"] = _block(Cost, kwargs["cost"]) if isinstance(kwargs["cost"], dict) else None
    return cls(**kwargs)


def _known_fields(cls: type, text: str | bytes) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} JSON must be an object")
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in known}  # newer writers may add fields
