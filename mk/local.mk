# The local pipeline: moto (S3/SNS/SQS) + the real container on CPU + the real Lambda handlers.
AUDIO ?=
DEMO_OUT ?= demo-output

.PHONY: demo local-pipeline test-pipeline

demo: install-server ## the whole pipeline locally on the shipped clips (or AUDIO=<dir>; MODEL=base for multilingual) -> ./demo-output/
	$(PY) -m whisper_local.demo --out $(DEMO_OUT) --model $(MODEL) $(if $(AUDIO),--audio "$(AUDIO)",)

local-pipeline: install-server ## keep the local pipeline up in the foreground for `whisper-sm --env local` (Ctrl-C stops it)
	$(abspath $(VENV))/bin/whisper-sm local

test-pipeline: install ## tests of the Lambdas, the local pipeline and the CLI
	$(PY) -m pytest tests/lambdas tests/pipeline
