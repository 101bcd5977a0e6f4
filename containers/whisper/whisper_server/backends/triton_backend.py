"""Whisper on TensorRT-LLM engines behind tritonserver, started inside this container.

The model folder is an engine build artifact (``whisper_engines``): ``manifest.json``,
``engines/`` and the generated Triton model repository ``triton/``. This backend starts
``tritonserver`` on that repository as a child process (gRPC on 127.0.0.1 only), waits until
the ``whisper_bls`` model is ready, and sends each 30 s chunk as one request; the requests are
in flight together, so Triton and TensorRT-LLM's in-flight batcher batch them on the GPU.

Everything else (decoding audio, VAD, chunking long audio, global timestamps, formats,
errors) stays in the shared server, and the decoding policy is ``whisper_server.decoding``:
this backend's ``decode`` sends a window with the prompt and temperature and turns the text
the engines return (with Whisper's timestamp tokens) back into token ids with the artifact's
tokenizer. Declared in ``capabilities``: beams up to the engines' ``max_beam``, a prompt of
what ``max_input_len`` leaves after the start sequence, no word timestamps (the engines expose
no cross-attention weights) and no no-speech probability (reported as 0.0; VAD removes silence).
"""

from __future__ import annotations

import collections
import ctypes
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from whisper_contract import ContractError, ErrorCode, ModelInfo
from whisper_contract.engine_spec import MANIFEST_NAME, EngineManifest
from whisper_server.backends.base import CHUNK_SAMPLES, Attempt, BackendBase, Capabilities, Prompt
from whisper_server.decoding import TIME_PRECISION, WhisperTokenizer

# Environment (in addition to whisper_contract.env): where tritonserver is, and its limits.
TRITONSERVER = "WHISPER_TRITONSERVER"  # default: `tritonserver` on PATH (NVIDIA's Triton image)
TRITON_BACKEND_DIR = "WHISPER_TRITON_BACKEND_DIR"  # default: tritonserver's own
TRITON_STARTUP_S = "WHISPER_TRITON_STARTUP_S"
TRITON_CHUNK_TIMEOUT_S = "WHISPER_TRITON_CHUNK_TIMEOUT_S"

MODEL = "whisper_bls"
START_SEQUENCE_TOKENS = 3  # <|startoftranscript|><|lang|><|task|>
_SPECIAL = re.compile(r"<\|([^|<>]*)\|>")
_LOG_LINES = 60


@dataclass(frozen=True)
class TritonLaunch:
    """How to start tritonserver and talk to it."""

    model_dir: Path  # the engine artifact: manifest.json, engines/, triton/
    tritonserver: str = "tritonserver"
    backend_directory: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # added to this process's environment
    startup_timeout_s: float = 900.0  # large-v3 engines take minutes to load on a cold start
    chunk_timeout_s: float = 300.0
    max_in_flight: int = 8  # chunk requests outstanding at once
    label: str = ""

    @classmethod
    def from_settings(cls, settings: object, environ: Mapping[str, str] | None = None) -> "TritonLaunch":
        e = os.environ if environ is None else environ
        return cls(
            model_dir=Path(getattr(settings, "model_dir")),
            tritonserver=e.get(TRITONSERVER, "").strip() or cls.tritonserver,
            backend_directory=e.get(TRITON_BACKEND_DIR, "").strip() or None,
            startup_timeout_s=float(e.get(TRITON_STARTUP_S, "") or cls.startup_timeout_s),
            chunk_timeout_s=float(e.get(TRITON_CHUNK_TIMEOUT_S, "") or cls.chunk_timeout_s),
            max_in_flight=int(getattr(settings, "batch_size", 0) or cls.max_in_flight),
            label=str(getattr(settings, "model_name", "") or ""),
        )


def text_prefix(language: str | None, task: str, previous_text: str | None = None) -> str:
    """The decoder prompt the BLS model tokenizes; timestamps on (no <|notimestamps|>)."""
    prefix = "<|startoftranscript|>"
    if language:
        prefix += f"<|{language}|><|{task}|>"
    if previous_text:
        prefix = f"<|startofprev|> {previous_text.strip()}" + prefix
    return prefix


def text_to_tokens(tokenizer: WhisperTokenizer, text: str) -> tuple[int, ...]:
    """``<|0.00|> Hello.<|1.50|>`` as token ids: timestamps from their times, text runs through
    the tokenizer, other special tokens (language, task) dropped."""
    tokens: list[int] = []
    pos = 0
    for match in _SPECIAL.finditer(text):
        if match.start() > pos:
            tokens += tokenizer.encode(text[pos:match.start()])
        pos = match.end()
        try:
            stamp = float(match.group(1))
        except ValueError:
            continue
        tokens.append(tokenizer.specials.timestamp_begin + round(stamp / TIME_PRECISION))
    if pos < len(text):
        tokens += tokenizer.encode(text[pos:])
    return tuple(tokens)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # The child gets SIGTERM when this process dies, so no orphan holds the GPU.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def relocate_repository(repo: Path, recorded_root: str, actual_root: Path, scratch: Path) -> Path:
    """The Triton configs name absolute engine paths; rewrite them if the artifact moved."""
    actual = str(actual_root.resolve())
    if recorded_root.rstrip("/") == actual:
        return repo
    target = scratch / "triton"
    shutil.copytree(repo, target)
    for config in target.glob("*/config.pbtxt"):
        config.write_text(config.read_text().replace(f'"{recorded_root.rstrip("/")}/', f'"{actual}/'))
    return target


