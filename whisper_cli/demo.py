"""``make demo``: the whole pipeline on this machine, audio in, transcripts out.

Starts the local pipeline (``whisper_local.pipeline``), uploads the shipped clips plus one
deliberately broken file (or every audio file under ``--audio DIR``), follows each file
until its transcript or error record exists, downloads everything to ``./demo-output/``
(one set of files per input, ``<name>.error.json`` for failures), prints a summary, and
stops everything it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from whisper_cli import core
from whisper_cli.main import follow, report
from whisper_contract import RequestOptions
from whisper_contract.keys import ERROR_SUFFIX, is_audio_key
from whisper_eval.clips import SHIPPED
from whisper_local.pipeline import LocalPipeline, PipelineConfig

console = Console(width=None if sys.stdout.isatty() else 140)  # wide tables in logs too
BROKEN_NAME = "broken-upload.wav"  # a .wav whose bytes are not audio: shows the error path
# Multilingual, because the shipped clips include Japanese and Mandarin: the English-only
# tiny.en renders those as English nonsense. It costs time (docs/benchmarks.md).
DEFAULT_MODEL = "base"


def demo_inputs(audio_dir: Path | None, scratch: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(file, key) pairs to upload, and files skipped because of their extension."""
    if audio_dir is None:
        pairs = [(p, p.name) for p in sorted(SHIPPED.iterdir()) if is_audio_key(p.name)]
        broken = scratch / BROKEN_NAME
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEthis is not really audio, just text in a .wav file\n" * 8)
        return pairs + [(broken, BROKEN_NAME)], []
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"AUDIO={audio_dir} is not a folder")
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    pairs = [(p, p.relative_to(audio_dir).as_posix()) for p in files if is_audio_key(p.name)]
    skipped = [p for p in files if not is_audio_key(p.name)]
    return pairs, skipped


def summary(records: dict, fetched: dict[str, list[core.Fetched]], out_dir: Path) -> Table:
    """One row per input, read from the files downloaded for it (``fetched``: input key ->
    what download() did; local names may differ from keys, see core.local_path)."""
    table = Table(title=f"results in {out_dir}/")
    for column in ("input", "result", "language", "audio s", "compute s", "text / error"):
        table.add_column(column, overflow="fold")
    for key, record in records.items():
        if record is None or not record.finished:
            table.add_row(key, "[yellow]unfinished[/yellow]", "", "", "", "")
            continue
        paths = [f.path for f in fetched.get(key, []) if f.path is not None]
        transcript = next((p for p in paths if p.name.endswith(".json") and not p.name.endswith(ERROR_SUFFIX)), None)
        error = next((p for p in paths if p.name.endswith(ERROR_SUFFIX)), None)
        if record.state == "completed" and transcript is not None:
            data = json.loads(transcript.read_text())
            text = data["text"].strip()
            table.add_row(key, "[green]transcript[/green]", data["language"], f"{data['duration']:.1f}",
                          f"{data['timings']['processing_seconds']:.1f}", text[:80] + ("..." if len(text) > 80 else ""))
        elif error is not None:
            err = json.loads(error.read_text())["error"]
            table.add_row(key, f"[red]{record.state}[/red]", "", "", "", f"{err['code']}: {err['message']}")
        else:
            table.add_row(key, f"[red]{record.state}[/red]", "", "", "", record.message or "no result file downloaded")
    return table


def run(audio_dir: Path | None, out_dir: Path, config: PipelineConfig, timeout_s: float) -> int:
    started = time.time()
    pairs, skipped = demo_inputs(audio_dir, config.log_dir / "demo-inputs")
    for path in skipped:
        console.print(f"[dim]skip {path}: not an audio file extension[/dim]")
    if not pairs:
        console.print("[red]no audio files to transcribe[/red]")
        return 1
    if out_dir.exists():
        shutil.rmtree(out_dir)  # demo-output/ is generated; a stale file would mislead
    out_dir.mkdir(parents=True)

    with LocalPipeline(config) as state:
        console.print(f"[green]pipeline up[/green] in {time.time() - started:.1f} s "
                      f"(moto {state.aws_endpoint_url}, container {state.container_url}, "
                      f"SageMaker stand-in {state.sagemaker_url}); logs in {config.log_dir}/")
        target = core.Target(core.LOCAL, state.input_bucket, state.output_bucket, state.endpoint_name,
                             state.client("s3"), status_url=f"{state.sagemaker_url}/_local/status")
        with console.status(f"uploading {len(pairs)} files..."):
            subs = core.upload(target, pairs, RequestOptions())  # the deployment's DEFAULT_OPTIONS apply
        records = follow(target, subs, timeout_s)
        fetched: dict[str, list[core.Fetched]] = {}
        taken: dict[Path, str] = {}
        for key, record in records.items():
            if record is not None and record.finished:
                fetched[key] = core.download(target, record, out_dir, taken)
                report([f for f in fetched[key] if f.path is None or f.renamed])  # the rest is in the summary
        runtime_status = target.status()
    console.print(summary(records, fetched, out_dir))
    done = sum(1 for r in records.values() if r is not None and r.finished)
    console.print(f"{done}/{len(records)} inputs finished ({runtime_status['completed']} transcribed, "
                  f"{runtime_status['failed']} failed at the model) in {time.time() - started:.1f} s; "
                  f"everything stopped.")
    return 0 if done == len(records) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whisper_cli.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, help="folder of your own audio (default: the shipped clips)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--model-dir", type=Path, help="CTranslate2 Whisper model folder (overrides --model)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=("tiny.en", "base"),
                        help=f"bundled model: multilingual base or English-only tiny.en (default {DEFAULT_MODEL})")
    parser.add_argument("--concurrency", type=int, default=2, help="MaxConcurrentInvocationsPerInstance")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all results")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The handlers log every skip and submission at INFO, as in CloudWatch; -v shows them here.
    logging.getLogger("whisper").setLevel(logging.INFO if args.verbose else logging.WARNING)
    config = PipelineConfig(model_dir=args.model_dir, bundled_model=args.model, max_concurrency=args.concurrency)
    # SIGTERM (e.g. from `timeout` or CI) unwinds like Ctrl-C, so the children are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args.audio, args.out, config, args.timeout)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything started was stopped[/yellow]")
        return 130
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
