"""Server settings, read once from the environment into a frozen dataclass.

Every variable name lives in ``whisper_contract.env`` so the CDK app sets exactly what the
container reads. Bad values fail at start-up with a message naming the variable, rather than
at the first request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from whisper_contract import env

BACKENDS = ("faster-whisper", "torch", "triton")
DEVICES = ("cpu", "cuda", "auto")
DEFAULT_PORT = 8080


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _choice(environ: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    model_dir: str = "/opt/ml/model"
    backend: str = "faster-whisper"
    device: str = "auto"
    compute_type: str = "default"  # resolved per device by the backend
    model_name: str = ""  # label only; defaults to the model folder's name
    max_concurrency: int = 1  # requests decoded at once (= MaxConcurrentInvocationsPerInstance)
    max_queue: int = 8  # requests waiting beyond max_concurrency before 429
    request_timeout_s: float = 3300.0  # under the async endpoint's 3600 s invocation limit
    max_input_bytes: int = 1 << 30  # the async payload limit (1 GB)
    max_audio_s: float = 4 * 3600.0
    # Chunks of <= 30 s decoded together, across requests; 0: the backend chooses (the torch
    # backend from the GPU's memory and the model, batcher.batch_size).
    batch_size: int = 0
    cpu_threads: int = 0  # 0: CTranslate2 picks
    port: int = DEFAULT_PORT
    # SageMaker sends SIGKILL 30 s after SIGTERM; in-flight work gets this long, and the
    # process is gone EXIT_SLACK_S (server.py) later: 25 s, a 5 s margin before the kill.
    shutdown_grace_s: float = 23.0
    # Slow bodies (slowloris): a pause longer than body_idle_timeout_s, or a body averaging
    # under min_body_rate bytes/s once that long has passed, is answered 504 and dropped. The
    # async sidecar streams from S3 over the instance's network, far above these floors.
    body_idle_timeout_s: float = 30.0
    min_body_rate: int = 64 * 1024
    keep_alive_s: float = 75.0  # idle keep-alive connections are closed after this long
    spool_dir: str = ""  # "": the system temp dir; one private folder per request under it
    instance_type: str = ""  # "": not on a priced instance (the cost block then has no price)

    @property
    def label(self) -> str:
        return self.model_name or os.path.basename(os.path.normpath(self.model_dir))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        e = os.environ if environ is None else environ
        return cls(
            model_dir=e.get(env.MODEL_DIR, "").strip() or cls.model_dir,
            backend=_choice(e, env.BACKEND, cls.backend, BACKENDS),
            device=_choice(e, env.DEVICE, cls.device, DEVICES),
            compute_type=e.get(env.COMPUTE_TYPE, "").strip() or cls.compute_type,
            model_name=e.get(env.MODEL_NAME, "").strip(),
            max_concurrency=_int(e, env.MAX_CONCURRENCY, cls.max_concurrency),
            max_queue=_int(e, env.MAX_QUEUE, cls.max_queue, minimum=0),
            request_timeout_s=_float(e, env.REQUEST_TIMEOUT_S, cls.request_timeout_s),
            max_input_bytes=_int(e, env.MAX_INPUT_BYTES, cls.max_input_bytes),
            max_audio_s=_float(e, env.MAX_AUDIO_S, cls.max_audio_s),
            batch_size=_int(e, env.BATCH_SIZE, cls.batch_size, minimum=0),
            cpu_threads=_int(e, env.CPU_THREADS, cls.cpu_threads, minimum=0),
            port=_int(e, env.PORT, cls.port),
            shutdown_grace_s=_float(e, env.SHUTDOWN_GRACE_S, cls.shutdown_grace_s),
            body_idle_timeout_s=_float(e, env.BODY_IDLE_TIMEOUT_S, cls.body_idle_timeout_s),
            min_body_rate=_int(e, env.MIN_BODY_RATE, cls.min_body_rate),
            keep_alive_s=_float(e, env.KEEP_ALIVE_S, cls.keep_alive_s),
            spool_dir=e.get(env.SPOOL_DIR, "").strip(),
            instance_type=e.get(env.INSTANCE_TYPE, "").strip(),
        )
