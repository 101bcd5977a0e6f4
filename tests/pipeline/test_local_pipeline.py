"""The runner: wiring, clean shutdown (also when a child fails), and the demo on the plumbing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import whisper_local.pipeline as pipeline_module
from whisper_cli import demo
from whisper_local.pipeline import LocalPipeline, LocalState, PipelineConfig

FAKE = str(Path(__file__).with_name("fake_container.py"))


def config(tmp_path: Path, cmd: list[str]) -> PipelineConfig:
    return PipelineConfig(container_cmd=cmd, log_dir=tmp_path / "logs", state_path=tmp_path / "state.json",
                          startup_timeout_s=30)


@pytest.fixture
def children(monkeypatch):
    started = []
    real = pipeline_module._Child

    def spy(*args, **kwargs):
        child = real(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(pipeline_module, "_Child", spy)
    return started


def test_a_container_that_dies_at_start_stops_everything(tmp_path, children):
    cfg = config(tmp_path, [sys.executable, "-c", "import sys; print('model missing'); sys.exit(3)"])
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="exited with 3") as err:
        with LocalPipeline(cfg):
            pass
    assert "model missing" in str(err.value)  # the child's log tail is in the message
    assert len(children) == 2 and all(c.proc.poll() is not None for c in children)
    assert dict(os.environ) == before
    assert not cfg.state_path.exists()
    with pytest.raises(RuntimeError, match="no local pipeline is running"):
        LocalState.read(cfg.state_path)  # what `whisper-sm --env local` says now


def test_demo_on_the_fake_container_leaves_one_set_per_input_and_stops(tmp_path, children, monkeypatch):
    cfg = config(tmp_path, [sys.executable, FAKE, "--port", "{port}"])
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / "stale.json").write_text("{}")  # from an earlier run: must not survive

    assert demo.run(None, out, cfg, timeout_s=60) == 0

    clips = sorted(p.name for p in demo.SHIPPED.iterdir() if demo.is_audio_key(p.name))
    expected = sorted([f"{c}.{fmt}" for c in clips for fmt in ("json", "srt", "txt", "vtt")]
                      + [f"{demo.BROKEN_NAME}.error.json"])
    assert sorted(p.name for p in out.iterdir()) == expected
    assert json.loads((out / f"{demo.BROKEN_NAME}.error.json").read_text())["error"]["code"] == "corrupt_audio"
    assert all(c.proc.poll() is not None for c in children)
    assert not cfg.state_path.exists()


def test_demo_on_a_users_folder_with_awkward_names(tmp_path, children):
    audio = tmp_path / "mine"
    (audio / "sub dir").mkdir(parents=True)
    flac = next(p for p in demo.SHIPPED.iterdir() if p.suffix == ".flac").read_bytes()
    (audio / "sub dir" / "naïve 日本 +1 (take 2).FLAC").write_bytes(flac)
    (audio / "empty.mp3").write_bytes(b"")
    (audio / ".DS_Store").write_bytes(b"\0")
    (audio / "notes.txt").write_text("not audio")
    out = tmp_path / "out"

    assert demo.run(audio, out, config(tmp_path, [sys.executable, FAKE, "--port", "{port}"]), timeout_s=60) == 0

    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["empty.mp3.error.json"] + [f"sub dir/naïve 日本 +1 (take 2).FLAC.{f}" for f in ("json", "srt", "txt", "vtt")]
    assert json.loads((out / "empty.mp3.error.json").read_text())["error"]["code"] == "empty_input"
    transcript = json.loads((out / "sub dir/naïve 日本 +1 (take 2).FLAC.json").read_text())
    assert transcript["source"]["key"] == "sub dir/naïve 日本 +1 (take 2).FLAC"


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_pipeline_runs_the_bundled_model_it_is_asked_for(name: str) -> None:
    from whisper_contract import env
    from whisper_server.bundled import bundled_model_dir

    container_env = LocalPipeline(PipelineConfig(bundled_model=name))._container_env()
    assert container_env[env.MODEL_DIR] == str(bundled_model_dir(name))
    assert container_env[env.MODEL_NAME] == name
