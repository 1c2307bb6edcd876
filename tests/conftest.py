"""Shared test helpers: free ports, deadlines, real gateway subprocesses, the sample logs.

Every timeout is a multiple of ``UNIT`` seconds, scaled by ``ZMQWS_TEST_TIMEOUT_SCALE`` on slow
machines (STYLE rule 16). Nothing here sleeps to synchronise: :func:`wait_until` polls a condition
until a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SCALE = float(os.environ.get("ZMQWS_TEST_TIMEOUT_SCALE", "1"))
UNIT = 1.0 * SCALE  # one "unit" of waiting; tests wait N * UNIT

REPO = Path(__file__).resolve().parent.parent
LOGHUB = REPO.parent / "shared" / "data" / "loghub"
SAMPLES = REPO / "src" / "zmqws" / "samples"


def loghub(name: str) -> Path:
    """A real Loghub sample: from ../shared when present, else the copy bundled in the package."""
    for folder in (LOGHUB, SAMPLES):
        p = folder / name
        if p.exists():
            return p
    pytest.skip(f"sample log {name} not found")


def lines_of(path: Path) -> list[bytes]:
    """The file's lines as a consumer must see them: no LF/CRLF, last unterminated line kept."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float = 10, what: str = "condition",
               interval: float = 0.01) -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout`` units."""
    deadline = time.monotonic() + timeout * UNIT
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * UNIT:.1f} s waiting for {what}")
        time.sleep(interval)


def zmqws_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zmqws", *args]


def http_get(url: str, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=timeout * UNIT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class GatewayProc:
    """A real ``zmqws gateway`` subprocess on free ports."""

    def __init__(self, *extra: str, zmq_bind: bool = True, zmq_port: int | None = None,
                 port: int | None = None) -> None:
        self.zmq_port = zmq_port or free_port()
        self.port = port or free_port()
        self.zmq_endpoint = f"tcp://127.0.0.1:{self.zmq_port}"
        flag = "--bind" if zmq_bind else "--connect"
        # One process unless a test asks for workers: most tests look at one process's counters.
        workers = () if "--workers" in extra else ("--workers", "1")
        self.args = zmqws_cmd("gateway", flag, self.zmq_endpoint,
                              "--listen", f"127.0.0.1:{self.port}", *workers, *extra)
        # Output goes to files, not pipes: a talkative gateway must never block on a full pipe.
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=self.err, text=True)
        wait_until(self._ready, 15, "the gateway to listen")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.output()[1]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        status, _, body = http_get(self.url + "/health")
        assert status == 200
        return json.loads(body)

    def wait_subscribed(self, *prefixes: str, timeout: float = 10) -> None:
        """Wait until the gateway's SUB socket is subscribed to every prefix."""
        wait_until(lambda: set(prefixes) <= set(self.health()["upstream"]["subscriptions"]),
                   timeout, f"upstream subscriptions {prefixes}")

    def output(self) -> tuple[str, str]:
        """Everything the gateway printed so far: (stdout, stderr)."""
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway did not stop on signal {sig}: {self.output()[1]}") from None
        return (self.proc.returncode, *self.output())


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., GatewayProc]]:
    made: list[GatewayProc] = []

    def make(*extra: str, **kw: Any) -> GatewayProc:
        g = GatewayProc(*extra, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        if g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()
        g.out.close()
        g.err.close()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayProc]) -> GatewayProc:
    return gateway_factory()
