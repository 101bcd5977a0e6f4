"""GPU benchmark and GPU correctness check for the torch backend (issue 7).

Two steps, because the device machine has no network and no audio decoder:

  python benchmarks/gpu_bench.py prepare            # here: writes .torchbench/ (carried)
  python benchmarks/gpu_bench.py run --out $OUT     # on the device machine

``prepare`` writes 30 s chunks of real speech as int16 PCM, the clips for the correctness
check, tiny.en's weights (rounded to 7 mantissa bits, i.e. bf16 precision in fp16's range,
then byte-plane lzma: the lossless fp16 weights compress to 61 MiB, over the 64 MiB a call
may carry together with the tree) and the reference transcripts: faster-whisper on the
original weights and our CPU backend on the transported ones.

``run`` measures raw audio -> token ids (feature extraction included) for our model and for
transformers' WhisperForConditionalGeneration.generate (eager and static cache; compile
modes with --hf-compile, each in a child process since one is known to crash), at batch
sizes 1, 8, 32, 64, 128, with large-v3 and large-v3-turbo shapes, random fp16 weights and
100 forced tokens (end-of-text suppressed). Results: $OUT/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".torchbench"
BATCHES = (1, 8, 32, 64, 128)
TOKENS = 100
PROMPT_LEN = 4  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
SOT, EN, TRANSCRIBE, NO_TS, EOT = 50258, 50259, 50360, 50364, 50257  # large-v3 vocabulary
CHUNK = 480_000


# --------------------------------------------------------------------------- prepare (here)

def pack_weights(state: dict, path: Path, keep_bits: int = 7) -> None:
    """fp16 tensors rounded to ``keep_bits`` mantissa bits, stored as two lzma byte planes."""
    import torch

    index, parts = [], []
    for name, t in state.items():
        a = t.to(torch.float16).numpy().ravel().view(np.uint16).astype(np.uint32)
        drop = 10 - keep_bits
        a = ((a + (1 << (drop - 1))) >> drop) << drop  # round half up on the magnitude bits
        parts.append(a.astype(np.uint16))
        index.append({"name": name, "shape": list(t.shape)})
    flat = np.concatenate(parts)
    (path / "weights.json").write_text(json.dumps(index))
    (path / "weights.hi.xz").write_bytes(lzma.compress((flat >> 8).astype(np.uint8).tobytes(), preset=6))
    (path / "weights.lo.xz").write_bytes(lzma.compress((flat & 255).astype(np.uint8).tobytes(), preset=6))


def unpack_weights(path: Path) -> dict:
    import torch

    index = json.loads((path / "weights.json").read_text())
    hi = np.frombuffer(lzma.decompress((path / "weights.hi.xz").read_bytes()), np.uint8).astype(np.uint16)
    lo = np.frombuffer(lzma.decompress((path / "weights.lo.xz").read_bytes()), np.uint8).astype(np.uint16)
    flat = ((hi << 8) | lo).view(np.float16)
    out, at = {}, 0
    for item in index:
        n = int(np.prod(item["shape"])) if item["shape"] else 1
        out[item["name"]] = torch.from_numpy(flat[at : at + n].copy()).reshape(item["shape"])
        at += n
    return out


def prepare(args: argparse.Namespace) -> None:
    import shutil

    import torch
    from faster_whisper import WhisperModel, decode_audio

    from whisper_eval.clips import SHARED, SHIPPED, load_clips
    from whisper_server.backends.base import DecodeOptions
    from whisper_server.backends.torch_backend import TorchBackend
    from whisper_server.backends.torch_convert import build, state_dict_from_ct2
    from whisper_server.bundled import bundled_model_dir

    WORK.mkdir(exist_ok=True)
    folder = SHARED if SHARED.exists() else SHIPPED
    english = [c for c in load_clips(folder) if c.language == "en"]
    # Speech chunks: English clips laid end to end, cut into full 30 s windows.
    speech = np.concatenate([decode_audio(str(c.path)) for c in english])
    n = min(args.chunks, len(speech) // CHUNK)
    chunks = (np.clip(speech[: n * CHUNK], -1, 1) * 32767).astype(np.int16).reshape(n, CHUNK)
    np.save(WORK / "speech_chunks.npy", chunks)
    # Correctness clips: the shipped English clips under 30 s (one window each).
    check = [c for c in load_clips(SHIPPED) if c.language == "en" and c.duration < 30]
    audio = [decode_audio(str(c.path)) for c in check]
    np.savez(WORK / "check_clips.npz", **{c.name: (a * 32767).astype(np.int16) for c, a in zip(check, audio)})

    model_dir = bundled_model_dir("tiny.en")
    dims, state = state_dict_from_ct2(model_dir / "model.bin")
    pack_weights(state, WORK)
    for extra in ("tokenizer.json", "config.json"):
        shutil.copyfile(model_dir / extra, WORK / extra)
    (WORK / "dims.json").write_text(json.dumps(dims.__dict__))

    # References: faster-whisper (original weights, beam 1) and our CPU path (carried weights).
    torch.set_num_threads(2)
    fw = WhisperModel(str(model_dir), device="cpu", compute_type="float32", cpu_threads=2)
    ref_fw = ["".join(s.text for s in fw.transcribe(a, language="en", beam_size=1)[0]) for a in audio]
    ref_fw5 = ["".join(s.text for s in fw.transcribe(a, language="en", beam_size=5)[0]) for a in audio]
    carried = build(dims, unpack_weights(WORK), "cpu", torch.float32)
    ours = TorchBackend.from_model_dir(model_dir, device="cpu")
    ours.model = carried
    pcm = [(a * 32767).astype(np.int16).astype(np.float32) / 32767 for a in audio]
    ours_txt = ["".join(s.text for s in segs) for segs in ours.transcribe_chunks(pcm, DecodeOptions(language="en", beam_size=1))]
    refs = {c.name: {"reference": c.reference, "faster_whisper_beam1": f1, "faster_whisper_beam5": f5,
                     "ours_cpu_carried_weights": o}
            for c, f1, f5, o in zip(check, ref_fw, ref_fw5, ours_txt)}
    (WORK / "references.json").write_text(json.dumps(refs, indent=1))
    size = sum(p.stat().st_size for p in WORK.iterdir()) / 2**20
    print(f"prepared {n} speech chunks, {len(check)} check clips, {size:.1f} MiB in {WORK}")


def _words(backend, audio: list[np.ndarray]) -> list[list[list]]:
    from whisper_server.backends.base import DecodeOptions

    options = DecodeOptions(language="en", word_timestamps=True, beam_size=1)
    return [[[w.word, w.start, w.end] for s in segs for w in s.words]
            for segs in backend.transcribe_chunks(audio, options)]


def word_agreement(ours: list[list], ref: list[list], tol: float = 0.2) -> dict:
    """Matched words (same normalised text, in order) and the share with start and end within ``tol`` s."""
    import difflib

    def norm(w: list) -> str:
        return "".join(ch for ch in w[0].lower() if ch.isalnum())

    m = difflib.SequenceMatcher(a=[norm(w) for w in ours], b=[norm(w) for w in ref], autojunk=False)
    pairs = [(ours[b.a + k], ref[b.b + k]) for b in m.get_matching_blocks() for k in range(b.size)]
    close = sum(abs(x[1] - y[1]) <= tol and abs(x[2] - y[2]) <= tol for x, y in pairs)
    worst = max((max(abs(x[1] - y[1]), abs(x[2] - y[2])) for x, y in pairs), default=0.0)
    return {"words": len(ours), "reference_words": len(ref), "matched": len(pairs), "within_tol": close,
            "share_within_tol": round(close / max(len(pairs), 1), 4), "worst_s": round(worst, 3)}


def prepare_words(args: argparse.Namespace) -> None:
    """Here: tiny.en weights (packed), the shipped English clips < 30 s, and the word-timing
    references: our faster-whisper backend (original weights, CPU float32, greedy) and our torch
    backend on CPU with the carried weights."""
    import shutil

    import torch
    from faster_whisper import decode_audio

    from whisper_eval.clips import SHIPPED, load_clips
    from whisper_server.backends.faster_whisper_backend import FasterWhisperBackend
    from whisper_server.backends.torch_backend import TorchBackend
    from whisper_server.backends.torch_convert import build, state_dict_from_ct2
    from whisper_server.bundled import bundled_model_dir
    from whisper_server.settings import Settings

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    check = [c for c in load_clips(SHIPPED) if c.language == "en" and c.duration < 30]
    pcm = {c.name: (decode_audio(str(c.path)) * 32767).astype(np.int16) for c in check}
    np.savez(work / "check_clips.npz", **pcm)
    audio = [pcm[c.name].astype(np.float32) / 32767 for c in check]
    model_dir = bundled_model_dir("tiny.en")
    dims, state = state_dict_from_ct2(model_dir / "model.bin")
    pack_weights(state, work)
    for extra in ("tokenizer.json", "config.json"):
        shutil.copyfile(model_dir / extra, work / extra)
    (work / "dims.json").write_text(json.dumps(dims.__dict__))
    torch.set_num_threads(2)
    fw = FasterWhisperBackend(Settings(model_dir=str(model_dir), device="cpu", compute_type="float32", cpu_threads=2))
    ours = TorchBackend.from_model_dir(model_dir, device="cpu")
    ours.model = build(dims, unpack_weights(work), "cpu", torch.float32)
    refs = {"clips": [c.name for c in check], "faster_whisper_cpu": _words(fw, audio),
            "torch_cpu_carried": _words(ours, audio)}
    (work / "word_references.json").write_text(json.dumps(refs))
    size = sum(p.stat().st_size for p in work.iterdir()) / 2**20
    print(f"{len(check)} clips, {size:.1f} MiB in {work}")


def words_on_device(args: argparse.Namespace) -> None:
    """Device: the torch backend's word timings on CUDA (bf16 and fp32, continuous batching
    and lockstep) against the references carried from the CPU machine."""
    import torch

    from whisper_server.backends.torch_backend import TorchBackend, alignment_heads
    from whisper_server.backends.torch_convert import build
    from whisper_server.backends.torch_model import Dims
    from whisper_server.decoding import WhisperTokenizer

    work, out = Path(args.dir), Path(args.out)
    refs = json.loads((work / "word_references.json").read_text())
    clips = np.load(work / "check_clips.npz")
    audio = [clips[n].astype(np.float32) / 32767 for n in refs["clips"]]
    dims = Dims(**json.loads((work / "dims.json").read_text()))
    config = json.loads((work / "config.json").read_text())
    weights = unpack_weights(work)
    report: dict = {"env": _env()}
    for dtype in ("bfloat16", "float32"):
        model = build(dims, weights, "cuda", getattr(torch, dtype))
        for continuous in (True, False):
            be = TorchBackend(model=model, tokenizer=WhisperTokenizer(work / "tokenizer.json"), name="tiny.en",
                              suppress=config["suppress_ids"], max_batch=16, use_graphs=True,
                              continuous_batching=continuous, heads=alignment_heads(dims, config["alignment_heads"]))
            t0 = time.perf_counter()
            got = _words(be, audio)
            key = f"{dtype}_{'continuous' if continuous else 'lockstep'}"
            report[key] = {"seconds": round(time.perf_counter() - t0, 3), "clips": {
                name: {"vs_faster_whisper": word_agreement(g, f), "vs_torch_cpu": word_agreement(g, c)}
                for name, g, f, c in zip(refs["clips"], got, refs["faster_whisper_cpu"], refs["torch_cpu_carried"])}}
    report["cpu_torch_vs_faster_whisper"] = {name: word_agreement(c, f) for name, c, f in zip(
        refs["clips"], refs["torch_cpu_carried"], refs["faster_whisper_cpu"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_words.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=1)[:6000])


# --------------------------------------------------------------------------- device side

def _env() -> dict:
    import torch

    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    import torch

    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    bw = 2 * a.numel() * 10 / (time.perf_counter() - t)
    del a, b
    return bw


def correctness(out: Path) -> list[dict]:
    import torch

    try:
        from whisper_eval.wer import wer

        wer("a", "a")
    except ImportError:  # whisper_normalizer is not on the device image: `table` scores later
        wer = None
    from whisper_server.backends.base import DecodeOptions
    from whisper_server.backends.torch_backend import TorchBackend
    from whisper_server.decoding import WhisperTokenizer as Tokenizer
    from whisper_server.backends.torch_convert import build
    from whisper_server.backends.torch_model import Dims

    dims = Dims(**json.loads((WORK / "dims.json").read_text()))
    model = build(dims, unpack_weights(WORK), "cuda", torch.float16)
    suppress = json.loads((WORK / "config.json").read_text())["suppress_ids"]
    backend = TorchBackend(model=model, tokenizer=Tokenizer(WORK / "tokenizer.json"), name="tiny.en", suppress=suppress,
                           max_batch=16, use_graphs=True, continuous_batching=False)
    int8 = TorchBackend(model=model, tokenizer=Tokenizer(WORK / "tokenizer.json"), name="tiny.en", suppress=suppress,
                        max_batch=16, use_graphs=True, cross_int8=True, continuous_batching=False)
    stream = TorchBackend(model=model, tokenizer=Tokenizer(WORK / "tokenizer.json"), name="tiny.en", suppress=suppress,
                          max_batch=2, use_graphs=True, continuous_batching=True)
    clips = np.load(WORK / "check_clips.npz")
    refs = json.loads((WORK / "references.json").read_text())
    names = list(refs)
    audio = [clips[n].astype(np.float32) / 32767 for n in names]
    results = backend.transcribe_chunks(audio, DecodeOptions(language="en", beam_size=1))
    results8 = int8.transcribe_chunks(audio, DecodeOptions(language="en", beam_size=1))
    results_stream = stream.transcribe_chunks(audio, DecodeOptions(language="en", beam_size=1))
    rows = []
    for name, segs, segs8, segs_s in zip(names, results, results8, results_stream):
        text = "".join(s.text for s in segs)
        r = refs[name]
        rows.append({"clip": name, "ours_gpu": text, "ours_gpu_int8kv": "".join(s.text for s in segs8),
                     "ours_gpu_continuous": "".join(s.text for s in segs_s),
                     "ours_gpu_segments": [[s.start, s.end, s.text] for s in segs],
                     "continuous_equals_lockstep": [[s.start, s.end, s.text] for s in segs_s]
                     == [[s.start, s.end, s.text] for s in segs], **r})
        if wer is not None:
            rows[-1].update({"wer_ours_gpu": wer(r["reference"], text),
                             "wer_faster_whisper": wer(r["reference"], r["faster_whisper_beam1"]),
                             "wer_faster_whisper_beam5": wer(r["reference"], r["faster_whisper_beam5"]),
                             "wer_gpu_vs_cpu": wer(r["ours_cpu_carried_weights"], text) if r["ours_cpu_carried_weights"].strip() else 0.0})
    backend.close()
    return rows


class ForcedStep:
    """The benchmark's decode step: argmax with end-of-text suppressed, all inside one CUDA
    graph that also feeds its token back and advances the position, so 100 steps are 100
    graph replays with no host work in between."""

    def __init__(self, decoder, state, tokens: int) -> None:
        import torch

        self.decoder, self.state = decoder, state
        b = state.batch
        self.tokens = torch.zeros(b, 1, dtype=torch.long, device="cuda")
        self.pos = torch.full((1,), state.self_k.shape[3] - 1, dtype=torch.long, device="cuda")
        self.out = torch.zeros(b, tokens + 1, dtype=torch.long, device="cuda")
        self.base = torch.full((1,), PROMPT_LEN - 1, dtype=torch.long, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self._step(advance=False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
            self._step(advance=True)

    def _step(self, advance: bool) -> None:
        logits = self.decoder(self.tokens, self.pos, self.state)
        logits[:, EOT] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        if advance:
            self.out.index_copy_(1, (self.pos - self.base).clamp(max=self.out.shape[1] - 1), nxt)
            self.tokens.copy_(nxt)
            self.pos.add_(1)


VARIANTS = {  # name: (compiled encoder, int8 cross-attention cache)
    "fp16": (False, False),
    "fp16-compiled-encoder": (True, False),
    "int8kv-compiled-encoder": (True, True),
}


def precision_check(out: Path) -> dict:
    """The same clips through the GPU path in fp32 / bf16 / fp16, with and without CUDA graphs:
    separates precision effects from graph-path bugs."""
    import torch

    from whisper_server.backends.base import DecodeOptions
    from whisper_server.backends.torch_backend import TorchBackend
    from whisper_server.decoding import WhisperTokenizer as Tokenizer
    from whisper_server.backends.torch_convert import build
    from whisper_server.backends.torch_model import Dims

    dims = Dims(**json.loads((WORK / "dims.json").read_text()))
    weights = unpack_weights(WORK)
    suppress = json.loads((WORK / "config.json").read_text())["suppress_ids"]
    clips = np.load(WORK / "check_clips.npz")
    names = list(json.loads((WORK / "references.json").read_text()))
    audio = [clips[n].astype(np.float32) / 32767 for n in names]
    report = {}
    for dtype in ("float32", "bfloat16", "float16"):
        model = build(dims, weights, "cuda", getattr(torch, dtype))
        for graphs in (True, False):
            for single in (False, True):
                be = TorchBackend(model=model, tokenizer=Tokenizer(WORK / "tokenizer.json"), name="tiny.en",
                                  suppress=suppress, max_batch=1 if single else 16, use_graphs=graphs,
                                  continuous_batching=False)
                res = be.transcribe_chunks(audio, DecodeOptions(language="en", beam_size=1))
                key = f"{dtype} graphs={graphs} batch={'1' if single else 'all'}"
                report[key] = {n: [[s.start, s.end, s.text] for s in r] for n, r in zip(names, res)}
                short = {n[:40]: "".join(x[2] for x in v)[:40] for n, v in report[key].items() if "4507" in n or "8455" in n}
                print(key, json.dumps(short), flush=True)
    (out / "precision.json").write_text(json.dumps(report, indent=1))
    return report


def check_int8_kernel() -> dict:
    """The Triton kernel against the plain-PyTorch reference on fresh random inputs."""
    import torch

    from whisper_server.backends.torch_kernels import attend_int8, attend_int8_reference, quantize

    out = {}
    for b in (1, 64):
        q = torch.randn(b, 20, 1, 64, device="cuda", dtype=torch.float16)
        k = torch.randn(b, 20, 1500, 64, device="cuda", dtype=torch.float16) * 2
        v = torch.randn(b, 20, 1500, 64, device="cuda", dtype=torch.float16)
        k8, ks = quantize(k)
        v8, vs = quantize(v)
        got = attend_int8(q, k8, ks, v8, vs).float()
        ref = attend_int8_reference(q.double(), k8, ks.double(), v8, vs.double()).float()
        exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        out[f"batch{b}_kernel_vs_reference"] = float((got - ref).norm() / ref.norm())
        out[f"batch{b}_int8_vs_fp32"] = float((got - exact).norm() / exact.norm())
    print("int8 kernel check", json.dumps(out), flush=True)
    return out


def bench_ours(name: str, pcm: np.ndarray, batches, reps: int, bw: float, variant: str = "fp16") -> list[dict]:
    import torch

    from whisper_server.backends.torch_model import PRESETS, random_model

    dims = PRESETS[name]
    model = random_model(dims, "cuda", torch.float16)
    compiled, int8 = VARIANTS[variant]
    if compiled:
        model.encoder.compile()
    records = []
    prompt = torch.tensor([[SOT, EN, TRANSCRIBE, NO_TS]], device="cuda")
    for b in batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            state = model.decoder.new_state(b, ctx=PROMPT_LEN + TOKENS + 4, cross_int8=int8)
            step = ForcedStep(model.decoder, state, TOKENS)
            host = torch.from_numpy(pcm[np.arange(b) % len(pcm)]).pin_memory()
            lengths = torch.full((b,), CHUNK, device="cuda")
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]

            def once() -> np.ndarray:
                with torch.no_grad():
                    ev[0].record()
                    audio = host.to("cuda", non_blocking=True).float() / 32768
                    enc = model.encoder(model.features(audio, lengths))
                    model.decoder.set_cross(state, enc)
                    logits = model.decoder(prompt.expand(b, -1), torch.zeros(1, dtype=torch.long, device="cuda"), state)
                    logits[:, EOT] = float("-inf")
                    first = logits.argmax(-1, keepdim=True)
                    step.out[:, :1] = first
                    step.tokens.copy_(first)
                    step.pos.fill_(PROMPT_LEN)
                    ev[1].record()
                    for _ in range(TOKENS - 1):
                        step.graph.replay()
                    ev[2].record()
                    return step.out[:, :TOKENS].cpu().numpy()

            t0 = time.perf_counter()
            once()
            first_s = time.perf_counter() - t0
            times, enc_ms, dec_ms = [], [], []
            for _ in range(reps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                ids = once()
                times.append(time.perf_counter() - t)
                enc_ms.append(ev[0].elapsed_time(ev[1]))
                dec_ms.append(ev[1].elapsed_time(ev[2]))
            assert ids.shape == (b, TOKENS) and not (ids == EOT).any()
            wall = statistics.median(times)
            dec_s = statistics.median(dec_ms) / 1e3
            # Bytes one decode step must read: decoder weights once, plus each row's cross
            # K/V (and its short self cache). Their sum over the steps at the copy bandwidth
            # is the floor for the decode phase.
            L, d = dims.n_text_layer, dims.n_text_state
            dec_weights = (L * 14 * d * d + dims.n_vocab * d) * 2
            cross_row = 2 * L * dims.n_audio_ctx * (d * 1 + 20 * 2 if int8 else d * 2)
            per_row = cross_row + 2 * L * state.self_k.shape[3] * d * 2
            floor = (TOKENS - 1) * (dec_weights + b * per_row) / bw
            records.append({"model": name, "impl": "ours", "variant": variant, "batch": b, "tokens": TOKENS,
                            "rtfx": round(b * 30 / wall, 1), "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                            "wall_s": round(wall, 4), "encode_ms": round(statistics.median(enc_ms), 2),
                            "decode_ms": round(dec_s * 1e3, 2), "decode_ms_per_step": round(dec_s * 1e3 / (TOKENS - 1), 3),
                            "decode_bw_fraction": round(floor / dec_s, 3), "first_call_s": round(first_s, 2)})
            print(json.dumps(records[-1]), flush=True)
            del step, state, host
        except torch.OutOfMemoryError:
            records.append({"model": name, "impl": "ours", "variant": variant, "batch": b, "tokens": TOKENS, "rtfx": None,
                            "peak_gb": None, "note": "out of memory"})
    del model
    torch.cuda.empty_cache()
    return records


def hf_config(name: str):
    from transformers import WhisperConfig

    layers = 4 if name == "large-v3-turbo" else 32
    return WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=1280, encoder_layers=32, decoder_layers=layers,
                         encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
                         decoder_ffn_dim=5120, max_source_positions=1500, max_target_positions=448,
                         decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
                         begin_suppress_tokens=None, suppress_tokens=None)


def bench_hf(name: str, mode: str, pcm: np.ndarray, batches, reps: int) -> list[dict]:
    """transformers' generate, raw audio -> token ids, its feature extractor on the GPU."""
    import torch
    from transformers import GenerationMixin, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WhisperForConditionalGeneration(hf_config(name)).half().eval()
    fe = WhisperFeatureExtractor(feature_size=128)
    kwargs = {}
    if mode.startswith("static") or mode.startswith("compile"):
        kwargs["cache_implementation"] = "static"
    if mode == "compile-default":
        model.forward = torch.compile(model.forward)
    elif mode == "compile-reduce-overhead":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    records = []
    prompt = torch.tensor([[SOT, EN, TRANSCRIBE, NO_TS]], device="cuda")
    for b in batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        audio = [pcm[i % len(pcm)].astype(np.float32) / 32768 for i in range(b)]
        note = ""

        def once() -> np.ndarray:
            nonlocal note
            feats = fe(audio, sampling_rate=16_000, return_tensors="pt", device="cuda").input_features
            feats = feats.to("cuda", torch.float16)
            gen = dict(decoder_input_ids=prompt.expand(b, -1), max_new_tokens=TOKENS, min_new_tokens=TOKENS,
                       do_sample=False, num_beams=1, **kwargs)
            with torch.no_grad():
                try:
                    ids = model.generate(feats, **gen)
                except Exception as e:  # Whisper's generate wants a real generation config
                    note = f"whisper generate failed ({type(e).__name__}: {str(e)[:80]}); GenerationMixin.generate"
                    ids = GenerationMixin.generate(model, feats, **gen)
            return ids.cpu().numpy()

        try:
            once()
            times = []
            for _ in range(reps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                ids = once()
                times.append(time.perf_counter() - t)
            new = ids.shape[1] - (PROMPT_LEN if ids.shape[1] > TOKENS else 0)
            wall = statistics.median(times)
            rec = {"model": name, "impl": f"hf-{mode}", "batch": b, "tokens": int(new), "rtfx": round(b * 30 / wall, 1),
                   "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2), "wall_s": round(wall, 4)}
            if note:
                rec["note"] = note
        except torch.OutOfMemoryError:
            rec = {"model": name, "impl": f"hf-{mode}", "batch": b, "tokens": TOKENS, "rtfx": None, "peak_gb": None,
                   "note": "out of memory"}
        except Exception as e:
            rec = {"model": name, "impl": f"hf-{mode}", "batch": b, "tokens": TOKENS, "rtfx": None, "peak_gb": None,
                   "note": f"{type(e).__name__}: {str(e)[:200]}"}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return records


def hf_child(args: argparse.Namespace) -> None:
    pcm = np.load(WORK / "speech_chunks.npy")
    records = bench_hf(args.model, args.mode, pcm, [int(b) for b in args.batches.split(",")], args.reps)
    Path(args.child_out).write_text(json.dumps(records))


def run_hf_isolated(name: str, mode: str, batches, reps: int, out: Path, timeout: int) -> list[dict]:
    """Each peer mode in its own process: a crash (the compile mode segfaults) loses one row."""
    target = out / f"hf_{name}_{mode}.json"
    cmd = [sys.executable, __file__, "hf-child", "--model", name, "--mode", mode, "--batches",
           ",".join(map(str, batches)), "--reps", str(reps), "--child-out", str(target)]
    t = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-600:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout or "")[-300:]
    if target.exists():
        records = json.loads(target.read_text())
        target.unlink()
        return records
    note = f"process ended with {rc} after {time.time() - t:.0f} s: {tail.strip()[-300:]}"
    print(f"hf-{mode} {name}: {note}", flush=True)
    return [{"model": name, "impl": f"hf-{mode}", "batch": b, "tokens": TOKENS, "rtfx": None, "peak_gb": None,
             "note": note} for b in batches]


def run(args: argparse.Namespace) -> None:
    import torch

    out = Path(args.out or os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"env": _env()}
    bw = _bandwidth()
    result["env"]["copy_bandwidth_tb_s"] = round(bw / 1e12, 3)
    print(json.dumps(result["env"]), flush=True)
    if not args.skip_check:
        result["correctness"] = correctness(out)
        for r in result["correctness"]:
            print(f"check {r['clip'][:30]:30s} gpu: {r['ours_gpu'][:60]!r} cpu: {r['ours_cpu_carried_weights'][:60]!r}",
                  flush=True)
    pcm = np.load(WORK / "speech_chunks.npy")
    batches = [int(b) for b in args.batches.split(",")]
    records = []
    if "int8kv-compiled-encoder" in args.variants:
        result["int8_kernel_check"] = check_int8_kernel()
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            try:
                records += bench_ours(name, pcm, batches, args.reps, bw, variant)
            except Exception as e:  # keep the peer's rows even if ours breaks
                import traceback

                traceback.print_exc()
                records.append({"model": name, "impl": "ours", "variant": variant, "batch": 0, "tokens": TOKENS,
                                "rtfx": None, "peak_gb": None, "note": f"{type(e).__name__}: {str(e)[:200]}"})
            torch.cuda.empty_cache()
            (out / "gpu_bench.json").write_text(json.dumps({**result, "records": records}, indent=1))
    for name in args.hf_models.split(","):
        for mode in args.hf_modes.split(",") if args.hf_modes else []:
            hb = batches if not mode.startswith("compile") else [b for b in batches if b in (1, 64)]
            records += run_hf_isolated(name, mode, hb, args.reps, out, args.hf_timeout)
            (out / "gpu_bench.json").write_text(json.dumps({**result, "records": records}, indent=1))
    result["records"] = records
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=1))
    print_table(result)


