#!/usr/bin/env bash
# LocalStack (API Gateway + CloudFormation) without Docker, for the end-to-end test through API Gateway.
# It needs Python 3.12+, so it lives in its own venv under .cache/ (the project itself runs on 3.11).
#
# usage: scripts/localstack.sh install | start | stop | status | logs
#   install  create .cache/localstack-venv and pip install the pinned LocalStack (skipped when already done)
#   start    install if needed, start LocalStack in the background, wait for its health endpoint
#   stop     stop the LocalStack this script started (by its recorded pid) and remove its state
#   status   exit 0 if LocalStack answers on its port
#   logs     print LocalStack's log
# environment:
#   LOCALSTACK_PYTHON        a Python 3.12+ interpreter (default: python3.13/3.12 on PATH or under ~/.pyenv)
#   LOCALSTACK_PORT          gateway port (default 4566)
#   LOCALSTACK_START_TIMEOUT seconds to wait for the health endpoint (default 120)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
VENV="$CACHE/localstack-venv"
STATE="$CACHE/localstack"
PORT="${LOCALSTACK_PORT:-4566}"
START_TIMEOUT="${LOCALSTACK_START_TIMEOUT:-120}"
HEALTH_URL="http://127.0.0.1:$PORT/_localstack/health"
# Pinned together: newer cbor2/pyopenssl/cryptography break this LocalStack release outside its Docker image.
PACKAGES=('localstack-core[runtime]==2026.3.0' 'cbor2<6' 'pyopenssl<25' 'cryptography<45' 'service_identity')
STAMP="$VENV/.installed-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-16)"

find_python() {
  if [ -n "${LOCALSTACK_PYTHON:-}" ]; then
    echo "$LOCALSTACK_PYTHON"
    return
  fi
  local candidate
  for candidate in python3.13 python3.12 \
    "$HOME"/.pyenv/versions/3.13.*/bin/python3.13 "$HOME"/.pyenv/versions/3.12.*/bin/python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
  echo "error: LocalStack needs Python 3.12 or newer and none was found (set LOCALSTACK_PYTHON, or" \
    "install one: pyenv install 3.13)" >&2
  exit 1
}

pip_install() {
  # Quiet, minus the warnings some machines' pip.conf causes about absent local package folders.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "it is neither a file nor a directory" || true; }
}

install() {
  if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
    return
  fi
  local python started
  python="$(find_python)"
  started=$SECONDS
  echo "installing LocalStack into $VENV (with $python)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$python" -m venv "$VENV"
  pip_install --upgrade pip
  pip_install "${PACKAGES[@]}"
  touch "$STAMP"
  echo "LocalStack installed in $((SECONDS - started)) s"
}

healthy() {
  "$VENV/bin/python" - "$HEALTH_URL" <<'EOF' >/dev/null 2>&1
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    services = json.load(r).get("services", {})
# "available" (not started yet, starts on first use) or "running" for everything the test uses
wanted = ("apigateway", "cloudformation", "sts", "iam", "s3")
sys.exit(0 if all(services.get(s) in ("available", "running") for s in wanted) else 1)
EOF
}

our_pid() {
  # The pid this script recorded, if that process is still alive.
  local pid
  [ -f "$STATE/pid" ] || return 1
  pid="$(cat "$STATE/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  install
  if our_pid >/dev/null; then
    echo "LocalStack already running (pid $(our_pid)) on port $PORT"
    return
  fi
  if healthy; then
    echo "error: a LocalStack this script did not start already answers on $HEALTH_URL; use it, stop it," \
      "or set LOCALSTACK_PORT" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "error: port $PORT is in use by something that is not LocalStack; free it or set LOCALSTACK_PORT" >&2
    exit 1
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE/fs"
  local started=$SECONDS
  # setsid: its own process group, so `stop` ends LocalStack and whatever it spawned, nothing else.
  # SKIP_SSL_CERT_DOWNLOAD / DISABLE_EVENTS: no network calls to localstack.cloud from CI.
  OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$STATE/fs" \
    GATEWAY_LISTEN="127.0.0.1:$PORT" \
    DNS_ADDRESS=0 \
    SERVICES=apigateway,cloudformation,sts,iam,s3 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 \
    LOCALSTACK_TELEMETRY_DISABLED=1 \
    setsid "$VENV/bin/python" -m localstack.runtime.main >"$STATE/localstack.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  while ! healthy; do
    if ! our_pid >/dev/null; then
      echo "error: LocalStack exited while starting; its log ($STATE/localstack.log):" >&2
      tail -n 40 "$STATE/localstack.log" >&2
      exit 1
    fi
    if [ $((SECONDS - started)) -ge "$START_TIMEOUT" ]; then
      echo "error: LocalStack did not become healthy within $START_TIMEOUT s; last log lines:" >&2
      tail -n 40 "$STATE/localstack.log" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  echo "LocalStack ready on http://127.0.0.1:$PORT in $((SECONDS - started)) s (pid $(cat "$STATE/pid"))"
}

stop() {
  local pid waited=0
  if ! pid="$(our_pid)"; then
    rm -rf "$STATE/fs" "$STATE/pid"
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 40 ]; do
    sleep 0.25
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$STATE/fs" "$STATE/pid"
  echo "LocalStack stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) [ -x "$VENV/bin/python" ] && healthy ;;
  logs) cat "$STATE/localstack.log" ;;
  *)
    echo "usage: $0 install|start|stop|status|logs" >&2
    exit 2
    ;;
esac
