"""The one folder -> import-name mapping, read from pyproject.toml, and artifact staging.

``[tool.setuptools] packages`` / ``package-dir`` is the single declaration: the editable install
uses it, and every build step that assembles code for somewhere else (the engine build's
buildspec, ``make package-dlc``, the Lambda assets, the artifact tests) stages packages
through this module instead of naming folders itself. ``[tool.whisper.artifacts]`` says which
top-level packages each artifact ships. Standard library only: the buildspec runs it before
anything is installed::

    python3 -m whisper_build.layout stage engine-build /tmp/pkgs --link
    python3 -m whisper_build.layout folder whisper_server
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

REPO = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


@dataclass(frozen=True)
class Layout:
    root: Path
    folders: Mapping[str, Path]  # top-level import name -> its folder
    artifacts: Mapping[str, tuple[str, ...]]  # artifact -> top-level import names it ships

    def folder(self, name: str) -> Path:
        try:
            return self.folders[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a package of pyproject.toml (known: {', '.join(self.folders)})") from None

    def packages(self, artifact: str) -> tuple[str, ...]:
        try:
            return self.artifacts[artifact]
        except KeyError:
            raise KeyError(f"no artifact {artifact!r} in [tool.whisper.artifacts] "
                           f"(known: {', '.join(self.artifacts)})") from None

    def stage(self, artifact: str, dest: Path, *, link: bool = False) -> list[Path]:
        """Put each package of ``artifact`` into ``dest/<import name>``: a copy, or with ``link``
        a symlink (the engine build keeps repository paths, e.g. for the shipped clips)."""
        dest.mkdir(parents=True, exist_ok=True)
        staged = []
        for name in self.packages(artifact):
            target = dest / name
            if link:
                if target.is_symlink():
                    target.unlink()
                target.symlink_to(self.folder(name), target_is_directory=True)
            else:
                shutil.copytree(self.folder(name), target, ignore=_SKIP)
            staged.append(target)
        return staged


def load(root: Path = REPO) -> Layout:
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    folders = {name: root / mapped.get(name, name) for name in setuptools["packages"] if "." not in name}
    artifacts = {k: tuple(v) for k, v in config["tool"]["whisper"]["artifacts"].items()}
    for artifact, names in artifacts.items():
        unknown = [n for n in names if n not in folders]
        if unknown:
            raise ValueError(f"artifact {artifact!r} ships {unknown}, which are not packages of pyproject.toml")
    return Layout(root, MappingProxyType(folders), MappingProxyType(artifacts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m whisper_build.layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="stage an artifact's packages under DEST by import name")
    stage.add_argument("artifact")
    stage.add_argument("dest", type=Path)
    stage.add_argument("--link", action="store_true", help="symlink instead of copying")
    folder = sub.add_parser("folder", help="print the folder of an import name")
    folder.add_argument("name")
    args = parser.parse_args(argv)
    layout = load()
    if args.command == "stage":
        for path in layout.stage(args.artifact, args.dest, link=args.link):
            print(path)
    else:
        print(layout.folder(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
