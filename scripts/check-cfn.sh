#!/usr/bin/env bash
# Lints every CloudFormation template under deploy/cloudformation/ with cfn-lint (errors and warnings fail).
# cfn-lint comes from the project's venv (installed there when absent), so CI needs nothing preinstalled.
#
# usage: scripts/check-cfn.sh [extra cfn-lint arguments]     (VENV=path to use another virtualenv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TEMPLATES_DIR="$ROOT/deploy/cloudformation"

if [ ! -x "$VENV/bin/python" ]; then
  echo "error: no virtualenv at $VENV; create it first (make test does)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c 'import cfnlint' >/dev/null 2>&1; then
  echo "installing cfn-lint into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'cfn-lint>=1.20,<2'
fi

shopt -s nullglob
templates=("$TEMPLATES_DIR"/*.yaml)
if [ ${#templates[@]} -eq 0 ]; then
  echo "error: no templates in $TEMPLATES_DIR" >&2
  exit 1
fi
echo "cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $2}'): ${templates[*]#"$ROOT"/}"
"$VENV/bin/cfn-lint" "$@" -- "${templates[@]}"
echo "cfn-lint: ${#templates[@]} templates clean"
