"""The transcript document: what the container returns and the completion Lambda stores.

Versioned so that stored transcripts stay readable after the schema grows: readers accept
any document whose major version they know and ignore fields they do not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

_T = TypeVar("_T")

RESULT_SCHEMA_VERSION = "1.1"  # 1.1: optional cost, confidence, captions, redaction, speaker/channel labels


def _known_fields(cls: type[_T], data: dict[str, Any]) -> _T:
    """``cls`` from the fields it knows: a newer writer may add fields to any block."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


_LABELS = ("speaker", "channel")


def _labels(block: dict[str, Any]) -> dict[str, Any]:
    """The optional speaker/channel labels of a segment or word block (1.1), typed."""
    speaker, channel = block.get("speaker"), block.get("channel")
    return {"speaker": None if speaker is None else str(speaker), "channel": None if channel is None else int(channel)}


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # "S1", "S2"... (speakers=) or "CH0", "CH1"... (channels=separate)
    channel: int | None = None  # channels=separate: the channel the word was heard on


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None
    confidence: float | None = None  # 0..1, whisper_contract.captions.segment_confidence
    low_confidence: bool = False  # confidence below the request's confidence_threshold
    speaker: str | None = None
    channel: int | None = None

    def shifted(self, offset: float, new_id: int) -> "Segment":
        """The same segment placed ``offset`` seconds later (chunk-relative to file-global)."""
        words = None
        if self.words is not None:
            words = tuple(replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3))
                          for w in self.words)
        return replace(self, id=new_id, start=round(self.start + offset, 3),
                       end=round(self.end + offset, 3), words=words)


@dataclass(frozen=True)
class ModelInfo:
    """Which model and code produced a transcript: the ``model``/``backend``/``version`` block."""

    model: str
    backend: str
    version: str
    device: str = "cpu"
    compute_type: str = "default"


