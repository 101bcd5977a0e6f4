"""Request options: what a user may ask of a transcription, and how it travels.

Options travel as a URL-encoded query string: in the container's query string, in the
``X-Amzn-SageMaker-Custom-Attributes`` header (SageMaker caps it at 1024 visible ASCII
characters, which URL-encoding guarantees), and, spelt the same way, in S3 object metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode

from whisper_contract.captions import CaptionRules
from whisper_contract.errors import ContractError, ErrorCode
from whisper_contract.redact import PII_TYPES

TASKS = ("transcribe", "translate")
FORMATS = ("json", "txt", "srt", "vtt")
MAX_BEAM_SIZE = 10
MAX_PROMPT_CHARS = 600
CUSTOM_ATTRIBUTES_LIMIT = 1024
REDACT_MODES = ("none", "pii")
REDACT_OUTPUTS = ("redacted", "both")
# Inclusive bounds of the numeric options (issue 17): beyond them captions stop being readable.
NUMBER_BOUNDS: dict[str, tuple[float, float]] = {
    "max_line_chars": (10, 200), "max_lines": (1, 5), "max_cue_s": (1.0, 60.0), "min_gap_ms": (0, 2000),
    "confidence_threshold": (0.0, 1.0),
}

# Whisper's language codes (openai/whisper tokenizer.LANGUAGES keys).
LANGUAGES = frozenset(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue".split()
)

# Other spellings of an option. Normalised before the duplicate check, so ``formats=json`` and
# ``format=srt`` in one request are a duplicate (bad_option), not "the last one wins".
OPTION_ALIASES = {"format": "formats", "output": "formats"}
OPTION_NAMES = ("language", "task", "formats", "word_timestamps", "vad", "beam_size", "initial_prompt", "hotwords",
                "redact", "redact_types", "redact_output", "max_line_chars", "max_lines", "max_cue_s", "min_gap_ms",
                "confidence_threshold", "channels", "speakers", "min_speakers", "max_speakers")
# Speakers and channels (issue 17): Amazon Transcribe's limits, so users can switch over.
CHANNEL_MODES = ("mix", "separate")
MAX_SPEAKERS = 30

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ContractError(ErrorCode.BAD_OPTION, f"option {key!r} must be true or false, got {value!r}")


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ContractError(ErrorCode.BAD_OPTION, f"{key} must be an integer, got {value!r}") from None


def option_name(raw_key: str) -> str:
    """The canonical name of an option as spelt in a query, a header or S3 metadata."""
    key = raw_key.strip().lower().replace("-", "_")
    return OPTION_ALIASES.get(key, key)


def canonical_pairs(pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    """Names normalised (case, ``-``/``_``, aliases); unknown or repeated names are bad_option."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    out: dict[str, str] = {}
    for raw_key, value in items:
        key = option_name(raw_key)
        if key not in OPTION_NAMES:
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"unknown option {raw_key!r}; known options: {', '.join(OPTION_NAMES)}")
        if key in out:
            raise ContractError(ErrorCode.BAD_OPTION, f"option {key!r} given twice (as {raw_key!r} and earlier)")
        out[key] = value
    return out


def _parse_query(query: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=32)
    except ValueError as exc:
        raise ContractError(ErrorCode.BAD_OPTION, f"malformed options string: {exc}") from None


