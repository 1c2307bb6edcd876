"""Fuzz: arbitrary bytes, frame sequences and ZeroMQ messages thrown at one real gateway.

Three hypothesis strategies against one ``zmqws gateway`` subprocess (module scope):

1. arbitrary bytes on a raw TCP connection to the HTTP/WebSocket port, instead of (or mangling)
   a handshake;
2. a valid handshake to ``/ws``, then arbitrary WebSocket frames built by the small encoder below
   (any opcode, RSV bits, masked or not, fragmented, lying lengths, long control frames, invalid
   UTF-8, odd close payloads, JSON commands with random values), plus well-formed sequences whose
   every reply is checked;
3. arbitrary multipart ZeroMQ messages (1 to 5 frames: random, empty, a few hundred KB, zmqws
   metadata frames with random fields) sent by a PUB socket while a client subscribed to ``""``
   exists; that client must receive exactly what docs/protocol.md says, in order.

After every example: the process is alive, ``/health`` answers, the connection count is back to
its baseline, nothing new at ERROR level or a traceback is in the gateway's log, and a
well-behaved client (websocket-client) connects, subscribes, gets a pong to a WebSocket ping and to
a JSON ``ping``, and receives a message published on a known topic.

Runs derandomized (the same examples every run: stable in CI). ``ZMQWS_FUZZ_RANDOM=1`` draws new
examples (and keeps failures in .hypothesis/ for replay); ``ZMQWS_FUZZ_EXAMPLES=N`` sets the
number of examples per strategy (default 300).

The inputs of the defects it found in the gateway (fixed; see docs/conformance.md) are generated
like any other, and each also has a regression test of its own at the end of this file.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import websocket  # websocket-client, not the library the gateway is built on
import zmq
from conftest import UNIT, GatewayProc, free_port, http_get, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("ZMQWS_FUZZ_EXAMPLES", "300"))
RANDOM = os.environ.get("ZMQWS_FUZZ_RANDOM", "") not in ("", "0")
MAX_MESSAGE = 65536  # the gateway's --max-message here: small, so 1009 is reachable cheaply


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=settings.default.database if RANDOM else None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

pytestmark = pytest.mark.timeout(600)

# ---------------------------------------------------------------------------------------------
# The gateway, its probe client and the checks run after every example
# ---------------------------------------------------------------------------------------------

PROBE_ANCHOR = "zmqws-fuzz-probe."  # a prefix kept subscribed upstream for the whole module
_LOG_BAD = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")


def _short(obj: object, n: int = 600) -> str:
    r = repr(obj)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN and Infinity, which are not JSON (RFC 8259 §6)."""
    def refuse(token: str) -> object:
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


