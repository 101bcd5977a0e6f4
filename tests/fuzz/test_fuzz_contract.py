"""Fuzz the shared contract's parsers: any options string or S3 key is either accepted
consistently or refused with a ContractError, never another exception."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_contract import ContractError, ErrorCode, RequestOptions
from whisper_contract.keys import error_key, inference_id, is_internal_key, output_keys, parse_s3_uri, s3_uri

PROFILE = settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-ci"))
FAST = settings(PROFILE, max_examples=PROFILE.max_examples * 8)  # microseconds each
SAGEMAKER_ID = re.compile(r"\A\S[\x20-\x7e]*\Z")

queries = st.one_of(
    st.text(max_size=300),
    st.lists(st.tuples(st.sampled_from(["language", "task", "formats", "vad", "beam_size", "hotwords",
                                        "initial_prompt", "word-timestamps", "FORMATS", "x"]),
                       st.text(max_size=30)), max_size=8).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv)),
)


@FAST
@given(query=queries)
def test_options_parse_or_refuse_and_round_trip(tally, query: str) -> None:
    try:
        options = RequestOptions.from_query(query)
    except ContractError as exc:
        assert exc.code == ErrorCode.BAD_OPTION and exc.status == 400 and exc.message
        tally("contract-options").add("refused: bad_option")
        return
    tally("contract-options").add("accepted")
    again = RequestOptions.from_query(options.to_query())
    assert again == options
    try:
        attributes = options.to_custom_attributes()
    except ContractError as exc:
        assert exc.code == ErrorCode.BAD_OPTION
        return
    assert len(attributes) <= 1024 and RequestOptions.from_query(attributes) == options


@FAST
@given(bucket=st.from_regex(r"\A[a-z0-9][a-z0-9.-]{2,20}\Z"), key=st.text(min_size=1, max_size=300),
       version=st.one_of(st.none(), st.text(max_size=40)))
def test_keys_never_collide_or_escape(tally, bucket: str, key: str, version: str | None) -> None:
    tally("contract-keys").add("checked")
    iid = inference_id(bucket, key, version)
    assert len(iid) <= 64 and SAGEMAKER_ID.match(iid)
    assert parse_s3_uri(s3_uri(bucket, key)) == (bucket, key)
    outputs = output_keys(key, ("json", "txt", "srt", "vtt"))
    assert len(set(outputs.values()) | {error_key(key), key}) == 6  # no output overwrites another or the input
    assert is_internal_key(error_key(key))  # an error record never triggers a new job
