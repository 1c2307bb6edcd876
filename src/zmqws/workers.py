"""``zmqws gateway --workers N``: one gateway process per core, sharing one port.

DESIGN.md principle 1: more cores means more processes, not threads. The supervisor (this
module) starts N worker processes, each a whole gateway with its own event loop and SUB socket,
all listening on the same address with ``SO_REUSEPORT`` so the kernel spreads new connections
over them. A worker that dies is started again; SIGINT/SIGTERM are passed on and every worker
shuts down in order.

ZeroMQ input: ``--connect`` endpoints are connected by every worker. ``--bind`` endpoints can be
bound by one process only, so the supervisor binds them itself with an XSUB socket and forwards
to the workers through libzmq's own proxy (at C speed, in one thread) over an ``ipc://``
endpoint; the workers' subscriptions flow back up through it, so producers still filter at the
source.

Counters: each worker's ``/health`` is its own, plus ``"worker"``, ``"workers"`` and ``"all"``:
the sums over every worker, from a small shared-memory table each worker refreshes twice a second.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

import zmq

from .config import GatewaySettings, url_host
from .exceptions import ConfigError, StartupError
from .zmq_io import apply_curve, attach

EXIT_CONFIG, EXIT_STARTUP = 2, 3  # as cli.py: a worker that exits so will not do better next time

__all__ = ["run_workers", "COUNTERS", "SharedCounters"]

log = logging.getLogger("zmqws.workers")

COUNTERS = ("clients", "connections", "messages_in", "deliveries", "dropped_slow", "malformed")


class SharedCounters:
    """A table of int64 counters, one row per worker, in shared memory."""

    def __init__(self, workers: int, array: Any = None) -> None:
        self.workers = workers
        self.array = array if array is not None else multiprocessing.get_context("spawn").Array(
            "q", workers * len(COUNTERS), lock=False)

    def write(self, worker: int, values: dict[str, int]) -> None:
        base = worker * len(COUNTERS)
        for i, name in enumerate(COUNTERS):
            self.array[base + i] = values.get(name, 0)

    def sums(self) -> dict[str, int]:
        n = len(COUNTERS)
        return {name: sum(self.array[w * n + i] for w in range(self.workers))
                for i, name in enumerate(COUNTERS)}


def _worker(settings: GatewaySettings, index: int, array: Any, level: int) -> None:
    """A worker process: a whole gateway on the shared port (spawned, so set up logging anew).

    It ends with its supervisor (SIGTERM from the kernel if the supervisor dies, even by
    SIGKILL, or orphans would keep the port), and takes SIGTERM from the supervisor only: a
    Ctrl-C reaches the whole process group, and a SIGINT here followed by the supervisor's
    SIGTERM would count as a second signal and skip closing the clients.
    """
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from .gateway import run_one

    try:
        code = run_one(settings, worker=(index, SharedCounters(settings.workers, array)))
    except (ConfigError, StartupError) as exc:
        print(f"zmqws gateway: error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_STARTUP
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) on Linux; elsewhere nothing (no portable equivalent)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket to learn the port when 0 was asked for.

    A plain bind comes first: SO_REUSEPORT would otherwise let a second gateway (of the same
    user) share a port that is already in use, and split its clients silently.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
        probe.close()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except OSError as exc:
        probe.close()
        s.close()
        from .gateway import listen_error

        raise StartupError(listen_error(f"{host}:{port}", exc)) from None
    return s


def run_workers(settings: GatewaySettings) -> int:
    """Supervise ``settings.workers`` gateway processes until SIGINT or SIGTERM."""
    n = settings.workers
    from .gateway import tls_context

    tls_context(settings)  # a bad certificate: one line here, not one per worker
    reserved = _reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    ctx: zmq.Context[Any] | None = None
    auth: Any = None  # zmq.auth's ThreadAuthenticator, with CURVE
    forwarder: threading.Thread | None = None
    # The link to the workers: a Linux abstract socket leaves no file behind, even when the
    # supervisor is killed; elsewhere a socket file in a temporary folder.
    tmp = None if sys.platform.startswith("linux") else tempfile.mkdtemp(prefix="zmqws-workers-")
    worker_settings = dataclasses.replace(settings, listen=f"{settings.host}:{port}")
    if settings.bind:
        ctx = zmq.Context()
        front, back = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
        for sock in (front, back):
            sock.setsockopt(zmq.LINGER, 0)
        front.setsockopt(zmq.RCVHWM, settings.rcvhwm)
        # Towards the workers: queue as much as one gateway's SUB would, then push back on the
        # producers (as one process does) instead of dropping for a worker that lags.
        back.setsockopt(zmq.SNDHWM, settings.rcvhwm)
        back.setsockopt(zmq.XPUB_NODROP, 1)
        apply_curve(front, settings.curve)
        inner = (f"ipc://{tmp}/input.sock" if tmp else
                 f"ipc://@zmqws-workers-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            attach(front, settings.bind, bind=True)
            attach(back, [inner], bind=True)
        except BaseException:
            front.close()
            back.close()
            ctx.term()
            raise
        if settings.curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            auth = ThreadAuthenticator(ctx, log=log)
            auth.start()
            auth.configure_curve(domain="*", location=settings.curve.authorized or
                                 zmq.auth.CURVE_ALLOW_ANY)
        forwarder = threading.Thread(target=_forward, args=(front, back), daemon=True,
                                     name="zmqws forwarder")
        forwarder.start()
        worker_settings = dataclasses.replace(
            worker_settings, bind=(), connect=(*settings.connect, inner),
            supervisor_bind=settings.bind, supervisor_link=inner,
            curve_secret_key=None, curve_authorized=None)
    counters = SharedCounters(n)
    mp = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}

    def start(i: int) -> None:
        p = mp.Process(target=_worker, args=(worker_settings, i, counters.array, level),
                       name=f"zmqws worker {i}")
        p.start()
        procs[i] = p

    stopping = threading.Event()
    old = {s: signal.signal(s, lambda *_: stopping.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(n):
            start(i)
        scheme = "https" if settings.tls else "http"
        print(f"zmqws gateway: {n} workers, live page at {scheme}://{url_host(settings.host)}:{port}/",
              flush=True)
        reserved.close()  # the workers hold the port now
        while not stopping.is_set():
            # Wake when a worker exits, or twice a second to notice a signal.
            multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
            for i, p in list(procs.items()):
                if p.is_alive() or stopping.is_set():
                    continue
                if p.exitcode in (EXIT_CONFIG, EXIT_STARTUP):
                    # It could not start (its error is on stderr): neither could a new one.
                    log.error("worker %d could not start (exit code %d): stopping", i, p.exitcode)
                    return p.exitcode
                log.warning("worker %d exited with code %s: starting it again", i, p.exitcode)
                start(i)
        return 0
    finally:
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for p in procs.values():
            p.join(settings.close_timeout + 5)
            if p.is_alive():
                p.kill()
                p.join()
        for s, h in old.items():
            signal.signal(s, h)
        reserved.close()
        if auth is not None:
            auth.stop()  # its ZAP socket would keep ctx.term() waiting
        if ctx is not None:
            ctx.term()  # ends the forwarder's proxy; it closes its sockets
            if forwarder is not None:
                forwarder.join(5)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _forward(front: zmq.Socket[Any], back: zmq.Socket[Any]) -> None:
    """libzmq's proxy until the context is terminated; then the sockets close here, in the
    thread that used them (ZeroMQ sockets belong to one thread)."""
    try:
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        pass
    finally:
        front.close(linger=0)
        back.close(linger=0)
