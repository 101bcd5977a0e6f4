"""PII recognisers over word lists (written and spoken forms, checksums), the transcript
rewrite that keeps timings, and the redaction options (issue 17 part B)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_contract import ContractError, ModelInfo, RequestOptions, Segment, Timings, Transcript, Word
from whisper_contract.postprocess import copies, finish
from whisper_contract.redact import PII_TYPES, find, iban_valid, luhn_valid, redact


def found(text: str, types: tuple[str, ...] = PII_TYPES) -> list[tuple[str, str]]:
    """(type, the words it covers) for a sentence split at spaces, as Whisper words."""
    words = text.split()
    return [(s.type, " ".join(words[s.first:s.last + 1])) for s in find([" " + w for w in words], types)]


@pytest.mark.parametrize("text, expected", [
    # as Whisper base writes a spoken number (tests/data/audio/synthetic)
    ("Please call me back on 5-5-5-2-3-4-5-6-7-8.", [("phone", "5-5-5-2-3-4-5-6-7-8.")]),
    ("ring 555-234-5678 today", [("phone", "555-234-5678")]),
    ("ring +44 20 7946 0958 today", [("phone", "+44 20 7946 0958")]),
    ("ring (555) 234 5678 today", [("phone", "(555) 234 5678")]),
    ("call five five five, two three four, five six seven eight.",
     [("phone", "five five five, two three four, five six seven eight.")]),
    ("call oh seven seven double two three four five six seven now",
     [("phone", "oh seven seven double two three four five six seven")]),
])
def test_phone_numbers_written_and_spoken(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text", [
    "in 1990 there were 20 people",  # years and counts are not phone numbers
    "we met at 10:30 on 12/05/2024",  # times and dates neither
    "it costs 10,000 dollars or 3.50 each",
    "oh no, one of the two",  # a few digit words in speech
])
def test_numbers_that_are_not_personal_data(text):
    assert found(text) == []


@pytest.mark.parametrize("text, expected", [
    ("write to jane.doe@example.co.uk today", [("email", "jane.doe@example.co.uk")]),
    ("mail john dot smith at example dot com now", [("email", "john dot smith at example dot com")]),
    # as Whisper base writes the synthetic clip's spoken address
    ("Or send an email to John.smith at mail.com.", [("email", "John.smith at mail.com.")]),
    ("Or send an email to John .smith at mail .com.", [("email", "John .smith at mail .com.")]),
    ("it is anna underscore lee at gmail dot com", [("email", "anna underscore lee at gmail dot com")]),
    ("email me at john.smith at mail.com please", [("email", "john.smith at mail.com")]),
])
def test_email_addresses_written_and_spoken(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text", [
    "meet me at the station at 5 pm",
    "look at example dot smith",  # no known top-level domain
    "she is at home.",
])
def test_at_in_ordinary_speech_is_no_address(text):
    assert found(text) == []


def test_luhn_and_card_numbers():
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("") and not luhn_valid("41x1")
    assert found("my card is 4111 1111 1111 1111 thanks") == [("card", "4111 1111 1111 1111")]
    assert found("card 4111-1111-1111-1111.") == [("card", "4111-1111-1111-1111.")]
    assert found("amex 3782 822463 10005 ok") == [("card", "3782 822463 10005")]
    # 16 digits failing Luhn: no card, and too long for a phone number
    assert found("my card is 4111 1111 1111 1112 thanks") == []


def test_iban_mod_97():
    assert iban_valid("GB82WEST12345698765432") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82") and not iban_valid("1234WEST1234569876")
    assert found("IBAN GB82 WEST 1234 5698 7654 32 ok") == [("iban", "GB82 WEST 1234 5698 7654 32")]
    assert found("to DE89370400440532013000.") == [("iban", "DE89370400440532013000.")]
    # a wrong check: not an IBAN (its digits still look like a phone number, and are hidden as one)
    assert [kind for kind, _ in found("IBAN GB82 WEST 1234 5698 7654 33 ok")] == ["phone"]


def test_national_ids_and_dates_of_birth():
    assert found("SSN 123-45-6789 and NI number AB 12 34 56 C") == [("ssn", "123-45-6789"), ("nino", "AB 12 34 56 C")]
    assert found("my social security number is 123 45 6789") == [("ssn", "123 45 6789")]
    assert found("it is JG103759A.") == [("nino", "JG103759A.")]
    assert found("it is QQ123456C.") == []  # Q never starts a NI number (the usual example is invalid)
    assert found("it is GB123456C.") == []  # GB is never a NI prefix
    assert found("I was born on the 5th of March, 1980. Then") == [("dob", "5th of March, 1980.")]
    assert found("date of birth is 12/05/1980 ok") == [("dob", "12/05/1980")]
    assert found("my birthday is July 4 1976") == [("dob", "July 4 1976")]
    assert found("the meeting is on 12/05/2024") == []  # a date alone is not personal data


def test_redact_types_choose_what_is_hidden():
    text = "call 555-234-5678 or john@example.com"
    assert found(text, ("email",)) == [("email", "john@example.com")]
    assert found(text, ("phone",)) == [("phone", "555-234-5678")]


def _transcript() -> Transcript:
    words = [Word(0.0, 0.5, " Call", 0.9), Word(0.5, 0.8, " me", 0.9), Word(0.8, 1.2, " on", 0.9),
             Word(1.2, 1.6, " 5", 0.6), Word(1.6, 2.0, "-5", 0.7), Word(2.0, 2.4, "-5", 0.9)]
    words2 = [Word(3.0, 3.4, " 2", 0.8), Word(3.4, 3.8, "-3", 0.9), Word(3.8, 4.2, "-4", 0.9),
              Word(4.2, 4.6, "-5.", 0.9), Word(5.0, 5.5, " Thanks.", 0.95)]
    segs = (Segment(0, 0.0, 2.4, "".join(w.word for w in words), -0.2, 0.01, tuple(words)),
            Segment(1, 3.0, 5.5, "".join(w.word for w in words2), -0.2, 0.01, tuple(words2)))
    return Transcript(text="Call me on 5-5-5 2-3-4-5. Thanks.", language="en", language_probability=1.0,
                      duration=6.0, segments=segs, model=ModelInfo("base", "faster-whisper", "x"),
                      timings=Timings(processing_seconds=1.0))


def test_a_span_across_two_segments_becomes_one_tag_with_its_times():
    t = redact(_transcript())
    assert t.text == "Call me on [PII:PHONE]. Thanks."
    first, second = t.segments
    tag = first.words[-1]
    assert (tag.word, tag.start, tag.end, tag.probability) == (" [PII:PHONE].", 1.2, 4.6, 0.6)
    assert first.text == " Call me on [PII:PHONE]." and first.end == 4.6
    assert (second.id, second.start, second.text) == (1, 5.0, " Thanks.")
    assert [(s.type, s.start, s.end, s.segment) for s in t.redaction.spans] == [("phone", 1.2, 4.6, 0)]
    assert not any(ch.isdigit() for seg in t.segments for w in seg.words for ch in seg.text + w.word)


def test_finish_keeps_the_unredacted_copy_only_for_both():
    t = _transcript()
    only = finish(t, RequestOptions(redact="pii"))
    assert only.unredacted is None and "5-5" not in only.to_json()
    assert only.segments[0].words is None  # word timings were not asked for: dropped after redaction
    both = finish(t, RequestOptions(redact="pii", redact_output="both", word_timestamps=True))
    files = copies(both)
    assert set(files) == {"", "unredacted"}
    assert "5-5" not in files[""].to_json() and "[PII:PHONE]" in files[""].to_json()
    assert "5-5" in files["unredacted"].to_json() and "[PII" not in files["unredacted"].to_json()
    assert Transcript.from_json(both.to_json()) == both  # the wire document keeps both
    assert finish(t, RequestOptions()).redaction is None  # redaction is off by default


@pytest.mark.parametrize("query, message", [
    ("redact=all", "redact must be one of"),
    ("redact=pii&redact_types=phone,names", "'names' is not one of"),
    ("redact=pii&redact_output=original", "redact_output must be one of"),
    ("redact_output=both", "need redact=pii"),
    ("redact_types=phone", "need redact=pii"),
    ("confidence_threshold=1.5", "confidence_threshold must be between 0 and 1"),
    ("confidence_threshold=nan", "confidence_threshold must be between"),
    ("confidence_threshold=high", "must be a number"),
])
def test_bad_redaction_and_confidence_options_are_bad_option(query, message):
    with pytest.raises(ContractError, match=message) as err:
        RequestOptions.from_query(query)
    assert err.value.code.value == "bad_option"


def test_redaction_options_travel_as_metadata():
    options = RequestOptions.from_pairs({"Redact": "PII", "redact-types": "phone, email", "redact_output": "both"})
    assert (options.redact, options.redact_types, options.redact_output) == ("pii", ("phone", "email"), "both")
    assert RequestOptions.from_query(options.to_custom_attributes()) == options
    assert RequestOptions(redact="pii").pii_types == PII_TYPES


def test_cli_flags_become_the_options():
    from whisper_cli.main import _options, build_parser

    args = build_parser().parse_args(["submit", "a.mp3", "--redact", "pii", "--redact-types", "phone,email",
                                      "--redact-output", "both", "--max-line-chars", "32", "--max-lines", "1",
                                      "--max-cue-s", "4.5", "--min-gap-ms", "80", "--confidence-threshold", "0.6"])
    options, explicit = _options(args)
    assert (options.redact, options.redact_types, options.redact_output) == ("pii", ("phone", "email"), "both")
    assert (options.max_line_chars, options.max_lines, options.max_cue_s, options.min_gap_ms,
            options.confidence_threshold) == (32, 1, 4.5, 80, 0.6)
    assert {"redact", "redact_types", "redact_output", "max_cue_s"} <= explicit
    with pytest.raises(ContractError, match="need redact=pii"):
        _options(build_parser().parse_args(["submit", "a.mp3", "--redact-output", "both"]))


def test_a_backend_without_word_timings_refuses_redaction_up_front():
    from types import SimpleNamespace

    from whisper_server.pipeline import validate

    triton = SimpleNamespace(capabilities=SimpleNamespace(word_timestamps=False, multilingual=True),
                             info=SimpleNamespace(backend="triton", model="large-v3"))
    validate(RequestOptions(), triton)  # plain transcription is fine
    with pytest.raises(ContractError, match="redact needs word timings") as err:
        validate(RequestOptions(redact="pii"), triton)
    assert err.value.code.value == "bad_option"


def _with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=18), st.sampled_from([1, 4, 19]))
def test_every_luhn_valid_card_number_is_hidden_however_it_is_grouped(body, group):
    number = _with_check_digit(body)
    groups = [number[i:i + group] for i in range(0, len(number), group)]
    words = ["my", "card", "is", *groups, "thanks"]
    t = redact(Transcript(text=" ".join(words), language="en", language_probability=1.0, duration=9.0,
                          segments=(Segment(0, 0.0, 9.0, "".join(" " + w for w in words), -0.1, 0.0,
                                            tuple(Word(i * 0.3, i * 0.3 + 0.3, " " + w, 0.9)
                                                  for i, w in enumerate(words))),),
                          model=ModelInfo("base", "faster-whisper", "x"), timings=Timings(processing_seconds=1.0)))
    assert t.text == "my card is [PII:CARD] thanks"
    span = t.redaction.spans[0]
    assert (span.type, span.start, span.end) == ("card", pytest.approx(0.9), pytest.approx((3 + len(groups)) * 0.3))