class Drain(threading.Thread):
    """Reads and discards everything a websocket-client connection receives."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.start()

    def run(self) -> None:
        try:
            while self.ws.recv() is not None:
                pass
        except Exception:  # closed at teardown
            return


@dataclass
class Fuzzed:
    """The gateway under fuzz and what the checks need."""

    gw: GatewayProc
    pub: zmq.Socket  # type: ignore[type-arg]
    baseline: int  # /health "connections" with only the anchor open (and the /health request)
    log_checked: int = 0
    probes: int = 0
    probe_topics: set[str] = field(default_factory=set)

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a falsifying example
        return f"<gateway on port {self.gw.port}>"

    def check(self, what: str) -> None:
        """Alive, healthy, no leaked connection, a clean log and a working client."""
        gw = self.gw
        assert gw.proc.poll() is None, f"gateway died after {what}: {gw.output()[1][-3000:]}"
        status, _, body = http_get(gw.url + "/health")
        assert status == 200 and strict_json(body.decode())["status"] == "ok", (status, body)
        wait_until(lambda: gw.health()["connections"] == self.baseline, 10,
                   f"connections back to {self.baseline} after {what}")
        self.check_log(what)
        self.probe(what)

    def check_log(self, what: str) -> None:
        err = self.gw.output()[1]
        new, self.log_checked = err[self.log_checked:], len(err)
        bad = [ln for ln in new.splitlines() if _LOG_BAD.search(ln)]
        assert not bad, f"the gateway logged at error level after {what}:\n{new[-4000:]}"

    def probe(self, what: str) -> None:
        self.probes += 1
        n = self.probes
        topic = f"{PROBE_ANCHOR}{n}"
        self.probe_topics.add(topic)
        ws = websocket.create_connection(f"{self.gw.ws_url}?topic={PROBE_ANCHOR}idle",
                                         timeout=10 * UNIT)
        try:
            ws.send(json.dumps({"op": "subscribe", "topics": [topic]}))
            assert strict_json(ws.recv()) == {"op": "subscribed",
                                              "topics": sorted([topic, PROBE_ANCHOR + "idle"])}
            ws.ping(b"probe %d" % n)
            opcode, frame = ws.recv_data_frame(control_frame=True)
            while opcode == websocket.ABNF.OPCODE_PING:  # the gateway's keepalive came first
                ws.pong(frame.data)
                opcode, frame = ws.recv_data_frame(control_frame=True)
            assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"probe %d" % n), what
            ws.send(json.dumps({"op": "ping", "id": n}))
            assert strict_json(ws.recv()) == {"op": "pong", "id": n}, what
            self.pub.send_multipart([topic.encode(), b"hello %d" % n])
            m = strict_json(ws.recv())
            assert (m["topic"], m["data"]) == (topic, f"hello {n}"), (what, m)
            ws.close()
        finally:
            ws.shutdown()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    gw = GatewayProc("--publish-bind", f"tcp://127.0.0.1:{free_port()}",
                     "--max-message", str(MAX_MESSAGE))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(gw.zmq_endpoint)
    # The anchor keeps PROBE_ANCHOR subscribed upstream, so each probe's message, published right
    # after its subscribe is acknowledged, is not filtered out at the PUB socket.
    anchor = websocket.create_connection(f"{gw.ws_url}?topic={PROBE_ANCHOR}", timeout=10 * UNIT)
    gw.wait_subscribed(PROBE_ANCHOR)
    anchor.settimeout(0.1)

    def anchor_hears() -> bool:
        pub.send_multipart([PROBE_ANCHOR.encode() + b"warmup", b"."])
        try:
            return anchor.recv() is not None
        except websocket.WebSocketTimeoutException:
            return False

    wait_until(anchor_hears, 10, "the publisher to learn the anchor's subscription")
    anchor.settimeout(None)
    Drain(anchor)
    f = Fuzzed(gw, pub, baseline=gw.health()["connections"])
    f.check("start-up")
    yield f
    try:
        anchor.close()
    except Exception:
        pass
    pub.close()
    ctx.term()
    code, _, err = gw.stop()
    if gw.proc.poll() is None:
        gw.proc.kill()
    gw.out.close()
    gw.err.close()
    assert code == 0, err[-3000:]


# ---------------------------------------------------------------------------------------------
# 1. Arbitrary bytes on the port
# ---------------------------------------------------------------------------------------------

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
REQUEST_PIECES = [b"GET ", b"POST ", b"/ws", b"/echo", b"/health", b"/", b"/static/../../etc",
                  b"?topic=", b"&format=raw", b"?format=x", b"%ff", b" HTTP/1.1", b" HTTP/1.0",
                  b" HTTP/2", b"\r\n", b"\n", b"Host: x", b"Upgrade: websocket",
                  b"Connection: Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                  b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8", b"Origin: null",
                  b"Content-Length: 5", b"Transfer-Encoding: chunked", b": ", b"\x00", b"\xff",
                  b"A" * 9000]


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


raw_bytes = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from(REQUEST_PIECES) | st.binary(max_size=20), max_size=25).map(b"".join),
    st.builds(_mutate, st.just(HANDSHAKE),
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)),
    st.builds(lambda cut, tail: HANDSHAKE[:cut] + tail, st.integers(0, len(HANDSHAKE)),
              st.binary(max_size=200)),
)


def exchange(port: int, payload: bytes, *, handshake: bytes = b"", eof: bool = True,
             timeout: float = 10) -> bytes:
    """Send ``payload`` and our EOF, read everything until the gateway closes the connection.

    With ``handshake``: send it first and wait for the end of the response's head before sending
    ``payload``, as RFC 6455 §4.1 asks of a client.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * UNIT)
    received = bytearray()

    def read() -> bool:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:  # closed while our unread bytes were in its buffer
            return False
        except TimeoutError:
            raise AssertionError(f"the gateway neither answered nor closed the connection within "
                                 f"{timeout * UNIT:.0f} s; got {bytes(received[:300])!r}") from None
        received.extend(chunk)
        return bool(chunk)

    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handshake:
            s.sendall(handshake)
            while b"\r\n\r\n" not in received:
                if not read():
                    return bytes(received)
        try:
            s.sendall(payload)
            if eof:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the gateway closed first: it may have said why, read that below
            pass
        while read():
            pass
        return bytes(received)
    finally:
        s.close()


