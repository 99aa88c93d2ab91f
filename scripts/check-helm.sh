#!/usr/bin/env bash
# Offline checks of helm/threescale-proxy with the real tools, as CI runs them:
#   1. `helm lint --strict` with each ci/*.yaml values file;
#   2. `helm template` of each ci/*.yaml (and of the sidecar example app chart, regular and native) piped into
#      `kubernetes-validate --strict` for each Kubernetes version in KUBE_VERSIONS;
#   3. the committed rendering of the example (examples/rendered/) matches what the chart renders now;
#   4. each ci-invalid/*.yaml, layered on ci/default-values.yaml, makes lint and template FAIL with a message
#      naming the key in its `# expect:` line (and the schema's message when `# by: schema`). `# by: template`
#      files break a rule only a template can check (a `fail` comparing keys or the Kubernetes version): helm
#      lint by design logs a template's `fail` at INFO level, so for them only `helm template` must fail.
# Headers a values file may carry: `# api-versions: group/version/Kind` (extra Capabilities for template),
# `# min-kube: X.Y.Z` (skip older KUBE_VERSIONS), `# kube-version: X.Y.Z` (ci-invalid: render as that version).
# kubernetes-validate knows only built-in kinds: a ServiceMonitor is reported as WARN and skipped; this script
# accepts a WARN only for ServiceMonitor and requires an INFO "passed" for every other object (the pytest test
# checks the ServiceMonitor's structure). Env: KUBE_VERSIONS, HELM_RENDER_DIR (keep the rendered manifests there),
# UPDATE_RENDERED=1 (rewrite examples/rendered/ instead of comparing).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$ROOT/helm/threescale-proxy"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.29.0 1.35.0}"   # oldest with native sidecars, and a current one
RELEASE=ci

HELM="$("$ROOT/scripts/helm.sh")"
KV="$ROOT/.venv/bin/kubernetes-validate"
if [ ! -x "$KV" ]; then
  echo "installing kubernetes-validate into .venv (it ships the Kubernetes JSON schemas: no network at check time)"
  "$ROOT/.venv/bin/pip" install -q kubernetes-validate
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
OUT="${HELM_RENDER_DIR:-$work/rendered}"
mkdir -p "$OUT"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

