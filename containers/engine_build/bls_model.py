"""Triton Python-backend front model ``whisper_bls``: audio in, Whisper text out.

Copied into the model repository as ``whisper_bls/1/model.py`` by ``repository.py``; it runs
inside tritonserver next to the TensorRT-LLM backend, on the GPU, and is NOT importable in the
test environment (no ``triton_python_backend_utils`` or CUDA there). Its arithmetic lives in
``bls_features.py``, which is tested on CPU; this file only moves tensors between Triton and
the ``tensorrt_llm`` model. Each request is answered on its own, so one bad input fails alone.
"""

import asyncio
import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer
from torch.utils.dlpack import to_dlpack

from .bls_features import decoder_prompt_ids, log_mel, render_output

_FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        here = Path(__file__).resolve().parent
        # The GPU in production; CPU lets the tests run this very file against a stand-in LLM.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = Tokenizer.from_file(str(here / "tokenizer.json"))
        self.mel_filters = torch.from_numpy(np.load(here / "mel_filters.npy")).to(self.device)
        self.max_input_len = int(params["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.max_beam = int(params["max_beam"])
        self.feature_dtype = _FEATURE_DTYPES[params["feature_dtype"]]
        self.llm_model = params["llm_model"]
        self.eot = self.tokenizer.token_to_id("<|endoftext|>")

    async def execute(self, requests):
        # All requests of a batch go to TensorRT-LLM at once (async BLS), so its in-flight
        # batcher decodes them together instead of one after another.
        return list(await asyncio.gather(*(self._answer(request) for request in requests)))

    async def _answer(self, request):
        try:
            return await self._transcribe(request)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, per request
            message = f"{type(exc).__name__}: {exc}"
            pb_utils.Logger.log_error(message)
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    @staticmethod
    def _scalar(request, name, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()

    async def _transcribe(self, request):
        prefix = pb_utils.get_input_tensor_by_name(request, "TEXT_PREFIX").as_numpy().reshape(-1)[0]
        prefix = prefix.decode("utf-8") if isinstance(prefix, bytes) else str(prefix)
        wav = pb_utils.get_input_tensor_by_name(request, "WAV").as_numpy()
        if wav.shape[0] != 1:
            raise ValueError("one audio chunk per request; the client sends chunks as separate requests")
        length = int(self._scalar(request, "WAV_LENS", wav.shape[-1]))
        beam = max(1, min(int(self._scalar(request, "BEAM_WIDTH", 1)), self.max_beam))
        temperature = float(self._scalar(request, "TEMPERATURE", 0.0))
        max_new = max(1, min(int(self._scalar(request, "MAX_NEW_TOKENS", self.max_output_len)), self.max_output_len))

        mel = log_mel(torch.from_numpy(wav[0, :length]).to(self.device), self.mel_filters)
        features = mel.T.unsqueeze(0).to(self.feature_dtype).contiguous()  # (1, frames, n_mels)
        frames = features.shape[1]
        prompt = decoder_prompt_ids(self.tokenizer, prefix, self.max_input_len)

        arrays = {
            "input_lengths": np.array([[frames]], np.int32),
            "encoder_output_lengths": np.array([[frames // 2]], np.int32),  # conv stride 2
            "decoder_input_ids": np.array([prompt], np.int32),
            "decoder_input_lengths": np.array([[len(prompt)]], np.int32),
            "request_output_len": np.array([[max_new]], np.int32),
            "end_id": np.array([[self.eot]], np.int32),
            "pad_id": np.array([[self.eot]], np.int32),
            "beam_width": np.array([[1 if temperature > 0 else beam]], np.int32),
            "return_log_probs": np.array([[True]], np.bool_),
            "streaming": np.array([[False]], np.bool_),
        }
        if temperature > 0:
            # Whisper's fallback: plain sampling from the full distribution at this temperature.
            arrays["temperature"] = np.array([[temperature]], np.float32)
            arrays["runtime_top_k"] = np.array([[0]], np.int32)
            arrays["runtime_top_p"] = np.array([[1.0]], np.float32)
        inputs = [pb_utils.Tensor(name, value) for name, value in arrays.items()]
        inputs.append(pb_utils.Tensor.from_dlpack("encoder_input_features", to_dlpack(features)))

        response = await pb_utils.InferenceRequest(
            model_name=self.llm_model,
            requested_output_names=["output_ids", "sequence_length", "cum_log_probs"],
            inputs=inputs,
        ).async_exec()
        if response.has_error():
            raise RuntimeError(response.error().message())
        output_ids = pb_utils.get_output_tensor_by_name(response, "output_ids").as_numpy()
        lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
        cum_log_probs = pb_utils.get_output_tensor_by_name(response, "cum_log_probs").as_numpy()
        ids = [int(t) for t in output_ids[0, 0, : int(lengths[0, 0])]]  # beam 0 is the best
        if self.eot in ids:
            ids = ids[: ids.index(self.eot)]
        text = render_output(self.tokenizer, ids)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("TRANSCRIPTS", np.array([[text.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("LOGPROB_SUM", np.array([[float(cum_log_probs.reshape(-1)[0])]], np.float32)),
            pb_utils.Tensor("TOKEN_COUNT", np.array([[len(ids)]], np.int32)),
        ])
