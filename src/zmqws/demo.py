"""``zmqws demo``: the main job on real data, on one machine.

Starts a gateway and one ``zmqws tail`` producer per bundled sample log (real Loghub logs), each
producer a separate process with its own host name, as if on its own node. A replayer thread per
log appends its lines to a live file at a readable pace and rotates the file (rename and
re-create) when the sample is used up, so the producers follow real appends and rotations. The
processes are real ``zmqws`` commands, the same a deployment runs; only the files are simulated.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import DemoSettings, parse_listen, url_host
from .exceptions import StartupError

__all__ = ["run", "NODES", "Replayer"]

log = logging.getLogger("zmqws.demo")


@dataclass(frozen=True, slots=True)
class Node:
    """One simulated node: its host name, the sample it replays, the file it writes."""

    host: str
    sample: str
    filename: str


NODES = (
    Node("web-1", "Apache_2k.log", "apache.log"),
    Node("db-1", "Linux_2k.log", "syslog.log"),
    Node("bastion-1", "OpenSSH_2k.log", "sshd.log"),
    Node("zk-1", "Zookeeper_2k.log", "zookeeper.log"),
)


def sample_lines(name: str) -> list[bytes]:
    """A bundled sample's lines, each ending in CRLF as in the original (the last one too)."""
    data = (resources.files("zmqws") / "samples" / name).read_bytes()
    return [ln if ln.endswith(b"\r\n") else ln.rstrip(b"\r") + b"\r\n"
            for ln in data.splitlines(keepends=True)]


class Replayer(threading.Thread):
    """Appends a sample's lines to ``path`` at ``rate`` lines/s, rotating at the end, in a loop."""

    def __init__(self, lines: list[bytes], path: Path, rate: float, stop: threading.Event) -> None:
        super().__init__(name=f"replay {path.name}", daemon=True)
        self.lines, self.path, self.rate, self.stop = lines, path, rate, stop
        self.written = 0

    def run(self) -> None:
        rng = random.Random(str(self.path))
        while not self.stop.is_set():
            with open(self.path, "ab", buffering=0) as f:
                for line in self.lines:
                    # Jitter so the nodes do not tick in lockstep; the wait is the pace, and
                    # the stop event ends it at once.
                    if self.stop.wait(rng.expovariate(self.rate)):
                        return
                    f.write(line)
                    self.written += 1
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))  # rotate
            self.path.touch()


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zmqws", *args], stdin=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_free(host: str, port: int, error: Callable[[OSError], str]) -> None:
    """Refuse a port in use before starting anything: one line, and no URL of someone else's
    server. SO_REUSEADDR as the gateway's server and libzmq set it, so TIME_WAIT is no refusal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupError(error(exc)) from None


def _wait_listening(gateway: subprocess.Popen[bytes], host: str, port: int, stop: threading.Event) -> None:
    """Wait until the gateway accepts connections (a few hundred ms), or say why it did not."""
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise StartupError(f"the gateway exited with code {gateway.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            stop.wait(0.05)
    if not stop.is_set():
        raise StartupError(f"the gateway did not listen on {host}:{port} within 30 s")


def run(settings: DemoSettings) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``settings.duration``; returns the exit code."""
    host, port = parse_listen(settings.listen)
    zmq_port = settings.zmq_port or _free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    from .gateway import listen_error

    _check_free(host, port, lambda exc: listen_error(settings.listen, exc))
    if settings.zmq_port:
        _check_free("127.0.0.1", zmq_port, lambda exc: f"--zmq-port: cannot bind {endpoint}: "
                    f"{os.strerror(exc.errno) if exc.errno else exc}")
    workdir = Path(tempfile.mkdtemp(prefix="zmqws-demo-"))
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []
    replayers: list[Replayer] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        gateway = _spawn(["gateway", "--bind", endpoint, "--listen", settings.listen,
                          "--workers", "1"])
        procs.append(gateway)
        _wait_listening(gateway, host, port, stop)
        for node in NODES:
            path = workdir / node.host / node.filename
            path.parent.mkdir()
            path.touch()
            procs.append(_spawn(["tail", "--connect", endpoint, "--host", node.host,
                                 "--topic", "{host}.{stem}", "--linger", "2", str(path)]))
            replayers.append(Replayer(sample_lines(node.sample), path, settings.rate, stop))
        for r in replayers:
            r.start()
        print(f"zmqws demo: {len(NODES)} nodes ({', '.join(n.host for n in NODES)}) "
              f"publishing to {endpoint}", flush=True)
        print(f"zmqws demo: open http://{url_host(host)}:{port}/ (Ctrl-C stops everything)", flush=True)
        deadline = time.monotonic() + settings.duration if settings.duration else None
        # Wake twice a second to notice a child that died; the stop event ends the wait at once.
        while not stop.wait(timeout=0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                if dead[0] is gateway:
                    raise StartupError(f"the gateway exited with code {gateway.returncode}")
                raise StartupError(f"a producer exited with code {dead[0].returncode}")
        return 0
    finally:
        stop.set()
        # Producers first (they hand over what they hold), then the gateway.
        for group in (procs[1:], procs[:1]):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for r in replayers:
            r.join(timeout=5)
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(workdir, ignore_errors=True)
        print("zmqws demo: stopped", flush=True)
