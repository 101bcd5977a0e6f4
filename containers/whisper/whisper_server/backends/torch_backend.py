"""The ``torch`` backend: our PyTorch Whisper (torch_model.py) behind the backend primitives.

The decoding policy (prompt, temperature fallback, no-speech skip, segments, seek, words)
is ``whisper_server.decoding``; this module supplies the primitives: encode, decode a batch
of rows at one temperature with Whisper's logit rules (suppressed tokens, blank suppression,
timestamp pairing / monotonicity / max initial timestamp 1 s / timestamp-probability rule),
and align text tokens with the audio from the alignment heads' cross-attention + DTW
(openai/whisper timing.py). Differences from the reference, on purpose:

* T > 0 draws one sample (best_of 1); beam search is written for batch rows in lockstep
  (no CUDA graph: beams reorder the cache each step);
* the batch decodes in lockstep by default: every row of a call shares one prompt, one KV
  cache and, on CUDA, one CUDA graph per batch bucket for the decode step; continuous
  batching refills finished rows instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from whisper_contract import ModelInfo
from whisper_server.decoding import (MAX_INITIAL_TIMESTAMP, TIME_PRECISION, Alignment, Attempt, Capabilities, Prompt,
                                     WhisperTokenizer, alignment_frames, dtw, suppressed_tokens)
from whisper_server.settings import Settings

from .base import CHUNK_SAMPLES, BackendBase
from .torch_model import PRESETS, Decoder, DecodeState, Dims, Whisper

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GIB = 1 << 30
MAX_BEAM = 10  # whisper_contract.options.MAX_BEAM_SIZE
MEDIAN_FILTER_WIDTH = 7  # openai timing.py
# Cross-attention heads that follow the audio ([layer, head]), from openai/whisper
# __init__.py _ALIGNMENT_HEADS as CTranslate2's converter writes them into config.json
# (the bundled tiny.en and base folders); a model folder's own config.json wins.
ALIGNMENT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny.en": ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    "base": ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
}


def alignment_heads(dims: Dims, configured: Sequence[Sequence[int]] | None = None) -> tuple[tuple[int, int], ...]:
    """The model's own heads, else the known ones for its shape, else openai's default for an
    unknown model: every head of the upper half of the decoder layers."""
    if configured:
        return tuple((int(layer), int(head)) for layer, head in configured)
    for name, preset in PRESETS.items():
        if preset == dims and name in ALIGNMENT_HEADS:
            return ALIGNMENT_HEADS[name]
    return tuple((layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                 for head in range(dims.n_text_head))


# --------------------------------------------------------------------------- memory model

@dataclass(frozen=True)
class Gpu:
    """A serving GPU as the CUDA driver reports it (``total_memory``), and where it comes."""

    name: str
    instance_family: str
    memory_bytes: int


MIB = 1 << 20
# total_memory as nvidia-smi shows it on each SageMaker family (MiB, not the marketing GB).
GPUS: dict[str, Gpu] = {
    "A10G": Gpu("A10G", "ml.g5", 23_028 * MIB),
    "L4": Gpu("L4", "ml.g6", 23_034 * MIB),
    "H100": Gpu("H100", "ml.p5", 81_559 * MIB),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the GPU for a model serving ``batch`` rows (max_batch_size's model)."""

    weights: int
    per_row: int
    batch: int

    @property
    def total(self) -> int:
        return self.weights + self.batch * self.per_row


def parameter_count(dims: Dims) -> int:
    """Whisper's parameters from its shape: per encoder layer 12 d^2 (attention 4 d^2, MLP
    8 d^2), per decoder layer 16 d^2 (plus cross-attention), the token embedding (tied
    output), the two stem convolutions; biases and norms are under 1 % and left out."""
    d_a, d_t = dims.n_audio_state, dims.n_text_state
    return (dims.n_audio_layer * 12 * d_a * d_a + dims.n_text_layer * 16 * d_t * d_t
            + dims.n_vocab * d_t + 3 * dims.n_mels * d_a + 3 * d_a * d_a)


