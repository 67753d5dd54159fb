#!/usr/bin/env bash
# Offline checks of deploy/, for developers and CI. Tools come from deploy/setup.sh.
#   1. render the kustomization (kubectl kustomize when present, else check.py render;
#      with kubectl both are done and compared)
#   2. kubernetes-validate --strict for several Kubernetes versions; the
#      prometheus-operator CRDs (PodMonitor, PrometheusRule) checked by check.py
#   3. promtool check rules on the PrometheusRule's spec
#   4. promtool test rules deploy/tests/alerts-test.yaml
#   5. checkov on deploy/ (kubernetes, dockerfile); skips are in the manifests and the
#      Dockerfile, justified in SECURITY.md
#   6. the image's ENTRYPOINT/CMD (deploy/Dockerfile, and the image `cargo xtask image`
#      built when podman has it) agree with the DaemonSet's args and `auditor record --help`
# Usage: deploy/check.sh            (from anywhere)
# Env:   AUDITOR_BIN (default: $CARGO_TARGET_DIR or target/, debug/auditor), AUDITOR_VENV (default /opt/auditor-venv), K8S_VERSIONS (default "1.29 1.31 1.33 1.35"),
#        AUDITOR_NO_KUBECTL=1 to use the python render even where kubectl exists
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${AUDITOR_VENV:-/opt/auditor-venv}"
PY="$VENV/bin/python"
K8S_VERSIONS="${K8S_VERSIONS:-1.29 1.31 1.33 1.35}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

step "tools"
[ -x "$PY" ] || fail "no virtualenv at $VENV: run deploy/setup.sh"
command -v promtool >/dev/null || fail "promtool missing: run deploy/setup.sh"
[ -x "$VENV/bin/checkov" ] || fail "checkov missing in $VENV: run deploy/setup.sh"
echo "python: $("$PY" --version)"
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "checkov: $("$VENV/bin/checkov" --version | tail -n1)"

step "render kustomization"
RENDERED="$WORK/rendered.yaml"
"$PY" "$DEPLOY/check.py" render "$DEPLOY" "$WORK/rendered-python.yaml"
if [ -z "${AUDITOR_NO_KUBECTL:-}" ] && command -v kubectl >/dev/null 2>&1 \
    && kubectl kustomize --help >/dev/null 2>&1; then
    echo "kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize || echo 'version unknown'))"
    kubectl kustomize "$DEPLOY" > "$RENDERED"
    "$PY" "$DEPLOY/check.py" same "$RENDERED" "$WORK/rendered-python.yaml"
else
    echo "kubectl not found (or AUDITOR_NO_KUBECTL set): using the python render"
    cp "$WORK/rendered-python.yaml" "$RENDERED"
fi

step "kubernetes-validate (strict) for Kubernetes $K8S_VERSIONS"
# shellcheck disable=SC2086 # word splitting of the version list is intended
"$PY" "$DEPLOY/check.py" validate "$RENDERED" $K8S_VERSIONS

step "promtool check rules (PrometheusRule spec)"
RULES="$DEPLOY/tests/rules.generated.yaml"
"$PY" "$DEPLOY/check.py" extract-rules "$RENDERED" "$RULES"
promtool check rules "$RULES"

step "promtool test rules deploy/tests/alerts-test.yaml"
promtool test rules "$DEPLOY/tests/alerts-test.yaml"

step "checkov -d deploy --framework kubernetes,dockerfile"
# Offline: no policy download, no platform mapping, no PyPI version check.
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE
"$VENV/bin/checkov" -d "$DEPLOY" --framework kubernetes dockerfile \
    --compact --skip-download > "$WORK/checkov.txt" 2>&1 || {
    cat "$WORK/checkov.txt"
    fail "checkov found issues that are neither fixed nor justified (SECURITY.md)"
}
grep -E '^(kubernetes|dockerfile) scan results:' -A 2 "$WORK/checkov.txt" | grep -v '^--$' | sed '/^$/d'
echo "skipped (each justified in deploy/SECURITY.md):"
grep -B1 'SKIPPED for resource' "$WORK/checkov.txt" | sed -n 's/^Check: \([A-Z0-9_]*\).*/  \1/p' | sort -u

step "image entrypoint/CMD vs DaemonSet args (auditor record --help)"
REPO="$(dirname "$DEPLOY")"
AUDITOR="${AUDITOR_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/auditor}"
[ -x "$AUDITOR" ] || fail "no auditor binary at $AUDITOR: build it (cargo build -p auditor) or set AUDITOR_BIN"
"$PY" "$DEPLOY/check.py" image-args "$DEPLOY" "$AUDITOR"

step "all deploy checks passed"
