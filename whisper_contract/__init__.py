"""The contract shared by the CDK app, the container and the Lambdas. Standard library only:
it is copied into the image and into every Lambda asset."""

from whisper_contract.errors import ContractError, ErrorCode, ErrorRecord
from whisper_contract.formats import CONTENT_TYPES, render
from whisper_contract.keys import error_key, inference_id, is_audio_key, job_key, output_keys
from whisper_contract.options import FORMATS, RequestOptions
from whisper_contract.result import ModelInfo, Segment, SourceInfo, Timings, Transcript, Word

__all__ = [
    "CONTENT_TYPES", "FORMATS", "ContractError", "ErrorCode", "ErrorRecord", "ModelInfo",
    "RequestOptions", "Segment", "SourceInfo", "Timings", "Transcript", "Word", "error_key",
    "inference_id", "is_audio_key", "job_key", "output_keys", "render",
]
