#!/usr/bin/env bash
# The Python the local-API client test runs (tests/it/serve.rs: serve_speaks_to_the_webuiapi_client):
# a virtual environment with the `webuiapi` package from PyPI, in the cache folder the tests
# look in (DCAE_TEST_PYTHON overrides it). Idempotent: a second run only checks.
set -euo pipefail
VENV="$HOME/.cache/dcae-studio/pyenv-api"
PY="$VENV/bin/python"
# The version the test was written against; its API is what A1111 clients send.
WEBUIAPI="webuiapi==0.9.17"
if [ -x "$PY" ] && "$PY" -c "import webuiapi" 2>/dev/null; then
  exit 0
fi
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  echo "python3 with venv is needed (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
  exit 1
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$PY" -m pip install -q --disable-pip-version-check "$WEBUIAPI"
"$PY" -c "import webuiapi" && echo "webuiapi ready: $PY"