@FUZZ
@given(payload=raw_bytes)
@example(payload=b"")
@example(payload=HANDSHAKE)
@example(payload=b"GET /ws HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n")
def test_arbitrary_bytes_on_the_port(fuzzed: Fuzzed, payload: bytes) -> None:
    reply = exchange(fuzzed.gw.port, payload)
    if reply:
        # Whatever the gateway answers is HTTP: a status line first.
        assert re.match(rb"HTTP/1\.1 [1-5]\d\d ", reply), reply[:200]
    fuzzed.check(f"raw bytes {payload[:80]!r}")


# ---------------------------------------------------------------------------------------------
# 2. Frame sequences after a valid handshake
# ---------------------------------------------------------------------------------------------

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# What the gateway may send: its own codes, and the code of a client's close, echoed (RFC 6455
# §5.5.1), when it is one a peer may send (§7.4: the registered ones and 3000-4999).
CLOSE_CODES_SENT = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                    *range(3000, 5000)}


def mask_bytes(key: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
                 key: bytes = b"\x37\xfa\x21\x3d", form: int = 0, length: int | None = None) -> bytes:
    """One client frame (RFC 6455 §5.2). ``form`` 7/16/64 forces a length encoding (0: the
    shortest); ``length`` declares a length other than the payload's (a lying header)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    m = 0x80 if mask else 0
    if form == 0:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7 and n < 126:
        head = bytes((b0, m | n))
    elif form in (7, 16) and n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n & 0xFFFF_FFFF_FFFF_FFFF)
    return head + (key + mask_bytes(key, payload) if mask else payload)


@dataclass
class ServerFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    data: bytes


def take_frame(buf: bytes | bytearray) -> tuple[ServerFrame, int] | None:
    """The first whole frame in ``buf`` and its size, or None while it is incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n, i = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        (n,), i = struct.unpack_from("!H", buf, 2), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        (n,), i = struct.unpack_from("!Q", buf, 2), 10
    masked = bool(b1 & 0x80)
    key = bytes(buf[i:i + 4]) if masked else b""
    i += len(key)
    if len(buf) < i + n:
        return None
    data = bytes(buf[i:i + n])
    return (ServerFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked,
                        mask_bytes(key, data) if masked else data), i + n)


def parse_server_frames(buf: bytes) -> list[ServerFrame]:
    """Split all the gateway sent into frames; a server frame cut short is a failure."""
    frames = []
    while buf:
        got = take_frame(buf)
        assert got is not None, f"the gateway's last frame is cut short: {buf[:40]!r}"
        frames.append(got[0])
        buf = buf[got[1]:]
    return frames


def check_server_frames(frames: list[ServerFrame]) -> tuple[list[object], int | None]:
    """RFC 6455 for what the server sends; returns (JSON text messages, close code or None)."""
    messages: list[object] = []
    close: int | None = None
    for f in frames:
        assert close is None, "a frame after the server's close frame"
        assert not f.masked and f.rsv == 0 and f.fin, f  # server frames: unmasked, whole, no RSV
        assert f.opcode in (TEXT, BINARY, CLOSE, PING, PONG), f
        if f.opcode == TEXT:
            messages.append(strict_json(f.data.decode("utf-8")))  # valid UTF-8, valid JSON
        elif f.opcode == CLOSE:
            assert len(f.data) != 1 and len(f.data) <= 125, f
            if f.data:
                close = struct.unpack("!H", f.data[:2])[0]
                assert close in CLOSE_CODES_SENT, f
                f.data[2:].decode("utf-8")
            else:
                close = 1005
        elif f.opcode in (PING, PONG):
            assert len(f.data) <= 125, f
    return messages, close


