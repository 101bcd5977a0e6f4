# The model artifact in an environment's model bucket (docs/infrastructure.md "Deploying").
# MODEL only counts when given on the command line: mk/container.mk defaults it to the bundled tiny.en.
SOURCE ?=
MODEL_FLAGS = $(if $(filter command line,$(origin MODEL)),--model $(MODEL),) $(if $(SOURCE),--source "$(SOURCE)",)

.PHONY: model model-check

model: install ## fetch (Hugging Face hub, or SOURCE=<folder>), convert and upload ENV's model: make model ENV=dev MODEL=large-v3
	$(abspath $(VENV))/bin/whisper-sm model --env $(ENV) $(MODEL_FLAGS)

model-check: install ## the deploy guard alone: is ENV's model complete in its model bucket?
	$(abspath $(VENV))/bin/whisper-sm model --env $(ENV) --check
