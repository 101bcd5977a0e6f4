#!/bin/sh
# mypy --strict over the CDK app. The editable install maps constructs/ to the import name
# whisper_constructs through an import hook, which mypy does not run; a throwaway folder with a
# symlink gives mypy the same mapping (nothing is added to the app's own import path).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
map=$(mktemp -d)
trap 'rm -rf "$map"' EXIT
ln -s "$root/constructs" "$map/whisper_constructs"
cd "$root"
MYPYPATH="$map" "$python" -m mypy --strict --cache-dir "$root/build/mypy-cache" stacks constructs app.py "$@"