header() { sed -n "s/^# $1: *//p" "$2" | head -n 1; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

# kubernetes-validate one rendered file for one Kubernetes version; every non-ServiceMonitor object must pass.
validate() {
  local file="$1" kube="$2" report objects passed bad
  report="$("$KV" --strict -k "$kube" "$file" 2>&1)" || { echo "$report" >&2; fail "$file: kubernetes-validate $kube"; return; }
  bad="$(grep -v -e '^INFO .* passed for resource ' -e "^WARN .*Couldn't find schema for kind ServiceMonitor " <<<"$report" || true)"
  [ -z "$bad" ] || { echo "$bad" >&2; fail "$file: unexpected kubernetes-validate output for $kube"; }
  objects="$(grep -c '^kind: ' "$file" || true)"
  objects=$((objects - $(grep -c '^kind: ServiceMonitor$' "$file" || true)))
  passed="$(grep -c '^INFO .* passed for resource ' <<<"$report" || true)"
  [ "$passed" -eq "$objects" ] || fail "$file: $passed of $objects objects validated against $kube"
}

echo "== helm $("$HELM" version --short), kubernetes-validate $("$KV" --version), Kubernetes $KUBE_VERSIONS"

# ---------------------------------------------------------------- 1 + 2: lint and template per ci values file
for values in "$CHART"/ci/*.yaml; do
  name="$(basename "$values" .yaml)"
  api="$(header api-versions "$values")"
  min="$(header min-kube "$values")"
  for kube in $KUBE_VERSIONS; do
    if [ -n "$min" ] && ! version_ge "$kube" "$min"; then continue; fi
    if ! lint="$("$HELM" lint --strict --kube-version "$kube" "$CHART" -f "$values" 2>&1)"; then
      echo "$lint" >&2; fail "helm lint --strict -f ci/$name.yaml (Kubernetes $kube)"; continue
    fi
    rendered="$OUT/$name-$kube.yaml"
    if ! "$HELM" template "$RELEASE" "$CHART" -f "$values" --kube-version "$kube" ${api:+--api-versions "$api"} \
        >"$rendered" 2>"$work/err"; then
      cat "$work/err" >&2; fail "helm template -f ci/$name.yaml (Kubernetes $kube)"; continue
    fi
    validate "$rendered" "$kube"
    echo "ok   ci/$name.yaml: lint, template, kubernetes-validate $kube ($(grep -c '^kind: ' "$rendered") objects)"
  done
done

# ---------------------------------------------------------------- 2b + 3: the sidecar example app chart
# The example depends on this chart with `repository: file://../..`: build it in a copy, as a user would.
cp -r "$CHART" "$work/threescale-proxy"
example="$work/threescale-proxy/examples/sidecar-app"
rm -rf "$example/charts"
if ! "$HELM" dependency build "$example" >"$work/dep.log" 2>&1; then
  cat "$work/dep.log" >&2; fail "helm dependency build examples/sidecar-app"
else
  "$HELM" lint --strict "$example" >"$work/lint.log" 2>&1 || { cat "$work/lint.log" >&2; fail "helm lint examples/sidecar-app"; }
  for variant in sidecar native-sidecar; do
    set_native=false; [ "$variant" = native-sidecar ] && set_native=true
    for kube in $KUBE_VERSIONS; do
      rendered="$OUT/example-$variant-$kube.yaml"
      # the ci values file of the same name, nested under the subchart's key, on top of the example's values
      { echo "threescale-proxy:"; sed 's/^/  /' "$CHART/ci/$variant-values.yaml"; } >"$work/$variant-sub.yaml"
      if ! "$HELM" template orders "$example" --kube-version "$kube" -f "$work/$variant-sub.yaml" \
          >"$rendered" 2>"$work/err"; then
        cat "$work/err" >&2; fail "helm template examples/sidecar-app ($variant, Kubernetes $kube)"; continue
      fi
      validate "$rendered" "$kube"
      echo "ok   examples/sidecar-app ($variant): template, kubernetes-validate $kube"
    done
    # the committed rendering: the example's own values only, release "orders", namespace default
    committed="$CHART/examples/rendered/$variant.yaml"
    {
      echo "# Rendered from examples/sidecar-app (sidecar.native=$set_native) by scripts/check-helm.sh, which fails"
      echo "# when this file is stale. Do not edit: UPDATE_RENDERED=1 scripts/check-helm.sh rewrites it."
      "$HELM" template orders "$example" --set "threescale-proxy.sidecar.native=$set_native"
    } >"$work/now.yaml"
    if [ "${UPDATE_RENDERED:-0}" = 1 ]; then
      cp "$work/now.yaml" "$committed"; echo "wrote examples/rendered/$variant.yaml"
    elif ! diff -u "$committed" "$work/now.yaml" >"$work/diff" 2>&1; then
      cat "$work/diff" >&2
      fail "examples/rendered/$variant.yaml is stale: UPDATE_RENDERED=1 scripts/check-helm.sh rewrites it"
    else
      echo "ok   examples/rendered/$variant.yaml is current"
    fi
  done
fi

# ---------------------------------------------------------------- 4: values that must be refused
for values in "$CHART"/ci-invalid/*.yaml; do
  name="ci-invalid/$(basename "$values")"
  expect="$(header expect "$values")"
  by="$(header by "$values")"
  kube="$(header kube-version "$values")"
  [ -n "$expect" ] || { fail "$name has no '# expect:' line"; continue; }
  cmds=(lint template)
  [ "$by" = template ] && cmds=(template)
  for cmd in "${cmds[@]}"; do
    if [ "$cmd" = lint ]; then
      args=(lint --strict "$CHART")
    else
      args=(template "$RELEASE" "$CHART")
    fi
    if out="$("$HELM" "${args[@]}" -f "$CHART/ci/default-values.yaml" -f "$values" ${kube:+--kube-version "$kube"} 2>&1)"; then
      fail "helm $cmd accepted $name"; continue
    fi
    grep -qF -- "$expect" <<<"$out" || { echo "$out" >&2; fail "helm $cmd $name: message does not name '$expect'"; }
    if [ "$by" = schema ] && ! grep -q "values don't meet the specifications of the schema" <<<"$out"; then
      echo "$out" >&2; fail "helm $cmd $name: not refused by values.schema.json"
    fi
  done
  echo "ok   $name refused (${by:-?}): names '$expect'"
done

if [ "$failures" -gt 0 ]; then
  echo "check-helm: $failures failure(s)" >&2
  exit 1
fi
echo "check-helm: all passed"
