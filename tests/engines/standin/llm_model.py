"""Stand-in for the ``tensorrt_llm`` model, behind the GENERATED tensorrt_llm config (backend
switched to python), so the REAL whisper_bls model.py runs against it on CPU.

Logs what the BLS sent to $WHISPER_STANDIN_LOG and answers with the token ids in
$WHISPER_STANDIN_IDS (JSON list), or the language token $WHISPER_STANDIN_LANGUAGE_ID when
asked for one token.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _get(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            features = _get(request, "encoder_input_features")
            seen = {name: (None if (v := _get(request, name)) is None else v.reshape(-1).tolist())
                    for name in ("input_lengths", "encoder_output_lengths", "decoder_input_ids",
                                 "decoder_input_lengths", "request_output_len", "end_id", "pad_id", "beam_width",
                                 "temperature", "runtime_top_k", "runtime_top_p", "return_log_probs")}
            seen["features"] = [list(features.shape), str(features.dtype), float(np.abs(features.astype(np.float64)).sum())]
            with open(os.environ["WHISPER_STANDIN_LOG"], "a") as log:
                log.write(json.dumps(seen) + "\n")
            if seen["request_output_len"] == [1]:
                ids = [int(os.environ["WHISPER_STANDIN_LANGUAGE_ID"])]
            else:
                ids = json.loads(os.environ["WHISPER_STANDIN_IDS"])
            beam = seen["beam_width"][0] if seen["beam_width"] else 1
            output = np.full((1, beam, len(ids) + 3), ids[-1], dtype=np.int32)
            output[0, :, : len(ids)] = ids
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("output_ids", output),
                pb_utils.Tensor("sequence_length", np.full((1, beam), len(ids), dtype=np.int32)),
                pb_utils.Tensor("cum_log_probs", np.full((1, beam), -0.7, dtype=np.float32)),
            ]))
        return responses
