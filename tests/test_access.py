"""access: Origin policy, bearer tokens and JWT grants (unit), and end to end on a real gateway."""

from __future__ import annotations

import json
import ssl
import subprocess
import time

import jwt
import pytest
import websocket
from conftest import UNIT, GatewayProc, zmqws_cmd

from zmqws.access import FULL, AccessDenied, Authenticator, Grant, bearer, origin_allowed

SECRET = "s" * 40


class TestOrigin:
    @pytest.mark.parametrize(("origin", "host", "allowed", "ok"), [
        (None, "gw:8080", (), True),                                # not a browser
        ("http://gw:8080", "gw:8080", (), True),                    # the gateway's own page
        ("https://GW:8080", "gw:8080", (), True),
        ("http://evil.example", "gw:8080", (), False),
        ("null", "gw:8080", (), False),
        ("null", "gw:8080", ("https://app.example",), False),
        ("https://app.example", "gw:8080", ("https://app.example",), True),
        ("https://app.example.evil", "gw:8080", ("https://app.example",), False),
        ("http://anything", "gw:8080", ("*",), True),
        ("ftp://gw:8080", "gw:8080", (), False),
    ])
    def test_policy(self, origin, host, allowed, ok) -> None:
        assert origin_allowed(origin, host, allowed) is ok


class TestAuthenticator:
    def test_no_auth_configured_grants_everything(self) -> None:
        assert Authenticator().authenticate(None) is FULL

    def test_static_token(self) -> None:
        a = Authenticator(tokens=["t0k"])
        assert a.authenticate("t0k") is FULL
        for bad in (None, "", "nope"):
            with pytest.raises(AccessDenied) as info:
                a.authenticate(bad)
            assert info.value.status == 401

    def test_jwt_grants_its_claims(self) -> None:
        a = Authenticator(jwt_secret=SECRET)
        token = jwt.encode({"subscribe": ["a."], "publish": ["cmd."]}, SECRET, algorithm="HS256")
        g = a.authenticate(token)
        assert g == Grant((b"a.",), (b"cmd.",))
        assert g.may_subscribe(b"a.x") and not g.may_subscribe(b"a") and not g.may_subscribe(b"")
        assert g.may_publish(b"cmd.go") and not g.may_publish(b"a.x")
        assert g.default_prefixes() == frozenset([b"a."])

    @pytest.mark.parametrize("token", [
        jwt.encode({"subscribe": ["a"]}, "x" * 40, algorithm="HS256"),        # wrong secret
        jwt.encode({"subscribe": ["a"], "exp": 1}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"subscribe": "a"}, SECRET, algorithm="HS256"),            # bad claim
        "not.a.jwt",
    ])
    def test_invalid_jwts_are_401(self, token: str) -> None:
        with pytest.raises(AccessDenied) as info:
            Authenticator(jwt_secret=SECRET).authenticate(token)
        assert info.value.status == 401

    def test_bearer_sources(self) -> None:
        assert bearer("Bearer abc", None) == "abc"
        assert bearer("bearer  abc ", "q") == "abc"
        assert bearer("Basic xyz", "q") == "q"
        assert bearer(None, None) is None


def connect(gw: GatewayProc, query: str = "", scheme: str = "ws", **kw) -> websocket.WebSocket:
    return websocket.create_connection(f"{scheme}://127.0.0.1:{gw.port}/ws{query}",
                                       timeout=10 * UNIT, **kw)


def refused(gw: GatewayProc, query: str = "", **kw) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(gw, query, **kw)
    return info.value.status_code


