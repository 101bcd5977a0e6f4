"""whisper-sm's pure parts: local names for output keys, and which package may import which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from whisper_cli.core import NAME_MAX, UnsafeKey, local_path


@pytest.mark.parametrize("key", ["a.mp3.json", "sub dir/naïve 日本 +1 (take 2).FLAC.srt", "x/y/z.wav.error.json"])
def test_keys_that_fit_keep_their_own_path(tmp_path: Path, key: str) -> None:
    assert local_path(tmp_path, key) == tmp_path.joinpath(*key.split("/"))


def test_long_names_are_cut_deterministically_keep_their_suffix_and_stay_distinct(tmp_path: Path) -> None:
    stem = "日本語" * 30 + "a" * 80  # 350 bytes of UTF-8, some of it cut mid-character
    keys = [f"talks/{stem}{tail}" for tail in (".flac.json", ".flac.srt", ".flac.error.json", "2.flac.json")]
    paths = [local_path(tmp_path, k) for k in keys]

    assert [local_path(tmp_path, k) for k in keys] == paths  # deterministic
    assert len(set(paths)) == len(keys)  # distinct
    for key, path in zip(keys, paths):
        assert path.parent == tmp_path / "talks"
        assert len(path.name.encode()) <= NAME_MAX
        assert path.name.startswith("日本語")
        assert path.name.endswith(".error.json" if key.endswith(".error.json") else key[key.rindex("."):])
    path = paths[0]
    path.parent.mkdir()
    path.write_text("ok")  # the file system takes it
    assert path.read_text() == "ok"


def test_a_long_folder_name_keeps_its_files_together(tmp_path: Path) -> None:
    folder = "f" * 300
    a, b = local_path(tmp_path, f"{folder}/a.mp3.json"), local_path(tmp_path, f"{folder}/b.mp3.json")
    assert a.parent == b.parent and len(a.parent.name) <= NAME_MAX
    assert (a.name, b.name) == ("a.mp3.json", "b.mp3.json")


@pytest.mark.parametrize("key", ["../escape.json", "a/../../b.json", "/etc/passwd.json", "a//b.json", "./a.json",
                                 "a/..", "nul\0.json"])
def test_keys_that_could_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafeKey, match="refusing to write"):
        local_path(tmp_path, key)


def test_the_local_pipeline_does_not_import_the_cli() -> None:
    """One direction only: whisper_cli (the CLI and the demo) drives whisper_local."""
    code = (
        "import pkgutil, importlib, sys, whisper_local\n"
        "for m in pkgutil.iter_modules(whisper_local.__path__): importlib.import_module('whisper_local.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'whisper_cli'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
