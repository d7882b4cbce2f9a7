#!/usr/bin/env bash
# The README's test command: installs the package with its test and aot extras, then runs the
# suite (8 fake CPU devices, tiny configs) in one pytest-xdist worker per core, each test file
# on one worker (its module fixtures built once).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -e ".[test,aot]"
exec python -m pytest tests -q -p no:cacheprovider -n auto --dist=loadfile "$@"
