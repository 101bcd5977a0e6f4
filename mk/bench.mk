# The torch backend's tests and its GPU benchmark (docs/torch-backend.md).
RUNS ?=
BENCH_RESULT ?= benchmarks/results/h100_$(shell date -u +%F).json

.PHONY: test-torch bench-prepare bench-merge

test-torch: install ## CPU tests of the torch backend (tiny.en vs faster-whisper)
	$(PY) -m pytest tests/torch

bench-prepare: install ## write .torchbench/ (speech chunks, tiny.en weights, references) for a device run of benchmarks/gpu_bench.py
	$(PY) benchmarks/gpu_bench.py prepare

bench-merge: install ## merge device runs (RUNS="a.json b.json") into $(BENCH_RESULT) and print the table
	$(PY) benchmarks/gpu_bench.py merge $(BENCH_RESULT) $(RUNS)
