#!/usr/bin/env bash
# Installs Debian's chromium, which the slow report test uses to render report.html headless.
# Idempotent; a no-op when chromium is already on PATH.
set -euo pipefail

if command -v chromium >/dev/null; then
    echo "setup-chromium: chromium already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium
