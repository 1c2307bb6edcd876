"""One client connection: HTTP request, WebSocket handshake, commands, limits, keepalive, close.

An ``asyncio.Protocol`` around the ``websockets`` library's sans-I/O ``ServerProtocol``
(DESIGN.md principle 5): the library parses the request and frames, checks masking and sizes,
answers pings and runs the closing handshake; this module feeds it bytes, handles the events it
yields, and writes what it has to send in one ``flush()``. Broadcast data does not go through the
library: the hub hands pre-framed bytes to this connection's :class:`~zmqws.hub.Outbox`, which
writes them to the transport directly. That is valid because the library and the hub write to the
same transport in order, and no extension changes the framing.

No per-connection task: keepalive runs from one gateway-wide timer (:func:`keepalive_tick`), and
the only per-connection timers are the handshake and close deadlines, which exist only while the
connection is in those states. An idle open connection is this object, the library's protocol
object, an Outbox and the transport.

Lifecycle (STYLE rule 6)::

    HTTP ──101──▶ OPEN ──close sent / received──▶ CLOSING ──TCP closed──▶ CLOSED
      └────── plain response / refused / timeout ─────────────────────────▲
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import json
import logging
from collections.abc import Iterable
from typing import Protocol as TypingProtocol
from urllib.parse import parse_qsl

from websockets.datastructures import MultipleValuesError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from .access import FULL, NOTHING, AccessDenied, Authenticator, Grant, bearer, origin_allowed
from .commands import Limits, Ping, Publish, Subscribe, Unsubscribe, parse_command
from .config import GatewaySettings
from .exceptions import ClientError, CommandError
from .http import StaticFiles, respond, text_response
from .hub import FORMATS, Hub, Outbox

__all__ = [
    "Connection",
    "ConnectionHost",
    "ConnState",
    "keepalive_tick",
    "shutdown_close",
    "parse_ws_query",
]

log = logging.getLogger("zmqws.websocket")

CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011
EVERYTHING = frozenset((b"",))  # the prefix set of a client that named no topic, shared by all


class _ServerProtocol(ServerProtocol):
    """The library's server protocol, plus RFC 6455 §5.4: "control frames MAY be injected in the
    middle of a fragmented message", and a Close is a control frame. The library fails such a
    connection with 1002 ("incomplete fragmented message"); here the unfinished message is
    abandoned and the Close answered like any other (Autobahn|Testsuite case 7.1.5).
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            # The size of the message being reassembled: current_size since websockets 15,
            # cur_size before.
            for name in ("current_size", "cur_size"):
                if getattr(self, name, None) is not None:
                    setattr(self, name, None)
        super().recv_frame(frame)