def compatibility_problems(manifest: EngineManifest) -> list[str]:
    """Why these engines cannot run here (GPU architecture, TensorRT-LLM version); [] if they can.

    Engines load only on the GPU architecture and TensorRT-LLM version that built them, and a
    mismatch otherwise surfaces as an obscure deserialisation error deep in Triton's log.
    Checks that cannot run (no nvidia-smi, no tensorrt_llm package) are skipped.
    """
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    try:
        installed = version("tensorrt_llm")
    except PackageNotFoundError:
        installed = None
    if installed and installed != manifest.tensorrt_llm_version:
        problems.append(f"engines were built with TensorRT-LLM {manifest.tensorrt_llm_version}, "
                        f"this image has {installed}")
    try:
        caps = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                              check=True, capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        caps = []
    if caps and "sm" + caps[0].replace(".", "") != manifest.gpu_arch:
        problems.append(f"engines were built for {manifest.gpu_arch} ({manifest.gpu_name}), "
                        f"this GPU is sm{caps[0].replace('.', '')}")
    return problems


class TritonBackend(BackendBase):

    def __init__(self, settings: object | None = None, *, launch: TritonLaunch | None = None) -> None:
        if launch is None:
            if settings is None:
                raise TypeError("TritonBackend needs settings or a TritonLaunch")
            launch = TritonLaunch.from_settings(settings)
        self.launch = launch
        model_dir = Path(launch.model_dir)
        manifest_path = model_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path} not found: the triton backend serves an engine build artifact "
                "(python -m whisper_engines build); point the model at a finished artifact version")
        self.manifest = EngineManifest.from_json(manifest_path.read_text())
        problems = compatibility_problems(self.manifest)
        if problems:
            raise RuntimeError(f"cannot serve {model_dir}: " + "; ".join(problems)
                               + " (rebuild the engines for this endpoint: python -m whisper_engines start-build)")
        spec = self.manifest.spec
        self.tokenizer = WhisperTokenizer(model_dir / "triton" / MODEL / "1" / "tokenizer.json")
        self.capabilities = Capabilities(
            multilingual=bool(self.tokenizer.specials.languages), word_timestamps=False, max_beam=spec.max_beam,
            timestamps=True,
            # the engine's prompt holds <|startofprev|>, the context and the start sequence
            max_context_tokens=max(0, spec.max_input_len - START_SEQUENCE_TOKENS - 1))
        self.info = ModelInfo(
            model=launch.label or f"{spec.model_name}@{self.manifest.version}",
            backend="triton",
            version=f"tensorrt-llm-{self.manifest.tensorrt_llm_version}",
            device="cuda",
            compute_type=spec.dtype if spec.weight_only == "none" else f"int{spec.weight_only[-1]}_{spec.dtype}",
        )
        self._scratch = Path(tempfile.mkdtemp(prefix="whisper-triton-"))
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._slots = threading.Semaphore(max(1, launch.max_in_flight))
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            repo = relocate_repository(model_dir / "triton", self.manifest.model_root, model_dir, self._scratch)
            self._start(repo)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **launch: object) -> "TritonBackend":
        return cls(launch=TritonLaunch(model_dir=Path(model_dir), **launch))  # type: ignore[arg-type]

    # --- process ------------------------------------------------------------------------
    def _start(self, repo: Path) -> None:
        import tritonclient.grpc as grpcclient

        port = _free_port()
        cmd = [
            self.launch.tritonserver,
            f"--model-repository={repo}",
            "--grpc-address=127.0.0.1", f"--grpc-port={port}",
            "--allow-http=false", "--allow-metrics=false", "--allow-sagemaker=false",
            "--exit-on-error=true", "--disable-auto-complete-config", "--exit-timeout-secs=10",
        ]
        if self.launch.backend_directory:
            cmd.append(f"--backend-directory={self.launch.backend_directory}")
        env = {**os.environ, **self.launch.env}
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump_log, name="tritonserver-log", daemon=True).start()
        self._client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
        deadline = time.monotonic() + self.launch.startup_timeout_s
        while True:
            self._check_alive()
            try:
                if self._client.is_server_ready() and self._client.is_model_ready(MODEL):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {self.launch.startup_timeout_s:.0f} s:\n"
                                   + self.server_log())
            time.sleep(0.25)

    def _pump_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace")
            self._log.append(line)
            sys.stderr.write(line)  # the container's log stream (CloudWatch)

    def server_log(self) -> str:
        return "".join(self._log)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            # Triton's error lines start with "E<MMDD>"; the first one usually names the cause.
            errors = [line.strip() for line in self._log if re.match(r"E\d{4} ", line)]
            cause = f": {errors[0][:500]}" if errors else ""
            raise ContractError(ErrorCode.INTERNAL, f"tritonserver is not running (exit code {code}){cause}",
                                log_tail=self.server_log()[-2000:])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        self._proc = proc  # keep the exit code readable; alive() is False from here on
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- requests -----------------------------------------------------------------------
    def _submit(self, chunk: np.ndarray, prefix: str, *, beam: int, temperature: float,
                max_new_tokens: int | None = None) -> "_Pending":
        import tritonclient.grpc as grpcclient

        self._check_alive()
        wav = np.zeros((1, CHUNK_SAMPLES), dtype=np.float32)  # same shape, so Triton can batch
        n = min(len(chunk), CHUNK_SAMPLES)
        wav[0, :n] = chunk[:n]
        values = {
            "TEXT_PREFIX": np.array([[prefix.encode("utf-8")]], dtype=np.object_),
            "WAV": wav,
            "WAV_LENS": np.array([[n]], dtype=np.int32),
            "BEAM_WIDTH": np.array([[beam]], dtype=np.int32),
            "TEMPERATURE": np.array([[temperature]], dtype=np.float32),
        }
        if max_new_tokens is not None:
            values["MAX_NEW_TOKENS"] = np.array([[max_new_tokens]], dtype=np.int32)
        inputs = []
        for name, value in values.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == np.object_
                                           else {np.float32: "FP32", np.int32: "INT32"}[value.dtype.type])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("TRANSCRIPTS", "LOGPROB_SUM", "TOKEN_COUNT")]
        pending = _Pending(self._slots)
        self._slots.acquire()
        try:
            self._client.async_infer(MODEL, inputs, pending.done, outputs=outputs,
                                     client_timeout=self.launch.chunk_timeout_s)
        except BaseException:
            self._slots.release()
            raise
        return pending

    def _result(self, pending: "_Pending") -> tuple[str, float, int]:
        # The client deadline fires first; the extra time only covers a lost callback.
        if not pending.event.wait(self.launch.chunk_timeout_s + 30):
            raise ContractError(ErrorCode.TIMEOUT, "no answer from tritonserver")
        if pending.error is not None:
            message = str(pending.error)
            if "UNAVAILABLE" in message and self._proc is not None:
                # The socket closes a moment before the process is reaped: give it that moment.
                try:
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            self._check_alive()  # a dead server explains the error better than the error does
            if "Deadline" in message or "DEADLINE" in message:
                raise ContractError(ErrorCode.TIMEOUT,
                                    f"a chunk took longer than {self.launch.chunk_timeout_s:g} s to decode")
            raise ContractError(ErrorCode.INTERNAL, f"tritonserver failed a chunk: {message}")
        result = pending.result
        text = result.as_numpy("TRANSCRIPTS").reshape(-1)[0]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        return text, float(result.as_numpy("LOGPROB_SUM").reshape(-1)[0]), int(result.as_numpy("TOKEN_COUNT").reshape(-1)[0])

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        text, logprob, _ = self._result(self._submit(audio[:CHUNK_SAMPLES], text_prefix(None, "transcribe"),
                                                     beam=1, temperature=0.0, max_new_tokens=1))
        match = _SPECIAL.fullmatch(text.strip())
        if match is None:
            raise ContractError(ErrorCode.INTERNAL, f"language detection returned {text!r}, not a language token")
        return match.group(1), float(math.exp(logprob))

    def healthy(self) -> bool:
        return self.alive()

    def encode(self, chunks: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        return chunks  # the engines encode each request themselves

    def decode(self, encoded: Sequence[np.ndarray], rows: Sequence[int], prompt: Prompt, temperature: float,
               beam_size: int) -> list[Attempt]:
        prefix = text_prefix(prompt.language if self.multilingual else None, prompt.task, prompt.context or None)
        # all rows in flight together, so Triton batches them
        pending = [self._submit(encoded[row], prefix, beam=beam_size, temperature=temperature) for row in rows]
        out = []
        for handle in pending:
            text, logprob_sum, count = self._result(handle)
            out.append(Attempt(text_to_tokens(self.tokenizer, text), logprob_sum, 0.0, length=count))
        return out

    def align(self, encoded: Sequence[np.ndarray], rows: Sequence[int], sot_sequence: Sequence[int],
              tokens: Sequence[Sequence[int]], durations: Sequence[float]) -> list:
        raise NotImplementedError("TensorRT-LLM engines expose no cross-attention (capabilities.word_timestamps)")


class _Pending:
    """One request in flight: the gRPC callback fills it and frees a slot."""

    def __init__(self, slots: threading.Semaphore) -> None:
        self.event = threading.Event()
        self.result = None
        self.error: Exception | None = None
        self._slots = slots

    def done(self, result: object, error: Exception | None) -> None:
        self.result, self.error = result, error
        self._slots.release()
        self.event.set()
