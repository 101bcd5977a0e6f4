"""Stand-in for the whisper_bls model: same config (generated), no GPU, scripted answers.

Served by the real tritonserver from nvidia-pytriton so the Triton backend is tested over
real gRPC. It appends one JSON line per request to $WHISPER_STANDIN_LOG (what the client
sent, and how many requests Triton batched into one execute call), and answers:
- prefix "<|startoftranscript|>" with MAX_NEW_TOKENS 1: language detection -> "<|de|>", p=0.9;
- first sample 5.0 at temperature 0: a repetitive text (forces the temperature fallback);
- first sample 7.0: sleeps 3 s (client timeouts), then appends a line to $WHISPER_STANDIN_LOG.slept
  so a test can wait for the instance to be free instead of sleeping a guessed time;
- first sample 9.0: kills tritonserver (server death mid-request);
- $WHISPER_STANDIN_TEXT set: that text as one segment (language: $WHISPER_STANDIN_LANGUAGE);
- otherwise two timestamped segments describing the request.
"""

import asyncio
import json
import math
import os
import signal

import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.max_beam = int(params["max_beam"])

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r, len(requests)) for r in requests)))

    async def _one(self, request, batch):
        prefix = pb_utils.get_input_tensor_by_name(request, "TEXT_PREFIX").as_numpy().reshape(-1)[0].decode()
        wav = pb_utils.get_input_tensor_by_name(request, "WAV").as_numpy()
        n = int(_scalar(request, "WAV_LENS", wav.shape[-1]))
        beam = int(_scalar(request, "BEAM_WIDTH", 1))
        temperature = float(_scalar(request, "TEMPERATURE", 0.0))
        max_new = int(_scalar(request, "MAX_NEW_TOKENS", -1))
        first = float(wav[0, 0])
        with open(os.environ["WHISPER_STANDIN_LOG"], "a") as log:
            log.write(json.dumps({"prefix": prefix, "shape": list(wav.shape), "n": n, "beam": beam,
                                  "temperature": round(temperature, 3), "max_new": max_new,
                                  "sum": round(float(wav[0, :n].sum()), 3), "first": first, "tail_zero": bool(not wav[0, n:].any()),
                                  "batch": batch}) + "\n")
        if first == 9.0:
            os.kill(os.getppid(), signal.SIGKILL)
        if first == 7.0:
            await asyncio.sleep(3)
            with open(os.environ["WHISPER_STANDIN_LOG"] + ".slept", "a") as done:
                done.write("slept\n")
        duration = n / 16000
        scripted = os.environ.get("WHISPER_STANDIN_TEXT")
        if prefix == "<|startoftranscript|>" and max_new == 1:
            text, logprob, count = f"<|{os.environ.get('WHISPER_STANDIN_LANGUAGE', 'de')}|>", math.log(0.9), 1
        elif scripted:
            text, logprob, count = f"<|0.00|> {scripted}<|{duration:.2f}|>", -0.2, 12
        elif first == 5.0 and temperature == 0.0:
            text, logprob, count = "<|0.00|>" + " la" * 200 + f"<|{duration:.2f}|>", -0.1, 200
        else:
            half = round(duration / 2, 2)
            text = (f"<|0.00|> Heard {n} samples.<|{half:.2f}|><|{half:.2f}|> "
                    f"Beam {beam}, temperature {temperature:.1f}.<|{duration:.2f}|>")
            logprob, count = -0.5, 9
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("TRANSCRIPTS", np.array([[text.encode()]], dtype=np.object_)),
            pb_utils.Tensor("LOGPROB_SUM", np.array([[logprob]], dtype=np.float32)),
            pb_utils.Tensor("TOKEN_COUNT", np.array([[count]], dtype=np.int32)),
        ])
