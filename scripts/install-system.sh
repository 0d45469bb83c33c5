#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium for the browser test
# (Playwright drives it; no browser is downloaded). A no-op when it is already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is missing: run 'sudo apt-get install chromium' (needed by the web page test)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed $(chromium --version)"
