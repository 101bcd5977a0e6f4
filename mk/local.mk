# The local pipeline: moto (S3/SNS/SQS) + the real container on CPU + the real Lambda handlers.
AUDIO ?=
DEMO_OUT ?= demo-output

.PHONY: demo local-pipeline test-pipeline

# MODEL's global default (tiny.en, for serve) is not the demo's: its clips need the multilingual base.
demo: install-server ## the whole pipeline locally on the shipped clips (or AUDIO=<dir>; MODEL=tiny.en for English-only, faster) -> ./demo-output/
	$(PY) -m whisper_cli.demo --out $(DEMO_OUT) $(if $(filter command line,$(origin MODEL)),--model $(MODEL),) $(if $(AUDIO),--audio "$(AUDIO)",)

local-pipeline: install-server ## keep the local pipeline up in the foreground for `whisper-sm --env local` (Ctrl-C stops it)
	$(abspath $(VENV))/bin/whisper-sm local

test-pipeline: install ## tests of the Lambdas, the local pipeline and the CLI
	$(PY) -m pytest tests/lambdas tests/pipeline
