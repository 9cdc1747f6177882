"""Servers under test as processes: the webhook and the echo reference.

All are started by `harness.webhook_process.WebhookProcess` (a free loopback port, the
certificate directory, ready when /readyz answers 200, stopped with SIGTERM); only the module
that serves differs.
"""

from __future__ import annotations

from pathlib import Path

from harness.webhook_process import SERVE, WebhookProcess

WEBHOOK = SERVE
ECHO = ("bench.echo_server",)
START_TIMEOUT_SECONDS = 60.0  # a 50,000-row model loads in a few seconds on a busy machine


def server_process(module: tuple[str, ...], cert_dir: Path, log_path: Path, *extra_args: str,
                   env: dict[str, str] | None = None) -> WebhookProcess:
    """`env` is added to this process's environment for the server (e.g. allocator settings)."""
    return WebhookProcess(cert_dir, log_path, *extra_args, module=module, start_timeout=START_TIMEOUT_SECONDS, env=env)
