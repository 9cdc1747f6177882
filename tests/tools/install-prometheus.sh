#!/usr/bin/env bash
# Install Debian's `prometheus` package (it ships both `prometheus` and `promtool`) for the
# trainer's real-Prometheus tests. Idempotent: a no-op when both binaries are already on PATH.
#
# The package's maintainer scripts try to start a `prometheus` service listening on :9090. The
# tests start their own server on a free loopback port with their own storage dir, so a system
# service is useless and only risks a port clash: we forbid service starts during the install
# with a policy-rc.d that answers 101 ("action forbidden"), the Debian mechanism that
# invoke-rc.d and deb-systemd-invoke honour. A policy-rc.d that already exists is left alone.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "install-prometheus: $(prometheus --version 2>&1 | head -n1)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: need root to apt-get install prometheus (or put prometheus and promtool on PATH)" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# Temporary: installed by tests/tools/install-prometheus.sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

for tool in prometheus promtool; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-prometheus: $tool still not on PATH after apt-get install" >&2
    exit 1
  fi
done
echo "install-prometheus: installed $(prometheus --version 2>&1 | head -n1)"
