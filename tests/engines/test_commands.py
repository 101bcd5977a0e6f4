"""The TensorRT-LLM commands: every flag derived from the spec, as the whisper recipe needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from whisper_contract.engine_spec import EngineBuildSpec
from whisper_engines.commands import (BuildPaths, Tools, convert_command, decoder_build_command,
                                      encoder_build_command)

PATHS = BuildPaths(Path("/w"))
TOOLS = Tools(python="py", convert_script="/trt/convert_checkpoint.py", trtllm_build="trtllm-build")


def _flags(cmd: list[str]) -> dict[str, str | None]:
    """--flag value pairs (a flag followed by another flag has no value)."""
    out: dict[str, str | None] = {}
    for i, token in enumerate(cmd):
        if token.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            out[token] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_convert_float16(spec: EngineBuildSpec) -> None:
    cmd = convert_command(spec, PATHS, TOOLS)
    assert cmd[:2] == ["py", "/trt/convert_checkpoint.py"]
    assert _flags(cmd) == {"--model_dir": "/w/openai", "--model_name": "large-v3", "--dtype": "float16",
                           "--output_dir": "/w/trtllm-checkpoint"}


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_convert_weight_only(spec: EngineBuildSpec, precision: str) -> None:
    spec = dataclasses.replace(spec, model_name="large-v3-turbo", dtype="bfloat16", weight_only=precision)
    flags = _flags(convert_command(spec, PATHS, TOOLS))
    assert flags["--model_name"] == "large-v3-turbo" and flags["--dtype"] == "bfloat16"
    assert "--use_weight_only" in flags and flags["--weight_only_precision"] == precision


def test_encoder_build(spec: EngineBuildSpec) -> None:
    spec = dataclasses.replace(spec, max_batch=24)
    cmd = encoder_build_command(spec, PATHS, TOOLS)
    assert cmd[0] == "trtllm-build"
    assert _flags(cmd) == {
        "--checkpoint_dir": "/w/trtllm-checkpoint/encoder", "--output_dir": "/w/artifact/engines/encoder",
        "--moe_plugin": "disable", "--max_batch_size": "24", "--gemm_plugin": "disable",
        "--bert_attention_plugin": "float16", "--max_input_len": "3000", "--max_seq_len": "3000",
    }


def test_decoder_build(spec: EngineBuildSpec) -> None:
    spec = dataclasses.replace(spec, max_batch=32, max_beam=2, max_input_len=20, max_output_len=200, dtype="bfloat16")
    cmd = decoder_build_command(spec, PATHS, TOOLS)
    assert _flags(cmd) == {
        "--checkpoint_dir": "/w/trtllm-checkpoint/decoder", "--output_dir": "/w/artifact/engines/decoder",
        "--moe_plugin": "disable", "--max_beam_width": "2", "--max_batch_size": "32",
        "--max_seq_len": "220", "--max_input_len": "20", "--max_encoder_input_len": "3000",
        "--gemm_plugin": "bfloat16", "--bert_attention_plugin": "bfloat16", "--gpt_attention_plugin": "bfloat16",
        "--paged_kv_cache": "enable", "--remove_input_padding": "enable",
    }
