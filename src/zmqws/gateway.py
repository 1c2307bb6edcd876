"""The gateway process: one event loop serving the ZeroMQ input, the clients and the page.

Wires the parts together (DESIGN.md, "The picture"): :class:`~zmqws.zmq_io.SubscriberInput`
hands batches to the :class:`~zmqws.hub.Hub`, which writes to each
:class:`~zmqws.websocket.Connection`'s outbox; the hub's topic index subscribes the SUB socket to
exactly what the clients want. Optionally a PUB socket takes what clients publish.

Shutdown, in order (STYLE rule 13): stop accepting connections, close every client with 1001,
wait for them up to ``close_timeout``, abort the rest, close the ZeroMQ sockets, exit 0. A second
signal skips the wait.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
import time
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .access import Authenticator
from .commands import Limits
from .config import GatewaySettings, url_host
from .exceptions import CommandError, StartupError
from .http import StaticFiles
from .hub import Hub
from .websocket import Connection, keepalive_tick, shutdown_close
from .zmq_io import SubscriberInput, attach

__all__ = ["Gateway", "run", "run_one", "new_event_loop", "listen_error", "tls_context"]

if TYPE_CHECKING:
    from .workers import SharedCounters

log = logging.getLogger("zmqws.gateway")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about twice the throughput of the default loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Gateway:
    """A running gateway; :meth:`start`, then :meth:`wait_closed` or :meth:`shutdown`."""

    def __init__(self, settings: GatewaySettings,
                 worker: tuple[int, SharedCounters] | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.limits = Limits(max_topic=settings.max_topic,
                             max_topics_per_command=settings.max_subscriptions)
        self.static = StaticFiles()
        self.authenticator = Authenticator(settings.tokens, settings.jwt_secret)
        self.connections: set[Connection] = set()
        self.ctx = zmq.Context()
        self.input: SubscriberInput | None = None
        self.pub: zmq.Socket[Any] | None = None
        self.hub = Hub(self._subscribe, self._unsubscribe, max_outbound=settings.max_outbound,
                       hold_seconds=settings.burst_hold)
        self.server: asyncio.Server | None = None
        self.address: tuple[str, int] = (settings.host, settings.port)
        self.started = time.time()
        self.published = 0
        self.publish_dropped = 0
        self._ids = 0
        self._stopping: asyncio.Event | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._all_gone: asyncio.Event | None = None
        self.authenticator_thread: ThreadAuthenticator | None = None
        self._counters_timer: asyncio.TimerHandle | None = None

    # -- wiring -------------------------------------------------------------------------------

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def forget(self, conn: Connection) -> None:
        """A connection is gone (called from its ``connection_lost``)."""
        self.connections.discard(conn)
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    def _subscribe(self, prefix: bytes) -> None:
        if self.input is not None:
            self.input.subscribe(prefix)

    def _unsubscribe(self, prefix: bytes) -> None:
        if self.input is not None:
            self.input.unsubscribe(prefix)

    def publish(self, topic: bytes, data: bytes) -> None:
        """Send what a client published into ZeroMQ (``--publish-bind``/``--publish-connect``)."""
        if self.pub is None:
            raise CommandError("publishing is disabled on this gateway", code="publish_disabled")
        try:
            self.pub.send_multipart([topic, data], zmq.NOBLOCK)
        except zmq.Again:
            self.publish_dropped += 1
            raise CommandError("the ZeroMQ output is full, try again later", code="busy") from None
        self.published += 1

    def health(self) -> dict[str, object]:
        st = self.hub.stats
        return {
            "status": "ok",
            "uptime": round(time.time() - self.started, 3),
            "clients": self.hub.clients,
            "connections": len(self.connections),
            "groups": self.hub.index.groups,
            "messages_in": st.messages_in,
            "deliveries": st.deliveries,
            "dropped": {"slow_client": st.dropped_slow, "oversize": st.oversize,
                        "publish_full": self.publish_dropped},
            "closed_slow_clients": st.closed_slow,
            "sources": {"tracked": len(self.hub.sources), "missing": st.source_missing,
                        "untracked_messages": st.untracked_sources},
            "malformed": st.malformed,
            "unrouted": st.unrouted,
            "published": self.published,
            "upstream": {
                # A worker shows the endpoints its supervisor binds for it, not the inner link.
                "bind": list(self.settings.bind or self.settings.supervisor_bind),
                "connect": [e for e in self.settings.connect if e != self.settings.supervisor_link],
                "subscriptions": sorted(p.decode("utf-8", "replace")
                                        for p in self.hub.index.prefixes()),
            },
            "listen": f"{self.address[0]}:{self.address[1]}",
            **self._worker_health(),
        }

    def _counters(self) -> dict[str, int]:
        st = self.hub.stats
        return {"clients": self.hub.clients, "connections": len(self.connections),
                "messages_in": st.messages_in, "deliveries": st.deliveries,
                "dropped_slow": st.dropped_slow, "malformed": st.malformed}

    def _worker_health(self) -> dict[str, object]:
        if self.worker is None:
            return {}
        index, shared = self.worker
        shared.write(index, self._counters())
        return {"worker": index, "workers": shared.workers, "all": shared.sums()}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything; raises :class:`StartupError` with one clear line when it cannot."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if s.curve is not None:
            # ZAP handler for CURVE: one thread for the whole gateway, in libzmq's auth protocol.
            self.authenticator_thread = ThreadAuthenticator(self.ctx, log=log)
            self.authenticator_thread.start()
            self.authenticator_thread.configure_curve(
                domain="*", location=s.curve.authorized or zmq.auth.CURVE_ALLOW_ANY)
        self.input = SubscriberInput(self.ctx, bind=s.bind, connect=s.connect,
                                     on_batch=self.hub.dispatch, rcvhwm=s.rcvhwm, curve=s.curve)
        if s.publishing:
            pub = self.ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 1000)
            try:
                attach(pub, s.publish_bind, bind=True)
                attach(pub, s.publish_connect, bind=False)
            except BaseException:
                pub.close(linger=0)
                raise
            self.pub = pub
        ssl_context = tls_context(s)
        try:
            self.server = await loop.create_server(
                lambda: Connection(self), s.host, s.port, backlog=1024, reuse_address=True,
                reuse_port=self.worker is not None,
                ssl=ssl_context,
                ssl_handshake_timeout=s.handshake_timeout if ssl_context else None,
            )
        except OSError as exc:
            raise StartupError(listen_error(s.listen, exc)) from None
        sock = self.server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        # Subscriptions for clients that existed before start: none; clients arrive later.
        for prefix in self.hub.index.prefixes():
            self.input.subscribe(prefix)
        self.input.start(loop)
        if s.ping_interval > 0:
            self._schedule_keepalive()
        if self.worker is not None:
            self._schedule_counters()
        log.info("listening on %s://%s:%d/ (WebSocket at /ws); ZeroMQ input: %s",
                 "https" if s.tls else "http", self.address[0], self.address[1],
                 ", ".join([f"bind {e}" for e in s.bind] + [f"connect {e}" for e in s.connect]))

    def _schedule_keepalive(self) -> None:
        s = self.settings
        tick = min(s.ping_interval, s.ping_timeout)
        loop = asyncio.get_running_loop()

        def turn() -> None:
            keepalive_tick(self.connections, loop.time(), s.ping_interval, s.ping_timeout)
            self._keepalive = loop.call_later(tick, turn)

        self._keepalive = loop.call_later(tick, turn)

    def close_zmq(self) -> None:
        if self.input is not None:
            self.input.close()
        if self.pub is not None:
            self.pub.close(linger=0)
        if self.authenticator_thread is not None:
            self.authenticator_thread.stop()
        self.ctx.term()

    def _schedule_counters(self) -> None:
        """Refresh this worker's row of the shared counters twice a second."""
        loop = asyncio.get_running_loop()
        assert self.worker is not None
        index, shared = self.worker

        def turn() -> None:
            shared.write(index, self._counters())
            self._counters_timer = loop.call_later(0.5, turn)

        turn()

    def stop(self) -> None:
        """Ask for an orderly shutdown (signal handlers call this)."""
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    async def shutdown(self, force: asyncio.Event | None = None) -> None:
        """Stop accepting, close clients with 1001, wait for them (bounded), close ZeroMQ."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._counters_timer is not None:
            self._counters_timer.cancel()
        if self.server is not None:
            self.server.close()
        if self.input is not None:
            self.input.close()
        self.hub.flush()  # what a burst held over goes out before the 1001 close frames
        shutdown_close(self.connections)
        if self.connections:
            self._all_gone = asyncio.Event()
            waits = {asyncio.ensure_future(self._all_gone.wait())}
            if force is not None:
                waits.add(asyncio.ensure_future(force.wait()))
            await asyncio.wait(waits, timeout=self.settings.close_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            for fut in waits:
                fut.cancel()
        for conn in tuple(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.pub is not None:
            self.pub.close(linger=0)
        self.close_zmq()
        log.info("stopped: %d messages in, %d deliveries", self.hub.stats.messages_in,
                 self.hub.stats.deliveries)


async def _serve(settings: GatewaySettings,
                 worker: tuple[int, SharedCounters] | None = None) -> int:
    gateway = Gateway(settings, worker)
    loop = asyncio.get_running_loop()
    force = asyncio.Event()

    def on_signal() -> None:
        if gateway._stopping is not None and gateway._stopping.is_set():
            force.set()  # second signal: do not wait for clients
        gateway.stop()

    try:
        await gateway.start()
    except BaseException:
        gateway.close_zmq()
        raise
    # A worker takes SIGTERM from its supervisor only (workers.py): SIGINT stays ignored there.
    for sig in (signal.SIGTERM,) if worker is not None else (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if worker is None:  # the supervisor of workers prints its own line
        scheme = "https" if settings.tls else "http"
        print(f"zmqws gateway: live page at {scheme}://{url_host(gateway.address[0])}:"
              f"{gateway.address[1]}/", flush=True)
    await gateway.wait_stopped()
    log.info("shutting down")
    await gateway.shutdown(force)
    return 0


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """The server's TLS context for --certfile/--keyfile, or None without TLS.

    Raises:
        StartupError: the files cannot be loaded (the supervisor of --workers checks this once,
            before starting any worker).
    """
    if not settings.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)  # type: ignore[arg-type]
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"cannot load --certfile/--keyfile (PEM files: the certificate "
                           f"chain and its private key): {exc}") from None
    return context


def listen_error(listen: str, exc: OSError) -> str:
    """The one line that says why ``listen`` (HOST:PORT) could not be listened on."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (another gateway running?)"
    return f"cannot listen on {listen}: {reason}"


def run(settings: GatewaySettings) -> int:
    """Run a gateway (or ``settings.workers`` of them) until SIGINT or SIGTERM."""
    if settings.workers > 1:
        from .workers import run_workers

        return run_workers(settings)
    return run_one(settings)


def run_one(settings: GatewaySettings, worker: tuple[int, SharedCounters] | None = None) -> int:
    """Run one gateway process; ``worker`` is its index and the shared counters, if any."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_serve(settings, worker))
    finally:
        loop.close()
