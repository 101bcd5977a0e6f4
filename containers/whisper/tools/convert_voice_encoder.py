"""Make whisper_server/assets/ge2e_voice_encoder.npz from Resemblyzer's wheel (run once, by hand).

Resemblyzer (Apache-2.0, github.com/resemble-ai/Resemblyzer) ships its pretrained GE2E voice
encoder inside the wheel as ``resemblyzer/pretrained.pt`` (a torch checkpoint with the
optimiser state: 17 MB). The server needs only the network's weights, laid out for a NumPy
forward pass (``whisper_server.voice_encoder``), and the mel filters Resemblyzer gets from
librosa, so the image needs neither torch nor librosa for it:

    .venv/bin/pip download resemblyzer==0.1.4 --no-deps -d /tmp/rz
    .venv/bin/python containers/whisper/tools/convert_voice_encoder.py \\
        /tmp/rz/Resemblyzer-0.1.4-py3-none-any.whl containers/whisper/whisper_server/assets/ge2e_voice_encoder.npz

Needs torch (the dev venv has it). Nothing is changed but the layout: weights transposed
for ``x @ W``, the two LSTM biases summed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from whisper_server.backends.torch_model import mel_filters

CHECKPOINT = "resemblyzer/pretrained.pt"
LAYERS = 3
# Resemblyzer's hparams.py: 25 ms windows, 10 ms hop, 40 mel bands at 16 kHz.
N_FFT, N_MELS = 400, 40


def convert(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(CHECKPOINT)
        licence = next(n for n in zf.namelist() if n.endswith("dist-info/LICENSE"))
        assert "Apache License" in zf.read(licence).decode(), "the wheel's licence is not Apache-2.0"
    state = torch.load(io.BytesIO(raw), map_location="cpu")["model_state"]
    arrays: dict[str, np.ndarray] = {}
    for layer in range(LAYERS):
        arrays[f"w_ih{layer}"] = state[f"lstm.weight_ih_l{layer}"].numpy().T.copy()
        arrays[f"w_hh{layer}"] = state[f"lstm.weight_hh_l{layer}"].numpy().T.copy()
        arrays[f"b{layer}"] = (state[f"lstm.bias_ih_l{layer}"] + state[f"lstm.bias_hh_l{layer}"]).numpy()
    arrays["linear_w"] = state["linear.weight"].numpy().T.copy()
    arrays["linear_b"] = state["linear.bias"].numpy()
    arrays["mel_filters"] = mel_filters(N_MELS, n_fft=N_FFT)
    arrays["source"] = np.array(f"{wheel.name}:{CHECKPOINT} sha256={hashlib.sha256(raw).hexdigest()}")
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    convert(args.wheel, args.out)


if __name__ == "__main__":
    main()
