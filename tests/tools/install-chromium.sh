#!/usr/bin/env bash
# Install Debian's `chromium` for the browser tests (tests/browser): the /docs page and the
# evaluation report, loaded and checked by headless Chromium over the DevTools protocol.
# Idempotent: a no-op when chromium is already on PATH. Nothing downloads a browser from
# elsewhere: Debian's package is the only source, as for Prometheus (install-prometheus.sh).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "install-chromium: $(chromium --version 2>/dev/null | head -n1)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-chromium: need root to apt-get install chromium (or put chromium on PATH); the browser tests will be skipped" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

if ! command -v chromium >/dev/null 2>&1; then
  echo "install-chromium: chromium still not on PATH after apt-get install" >&2
  exit 1
fi
echo "install-chromium: installed $(chromium --version 2>/dev/null | head -n1)"
