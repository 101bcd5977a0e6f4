"""Lambda code assets: the handler module plus a copy of ``whisper_contract``, staged at synth.

No Docker bundling: the handlers import only the standard library, boto3 (in the Lambda
runtime) and ``whisper_contract`` (standard library only), so a plain directory is the whole
package. Each synth stages into its own fresh directory under ``build/lambda/`` (removed when
the process exits), so a stale copy can never be deployed, two synths never race on one
folder, and the asset hash depends only on the sources (CDK copies the folder into cdk.out).
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


def handler_source(name: str) -> Path:
    return LAMBDA_SRC / name / HANDLER_MODULE


def stage_lambda_asset(name: str, staging_root: Path = STAGING_ROOT) -> Path:
    """Copy ``lambda/<name>/handler.py`` and ``whisper_contract/*.py`` into a fresh directory.

    Copies only what exists: a missing handler is reported by the caller (a synth warning),
    never papered over with a placeholder.
    """
    staging_root.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging_root))
    atexit.register(shutil.rmtree, parent, True)
    out = parent / name
    (out / "whisper_contract").mkdir(parents=True)
    src = handler_source(name)
    if src.is_file():
        shutil.copyfile(src, out / HANDLER_MODULE)
    for module in sorted(CONTRACT_DIR.glob("*.py")):
        shutil.copyfile(module, out / "whisper_contract" / module.name)
    return out
