#!/usr/bin/env bash
# Installs the tools that deploy/check.sh uses, and nothing else. Idempotent: each
# step checks first and does nothing when the tool is already there.
#
#   promtool             Debian package `prometheus` (apt-get), for `promtool check rules`
#                        and `promtool test rules`.
#   kubernetes-validate  PyPI, into a virtualenv, for schema validation of the manifests
#   checkov              PyPI, same virtualenv, for the security scan
#
# The virtualenv is ${AUDITOR_VENV:-/opt/auditor-venv}; check.sh looks there.
# kubectl is optional (check.sh renders the kustomization with python when it is missing)
# and is not installed here: Debian does not package it and we download no binaries.
# Needs root for apt-get (as on the dev machines and CI) unless promtool is present.
set -euo pipefail

VENV="${AUDITOR_VENV:-/opt/auditor-venv}"
PY="${PYTHON:-python3}"

step() { printf '==> %s\n' "$*"; }

if command -v promtool >/dev/null 2>&1; then
    step "promtool present: $(promtool --version 2>&1 | head -n1)"
else
    step "installing promtool (Debian package prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # --no-install-recommends: we only need the promtool binary, not a running server.
    apt-get install -y --no-install-recommends prometheus
    # The package starts a Prometheus server on systemd machines; check.sh does not need it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus || true
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi

need=()
"$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null || need+=(kubernetes-validate)
[ -x "$VENV/bin/checkov" ] || need+=(checkov)
# PyYAML is used by check.sh's own python steps (rendering, CRD checks).
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || need+=(PyYAML)
if [ "${#need[@]}" -gt 0 ]; then
    step "pip install ${need[*]} into $VENV"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet "${need[@]}"
else
    step "kubernetes-validate, checkov and PyYAML present in $VENV"
fi

step "kubernetes-validate $("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | awk '/^Version:/{print $2}')"
step "checkov $(CKV_SKIP_PACKAGE_UPDATE_CHECK=true "$VENV/bin/checkov" --version 2>/dev/null | tail -n1)"
step "setup done"