class ConnState(enum.Enum):
    HTTP = "http"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    ConnState.HTTP: frozenset({ConnState.OPEN, ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.OPEN: frozenset({ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


class ConnectionHost(TypingProtocol):
    """What a connection needs from the gateway that owns it."""

    settings: GatewaySettings
    hub: Hub
    static: StaticFiles
    connections: set[Connection]
    limits: Limits
    authenticator: Authenticator

    def health(self) -> object: ...

    def publish(self, topic: bytes, data: bytes) -> None: ...

    def next_id(self) -> int: ...

    def forget(self, conn: Connection) -> None: ...


def parse_ws_query(
    query: str, limits: Limits, max_subscriptions: int, grant: Grant = FULL
) -> tuple[str, frozenset[bytes]]:
    """``topic=...&format=...`` → ``(format, prefixes)``; no topic means all the grant allows.

    Raises:
        ClientError: an unknown format, too many or too long topics (answered with 400).
        AccessDenied: a topic outside the client's grant (403).
    """
    fmt = "json"
    topics: list[bytes] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "topic":
            raw = value.encode("utf-8", "surrogateescape")
            if len(raw) > limits.max_topic:
                raise ClientError(f"topic is {len(raw)} bytes long, the limit is {limits.max_topic}")
            if not grant.may_subscribe(raw):
                raise AccessDenied(403, f"this token may not subscribe to {value!r}")
            topics.append(raw)
        elif key == "format":
            if value not in FORMATS:
                raise ClientError(f"unknown format {value!r}; use {' or '.join(FORMATS)}")
            fmt = value
    if topics:
        prefixes = frozenset(topics)
    elif grant is FULL:
        prefixes = EVERYTHING
    else:
        prefixes = grant.default_prefixes()
    if len(prefixes) > max_subscriptions:
        raise ClientError(f"{len(prefixes)} topics, the limit is {max_subscriptions}")
    return fmt, prefixes


def _query_value(query: str, name: str) -> str | None:
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def _head_end(before: bytes, data: bytes) -> int | None:
    """Where in ``data`` the head of an HTTP request ends (just past its empty line), given
    ``before``, the last bytes received ahead of ``data``; None if not in ``data``."""
    i = (before + data[:3]).find(b"\r\n\r\n")
    if i >= 0:
        return i + 4 - len(before)
    i = data.find(b"\r\n\r\n")
    return None if i < 0 else i + 4


def _topic_list(prefixes: Iterable[bytes]) -> list[str]:
    return sorted(p.decode("utf-8", "replace") for p in prefixes)


class Connection(asyncio.Protocol):
    """One TCP connection to the gateway's port: a page request or a WebSocket client."""

    # Slots: thousands of idle connections each cost this object (DESIGN.md principle 3).
    __slots__ = ("host", "id", "state", "proto", "transport", "outbox", "prefixes", "peer",
                 "refused", "opened", "timer", "ping_sent", "last_ping", "fragments", "utf8",
                 "debug", "echo", "grant", "head_tail")

    def __init__(self, host: ConnectionHost) -> None:
        self.host = host
        self.id = host.next_id()
        self.state = ConnState.HTTP
        s = host.settings
        self.proto = _ServerProtocol(max_size=s.max_message)
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.prefixes: frozenset[bytes] = frozenset()
        self.peer = "?"
        self.refused = False
        self.opened = False
        self.timer: asyncio.TimerHandle | None = None
        self.ping_sent = 0.0  # when the unanswered ping went out (0: none outstanding)
        self.last_ping = 0.0
        self.fragments: list[bytes] | None = None
        self.utf8: codecs.IncrementalDecoder | None = None
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.echo = False
        self.grant = NOTHING  # until _check_access has passed
        self.head_tail = b""  # the last bytes of the request so far, while in HTTP

    def _to(self, new: ConnState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"connection {self.id}: cannot go from {self.state.value} to {new.value}")
        self.state = new

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        host = self.host
        self.refused = len(host.connections) >= host.settings.max_connections
        host.connections.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(host.settings.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self.state is ConnState.HTTP:
            # A client may send frames (or a second request) right behind its request, in the
            # same read. The library would parse them before the request is answered: a pong
            # before the 101, a close lost. Feed the request alone, answer it, then the rest,
            # and only to an open WebSocket (after any other response, the rest is ignored).
            end = _head_end(self.head_tail, data)
            self.head_tail = data[-3:] if len(data) >= 3 else (self.head_tail + data)[-3:]
            if end is not None and end < len(data):
                self._receive(data[:end])
                if self.state is not ConnState.OPEN:
                    return
                data = data[end:]
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        try:
            for event in proto.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
                else:
                    self._on_request(event)
        except Exception:
            # Our bug, not the client's: log it, close with 1011, tell the client nothing more.
            # Before the request was answered there is nothing to close politely: drop it.
            log.exception("connection %d: internal error", self.id)
            if proto.state is State.OPEN:
                proto.fail(CLOSE_INTERNAL_ERROR)
            elif self.state is ConnState.HTTP and self.transport is not None:
                self.transport.abort()
                return
        self.flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not ConnState.CLOSED:
            self._to(ConnState.CLOSED)
            if self.opened:
                # close_code stays None until the protocol reaches CLOSED, which a client that
                # closed first does not see here (we drop the TCP connection after its close).
                rcvd = self.proto.close_rcvd
                code = rcvd.code if rcvd is not None else None
                log.info("connection %d: closed (%s)", self.id, code if code is not None else "no close frame")
        self._cancel_timer()
        self._leave()
        self.host.forget(self)

    def pause_writing(self) -> None:
        # The client does not read fast enough: queue in the bounded outbox, and stop reading its
        # commands so that their replies cannot pile up either.
        if self.outbox is not None:
            self.outbox.pause()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.outbox is not None and self.state is ConnState.OPEN:
            self.outbox.resume()

    # -- output -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything the protocol has to send, in one write; close TCP at its EOF."""
        transport = self.transport
        if transport is None:
            return
        chunks = self.proto.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""
        data = b"".join(chunks)
        if data and not transport.is_closing():
            transport.write(data)
        if eof:
            # RFC 6455 §7.1.1: the server closes the TCP connection first. close() waits for
            # the write buffer to drain: a peer that stopped reading is aborted after the close
            # timeout, or it would hold its slot (and its buffer) for ever.
            self._leave()
            if self.state is not ConnState.CLOSED and self.state is not ConnState.CLOSING:
                self._to(ConnState.CLOSING)
            transport.close()
            if self.timer is None and self.state is not ConnState.CLOSED:
                self.timer = asyncio.get_running_loop().call_later(
                    self.host.settings.close_timeout, self._abort)
        elif self.proto.close_expected() and self.state is ConnState.OPEN:
            self._closing()

    def _send_json(self, obj: dict[str, object]) -> None:
        if self.proto.state is State.OPEN:
            self.proto.send_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the connection is aborted if it does not finish in time."""
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
            self.flush()

    def _closing(self) -> None:
        self._to(ConnState.CLOSING)
        self._leave()
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.host.settings.close_timeout, self._abort)

    def _abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def _leave(self) -> None:
        if self.outbox is not None:
            self.host.hub.leave(self)
            self.outbox.discard()
            self.outbox = None

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- HTTP ---------------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self.timer = None
        if self.state is ConnState.HTTP and self.transport is not None:
            log.info("connection %d: no complete request within the handshake timeout", self.id)
            self.transport.abort()

    def _on_request(self, request: Request) -> None:
        self._cancel_timer()
        proto = self.proto
        path, _, query = request.path.partition("?")
        echo = path == "/echo" and self.host.settings.echo
        if path != "/ws" and not echo:
            # The page and /health answer even at the connection limit (the response closes
            # the connection at once): a health check must not fail because clients are many.
            proto.send_response(respond(path, self.host.static, self.host.health))
            return
        if self.refused:
            proto.send_response(text_response(
                503, "Service Unavailable",
                f"too many connections (the limit is {self.host.settings.max_connections})\n",
                {"Retry-After": "5"},
            ))
            return
        response = proto.accept(request)
        if response.status_code == 101:
            try:
                self._check_access(request, query)
                fmt, prefixes = parse_ws_query(
                    query, self.host.limits, self.host.settings.max_subscriptions, self.grant
                )
            except AccessDenied as exc:
                log.info("connection %d: refused (%d): %s", self.id, exc.status, exc)
                response = proto.reject(exc.status, f"{exc}\n")
                if exc.status == 401:
                    response.headers["WWW-Authenticate"] = 'Bearer realm="zmqws"'
            except ClientError as exc:
                response = proto.reject(400, f"{exc}\n")
            except MultipleValuesError as exc:  # two Host, Origin or Authorization headers
                response = proto.reject(400, f"more than one {exc} header\n")
        if echo and response.status_code == 101:
            # Conformance suites (Autobahn) test the same connection code as /ws, minus the hub.
            proto.send_response(response)
            request.headers.clear()
            self._to(ConnState.OPEN)
            self.opened = self.echo = True
            return
        proto.send_response(response)
        # The library's parser keeps the request alive for the connection's lifetime; its
        # headers are the largest part of an idle connection's memory and are not needed again.
        request.headers.clear()
        if response.status_code == 101:
            self._open(fmt, prefixes)

    def _check_access(self, request: Request, query: str) -> None:
        """Origin first (403), then the credential (401); sets this connection's grant."""
        headers = request.headers
        origin = headers.get("Origin")
        if not origin_allowed(origin, headers.get("Host"), self.host.settings.allow_origin):
            raise AccessDenied(403, f"origin {origin!r} is not allowed (see --allow-origin)")
        credential = bearer(headers.get("Authorization"), _query_value(query, "access_token"))
        self.grant = self.host.authenticator.authenticate(credential)

    def _open(self, fmt: str, prefixes: frozenset[bytes]) -> None:
        self._to(ConnState.OPEN)
        self.opened = True
        assert self.transport is not None
        s = self.host.settings
        # Half the client buffer in the transport, half queued in the outbox while paused.
        self.transport.set_write_buffer_limits(high=s.client_buffer // 2, low=s.client_buffer // 8)
        self.outbox = Outbox(self.transport.write, self.close, s.client_buffer // 2,
                             s.slow_client, self.host.hub.stats)
        self.host.hub.join(self, self.outbox, fmt, prefixes)
        self.prefixes = self.host.hub.index.group_of(self).prefixes  # one shared set per group
        log.info("connection %d: open from %s, format %s, topics %s",
                 self.id, self.peer, fmt, _topic_list(prefixes))

    # -- WebSocket frames ---------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._on_message(op is Opcode.TEXT, frame.data)
            else:
                self.fragments = [frame.data]
                self.utf8 = codecs.getincrementaldecoder("utf-8")() if op is Opcode.TEXT else None
                self._check_utf8(frame.data, False)
        elif op is Opcode.CONT:
            if self.fragments is None:
                return  # the library has already failed the connection (1002)
            self.fragments.append(frame.data)
            if not self._check_utf8(frame.data, frame.fin):
                return
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                is_text, self.utf8 = self.utf8 is not None, None
                self._on_message(is_text, data)
        elif op is Opcode.PONG:
            self.ping_sent = 0.0
        elif op is Opcode.CLOSE:
            self.fragments = self.utf8 = None  # a message left unfinished is abandoned
            self._leave()

    def _check_utf8(self, data: bytes, final: bool) -> bool:
        """Fail fast on invalid UTF-8 in a fragmented text message (RFC 6455 §8.1: 1007)."""
        if self.utf8 is None:
            return True
        try:
            self.utf8.decode(data, final)
        except UnicodeDecodeError:
            self.fragments = self.utf8 = None
            self.proto.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
            return False
        return True

    def _on_message(self, is_text: bool, data: bytes) -> None:
        text = ""
        if is_text:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # RFC 6455 §8.1
                self.proto.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return
        if self.echo:
            if self.proto.state is State.OPEN:
                (self.proto.send_text if is_text else self.proto.send_binary)(data)
            return
        if not is_text:
            self._send_json(_error(CommandError("commands are JSON text messages, not binary")))
            return
        try:
            reply = self._execute(text)
        except CommandError as exc:
            reply = _error(exc)
        self._send_json(reply)

    def _execute(self, text: str) -> dict[str, object]:
        if self.state is not ConnState.OPEN:  # closing, or (never) a handshake not yet passed
            raise CommandError("the connection is not open")
        cmd = parse_command(text, self.host.limits)
        if isinstance(cmd, Ping):
            return cmd.reply()
        if isinstance(cmd, Publish):
            if not self.grant.may_publish(cmd.topic):
                raise CommandError(f"this token may not publish to {cmd.topic.decode()!r}",
                                   code="forbidden")
            self.host.publish(cmd.topic, cmd.data)
            return {"op": "published", "topic": cmd.topic.decode("utf-8")}
        if isinstance(cmd, Subscribe):
            denied = [t for t in cmd.topics if not self.grant.may_subscribe(t)]
            if denied:
                raise CommandError(f"this token may not subscribe to {denied[0].decode()!r}",
                                   code="forbidden")
            new = self.prefixes.union(cmd.topics)
            limit = self.host.settings.max_subscriptions
            if len(new) > limit:
                raise CommandError(f"{len(new)} subscriptions, the limit is {limit}",
                                   code="too_many_subscriptions")
            op = "subscribed"
        else:
            assert isinstance(cmd, Unsubscribe)
            new = self.prefixes.difference(cmd.topics)
            op = "unsubscribed"
        if new != self.prefixes:
            self.host.hub.resubscribe(self, new)
            self.prefixes = self.host.hub.index.group_of(self).prefixes
        return {"op": op, "topics": _topic_list(new)}

    # -- keepalive ----------------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Ping every ``interval``; fail the connection when a ping goes unanswered ``timeout``."""
        if self.proto.state is not State.OPEN:
            return
        if self.ping_sent:
            if now - self.ping_sent >= timeout:
                log.info("connection %d: no pong within %.0f s, closing", self.id, timeout)
                self.proto.fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                self.flush()
            return
        if now - self.last_ping >= interval:
            self.ping_sent = self.last_ping = now
            self.proto.send_ping(b"")
            self.flush()


def _error(exc: CommandError) -> dict[str, object]:
    return {"op": "error", "code": exc.code, "message": str(exc)}


def keepalive_tick(connections: Iterable[Connection], now: float, interval: float,
                   timeout: float) -> None:
    """One turn of the gateway-wide keepalive timer over every connection."""
    for conn in tuple(connections):
        conn.keepalive(now, interval, timeout)


def shutdown_close(connections: Iterable[Connection], code: int = CLOSE_GOING_AWAY,
                   reason: str = "gateway shutting down") -> None:
    """Start closing every connection: open ones with ``code``, the others at once."""
    for conn in tuple(connections):
        if conn.state is ConnState.OPEN:
            conn.close(code, reason)
        elif conn.state is ConnState.HTTP and conn.transport is not None:
            conn.transport.close()
