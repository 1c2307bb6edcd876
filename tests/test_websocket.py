"""websocket: a real gateway, real ZeroMQ publishers, WebSocket clients from other libraries.

The clients are websocket-client (sync) and aiohttp (asyncio), not the websockets library the
gateway is built on, so a bug shared by both ends cannot hide.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest
import websocket  # websocket-client
import zmq
from conftest import UNIT, GatewayProc, wait_until


@pytest.fixture
def pub(gateway: GatewayProc):
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(gateway.zmq_endpoint)
    yield s
    s.close()
    ctx.term()


def connect(gw: GatewayProc, query: str = "") -> websocket.WebSocket:
    return websocket.create_connection(gw.ws_url + query, timeout=10 * UNIT)


def recv_json(ws: websocket.WebSocket) -> dict:
    return json.loads(ws.recv())


def command(ws: websocket.WebSocket, **cmd: object) -> dict:
    ws.send(json.dumps(cmd))
    return recv_json(ws)


def publish_until_received(pub: zmq.Socket, ws: websocket.WebSocket, frames: list[bytes]) -> dict:
    """PUB/SUB joins asynchronously: publish a probe until it arrives, then the real message."""
    ws.settimeout(0.2)
    deadline = time.monotonic() + 10 * UNIT
    while time.monotonic() < deadline:
        pub.send_multipart([frames[0], b"__probe__"])
        try:
            while True:
                m = json.loads(ws.recv())
                if m.get("data") == "__probe__":
                    ws.settimeout(10 * UNIT)
                    pub.send_multipart(frames)
                    return recv_json(ws)
        except websocket.WebSocketTimeoutException:
            continue
    raise AssertionError("the probe never arrived")


class TestDelivery:
    def test_json_message_with_topic_data_seq(self, gateway, pub) -> None:
        ws = connect(gateway, "?topic=apache")
        gateway.wait_subscribed("apache")
        m = publish_until_received(pub, ws, [b"apache.access", b"GET / 200"])
        assert m["topic"] == "apache.access" and m["data"] == "GET / 200" and m["seq"] >= 1

    def test_one_frame_envelope(self, gateway, pub) -> None:
        ws = connect(gateway, "?topic=linux")
        gateway.wait_subscribed("linux")
        publish_until_received(pub, ws, [b"linux", b"warmup"])
        pub.send(b"linux kernel: eth0 up")
        m = recv_json(ws)
        assert (m["topic"], m["data"]) == ("linux", "kernel: eth0 up")

    def test_raw_format_is_binary_data_alone(self, gateway, pub) -> None:
        ws = connect(gateway, "?format=raw&topic=bin")
        gateway.wait_subscribed("bin")
        ws.settimeout(0.2)
        deadline = time.monotonic() + 10 * UNIT
        while True:
            pub.send_multipart([b"bin", b"\x00\xff\x10"])
            try:
                op, data = ws.recv_data()
                break
            except websocket.WebSocketTimeoutException:
                assert time.monotonic() < deadline
        assert op == websocket.ABNF.OPCODE_BINARY and data == b"\x00\xff\x10"

    def test_invalid_utf8_is_base64_in_json(self, gateway, pub) -> None:
        ws = connect(gateway, "?topic=b")
        gateway.wait_subscribed("b")
        publish_until_received(pub, ws, [b"b", b"warmup"])
        pub.send_multipart([b"b", b"\xff\xfe"])
        m = recv_json(ws)
        assert m["encoding"] == "base64" and m["data"] == "//4="

    def test_each_message_once_however_many_prefixes_match(self, gateway, pub) -> None:
        ws = connect(gateway, "?topic=a&topic=ab&topic=abc")
        gateway.wait_subscribed("a", "ab", "abc")
        publish_until_received(pub, ws, [b"abc", b"warmup"])
        for i in range(20):
            pub.send_multipart([b"abcd", b"%d" % i])
        got = [recv_json(ws)["data"] for _ in range(20)]
        assert got == [str(i) for i in range(20)]
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()


class TestSubscriptions:
    def test_subscribe_unsubscribe_are_acknowledged(self, gateway) -> None:
        ws = connect(gateway, "?topic=a")
        assert command(ws, op="subscribe", topics=["b", "c"]) == {"op": "subscribed", "topics": ["a", "b", "c"]}
        assert command(ws, op="unsubscribe", topics=["a"]) == {"op": "unsubscribed", "topics": ["b", "c"]}

    def test_upstream_follows_the_union_of_clients(self, gateway) -> None:
        a = connect(gateway, "?topic=x")
        b = connect(gateway, "?topic=x&topic=y")
        gateway.wait_subscribed("x", "y")
        b.close()
        wait_until(lambda: gateway.health()["upstream"]["subscriptions"] == ["x"], 10, "y dropped")
        command(a, op="unsubscribe", topics=["x"])
        wait_until(lambda: gateway.health()["upstream"]["subscriptions"] == [], 10, "x dropped")

    def test_no_topic_means_everything(self, gateway) -> None:
        ws = connect(gateway)  # kept: a garbage-collected client closes and unsubscribes
        gateway.wait_subscribed("")
        ws.close()

    def test_publishers_filter_at_the_source(self, gateway) -> None:
        """An XPUB publisher sees exactly the prefixes clients asked for."""
        ctx = zmq.Context()
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.connect(gateway.zmq_endpoint)
        try:
            connect(gateway, "?topic=wanted")
            assert xpub.poll(10_000 * UNIT)
            assert xpub.recv() == b"\x01wanted"
        finally:
            xpub.close()
            ctx.term()

    def test_subscription_limit(self, gateway_factory) -> None:
        gw = gateway_factory("--max-subscriptions", "2")
        ws = connect(gw, "?topic=a")
        reply = command(ws, op="subscribe", topics=["b", "c"])
        assert reply["op"] == "error" and reply["code"] == "too_many_subscriptions"
        assert command(ws, op="ping") == {"op": "pong"}


class TestBadInput:
    @pytest.mark.parametrize(
        ("payload", "code"),
        [("hello", "bad_json"), ('{"op":"fly"}', "bad_command"), ("[]", "bad_command"),
         ('{"op":"publish","topic":"t","data":"d"}', "publish_disabled")],
    )
    def test_bad_command_gets_error_and_connection_goes_on(self, gateway, payload, code) -> None:
        ws = connect(gateway)
        ws.send(payload)
        reply = recv_json(ws)
        assert reply["op"] == "error" and reply["code"] == code and reply["message"]
        assert command(ws, op="ping", id="still") == {"op": "pong", "id": "still"}

    def test_binary_command_is_an_error_not_a_crash(self, gateway) -> None:
        ws = connect(gateway)
        ws.send_binary(b"\x00\x01")
        assert recv_json(ws)["code"] == "bad_command"

    def test_invalid_utf8_text_closes_1007(self, gateway) -> None:
        ws = connect(gateway)
        ws.send_frame(websocket.ABNF.create_frame(b"\xff\xfe", websocket.ABNF.OPCODE_TEXT))
        assert_close_code(ws, 1007)

    def test_fragmented_invalid_utf8_closes_1007(self, gateway) -> None:
        ws = connect(gateway)
        ws.send_frame(websocket.ABNF(fin=0, opcode=websocket.ABNF.OPCODE_TEXT, data=b'{"op":"\xc3'))
        ws.send_frame(websocket.ABNF(fin=1, opcode=websocket.ABNF.OPCODE_CONT, data=b'\x28"}'))
        assert_close_code(ws, 1007)

    def test_fragmented_command_is_reassembled(self, gateway) -> None:
        ws = connect(gateway)
        ws.send_frame(websocket.ABNF(fin=0, opcode=websocket.ABNF.OPCODE_TEXT, data=b'{"op":"pi'))
        ws.send_frame(websocket.ABNF(fin=1, opcode=websocket.ABNF.OPCODE_CONT, data=b'ng","id":"\xc3\xa9"}'))
        assert recv_json(ws) == {"op": "pong", "id": "é"}

    def test_a_close_between_fragments_is_answered_with_1000(self, gateway) -> None:
        """RFC 6455 §5.4: control frames may come between fragments (Autobahn case 7.1.5)."""
        ws = connect(gateway)
        ws.send_frame(websocket.ABNF(fin=0, opcode=websocket.ABNF.OPCODE_TEXT, data=b'{"op":'))
        ws.send_frame(websocket.ABNF(fin=1, opcode=websocket.ABNF.OPCODE_CLOSE, data=b"\x03\xe8"))
        ws.send_frame(websocket.ABNF(fin=1, opcode=websocket.ABNF.OPCODE_CONT, data=b'"ping"}'))
        assert_close_code(ws, 1000)

    @pytest.mark.parametrize("ident", ["NaN", "Infinity", "1e999", '"\\ud800"'])
    def test_a_ping_id_json_cannot_carry_back_is_an_error(self, gateway, ident) -> None:
        ws = connect(gateway)
        ws.send('{"op":"ping","id":%s}' % ident)
        reply = json.loads(ws.recv(), parse_constant=lambda c: pytest.fail(f"{c} in a reply"))
        assert reply["op"] == "error" and reply["code"] == "bad_command"
        assert command(ws, op="ping", id=1) == {"op": "pong", "id": 1}
        assert "ERROR" not in gateway.output()[1]

    def test_oversize_message_closes_1009(self, gateway_factory) -> None:
        gw = gateway_factory("--max-message", "1000")
        ws = connect(gw)
        ws.send("x" * 2000)
        assert_close_code(ws, 1009)

    def test_gateway_survives_garbage_and_serves_others(self, gateway, pub) -> None:
        good = connect(gateway, "?topic=g")
        for junk in (b"\x00" * 100, b"GET / HTTP/1.0\r\n\r\n", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", gateway.port)) as s:
                s.sendall(junk)
                s.settimeout(5 * UNIT)
                try:
                    s.recv(4096)
                except (TimeoutError, ConnectionResetError):
                    pass
        gateway.wait_subscribed("g")
        assert publish_until_received(pub, good, [b"g", b"after"])["data"] == "after"
        assert gateway.proc.poll() is None


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame with a payload under 126 bytes (RFC 6455 §5.2)."""
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 * fin | opcode, 0x80 | len(payload))) + key + masked


