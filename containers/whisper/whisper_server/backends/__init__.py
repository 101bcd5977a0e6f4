"""Backends behind one interface (``base.Backend``), chosen by WHISPER_BACKEND.

Each backend module is imported only when chosen, so the CPU image never imports torch or
the Triton client, and a backend's heavy dependencies stay its own.
"""

from __future__ import annotations

import importlib

from whisper_server.backends.base import Backend, DecodeOptions
from whisper_server.settings import Settings

# WHISPER_BACKEND value -> "module:class" (modules under whisper_server.backends).
REGISTRY = {
    "faster-whisper": "faster_whisper_backend:FasterWhisperBackend",
    "torch": "torch_backend:TorchBackend",
    "triton": "triton_backend:TritonBackend",
}


def load_backend(settings: Settings) -> Backend:
    """Construct the configured backend; it loads its model before returning."""
    try:
        target = REGISTRY[settings.backend]
    except KeyError:
        raise ValueError(f"unknown backend {settings.backend!r}; known: {', '.join(REGISTRY)}") from None
    module_name, class_name = target.split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    backend = getattr(module, class_name)(settings)
    if not isinstance(backend, Backend):
        raise TypeError(f"{target} does not implement the Backend protocol")
    return backend


__all__ = ["Backend", "DecodeOptions", "REGISTRY", "load_backend"]
