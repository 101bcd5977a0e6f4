"""Handler functions for the stock SageMaker PyTorch inference container (the "dlc" mode).

The container's inference toolkit calls ``model_fn`` once, then ``input_fn`` ->
``predict_fn`` -> ``output_fn`` per request. They are a thin adapter: decoding, VAD
chunking, the backend and the formats are the BYOC server's own code. ``code/inference.py``
in the model tarball only re-exports these (see ``package_dlc``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_contract import CONTENT_TYPES, ContractError, ErrorCode, RequestOptions, Transcript, env, render
from whisper_server.backends import Backend, load_backend
from whisper_server.metering import Meter
from whisper_server.pipeline import transcribe_file
from whisper_server.negotiate import CUSTOM_ATTRIBUTES, choose_format, parse_options
from whisper_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DlcModel:
    settings: Settings
    backend: Backend


@dataclass(frozen=True)
class DlcRequest:
    path: Path
    options: RequestOptions


def _toolkit_error(error: ContractError) -> Exception:
    """An exception the inference toolkit turns into this HTTP status (so an async
    invocation fails visibly); a plain one outside the toolkit (tests, local runs)."""
    body = error.to_record().to_json()
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:
        return error
    return GenericInferenceToolkitError(error.status, body)


def _custom_attributes(context: Any) -> str | None:
    """The custom-attributes header, when the toolkit passes its request context."""
    try:
        props = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        return None
    for key, value in (props or {}).items():
        if str(key).lower() == CUSTOM_ATTRIBUTES:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def model_fn(model_dir: str, context: Any = None) -> DlcModel:
    settings = Settings.from_env()
    if not os.environ.get(env.MODEL_DIR):
        settings = dataclasses.replace(settings, model_dir=model_dir)
    started = time.perf_counter()
    backend = load_backend(settings)
    log.info("model %s loaded in %.1f s", backend.info, time.perf_counter() - started)
    return DlcModel(settings, backend)


def input_fn(input_data: bytes | str, content_type: str | None, context: Any = None) -> DlcRequest:
    try:
        options = parse_options("", _custom_attributes(context))
        body = input_data.encode() if isinstance(input_data, str) else bytes(input_data or b"")
        if not body:
            raise ContractError(ErrorCode.EMPTY_INPUT, "the request body is empty: send the audio file's bytes")
        fd, name = tempfile.mkstemp(prefix="whisper-", suffix=".audio")
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        return DlcRequest(Path(name), options)
    except ContractError as exc:
        raise _toolkit_error(exc) from None


def predict_fn(data: DlcRequest, model: DlcModel, context: Any = None) -> Transcript:
    try:
        deadline = time.monotonic() + model.settings.request_timeout_s
        # A TorchServe worker is its own process and decodes one request at a time: its meter
        # sees no overlap, so the share is the wall time (workers sharing a GPU each pay full).
        return Meter(model.settings.instance_type).run(
            lambda: transcribe_file(data.path, data.options, model.backend, model.settings, deadline=deadline))
    except ContractError as exc:
        raise _toolkit_error(exc) from None
    finally:
        data.path.unlink(missing_ok=True)


def output_fn(prediction: Transcript, accept: str | None, context: Any = None) -> tuple[str, str]:
    fmt = choose_format(accept, RequestOptions(formats=tuple(prediction.options.get("formats") or ("json",))))
    return render(prediction, fmt), CONTENT_TYPES[fmt]
