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
        connect(gateway)
        gateway.wait_subscribed("")

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
