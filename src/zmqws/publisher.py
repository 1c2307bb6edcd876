"""The publishing side: a thread-safe ZeroMQ publisher that loses nothing at start-up.

A plain PUB socket has two well-known ways to lose messages: it sends into the void until the first
subscriber has connected and subscribed (the "slow joiner"), and it drops silently once a
subscriber's queue is full. :class:`Publisher` uses an XPUB socket instead, which sees the
subscriptions arrive, so it can wait until somebody wants a topic before sending it; and it sets
``XPUB_NODROP`` so a full queue blocks the sender (backpressure) instead of dropping.

Every message carries a metadata frame (:func:`zmqws.envelope.encode_meta`) with its source and a
per-source sequence number, so consumers can count what was lost on the way.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

import zmq

from .config import PublishSettings
from .envelope import encode_meta
from .exceptions import ZmqwsError
from .zmq_io import CurveKeys, apply_curve, attach, check_endpoint

__all__ = ["Publisher", "NoSubscriberError", "run_publish"]

# ZeroMQ's own default send high-water mark (1,000) is kept per subscriber; 10,000 small messages
# smooth over a gateway's pauses without letting a stalled one hold much memory here.
DEFAULT_SNDHWM = 10_000
# How long close() waits for queued messages to reach the network (libzmq's LINGER).
DEFAULT_LINGER = 30.0
_POLL_SLICE_MS = 100
# Longest pause between two tries while a subscriber's queue is full: short enough that a reader
# who catches up waits at most this long for more, long enough to cost no measurable CPU.
_FULL_PAUSE_MAX_MS = 20


class NoSubscriberError(ZmqwsError, TimeoutError):
    """No subscriber wanted the topic within the publisher's ``subscriber_timeout``."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Publisher:
    """Publishes messages on a ZeroMQ XPUB socket; safe to share between threads.

    ZeroMQ sockets must not be used from two threads at once; every call here holds one lock, so
    any number of threads may call :meth:`send` on one Publisher.

    Args:
        endpoint: one endpoint or several, e.g. ``"tcp://127.0.0.1:5555"``.
        bind: bind to the endpoints (producers meet here) instead of connecting to them.
        source: the name stamped on every message (default ``HOST:PID``).
        subscriber_timeout: seconds :meth:`send` waits for a subscriber that wants the topic
            (``None``: for ever). Past it, :class:`NoSubscriberError` is raised.
        lossless: wait for a subscriber before *every* send whose topic nobody wants right now,
            not only until the first one came (what ``zmqws tail`` does: a log line is held, never
            sent into the void).
        sndhwm: messages queued per subscriber before :meth:`send` blocks.
        linger: seconds :meth:`close` waits for queued messages to be handed to the network.
        curve: CURVE keys (:func:`zmqws.config.producer_curve`): encrypt, and authenticate this
            producer to a gateway started with ``--curve-secret-key``.

    Multicast (a ``pgm://`` or ``epgm://`` endpoint): PGM carries no subscriptions back to the
    publisher, so nobody can be waited for there. :attr:`multicast` is then True, and neither
    :meth:`send` nor :meth:`wait_for_subscriber` waits: every message goes out to whoever listens
    (the full-queue backpressure still holds).

    Raises:
        ConfigError: a malformed endpoint.
        StartupError: the endpoint cannot be bound (address in use, ...).
    """

    def __init__(
        self,
        endpoint: str | Iterable[str],
        bind: bool = False,
        *,
        source: str | None = None,
        subscriber_timeout: float | None = 10.0,
        lossless: bool = False,
        sndhwm: int = DEFAULT_SNDHWM,
        linger: float = DEFAULT_LINGER,
        curve: CurveKeys | None = None,
    ) -> None:
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        for ep in endpoints:
            check_endpoint(ep)
        self.source = source or f"{socket.gethostname()}:{os.getpid()}"
        self.multicast = any(ep.partition("://")[0] in ("pgm", "epgm") for ep in endpoints)
        self.subscriber_timeout = subscriber_timeout
        self.lossless = lossless
        self._linger_ms = max(0, int(linger * 1000))
        self._lock = threading.RLock()
        self._seqs: dict[str, int] = {}
        self._subscriptions: set[bytes] = set()
        self._seen_subscriber = False
        self._closed = False
        # Set by close() before it takes the lock, so a send blocked by a stalled subscriber or
        # waiting for one gives up instead of holding close() for ever.
        self._closing = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.setsockopt(zmq.LINGER, self._linger_ms)
        apply_curve(self._sock, curve)
        try:
            attach(self._sock, endpoints, bind=bind)
        except BaseException:
            self._sock.close(linger=0)
            self._ctx.term()
            raise
        self.endpoints = tuple(endpoints)
        self.sent = 0

    # -- subscriptions ------------------------------------------------------------------------

    def _read_subscriptions(self, timeout_ms: int) -> None:
        """Apply the subscription messages XPUB has queued, waiting up to ``timeout_ms`` for one."""
        sock = self._sock
        if timeout_ms and not sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            prefix = msg[1:]
            if msg[0] == 1:
                # XPUB passes on the first subscription to a prefix and the last unsubscription.
                self._subscriptions.add(prefix)
                self._seen_subscriber = True
            elif msg[0] == 0:
                self._subscriptions.discard(prefix)

    def _wanted(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self._subscriptions)

    def wait_for_subscriber(self, topic: str | bytes = b"", timeout: float | None = None) -> bool:
        """Wait until some subscriber wants ``topic``; True if one does, False on timeout.

        Always True at once with a multicast endpoint, where subscribers cannot be seen."""
        if self.multicast:
            return True
        t = _as_bytes(topic)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._read_subscriptions(0)
            while not self._wanted(t):
                if self._closing.is_set():
                    raise RuntimeError("Publisher closed while waiting for a subscriber")
                if deadline is None:
                    wait = _POLL_SLICE_MS
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = max(1, min(_POLL_SLICE_MS, int(left * 1000)))
                self._read_subscriptions(wait)
            return True

    def subscriptions(self) -> set[bytes]:
        """The prefixes some subscriber currently wants (as last seen)."""
        with self._lock:
            self._read_subscriptions(0)
            return set(self._subscriptions)

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        topic: str | bytes,
        data: str | bytes,
        *,
        source: str | None = None,
        seq: int | None = None,
    ) -> int:
        """Publish one message and return its sequence number for its source.

        Blocks while no subscriber wants the topic (until the first one came, or always when
        ``lossless``) and while a subscriber's queue is full (backpressure, never a silent drop).

        Args:
            topic: the topic frame.
            data: the payload; ``str`` is sent as UTF-8.
            source: the source to stamp (default: this publisher's ``source``).
            seq: the sequence number to stamp (default: the source's next one); a producer that
                resumes after a restart passes the number it had reached.

        Raises:
            NoSubscriberError: no subscriber wanted the topic within ``subscriber_timeout``.
            RuntimeError: the publisher is closed.
        """
        t = _as_bytes(topic)
        d = _as_bytes(data)
        src = source or self.source
        with self._lock:
            if self._closed:
                raise RuntimeError("Publisher is closed")
            self._read_subscriptions(0)
            if (self.lossless or not self._seen_subscriber) and not self._wanted(t):
                if not self.wait_for_subscriber(t, self.subscriber_timeout):
                    raise NoSubscriberError(
                        f"no subscriber wanted topic {t!r} within {self.subscriber_timeout} s"
                    )
            n = self._seqs.get(src, 0) + 1 if seq is None else seq
            frames = [t, d, encode_meta(src, n, time.time())]
            self._send_blocking(frames)
            self._seqs[src] = n
            self.sent += 1
            return n

    publish = send

    def _send_blocking(self, frames: list[bytes]) -> None:
        sock = self._sock
        pause_ms = 1
        while True:
            if self._closing.is_set():
                raise RuntimeError("Publisher closed while a send was blocked")
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                # XPUB_NODROP: a subscriber's queue is full. libzmq has no event for "room again"
                # on XPUB (its POLLOUT is always set, so polling for it spins a core at 100%).
                # Wait instead for subscription traffic (a subscriber that leaves frees the send),
                # for a pause that doubles up to _FULL_PAUSE_MAX_MS, then try again.
                if sock.poll(pause_ms, zmq.POLLIN):
                    self._read_subscriptions(0)
                pause_ms = min(2 * pause_ms, _FULL_PAUSE_MAX_MS)

    def next_seq(self, source: str | None = None) -> int:
        """The sequence number the next message of ``source`` will get."""
        with self._lock:
            return self._seqs.get(source or self.source, 0) + 1

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self, linger: float | None = None) -> None:
        """Close the socket, waiting up to ``linger`` seconds for queued messages to go out.

        A :meth:`send` blocked in another thread (waiting for a subscriber, or for room in a
        full queue) raises ``RuntimeError`` instead of holding the close up.
        """
        self._closing.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ms = self._linger_ms if linger is None else max(0, int(linger * 1000))
            self._sock.close(linger=ms)
            self._ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- zmqws publish ---------------------------------------------------------------------------------


