#!/usr/bin/env bash
# Offline `cdk diff` of every stack of every environment: HEAD's synthesized templates against
# BASE's (what this pull request changes), with no AWS credentials. Writes one Markdown file
# per environment plus summary.md into OUT.
#   audit/cdk_diff.sh HEAD_CDK_OUT BASE_CDK_OUT OUT
set -euo pipefail
head_out=$1 base_out=$2 out=$3
mkdir -p "$out"
: > "$out/summary.md"
for env_dir in "$head_out"/*/; do
  env=$(basename "$env_dir")
  report="$out/$env.md"
  printf '## cdk diff: %s\n\n' "$env" > "$report"
  for template in "$env_dir"*.template.json; do
    stack=$(basename "$template" .template.json)
    base="$base_out/$env/$stack.template.json"
    printf '### %s\n\n```\n' "$stack" >> "$report"
    if [[ -f $base ]]; then
      npx --no-install cdk diff --exclusively --app "$env_dir" --template "$base" "$stack" >> "$report" 2>&1 \
        || echo "(cdk diff exited with $?)" >> "$report"
    else
      echo "new stack (not in the base branch)" >> "$report"
    fi
    printf '```\n\n' >> "$report"
  done
  for base in "$base_out/$env"/*.template.json; do
    [[ -f $base ]] || continue
    stack=$(basename "$base" .template.json)
    [[ -f "$env_dir$stack.template.json" ]] || printf '### %s\n\nremoved by this change\n\n' "$stack" >> "$report"
  done
  cat "$report" >> "$out/summary.md"
done
