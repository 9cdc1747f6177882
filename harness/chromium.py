"""Debian's headless Chromium as a real process, driven over the DevTools protocol.

The browser tests load a page (the webhook's ``/docs`` over its real TLS, the trainer's HTML
report from a file) and need what only a browser knows: console errors and uncaught exceptions,
CSP violations, every request the page made, whether images decoded, and a screenshot. This
module starts ``chromium`` with a fresh profile and a DevTools port it picks itself, talks to the
page's target over a WebSocket (``websocket-client``), and records those events as they come.
Nothing here downloads a browser: ``tests/tools/install-chromium.sh`` installs Debian's.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars")


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageEvents:
    """What a page did, as the DevTools protocol reported it."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)


class Chromium:
    """``with Chromium(spki_pins=...) as browser:`` then ``browser.navigate(url)``, ``evaluate(js)``,
    ``screenshot(path)``; ``browser.events`` holds console errors and requests since the start.

    ``spki_pins`` (base64 SHA-256 of a server's public key) make Chromium accept exactly that
    server's certificate, as a CA it does not know signed it: TLS is still real, only the trust
    anchor is named by key instead of by a system store the test cannot write to.
    """

    def __init__(self, *, spki_pins: tuple[str, ...] = (), window: tuple[int, int] = (1280, 1600),
                 start_timeout: float = 30.0) -> None:
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("chromium is not on PATH (tests/tools/install-chromium.sh installs Debian's)")
        self.profile = Path(tempfile.mkdtemp(prefix="energetiscope-chromium-"))
        args = [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                f"--window-size={window[0]},{window[1]}"]
        if spki_pins:
            args.append("--ignore-certificate-errors-spki-list=" + ",".join(spki_pins))
        self.log_path = self.profile / "chromium.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([*args, "about:blank"], stdout=self._log, stderr=subprocess.STDOUT)
        self.events = PageEvents()
        self._next_id = 0
        self._socket = self._connect(start_timeout)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def _connect(self, timeout: float) -> websocket.WebSocket:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port:\n{self.log()}")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                pages = [t for t in json.load(answer) if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.05)
        # No Origin header: Chromium refuses DevTools connections from origins it was not told about.
        return websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    # -- the protocol ----------------------------------------------------------------------------

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.events.console_errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.events.console_errors.append(
                "exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.events.console_errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.events.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            self.events.failed_requests.append(f"{params.get('errorText')} {params.get('blockedReason', '')}")

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """One command; events that arrive meanwhile are recorded."""
        self._next_id += 1
        command_id = self._next_id
        self._socket.send(json.dumps({"id": command_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            self._socket.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self._socket.recv())
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)
            if time.monotonic() > deadline:
                raise TimeoutError(method)

    def pump(self, seconds: float) -> None:
        """Record events for ``seconds`` (a page's late requests and errors)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._socket.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._record(json.loads(self._socket.recv()))
            except websocket.WebSocketTimeoutException:
                return

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """A JavaScript expression's value (promises awaited), or the page's exception as an error."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            self.pump(0.1)

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        self.send("Page.navigate", {"url": url}, timeout)
        self.wait_for("document.readyState === 'complete'", timeout)

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG of what the page shows now."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": size["width"],
                                                             "height": min(size["height"], 16000), "scale": 1}})
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spki_pin(certificate_pem: bytes) -> str:
    """Chromium's pin of a certificate's key: base64 of the SHA-256 of its SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    certificate = x509.load_pem_x509_certificate(certificate_pem)
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode("ascii")
