"""Entry point for the stock SageMaker PyTorch inference container (SAGEMAKER_PROGRAM).

Everything lives in whisper_server, copied beside this file in the model tarball, so this
path and the BYOC image run the same decoding, chunking, backend and formatting code.
"""

from whisper_server.dlc import input_fn, model_fn, output_fn, predict_fn

__all__ = ["model_fn", "input_fn", "predict_fn", "output_fn"]