def ws_exchange(port: int, frames: bytes, query: str = "",
                ending: str = "close") -> tuple[list[object], int | None]:
    """Handshake, then ``frames``, then a proper close (or only EOF); read to the end."""
    tail = encode_frame(CLOSE, struct.pack("!H", 1000)) if ending == "close" else b""
    reply = exchange(port, frames + tail,
                     handshake=HANDSHAKE.replace(b"/ws", b"/ws" + query.encode(), 1))
    head, sep, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and sep, reply[:300]
    return check_server_frames(parse_server_frames(rest))


class RawClient:
    """A WebSocket client made by hand: a handshake to /ws, then exactly the bytes it is given."""

    def __init__(self, port: int, query: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10 * UNIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(HANDSHAKE.replace(b"/ws", b"/ws" + query.encode(), 1))
        self.buf = bytearray()
        self.frames: list[ServerFrame] = []
        self.eof = False
        while b"\r\n\r\n" not in self.buf and self._recv():
            pass
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.buf = bytearray(rest)

    def _recv(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"nothing from the gateway in 10 s; so far {self.frames}") from None
        self.buf += chunk
        self.eof = not chunk
        return bool(chunk)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, done: Callable[[list[ServerFrame]], bool]) -> list[ServerFrame]:
        """Frames received so far, reading on until ``done(frames)`` or the gateway's EOF."""
        while True:
            while (got := take_frame(self.buf)) is not None:
                self.frames.append(got[0])
                del self.buf[:got[1]]
            if done(self.frames) or self.eof:
                return self.frames
            self._recv()

    def close(self) -> None:
        self.sock.close()


LONE_SURROGATES = ["\ud800", "a\udfff", "\udc00\ud800"]  # JSON may \u-escape them; UTF-8 cannot
NON_FINITE = [math.nan, math.inf, -math.inf]  # Python's json reads and writes NaN and Infinity


def _values(*, surrogates: bool, non_finite: bool) -> st.SearchStrategy[object]:
    """Any JSON value; lone surrogates in strings and NaN/±Infinity only when asked for."""
    texts = st.text(max_size=20)
    if surrogates:
        texts = texts | st.sampled_from(LONE_SURROGATES)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), texts)
    if non_finite:
        scalars = scalars | st.sampled_from(NON_FINITE)
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(texts, c, max_size=4), max_leaves=12)


json_values = _values(surrogates=True, non_finite=True)
ping_ids = json_values  # echoed in the pong: NaN, Infinity and lone surrogates included
topic_text = st.one_of(st.text(max_size=12), st.sampled_from(["", "a", "zmqws-fuzz", *LONE_SURROGATES]),
                       st.integers(1000, 1100).map(lambda n: "t" * n))  # around --max-topic
topic_lists = st.one_of(st.lists(topic_text, max_size=6), st.integers(240, 300).map(
    lambda n: [f"many.{i}" for i in range(n)]))  # around the per-command limit
commands = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "publish", "ping"]),
                     json_values)},
    optional={"topics": st.one_of(topic_lists, json_values), "topic": st.one_of(topic_text, json_values),
              "data": st.one_of(st.text(max_size=50), json_values), "id": ping_ids},
)


def _dump(cmd: object) -> bytes:
    # surrogatepass: lone surrogates, which JSON \u escapes allow, travel as JSON escapes.
    return json.dumps(cmd).encode("utf-8", "surrogatepass")


