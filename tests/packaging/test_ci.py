"""`.ci/run` runs exactly the README's test command, and a run that collects no tests
(pytest exit 5) is red, not green."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _readme_test_command() -> str:
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block
    (line,) = [ln for ln in block.group(1).splitlines() if ln.startswith("make test")]
    return line.split("#")[0].strip()


def test_ci_runs_the_readme_test_command() -> None:
    commands = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[-1] == _readme_test_command() == "make test"
    assert "set -euo pipefail" in commands


def test_make_test_runs_pytest_without_swallowing_its_status() -> None:
    recipe = subprocess.run(["make", "-n", "test", "VENV=.venv"], cwd=REPO, capture_output=True, text=True).stdout
    (pytest_line,) = [ln for ln in recipe.splitlines() if "-m pytest" in ln]
    assert "||" not in pytest_line and not pytest_line.startswith("-")


def _ci_run_with(tmp_path: Path, make_body: str) -> int:
    """.ci/run with `make` replaced by a script, so its own handling of the status is tested."""
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\n{make_body}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(REPO / ".ci" / "run")], env=env, capture_output=True).returncode


def test_no_tests_collected_is_red(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # What `make test` does when pytest collects nothing: pytest exits 5.
    status = tmp_path / "pytest-status"
    run_pytest = (f"cd {empty} && {sys.executable} -m pytest -q -p no:randomly -p no:cacheprovider .; "
                  f"code=$?; echo $code > {status}; exit $code")
    assert _ci_run_with(tmp_path, run_pytest) != 0
    assert status.read_text().strip() == "5"  # it was pytest's "no tests ran" that turned it red
    assert _ci_run_with(tmp_path, "exit 0") == 0  # and a green run is green


def _readme_tree() -> str:
    block = re.search(r"## What is where\s*```\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block
    return block.group(1)


def test_readme_tree_names_every_top_level_folder_and_nothing_that_is_gone() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines() if "/" in line}
    named: set[str] = set()
    for line in _readme_tree().splitlines():
        if not line or line[0].isspace():
            continue  # a description's continuation
        tokens = line.split()
        # A row starts with the paths it describes; the description is the first word that is no path.
        paths = tokens[: next((i for i, t in enumerate(tokens) if not (REPO / t).exists()), len(tokens))]
        assert paths, f"README 'What is where' row names no existing path: {line!r}"
        named |= {t.rstrip("/").split("/")[0] for t in paths}
    assert folders - named == set(), "README 'What is where' misses these folders"
