#!/usr/bin/env bash
# Checks deploy/prometheus/alerts.yaml with promtool: syntax and PromQL (`check rules`), then the unit tests in
# alerts.test.yaml (`test rules`: synthetic series that must fire, or not fire, each alert).
# promtool is taken from PATH, else from .cache/promtool/, else extracted there from Debian/Ubuntu's `prometheus`
# package (`apt-get download`, no install: nothing is started, no root needed unless the apt lists are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=.cache/promtool

find_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
  elif [ -x "$CACHE/promtool" ]; then
    echo "$CACHE/promtool"
  else
    return 1
  fi
}

fetch_promtool() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: promtool is missing and this is not a Debian/Ubuntu machine: put promtool on PATH" >&2
    echo "       (https://prometheus.io/download/, it is in the prometheus tarball)" >&2
    return 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  local sandbox=()
  if [ "$(id -u)" -eq 0 ]; then
    sandbox=(-o APT::Sandbox::User=root)  # _apt cannot write into our private temp dir
  fi
  echo "fetching promtool from the prometheus package (apt-get download)"
  if ! (cd "$tmp" && apt-get download -qq "${sandbox[@]}" prometheus) 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "error: apt-get download prometheus failed; run \`sudo apt-get update\` and try again" >&2
      return 1
    fi
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq "${sandbox[@]}" prometheus)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  mkdir -p "$CACHE"
  mv "$tmp/usr/bin/promtool" "$CACHE/promtool"
}

promtool=$(find_promtool) || { fetch_promtool && promtool=$(find_promtool); }
"$promtool" --version | head -n 1
"$promtool" check rules deploy/prometheus/alerts.yaml
"$promtool" test rules deploy/prometheus/alerts.test.yaml
echo "promtool: alert rules ok"
