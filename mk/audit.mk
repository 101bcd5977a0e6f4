# Security review of the synthesized app (docs/reliability.md): cdk-nag, cfn-lint, checkov.
# checkov lives in its own venv: its dependency tree is large and conflicts with the app's.
AUDIT_VENV ?= .venv-audit
AUDIT_PY := $(abspath $(AUDIT_VENV))/bin/python
AUDIT_OUT := build/audit
# W3005 (redundant DependsOn) is emitted by CDK's own constructs; everything else fails.
CFN_LINT_IGNORE := W3005

.PHONY: audit audit-install

$(AUDIT_VENV)/.installed: requirements/audit.txt
	python3 -m venv $(AUDIT_VENV)
	$(AUDIT_PY) -m pip install -q --disable-pip-version-check -r requirements/audit.txt
	touch $@

audit-install: $(AUDIT_VENV)/.installed ## install checkov into .venv-audit from requirements/audit.txt

audit: synth $(AUDIT_VENV)/.installed ## cdk-nag (zero unacknowledged), cfn-lint, checkov offline with reviewed acceptances
	@mkdir -p $(AUDIT_OUT)
	$(PY) audit/gate.py nag cdk.out
	$(abspath $(VENV))/bin/cfn-lint --ignore-checks $(CFN_LINT_IGNORE) -- cdk.out/*/*.template.json
	@echo "cfn-lint: clean (ignoring $(CFN_LINT_IGNORE))"
	$(AUDIT_VENV)/bin/checkov -d cdk.out --framework cloudformation --skip-download --quiet --compact \
	  -o json > $(AUDIT_OUT)/checkov.json || true
	$(AUDIT_PY) audit/gate.py checkov $(AUDIT_OUT)/checkov.json audit/checkov-accepted.yaml

# Reliability measurements (docs/reliability.md): run once, on a quiet machine.
FUZZ_EXAMPLES ?= 300
SOAK_CLIENTS ?= 200
SOAK_SECONDS ?= 180

.PHONY: fuzz-campaign soak

fuzz-campaign: install ## the fuzz campaign: tests/fuzz with fresh seeds, FUZZ_EXAMPLES inputs per target
	$(PY) benchmarks/fuzz_campaign.py --examples $(FUZZ_EXAMPLES)

soak: install ## bounded loopback soak of the real server: SOAK_CLIENTS clients for SOAK_SECONDS
	$(PY) benchmarks/soak.py --clients $(SOAK_CLIENTS) --duration $(SOAK_SECONDS)
