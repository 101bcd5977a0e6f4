"""The DLC packaging: `make package-dlc` builds model.tar.gz; its handler functions, run the
way the stock PyTorch container runs them (code/ on the path, no web framework), transcribe
real audio with the same code as the BYOC server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AUDIO = REPO / "tests" / "data" / "audio"

HANDLER_RUN = textwrap.dedent('''
    import json, sys
    sys.modules["uvicorn"] = None  # the DLC has no web server: importing one must not be needed
    sys.modules["starlette"] = None
    import inference, whisper_server

    class Props:  # the toolkit's request context, as far as input_fn reads it
        def __init__(self, attrs): self.attrs = attrs
        def get_request_properties(self): return {"X-Amzn-SageMaker-Custom-Attributes": self.attrs}

    class Context:
        def __init__(self, attrs): self.request_processor = [Props(attrs)]

    model_dir, audio, bad = sys.argv[1:4]
    out = {"server_file": whisper_server.__file__}
    model = inference.model_fn(model_dir)
    data = inference.input_fn(open(audio, "rb").read(), "audio/flac", Context("word_timestamps=true"))
    prediction = inference.predict_fn(data, model)
    out["json"], out["json_type"] = inference.output_fn(prediction, "application/json")
    out["vtt"], out["vtt_type"] = inference.output_fn(prediction, "text/vtt")
    for name, body, attrs in (("not_audio", open(bad, "rb").read(), ""), ("empty", b"", ""),
                              ("bad_option", b"x", "language=xx")):
        try:
            inference.predict_fn(inference.input_fn(body, "audio/flac", Context(attrs)), model)
            out[name] = "no error"
        except Exception as exc:
            out[name] = getattr(exc, "code", None) and exc.code.value
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory, dlc_tarball: Path) -> Path:
    tarball = dlc_tarball  # `make package-dlc`, once per session (tests/conftest.py)
    target = tmp_path_factory.mktemp("opt-ml-model")
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    return target


def test_tarball_layout(unpacked):
    assert {p.name for p in unpacked.iterdir()} >= {"config.json", "model.bin", "tokenizer.json", "code"}
    code = unpacked / "code"
    assert (code / "inference.py").is_file()
    assert (code / "whisper_server" / "pipeline.py").is_file()
    assert (code / "whisper_server" / "backends" / "faster_whisper_backend.py").is_file()
    assert (code / "whisper_contract" / "result.py").is_file()
    assert not list(code.rglob("__pycache__"))
    reqs = (code / "requirements.txt").read_text().splitlines()
    assert "--no-index" in reqs and "--find-links wheels" in reqs
    pins = [r for r in reqs if "==" in r]
    runtime = (REPO / "containers" / "whisper" / "requirements.txt").read_text()
    assert pins and all(p in runtime for p in pins)  # the same pins as the image
    assert not any(p.startswith(("starlette", "uvicorn")) for p in pins)


def test_handler_functions_on_real_audio(unpacked, tmp_path):
    script = tmp_path / "run_handler.py"
    script.write_text(HANDLER_RUN)
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio at all\n" * 20)
    env = {**os.environ, "PYTHONPATH": str(unpacked / "code"), "WHISPER_DEVICE": "cpu", "WHISPER_CPU_THREADS": "2"}
    env.pop("WHISPER_MODEL_DIR", None)
    proc = subprocess.run([sys.executable, str(script), str(unpacked), str(AUDIO / "en_ljspeech_LJ001-0001.flac"),
                           str(bad)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["server_file"].startswith(str(unpacked / "code"))  # the tarball's copy, not the repo's
    doc = json.loads(out["json"])
    assert out["json_type"].startswith("application/json")
    assert doc["text"].lower().startswith("printing, in the only sense")
    assert doc["segments"][0]["words"]  # custom attributes reached the options
    assert out["vtt_type"].startswith("text/vtt") and out["vtt"].startswith("WEBVTT")
    assert (out["not_audio"], out["empty"], out["bad_option"]) == ("not_audio", "empty_input", "bad_option")
