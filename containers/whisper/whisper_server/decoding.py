"""Whisper's decoding policy, written once for every backend.

The shape is openai/whisper's (decoding.py ``DecodingTask``, transcribe.py
``decode_with_fallback``, timing.py): a backend supplies only primitives (encode a batch of
<=30 s windows, decode rows of it with a prompt at one temperature, align text tokens with
the audio) and declares what it can do in ``Capabilities``; everything that is *decided*
about a window lives here: the prompt and how it is cut to the model's context, the
temperature fallback, the no-speech skip, repetition loops, cutting segments at timestamp
tokens, resuming after a window the model closed early, and turning an alignment into
words. So the same clip gets the same decision on every backend, and a decoding bug is
fixed in one place. The per-token logit rules (suppressed tokens, timestamp pairing,
initial timestamp <= 1 s) run inside the backends' token loops, where the logits are; the
constants they use are defined here.
"""

from __future__ import annotations

import logging
import string
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from whisper_contract import ContractError, ErrorCode, ModelInfo, Segment, Word

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS
N_TEXT_CTX = 448  # decoder positions of every published Whisper model
TIME_PRECISION = 0.02  # seconds per timestamp token
TOKENS_PER_SECOND = 50  # encoder frames per second (timing.py)
MAX_INITIAL_TIMESTAMP = 1.0  # openai decoding.py: the first timestamp is at most 1 s
# openai/whisper transcribe.py's temperature schedule.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_WINDOWS_PER_CHUNK = 8  # seek rounds per chunk: each moves forward by >= one closed segment
MIN_TAIL_S = 0.1  # a shorter rest of a window cannot hold a word
# A loop the compression ratio misses on a short window: one phrase of up to MAX_LOOP_WORDS
# words said MIN_LOOP_REPEATS times in a row ("the the the the the the ...").
MAX_LOOP_WORDS = 8
MIN_LOOP_REPEATS = 6
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = set(".?!。？！")
TITLES = {"Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Prof.", "Jr.", "Sr."}  # a full stop that ends no sentence
PAUSE_S = 1.0
MAX_SEGMENT_S = 12.0
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}  # words split at unicode points (timing.py)


# --------------------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Thresholds:
    """openai/whisper transcribe() defaults."""

    compression_ratio: float = 2.4
    logprob: float = -1.0
    no_speech: float = 0.6


THRESHOLDS = Thresholds()


