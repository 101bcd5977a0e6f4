#!/usr/bin/env python3
"""CDK entry point: ``npx cdk synth -c env=dev`` (or ``make synth`` for every environment).

Run it through the CDK CLI: the per-environment settings live in cdk.json's context, which
``python app.py`` alone does not read.
"""

import aws_cdk as cdk

from stacks.application import build_stacks, config_from_app
from stacks.config import ConfigError

app = cdk.App()
try:
    cfg = config_from_app(app)
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None
build_stacks(app, cfg)
app.synth()
