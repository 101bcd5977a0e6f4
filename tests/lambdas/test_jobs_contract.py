"""The job record and the S3 helpers added to whisper_contract for the Lambdas and the CLI."""

from __future__ import annotations

import json

import pytest

from whisper_contract.jobs import JobRecord
from whisper_contract.keys import is_internal_key, parse_s3_uri, plain_etag


def test_job_record_round_trips_and_ignores_unknown_fields():
    job = JobRecord(inference_id="w-1", input_bucket="b", input_key="a b/ü.mp3", state="pending", options="formats=srt")
    done = job.advance("completed", result_keys=("a b/ü.mp3.srt",), completed_at="t")
    data = json.loads(done.to_json())
    data["added_by_a_newer_writer"] = 1
    again = JobRecord.from_json(json.dumps(data))
    assert again == done and again.finished and not job.finished


def test_job_record_rejects_unknown_states():
    with pytest.raises(ValueError, match="job state"):
        JobRecord(inference_id="w", input_bucket="b", input_key="k", state="done", options="")


def test_s3_helpers():
    assert parse_s3_uri("s3://bucket/dir/a+b c.wav") == ("bucket", "dir/a+b c.wav")
    for bad in ("https://bucket/k", "s3://bucket", "s3://bucket/", "s3:///k"):
        with pytest.raises(ValueError):
            parse_s3_uri(bad)
    assert plain_etag('"abc-2"') == "abc-2" and plain_etag(None) is None
    assert is_internal_key("_jobs/w.json") and is_internal_key("_jobs/by-key/k.json") and is_internal_key("x.mp3.error.json")
    assert not is_internal_key("jobs/x.mp3")


def test_output_names_fit_s3_and_keep_out_of_the_internal_namespaces():
    from whisper_contract.keys import MAX_KEY_BYTES, all_output_keys, output_base

    assert output_base("calls/a.mp3") == "calls/a.mp3"
    assert output_base("_jobs/a.mp3") == "__jobs/a.mp3" and output_base("__jobs/a.mp3") == "___jobs/a.mp3"
    assert output_base("_private/a.mp3") == "_private/a.mp3"
    # the longest name is <base>.unredacted.json (redact_output=both, issue 17)
    for key in ("a" * 1008, "a" * 1009, "a" * 1013, "é" * 511 + "x", "日" * 341 + "a", "_jobs/" + "ü" * 509):
        names = all_output_keys(key)
        assert all(len(n.encode()) <= MAX_KEY_BYTES for n in names), key
        assert (output_base(key) == key) == (len(key.encode()) + len(".unredacted.json") <= MAX_KEY_BYTES)
        assert len(names) == len(set(names)) == 9
        assert not output_base(key).startswith(("_jobs/", "_async/"))
        output_base(key).encode().decode()  # cut at a character boundary
    assert output_base("a" * 1014) != output_base("a" * 1013 + "b")  # the hash of the whole key


@pytest.mark.parametrize("query, header", [("formats=json&format=srt", ""), ("format=srt", "formats=json"),
                                           ("", "output=txt&formats=json"), ("language=en", "Language=de")])
def test_an_option_given_twice_in_any_spelling_is_a_bad_option(query, header):
    from whisper_contract import ContractError, RequestOptions
    from whisper_server.negotiate import parse_options

    with pytest.raises(ContractError, match="given twice") as err:
        parse_options(query, header)
    assert err.value.code.value == "bad_option"
    with pytest.raises(ContractError, match="given twice"):
        RequestOptions.from_query(f"{query}&{header}".strip("&"))
    assert RequestOptions.with_defaults("formats=json,txt&language=en", [("format", "srt")]).formats == ("srt",)
