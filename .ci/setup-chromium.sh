#!/usr/bin/env bash
# Installs Debian's chromium, which the slow report test uses to render report.html headless.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

apt_install chromium chromium
