#!/usr/bin/env bash
# The end-to-end test through API Gateway (`make e2e`): installs LocalStack if needed, then runs tests/apigw,
# whose session fixture starts LocalStack (scripts/localstack.sh start) and stops it at the end.
# Exits with pytest's exit code. Extra arguments go to pytest (e.g. -k usage, -x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/pytest ]; then
  echo "error: .venv with the test extras is missing; run \`make test\` (or pip install -e '.[test]') first" >&2
  exit 1
fi

started=$SECONDS
scripts/localstack.sh install
installed=$SECONDS

status=0
.venv/bin/pytest -q tests/apigw "$@" || status=$?
echo "e2e-apigw: LocalStack install/check $((installed - started)) s, tests $((SECONDS - installed)) s, exit $status"
exit "$status"