def read_to_eof(s: socket.socket) -> bytes:
    s.settimeout(10 * UNIT)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of unmasked server frames with payloads under 126 bytes."""
    out = []
    while data:
        n = data[1] & 0x7F
        assert n < 126 and not data[1] & 0x80
        out.append((data[0] & 0x0F, data[2:2 + n]))
        data = data[2 + n:]
    return out


class TestEarlyData:
    """A client that sends more right behind its request, in the same read, gets the response
    to the request first (RFC 6455 §4.1 asks clients to wait for the 101; not all do)."""

    def test_frames_behind_the_handshake_are_answered_after_the_101(self, gateway) -> None:
        with socket.create_connection(("127.0.0.1", gateway.port)) as s:
            s.sendall(HANDSHAKE + client_frame(0x9, b"early") + client_frame(0x8, b"\x03\xe8"))
            head, _, rest = read_to_eof(s).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert server_frames(rest) == [(0xA, b"early"), (0x8, b"\x03\xe8")]  # pong, close 1000

    def test_a_request_pipelined_behind_a_plain_one_is_not_answered(self, gateway) -> None:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", gateway.port)) as s:
            s.sendall(request + request + client_frame(0x9, b"x"))
            reply = read_to_eof(s)
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 ") == 1
        wait_until(lambda: gateway.health()["connections"] == 1, 10, "the connection to go")
        assert "ERROR" not in gateway.output()[1]

    def test_a_request_cut_anywhere_then_frames_in_one_read(self, gateway) -> None:
        for cut in (1, len(HANDSHAKE) - 3, len(HANDSHAKE) - 2, len(HANDSHAKE) - 1):
            with socket.create_connection(("127.0.0.1", gateway.port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(HANDSHAKE[:cut])
                wait_until(lambda: gateway.health()["connections"] == 2, 10, "the first part read")
                s.sendall(HANDSHAKE[cut:] + client_frame(0x9, b"p") + client_frame(0x8, b"\x03\xe8"))
                head, _, rest = read_to_eof(s).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ") and server_frames(rest)[0] == (0xA, b"p"), cut


def assert_close_code(ws: websocket.WebSocket, code: int) -> None:
    deadline = time.monotonic() + 10 * UNIT
    while time.monotonic() < deadline:
        try:
            frame = ws.recv_frame()
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
            raise AssertionError("closed without a close frame") from None
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            got = int.from_bytes(frame.data[:2], "big")
            assert got == code, f"close code {got}, expected {code}"
            return
    raise AssertionError("no close frame")


class TestHandshake:
    def test_missing_upgrade_gets_426(self, gateway) -> None:
        from conftest import http_get

        status, headers, body = http_get(gateway.url + "/ws")
        assert status == 426 and headers["Upgrade"] == "websocket"
        assert b"invalid Connection header" in body  # says what is missing

    def test_bad_format_gets_400(self, gateway) -> None:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(gateway, "?format=xml")
        assert info.value.status_code == 400

    def test_connection_limit_refuses_with_503(self, gateway_factory) -> None:
        gw = gateway_factory("--max-connections", "2")
        a, b = connect(gw), connect(gw)
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(gw)
        assert info.value.status_code == 503
        assert gw.health()["connections"] == 3  # /health still answers at the limit (200)
        a.close()
        wait_until(lambda: gw.health()["connections"] <= 2, 10, "a slot to free")  # health uses one
        assert command(b, op="ping") == {"op": "pong"}

    def test_handshake_timeout_drops_silent_connections(self, gateway_factory) -> None:
        gw = gateway_factory("--handshake-timeout", "0.5")
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /ws HTTP/1.1\r\n")
        s.settimeout(10 * UNIT)
        assert s.recv(100) == b""  # closed by the gateway
        s.close()


class TestKeepalive:
    def test_server_pings_and_a_silent_client_is_closed(self, gateway_factory) -> None:
        gw = gateway_factory("--ping-interval", "0.3", "--ping-timeout", "0.3")

        async def run() -> tuple[int, int | None]:
            pings = 0
            async with aiohttp.ClientSession() as session:
                # autoping=False: aiohttp must not answer, so the gateway sees no pong.
                async with session.ws_connect(gw.ws_url, autoping=False, autoclose=False) as ws:
                    while True:
                        msg = await asyncio.wait_for(ws.receive(), 10 * UNIT)
                        if msg.type == aiohttp.WSMsgType.PING:
                            pings += 1
                        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                            return pings, msg.data
        pings, code = asyncio.run(run())
        assert pings >= 1 and code == 1011

    def test_a_client_that_answers_stays(self, gateway_factory) -> None:
        gw = gateway_factory("--ping-interval", "0.2", "--ping-timeout", "0.5")

        async def run() -> dict:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(gw.ws_url) as ws:
                    # aiohttp answers pings while receive() runs: wait there through several
                    # ping rounds (elapsed time is the subject of this test).
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(ws.receive(), 2 * UNIT)
                    await ws.send_str('{"op":"ping"}')
                    return json.loads((await asyncio.wait_for(ws.receive(), 10 * UNIT)).data)
        assert asyncio.run(run()) == {"op": "pong"}


class TestShutdown:
    def test_sigterm_closes_clients_with_1001_and_exits_0(self, gateway) -> None:
        ws = connect(gateway)
        gateway.proc.send_signal(15)
        assert_close_code(ws, 1001)
        rc, out, err = gateway.stop()
        assert rc == 0 and "Traceback" not in err

    def test_exits_within_close_timeout_when_peers_never_answer(self, gateway_factory) -> None:
        gw = gateway_factory("--close-timeout", "1")
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert b"101" in s.recv(1000)
        t0 = time.monotonic()
        rc, _, err = gw.stop()
        assert rc == 0 and time.monotonic() - t0 < 1 + 5 * UNIT, err
        s.close()


def test_the_log_names_the_close_code_the_client_sent(gateway: GatewayProc) -> None:
    """A client that closes first with 1000 is logged as closed (1000), not as 'no close frame'."""
    ws = connect(gateway)
    ws.close(status=1000)
    wait_until(lambda: "closed (1000)" in gateway.output()[1], 10, "the close to be logged")
    raw = socket.create_connection(("127.0.0.1", gateway.port))
    raw.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    raw.close()  # gone without a close frame
    wait_until(lambda: "closed (no close frame)" in gateway.output()[1], 10, "the reset to be logged")
