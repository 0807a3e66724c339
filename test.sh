#!/usr/bin/env bash
# Runs every test: unit tests, the process tests (real coordinator and worker processes talking
# gRPC on 127.0.0.1), the wgpu tests on Mesa's software Vulkan, and the deploy checks (every
# kustomization rendered and validated against the Kubernetes schemas offline). Installs the
# tools they need first (scripts/install-test-tools.sh).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-test-tools.sh
export KUBECTL="$PWD/.venv-deploy/bin/kubectl"
cargo build --release --workspace --bins
cargo test --release --workspace
PYTHON="$PWD/.venv-deploy/bin/python" bash deploy/validate.sh
echo "test.sh: all tests passed"
