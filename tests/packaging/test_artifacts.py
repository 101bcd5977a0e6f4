"""Each artifact, built the way it ships, imports exactly what it declares (pyproject.toml's
[tool.whisper.artifacts], folders from its package-dir) and nothing from a part it must not see:
the container never imports the CDK, the Lambdas never import the container, the contract
imports nothing of ours (nor anything outside the standard library).

Two checks per artifact: every import statement in its files, lazy ones included (static), and
a real import of every module in a subprocess that sees only the artifact's folder plus the
venv's third-party packages, with a blocker for forbidden top-level names (dynamic).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from whisper_build import layout
from whisper_constructs.lambda_asset import stage_lambda_asset
from whisper_engines import SOURCE_PATHS

LAYOUT = layout.load()
REPO = LAYOUT.root
OURS = frozenset(LAYOUT.folders) | {"app", "handler", "inference"}
CDK = frozenset({"aws_cdk", "constructs", "cdk_nag", "cdk_ecr_deployment", "jsii"})
CONTAINER_MUST_NOT = CDK | {"moto", "whisper_lambdas", "whisper_constructs", "stacks", "whisper_cli", "whisper_local"}
# The Lambda Python runtime includes the AWS SDK (boto3) and its dependencies, nothing else
# (https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html): handlers may name boto3 and
# botocore; the rest may only be imported by those.
LAMBDA_RUNTIME = frozenset({"boto3", "botocore"})
LAMBDA_RUNTIME_DEPS = LAMBDA_RUNTIME | {"s3transfer", "jmespath", "dateutil", "urllib3", "six"}
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu", "Dockerfile.triton")


@dataclass(frozen=True)
class Rule:
    forbid: frozenset[str] = frozenset()  # besides our packages the artifact does not ship
    only_third_party: frozenset[str] | None = None  # None: any installed third-party package
    runtime: frozenset[str] = frozenset()  # what only_third_party may import in turn


RULES = {
    "image": Rule(forbid=CONTAINER_MUST_NOT),
    "dlc": Rule(forbid=CONTAINER_MUST_NOT),
    "engine-build": Rule(forbid=CONTAINER_MUST_NOT),
    "lambda": Rule(forbid=CDK | {"whisper_server"}, only_third_party=LAMBDA_RUNTIME, runtime=LAMBDA_RUNTIME_DEPS),
    "contract": Rule(only_third_party=frozenset()),
}

# Runs in `python -I -B` (no bytecode written into the artifact): drops the editable install's finders and repo paths, puts the artifact
# first, blocks forbidden names, imports every module and reports what failed and from where.
PROBE = r'''
import importlib, importlib.abc, json, pkgutil, sys
root, repo, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
# The repository's folders go; the venv's site-packages stay, also when the venv lives inside it.
sys.path[:] = [root] + [p for p in sys.path if p and (not p.startswith(repo) or p.startswith(sys.prefix))]
sys.path_importer_cache.clear()
shipped = set(spec["shipped"])
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in shipped or top in sys.stdlib_module_names:
            return None
        only = spec["only_third_party"]
        if top in spec["forbidden"] or (only is not None and top not in only):
            raise ImportError(f"FORBIDDEN {top} (imported as {name})")
        return None
sys.meta_path.insert(0, Blocker())
failed, missing = {}, {}
for mod in spec["modules"]:
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if "FORBIDDEN" in str(exc) or exc.name is None or exc.name.partition(".")[0] in spec["ours"]:
            failed[mod] = repr(exc)
        else:  # third-party the artifact's runtime provides, absent from this venv
            missing[mod] = exc.name
    except Exception as exc:
        failed[mod] = repr(exc)
outside = sorted(n for n, m in list(sys.modules.items()) if n.partition(".")[0] in spec["ours"]
                 and not (getattr(m, "__file__", None) or root).startswith(root))
print(json.dumps({"failed": failed, "missing": missing, "outside": outside}))
'''


def _modules(root: Path) -> list[str]:
    """Every module of the artifact except ``__main__`` ones (importing those runs them)."""
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [n for n in names if n and n.rpartition(".")[2] != "__main__"]


def _imported_roots(root: Path) -> dict[str, set[str]]:
    """Top-level names of every absolute import in every file, lazy imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(root)))
    return found


