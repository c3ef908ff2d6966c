"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

No browser-automation library: the browser is started with ``--remote-debugging-port=0``,
its port is read from ``DevToolsActivePort`` and commands go over the page's websocket
(``websocket-client``, already pinned). The test session installs ``chromium`` with apt-get
when it is missing (CI machines start fresh), and fails with a clear message if it cannot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.helpers.models import PROJECT

if TYPE_CHECKING:
    from collections.abc import Iterator

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT / "test-artifacts"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
)


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing; a clear failure when that is not possible."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    problem = "apt-get is not available"
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        steps = [[apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=900, check=False)
            if done.returncode != 0:
                problem = f"`{' '.join(step)}` failed: {done.stderr[-1500:]}"
                break
        else:
            problem = f"apt-get installed chromium but {CHROMIUM} is still missing"
    elif apt:
        problem = "the tests do not run as root, so apt-get cannot install it"
    if not CHROMIUM.exists():
        pytest.fail(f"the browser test needs Debian's chromium at {CHROMIUM}; it could not be installed: {problem}. "
                    "Fix: `sudo apt-get install chromium`.", pytrace=False)
    return CHROMIUM


def js_error(event: dict[str, Any]) -> str | None:
    """What went wrong in the page, if this DevTools event says so: an uncaught exception, ``console.error`` or
    ``console.assert``, or an error the browser logged (a script that failed to load); the automatic favicon
    request is not the page's."""
    method, params = event.get("method"), event.get("params") or {}
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails") or {}
        exception = details.get("exception") or {}
        return f"exception: {exception.get('description') or details.get('text')} ({details.get('url', '')}:" \
               f"{details.get('lineNumber', '?')})"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args") or [])
        return f"console.{params['type']}: {args}"
    if method == "Log.entryAdded":
        entry = params.get("entry") or {}
        if entry.get("level") == "error" and not str(entry.get("url", "")).endswith("/favicon.ico"):
            return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip()
    return None


@dataclass
class Page:
    """One browser tab over the DevTools websocket. ``errors`` keeps every JS error of the tab (see
    :func:`js_error`) across navigations; ``responses`` every HTTP response (``Network.responseReceived``)."""

    ws: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0

    def _received(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        error = js_error(message)
        if error:
            self.errors.append(error)
        if message.get("method") == "Network.responseReceived":
            self.responses.append(message["params"]["response"])

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._received(message)
        raise AssertionError(f"no answer to {method} within {timeout} s")

    def _wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == name:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} within {timeout} s")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                self._received(json.loads(self.ws.recv()))

    def set_cookie(self, name: str, value: str, url: str) -> None:
        assert self.call("Network.setCookie", name=name, value=value, url=url, path="/").get("success", True)

    def open(self, url: str, timeout: float = 60) -> int:
        """Navigate, wait for the load event; return the HTTP status of the document."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired", timeout)
        statuses = [e["params"]["response"]["status"] for e in self.events
                    if e.get("method") == "Network.responseReceived" and e["params"].get("type") == "Document"]
        assert statuses, f"no document response for {url}"
        return int(statuses[-1])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def drain(self, seconds: float = 0.5) -> None:
        """Read the events still in flight for ``seconds`` (console messages, late responses)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._received(json.loads(self.ws.recv()))
            except Exception:  # noqa: BLE001 - a timeout: nothing more came
                break

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate ``expression`` until it is truthy; its last value (falsy after ``timeout``)."""
        deadline = time.monotonic() + timeout
        value = self.evaluate(expression)
        while not value and time.monotonic() < deadline:
            time.sleep(0.2)
            value = self.evaluate(expression)
        return value

    def emulate(self, *, width: int, height: int, dark: bool) -> None:
        """A viewport of ``width`` x ``height`` CSS pixels (a phone's below 600) and ``prefers-color-scheme``."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)
        self.call("Emulation.setEmulatedMedia", media="",
                  features=[{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}])

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def screenshot(self, name: str) -> Path:
        """A full-page PNG under ``test-artifacts/`` (gitignored)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextmanager
def chromium(profile: Path, *, width: int = 1400, height: int = 1800) -> Iterator[Page]:
    """A fresh headless Chromium (its own ``--user-data-dir``) with one tab; stopped at exit."""
    import websocket

    binary = ensure_chromium()
    profile.mkdir(parents=True, exist_ok=True)
    log = profile.parent / f"{profile.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}",
                                 "about:blank"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ws = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"chromium did not open its DevTools port:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        target = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        page = Page(ws)
        page.call("Page.enable")
        page.call("Network.enable")
        page.call("Runtime.enable")
        page.call("Log.enable")
        yield page
    finally:
        if ws is not None:
            ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