class TestEndToEnd:
    def test_foreign_and_null_origins_get_403(self, gateway: GatewayProc) -> None:
        assert refused(gateway, origin="http://evil.example") == 403
        assert refused(gateway, origin="null") == 403
        connect(gateway, origin=f"http://127.0.0.1:{gateway.port}").close()  # its own page
        connect(gateway).close()  # no Origin: not a browser

    def test_allow_origin(self, gateway_factory) -> None:
        gw = gateway_factory("--allow-origin", "https://app.example")
        connect(gw, origin="https://app.example").close()
        assert refused(gw, origin="https://other.example") == 403

    def test_missing_or_wrong_token_is_401(self, gateway_factory, tmp_path) -> None:
        (tmp_path / "tokens").write_text("sekrit\n")
        gw = gateway_factory("--token-file", str(tmp_path / "tokens"))
        assert refused(gw) == 401
        assert refused(gw, "?access_token=wrong") == 401
        connect(gw, "?access_token=sekrit").close()
        connect(gw, header=["Authorization: Bearer sekrit"]).close()

    @pytest.mark.parametrize("dup", [b"Host: a\r\nHost: b\r\n", b"Authorization: Bearer x\r\n"
                                     b"Authorization: Bearer y\r\nHost: h\r\n"])
    def test_duplicate_headers_get_400_and_no_frame_reaches_zeromq(self, gateway_factory, tmp_path,
                                                                   dup: bytes) -> None:
        """A request the access check cannot read is refused whole: frames sent behind it are
        never executed with some default grant (they once were: publish without a token)."""
        import socket

        import zmq

        (tmp_path / "tokens").write_text("sekrit\n")
        out = f"ipc://{tmp_path}/out.sock"
        gw = gateway_factory("--token-file", str(tmp_path / "tokens"), "--publish-bind", out)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(out)
        sub.subscribe(b"")
        frame = json.dumps({"op": "publish", "topic": "admin.cmd", "data": "pwned"}).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes([0x81, 0x80 | len(frame)]) + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(frame))
        try:
            s = socket.create_connection(("127.0.0.1", gw.port))
            s.sendall(b"GET /ws HTTP/1.1\r\n" + dup + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      + masked)
            s.settimeout(10 * UNIT)
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 400") and b"more than one" in reply, reply
            s.sendall(masked)  # and again after the answer
            s.close()
            assert not sub.poll(1000 * UNIT)  # nothing was published
            assert "ERROR" not in gw.output()[1]
        finally:
            sub.close(0)
            ctx.term()

    def test_jwt_limits_subscribe_and_publish(self, gateway_factory, tmp_path) -> None:
        (tmp_path / "secret").write_text(SECRET)
        out = tmp_path / "out.sock"
        gw = gateway_factory("--jwt-secret-file", str(tmp_path / "secret"),
                             "--publish-bind", f"ipc://{out}")
        token = jwt.encode({"subscribe": ["a."], "publish": ["a.cmd"]}, SECRET, algorithm="HS256")
        assert refused(gw, f"?access_token={token}&topic=b.") == 403
        assert refused(gw, f"?access_token={token}&topic=") == 403
        ws = connect(gw, f"?access_token={token}")
        gw.wait_subscribed("a.")
        assert gw.health()["upstream"]["subscriptions"] == ["a."]  # not everything

        def cmd(**c: object) -> dict:
            ws.send(json.dumps(c))
            return json.loads(ws.recv())

        assert cmd(op="subscribe", topics=["b."])["code"] == "forbidden"
        assert cmd(op="subscribe", topics=[""])["code"] == "forbidden"
        assert cmd(op="subscribe", topics=["a.x"]) == {"op": "subscribed", "topics": ["a.", "a.x"]}
        assert cmd(op="publish", topic="b.cmd", data="x")["code"] == "forbidden"
        assert cmd(op="publish", topic="a.cmd.go", data="x") == {"op": "published", "topic": "a.cmd.go"}

    def test_wss_with_a_self_signed_certificate(self, gateway_factory, tmp_path) -> None:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        gw = gateway_factory("--certfile", str(cert), "--keyfile", str(key))
        ctx = ssl.create_default_context(cafile=str(cert))
        ws = connect(gw, scheme="wss", sslopt={"context": ctx})
        ws.send(json.dumps({"op": "ping"}))
        assert json.loads(ws.recv()) == {"op": "pong"}
        ws.close()
        import urllib.request
        with urllib.request.urlopen(f"https://127.0.0.1:{gw.port}/health", context=ctx,
                                    timeout=10 * UNIT) as r:
            assert json.loads(r.read())["status"] == "ok"
        # plain ws:// to a TLS port fails cleanly and the gateway goes on
        with pytest.raises((websocket.WebSocketException, ConnectionError, OSError)):
            connect(gw)
        assert gw.proc.poll() is None


class TestCurve:
    def test_only_authorized_producers_can_publish_into_the_gateway(self, gateway_factory,
                                                                    tmp_path) -> None:
        from zmqws import NoSubscriberError, Publisher
        from zmqws.config import producer_curve
        from zmqws.zmq_io import make_curve_keys

        keys, allowed = tmp_path / "keys", tmp_path / "allowed"
        allowed.mkdir()
        make_curve_keys(str(keys), "gateway")
        good_pub, _ = make_curve_keys(str(keys), "good")
        make_curve_keys(str(keys), "bad")
        (allowed / "good.key").write_bytes(open(good_pub, "rb").read())
        r = subprocess.run(zmqws_cmd("keygen", str(keys), "cli"), capture_output=True,
                           text=True)
        assert r.returncode == 0 and (keys / "cli.key_secret").exists()
        gw = gateway_factory("--curve-secret-key", str(keys / "gateway.key_secret"),
                             "--curve-authorized", str(allowed))
        ws = connect(gw, "?topic=secure")
        gw.wait_subscribed("secure")
        server_key = str(keys / "gateway.key")
        bad = Publisher(gw.zmq_endpoint, subscriber_timeout=2 * UNIT, linger=0,
                        curve=producer_curve(server_key, str(keys / "bad.key_secret")))
        plain = Publisher(gw.zmq_endpoint, subscriber_timeout=2 * UNIT, linger=0)
        good = Publisher(gw.zmq_endpoint, subscriber_timeout=10 * UNIT, linger=0,
                         curve=producer_curve(server_key, str(keys / "good.key_secret")))
        try:
            for refused_pub in (bad, plain):  # never sees the gateway's subscription
                with pytest.raises(NoSubscriberError):
                    refused_pub.send("secure", "forged")
            good.send("secure", "genuine")
            assert json.loads(ws.recv())["data"] == "genuine"
            assert gw.health()["messages_in"] == 1
        finally:
            for p in (bad, plain, good):
                p.close()
