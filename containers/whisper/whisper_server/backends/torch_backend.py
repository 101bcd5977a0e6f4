"""The ``torch`` backend: our PyTorch Whisper (torch_model.py) behind the Backend protocol.

Decoding follows openai/whisper's reference (decoding.py, transcribe.py) for one 30 s
window: the same suppressed tokens, timestamp rules, temperature fallback on compression
ratio / average log-probability, and the no-speech skip. Differences, on purpose:

* temperature 0 is greedy (``beam_size`` is not used) and T > 0 draws one sample (best_of 1):
  beams multiply the cross-attention reads that bound throughput;
* no word timestamps (``Segment.words`` stays None);
* the batch decodes in lockstep: every chunk of a call shares one prompt, one KV cache and,
  on CUDA, one CUDA graph per batch bucket for the decode step.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from whisper_contract import ContractError, ErrorCode, ModelInfo, Segment
from whisper_server.settings import Settings

from .base import CHUNK_SAMPLES, DecodeOptions
from .torch_model import Decoder, DecodeState, Dims, Whisper

# openai/whisper transcribe() defaults.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_INITIAL_TIMESTAMP = 1.0
TIME_PRECISION = 0.02
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_WINDOWS_PER_CHUNK = 8  # seek rounds per chunk: each round moves forward by >= one closed segment
MIN_TAIL_S = 0.1  # a shorter rest of a chunk cannot hold a word
GIB = 1 << 30


# --------------------------------------------------------------------------- memory model

def max_batch_size(dims: Dims, gpu_bytes: int, dtype_bytes: int = 2, ctx: int = 448,
                   cross_bytes: int | None = None, reserve_bytes: int = 2 * GIB) -> int:
    """Largest batch bucket whose caches fit beside the weights in ``gpu_bytes``.

    Per sequence: cross-attention K/V (2 x layers x 1500 x d), self-attention K/V
    (2 x layers x ctx x d), and the encoder's activations while that row is encoded
    (about 12 x 1500 x d for the MLP's hidden and the residual stream). 10 % of the card
    and ``reserve_bytes`` stay free for the allocator, cuBLAS workspaces and the graphs.
    """
    cross_bytes = cross_bytes or dtype_bytes
    d_a, d_t = dims.n_audio_state, dims.n_text_state
    params = (dims.n_audio_layer * 12 * d_a * d_a + dims.n_text_layer * 16 * d_t * d_t
              + dims.n_vocab * d_t + 3 * dims.n_mels * d_a + 3 * d_a * d_a)
    per_seq = (2 * dims.n_text_layer * dims.n_audio_ctx * d_t * cross_bytes
               + 2 * dims.n_text_layer * ctx * d_t * dtype_bytes
               + 12 * dims.n_audio_ctx * d_a * dtype_bytes)
    free = int(gpu_bytes * 0.9) - params * dtype_bytes - reserve_bytes
    fits = [b for b in BATCH_BUCKETS if b * per_seq <= free]
    return fits[-1] if fits else 1


def bucket(n: int) -> int:
    return next(b for b in BATCH_BUCKETS if b >= n)


# --------------------------------------------------------------------------- tokenizer

@dataclass(frozen=True)
class Specials:
    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # "en" -> token id


class Tokenizer:
    """Whisper's byte-level BPE (tokenizer.json) and its special tokens."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        tid = self._tok.token_to_id
        no_speech = tid("<|nospeech|>")
        if no_speech is None:
            no_speech = tid("<|nocaptions|>")
        no_ts = tid("<|notimestamps|>")
        ts0 = tid("<|0.00|>")
        sot, translate = tid("<|startoftranscript|>"), tid("<|translate|>")
        langs = {}
        for i in range(sot + 1, translate):
            token = self._tok.id_to_token(i)
            if token and token.startswith("<|") and token.endswith("|>"):
                langs[token[2:-2]] = i
        self.specials = Specials(
            eot=tid("<|endoftext|>"), sot=sot, translate=translate, transcribe=tid("<|transcribe|>"),
            sot_lm=tid("<|startoflm|>"), sot_prev=tid("<|startofprev|>"), no_speech=no_speech,
            no_timestamps=no_ts, timestamp_begin=ts0 if ts0 is not None else no_ts + 1, languages=langs)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([i for i in ids if i < self.specials.eot])


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
            with torch.cuda.graph(self.graph), torch.no_grad():
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

@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # sampled tokens, without the final end-of-text
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(gzip.compress(raw)) if raw else 0.0


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
    tokenizer = Tokenizer(model_dir / "tokenizer.json")
    suppress: list[int] = []
    cfg_path = model_dir / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        suppress = cfg.get("suppress_ids") or cfg.get("suppress_tokens") or []
    if max_batch is None:
        if device == "cuda":
            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            max_batch = max_batch_size(model.dims, total, dtype_bytes=torch_dtype.itemsize,
                                       cross_bytes=1 if cross_int8 else None)
        else:
            max_batch = 8
    if compile_encoder and device == "cuda":
        model.encoder.compile()
    return dict(model=model, tokenizer=tokenizer, name=name or model_dir.name, suppress=suppress,
                max_batch=max_batch, use_graphs=device == "cuda", cross_int8=cross_int8)


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


def _needs_fallback(d: "Decoded") -> bool:
    """Whisper's rule: retry hotter when the text repeats itself or is unlikely, unless the
    window is silence anyway."""
    failed = d.compression_ratio > COMPRESSION_RATIO_THRESHOLD or d.avg_logprob < LOGPROB_THRESHOLD
    silent = d.no_speech_prob > NO_SPEECH_THRESHOLD and d.avg_logprob < LOGPROB_THRESHOLD
    return failed and not silent


class TorchBackend:
    """Backend protocol implementation.

    The server's registry builds it from Settings (``TorchBackend(settings)``: model_dir,
    device, compute_type); code and tests use :meth:`from_model_dir` or pass a loaded model.
    """

    def __init__(self, settings: Settings | None = None, *, model: Whisper | None = None,
                 tokenizer: Tokenizer | None = None, name: str = "", suppress: Sequence[int] = (),
                 max_batch: int = 8, use_graphs: bool = False, cross_int8: bool = False,
                 continuous_batching: bool = False) -> None:
        if settings is not None:
            loaded = _load(settings.model_dir, device=settings.device, dtype=settings.compute_type,
                           name=settings.label)
            model, tokenizer, name, suppress = loaded["model"], loaded["tokenizer"], loaded["name"], loaded["suppress"]
            max_batch, use_graphs, cross_int8 = loaded["max_batch"], loaded["use_graphs"], loaded["cross_int8"]
        if model is None or tokenizer is None:
            raise ValueError("TorchBackend needs settings, or a model and its tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.sp = tokenizer.specials
        self.multilingual = model.dims.n_vocab >= 51865
        self.word_timestamps = False  # no cross-attention aligner yet
        self.max_batch = max_batch
        self.use_graphs = use_graphs
        self.cross_int8 = cross_int8
        # Continuous batching: a row whose chunk is done takes the next chunk at once instead
        # of idling until the whole batch ends. Verified on CPU only so far; the lockstep path
        # (False) is the one measured and checked on the H100.
        self.continuous = continuous_batching
        self.info = ModelInfo(model=name, backend="torch", version=torch.__version__,
                              device=str(model.device.type), compute_type=str(model.dtype).removeprefix("torch."))
        sp = self.sp
        self._suppress = torch.tensor(sorted(set(suppress) | {sp.translate, sp.transcribe, sp.sot, sp.sot_prev,
                                                              sp.sot_lm, sp.no_speech}), device=model.device)
        self._blank = torch.tensor(tokenizer.encode(" ") + [sp.eot], device=model.device)
        self._runners: dict[int, StepRunner] = {}

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
                       max_batch: int | None = None, name: str | None = None, cross_int8: bool = False,
                       compile_encoder: bool = False, continuous_batching: bool = False) -> "TorchBackend":
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

    # ----------------------------------------------------------------- protocol

    def close(self) -> None:
        self._runners.clear()
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        enc = self._encode([audio])
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
    def transcribe_chunks(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
        """Every chunk to the end: where the model stops early after a closed segment, the
        rest of that chunk is decoded as a new window (openai's seek), so no speech is lost."""
        if options.word_timestamps:
            # Refused rather than silently answered without words: nothing may be dropped quietly.
            raise ContractError(ErrorCode.BAD_OPTION,
                                "word_timestamps is not available with the torch backend yet; "
                                "use the faster-whisper backend")
        results: list[list[Segment]] = [[] for _ in chunks]
        todo = [(i, 0.0, np.asarray(c, dtype=np.float32)[:CHUNK_SAMPLES]) for i, c in enumerate(chunks)]
        for _ in range(MAX_WINDOWS_PER_CHUNK):
            if not todo:
                break
            windows = self._windows([w for _, _, w in todo], options)
            nxt = []
            for (i, offset, audio), (segments, resume) in zip(todo, windows):
                base = len(results[i])
                results[i].extend([s.shifted(offset, base + j) for j, s in enumerate(segments)])
                if resume is not None and resume > 0 and len(audio) / 16_000 - resume > MIN_TAIL_S:
                    nxt.append((i, round(offset + resume, 3), audio[int(resume * 16_000) :]))
            todo = nxt
        return results

    def _windows(self, chunks: list[np.ndarray], options: DecodeOptions) -> list[tuple[list[Segment], float | None]]:
        if self.continuous:
            return self._transcribe_stream(chunks, options)
        out: list[tuple[list[Segment], float | None]] = []
        for i in range(0, len(chunks), self.max_batch):
            out.extend(self._transcribe_batch(chunks[i : i + self.max_batch], options))
        return out

    # ----------------------------------------------------------------- internals

    def prompt(self, options: DecodeOptions) -> tuple[list[int], int]:
        """Prompt tokens and the index of <|startoftranscript|> in them."""
        sp = self.sp
        tokens: list[int] = []
        context = " ".join(t.strip() for t in (options.hotwords, options.initial_prompt) if t and t.strip())
        if context:
            # openai keeps the last n_text_ctx // 2 - 1 prompt tokens.
            tokens = [sp.sot_prev] + self.tokenizer.encode(" " + context)[-(self.model.dims.n_text_ctx // 2 - 1):]
        sot_index = len(tokens)
        tokens.append(sp.sot)
        if self.multilingual:
            if options.language not in sp.languages:
                raise ValueError(f"language {options.language!r} is not known to this model")
            tokens += [sp.languages[options.language], sp.translate if options.task == "translate" else sp.transcribe]
        return tokens, sot_index

    def _encode(self, chunks: Sequence[np.ndarray]) -> Tensor:
        model = self.model
        audio = torch.zeros(len(chunks), CHUNK_SAMPLES, dtype=torch.float32)
        lengths = torch.zeros(len(chunks), dtype=torch.long)
        for i, c in enumerate(chunks):
            c = np.asarray(c, dtype=np.float32)[:CHUNK_SAMPLES]
            audio[i, : len(c)] = torch.from_numpy(c)
            lengths[i] = len(c)
        mel = model.features(audio.to(model.device, non_blocking=True), lengths)
        return model.encoder(mel)

    def _transcribe_batch(self, chunks: list[np.ndarray], options: DecodeOptions) -> list[tuple[list[Segment], float | None]]:
        enc = self._encode(chunks)
        prompt, sot_index = self.prompt(options)
        results: list[Decoded | None] = [None] * len(chunks)
        todo = list(range(len(chunks)))
        temps = options.temperatures or (0.0,)
        for n, temperature in enumerate(temps):
            decoded = self._decode(enc[todo], prompt, sot_index, temperature)
            retry = []
            for row, d in zip(todo, decoded):
                results[row] = d
                if _needs_fallback(d) and n + 1 < len(temps):
                    retry.append(row)
            todo = retry
            if not todo:
                break
        return [self._segments(d, len(c) / 16_000) for d, c in zip(results, chunks)]  # type: ignore[arg-type]

    def _segments(self, d: Decoded, duration: float) -> tuple[list[Segment], float | None]:
        """Segments of one window, and where to resume decoding (openai's seek) when the
        model closed a segment and stopped before the window's end, else None."""
        if d.no_speech_prob > NO_SPEECH_THRESHOLD and d.avg_logprob < LOGPROB_THRESHOLD:
            return [], None  # openai's silence skip
        tb = self.sp.timestamp_begin
        toks = d.tokens
        is_ts = [t >= tb for t in toks]
        cuts = [i for i in range(1, len(toks)) if is_ts[i] and is_ts[i - 1]]
        pieces: list[tuple[float, float, list[int]]] = []
        resume = None
        if cuts:
            if len(toks) >= 2 and not is_ts[-2] and is_ts[-1]:
                cuts.append(len(toks))  # ends on a closed segment: the window is done
            else:  # whatever follows the last closed segment is decoded again from there
                resume = (toks[cuts[-1] - 1] - tb) * TIME_PRECISION
            last = 0
            for cut in cuts:
                part = toks[last:cut]
                pieces.append(((part[0] - tb) * TIME_PRECISION, (part[-1] - tb) * TIME_PRECISION, part))
                last = cut
        else:
            stamps = [t for t in toks if t >= tb]
            end = (stamps[-1] - tb) * TIME_PRECISION if stamps and stamps[-1] != tb else duration
            pieces.append((0.0, end, toks))
        segments = []
        for start, end, part in pieces:
            text = self.tokenizer.decode([t for t in part if t < self.sp.eot])
            if not text.strip():
                continue
            segments.append(Segment(id=len(segments), start=round(start, 3), end=round(max(end, start), 3),
                                    text=text, avg_logprob=d.avg_logprob, no_speech_prob=d.no_speech_prob))
        return segments, resume

    def _runner(self, batch: int, per_row: bool = False) -> StepRunner:
        if (batch, per_row) not in self._runners:
            # One cache + graph per bucket, kept: capture costs more than a chunk's decode.
            state = self.model.decoder.new_state(batch, cross_int8=self.cross_int8)
            self._runners[(batch, per_row)] = StepRunner(self.model.decoder, state, self.use_graphs, per_row)
        return self._runners[(batch, per_row)]

    # ----------------------------------------------------------------- continuous batching

    def _transcribe_stream(self, chunks: list[np.ndarray], options: DecodeOptions) -> list[tuple[list[Segment], float | None]]:
        prompt, sot_index = self.prompt(options)
        results: dict[int, Decoded] = {}
        todo = list(range(len(chunks)))
        temps = options.temperatures or (0.0,)
        for n, temperature in enumerate(temps):
            decoded = self._decode_stream(chunks, todo, prompt, sot_index, temperature)
            retry = []
            for i in todo:
                d = results[i] = decoded[i]
                if _needs_fallback(d) and n + 1 < len(temps):
                    retry.append(i)
            todo = retry
            if not todo:
                break
        return [self._segments(results[i], len(c) / 16_000) for i, c in enumerate(chunks)]

    def _decode_stream(self, chunks: list[np.ndarray], ids_todo: list[int], prompt: list[int], sot_index: int,
                       temperature: float) -> dict[int, Decoded]:
        """Decode chunks ``ids_todo`` with a fixed set of rows that are refilled as they finish."""
        from collections import deque

        dec, sp, dims = self.model.decoder, self.sp, self.model.dims
        dev = self.model.device
        n_rows = min(len(ids_todo), self.max_batch)
        b = bucket(n_rows) if self.use_graphs else n_rows
        runner = self._runner(b, per_row=True)
        state = runner.state
        vocab, tb = dims.n_vocab, sp.timestamp_begin
        ids = torch.arange(vocab, device=dev)
        is_text, is_stamp = ids[None, :] < sp.eot, ids[None, :] >= tb
        is_blank = torch.zeros(vocab, dtype=torch.bool, device=dev)
        is_blank[self._blank] = True
        late_stamp = ids[None, :] > tb + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)
        prompt_t = torch.tensor([prompt], device=dev)
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        plen = len(prompt)
        max_new = min(dims.n_text_ctx // 2, dims.n_text_ctx - plen)
        neg_inf = float("-inf")
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
        results: dict[int, Decoded] = {}

        def admit(rows: list[int]) -> None:
            cids = [pending.popleft() for _ in rows]
            enc = self._encode([chunks[c] for c in cids])
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
                text = self.tokenizer.decode([t for t in toks if t < sp.eot])
                results[row_chunk[row]] = Decoded(toks, lp / (len(toks) + 1), ns, compression_ratio(text), temperature)
                row_chunk[row] = -1
            refill = done[: len(pending)]
            if refill:
                admit(refill)

        admit(list(range(n_rows)))
        step = 0
        while True:
            first = (row_step == 0)[:, None]
            logits = logits.float().clone()
            logits[:, self._suppress] = neg_inf
            logits[:, sp.no_timestamps] = neg_inf
            logits.masked_fill_(first & (is_blank[None, :] | is_text | late_stamp), neg_inf)
            later = ~first[:, 0]
            logits.masked_fill_((later & last_ts & penult_ts)[:, None] & is_stamp, neg_inf)
            logits.masked_fill_((later & last_ts & ~penult_ts)[:, None] & is_text, neg_inf)
            floor = torch.where(last_ts & ~penult_ts, max_stamp, max_stamp + 1)
            floor = torch.where((max_stamp >= 0) & later, floor, torch.zeros_like(floor))
            logits.masked_fill_(is_stamp & (ids[None, :] < floor[:, None]), neg_inf)
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
        return results

    def _decode(self, enc: Tensor, prompt: list[int], sot_index: int, temperature: float) -> list[Decoded]:
        """Lockstep greedy/sampled decoding of ``enc`` rows with Whisper's logit rules."""
        n = enc.shape[0]
        b = bucket(n) if self.use_graphs else n
        runner = self._runner(b)
        state, dec, dev = runner.state, self.model.decoder, enc.device
        if b > n:  # pad rows repeat the last chunk; their results are dropped
            enc = torch.cat([enc, enc[-1:].expand(b - n, -1, -1)])
        dec.set_cross(state, enc)
        sp = self.sp
        vocab = self.model.dims.n_vocab
        ids = torch.arange(vocab, device=dev)
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
        neg_inf = float("-inf")
        for step in range(max_new):
            logits = logits.float().clone()
            logits[:, self._suppress] = neg_inf
            logits[:, sp.no_timestamps] = neg_inf
            if step == 0:
                logits[:, self._blank] = neg_inf
                logits[:, :tb] = neg_inf  # the first token is a timestamp ...
                logits[:, tb + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION) + 1 :] = neg_inf  # ... <= 1 s
            else:
                is_text = ids[None, :] < sp.eot
                is_stamp = ids[None, :] >= tb
                # Timestamps come in pairs: after a pair only text (or eot); after a lone
                # timestamp only another timestamp or eot.
                logits.masked_fill_((last_ts & penult_ts)[:, None] & is_stamp, neg_inf)
                logits.masked_fill_((last_ts & ~penult_ts)[:, None] & is_text, neg_inf)
                # Timestamps never go backwards (and a closed pair's end cannot start the next).
                floor = torch.where(last_ts & ~penult_ts, max_stamp, max_stamp + 1)
                floor = torch.where(max_stamp >= 0, floor, torch.zeros_like(floor))
                logits.masked_fill_(is_stamp & (ids[None, :] < floor[:, None]), neg_inf)
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
            text = self.tokenizer.decode([t for t in toks if t < sp.eot])
            results.append(Decoded(toks, lp / (len(toks) + 1), ns, compression_ratio(text), temperature))
        return results