@dataclass(frozen=True)
class SourceInfo:
    """Where the audio came from; filled by the completion Lambda, absent on direct calls."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    inference_id: str | None = None


@dataclass(frozen=True)
class Timings:
    """Seconds. ``submitted_at``/``completed_at`` are ISO-8601 strings set in AWS."""

    processing_seconds: float
    decode_seconds: float | None = None
    submitted_at: str | None = None
    completed_at: str | None = None


@dataclass(frozen=True)
class Cost:
    """What making this transcript cost. The container measures (``compute_seconds``,
    ``instance_seconds``, ``audio_seconds``, ``instance_type``, ``started_at``); the completion
    Lambda adds the queue wait and the estimate (``whisper_contract.prices.priced``)."""

    compute_seconds: float  # wall seconds on a decode worker
    instance_seconds: float  # its share of the instance: busy time split among the requests running at once
    audio_seconds: float
    instance_type: str | None = None  # None: not on a priced instance (local runs, tests)
    started_at: str | None = None  # ISO 8601, when a worker began decoding
    queue_seconds: float | None = None  # submitted_at -> started_at (SageMaker's queue and ours)
    price_per_hour: float | None = None  # USD, from prices.json for instance_type
    price_date: str | None = None  # prices.json's as_of
    estimated_usd: float | None = None  # instance_seconds x price_per_hour / 3600


@dataclass(frozen=True)
class Cue:
    """One subtitle cue as SRT/VTT show it (whisper_contract.captions builds them)."""

    start: float
    end: float
    lines: tuple[str, ...]
    low_confidence: bool = False
    speaker: str | None = None  # the segment's speaker label, shown before the first line


@dataclass(frozen=True)
class RedactedSpan:
    """Where personal data was replaced by one ``[PII:<TYPE>]`` word (never what it was)."""

    type: str
    start: float
    end: float
    segment: int


@dataclass(frozen=True)
class Redaction:
    types: tuple[str, ...]  # what was looked for
    spans: tuple[RedactedSpan, ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration: float
    segments: tuple[Segment, ...]
    model: ModelInfo
    timings: Timings
    options: dict[str, Any] = field(default_factory=dict)
    source: SourceInfo | None = None
    schema_version: str = RESULT_SCHEMA_VERSION
    no_speech: bool = False  # the audio was valid but held no speech: empty text, no segments
    cost: Cost | None = None  # absent in 1.0 documents and where nobody measured
    captions: tuple[Cue, ...] | None = None  # built in the container while word timings exist
    redaction: Redaction | None = None
    # redact_output=both only: the transcript before redaction, which the completion Lambda
    # writes to <base>.unredacted.<fmt> (never inside the redacted files).
    unredacted: "Transcript | None" = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        word_timestamps = any(s.words is not None for s in self.segments)
        for seg in data["segments"]:
            if not word_timestamps:
                seg.pop("words")
            elif seg["words"] is None:
                seg["words"] = []
            # Labels appear only when asked for, so a 1.0 reader's documents stay as they were.
            for block in (seg, *(seg.get("words") or ())):
                for name in _LABELS:
                    if block[name] is None:
                        block.pop(name)
        for cue in data.get("captions") or ():
            if cue["speaker"] is None:
                cue.pop("speaker")
        for name in ("source", "cost", "captions", "redaction", "unredacted"):
            if getattr(self, name) is None:
                data.pop(name)
        if self.unredacted is not None:
            data["unredacted"] = self.unredacted.to_dict()
        return data

    def without_words(self) -> "Transcript":
        """The same transcript with no word timings (they were needed only inside)."""
        return replace(self, segments=tuple(replace(s, words=None) for s in self.segments),
                       unredacted=None if self.unredacted is None else self.unredacted.without_words())

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Transcript":
        major = str(data.get("schema_version", "1")).split(".")[0]
        if major != RESULT_SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"transcript schema {data.get('schema_version')!r} is not supported")
        segments = tuple(
            Segment(
                id=int(s["id"]), start=float(s["start"]), end=float(s["end"]), text=str(s["text"]),
                avg_logprob=float(s["avg_logprob"]), no_speech_prob=float(s["no_speech_prob"]),
                words=None if s.get("words") is None else tuple(
                    Word(start=float(w["start"]), end=float(w["end"]), word=str(w["word"]),
                         probability=float(w["probability"]), **_labels(w)) for w in s["words"]),
                confidence=None if s.get("confidence") is None else float(s["confidence"]),
                low_confidence=bool(s.get("low_confidence", False)),
                **_labels(s),
            )
            for s in data["segments"]
        )
        source = data.get("source")
        cost = data.get("cost")
        captions = data.get("captions")
        redaction = data.get("redaction")
        unredacted = data.get("unredacted")
        return cls(
            text=str(data["text"]),
            language=str(data["language"]),
            language_probability=float(data["language_probability"]),
            duration=float(data["duration"]),
            segments=segments,
            model=_known_fields(ModelInfo, data["model"]),
            timings=_known_fields(Timings, data["timings"]),
            options=dict(data.get("options") or {}),
            source=_known_fields(SourceInfo, source) if source else None,
            schema_version=str(data.get("schema_version", RESULT_SCHEMA_VERSION)),
            no_speech=bool(data.get("no_speech", False)),
            cost=_known_fields(Cost, cost) if isinstance(cost, dict) else None,
            captions=None if captions is None else tuple(
                Cue(start=float(c["start"]), end=float(c["end"]), lines=tuple(str(x) for x in c["lines"]),
                    low_confidence=bool(c.get("low_confidence", False)),
                    speaker=None if c.get("speaker") is None else str(c["speaker"])) for c in captions),
            redaction=None if redaction is None else Redaction(
                types=tuple(str(x) for x in redaction.get("types", ())),
                spans=tuple(_known_fields(RedactedSpan, sp) for sp in redaction.get("spans", ()))),
            unredacted=None if unredacted is None else cls.from_dict(unredacted),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Transcript":
        return cls.from_dict(json.loads(text))
