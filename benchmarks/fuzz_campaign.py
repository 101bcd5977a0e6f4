"""The fuzz campaign: the CI fuzz tests (tests/fuzz) with a large, randomly seeded budget.

    python benchmarks/fuzz_campaign.py [--examples 300] [--out build/fuzz-campaign]

Runs ``pytest tests/fuzz`` once with ``FUZZ_PROFILE=fuzz-campaign`` (fresh random seeds, not
CI's fixed one) and ``FUZZ_EXAMPLES`` inputs per target, then sums the per-target tallies the
tests write: inputs, outcomes, crashes (5xx / exceptions), hangs (no answer within the time
limit), slowest answer. Inputs that broke something are kept under ``<out>/failures/`` for the
regression corpus. Writes ``<out>/summary.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="hypothesis examples per fuzz target")
    parser.add_argument("--out", type=Path, default=Path("build/fuzz-campaign"))
    parser.add_argument("--timeout", type=int, default=1800, help="wall-clock limit for the whole run (s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.json"):
        old.unlink()
    env = {**os.environ, "FUZZ_PROFILE": "fuzz-campaign", "FUZZ_EXAMPLES": str(args.examples),
           "FUZZ_STATS_DIR": str(args.out)}
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider", "--no-header",
           "-k", "not regression_corpus"]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        rc, tail = run.returncode, (run.stdout + run.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"campaign exceeded {args.timeout} s: {exc}"
    wall = time.monotonic() - started

    targets = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if p.name != "summary.json"]
    crashes = {t["target"]: sum(n for o, n in t["outcomes"].items() if o.startswith("5")) for t in targets}
    summary = {
        "command": " ".join(["python", "benchmarks/fuzz_campaign.py", "--examples", str(args.examples)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "pytest_exit_status": rc, "wall_s": round(wall, 1),
        "total_inputs": sum(t["inputs"] for t in targets),
        "failures_kept": sum(len(t["failures"]) for t in targets),
        "crashes_5xx_by_target": crashes,
        "targets": targets,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"| target | inputs | outcomes | slowest answer (s) | failures kept |\n|---|---|---|---|---|")
    for t in targets:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(t["outcomes"].items(), key=lambda kv: -kv[1]))
        print(f"| {t['target']} | {t['inputs']} | {outcomes} | {t['max_latency_s']} | {len(t['failures'])} |")
    print(f"\ntotal inputs {summary['total_inputs']}, pytest exit {rc}, {wall:.0f} s wall")
    if rc != 0:
        print(tail)
    return rc


if __name__ == "__main__":
    sys.exit(main())
