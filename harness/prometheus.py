"""A real Prometheus for tests and benchmarks: backfill OpenMetrics text with `promtool`, serve it on loopback.

    with PrometheusHarness(workdir) as harness:
        harness.backfill(openmetrics_text, name="kepler")
        harness.start()
        ... harness.url ...

Backfill writes TSDB blocks with `promtool tsdb create-blocks-from openmetrics` into the storage
directory before the server starts; the server then reads them (and, given a config with some,
scrapes targets and evaluates rules). The data must lie in the past (the server's head block
starts at "now") and within retention, which
Prometheus counts back from the newest block: the harness sets a 10-year retention so backfilled
blocks are never deleted under the tests.

The server listens on 127.0.0.1 only, on a free port, and is stopped (terminate, then kill) when
the context exits, whatever happened inside it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests

from harness.ports import free_loopback_port

RETENTION = "3650d"
_CONFIG = "# Written by the test harness: no scrape targets, backfilled blocks only.\nscrape_configs: []\n"
_LOG_TAIL_CHARS = 3000


class PrometheusBinariesMissing(RuntimeError):
    """`prometheus` or `promtool` is not on PATH."""


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path

    @classmethod
    def locate(cls) -> PrometheusBinaries:
        found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise PrometheusBinariesMissing(
                f"{' and '.join(missing)} not on PATH: run `bash tests/tools/install-prometheus.sh`"
            )
        return cls(prometheus=Path(found["prometheus"] or ""), promtool=Path(found["promtool"] or ""))


class PrometheusHarness:
    """One Prometheus server over backfilled data, in `workdir` (which it fills)."""

    def __init__(self, workdir: Path, binaries: PrometheusBinaries | None = None, config_yaml: str = _CONFIG) -> None:
        """``config_yaml``: the server's prometheus.yml; by default no scrape targets (backfill only)."""
        self.binaries = binaries or PrometheusBinaries.locate()
        self.config_yaml = config_yaml
        self.workdir = Path(workdir)
        self.storage_dir = self.workdir / "tsdb"
        self.input_dir = self.workdir / "openmetrics"
        self.log_path = self.workdir / "prometheus.log"
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    # -- data --------------------------------------------------------------------------------

    def backfill(self, openmetrics_text: str, name: str) -> None:
        """Turn OpenMetrics text (ending with `# EOF`) into TSDB blocks in the storage dir."""
        if self._process is not None:
            raise RuntimeError("backfill before start(): a running server does not reload blocks")
        if not openmetrics_text.rstrip().endswith("# EOF"):
            raise ValueError("OpenMetrics input must end with '# EOF'")
        source = self.input_dir / f"{name}.om"
        source.write_text(openmetrics_text, encoding="utf-8")
        completed = subprocess.run(
            [
                str(self.binaries.promtool),
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--quiet",
                str(source),
                str(self.storage_dir),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"promtool backfill of {source} failed (exit {completed.returncode}): "
                f"{(completed.stderr or completed.stdout)[-_LOG_TAIL_CHARS:]}"
            )
        # The blocks hold the data now; the text (tens of MB) would only fill pytest's kept tmp dirs.
        source.unlink()

    # -- server ------------------------------------------------------------------------------

    def start(self, ready_timeout_seconds: float = 120.0, attempts: int = 3, port: int | None = None) -> str:
        """Start the server and wait until /-/ready answers; returns its base URL. `port`: listen
        there (one attempt), e.g. to restart a stopped server at the URL its clients know."""
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_yaml, encoding="utf-8")
        last_problem = ""
        for _ in range(1 if port is not None else attempts):
            listen_port = port if port is not None else free_loopback_port()
            url = f"http://127.0.0.1:{listen_port}"
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(
                    [
                        str(self.binaries.prometheus),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.storage_dir}",
                        f"--storage.tsdb.retention.time={RETENTION}",
                        f"--web.listen-address=127.0.0.1:{listen_port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            problem = self._wait_ready(url, ready_timeout_seconds)
            if problem is None:
                self.url = url
                return url
            last_problem = problem
            self.stop()
            if "address already in use" not in problem:
                break  # only a port race is worth another try
        raise RuntimeError(f"Prometheus did not become ready: {last_problem}")

    def _wait_ready(self, url: str, timeout_seconds: float) -> str | None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            exit_code = self._process.poll()
            if exit_code is not None:
                return f"exited with {exit_code}: {self.log_tail()}"
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return None
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return f"not ready after {timeout_seconds:g} s: {self.log_tail()}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the benchmarks read its memory)."""
        return None if self._process is None else self._process.pid

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> PrometheusHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
