"""Build ``model.tar.gz`` for the stock SageMaker PyTorch inference container.

Layout (SageMaker unpacks it into /opt/ml/model)::

    config.json model.bin tokenizer.json ...   the CTranslate2 Whisper model
    code/inference.py                           SAGEMAKER_PROGRAM (re-exports whisper_server.dlc)
    code/requirements.txt                       --no-index --find-links wheels: nothing downloads
    code/wheels/*.whl                           with --download-wheels (for the DLC's Python)
    code/whisper_server/ code/whisper_contract/ the same source as the BYOC image

    python -m whisper_build.package_dlc --model tiny.en --out build/dlc/model.tar.gz

The packages under code/ are the ``dlc`` artifact of pyproject.toml, staged by
whisper_build.layout; the inference server's files are found the same way.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from whisper_build import layout
from whisper_server.bundled import BUNDLED, bundled_model_dir

LAYOUT = layout.load()
CONTAINER_DIR = LAYOUT.folder("whisper_server").parent
INFERENCE_PY = CONTAINER_DIR / "dlc" / "inference.py"
RUNTIME_REQUIREMENTS = CONTAINER_DIR / "requirements.txt"
# The DLC brings its own numpy (and torch); the HTTP server is not used there.
NOT_FOR_DLC = ("numpy", "starlette", "uvicorn")
MODEL_FILES = ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
               "preprocessor_config.json")
# manylinux tags the DLC (Ubuntu 22.04, glibc 2.35, x86_64) accepts.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")


def dlc_requirements() -> list[str]:
    pins = []
    for line in RUNTIME_REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.lower().startswith(NOT_FOR_DLC):
            pins.append(line)
    return pins


def build(model_dir: Path, out: Path, *, download_wheels: bool = False, python_version: str = "3.12",
          compresslevel: int = 6) -> Path:
    missing = [f for f in ("config.json", "model.bin", "tokenizer.json") if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a CTranslate2 Whisper model: missing {missing}")
    with tempfile.TemporaryDirectory(prefix="dlc-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        shutil.copy2(INFERENCE_PY, code / "inference.py")
        LAYOUT.stage("dlc", code)
        pins = dlc_requirements()
        (code / "requirements.txt").write_text(
            "# Installed by the inference toolkit at start-up, from the bundled wheels only.\n"
            "--no-index\n--find-links wheels\n" + "\n".join(pins) + "\n")
        if download_wheels:
            (code / "wheels").mkdir()
            platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                            "--python-version", python_version, "--implementation", "cp", *platforms,
                            "--dest", str(code / "wheels"), *pins], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz", compresslevel=compresslevel) as tar:
            for name in MODEL_FILES:
                if (model_dir / name).is_file():
                    tar.add(model_dir / name, arcname=name)
            tar.add(code, arcname="code")
        partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whisper_build.package_dlc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en", help=f"bundled model ({', '.join(BUNDLED)}) or a model folder")
    parser.add_argument("--out", type=Path, default=Path("build/dlc/model.tar.gz"))
    parser.add_argument("--download-wheels", action="store_true",
                        help="bundle wheels for the DLC's Python (needs PyPI); without it the tarball is for local tests")
    parser.add_argument("--python-version", default="3.12", help="the DLC's Python (PyTorch 2.6 DLC: 3.12)")
    parser.add_argument("--compresslevel", type=int, default=6)
    args = parser.parse_args(argv)
    model_dir = bundled_model_dir(args.model) if args.model in BUNDLED else Path(args.model)
    out = build(model_dir, args.out, download_wheels=args.download_wheels, python_version=args.python_version,
                compresslevel=args.compresslevel)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if not args.download_wheels:
        print("note: no wheels bundled (--download-wheels / WHEELS=1): the endpoint could not install its "
              "requirements offline; fine for local tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