bad_utf8 = st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                            b"\x80", b"\xf8\x88\x80\x80\x80"])
payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
    commands.map(_dump),
    st.builds(lambda a, bad, b: a + bad + b, st.binary(max_size=20), bad_utf8, st.binary(max_size=20)),
    st.builds(lambda n, unit: (unit * (n // len(unit) + 1))[:n], st.integers(100, MAX_MESSAGE + 5000),
              st.binary(min_size=1, max_size=8)),  # long: control frames past 125, past the limit
)
close_payloads = st.one_of(
    st.just(b""), st.binary(min_size=1, max_size=1),
    st.builds(lambda code, reason: struct.pack("!H", code) + reason,
              st.one_of(st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1015,
                                         1016, 2999, 3000, 4999, 5000]), st.integers(0, 65535)),
              st.one_of(st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
                        st.binary(max_size=40), st.just(b"r" * 124))),
)


@st.composite
def frames_st(draw: st.DrawFn) -> bytes:
    opcode = draw(st.one_of(st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG]),
                            st.integers(0, 15)))
    payload = draw(close_payloads if opcode == CLOSE and draw(st.booleans()) else payloads)
    lie = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 2**64 - 1),
                         st.integers(0, 300)))
    return encode_frame(
        opcode, payload,
        fin=draw(st.one_of(st.just(True), st.booleans())),
        rsv=draw(st.one_of(st.just(0), st.just(0), st.integers(0, 7))),
        mask=draw(st.one_of(st.just(True), st.just(True), st.just(False))),
        key=draw(st.binary(min_size=4, max_size=4)),
        form=draw(st.sampled_from([0, 0, 0, 7, 16, 64])),
        length=lie,
    )


frame_sequences = st.lists(frames_st(), min_size=1, max_size=8).map(b"".join)


@FUZZ
@given(data=frame_sequences, cut=st.one_of(st.none(), st.integers(1, 40)),
       ending=st.sampled_from(["close", "eof"]))
def test_arbitrary_frames_after_the_handshake(fuzzed: Fuzzed, data: bytes, cut: int | None,
                                              ending: str) -> None:
    if cut is not None:  # the stream ends inside a frame
        data = data[:-cut] or data
    _, close = ws_exchange(fuzzed.gw.port, data, ending=ending)
    # Only the gateway's own frames are checked (in ws_exchange); whichever way the sequence ends,
    # the connection is closed by then, and the gateway keeps serving:
    fuzzed.check(f"frames {data[:80]!r}, close {close}")


@st.composite
def clean_sequences(draw: st.DrawFn) -> tuple[bytes, int, list[bytes]]:
    """Well-formed traffic: commands (some fragmented, pings between fragments) and pings."""
    out, n_commands, pings = [], 0, []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            p = draw(st.binary(max_size=125))
            pings.append(p)
            out.append(encode_frame(PING, p, key=draw(st.binary(min_size=4, max_size=4))))
            continue
        body = _dump(draw(commands))
        n_commands += 1
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for i, part in enumerate(parts):
            out.append(encode_frame(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1,
                                    key=draw(st.binary(min_size=4, max_size=4))))
            if i < len(parts) - 1 and draw(st.booleans()):
                p = draw(st.binary(max_size=20))
                pings.append(p)
                out.append(encode_frame(PING, p))
    return b"".join(out), n_commands, pings


@FUZZ
@given(seq=clean_sequences())
def test_well_formed_traffic_gets_one_reply_per_command(fuzzed: Fuzzed,
                                                         seq: tuple[bytes, int, list[bytes]]) -> None:
    data, n_commands, pings = seq
    c = RawClient(fuzzed.gw.port, "?topic=zmqws-fuzz.nothing")
    try:
        c.send(data)

        def answered(frames: list[ServerFrame]) -> bool:
            texts = sum(f.opcode == TEXT for f in frames)
            return texts >= n_commands and sum(f.opcode == PONG for f in frames) >= len(pings)

        c.read_until(answered)
        # The close goes once every reply is in: a command in the same read as the client's close
        # frame gets no reply, since the library has already answered the close (RFC 6455 §5.5.1:
        # no data frame after a close frame).
        c.send(encode_frame(CLOSE, struct.pack("!H", 1000)))
        c.sock.shutdown(socket.SHUT_WR)
        frames = c.read_until(lambda _: False)
    finally:
        c.close()
    messages, close = check_server_frames(frames)
    assert [f.data for f in frames if f.opcode == PONG] == pings  # each ping's payload, in order
    replies = [m for m in messages if isinstance(m, dict) and "op" in m]
    assert len(replies) == n_commands, messages
    for r in replies:
        assert r["op"] in ("subscribed", "unsubscribed", "published", "pong", "error"), r
        if r["op"] == "error":
            assert r["code"] in ("bad_json", "bad_command", "too_many_subscriptions",
                                 "topic_too_long", "forbidden", "publish_disabled"), r
    assert close == 1000, f"a well-formed session ended with close code {close}"
    fuzzed.check(f"well-formed traffic {data[:80]!r}")


