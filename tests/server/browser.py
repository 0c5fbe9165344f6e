"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`).

No driver binary, no port and no third-party client: Chromium reads JSON commands from its fd 3 and writes
replies and events to its fd 4, each message ended by a NUL byte. `Browser` opens one page and offers what
the page tests need: navigate, evaluate JavaScript, wait for a condition, take a PNG screenshot. Uncaught
JavaScript exceptions and console errors of the page are collected in `page_errors`.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


class BrowserError(RuntimeError):
    pass


def _above_nine(fd: int) -> int:
    """The same pipe end as a descriptor numbered 10 or more (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    def __init__(self, binary: str, width: int = 1400, height: int = 1000, timeout: float = 30) -> None:
        self.profile = tempfile.mkdtemp(prefix="inkwell-chromium-")
        self.log = Path(self.profile) / "chromium.log"
        to_chrome_r, self._write_fd = os.pipe()  # our commands -> its fd 3
        self._read_fd, from_chrome_w = os.pipe()  # its fd 4 -> replies and events
        # bash moves the pipe ends onto fds 3 and 4, then execs Chromium; above 9 they cannot be 3 or 4
        to_chrome_r, from_chrome_w = (_above_nine(fd) for fd in (to_chrome_r, from_chrome_w))
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        args = [*FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", script, binary, *args],
                                     pass_fds=(to_chrome_r, from_chrome_w), stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.timeout = b"", 0, timeout
        self.page_errors: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable", session=self.session)
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ---- the protocol ------------------------------------------------------------------------------
    def call(self, method: str, session: str | None = None, timeout: float | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._write_fd, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]
            self._event(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {waiting_for} in time")
            if select.select([self._read_fd], [], [], left)[0]:
                data = os.read(self._read_fd, 1 << 20)
                if not data:
                    log = self.log.read_text(errors="replace")[-3000:]
                    raise BrowserError(f"Chromium closed the pipe:\n{log}")
                self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _event(self, message: dict) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            described = details.get("exception", {}).get("description")
            self.page_errors.append(described or details.get("text", ""))
        elif message.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = params["args"]
            self.page_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    # ---- what the tests use ------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        result = self.call("Page.navigate", session=self.session, url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout=self.timeout)

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", session=self.session, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, every: float = 0.1):
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.eval(expression):
                return value
            time.sleep(every)
        raise TimeoutError(f"still false after {timeout} s: {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=self.session, format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (BrowserError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write_fd)
        os.close(self._read_fd)
        shutil.rmtree(self.profile, ignore_errors=True)
