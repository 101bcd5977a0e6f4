# TensorRT-LLM engines (docs/engines.md). The build itself runs in CodeBuild on a GPU.
.PHONY: build-engines build-engines-plan test-engines

build-engines: install-cdk ## start the CodeBuild engine build of ENV (needs AWS credentials and the deployed stack)
	$(PY) -m whisper_engines start-build --env $(ENV) $(if $(WAIT),--wait,)

build-engines-plan: install-cdk ## print the TensorRT-LLM commands a build of ENV would run (no AWS, no GPU)
	@env $$($(PY) -c "import json; from stacks.config import load_env_config; \
	cfg = load_env_config(json.load(open('cdk.json'))['context'], '$(ENV)'); \
	print(' '.join(f'{k}={v}' for k, v in cfg.engine_spec('MODEL-BUCKET').to_env().items()))") \
	  $(PY) -m whisper_engines build --dry-run

test-engines: install ## the engine tooling and Triton backend tests (real tritonserver from nvidia-pytriton)
	$(PY) -m pytest tests/engines