def compression_ratio(text: str) -> float:
    """openai/whisper utils.compression_ratio: UTF-8 bytes over zlib-compressed bytes."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def is_silence(avg_logprob: float, no_speech_prob: float, th: Thresholds = THRESHOLDS) -> bool:
    """openai transcribe.py: a window is skipped as silence when <|nospeech|> is likely and
    the text unlikely."""
    return no_speech_prob > th.no_speech and avg_logprob < th.logprob


def needs_fallback(avg_logprob: float, ratio: float, no_speech_prob: float, th: Thresholds = THRESHOLDS) -> bool:
    """openai/whisper transcribe.py ``decode_with_fallback`` (v20240930): retry at the next
    temperature when the text is too repetitive (compression ratio) OR too unlikely (average
    log-probability), except when the window is silence (``is_silence``): then it is skipped."""
    failed = ratio > th.compression_ratio or avg_logprob < th.logprob
    return failed and not is_silence(avg_logprob, no_speech_prob, th)


def loops(text: str, th: Thresholds = THRESHOLDS) -> bool:
    """The text repeats itself: Whisper's compression-ratio test, or a short phrase said
    ``MIN_LOOP_REPEATS`` times in a row (too short a text for zlib to show it)."""
    if compression_ratio(text) > th.compression_ratio:
        return True
    words = text.lower().split()
    for n in range(1, MAX_LOOP_WORDS + 1):
        span = n * MIN_LOOP_REPEATS
        for start in range(0, len(words) - span + 1):
            phrase = words[start:start + n]
            if all(words[start + k * n:start + (k + 1) * n] == phrase for k in range(1, MIN_LOOP_REPEATS)):
                return True
    return False


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


class WhisperTokenizer:
    """Whisper's byte-level BPE (the model folder's tokenizer.json) and its special tokens."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        tid = self._tok.token_to_id
        no_speech = tid("<|nospeech|>")
        if no_speech is None:
            no_speech = tid("<|nocaptions|>")
        no_ts = tid("<|notimestamps|>")
        sot, translate = tid("<|startoftranscript|>"), tid("<|translate|>")
        langs = {}
        for i in range(sot + 1, translate):
            token = self._tok.id_to_token(i)
            if token and token.startswith("<|") and token.endswith("|>"):
                langs[token[2:-2]] = i
        self.specials = Specials(
            eot=tid("<|endoftext|>"), sot=sot, translate=translate, transcribe=tid("<|transcribe|>"),
            sot_lm=tid("<|startoflm|>"), sot_prev=tid("<|startofprev|>"), no_speech=no_speech,
            # timestamps follow <|notimestamps|>; not every tokenizer.json lists them
            no_timestamps=no_ts, timestamp_begin=no_ts + 1, languages=langs)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([i for i in ids if i < self.specials.eot])

    def sot_sequence(self, language: str, task: str, multilingual: bool) -> list[int]:
        sp = self.specials
        if not multilingual:
            return [sp.sot]
        if language not in sp.languages:
            raise ValueError(f"language {language!r} is not known to this model")
        return [sp.sot, sp.languages[language], sp.translate if task == "translate" else sp.transcribe]

    def split_to_word_tokens(self, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
        """openai timing.py / faster-whisper tokenizer.py: words of ``tokens`` (ending in eot)."""
        subwords, subword_tokens = self._split_on_unicode(tokens)
        if language in NO_SPACE_LANGUAGES:
            return subwords, subword_tokens
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, toks in zip(subwords, subword_tokens):
            if toks[0] >= self.specials.eot or subword.startswith(" ") or subword.strip() in string.punctuation \
                    or not words:
                words.append(subword)
                word_tokens.append(list(toks))
            else:
                words[-1] += subword
                word_tokens[-1].extend(toks)
        return words, word_tokens

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        full = self.decode(tokens)
        words, word_tokens, current, offset = [], [], [], 0
        for token in tokens:
            current.append(token)
            decoded = self.decode(current)
            bad = decoded.find("\ufffd")
            if bad < 0 or (offset + bad < len(full) and full[offset + bad] == "\ufffd"):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens


def suppressed_tokens(tokenizer: WhisperTokenizer, model_ids: Sequence[int]) -> list[int]:
    """Tokens never sampled: the model's list (config.json ``suppress_ids``, openai's
    non-speech symbols) and the special tokens that only a prompt may hold (openai decoding.py
    ``_get_suppress_tokens``)."""
    sp = tokenizer.specials
    return sorted(set(t for t in model_ids if t >= 0)
                  | {sp.translate, sp.transcribe, sp.sot, sp.sot_prev, sp.sot_lm, sp.no_speech})


# --------------------------------------------------------------------------- the prompt

@dataclass(frozen=True)
class Prompt:
    """The decoder prompt: ``[<|startofprev|> context] <|sot|> [<|lang|> <|task|>] [<|notimestamps|>]``."""

    tokens: tuple[int, ...]
    sot_index: int  # where <|startoftranscript|> is: <|nospeech|> is read from the logits there
    context: str  # the context text that was kept (backends that take text, not tokens)
    language: str
    task: str
    timestamps: bool

    @property
    def sot_sequence(self) -> tuple[int, ...]:
        """``<|sot|> [<|lang|> <|task|>]``: what alignment starts from (no context)."""
        end = len(self.tokens) - (0 if self.timestamps else 1)
        return self.tokens[self.sot_index:end]


def build_prompt(tokenizer: WhisperTokenizer, *, language: str, task: str, multilingual: bool,
                 timestamps: bool, initial_prompt: str | None = None, hotwords: str | None = None,
                 previous: Sequence[int] = (), max_context: int = N_TEXT_CTX // 2 - 1) -> Prompt:
    """Hotwords, then the initial prompt, then the previous window's text, as context.

    Whisper keeps at most ``n_text_ctx // 2 - 1`` (223) context tokens, so that half the
    decoder's positions stay for the output (openai decoding.py ``_get_initial_tokens``).
    Past that, the oldest context goes first (the prompt's start, as Whisper does), and
    hotwords are cut at their end only when they alone do not fit.
    """
    sp = tokenizer.specials
    hot = tokenizer.encode(" " + hotwords.strip()) if hotwords and hotwords.strip() else []
    text = tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt and initial_prompt.strip() else []
    hot = hot[:max_context]
    later = (text + [t for t in previous if t < sp.eot])[-(max_context - len(hot)):] if max_context > len(hot) else []
    context = hot + later
    tokens = [sp.sot_prev, *context] if context else []
    sot_index = len(tokens)
    tokens += tokenizer.sot_sequence(language, task, multilingual)
    if not timestamps:
        tokens.append(sp.no_timestamps)
    return Prompt(tuple(tokens), sot_index, tokenizer.decode(context).strip(), language, task, timestamps)


# --------------------------------------------------------------------------- backend protocol

@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once; the server refuses what it cannot do."""

    multilingual: bool
    word_timestamps: bool
    max_beam: int  # 1: greedy only; a larger beam_size is served with this many beams
    timestamps: bool = True  # decodes timestamp tokens: segments are cut at them
    max_context_tokens: int = N_TEXT_CTX // 2 - 1  # prompt/hotwords/previous-text tokens it takes


@dataclass(frozen=True)
class DecodeOptions:
    """What reaches the decoder: already validated, language already resolved."""

    language: str  # resolved: detection happens once per file, before decoding
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    condition_on_previous_text: bool = False  # a seek window gets the text before it as context
    temperatures: tuple[float, ...] = TEMPERATURES


@dataclass(frozen=True)
class Attempt:
    """One row decoded at one temperature: what a backend's ``decode`` returns."""

    tokens: tuple[int, ...]  # sampled tokens, without the prompt and the final end-of-text
    sum_logprob: float
    no_speech_prob: float
    length: int | None = None  # tokens the log-probabilities were summed over, if not len(tokens)

    @property
    def avg_logprob(self) -> float:
        # openai decoding.py: sum / (len + 1), the end-of-text token counted
        return self.sum_logprob / ((self.length if self.length is not None else len(self.tokens)) + 1)


@dataclass(frozen=True)
class Alignment:
    """A DTW path through (text token, audio frame), as openai timing.py ``dtw`` returns it,
    for the text tokens followed by end-of-text; and each text token's probability."""

    text_indices: np.ndarray
    time_indices: np.ndarray
    token_probs: Sequence[float]


@runtime_checkable
class Backend(Protocol):
    info: ModelInfo
    capabilities: Capabilities
    tokenizer: WhisperTokenizer

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Most likely language of up to 30 s of audio, and its probability."""
        ...

    def encode(self, chunks: Sequence[np.ndarray]) -> Any:
        """Whatever ``decode`` and ``align`` need of these <=30 s chunks (the encoder output)."""
        ...

    def decode(self, encoded: Any, rows: Sequence[int], prompt: Prompt, temperature: float,
               beam_size: int) -> list[Attempt]:
        """Decode rows ``rows`` of ``encoded``, each after ``prompt``, applying Whisper's logit
        rules (suppressed tokens, blank at start, timestamp rules when ``prompt.timestamps``)."""
        ...

    def align(self, encoded: Any, rows: Sequence[int], sot_sequence: Sequence[int],
              tokens: Sequence[Sequence[int]], durations: Sequence[float]) -> list[Alignment]:
        """Text tokens against the audio (only where ``capabilities.word_timestamps``)."""
        ...

    def healthy(self) -> bool:
        ...

    def close(self) -> None:
        ...


# --------------------------------------------------------------------------- segments

@dataclass(frozen=True)
class Window:
    """The decision for one window."""

    attempt: Attempt
    temperature: float
    text: str
    looped: bool  # still repeating itself at the last temperature
    silent: bool


def cut_at_timestamps(tokens: Sequence[int], timestamp_begin: int,
                      duration: float) -> tuple[list[tuple[float, float, list[int]]], float | None]:
    """Segments (start, end, tokens) of one window, cut where two timestamp tokens follow
    each other (openai transcribe.py), and where to resume decoding (seek) when the model
    closed a segment and then stopped before the window's end, else None."""
    toks = list(tokens)
    is_ts = [t >= timestamp_begin for t in toks]
    cuts = [i for i in range(1, len(toks)) if is_ts[i] and is_ts[i - 1]]
    pieces: list[tuple[float, float, list[int]]] = []
    resume = None

    def at(token: int) -> float:
        return round((token - timestamp_begin) * TIME_PRECISION, 3)

    if cuts:
        if len(toks) >= 2 and not is_ts[-2] and is_ts[-1]:
            cuts.append(len(toks))  # ends on a closed segment: the window is done
        else:  # whatever follows the last closed segment is decoded again from there
            resume = at(toks[cuts[-1] - 1])
        last = 0
        for cut in cuts:
            part = toks[last:cut]
            pieces.append((at(part[0]), at(part[-1]), part))
            last = cut
    else:
        stamps = [t for t in toks if t >= timestamp_begin]
        end = at(stamps[-1]) if stamps and stamps[-1] != timestamp_begin else duration
        start = at(toks[0]) if toks and is_ts[0] else 0.0
        pieces.append((start, end, toks))
    return [(min(s, duration), min(max(e, s), duration), p) for s, e, p in pieces], resume


def split_sentences(words: list[Word]) -> list[list[Word]]:
    """Group a window's words into subtitle-sized segments: at sentence ends, at pauses, and
    before a segment grows past ``MAX_SEGMENT_S`` (for backends that decode without
    timestamp tokens)."""
    groups: list[list[Word]] = [[]]
    for i, word in enumerate(words):
        current = groups[-1]
        if current and (word.start - current[-1].end > PAUSE_S or word.end - current[0].start > MAX_SEGMENT_S):
            groups.append([])
        groups[-1].append(word)
        stripped = word.word.strip()
        if stripped[-1:] in SENTENCE_END and stripped not in TITLES and i + 1 < len(words):
            groups.append([])
    return [g for g in groups if g]


def merge_punctuations(alignment: list[dict], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """openai timing.py: leading punctuation joins the next word, trailing the previous."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous["word"].startswith(" ") and previous["word"].strip() in prepended:
            following["word"] = previous["word"] + following["word"]
            following["tokens"] = previous["tokens"] + following["tokens"]
            previous["word"], previous["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous["word"].endswith(" ") and following["word"] in appended:
            previous["word"] = previous["word"] + following["word"]
            previous["tokens"] = previous["tokens"] + following["tokens"]
            following["word"], following["tokens"] = "", []
        else:
            i = j
        j += 1


def words_from_alignment(tokenizer: WhisperTokenizer, text_tokens: list[int], alignment: Alignment,
                         language: str) -> list[dict]:
    """openai timing.py ``find_alignment`` + the sentence-boundary clamp of
    ``add_word_timestamps``: word dicts (word, tokens, start, end, probability), window-relative."""
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.specials.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(alignment.text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = alignment.time_indices[jumps] / TOKENS_PER_SECOND
    probs = np.asarray(alignment.token_probs, dtype=np.float64)
    out = [dict(word=w, tokens=t, start=float(jump_times[i]), end=float(jump_times[j]),
                probability=float(np.mean(probs[i:j])) if j > i else 0.0)
           for w, t, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:])]
    durations = np.array([w["end"] - w["start"] for w in out])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(out)):  # words at sentence ends are at most twice the median long
            if out[i]["end"] - out[i]["start"] > longest:
                if out[i]["word"] in ".。!！?？":
                    out[i]["end"] = out[i]["start"] + longest
                elif out[i - 1]["word"] in ".。!！?？":
                    out[i]["start"] = out[i]["end"] - longest
    merge_punctuations(out)
    return [w for w in out if w["word"]]


def alignment_frames(duration: float) -> int:
    """Mel frames (100 per second) an alignment looks at: the window's duration rounded up to
    whole seconds, as faster-whisper's ``add_word_timestamps`` passes it."""
    return int(np.ceil(duration)) * 100


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai timing.py ``dtw_cpu`` (ties broken the same way), one anti-diagonal at a time."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    acc[0, 0] = 0
    for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1 <= i <= n, 1 <= j <= m
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(t, [c0, c1, c2])
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    arr = np.array(path)
    return arr[:, 0], arr[:, 1]


class DecodingTask:
    """One request's decoding of a batch of <=30 s chunks into chunk-relative segments."""

    def __init__(self, backend: Backend, options: DecodeOptions, thresholds: Thresholds = THRESHOLDS) -> None:
        self.backend = backend
        self.options = options
        self.th = thresholds
        self.caps = backend.capabilities
        if options.word_timestamps and not self.caps.word_timestamps:
            # refused rather than answered without words: nothing may be dropped quietly
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"word_timestamps is not available with the {backend.info.backend} backend")
        self.tokenizer = backend.tokenizer
        self.beam_size = max(1, min(options.beam_size, self.caps.max_beam))
        self.temperatures = options.temperatures or (0.0,)

    def prompt(self, previous: Sequence[int] = ()) -> Prompt:
        o = self.options
        return build_prompt(self.tokenizer, language=o.language, task=o.task, multilingual=self.caps.multilingual,
                            timestamps=self.caps.timestamps, initial_prompt=o.initial_prompt, hotwords=o.hotwords,
                            previous=previous if o.condition_on_previous_text else (),
                            max_context=self.caps.max_context_tokens)

    def run(self, chunks: Sequence[np.ndarray]) -> list[list[Segment]]:
        """Every chunk to its end: where the model closes a segment and stops early, the rest
        of the chunk is decoded as a new window (openai's seek), so no speech is lost."""
        results: list[list[Segment]] = [[] for _ in chunks]
        previous: list[list[int]] = [[] for _ in chunks]
        todo = [(i, 0.0, np.asarray(c, dtype=np.float32)[:CHUNK_SAMPLES]) for i, c in enumerate(chunks)]
        for _ in range(MAX_WINDOWS_PER_CHUNK):
            if not todo:
                break
            windows = self._windows([a for _, _, a in todo], [previous[i] for i, _, _ in todo])
            nxt = []
            for (i, offset, audio), (segments, resume, tokens) in zip(todo, windows):
                base = len(results[i])
                results[i].extend(s.shifted(offset, base + j) for j, s in enumerate(segments))
                previous[i] = previous[i] + tokens
                if resume is not None and resume > 0 and len(audio) / SAMPLE_RATE - resume > MIN_TAIL_S:
                    nxt.append((i, round(offset + resume, 3), audio[int(resume * SAMPLE_RATE):]))
            todo = nxt
        return results

    def decide(self, attempts_by_temperature: Sequence[Attempt]) -> Window:
        """The fallback decision over attempts at successive temperatures (the first that
        needs no fallback wins, else the last): exposed for the decision tests."""
        for n, attempt in enumerate(attempts_by_temperature):
            window = self._window(attempt, self.temperatures[n])
            if not self._retry(window) or n + 1 == len(attempts_by_temperature):
                return window
        raise ValueError("no attempts")

    # ----------------------------------------------------------------- internals

    def _window(self, attempt: Attempt, temperature: float) -> Window:
        text = self.tokenizer.decode(attempt.tokens)
        looped = loops(text, self.th)
        return Window(attempt, temperature, text, looped, is_silence(attempt.avg_logprob, attempt.no_speech_prob, self.th))

    def _retry(self, w: Window) -> bool:
        a = w.attempt
        ratio = compression_ratio(w.text)
        return needs_fallback(a.avg_logprob, ratio, a.no_speech_prob, self.th) or (w.looped and not w.silent)

    def _windows(self, audios: list[np.ndarray], previous: list[list[int]]
                 ) -> list[tuple[list[Segment], float | None, list[int]]]:
        encoded = self.backend.encode(audios)
        prompts = [self.prompt(p) for p in previous]
        decided: list[Window | None] = [None] * len(audios)
        todo = list(range(len(audios)))
        for n, temperature in enumerate(self.temperatures):
            # rows with the same prompt go together (all of them unless previous text differs)
            by_prompt: dict[Prompt, list[int]] = {}
            for row in todo:
                by_prompt.setdefault(prompts[row], []).append(row)
            retry = []
            for prompt, rows in by_prompt.items():
                beam = self.beam_size if temperature == 0 else 1
                for row, attempt in zip(rows, self.backend.decode(encoded, rows, prompt, temperature, beam)):
                    window = decided[row] = self._window(attempt, temperature)
                    if self._retry(window) and n + 1 < len(self.temperatures):
                        retry.append(row)
            todo = sorted(retry)
            if not todo:
                break
        out = []
        words_needed = self.caps.word_timestamps and (self.options.word_timestamps or not self.caps.timestamps)
        alignments = self._align(encoded, audios, prompts, decided) if words_needed else None
        for row, (audio, window) in enumerate(zip(audios, decided)):
            assert window is not None
            out.append(self._segments(window, len(audio) / SAMPLE_RATE,
                                      None if alignments is None else alignments[row]))
        return out

    def _align(self, encoded: Any, audios: list[np.ndarray], prompts: list[Prompt],
               decided: list[Window | None]) -> list[list[dict]]:
        eot = self.tokenizer.specials.eot
        texts = [[t for t in w.attempt.tokens if t < eot] if w and not w.silent else [] for w in decided]
        rows = [r for r, t in enumerate(texts) if t]
        words: list[list[dict]] = [[] for _ in audios]
        if rows:
            durations = [len(audios[r]) / SAMPLE_RATE for r in rows]
            # alignment starts from the sot sequence alone, which every row shares
            aligned = self.backend.align(encoded, rows, prompts[rows[0]].sot_sequence, [texts[r] for r in rows],
                                         durations)
            for row, alignment in zip(rows, aligned):
                words[row] = words_from_alignment(self.tokenizer, texts[row], alignment, self.options.language)
        return words

    def _segments(self, w: Window, duration: float, words: list[dict] | None
                  ) -> tuple[list[Segment], float | None, list[int]]:
        a = w.attempt
        if w.silent:
            return [], None, []  # openai's no-speech skip
        avg, nsp = round(a.avg_logprob, 4), round(a.no_speech_prob, 4)
        eot = self.tokenizer.specials.eot
        if w.looped:
            log.warning("a window still repeats itself at temperature %.1f: %d tokens kept, not used as context",
                        w.temperature, len(a.tokens))
        text_tokens = [] if w.looped else [t for t in a.tokens if t < eot]
        if words is not None and not self.caps.timestamps:
            objs = [self._word(x, duration) for x in words]
            if objs and "".join(x.word for x in objs).strip() == w.text.strip():
                return [Segment(id=n, start=g[0].start, end=max(g[-1].end, g[0].start), text="".join(x.word for x in g),
                                avg_logprob=avg, no_speech_prob=nsp,
                                words=tuple(g) if self.options.word_timestamps else None)
                        for n, g in enumerate(split_sentences(objs))], None, text_tokens
        if self.caps.timestamps:
            pieces, resume = cut_at_timestamps(a.tokens, self.tokenizer.specials.timestamp_begin, duration)
        else:  # alignment lost text (rare): the window stays whole rather than lose words
            pieces, resume = [(0.0, duration, list(a.tokens))], None
        remaining = list(words or [])
        segments: list[Segment] = []
        for start, end, part in pieces:
            text = self.tokenizer.decode(part)
            seg_words = None
            if words is not None:
                # a segment's words are the next ones whose tokens add up to its text tokens
                n_text, mine = len([t for t in part if t < eot]), []
                while remaining and sum(len(x["tokens"]) for x in mine) < n_text:
                    mine.append(remaining.pop(0))
                seg_words = tuple(self._word(x, duration) for x in mine)
            if not text.strip():
                continue
            segments.append(Segment(id=len(segments), start=start, end=max(end, start), text=text,
                                    avg_logprob=avg, no_speech_prob=nsp,
                                    words=seg_words if self.options.word_timestamps else None))
        return segments, resume, text_tokens

    @staticmethod
    def _word(x: dict, duration: float) -> Word:
        start = round(min(max(x["start"], 0.0), duration), 3)
        return Word(start=start, end=round(min(max(x["end"], start), duration), 3), word=x["word"],
                    probability=round(x["probability"], 4))


def transcribe_chunks(backend: Backend, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
    """Decode each chunk (float32, 16 kHz, mono, len <= CHUNK_SAMPLES) into segments with
    times relative to the chunk's start and ids from 0, in input order."""
    if not chunks:
        return []
    return DecodingTask(backend, options).run(chunks)