def memory_estimate(dims: Dims, batch: int, dtype_bytes: int = 2, ctx: int = 448,
                    cross_bytes: int | None = None) -> MemoryEstimate:
    """Per row: cross-attention K/V (2 x layers x 1500 x d), self-attention K/V
    (2 x layers x ctx x d), exactly what ``Decoder.new_state`` allocates, and the encoder's
    activations while that row is encoded (about 12 x 1500 x d for the MLP's hidden and the
    residual stream)."""
    cross_bytes = cross_bytes or dtype_bytes
    d_a, d_t = dims.n_audio_state, dims.n_text_state
    per_row = (2 * dims.n_text_layer * dims.n_audio_ctx * d_t * cross_bytes
               + 2 * dims.n_text_layer * ctx * d_t * dtype_bytes
               + 12 * dims.n_audio_ctx * d_a * dtype_bytes)
    return MemoryEstimate(parameter_count(dims) * dtype_bytes, per_row, batch)


def max_batch_size(dims: Dims, gpu_bytes: int, dtype_bytes: int = 2, ctx: int = 448,
                   cross_bytes: int | None = None, reserve_bytes: int = 2 * GIB) -> int:
    """Largest batch bucket whose caches fit beside the weights in ``gpu_bytes``
    (memory_estimate); 10 % of the card and ``reserve_bytes`` stay free for the allocator,
    cuBLAS workspaces and the CUDA graphs. Never below 1."""
    budget = int(gpu_bytes * 0.9) - reserve_bytes
    fits = [b for b in BATCH_BUCKETS
            if memory_estimate(dims, b, dtype_bytes, ctx, cross_bytes).total <= budget]
    return fits[-1] if fits else 1


def _gpu_memory(device: str) -> int:
    return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)


def default_max_batch(dims: Dims, device: str, dtype_bytes: int, cross_int8: bool = False) -> int:
    """On CUDA, the memory model for this card; on the CPU, 8 (batching there buys little)."""
    if device.startswith("cuda"):
        return max_batch_size(dims, _gpu_memory(device), dtype_bytes=dtype_bytes, cross_bytes=1 if cross_int8 else None)
    return 8


def bucket(n: int) -> int:
    return next(b for b in BATCH_BUCKETS if b >= n)


# --------------------------------------------------------------------------- CUDA graphs

class StepRunner:
    """One decode step for a fixed batch and cache; on CUDA, replayed from a CUDA graph."""

    def __init__(self, decoder: Decoder, state: DecodeState, use_graph: bool, per_row: bool = False) -> None:
        self.decoder, self.state = decoder, state
        dev = decoder.positional_embedding.device
        self.tokens = torch.zeros(state.batch, 1, dtype=torch.long, device=dev)
        # Warm-up and capture write their keys/values to the last cache slot, which real
        # steps overwrite before they ever attend to it. per_row: one position per row.
        shape = (state.batch,) if per_row else (1,)
        self.pos = torch.full(shape, state.self_k.shape[3] - 1, dtype=torch.long, device=dev)
        self.graph = None
        if use_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(2):
                    decoder(self.tokens, self.pos, state)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the front end's threads run the VAD on this GPU meanwhile.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
                self.logits = decoder(self.tokens, self.pos, state)

    @torch.no_grad()
    def __call__(self, tokens: Tensor, pos: int | Tensor) -> Tensor:
        if self.graph is None:
            start = pos if isinstance(pos, Tensor) else torch.tensor([pos], device=tokens.device)
            return self.decoder(tokens, start, self.state)
        self.tokens.copy_(tokens)
        if isinstance(pos, Tensor):
            self.pos.copy_(pos)
        else:
            self.pos.fill_(pos)
        self.graph.replay()
        return self.logits


