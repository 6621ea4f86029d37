#!/usr/bin/env bash
# Installs what running aarch64 artifacts on an x86 host needs: Debian's qemu-user (qemu-aarch64)
# and the aarch64 cross compiler. Idempotent; a no-op when both are already on PATH.
# The aarch64 Python root itself is built per user by nlpress.targets.emulation.aarch64_root().
set -euo pipefail

if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "setup-arm: qemu-aarch64 and aarch64-linux-gnu-gcc already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
command -v qemu-aarch64
command -v aarch64-linux-gnu-gcc