def _stdin_lines() -> Iterator[bytes]:
    """Each line of standard input as bytes, without its ``\\n`` or ``\\r\\n``.

    Bytes, not text: a line that is not UTF-8 is published as it is, never replaced. A last line
    without a line terminator is a line too.
    """
    for line in sys.stdin.buffer:
        if line.endswith(b"\r\n"):
            yield line[:-2]
        elif line.endswith(b"\n"):
            yield line[:-1]
        else:
            yield line


def run_publish(settings: PublishSettings) -> int:
    """Run ``zmqws publish``: ``settings.data`` once, or else each line of stdin, on one topic.

    With ``--wait N`` (N > 0) it first waits up to N seconds for a subscriber that wants the topic
    (before reading stdin). Then each message goes out if some subscriber wants its topic at that
    moment; one that nobody wants (``--wait 0`` before anyone came, or after the last subscriber
    left) is dropped, as a PUB socket would, but not silently (DESIGN.md principle 4): the number
    dropped is logged at WARNING.

    Why the check per message here rather than :class:`Publisher`'s own wait: the Publisher stops
    waiting once it has seen a subscriber to *any* topic, so a message on a topic nobody wants
    would vanish without a word, or not, depending on which subscription arrived first.

    Args:
        settings: the validated settings.

    Returns:
        0 when every message was handed on (or dropped, and counted, because nobody wanted it);
        1 when no subscriber wanted the topic within ``--wait`` seconds (one line on stderr);
        130 when interrupted (SIGINT), without waiting for ``--linger``.

    Raises:
        ConfigError: a malformed endpoint.
        StartupError: an endpoint cannot be bound or connected.
    """
    log = logging.getLogger("zmqws.publish")
    # os.fsencode: command-line arguments that were not valid UTF-8 come back as the same bytes.
    topic = os.fsencode(settings.topic)
    sent = dropped = 0
    interrupted = False
    with Publisher(
        settings.bind or settings.connect,
        bind=bool(settings.bind),
        subscriber_timeout=settings.wait,
        linger=settings.linger,
        curve=settings.curve,
    ) as pub:
        try:
            if settings.wait > 0 and not pub.wait_for_subscriber(topic, settings.wait):
                print(
                    f"zmqws publish: error: no subscriber wanted {settings.topic} "
                    f"within {settings.wait:g} s",
                    file=sys.stderr,
                )
                return 1
            messages = [os.fsencode(settings.data)] if settings.data is not None else _stdin_lines()
            for data in messages:
                if not pub.wait_for_subscriber(topic, 0):
                    dropped += 1
                    continue
                try:
                    pub.send(topic, data)
                    sent += 1
                except NoSubscriberError:  # the last subscriber left between the check and the send
                    dropped += 1
        except KeyboardInterrupt:
            # Ctrl-C means now: no --linger wait (a subscriber that went away while this side
            # connects keeps a send blocked, as libzmq holds its queue for a reconnect).
            interrupted = True
            pub.close(linger=0)
    if interrupted:
        log.warning("interrupted: %d messages handed to ZeroMQ, any still queued discarded, "
                    "the rest of the input not sent", sent)
        return 130
    if dropped:
        log.warning(
            "%d of %d messages dropped: no subscriber wanted %s%s",
            dropped, sent + dropped, settings.topic, " (--wait 0)" if settings.wait == 0 else "",
        )
    log.info("published %d messages on %s", sent, settings.topic)
    return 0