# --------------------------------------------------------------------------- decoding

COMPUTE_TYPES = ("default", "float16", "bfloat16", "float32")


def _load(model_dir: str | Path, *, device: str = "auto", dtype: str | None = None, max_batch: int | None = None,
          name: str | None = None, cross_int8: bool = False, compile_encoder: bool = False) -> dict:
    """Everything TorchBackend's constructor needs, loaded from a model directory."""
    import json

    from .torch_convert import load_model_dir

    model_dir = Path(model_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype not in (None, *COMPUTE_TYPES):
        raise ValueError(f"WHISPER_COMPUTE_TYPE for the torch backend must be one of {COMPUTE_TYPES}, got {dtype!r}")
    torch_dtype = (getattr(torch, dtype) if dtype and dtype != "default"
                   else torch.bfloat16 if device == "cuda" else torch.float32)
    model = load_model_dir(model_dir, device=device, dtype=torch_dtype)
    tokenizer = WhisperTokenizer(model_dir / "tokenizer.json")
    suppress: list[int] = []
    heads = None
    cfg_path = model_dir / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        suppress = cfg.get("suppress_ids") or cfg.get("suppress_tokens") or []
        heads = cfg.get("alignment_heads")
    if max_batch is None:
        max_batch = default_max_batch(model.dims, device, torch_dtype.itemsize, cross_int8)
    if compile_encoder and device == "cuda":
        model.encoder.compile()
    return dict(model=model, tokenizer=tokenizer, name=name or model_dir.name, suppress=suppress,
                max_batch=max_batch, use_graphs=device == "cuda", cross_int8=cross_int8,
                heads=alignment_heads(model.dims, heads))


def _pick(logits: Tensor, first_stamp: int, temperature: float) -> tuple[Tensor, Tensor]:
    """The next token of each row, and the log-probabilities it was drawn from (in place on
    ``logits``). Whisper's rule first: where the timestamps together are likelier than any
    single text token, only a timestamp may follow."""
    logprobs = logits.log_softmax(-1)
    ts_mass = logprobs[:, first_stamp:].logsumexp(-1)
    text_best = logprobs[:, :first_stamp].max(-1).values
    logits[:, :first_stamp].masked_fill_((ts_mass > text_best)[:, None], float("-inf"))
    logprobs = logits.log_softmax(-1)
    if temperature > 0:
        return torch.multinomial((logits / temperature).softmax(-1).nan_to_num(0.0), 1)[:, 0], logprobs
    return logits.argmax(-1), logprobs


class TorchBackend(BackendBase):
    """The torch primitives.

    The server's registry builds it from Settings (``TorchBackend(settings)``: model_dir,
    device, compute_type); code and tests use :meth:`from_model_dir` or pass a loaded model.
    """

    def __init__(self, settings: Settings | None = None, *, model: Whisper | None = None,
                 tokenizer: WhisperTokenizer | None = None, name: str = "", suppress: Sequence[int] = (),
                 max_batch: int = 8, use_graphs: bool = False, cross_int8: bool = False,
                 continuous_batching: bool = True, heads: Sequence[tuple[int, int]] | None = None) -> None:
        if settings is not None:
            loaded = _load(settings.model_dir, device=settings.device, dtype=settings.compute_type,
                           name=settings.label)
            model, tokenizer, name, suppress = loaded["model"], loaded["tokenizer"], loaded["name"], loaded["suppress"]
            max_batch, use_graphs, cross_int8 = loaded["max_batch"], loaded["use_graphs"], loaded["cross_int8"]
            heads = loaded["heads"]
        if model is None or tokenizer is None:
            raise ValueError("TorchBackend needs settings, or a model and its tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.sp = tokenizer.specials
        self.heads = tuple(heads) if heads else alignment_heads(model.dims)
        self.capabilities = Capabilities(multilingual=model.dims.n_vocab >= 51865, word_timestamps=True,
                                         max_beam=MAX_BEAM, timestamps=True)
        self.max_batch = max_batch
        self.use_graphs = use_graphs
        self.cross_int8 = cross_int8
        # Continuous batching: a row whose window is done takes the next one at once instead
        # of idling until the whole batch ends (same tokens as lockstep: tests check it).
        self.continuous = continuous_batching
        self.info = ModelInfo(model=name, backend="torch", version=torch.__version__,
                              device=str(model.device.type), compute_type=str(model.dtype).removeprefix("torch."))
        self._suppress = torch.tensor(suppressed_tokens(tokenizer, suppress), device=model.device)
        self._blank = torch.tensor(tokenizer.encode(" ") + [self.sp.eot], device=model.device)
        self._runners: dict[tuple[int, bool], StepRunner] = {}

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
                       max_batch: int | None = None, name: str | None = None, cross_int8: bool = False,
                       compile_encoder: bool = False, continuous_batching: bool = True) -> "TorchBackend":
        """Load a CTranslate2 (model.bin) or Hugging Face (model.safetensors) Whisper directory.

        device: "cuda", "cpu" or "auto"; dtype: "float16", "bfloat16" or "float32"
        (default bfloat16 on CUDA: on the H100 check fp16 changed one clip's words, bf16 none;
        float32 on CPU); max_batch: default from the memory model;
        cross_int8: int8 cross-attention cache (torch_kernels.py; measured slower than fp16
        on the H100 so far); compile_encoder: torch.compile the encoder blocks (CUDA; the
        first batch of each new size pays the compile).
        """
        return cls(**_load(model_dir, device=device, dtype=dtype, max_batch=max_batch, name=name,
                           cross_int8=cross_int8, compile_encoder=compile_encoder),
                   continuous_batching=continuous_batching)

    # ----------------------------------------------------------------- primitives

    def close(self) -> None:
        self._runners.clear()
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def healthy(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        enc = self.encode([audio])
        state = self.model.decoder.new_state(1, ctx=8)
        self.model.decoder.set_cross(state, enc)
        logits = self.model.decoder(torch.tensor([[self.sp.sot]], device=enc.device),
                                    torch.zeros(1, dtype=torch.long, device=enc.device), state)[0]
        codes = list(self.sp.languages)
        ids = torch.tensor([self.sp.languages[c] for c in codes], device=logits.device)
        probs = logits[ids].softmax(-1)
        best = int(probs.argmax())
        return codes[best], float(probs[best])

    @torch.no_grad()
    def encode(self, chunks: Sequence[np.ndarray]) -> Tensor:
        model = self.model
        audio = torch.zeros(len(chunks), CHUNK_SAMPLES, dtype=torch.float32)
        lengths = torch.zeros(len(chunks), dtype=torch.long)
        for i, c in enumerate(chunks):
            c = np.asarray(c, dtype=np.float32)[:CHUNK_SAMPLES]
            audio[i, : len(c)] = torch.from_numpy(c)
            lengths[i] = len(c)
        mel = model.features(audio.to(model.device, non_blocking=True), lengths)
        return model.encoder(mel)

    @torch.no_grad()
    def decode(self, encoded: Tensor, rows: Sequence[int], prompt: Prompt, temperature: float,
               beam_size: int) -> list[Attempt]:
        tokens = list(prompt.tokens)
        if beam_size > 1 and temperature == 0:
            return [a for i in range(0, len(rows), self.max_batch)
                    for a in self._beam(encoded[list(rows[i:i + self.max_batch])], tokens, prompt.sot_index,
                                        beam_size)]
        if self.continuous:
            return self._decode_stream(encoded, list(rows), tokens, prompt.sot_index, temperature)
        return [a for i in range(0, len(rows), self.max_batch)
                for a in self._decode(encoded[list(rows[i:i + self.max_batch])], tokens, prompt.sot_index, temperature)]

    @torch.no_grad()
    def align(self, encoded: Tensor, rows: Sequence[int], sot_sequence: Sequence[int],
              tokens: Sequence[Sequence[int]], durations: Sequence[float]) -> list[Alignment]:
        """openai timing.py ``find_alignment``: the alignment heads' cross-attention over
        ``sot <|notimestamps|> text eot``, softmax over the frames of the audio, normalised
        per frame, median-filtered, averaged over heads, then DTW."""
        sp = self.sp
        out = []
        for row, text, duration in zip(rows, tokens, durations):
            seq = [*sot_sequence, sp.no_timestamps, *text, sp.eot]
            logits, qks = self.model.decoder.attention_logits(torch.tensor([seq], device=encoded.device),
                                                              encoded[row:row + 1])
            n = len(sot_sequence)
            probs = logits[n:n + len(text), :sp.eot].float().softmax(-1)
            token_probs = probs[torch.arange(len(text)), torch.tensor(text)].tolist()
            frames = alignment_frames(duration) // 2
            weights = torch.stack([qks[layer][head] for layer, head in self.heads])[:, :, :frames].float()
            weights = weights.softmax(-1)
            std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
            weights = _median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH)
            matrix = weights.mean(0)[n:-1]
            text_idx, time_idx = dtw(-matrix.double().cpu().numpy())
            out.append(Alignment(text_idx, time_idx, token_probs))
        return out

    # ----------------------------------------------------------------- internals

    def _beam(self, enc: Tensor, prompt: list[int], sot_index: int, k: int) -> list[Attempt]:
        """Beam search of width ``k`` for each row of ``enc`` (openai decoding.py
        BeamSearchDecoder, patience 1: a row stops once ``k`` sequences have ended; the best
        by sum log-probability / length wins, MaximumLikelihoodRanker without length penalty).
        Eager, no CUDA graph: the cache is reordered every step."""
        n, dec, sp, dev = enc.shape[0], self.model.decoder, self.sp, enc.device
        b = n * k
        state = dec.new_state(b, cross_int8=self.cross_int8)
        dec.set_cross(state, enc.repeat_interleave(k, 0))
        prompt_t = torch.tensor([prompt], device=dev).expand(b, -1)
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        first = dec(prompt_t[:, : sot_index + 1], zero, state)
        no_speech = first.softmax(-1)[::k, sp.no_speech].tolist()
        logits = first if sot_index + 1 == len(prompt) else dec(prompt_t[:, sot_index + 1 :], zero + sot_index + 1, state)
        pos = len(prompt)
        max_new = min(self.model.dims.n_text_ctx // 2, self.model.dims.n_text_ctx - pos)
        seqs: list[tuple[int, ...]] = [()] * b
        sums = [0.0] * b
        done: list[dict[tuple[int, ...], float]] = [{} for _ in range(n)]
        last_ts = torch.ones(b, dtype=torch.bool, device=dev)
        penult_ts = torch.ones(b, dtype=torch.bool, device=dev)
        max_stamp = torch.full((b,), -1, dtype=torch.long, device=dev)
        for step in range(max_new):
            logits = self._rules(logits.float().clone(), torch.full_like(last_ts, step == 0), last_ts, penult_ts,
                                 max_stamp)
            _, logprobs = _pick(logits, sp.timestamp_begin, 0.0)
            top_lp, top_tok = (t.tolist() for t in logprobs.topk(k + 1, -1))
            sources, tokens = [], []
            for i in range(n):
                cands: dict[tuple[int, ...], tuple[float, int, int]] = {}
                for r in range(i * k, i * k + (1 if step == 0 else k)):  # at first all beams are one
                    for lp, tok in zip(top_lp[r], top_tok[r]):
                        if lp > float("-inf"):
                            cands.setdefault(seqs[r] + (tok,), (sums[r] + lp, r, tok))
                kept = []
                for seq, (score, r, tok) in sorted(cands.items(), key=lambda kv: -kv[1][0]):
                    if tok == sp.eot:
                        if len(done[i]) < k:
                            done[i][seq[:-1]] = score
                    else:
                        kept.append((seq, score, r, tok))
                    if len(kept) == k:
                        break
                while len(kept) < k:  # too few live candidates: repeat the best (its result is dropped)
                    kept.append(kept[0] if kept else (seqs[i * k], sums[i * k], i * k, sp.eot))
                for j, (seq, score, r, tok) in enumerate(kept):
                    seqs[i * k + j], sums[i * k + j] = seq, score
                    sources.append(r)
                    tokens.append(tok)
            if all(len(d) >= k for d in done) or step + 1 == max_new:
                break
            src = torch.tensor(sources, device=dev)
            for cache in (state.self_k, state.self_v):
                cache.copy_(cache.index_select(1, src))
            tok_t = torch.tensor(tokens, device=dev)
            stamp = tok_t >= sp.timestamp_begin
            last_ts, penult_ts = stamp, last_ts[src]
            max_stamp = torch.where(stamp, tok_t, max_stamp[src])
            logits = dec(tok_t[:, None], zero + pos + step, state)
        results = []
        for i in range(n):
            finished = done[i] or {seqs[r]: sums[r] for r in range(i * k, (i + 1) * k)}
            seq = max(finished, key=lambda s: finished[s] / max(len(s), 1))
            results.append(Attempt(seq, finished[seq], no_speech[i]))
        return results

    def _rules(self, logits: Tensor, first: Tensor, last_ts: Tensor, penult_ts: Tensor, max_stamp: Tensor) -> Tensor:
        """Whisper's logit rules (openai decoding.py SuppressTokens, SuppressBlank,
        ApplyTimestampRules), per row, in place. ``first``: rows at their first sampled token;
        ``max_stamp``: each row's last timestamp token, -1 for none."""
        sp, neg_inf = self.sp, float("-inf")
        ids = torch.arange(logits.shape[-1], device=logits.device)[None, :]
        is_text, is_stamp = ids < sp.eot, ids >= sp.timestamp_begin
        logits[:, self._suppress] = neg_inf
        logits[:, sp.no_timestamps] = neg_inf
        # The first token is a timestamp of at most MAX_INITIAL_TIMESTAMP.
        late = ids > sp.timestamp_begin + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)
        logits.masked_fill_(first[:, None] & (~is_stamp | late), neg_inf)
        later = ~first
        # Timestamps come in pairs: after a pair only text (or eot); after a lone timestamp
        # only another timestamp or eot.
        logits.masked_fill_((later & last_ts & penult_ts)[:, None] & is_stamp, neg_inf)
        logits.masked_fill_((later & last_ts & ~penult_ts)[:, None] & is_text, neg_inf)
        # Timestamps never go backwards (and a closed pair's end cannot start the next).
        floor = torch.where(last_ts & ~penult_ts, max_stamp, max_stamp + 1)
        floor = torch.where((max_stamp >= 0) & later, floor, torch.zeros_like(floor))
        logits.masked_fill_(is_stamp & (ids < floor[:, None]), neg_inf)
        return logits

    def _runner(self, batch: int, per_row: bool = False) -> StepRunner:
        if (batch, per_row) not in self._runners:
            # One cache + graph per bucket, kept: capture costs more than a chunk's decode.
            state = self.model.decoder.new_state(batch, cross_int8=self.cross_int8)
            self._runners[(batch, per_row)] = StepRunner(self.model.decoder, state, self.use_graphs, per_row)
        return self._runners[(batch, per_row)]

    def _decode_stream(self, encoded: Tensor, ids_todo: list[int], prompt: list[int], sot_index: int,
                       temperature: float) -> list[Attempt]:
        """Decode rows ``ids_todo`` of ``encoded`` with a fixed set of decoder rows that are
        refilled as they finish (continuous batching)."""
        from collections import deque

        dec, sp, dims = self.model.decoder, self.sp, self.model.dims
        dev = self.model.device
        n_rows = min(len(ids_todo), self.max_batch)
        b = bucket(n_rows) if self.use_graphs else n_rows
        runner = self._runner(b, per_row=True)
        state = runner.state
        vocab, tb = dims.n_vocab, sp.timestamp_begin
        prompt_t = torch.tensor([prompt], device=dev)
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        plen = len(prompt)
        max_new = min(dims.n_text_ctx // 2, dims.n_text_ctx - plen)
        out = torch.full((b, max_new), sp.eot, dtype=torch.long, device=dev)
        logits = torch.zeros(b, vocab, device=dev)
        row_step = torch.zeros(b, dtype=torch.long, device=dev)
        pos = torch.full((b,), plen, dtype=torch.long, device=dev)
        sum_lp = torch.zeros(b, device=dev)
        no_speech = torch.zeros(b, device=dev)
        finished = torch.ones(b, dtype=torch.bool, device=dev)  # idle rows count as finished
        last_ts = torch.ones(b, dtype=torch.bool, device=dev)
        penult_ts = torch.ones(b, dtype=torch.bool, device=dev)
        max_stamp = torch.full((b,), -1, dtype=torch.long, device=dev)
        pending = deque(ids_todo)
        row_chunk = [-1] * b
        results: dict[int, Attempt] = {}

        def admit(rows: list[int]) -> None:
            cids = [pending.popleft() for _ in rows]
            enc = encoded[cids]
            for j, (row, cid) in enumerate(zip(rows, cids)):
                r = slice(row, row + 1)
                view = DecodeState(state.self_k[:, r], state.self_v[:, r], state.cross_k[:, r], state.cross_v[:, r],
                                   None if state.cross_ks is None else state.cross_ks[:, r],
                                   None if state.cross_vs is None else state.cross_vs[:, r])
                dec.set_cross(view, enc[j : j + 1])
                first = dec(prompt_t[:, : sot_index + 1], zero, view)
                no_speech[row] = first.softmax(-1)[0, sp.no_speech]
                if sot_index + 1 < plen:
                    first = dec(prompt_t[:, sot_index + 1 :], zero + sot_index + 1, view)
                logits[row] = first[0]
                row_chunk[row] = cid
            r = torch.tensor(rows, device=dev)
            out[r] = sp.eot
            row_step[r] = 0
            pos[r] = plen
            sum_lp[r] = 0
            finished[r] = False
            last_ts[r] = True
            penult_ts[r] = True
            max_stamp[r] = -1

        def harvest() -> None:
            done = [row for row in (finished.nonzero()[:, 0].tolist()) if row_chunk[row] >= 0]
            if not done:
                return
            toks_all, steps, lps, nss = (out[done].tolist(), row_step[done].tolist(), sum_lp[done].tolist(),
                                         no_speech[done].tolist())
            for row, toks, n_steps, lp, ns in zip(done, toks_all, steps, lps, nss):
                toks = toks[:n_steps]
                toks = toks[: toks.index(sp.eot)] if sp.eot in toks else toks
                results[row_chunk[row]] = Attempt(tuple(toks), lp, ns)
                row_chunk[row] = -1
            refill = done[: len(pending)]
            if refill:
                admit(refill)

        admit(list(range(n_rows)))
        step = 0
        while True:
            logits = self._rules(logits.float().clone(), row_step == 0, last_ts, penult_ts, max_stamp)
            token, logprobs = _pick(logits, tb, temperature)
            active = ~finished
            token = torch.where(active, token, torch.full_like(token, sp.eot))
            sum_lp += torch.where(active, logprobs.gather(1, token[:, None])[:, 0], torch.zeros_like(sum_lp))
            out.scatter_(1, row_step.clamp(max=max_new - 1)[:, None], token[:, None])
            row_step += active.long()
            finished |= active & ((token == sp.eot) | (row_step >= max_new))
            stamp = token >= tb
            penult_ts = torch.where(active, last_ts, penult_ts)
            last_ts = torch.where(active, stamp, last_ts)
            max_stamp = torch.where(active & stamp, token, max_stamp)
            logits = runner(token[:, None], pos)
            pos = torch.where(active, (pos + 1).clamp(max=dims.n_text_ctx - 1), pos)
            step += 1
            if step % 8 == 0:  # sync rarely: each check stalls the queue
                harvest()
                if not pending and all(c < 0 for c in row_chunk):
                    break
        return [results[i] for i in ids_todo]

    def _decode(self, enc: Tensor, prompt: list[int], sot_index: int, temperature: float) -> list[Attempt]:
        """Lockstep greedy/sampled decoding of ``enc`` rows with Whisper's logit rules."""
        n = enc.shape[0]
        b = bucket(n) if self.use_graphs else n
        runner = self._runner(b)
        state, dec, dev = runner.state, self.model.decoder, enc.device
        if b > n:  # pad rows repeat the last chunk; their results are dropped
            enc = torch.cat([enc, enc[-1:].expand(b - n, -1, -1)])
        dec.set_cross(state, enc)
        sp = self.sp
        tb = sp.timestamp_begin
        prompt_t = torch.tensor([prompt], device=dev).expand(b, -1)
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        first = dec(prompt_t[:, : sot_index + 1], zero, state)
        no_speech = first.softmax(-1)[:, sp.no_speech]
        logits = first if sot_index + 1 == len(prompt) else dec(prompt_t[:, sot_index + 1 :], zero + sot_index + 1, state)
        pos = len(prompt)
        max_new = min(self.model.dims.n_text_ctx // 2, self.model.dims.n_text_ctx - pos)
        out = torch.full((b, max_new), sp.eot, dtype=torch.long, device=dev)
        sum_lp = torch.zeros(b, device=dev)
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        # openai: "penultimate was a timestamp" is True while fewer than 2 tokens were sampled;
        # starting last_ts at True makes step 1 see that.
        last_ts = torch.ones(b, dtype=torch.bool, device=dev)
        penult_ts = torch.ones(b, dtype=torch.bool, device=dev)
        max_stamp = torch.full((b,), -1, dtype=torch.long, device=dev)  # last timestamp token, -1: none
        for step in range(max_new):
            logits = self._rules(logits.float().clone(), torch.full_like(finished, step == 0), last_ts, penult_ts,
                                 max_stamp)
            token, logprobs = _pick(logits, tb, temperature)
            token = torch.where(finished, torch.full_like(token, sp.eot), token)
            sum_lp += torch.where(finished, torch.zeros_like(sum_lp), logprobs.gather(1, token[:, None])[:, 0])
            out[:, step] = token
            finished |= token == sp.eot
            stamp = token >= tb
            penult_ts = last_ts
            last_ts = stamp
            max_stamp = torch.where(stamp, token, max_stamp)
            if step % 8 == 7 and bool(finished[:n].all()):  # sync rarely: each check stalls the queue
                break
            if step + 1 < max_new:
                logits = runner(token[:, None], pos + step)
        rows = out[:n].tolist()
        lps = sum_lp[:n].tolist()
        nsp = no_speech[:n].tolist()
        results = []
        for toks, lp, ns in zip(rows, lps, nsp):
            toks = toks[: toks.index(sp.eot)] if sp.eot in toks else toks
            results.append(Attempt(tuple(toks), lp, ns))
        return results


def _median_filter(x: Tensor, width: int) -> Tensor:
    """openai timing.py ``median_filter`` over the last dimension (reflect-padded)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = torch.nn.functional.pad(x, (pad, pad, 0, 0), mode="reflect")
    return padded.unfold(-1, width, 1).sort()[0][..., pad]
