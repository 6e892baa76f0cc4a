#!/usr/bin/env bash
# Checks the Kubernetes manifests in deploy/k8s offline: renders the kustomization, validates
# every object against the Kubernetes schemas, and runs checkov's pod-security checks on what
# would be applied (.ci/check_deploy.py says what exactly). Needs python3 with venv and pip's
# registry; installs the pinned tools (.ci/deploy-requirements.txt) into .ci/.venv once.
#
# DEPLOY_VENV  where the tools go (default: .ci/.venv, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEPLOY_VENV:-.ci/.venv}"
reqs=.ci/deploy-requirements.txt

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# Re-install only when the pins changed since the last install.
stamp="$venv/.installed"
if ! cmp -s "$reqs" "$stamp"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$stamp"
fi

# checkov would ask its vendor's API for guidelines and report anonymous usage: neither is
# reachable or wanted here (--skip-download in check_deploy.py covers the former).
export BC_SKIP_MAPPING=TRUE CHECKOV_NO_TELEMETRY=1 CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
exec "$venv/bin/python" .ci/check_deploy.py --checkov "$venv/bin/checkov" "$@"