@dataclass(frozen=True)
class RequestOptions:
    """Everything a caller can choose. Defaults give a JSON transcript with auto language."""

    language: str | None = None  # None: detect
    task: str = "transcribe"
    formats: tuple[str, ...] = ("json",)
    word_timestamps: bool = False
    vad: bool = True
    beam_size: int = 5
    initial_prompt: str | None = None
    hotwords: str | None = None
    # Redaction, captions and confidence (issue 17; README "Redaction, captions and confidence").
    redact: str = "none"  # pii: replace personal data by [PII:<TYPE>] words
    redact_types: tuple[str, ...] = ()  # a subset of redact.PII_TYPES; empty: all of them
    redact_output: str = "redacted"  # both: also <base>.unredacted.<fmt>
    max_line_chars: int = CaptionRules.max_line_chars
    max_lines: int = CaptionRules.max_lines
    max_cue_s: float = CaptionRules.max_cue_s
    min_gap_ms: int = CaptionRules.min_gap_ms
    confidence_threshold: float = 0.5  # segments below it are flagged low_confidence
    # Speakers and channels (README "Speakers and channels").
    channels: str = "mix"  # separate: each channel transcribed on its own, labelled CH0, CH1...
    speakers: int | str | None = None  # None: no labels; "auto": as many as found; N: exactly N
    min_speakers: int | None = None  # bounds for speakers=auto
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        if self.language is not None and self.language not in LANGUAGES:
            raise ContractError(
                ErrorCode.BAD_OPTION,
                f"language {self.language!r} is not a Whisper language code (e.g. en, ja, zh) "
                "and not 'auto'",
            )
        if self.task not in TASKS:
            raise ContractError(ErrorCode.BAD_OPTION, f"task must be one of {TASKS}, got {self.task!r}")
        if not self.formats:
            raise ContractError(ErrorCode.BAD_OPTION, f"formats must name at least one of {FORMATS}")
        for fmt in self.formats:
            if fmt not in FORMATS:
                raise ContractError(ErrorCode.BAD_OPTION, f"format {fmt!r} is not one of {FORMATS}")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ContractError(
                ErrorCode.BAD_OPTION, f"beam_size must be between 1 and {MAX_BEAM_SIZE}, got {self.beam_size}"
            )
        for name in ("initial_prompt", "hotwords"):
            text = getattr(self, name)
            if text is not None and len(text) > MAX_PROMPT_CHARS:
                raise ContractError(ErrorCode.BAD_OPTION, f"{name} is longer than {MAX_PROMPT_CHARS} characters")
        if self.redact not in REDACT_MODES:
            raise ContractError(ErrorCode.BAD_OPTION, f"redact must be one of {REDACT_MODES}, got {self.redact!r}")
        if self.redact_output not in REDACT_OUTPUTS:
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"redact_output must be one of {REDACT_OUTPUTS}, got {self.redact_output!r}")
        for kind in self.redact_types:
            if kind not in PII_TYPES:
                raise ContractError(ErrorCode.BAD_OPTION, f"redact_types: {kind!r} is not one of {PII_TYPES}")
        if self.redact == "none" and (self.redact_types or self.redact_output != "redacted"):
            raise ContractError(ErrorCode.BAD_OPTION, "redact_types and redact_output need redact=pii")
        for name, (low, high) in NUMBER_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:  # also false for NaN
                raise ContractError(ErrorCode.BAD_OPTION, f"{name} must be between {low:g} and {high:g}, got {value}")
        self._verify_speakers()

    @property
    def pii_types(self) -> tuple[str, ...]:
        """What redaction looks for: the chosen types, or all of them."""
        return self.redact_types or PII_TYPES

    @property
    def caption_rules(self) -> CaptionRules:
        return CaptionRules(max_line_chars=self.max_line_chars, max_lines=self.max_lines,
                            max_cue_s=self.max_cue_s, min_gap_ms=self.min_gap_ms)

    def _verify_speakers(self) -> None:
        if self.channels not in CHANNEL_MODES:
            raise ContractError(ErrorCode.BAD_OPTION, f"channels must be one of {CHANNEL_MODES}, got {self.channels!r}")
        if self.speakers is not None and self.speakers != "auto":
            if not isinstance(self.speakers, int) or not 1 <= self.speakers <= MAX_SPEAKERS:
                raise ContractError(ErrorCode.BAD_OPTION,
                                    f"speakers must be none, auto or a number from 1 to {MAX_SPEAKERS}, "
                                    f"got {self.speakers!r}")
        for name in ("min_speakers", "max_speakers"):
            bound = getattr(self, name)
            if bound is None:
                continue
            if self.speakers != "auto":
                raise ContractError(ErrorCode.BAD_OPTION, f"{name} applies to speakers=auto only")
            if not 1 <= bound <= MAX_SPEAKERS:
                raise ContractError(ErrorCode.BAD_OPTION, f"{name} must be between 1 and {MAX_SPEAKERS}, got {bound}")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ContractError(ErrorCode.BAD_OPTION,
                                f"min_speakers ({self.min_speakers}) is greater than max_speakers ({self.max_speakers})")
        if self.speakers is not None and self.channels == "separate":
            # Each channel is one speaker (a call's agent and customer); mixing both rules
            # would give two answers to "who spoke".
            raise ContractError(ErrorCode.BAD_OPTION, "speakers and channels=separate exclude each other: "
                                "with channels=separate each channel is a speaker")
        if self.speakers is not None and not self.vad:
            raise ContractError(ErrorCode.BAD_OPTION, "speakers needs vad=true: the speech regions come from the VAD")

    @property
    def speaker_range(self) -> tuple[int, int]:
        """How many speakers diarization may find: N..N for a number, the bounds for auto."""
        if isinstance(self.speakers, int):
            return self.speakers, self.speakers
        return self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS

    # --- wire format -------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> "RequestOptions":
        """Build from string pairs (query string, custom attributes, S3 metadata).

        Unknown keys are an error rather than silently ignored: a typo such as ``langauge``
        would otherwise produce a transcript in the wrong language without a word of warning.
        A name given twice, in any spelling, is an error too.
        """
        return cls._from_canonical(canonical_pairs(pairs))

    @classmethod
    def with_defaults(cls, defaults: str | None,
                      pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> "RequestOptions":
        """``pairs`` over the deployment's ``defaults`` (a query string), name by name: a default
        is not a duplicate, but a name given twice within ``pairs`` is."""
        merged = canonical_pairs(_parse_query(defaults)) if defaults else {}
        merged.update(canonical_pairs(pairs))
        return cls._from_canonical(merged)

    @classmethod
    def _from_canonical(cls, pairs: Mapping[str, str]) -> "RequestOptions":
        kwargs: dict[str, object] = {}
        for key, value in pairs.items():
            if key == "language":
                lang = value.strip().lower()
                kwargs[key] = None if lang in ("", "auto") else lang
            elif key == "task":
                kwargs[key] = value.strip().lower()
            elif key in ("redact", "redact_output"):
                kwargs[key] = value.strip().lower()
            elif key in ("formats", "redact_types"):
                kwargs[key] = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
            elif key in ("word_timestamps", "vad"):
                kwargs[key] = _parse_bool(key, value)
            elif key in ("beam_size", "max_line_chars", "max_lines", "min_gap_ms", "min_speakers", "max_speakers"):
                kwargs[key] = _parse_int(key, value)
            elif key in ("max_cue_s", "confidence_threshold"):
                try:
                    kwargs[key] = float(value)
                except ValueError:
                    raise ContractError(ErrorCode.BAD_OPTION, f"{key} must be a number, got {value!r}") from None
            elif key == "channels":
                kwargs[key] = value.strip().lower()
            elif key == "speakers":
                word = value.strip().lower()
                kwargs[key] = None if word in ("", "none") else word if word == "auto" else _parse_int(key, word)
            else:  # initial_prompt, hotwords (canonical_pairs let nothing else through)
                kwargs[key] = value or None
        return cls(**kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_query(cls, query: str | None) -> "RequestOptions":
        if not query:
            return cls()
        return cls.from_pairs(_parse_query(query))

    def to_query(self, explicit: Iterable[str] = ()) -> str:
        """Non-default values, so the string stays short and readable in logs, plus every
        option named in ``explicit`` even where it equals the default.

        ``explicit`` is for options a user chose: the trigger fills whatever the object's
        metadata leaves out from the deployment's ``DEFAULT_OPTIONS``, so a user's
        ``formats=json`` must travel although it is ``RequestOptions``' own default.
        An explicit ``None`` travels as an empty value, which ``from_pairs`` reads back as None.
        """
        names = [f.name for f in dataclasses.fields(self)]
        chosen = frozenset(explicit)
        unknown = chosen - set(names)
        if unknown:
            raise ValueError(f"not option names: {sorted(unknown)}")
        pairs: list[tuple[str, str]] = []
        default = RequestOptions()
        for name in names:
            value = getattr(self, name)
            if value == getattr(default, name) and name not in chosen:
                continue
            if value is None:
                text = ""
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            pairs.append((name, text))
        return urlencode(pairs)

    def to_custom_attributes(self) -> str:
        text = self.to_query()
        if len(text) > CUSTOM_ATTRIBUTES_LIMIT:
            raise ContractError(
                ErrorCode.BAD_OPTION,
                f"options encode to {len(text)} characters; SageMaker allows {CUSTOM_ATTRIBUTES_LIMIT} "
                "(shorten initial_prompt or hotwords)",
            )
        return text

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["formats"] = list(self.formats)
        out["redact_types"] = list(self.redact_types)
        return out
