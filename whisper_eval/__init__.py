"""Evaluation helpers shared by tests and benchmark scripts: clip manifests, WER, audio encoding, raw-socket HTTP."""