def print_table(result: dict) -> None:
    rows = result["records"]
    print(f"\n{'model':15s} {'impl':30s} {'batch':>5s} {'rtfx':>7s} {'peak_gb':>7s} extra")
    for r in rows:
        extra = (f"enc {r['encode_ms']:.0f}ms dec {r['decode_ms_per_step']}ms/step bw {r['decode_bw_fraction']}"
                 if "decode_ms" in r else r.get("note", "")[:50])
        impl = r["impl"] + ("/" + r["variant"] if "variant" in r else "")
        print(f"{r['model']:15s} {impl:30s} {r['batch']:5d} {str(r['rtfx']):>7s} {str(r['peak_gb']):>7s} {extra}")


def _category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "_cross_int8", "softmax")):
        return "attention"
    if any(k in n for k in ("gemm", "gemv", "cutlass", "xmma", "sm90", "splitk", "dot_kernel")):
        return "matmul (weights)"
    if "layer_norm" in n or "layernorm" in n:
        return "layer norm"
    if any(k in n for k in ("elementwise", "index", "copy", "fill", "cat", "gelu", "reduce", "argmax", "triton")):
        return "elementwise/copies"
    return "other"


def profile(args: argparse.Namespace) -> None:
    """Where a large-v3 decode step and the encoder spend device time (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile

    from whisper_server.backends.torch_model import PRESETS, random_model

    out = Path(args.out or os.environ.get("OUT", "."))
    model = random_model(PRESETS["large-v3"], "cuda", torch.float16)
    report: dict = {"env": _env()}
    for b in (1, 64):
        state = model.decoder.new_state(b, ctx=PROMPT_LEN + TOKENS + 4)
        model.decoder.set_cross(state, torch.randn(b, 1500, 1280, device="cuda", dtype=torch.float16))
        step = ForcedStep(model.decoder, state, TOKENS)
        step.pos.fill_(PROMPT_LEN)
        for _ in range(5):
            step.graph.replay()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            step.graph.replay()
        torch.cuda.synchronize()
        graph_ms = (time.perf_counter() - t) / 50 * 1e3
        tok = torch.zeros(b, 1, dtype=torch.long, device="cuda")
        pos = torch.tensor([PROMPT_LEN + 60], device="cuda")
        with torch.no_grad():
            for _ in range(3):
                model.decoder(tok, pos, state)
            torch.cuda.synchronize()
            with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model.decoder(tok, pos, state)
                torch.cuda.synchronize()
        report[f"decode_step_batch{b}"] = _summarise(prof, 5, {"graph_step_ms": round(graph_ms, 3)})
        del step, state
        torch.cuda.empty_cache()
    mel = torch.randn(64, 128, 3000, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        model.encoder(mel)
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.encoder(mel)
            torch.cuda.synchronize()
    report["encoder_batch64_eager"] = _summarise(prof, 1, {})
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        if k != "env":
            print(k, json.dumps({c: v["by_category_ms"][c] for c in v["by_category_ms"]}), v.get("graph_step_ms", ""))
            for row in v["top"][:6]:
                print("   ", row)


def _summarise(prof, reps: int, extra: dict) -> dict:
    by_cat: dict[str, float] = {}
    by_name: dict[str, list] = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        ms = e.time_range.elapsed_us() / 1e3 / reps
        by_cat[_category(e.name)] = by_cat.get(_category(e.name), 0.0) + ms
        agg = by_name.setdefault(e.name[:90], [0.0, 0])
        agg[0] += ms
        agg[1] += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:12]
    return {**extra, "kernel_ms_total": round(sum(by_cat.values()), 3),
            "by_category_ms": {k: round(v, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top": [[n, round(t, 3), c // reps] for n, (t, c) in top]}


def merge(paths: list[str], target: Path) -> dict:
    """Several device runs of one session into one results file, correctness scored here
    (the device image has no whisper_normalizer). Later runs' rows replace earlier ones."""
    from whisper_eval.wer import wer

    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[tuple, dict] = {}
    for run_ in runs:
        for r in run_["records"]:
            rows[(r["model"], r["impl"], r.get("variant", ""), r["batch"])] = r
    checks = [r for run_ in runs for r in run_.get("correctness", [])]
    scored = {}
    for r in checks:  # the last run's check of each clip wins
        s = {"clip": r["clip"], "reference": r["reference"], "faster_whisper_cpu": r["faster_whisper_beam1"],
             "ours_gpu": r["ours_gpu"], "wer_faster_whisper_cpu": round(wer(r["reference"], r["faster_whisper_beam1"]), 4),
             "wer_faster_whisper_cpu_beam5": round(wer(r["reference"], r["faster_whisper_beam5"]), 4),
             "wer_ours_gpu": round(wer(r["reference"], r["ours_gpu"]), 4),
             "ours_gpu_equals_ours_cpu": r["ours_gpu"] == r["ours_cpu_carried_weights"]}
        if "ours_gpu_int8kv" in r:
            s["wer_ours_gpu_int8kv"] = round(wer(r["reference"], r["ours_gpu_int8kv"]), 4)
            s["int8kv_equals_fp16"] = r["ours_gpu_int8kv"] == r["ours_gpu"]
        s["wer_difference"] = round(s["wer_ours_gpu"] - s["wer_faster_whisper_cpu"], 4)
        scored[r["clip"]] = s
    out = {"env": runs[-1]["env"], "runs": [r["env"] for r in runs],
           "int8_kernel_check": next((r["int8_kernel_check"] for r in runs if "int8_kernel_check" in r), None),
           "correctness": list(scored.values()), "records": list(rows.values())}
    target.write_text(json.dumps(out, indent=1))
    return out


