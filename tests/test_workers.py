"""workers: --workers N processes share one port; every client gets every message."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import zmq
from conftest import UNIT, GatewayProc, http_get, wait_until

from zmqws.workers import SharedCounters


def test_shared_counters_sum_over_workers() -> None:
    c = SharedCounters(3)
    c.write(0, {"clients": 2, "messages_in": 5})
    c.write(2, {"clients": 1, "messages_in": 5})
    assert c.sums()["clients"] == 3 and c.sums()["messages_in"] == 10


def test_two_workers_share_the_port_and_200_clients_get_everything(gateway_factory) -> None:
    gw: GatewayProc = gateway_factory("--workers", "2")
    n_clients, n_msgs = 200, 200

    def health() -> dict:
        return json.loads(http_get(gw.url + "/health")[2])

    async def run() -> list[int]:
        # aiohttp pools at most 100 connections per session unless told otherwise
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            sockets = [await session.ws_connect(gw.ws_url + "?format=raw&topic=w")
                       for _ in range(n_clients)]
            loop = asyncio.get_running_loop()
            # Both workers took clients, and the sums cover all of them.
            seen: dict[int, int] = {}

            def spread() -> bool:
                h = health()
                seen[h["worker"]] = h["clients"]
                return len(seen) == 2 and h["all"]["clients"] == n_clients

            await loop.run_in_executor(None, lambda: wait_until(spread, 20, "both workers"))
            assert all(count > 0 for count in seen.values()), seen
            ctx = zmq.Context()
            pub = ctx.socket(zmq.XPUB)
            pub.setsockopt(zmq.SNDHWM, 0)
            pub.connect(gw.zmq_endpoint)
            # the supervisor's forwarder passes the workers' subscriptions up: wait for "w"
            await loop.run_in_executor(None, lambda: wait_until(
                lambda: pub.poll(100) and pub.recv() == b"\x01w", 20, "the subscription"))
            for i in range(n_msgs):
                pub.send_multipart([b"w", b"%d" % i])

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> int:
                for i in range(n_msgs):
                    msg = await asyncio.wait_for(ws.receive(), 30 * UNIT)
                    assert msg.data == b"%d" % i
                return n_msgs

            counts = await asyncio.gather(*(drain(ws) for ws in sockets))
            pub.close(0)
            ctx.term()
            return counts

    assert asyncio.run(run()) == [n_msgs] * n_clients
    wait_until(lambda: health()["all"]["deliveries"] == n_clients * n_msgs, 10, "summed counters")
    rc, out, err = gw.stop()
    assert rc == 0 and "2 workers" in out and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_worker_counts(value: str) -> None:
    import subprocess

    from conftest import zmqws_cmd
    r = subprocess.run(zmqws_cmd("gateway", "--bind", "tcp://127.0.0.1:1", "--workers", value),
                       capture_output=True, text=True, timeout=30 * UNIT)
    assert r.returncode == 2 and "--workers" in r.stderr


def test_a_port_held_by_workers_is_in_use_for_other_workers(gateway_factory) -> None:
    """SO_REUSEPORT must not let a second gateway share the port and split its clients."""
    import subprocess

    from conftest import free_port, zmqws_cmd
    gw: GatewayProc = gateway_factory("--workers", "2")
    r = subprocess.run(zmqws_cmd("gateway", "--bind", f"tcp://127.0.0.1:{free_port()}",
                                 "--listen", f"127.0.0.1:{gw.port}", "--workers", "2"),
                       capture_output=True, text=True, timeout=30 * UNIT)
    assert r.returncode == 3, r.stderr
    assert f"cannot listen on 127.0.0.1:{gw.port}" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_workers_with_curve_on_bind_authenticate_and_stop_promptly(gateway_factory, tmp_path) -> None:
    """The supervisor binds the CURVE input: an authorized producer reaches a worker's client,
    and SIGTERM ends everything at once (the authenticator is stopped before the context ends)."""
    import websocket

    from zmqws import Publisher
    from zmqws.config import producer_curve
    from zmqws.zmq_io import make_curve_keys

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    make_curve_keys(str(keys), "gateway")
    good_pub, _ = make_curve_keys(str(keys), "good")
    (allowed / "good.key").write_bytes(open(good_pub, "rb").read())
    gw: GatewayProc = gateway_factory("--workers", "2",
                                      "--curve-secret-key", str(keys / "gateway.key_secret"),
                                      "--curve-authorized", str(allowed))
    ws = websocket.create_connection(gw.ws_url + "?topic=secure", timeout=20 * UNIT)
    good = Publisher(gw.zmq_endpoint, subscriber_timeout=20 * UNIT, linger=0,
                     curve=producer_curve(str(keys / "gateway.key"), str(keys / "good.key_secret")))
    try:
        good.send("secure", "genuine")
        assert json.loads(ws.recv())["data"] == "genuine"
    finally:
        good.close()
        ws.close()
    started = time.monotonic()
    code, _, err = gw.stop()
    assert code == 0, err
    assert time.monotonic() - started < 10 * UNIT
