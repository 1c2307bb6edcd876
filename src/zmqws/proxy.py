"""``zmqws proxy``: where many producers meet many gateways (DESIGN.md principle 6).

::

    producers ── PUB/XPUB ──▶ frontend (XSUB) ══ libzmq's proxy ══ backend (XPUB) ──▶ gateways
              ◀── subscriptions ──────────────────────────────────────── SUB sockets

The forwarding is libzmq's own (``zmq_proxy_steerable``), in one thread at C speed: no Python
runs per message. Subscriptions flow the other way through the same proxy, so a producer only
sends what some gateway's client (or some consumer) wants; a topic nobody wants never leaves its
producer, and the counters show it.

Counters come from the proxy's control socket (its ``STATISTICS`` command): messages and bytes
received on the frontend and sent on the backend, and the subscription messages that went
upstream. libzmq counts a multipart message once up to 4.3.4 and once per frame from 4.3.5 (the
pyzmq wheels); ``"counts"`` in the status says which, ``bytes_*`` are the same either way. The
backend is ``XPUB_VERBOSER``, so every subscribe and unsubscribe of every gateway is passed on
and counted (not only the first and the last of each prefix): producers' filters stay exact,
and ``subscriptions`` says how many subscription changes came in.

They are served as JSON on ``--status HOST:PORT`` (off by default) and logged every
``--stats-interval`` seconds. SIGINT/SIGTERM stop the proxy (its ``TERMINATE`` command), close
every socket with linger 0 and exit 0.

By default the backend drops what a gateway cannot take once ``--hwm`` messages are queued for it
(PUB/SUB's rule; the gateways count the gaps from the producers' sequence numbers). With
``--no-drop`` it waits instead, which pushes back on every producer: lossless, but the slowest
gateway then sets the pace of all of them.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any

import zmq

from .config import ProxySettings, url_host
from .exceptions import StartupError
from .zmq_io import attach

__all__ = ["Proxy", "run", "STAT_NAMES"]

log = logging.getLogger("zmqws.proxy")

# The eight numbers of libzmq's STATISTICS reply, in its order.
STAT_NAMES = (
    "frontend_messages_in", "frontend_bytes_in", "frontend_messages_out", "frontend_bytes_out",
    "backend_messages_in", "backend_bytes_in", "backend_messages_out", "backend_bytes_out",
)
# How long a STATISTICS request may take: the proxy answers between two bursts of forwarding,
# so a reply later than this means it is stuck (a full --no-drop backend).
_STATS_TIMEOUT_MS = 2000
# How long shutdown waits for the proxy thread after TERMINATE before it ends the context.
_STOP_TIMEOUT = 5.0


def _counts_unit() -> str:
    # Observed: libzmq 4.3.4 counts 10 two-frame messages as 10, 4.3.5 as 20.
    return "frames" if zmq.zmq_version_info() >= (4, 3, 5) else "messages"


class Proxy:
    """An XSUB/XPUB proxy run by libzmq in a thread; :meth:`start`, :meth:`stats`, :meth:`close`.

    Args:
        settings: the validated settings.
        ctx: a ZeroMQ context (default: a new one, terminated by :meth:`close`).

    Raises:
        ConfigError: a malformed endpoint.
        StartupError: an endpoint cannot be bound or connected (address in use, ...).
    """

    def __init__(self, settings: ProxySettings, ctx: zmq.Context[Any] | None = None) -> None:
        self.settings = settings
        self._own_ctx = ctx is None
        self.ctx: zmq.Context[Any] = ctx or zmq.Context()
        self.frontend = self.ctx.socket(zmq.XSUB)
        self.backend = self.ctx.socket(zmq.XPUB)
        self._control = self.ctx.socket(zmq.PAIR)  # the proxy's end
        self._steer = self.ctx.socket(zmq.PAIR)  # ours
        socks = (self.frontend, self.backend, self._control, self._steer)
        for sock in socks:
            sock.setsockopt(zmq.LINGER, 0)
        self.frontend.setsockopt(zmq.RCVHWM, settings.hwm)
        self.frontend.setsockopt(zmq.SNDHWM, settings.hwm)
        self.backend.setsockopt(zmq.SNDHWM, settings.hwm)
        self.backend.setsockopt(zmq.RCVHWM, settings.hwm)
        self.backend.setsockopt(zmq.XPUB_VERBOSER, 1)
        if settings.no_drop:
            self.backend.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            attach(self.frontend, settings.frontend, bind=True)
            attach(self.frontend, settings.frontend_connect, bind=False)
            attach(self.backend, settings.backend, bind=True)
            attach(self.backend, settings.backend_connect, bind=False)
            control = f"inproc://zmqws-proxy-control-{id(self)}"
            self._control.bind(control)
            self._steer.connect(control)
        except BaseException:
            for sock in socks:
                sock.close(linger=0)
            if self._own_ctx:
                self.ctx.term()
            raise
        # The endpoints as bound (a tcp://HOST:* or :0 becomes the port the system chose).
        self.frontend_endpoints = _bound(self.frontend, settings.frontend)
        self.backend_endpoints = _bound(self.backend, settings.backend)
        self._lock = threading.Lock()  # one user of the control socket at a time
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._closed = False
        self._pending = False  # a STATISTICS request is still unanswered

    def start(self) -> None:
        """Start forwarding, in a thread of its own."""
        self._thread = threading.Thread(target=self._run, name="zmqws proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self._control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # pragma: no cover - libzmq gave up: say so, then stop
            log.error("the proxy stopped: %s", exc)
        finally:
            # ZeroMQ sockets belong to the thread that uses them: close them here.
            for sock in (self.frontend, self.backend, self._control):
                sock.close(linger=0)

    def stats(self) -> dict[str, Any] | None:
        """The counters as a JSON-ready dict, or None when the proxy did not answer in time."""
        with self._lock:
            if self._closed or self._thread is None or not self._thread.is_alive():
                return None
            if self._pending:  # the reply to a request that timed out: wait for it, drop it
                if not self._steer.poll(_STATS_TIMEOUT_MS):
                    return None
                self._steer.recv_multipart()
                self._pending = False
            self._steer.send(b"STATISTICS")
            if not self._steer.poll(_STATS_TIMEOUT_MS):
                # Busy in a blocked send (a full --no-drop backend): it answers once it is free.
                log.warning("the proxy did not answer STATISTICS within %d ms",
                            _STATS_TIMEOUT_MS)
                self._pending = True
                return None
            frames = self._steer.recv_multipart()
        raw = dict(zip(STAT_NAMES, (int.from_bytes(f, sys.byteorder) for f in frames)))
        return {
            "messages_in": raw["frontend_messages_in"],
            "bytes_in": raw["frontend_bytes_in"],
            "messages_out": raw["backend_messages_out"],
            "bytes_out": raw["backend_bytes_out"],
            "subscriptions": raw["backend_messages_in"],
            "subscriptions_upstream": raw["frontend_messages_out"],
            "counts": _counts_unit(),
            "libzmq": zmq.zmq_version(),
            "frontend": {"bind": list(self.frontend_endpoints),
                         "connect": list(self.settings.frontend_connect)},
            "backend": {"bind": list(self.backend_endpoints),
                        "connect": list(self.settings.backend_connect)},
            "drop": not self.settings.no_drop,
            "uptime": round(time.monotonic() - self._started, 3),
            "raw": raw,
        }

    def close(self) -> None:
        """Stop forwarding and close every socket (linger 0); safe to call twice."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._closed:
                # Queued behind an unanswered STATISTICS, if any: handled once the proxy is free.
                try:
                    self._steer.send(b"TERMINATE", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self._closed = True
            if self._thread is not None:
                self._thread.join(_STOP_TIMEOUT)
                if self._thread.is_alive():  # stuck in a blocked send: ending the context frees it
                    log.warning("the proxy did not stop within %.0f s; ending it", _STOP_TIMEOUT)
            else:
                for sock in (self.frontend, self.backend, self._control):
                    sock.close(linger=0)
            if not self._steer.closed:
                self._steer.close(linger=0)
        if self._own_ctx and not self.ctx.closed:
            self.ctx.term()  # returns once the proxy thread closed its sockets
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)


