#!/usr/bin/env python3
"""CDK entry point: ``npx cdk synth -c env=dev`` (or ``make synth`` for every environment).

Run it through the CDK CLI: the per-environment settings live in cdk.json's context, which
``python app.py`` alone does not read.
"""

import aws_cdk as cdk

from stacks.application import build_stacks, config_from_app
from stacks.config import ConfigError

# CDK's built-in CloudFormation schema validation costs ~15 s per synth on the 2-core dev box;
# cfn-lint checks the same templates in tests/infra and `make audit`, so it is off here.
app = cdk.App(builtin_cloud_formation_validation=False)
try:
    cfg = config_from_app(app)
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None
build_stacks(app, cfg)
app.synth()
