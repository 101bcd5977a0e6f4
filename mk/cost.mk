# The cost model (docs/cost.md): prices, benchmark results and scaling settings in, tables out.
.PHONY: cost-doc

cost-doc: ## regenerate docs/cost.md and the README's cost table from prices.json, benchmark results and cdk.json
	$(PY) -m whisper_cli.cost_model