def _bound(sock: zmq.Socket[Any], asked: tuple[str, ...]) -> tuple[str, ...]:
    if len(asked) == 1 and asked[0].startswith("tcp://"):
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        if isinstance(last, bytes) and last:
            return (last.decode(),)
    return asked


def _status_server(proxy: Proxy, host: str, port: int) -> HTTPServer:
    """An HTTP server answering ``GET /`` and ``GET /status`` with the counters.

    A thread per connection, each given 5 s to send its request: a client that connects and
    says nothing must neither keep other clients waiting nor hold up shutdown.
    """

    class Handler(BaseHTTPRequestHandler):
        server_version = "zmqws-proxy"
        timeout = 5

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.partition("?")[0]
            if path not in ("/", "/status", "/health"):
                self._reply(404, {"error": "not found: try /status"})
                return
            stats = proxy.stats()
            if stats is None:
                self._reply(503, {"error": "the proxy is not answering (stopping, or stuck)"})
            else:
                self._reply(200, stats)

        def _reply(self, code: int, obj: object) -> None:
            body = json.dumps(obj, indent=1, sort_keys=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("status: " + format, *args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return Server((host, port), Handler)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"--status: cannot listen on {host}:{port}: {reason}") from None


def _summary(s: dict[str, Any]) -> str:
    return (f"in {s['messages_in']} {s['counts']} / {s['bytes_in']} bytes, out "
            f"{s['messages_out']} {s['counts']} / {s['bytes_out']} bytes, "
            f"subscriptions {s['subscriptions']} in / {s['subscriptions_upstream']} upstream")


def run(settings: ProxySettings) -> int:
    """Run ``zmqws proxy`` until SIGINT or SIGTERM; 0 after a clean shutdown.

    Raises:
        ConfigError: a malformed endpoint.
        StartupError: an endpoint or the status address cannot be had.
    """
    stopping = threading.Event()
    proxy = Proxy(settings)
    server: HTTPServer | None = None
    server_thread: threading.Thread | None = None
    old: dict[int, Any] = {}
    try:
        if settings.status is not None:
            server = _status_server(proxy, settings.status_host, settings.status_port)
        proxy.start()
        old = {s: signal.signal(s, lambda *_: stopping.set())
               for s in (signal.SIGINT, signal.SIGTERM)}
        status_url = ""
        if server is not None:
            host, port = server.server_address[:2]
            status_url = f", status at http://{url_host(str(host))}:{port}/status"
            server_thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="zmqws status",
                                             daemon=True)
            server_thread.start()
        front = ", ".join((*proxy.frontend_endpoints, *settings.frontend_connect))
        back = ", ".join((*proxy.backend_endpoints, *settings.backend_connect))
        print(f"zmqws proxy: frontend (producers) {front}, backend (gateways) {back}{status_url}",
              flush=True)
        log.info("proxy running (libzmq %s, %s backend)", zmq.zmq_version(),
                 "no-drop" if settings.no_drop else "dropping")
        interval = settings.stats_interval or None
        while not stopping.wait(interval):
            stats = proxy.stats()
            if stats is not None:
                log.info("stats: %s", _summary(stats))
        final = proxy.stats()
        if final is not None:
            log.info("stopping: %s", _summary(final))
        return 0
    finally:
        if server is not None:
            if server_thread is not None:
                server.shutdown()
            server.server_close()
        proxy.close()
        for s, h in old.items():
            signal.signal(s, h)
