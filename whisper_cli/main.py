"""``whisper-sm``: submit audio, follow it, fetch transcripts; against AWS or the local pipeline.

    whisper-sm local                                   # run the local pipeline (foreground)
    whisper-sm submit clips/ talk.mp3 --env local --formats json,srt [--wait --out DIR]
    whisper-sm wait  [KEY ...] --env local             # default: the last submit's files
    whisper-sm get   [KEY ...] --env local --out transcripts/
    whisper-sm status --env dev                        # backlog, instance count, spend today
    whisper-sm cost --env dev --since 7d               # estimated spend over a period (whisper_cli.cost_report)
    whisper-sm model --env dev --model large-v3        # weights into the model bucket (whisper_cli.model_tool)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from whisper_cli import core, cost_report, model_tool
from whisper_contract import ContractError, RequestOptions

console = Console(stderr=True)
STYLE = {"uploaded": "dim", "pending": "yellow", "submitted": "cyan", "completed": "green", "failed": "red",
         "superseded": "magenta"}


# Options given as --<name with dashes> VALUE, each travelling as the option of that name
# (README "Redaction, captions and confidence", "Speakers and channels").
VALUE_OPTIONS = ("language", "task", "formats", "beam_size", "initial_prompt", "hotwords",
                 "redact", "redact_types", "redact_output", "max_line_chars", "max_lines", "max_cue_s",
                 "min_gap_ms", "confidence_threshold", "channels", "speakers", "min_speakers", "max_speakers")


def _options(args: argparse.Namespace) -> tuple[RequestOptions, frozenset[str]]:
    """The options, and the names of those the user gave: they travel even where they equal
    RequestOptions' defaults, so the deployment's DEFAULT_OPTIONS cannot replace them."""
    pairs = {}
    for name in VALUE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            pairs[name] = str(value)
    if args.word_timestamps:
        pairs["word_timestamps"] = "true"
    if args.no_vad:
        pairs["vad"] = "false"
    return RequestOptions.from_pairs(pairs), frozenset(pairs)


def _target(args: argparse.Namespace) -> core.Target:
    return core.resolve(args.env, state_path=args.state, profile=args.profile)


def _submissions(args: argparse.Namespace, target: core.Target) -> list[core.Submission]:
    return core.for_keys(target, args.keys) if args.keys else core.load_manifest(args.env)


# --- commands ---------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    options, explicit = _options(args)
    target = _target(args)
    pairs = core.collect([Path(p) for p in args.paths], prefix=args.prefix)
    if not pairs:
        console.print("[red]no audio files found[/red]")
        return 1
    total = sum(p.stat().st_size for p, _ in pairs)
    with Progress(TextColumn("[bold]upload[/bold]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("upload", total=total)
        subs = core.upload(target, pairs, options, explicit=explicit, progress=lambda n: bar.advance(task, n))
    core.save_manifest(args.env, subs)
    for sub in subs:
        console.print(f"s3://{target.input_bucket}/{sub.key}  [dim]{sub.inference_id}[/dim]")
    if args.wait:
        return _wait_and_get(target, subs, args)
    return 0


def _wait_and_get(target: core.Target, subs: list[core.Submission], args: argparse.Namespace) -> int:
    states = follow(target, subs, args.timeout)
    failed = [k for k, r in states.items() if r is None or r.state != "completed"]
    refused = 0
    if getattr(args, "out", None):
        taken: dict[Path, str] = {}
        for record in states.values():
            if record is not None and record.finished:
                refused += report(core.download(target, record, Path(args.out), taken))
    return 1 if failed or refused else 0


def report(fetched: list[core.Fetched]) -> int:
    """Print what was written and what was refused; the number refused."""
    for item in fetched:
        if item.path is None:
            console.print(f"[red]skipped[/red] {item.problem}")
        elif item.renamed:
            console.print(f"[dim]wrote[/dim] {item.path} [dim](key {item.key!r} is too long for a local file name)[/dim]")
        else:
            console.print(f"[dim]wrote[/dim] {item.path}")
    return sum(1 for item in fetched if item.path is None)


def follow(target: core.Target, subs: list[core.Submission], timeout_s: float) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
                  TimeElapsedColumn(), console=console) as bar:
        tasks = {s.key: bar.add_task(s.key, total=3, state="[dim]uploaded[/dim]") for s in subs}
        order = {"uploaded": 0, "pending": 1, "submitted": 2}

        def changed(sub: core.Submission, state: str, record: object) -> None:
            done = 3 if state not in order else order[state]
            bar.update(tasks[sub.key], completed=done, state=f"[{STYLE.get(state, '')}]{state}[/]")

        states = core.wait(target, subs, timeout_s=timeout_s, on_change=changed)
    for key, record in states.items():
        if record is not None and record.state != "completed":
            console.print(f"[red]{key}: {record.state}[/red] {record.message or ''}")
        elif record is None or not record.finished:
            console.print(f"[yellow]{key}: not finished after {timeout_s:.0f} s[/yellow]")
    return states


def cmd_wait(args: argparse.Namespace) -> int:
    target = _target(args)
    states = follow(target, _submissions(args, target), args.timeout)
    return 0 if all(r is not None and r.state == "completed" for r in states.values()) else 1


def cmd_get(args: argparse.Namespace) -> int:
    target = _target(args)
    missing = 0
    taken: dict[Path, str] = {}
    for sub in _submissions(args, target):
        record = core.job(target, sub)
        if record is None or not record.finished:
            console.print(f"[yellow]{sub.key}: not finished ({record.state if record else 'uploaded'})[/yellow]")
            missing += 1
            continue
        missing += report(core.download(target, record, Path(args.out), taken))
    return 1 if missing else 0


def cmd_status(args: argparse.Namespace) -> int:
    target = _target(args)
    status = target.status()
    if target.session is not None:  # AWS: what today has cost so far (the local stand-in has no instances)
        status.update(cost_report.status_spend(target.session, target.endpoint_name))
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    table = Table(title=f"endpoint {status.get('endpoint_name')} ({args.env})")
    table.add_column("metric")
    table.add_column("value")
    for key, value in status.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    target = _target(args)
    if target.session is None:
        console.print("[red]error:[/red] cost needs an AWS environment (the local pipeline has no instances to bill)")
        return 2
    now = datetime.now(timezone.utc)
    start = cost_report.parse_since(args.since, now)
    spend = dataclasses.asdict(cost_report.spend(target.session, target.endpoint_name, target.output_bucket, start, now))
    if args.json:
        print(json.dumps(spend))
        return 0
    table = Table(title=f"estimated spend of {args.env}, {spend['start']} to {spend['end']} (prices of "
                        f"{spend['price_date']}; docs/cost.md)")
    table.add_column("what")
    table.add_column("value")
    for key, value in spend.items():
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from whisper_local.pipeline import LocalPipeline, PipelineConfig

    config = PipelineConfig(model_dir=Path(args.model_dir) if args.model_dir else None, state_path=args.state,
                            max_concurrency=args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind and stop the children
    with console.status("starting moto, the container and the stand-ins..."):
        pipeline = LocalPipeline(config)
        state = pipeline.__enter__()
    try:
        console.print(f"[green]local pipeline up[/green]: input s3://{state.input_bucket}, output "
                      f"s3://{state.output_bucket}, AWS endpoint {state.aws_endpoint_url}. Ctrl-C stops it.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        pipeline.stop()
    return 0


# --- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-sm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--env", default="local", help="dev, prod (deployed stacks) or local (default)")
        p.add_argument("--profile", help="AWS profile (AWS environments)")
        p.add_argument("--state", type=Path, help="local pipeline state file (default: ~/.cache/...)")

    p = sub.add_parser("submit", help="upload audio files or folders")
    common(p)
    p.add_argument("paths", nargs="+")
    p.add_argument("--prefix", default="", help="key prefix in the input bucket")
    p.add_argument("--language", help="Whisper language code, or auto")
    p.add_argument("--task", choices=("transcribe", "translate"))
    p.add_argument("--formats", help="comma list of json,txt,srt,vtt")
    p.add_argument("--beam-size", dest="beam_size", type=int)
    p.add_argument("--initial-prompt", dest="initial_prompt")
    p.add_argument("--hotwords")
    p.add_argument("--word-timestamps", action="store_true")
    p.add_argument("--no-vad", action="store_true")
    p.add_argument("--redact", choices=("none", "pii"), help="pii: replace personal data by [PII:<TYPE>]")
    p.add_argument("--redact-types", dest="redact_types", help="comma list of phone,email,card,iban,ssn,nino,dob")
    p.add_argument("--redact-output", dest="redact_output", choices=("redacted", "both"),
                   help="both: also <key>.unredacted.<fmt>")
    for name, kind in (("max_line_chars", int), ("max_lines", int), ("max_cue_s", float), ("min_gap_ms", int),
                       ("confidence_threshold", float)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help="caption rule / confidence flag")
    p.add_argument("--channels", choices=("mix", "separate"), help="separate: one transcript per channel, CH0, CH1...")
    p.add_argument("--speakers", help="none, auto or a number 1-30: label speakers S1, S2...")
    p.add_argument("--min-speakers", dest="min_speakers", type=int, help="with --speakers auto")
    p.add_argument("--max-speakers", dest="max_speakers", type=int, help="with --speakers auto")
    p.add_argument("--wait", action="store_true", help="then wait for every result")
    p.add_argument("--out", help="with --wait: download results here")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("wait", help="follow files until each has a transcript or an error")
    common(p)
    p.add_argument("keys", nargs="*", help="input keys (default: the last submit)")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("get", help="download transcripts and error records")
    common(p)
    p.add_argument("keys", nargs="*", help="input keys (default: the last submit)")
    p.add_argument("--out", default="transcripts")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("status", help="endpoint backlog, instance count and what today has cost")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cost", help="estimated spend over a period: CloudWatch instance-minutes and the job records")
    common(p)
    p.add_argument("--since", default="24h", help="30m, 12h, 7d (before now) or an ISO date/time; default 24h")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("local", help="run the local pipeline in the foreground")
    p.add_argument("--state", type=Path)
    p.add_argument("--model-dir", help="CTranslate2 model folder (default: bundled tiny.en)")
    p.add_argument("--concurrency", type=int, default=2)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("model", help="fetch, convert and upload the environment's model; --check: the deploy guard")
    model_tool.add_arguments(p)
    p.set_defaults(func=model_tool.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ContractError, RuntimeError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
