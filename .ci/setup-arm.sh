#!/usr/bin/env bash
# Installs what running aarch64 artifacts on an x86 host needs: Debian's qemu-user (qemu-aarch64)
# and the aarch64 cross compiler. The aarch64 Python root itself is built per user by
# nlpress.targets.emulation.aarch64_root().
set -euo pipefail
source "$(dirname "$0")/apt.sh"

apt_install "qemu-aarch64 aarch64-linux-gnu-gcc" qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
