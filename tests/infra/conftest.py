"""One synthesized app per environment, shared by every test in this folder.

The apps are built exactly as ``app.py`` builds them (cdk.json context, cdk-nag on), so a
nag finding without an acknowledgement fails every test here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import assertions

from stacks.application import WhisperStacks, build_stacks
from stacks.config import EnvConfig, load_env_config
from stacks.image import REPO_ROOT

CDK_JSON = REPO_ROOT / "cdk.json"


def cdk_context() -> dict[str, Any]:
    return json.loads(CDK_JSON.read_text())["context"]


@dataclass
class Synth:
    cfg: EnvConfig
    app: cdk.App
    stacks: WhisperStacks
    assembly: cdk.cx_api.CloudAssembly
    outdir: Path

    def template(self, stack: cdk.Stack) -> assertions.Template:
        return assertions.Template.from_json(self.template_json(stack))

    def template_json(self, stack: cdk.Stack) -> dict[str, Any]:
        return json.loads((self.outdir / stack.template_file).read_text())

    def asset_manifest(self, stack: cdk.Stack) -> dict[str, Any]:
        name = stack.template_file.replace(".template.json", ".assets.json")
        return json.loads((self.outdir / name).read_text())


def synth_env(name: str, outdir: Path, context: dict[str, Any] | None = None,
              *, account: str | None = None, region: str | None = None) -> Synth:
    ctx = context or cdk_context()
    app = cdk.App(outdir=str(outdir), context={**ctx, "env": name}, builtin_cloud_formation_validation=False)
    cfg = load_env_config(ctx, name, account=account, region=region)
    stacks = build_stacks(app, cfg)
    assembly = app.synth()
    return Synth(cfg, app, stacks, assembly, outdir)


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth_env("dev", tmp_path_factory.mktemp("cdk-dev"))


@pytest.fixture(scope="session")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth_env("prod", tmp_path_factory.mktemp("cdk-prod"))


@pytest.fixture(params=["dev", "prod"], scope="session")
def any_env(request: pytest.FixtureRequest) -> Synth:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def synth_variant(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Synthesize a variant of an environment: ``synth_variant("dev", {"packaging": "dlc"}, region=...)``."""

    def make(env: str, changes: dict[str, Any], *, region: str | None = None,
             account: str | None = "111111111111") -> Synth:
        ctx = cdk_context()
        envs = dict(ctx["environments"])
        envs[env] = {**envs[env], **changes}
        envs[env] = {k: v for k, v in envs[env].items() if v is not None}
        return synth_env(env, tmp_path_factory.mktemp(f"cdk-{env}-variant"),
                         {**ctx, "environments": envs}, account=account if region else None, region=region)

    return make
