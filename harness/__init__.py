"""Harnesses shared by the tests and the benchmarks: real processes on loopback, and the data they serve.

- ``harness.webhook_process``: the webhook (or a reference server) as a real process over TLS.
- ``harness.prometheus``: a real Prometheus over backfilled OpenMetrics data.
- ``harness.kepler_counters``: Kepler's cumulative energy counters from per-step energies.
- ``harness.haproxy``: Debian's HAProxy as a load balancer before webhook replicas.
- ``harness.ports``: free loopback ports.

Not part of the product: the wheel does not ship it, and tests and ``bench/`` import it from the
repository root.
"""
