#!/usr/bin/env bash
# Installs what `make bench` and `make profile` need from the system on Debian/Ubuntu: wrk (the load),
# nginx-light and haproxy (the baselines; nginx is the upstream too) and taskset (util-linux: pinning).
# Runs apt-get update and install only when something is missing; that needs root, otherwise it says
# exactly what to install and fails. `--redis local` also needs redis-server (scripts/system-deps.sh).
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # nginx and haproxy live in /usr/sbin
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the benchmark needs these system packages: ${missing[*]}" >&2
  echo "       install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  echo "       (or run scripts/bench-deps.sh as root)" >&2
  exit 1
fi
echo "installing system packages for the benchmark: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian may start nginx and haproxy services on install; the benchmark runs its own on free ports.
