# The CDK app: synth every environment, diff and deploy one. See docs/infrastructure.md.
CDK := npx --no-install cdk
CDK_ENVS := $(shell $(PY) -c "import json; print(' '.join(json.load(open('cdk.json'))['context']['environments']))" 2>/dev/null || echo dev prod)
# SageMaker rejects OCI image indexes; BuildKit adds a provenance attestation (an index) by
# default and CDK has no --provenance flag, so the documented switch goes in the environment.
CDK_DEPLOY_ENV := BUILDX_NO_DEFAULT_ATTESTATIONS=1

.PHONY: synth diff deploy synth-time

synth: install-cdk ## synthesize every stack of every environment (no AWS account needed); templates in cdk.out/<env>/
	@for env in $(CDK_ENVS); do \
	  $(CDK) synth -c env=$$env -o cdk.out/$$env -q || exit 1; \
	  echo "$$env: $$(ls cdk.out/$$env/*.template.json | wc -l) templates in cdk.out/$$env/:"; \
	  ls -1 cdk.out/$$env/*.template.json | sed 's/^/  /'; \
	done

diff: install-cdk ## show what `make deploy ENV=...` would change (needs AWS credentials)
	$(CDK_DEPLOY_ENV) $(CDK) diff -c env=$(ENV) -o cdk.out/$(ENV) --all

# The endpoint cannot start without its model, and the model bucket is created by the Storage
# stack: Storage first, then the guard (whisper-sm model --check; it says how to upload the model),
# then the rest. For triton without engines yet the guard exits 3: deploy the EngineBuild stack,
# which builds them, and stop.
DEPLOY = $(CDK_DEPLOY_ENV) $(CDK) deploy -c env=$(ENV) -o cdk.out/$(ENV) --require-approval broadening

deploy: install ## deploy ENV: the Storage stack, then (if the model is in its bucket) every other stack
	$(DEPLOY) Whisper-$(ENV)-Storage
	@rc=0; $(abspath $(VENV))/bin/whisper-sm model --env $(ENV) --check || rc=$$?; \
	if [ $$rc -eq 3 ]; then $(DEPLOY) Whisper-$(ENV)-EngineBuild; fi; \
	if [ $$rc -ne 0 ]; then exit 1; fi
	$(DEPLOY) --all

synth-time: install-cdk ## measure `cdk synth` per environment (docs/benchmarks.md)
	@for env in $(CDK_ENVS); do \
	  /usr/bin/time -f "$$env: %e s wall, %U s user, %S s sys" $(CDK) synth -c env=$$env -o cdk.out/$$env -q; \
	done