REQUESTS = [HANDSHAKE, HANDSHAKE.replace(b"/ws", b"/ws?format=nope"),
            HANDSHAKE.replace(b"/ws", b"/echo"), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"]


@FUZZ
@given(request=st.sampled_from(REQUESTS),
       tail=st.one_of(frame_sequences, st.binary(min_size=1, max_size=300),
                      st.sampled_from(REQUESTS)))
def test_bytes_in_the_same_read_as_a_request(fuzzed: Fuzzed, request: bytes, tail: bytes) -> None:
    """RFC 6455 §4.1 has a client wait for the 101; a client that does not gets a whole HTTP
    response first, then frames (after a 101) or nothing (after any other status)."""
    reply = exchange(fuzzed.gw.port, request + tail)
    head, sep, rest = reply.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 [1-5]\d\d ", head) and sep, reply[:300]
    if head.startswith(b"HTTP/1.1 101 "):
        check_server_frames(parse_server_frames(rest))
    else:
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert length and len(rest) == int(length.group(1)), reply[:300]
    fuzzed.check(f"{request[:30]!r} with {tail[:60]!r} in the same read")


# ---------------------------------------------------------------------------------------------
# 3. Arbitrary multipart messages on the ZeroMQ input
# ---------------------------------------------------------------------------------------------

META_MARK = b'{"zmqws":1'


def _ts_values() -> st.SearchStrategy[object]:
    return st.one_of(st.integers(-2**60, 2**60), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=5), st.booleans(), st.none(), st.sampled_from(NON_FINITE),
                     st.integers(10**308, 10**400))


