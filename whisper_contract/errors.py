"""Errors every part of the pipeline speaks: a stable code, an HTTP status and a message."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

ERROR_SCHEMA_VERSION = "1"


class ErrorCode(str, enum.Enum):
    """Stable machine-readable codes. The HTTP status says whose fault it is (4xx: input)."""

    EMPTY_INPUT = "empty_input"
    NOT_AUDIO = "not_audio"
    CORRUPT_AUDIO = "corrupt_audio"
    NO_AUDIO_STREAM = "no_audio_stream"
    NO_SPEECH = "no_speech"
    INPUT_TOO_LARGE = "input_too_large"
    INPUT_TOO_LONG = "input_too_long"
    BAD_OPTION = "bad_option"
    UNSUPPORTED_MEDIA = "unsupported_media"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    INTERNAL = "internal"
    INFERENCE_FAILED = "inference_failed"  # the endpoint reported a failure (completion path)
    MISSING_OBJECT = "missing_object"


STATUS = {
    ErrorCode.EMPTY_INPUT: 400,
    ErrorCode.NOT_AUDIO: 415,
    ErrorCode.CORRUPT_AUDIO: 422,
    ErrorCode.NO_AUDIO_STREAM: 422,
    ErrorCode.NO_SPEECH: 422,
    ErrorCode.INPUT_TOO_LARGE: 413,
    ErrorCode.INPUT_TOO_LONG: 413,
    ErrorCode.BAD_OPTION: 400,
    ErrorCode.UNSUPPORTED_MEDIA: 415,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.NOT_READY: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.INFERENCE_FAILED: 500,
    ErrorCode.MISSING_OBJECT: 404,
}


class ContractError(Exception):
    """An error with a code the caller can act on. Raised anywhere, rendered once."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def to_record(self, **context: Any) -> "ErrorRecord":
        return ErrorRecord(code=self.code.value, message=self.message, status=self.status,
                           details={**self.details, **context})


@dataclass(frozen=True)
class ErrorRecord:
    """The body of a 4xx/5xx answer and of every ``<key>.error.json``."""

    code: str
    message: str
    status: int
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: str = ERROR_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps({"error": asdict(self)}, ensure_ascii=False, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ErrorRecord":
        data = json.loads(text)["error"]
        return cls(
            code=str(data["code"]),
            message=str(data["message"]),
            status=int(data["status"]),
            details=dict(data.get("details") or {}),
            schema_version=str(data.get("schema_version", ERROR_SCHEMA_VERSION)),
        )