def markdown(result: dict) -> str:
    """The tables for docs/benchmarks.md."""
    recs = [r for r in result["records"] if r["batch"]]
    lines = ["| model | impl | " + " | ".join(f"b={b}" for b in BATCHES) + " |", "|---|---|" + "---|" * len(BATCHES)]
    keys = []
    for r in recs:
        k = (r["model"], r["impl"] + (f" ({r['variant']})" if r.get("variant") else ""))
        if k not in keys:
            keys.append(k)
    for model, impl in keys:
        cells = []
        for b in BATCHES:
            r = next((r for r in recs if r["model"] == model and r["batch"] == b
                      and r["impl"] + (f" ({r['variant']})" if r.get("variant") else "") == impl), None)
            if r is None:
                cells.append("-")
            elif r["rtfx"] is None:
                cells.append("fail" if "out of memory" not in r.get("note", "") else "OOM")
            else:
                cells.append(f"{r['rtfx']:,.0f}x / {r['peak_gb']} GB")
        lines.append(f"| {model} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--chunks", type=int, default=4)
    pr = sub.add_parser("run")
    pr.add_argument("--out")
    pr.add_argument("--models", default="large-v3-turbo,large-v3")
    pr.add_argument("--batches", default=",".join(map(str, BATCHES)))
    pr.add_argument("--hf-modes", default="eager,static")
    pr.add_argument("--hf-models", default="large-v3-turbo,large-v3")
    pr.add_argument("--variants", default=",".join(VARIANTS))
    pr.add_argument("--hf-timeout", type=int, default=240)
    pr.add_argument("--reps", type=int, default=3)
    pr.add_argument("--skip-check", action="store_true")
    pc = sub.add_parser("hf-child")
    pc.add_argument("--model")
    pc.add_argument("--mode")
    pc.add_argument("--batches")
    pc.add_argument("--reps", type=int)
    pc.add_argument("--child-out")
    pt = sub.add_parser("table")
    pt.add_argument("json")
    pk = sub.add_parser("check")
    pk.add_argument("--out")
    pp2 = sub.add_parser("precision")
    pp2.add_argument("--out")
    pf = sub.add_parser("profile")
    pf.add_argument("--out")
    pw = sub.add_parser("prepare-words")
    pw.add_argument("--dir", required=True)
    pd = sub.add_parser("words")
    pd.add_argument("--dir", required=True)
    pd.add_argument("--out", required=True)
    pm = sub.add_parser("merge")
    pm.add_argument("target")
    pm.add_argument("runs", nargs="+")
    args = p.parse_args()
    if args.cmd == "prepare-words":
        prepare_words(args)
    elif args.cmd == "words":
        words_on_device(args)
    elif args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "run":
        run(args)
    elif args.cmd == "hf-child":
        hf_child(args)
    elif args.cmd == "check":
        out = Path(args.out or os.environ.get("OUT", "."))
        rows = correctness(out)
        (out / "check.json").write_text(json.dumps({"env": _env(), "correctness": rows}, indent=1))
        for r in rows:
            print(f"{r['clip'][:34]:34s} cont=lock {r['continuous_equals_lockstep']} int8=fp16 "
                  f"{r['ours_gpu_int8kv'] == r['ours_gpu']} | {r['ours_gpu'][-60:]!r}")
    elif args.cmd == "profile":
        profile(args)
    elif args.cmd == "precision":
        precision_check(Path(args.out or os.environ.get("OUT", ".")))
    elif args.cmd == "merge":
        print(markdown(merge(args.runs, Path(args.target))))
    else:
        print_table(json.loads(Path(args.json).read_text()))


if __name__ == "__main__":
    main()
