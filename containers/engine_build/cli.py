"""``python -m whisper_engines``: build engines (in CodeBuild), or start that build from a laptop.

    python -m whisper_engines build [--dry-run]      # reads ENGINE_* settings from the environment
    python -m whisper_engines start-build --env dev  # finds the CodeBuild project, starts it
    python -m whisper_engines verify ARTIFACT_DIR    # re-check a downloaded artifact on a GPU box
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from whisper_contract.engine_spec import EngineBuildSpec

STACK_NAME = "Whisper-{env}-EngineBuild"  # stacks/application.py: f"{APP_NAME}-{env}-EngineBuild"
PROJECT_OUTPUT = "EngineBuildProjectName"
REVISION_ENV = "ENGINE_GIT_REVISION"
VERSION_ENV = "ENGINE_VERSION"
_CONVERT_SCRIPT = ("examples/models/core/whisper/convert_checkpoint.py",  # TensorRT-LLM >= 0.18
                   "examples/whisper/convert_checkpoint.py")  # older releases


def find_convert_script(trtllm_root: Path) -> Path:
    for rel in _CONVERT_SCRIPT:
        if (trtllm_root / rel).is_file():
            return trtllm_root / rel
    raise FileNotFoundError(f"no whisper convert_checkpoint.py under {trtllm_root} (looked at {', '.join(_CONVERT_SCRIPT)})")


def git_revision(cwd: Path | None = None) -> str:
    """HEAD of the checkout, with ``-dirty`` when it has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, check=True, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def _build(args: argparse.Namespace) -> int:
    from whisper_engines.build import BuildContext, default_version, plan, run_build
    from whisper_engines.commands import BuildPaths, Tools

    spec = EngineBuildSpec.from_env(os.environ)
    revision = os.environ.get(REVISION_ENV) or os.environ.get("CODEBUILD_RESOLVED_SOURCE_VERSION") or "unknown"
    convert = (str(find_convert_script(Path(args.trtllm_root))) if not args.dry_run
               else str(Path(args.trtllm_root) / _CONVERT_SCRIPT[0]))
    ctx = BuildContext(spec=spec, paths=BuildPaths(Path(args.work_dir)),
                       tools=Tools(python=sys.executable, convert_script=convert),
                       version=os.environ.get(VERSION_ENV) or default_version(revision), git_revision=revision)
    if args.dry_run:
        print(f"# artifact: s3://{spec.model_bucket}/{spec.artifact_prefix.strip('/')}/{ctx.version}/")
        for cmd in plan(ctx):
            print(shlex.join(cmd))
        return 0

    import boto3

    from whisper_engines.verify import verify_artifact

    run_build(ctx, s3=boto3.client("s3"), verify=lambda artifact: verify_artifact(
        artifact, tritonserver=args.tritonserver, startup_timeout_s=1800))
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Re-check a downloaded artifact: checksums, then (unless --checksums-only) a transcription."""
    import json

    from whisper_contract.engine_spec import MANIFEST_NAME, EngineManifest
    from whisper_engines.storage import verify_checksums

    artifact = Path(args.artifact)
    manifest = EngineManifest.from_json((artifact / MANIFEST_NAME).read_text())
    problems = verify_checksums(artifact, manifest)
    if problems:
        print("checksums: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"checksums: ok ({len(manifest.checksums)} files, version {manifest.version}, "
          f"built on {manifest.gpu_name} {manifest.gpu_arch} with TensorRT-LLM {manifest.tensorrt_llm_version})")
    if args.checksums_only:
        return 0
    from whisper_engines.verify import verify_artifact

    result = verify_artifact(artifact, tritonserver=args.tritonserver)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


def find_project(cloudformation: Any, env: str) -> str:
    stack = STACK_NAME.format(env=env)
    try:
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except cloudformation.exceptions.ClientError as exc:
        raise SystemExit(f"stack {stack} not found ({exc}); deploy it with engine_build set in cdk.json "
                         f"(make deploy ENV={env})") from None
    for output in stacks[0].get("Outputs", []):
        if output["OutputKey"] == PROJECT_OUTPUT:
            return str(output["OutputValue"])
    raise SystemExit(f"stack {stack} has no {PROJECT_OUTPUT} output")


def start_build(codebuild: Any, cloudformation: Any, env: str, *, revision: str, version: str | None = None,
                wait: bool = False, poll_s: float = 30.0, out: Any = sys.stdout) -> dict[str, Any]:
    project = find_project(cloudformation, env)
    overrides = [{"name": REVISION_ENV, "value": revision, "type": "PLAINTEXT"}]
    if version:
        overrides.append({"name": VERSION_ENV, "value": version, "type": "PLAINTEXT"})
    build = codebuild.start_build(projectName=project, environmentVariablesOverride=overrides)["build"]
    print(f"started {build['id']} on project {project} (revision {revision})", file=out)
    while wait and build.get("buildStatus", "IN_PROGRESS") == "IN_PROGRESS":
        time.sleep(poll_s)
        build = codebuild.batch_get_builds(ids=[build["id"]])["builds"][0]
        print(f"  {build.get('currentPhase', '?')} {build.get('buildStatus')}", file=out)
    return build


def _start_build(args: argparse.Namespace) -> int:
    import boto3

    session = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    build = start_build(session.client("codebuild"), session.client("cloudformation"), args.env,
                        revision=git_revision(), version=args.version, wait=args.wait)
    return 0 if build.get("buildStatus") in ("SUCCEEDED", "IN_PROGRESS", None) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whisper_engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run the engine build (CodeBuild runs this; ENGINE_* env settings)")
    b.add_argument("--work-dir", default="/tmp/engine-build")
    b.add_argument("--trtllm-root", default="/opt/tensorrt_llm", help="a TensorRT-LLM checkout (examples/)")
    b.add_argument("--tritonserver", default="tritonserver", help="for the verification run")
    b.add_argument("--dry-run", action="store_true", help="print the compile commands and stop")
    b.set_defaults(func=_build)
    v = sub.add_parser("verify", help="check a downloaded artifact (checksums, then a transcription on this GPU)")
    v.add_argument("artifact", help="folder holding manifest.json, engines/ and triton/")
    v.add_argument("--tritonserver", default="tritonserver")
    v.add_argument("--checksums-only", action="store_true")
    v.set_defaults(func=_verify)
    s = sub.add_parser("start-build", help="start the environment's CodeBuild engine build")
    s.add_argument("--env", required=True)
    s.add_argument("--region", default=None)
    s.add_argument("--version", default=None, help="artifact version (default: UTC time + git revision)")
    s.add_argument("--wait", action="store_true", help="poll until the build finishes")
    s.set_defaults(func=_start_build)
    args = parser.parse_args(argv)
    return int(args.func(args))