meta_frames = st.one_of(
    st.fixed_dictionaries({}, optional={
        "src": st.one_of(st.text(max_size=30), st.sampled_from(LONE_SURROGATES), json_values),
        "seq": st.one_of(st.integers(), json_values), "ts": _ts_values(), "x": json_values,
    }).map(lambda d: META_MARK + (b"," + json.dumps(d).encode()[1:] if d else b"}")),
    st.binary(max_size=40).map(lambda b: META_MARK + b),
)
zmq_frames = st.one_of(
    st.binary(max_size=64), st.just(b""), st.text(max_size=30).map(str.encode),
    st.builds(lambda n, unit: (unit * (n // len(unit) + 1))[:n], st.integers(1000, 400_000),
              st.binary(min_size=1, max_size=8)),
    meta_frames,
)


@st.composite
def multiparts(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(1, 5))
    frames = [draw(zmq_frames) for _ in range(n)]
    if n >= 3 and draw(st.booleans()):
        frames[2] = draw(meta_frames)
    return frames


def expected_json(frames: list[bytes]) -> dict[str, object] | None:
    """docs/protocol.md's envelope rules: the JSON a subscriber of "" gets (None: malformed)."""
    if len(frames) == 1:
        topic, _, data = frames[0].partition(b" ")
    else:
        topic, data = frames[0], frames[1]
    if not topic:
        return None
    out: dict[str, object] = {"topic": topic.decode("utf-8", "replace")}
    try:
        out["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        out["data"], out["encoding"] = base64.b64encode(data).decode(), "base64"
    if len(frames) >= 3 and frames[2].startswith(META_MARK):
        try:
            meta = json.loads(frames[2])
            src, seq, ts = meta.get("src"), meta.get("seq"), meta.get("ts")
        except (ValueError, AttributeError, RecursionError):
            src = seq = ts = None
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            try:
                if math.isfinite(float(ts)):  # a ts that is no finite float is dropped
                    out["ts"] = float(ts)
            except OverflowError:
                pass
        if isinstance(src, str):  # lone surrogates are kept as \udXXX text
            out["source"] = src.encode("utf-8", "backslashreplace").decode("utf-8")
        if isinstance(seq, int) and not isinstance(seq, bool):
            out["source_seq"] = seq
    return out


@pytest.fixture(scope="module")
def everything(fuzzed: Fuzzed) -> Iterator[websocket.WebSocket]:
    """A client subscribed to "" that the ZeroMQ test reads itself."""
    ws = websocket.create_connection(fuzzed.gw.ws_url, timeout=10 * UNIT)
    fuzzed.gw.wait_subscribed("")
    fuzzed.baseline += 1
    sentinel_until_received(fuzzed, ws, 0, allow_warmup=True)
    yield ws
    ws.close()
    fuzzed.baseline -= 1


_sentinels = iter(range(1, 10**9))


def sentinel_until_received(f: Fuzzed, ws: websocket.WebSocket, timeout_units: float,
                            allow_warmup: bool = False) -> list[dict[str, object]]:
    """Publish a sentinel and return every other message received before it, in order (probe
    messages excluded). ``allow_warmup``: republish until the upstream subscription works."""
    got: list[dict[str, object]] = []
    deadline = time.monotonic() + 10 * UNIT
    while True:
        n = next(_sentinels)
        f.pub.send_multipart([b"zmqws-fuzz.sentinel", b"%d" % n])
        ws.settimeout(0.2 if allow_warmup else 10 * UNIT)
        try:
            while True:
                m = strict_json(ws.recv())
                assert isinstance(m, dict)
                if m.get("topic") == "zmqws-fuzz.sentinel":
                    if m["data"] == str(n):
                        return got
                    continue  # an earlier warm-up sentinel
                if m.get("topic") in f.probe_topics or str(m.get("topic", "")).startswith(PROBE_ANCHOR):
                    continue
                got.append(m)
        except websocket.WebSocketTimeoutException:
            if not allow_warmup or time.monotonic() > deadline:
                raise AssertionError(f"sentinel {n} never arrived; before it: {got}") from None


@FUZZ
@given(frames=multiparts())
@example(frames=[b""])
@example(frames=[b"", b"data"])
@example(frames=[b"topic only"])
@example(frames=[b"t", b"\xff\xfe", META_MARK + b',"src":"h:1","seq":3,"ts":1.5}', b"extra"])
def test_arbitrary_zeromq_messages(fuzzed: Fuzzed, everything: websocket.WebSocket,
                                   frames: list[bytes]) -> None:
    before = fuzzed.gw.health()
    fuzzed.pub.send_multipart(frames)
    got = sentinel_until_received(fuzzed, everything, 10)
    want = expected_json(frames)
    # A source seen in an earlier example with a lower number: a gap message comes first.
    gaps = [m for m in got if m.get("op") == "gap"]
    got = [{k: v for k, v in m.items() if k != "seq"} for m in got if m.get("op") != "gap"]
    if gaps:
        assert want is not None and "source_seq" in want, gaps
        assert gaps == [{"op": "gap", "source": want["source"], "missed": gaps[0]["missed"]}], gaps
        assert isinstance(gaps[0]["missed"], int) and gaps[0]["missed"] > 0, gaps
    assert got == ([] if want is None else [want]), _short((got, [f[:100] for f in frames]))
    after = fuzzed.gw.health()
    assert after["malformed"] - before["malformed"] == (want is None)
    fuzzed.check(f"ZeroMQ frames {[f[:40] for f in frames]!r}")


# ---------------------------------------------------------------------------------------------
# Defects the fuzzer found in the gateway, now fixed: one input each, as regression tests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ident", ['"\\ud800"', "NaN", "Infinity", "-Infinity", "1e999"])
def test_a_ping_id_the_pong_cannot_carry_is_a_bad_command(fuzzed: Fuzzed, ident: str) -> None:
    """Once: NaN and Infinity were echoed bare (not JSON); a lone surrogate raised
    UnicodeEncodeError when the pong was encoded (a traceback at ERROR, the client closed 1011)."""
    ws = websocket.create_connection(fuzzed.gw.ws_url + "?topic=zmqws-fuzz.nothing",
                                     timeout=10 * UNIT)
    try:
        ws.send('{"op":"ping","id":%s}' % ident)
        reply = strict_json(ws.recv())
        assert isinstance(reply, dict) and (reply["op"], reply["code"]) == ("error", "bad_command")
        ws.send('{"op":"ping","id":"after"}')
        assert strict_json(ws.recv()) == {"op": "pong", "id": "after"}
    finally:
        ws.close()
    fuzzed.check(f"ping id {ident}")


def publish_burst_around(fuzzed: Fuzzed, ws: websocket.WebSocket, bad: list[bytes]) -> None:
    """200 good messages, ``bad``, 200 good ones, in one burst, then one more in a later batch:
    every good one must arrive, in order (the bad one may or may not)."""
    good = [[b"zmqws-fuzz.t", b"%d" % i] for i in range(401)]
    for frames in good[:200] + [bad] + good[200:400]:
        fuzzed.pub.send_multipart(frames)
    got = sentinel_until_received(fuzzed, ws, 10)  # the burst has been dispatched
    # A batch after the burst: a client group left holding parts of the failed batch would
    # never be written to again.
    fuzzed.pub.send_multipart(good[400])
    got += sentinel_until_received(fuzzed, ws, 10)
    data = [m["data"] for m in got if m["topic"] == "zmqws-fuzz.t" and m["data"] != "bad"]
    assert data == [str(i) for i in range(401)], _short(data)


@pytest.mark.parametrize("meta", [b',"ts":1' + b"0" * 400 + b"}", b',"src":"\\ud800"}',
                                  b',"ts":NaN}', b',"ts":-Infinity}',
                                  b',"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"])
def test_metadata_that_once_cost_a_batch(fuzzed: Fuzzed, everything: websocket.WebSocket,
                                         meta: bytes) -> None:
    """Once: a huge integer ts (OverflowError), a lone surrogate in src (UnicodeEncodeError) or
    deep nesting (RecursionError) escaped Hub.dispatch: a traceback at ERROR, the rest of the
    batch lost, and every client group that already held a message of that batch never written
    to again. A NaN or infinite ts was forwarded as a bare NaN, which is not JSON."""
    publish_burst_around(fuzzed, everything, [b"zmqws-fuzz.t", b"bad", META_MARK + meta])
    fuzzed.check(f"metadata {meta[:40]!r}")


def test_early_data_a_ping_sent_with_the_handshake(fuzzed: Fuzzed) -> None:
    """Once: the pong was written before the 101 response."""
    reply = exchange(fuzzed.gw.port, HANDSHAKE + encode_frame(PING, b"early"))
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), reply[:200]
    assert [(f.opcode, f.data) for f in parse_server_frames(rest)][:1] == [(PONG, b"early")]
    fuzzed.check("a ping in the handshake's read")


def test_early_data_a_close_sent_with_the_handshake(fuzzed: Fuzzed) -> None:
    """Once: the close was swallowed and the connection stayed open."""
    reply = exchange(fuzzed.gw.port, HANDSHAKE + encode_frame(CLOSE, struct.pack("!H", 1000)),
                     eof=False, timeout=5)
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), reply[:200]
    assert check_server_frames(parse_server_frames(rest))[1] == 1000
    fuzzed.check("a close in the handshake's read")


def test_early_data_after_a_plain_request(fuzzed: Fuzzed) -> None:
    """Once: an AssertionError logged at ERROR, and the connection left open."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = exchange(fuzzed.gw.port, request + request, eof=False, timeout=5)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1") == 1, reply[:200]
    fuzzed.check("a request pipelined after GET /health")
