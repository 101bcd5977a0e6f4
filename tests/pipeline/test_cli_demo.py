"""The demo (whisper_cli.demo) on the plumbing: names the local file system cannot take,
and the default demo's clips against its default model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from whisper_cli import demo
from whisper_cli.core import NAME_MAX
from whisper_local.pipeline import PipelineConfig

FAKE = str(Path(__file__).with_name("fake_container.py"))


def test_a_251_byte_file_name_gets_its_transcript_under_a_cut_name(tmp_path):
    audio = tmp_path / "mine"
    audio.mkdir()
    flac = next(p for p in demo.SHIPPED.iterdir() if p.suffix == ".flac").read_bytes()
    long_name = "l" * 246 + ".flac"  # 251 bytes: fine as an S3 key, one byte too long once ".json" is added
    (audio / long_name).write_bytes(flac)
    (audio / "short.flac").write_bytes(flac)
    out = tmp_path / "out"
    cfg = PipelineConfig(container_cmd=[sys.executable, FAKE, "--port", "{port}"], log_dir=tmp_path / "logs",
                         state_path=tmp_path / "state.json", startup_timeout_s=30)

    assert demo.run(audio, out, cfg, timeout_s=60) == 0

    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("short")] == [f"short.flac.{f}" for f in ("json", "srt", "txt", "vtt")]
    cut = [n for n in names if n.startswith("lll")]
    assert sorted(n.rsplit(".", 1)[1] for n in cut) == ["json", "srt", "txt", "vtt"]
    assert all(len(n.encode()) <= NAME_MAX for n in cut)
    [transcript] = [out / n for n in cut if n.endswith(".json")]
    assert json.loads(transcript.read_text())["source"]["key"] == long_name


def test_the_default_demo_model_handles_every_language_it_ships(tmp_path):
    """`make demo` with no arguments must show right output for every clip it uploads: an
    English-only model turns the ja/zh clips into English nonsense."""
    import ctranslate2

    from whisper_contract.options import LANGUAGES
    from whisper_eval.clips import load_clips
    from whisper_server.bundled import bundled_model_dir

    model = ctranslate2.models.Whisper(str(bundled_model_dir(demo.DEFAULT_MODEL)), device="cpu", compute_type="int8")
    supported = LANGUAGES if model.is_multilingual else {"en"}
    languages = {c.name: c.language for c in load_clips()}
    pairs, _ = demo.demo_inputs(None, tmp_path)
    shipped = {languages[path.name] for path, _ in pairs if path.name in languages}
    assert shipped and shipped <= supported, (demo.DEFAULT_MODEL, shipped - supported)
