"""Lambda code assets: the handler module plus copies of the packages it declares, staged at synth.

No Docker bundling: the handlers import only the standard library, boto3 (in the Lambda
runtime), ``whisper_lambdas.common`` (the code both Lambdas share) and ``whisper_contract``
(standard library only), so a plain directory is the whole package:

    handler.py                    lambda/<name>/handler.py (Lambda's handler: handler.handler)
    whisper_lambdas/__init__.py   lambda/__init__.py
    whisper_lambdas/common/       lambda/common/*.py
    whisper_contract/             whisper_contract/*.py, *.json (prices.json: package data)

Each synth stages into its own fresh directory under ``build/lambda/`` (removed when the
process exits), so a stale copy can never be deployed, two synths never race on one folder,
and the asset hash depends only on the sources (CDK copies the folder into cdk.out).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACT_DIR = REPO_ROOT / "whisper_contract"
LAMBDA_SRC = REPO_ROOT / "lambda"
STAGING_ROOT = REPO_ROOT / "build" / "lambda"
HANDLER_MODULE = "handler.py"
# Module and package-data files a package folder contributes (whisper_contract/prices.json).
PACKAGE_FILES = ("*.py", "*.json")
# Import name -> source folder of every package an asset carries besides its handler; the
# import names are those of pyproject's package-dir mapping.
ASSET_PACKAGES: dict[str, Path] = {
    "whisper_contract": CONTRACT_DIR,
    "whisper_lambdas": LAMBDA_SRC,  # only its __init__.py: the handlers are top-level modules
    "whisper_lambdas.common": LAMBDA_SRC / "common",
}


def handler_source(name: str) -> Path:
    return LAMBDA_SRC / name / HANDLER_MODULE


def stage_lambda_asset(name: str, staging_root: Path = STAGING_ROOT) -> Path:
    """Copy ``lambda/<name>/handler.py`` and the ``PACKAGE_FILES`` of each of ``ASSET_PACKAGES``
    (not their sub-folders) into a fresh directory.

    Copies only what exists: a missing handler is reported by the caller (a synth warning),
    never papered over with a placeholder.
    """
    staging_root.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging_root))
    atexit.register(shutil.rmtree, parent, True)
    out = parent / name
    out.mkdir()
    src = handler_source(name)
    if src.is_file():
        shutil.copyfile(src, out / HANDLER_MODULE)
    for import_name, folder in ASSET_PACKAGES.items():
        target = out.joinpath(*import_name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for pattern in PACKAGE_FILES:
            for module in sorted(folder.glob(pattern)):
                shutil.copyfile(module, target / module.name)
    return out