def check(root: Path, rule: Rule, declared: set[str], modules: list[str] | None = None) -> None:
    """Static check of every file; dynamic import of ``modules`` (default: all of them)."""
    shipped = {p.stem if p.suffix == ".py" else p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert declared <= shipped, f"declared but not shipped: {declared - shipped}"
    assert not (shipped & OURS) - declared - {"handler", "inference"}, "ships undeclared packages of ours"
    forbidden = (OURS - shipped) | rule.forbid

    bad = {}
    for top, files in _imported_roots(root).items():
        if top in shipped or top in sys.stdlib_module_names:
            continue
        if top in forbidden or (rule.only_third_party is not None and top not in rule.only_third_party):
            bad[top] = sorted(files)
    assert not bad, f"imports it must not make: {bad}"

    spec = {"shipped": sorted(shipped), "forbidden": sorted(forbidden), "ours": sorted(OURS),
            "only_third_party": None if rule.only_third_party is None else sorted(rule.only_third_party | rule.runtime),
            "modules": _modules(root) if modules is None else modules}
    done = subprocess.run([sys.executable, "-I", "-B", "-c", PROBE, str(root), str(REPO), json.dumps(spec)],
                          cwd=root, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    assert report["outside"] == [], "imported from outside the artifact"
    assert set(report["missing"]) <= RUNTIME_PROVIDED, report["missing"]


# Modules whose third-party imports only their runtime has (checked above not to be ours):
# tritonserver's Python backend, and the DLC's inference toolkit.
RUNTIME_PROVIDED = {"whisper_engines.bls_model"}


# --- the image: build context per <Dockerfile>.dockerignore, then the COPY lines ---------------

def _dockerignore_keeps(rel: str, patterns: list[str]) -> bool:
    keep = True
    for raw in patterns:
        negate, pat = raw.startswith("!"), raw.lstrip("!").rstrip("/")
        hit = (fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") or
               (pat.startswith("**/") and any(fnmatch.fnmatch(part, pat[3:]) for part in rel.split("/"))))
        if hit:
            keep = negate
    return keep


def build_image_tree(dockerfile: Path, dest: Path) -> Path:
    """What the image's /opt/program holds: each COPY of the build context (after
    .dockerignore) into /opt/program."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    program = dest / "opt" / "program"
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "COPY" or parts[1].startswith("--from"):
            continue
        src, target = parts[1], parts[2]
        files = [p for p in (REPO / src).rglob("*") if p.is_file()] if (REPO / src).is_dir() else [REPO / src]
        kept = [f for f in files if _dockerignore_keeps(str(f.relative_to(REPO)), patterns)]
        assert kept, f"{dockerfile.name}: COPY {src} has nothing in the build context"
        if not target.startswith("/opt/program/"):
            continue
        name = target.removeprefix("/opt/program/").strip("/")
        # The COPY source is the folder the one mapping (pyproject) gives that import name.
        assert REPO / src == LAYOUT.folder(name), f"{dockerfile.name}: COPY {src} -> {name}"
        for f in kept:
            out = program / name / f.relative_to(REPO / src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
    return program


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def image_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/program of the three images; they must be the same tree (checked once, below)."""
    trees = [build_image_tree(REPO / "containers" / "whisper" / d, tmp_path_factory.mktemp(d)) for d in DOCKERFILES]
    assert all(_files(t) == _files(trees[0]) for t in trees[1:]), "the images ship different code"
    return trees[0]


def test_image_ships_what_it_declares(image_program: Path) -> None:
    check(image_program, RULES["image"], set(LAYOUT.packages("image")))


def test_dlc_tarball_ships_what_it_declares(dlc_tarball: Path, image_program: Path, tmp_path: Path) -> None:
    with tarfile.open(dlc_tarball) as tar:
        tar.extractall(tmp_path, members=[m for m in tar.getmembers() if m.name.startswith("code/")], filter="data")
    code = tmp_path / "code"
    assert (code / "inference.py").is_file()
    # The same packages as the image (whose every module the image test imports), so only the
    # DLC's own entry module needs importing here.
    for name in LAYOUT.packages("dlc"):
        assert _files(code / name) == _files(image_program / name), name
    check(code, RULES["dlc"], set(LAYOUT.packages("dlc")), modules=["inference"])


def test_engine_build_bundle_ships_what_it_declares(tmp_path: Path) -> None:
    LAYOUT.stage("engine-build", tmp_path)
    # whisper_server and whisper_contract are the image's files, imported by the image test.
    own = [m for m in _modules(tmp_path) if m.partition(".")[0] not in LAYOUT.packages("image")]
    check(tmp_path, RULES["engine-build"], set(LAYOUT.packages("engine-build")), modules=own)
    # The CodeBuild source zip holds the bundle's folders and what stages them.
    folders = {str(LAYOUT.folder(n).relative_to(REPO)) for n in LAYOUT.packages("engine-build")}
    assert folders | {"whisper_build", "pyproject.toml"} <= set(SOURCE_PATHS)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "lambda").iterdir() if (p / "handler.py").is_file()))
def test_lambda_asset_ships_what_it_declares(name: str, tmp_path: Path) -> None:
    asset = stage_lambda_asset(name, tmp_path)
    assert (asset / "handler.py").is_file()
    check(asset, RULES["lambda"], set(LAYOUT.packages("lambda")))


def test_contract_imports_nothing_of_ours(tmp_path: Path) -> None:
    shutil.copytree(LAYOUT.folder("whisper_contract"), tmp_path / "whisper_contract",
                    ignore=shutil.ignore_patterns("__pycache__"))
    check(tmp_path, RULES["contract"], {"whisper_contract"})


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A Lambda asset that imports the container, and a contract that imports the CDK, fail."""
    asset = stage_lambda_asset("submit", tmp_path / "a")
    (asset / "handler.py").write_text("import whisper_server.audio\n")
    with pytest.raises(AssertionError, match="whisper_server"):
        check(asset, RULES["lambda"], set(LAYOUT.packages("lambda")))
    contract = tmp_path / "c"
    shutil.copytree(LAYOUT.folder("whisper_contract"), contract / "whisper_contract")
    (contract / "whisper_contract" / "sneaky.py").write_text("def f():\n    import importlib\n"
                                                              "    return importlib.import_module('aws_cdk')\n")
    (contract / "whisper_contract" / "__init__.py").write_text("import importlib\nimportlib.import_module('aws_cdk')\n")
    with pytest.raises(AssertionError, match="aws_cdk"):
        check(contract, RULES["contract"], {"whisper_contract"})
