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
from typing import Any

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
    schema_version: str = JOB_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"job state must be one of {STATES}, got {self.state!r}")

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def advance(self, state: str, **changes: Any) -> "JobRecord":
        return replace(self, state=state, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["result_keys"] = list(self.result_keys)
        return json.dumps(data, ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobRecord":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}  # newer writers may add fields
        kwargs["result_keys"] = tuple(kwargs.get("result_keys") or ())
        return cls(**kwargs)
