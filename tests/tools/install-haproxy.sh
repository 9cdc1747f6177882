#!/usr/bin/env bash
# Install Debian's `haproxy` for the replica tests (tests/e2e/test_replicas_e2e.py): two webhook
# processes behind a real load balancer, the apiserver calling it. Idempotent and quick: a no-op
# when haproxy is already on PATH. Debian's package is the only source, as for Prometheus
# (install-prometheus.sh) and Chromium (install-chromium.sh).
#
# The package's maintainer scripts enable and start a system `haproxy` service with
# /etc/haproxy/haproxy.cfg. The tests start their own on a free loopback port with a generated
# config, so the service is forbidden during the install with a policy-rc.d answering 101
# ("action forbidden"), as install-prometheus.sh does. A policy-rc.d that already exists is
# left alone.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
  echo "install-haproxy: $(haproxy -v 2>/dev/null | head -n1)"
  exit 0
fi

# Root, or sudo without a password; otherwise say why and leave it to the caller.
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "install-haproxy: need root (or passwordless sudo) to apt-get install haproxy (or put haproxy on PATH); the replica tests will be skipped" >&2
    exit 1
  fi
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# Temporary: installed by tests/tools/install-haproxy.sh\nexit 101\n' \
    | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 0755 "$policy"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" -eq 1 ]; then "${as_root[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null

if ! command -v haproxy >/dev/null 2>&1; then
  echo "install-haproxy: haproxy still not on PATH after apt-get install" >&2
  exit 1
fi
echo "install-haproxy: installed $(haproxy -v 2>/dev/null | head -n1)"
