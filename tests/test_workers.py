"""workers: --workers N processes share one port; every client gets every message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
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
            upstream = health()["upstream"]  # the endpoint the user gave, not the inner link
            assert upstream["bind"] == [gw.zmq_endpoint] and upstream["connect"] == []
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


def _workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (spawned children running spawn_main), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_with_a_supervisor_killed_by_sigkill(gateway_factory) -> None:
    """Orphaned workers would keep the port: the next gateway could not start."""
    import glob

    before = set(glob.glob("/tmp/zmqws-workers-*"))
    gw: GatewayProc = gateway_factory("--workers", "2")
    workers = wait_until(lambda: len(w := _workers_of(gw.proc.pid)) == 2 and w, 20, "two workers")
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    wait_until(lambda: not any(_alive(w) for w in workers), 20, "the workers to end")
    again = gateway_factory("--workers", "2", port=gw.port)  # the port is free again

    def serving() -> bool:  # a connection made while the second worker starts may be reset
        try:
            return again.health()["status"] == "ok"
        except OSError:
            return False
    wait_until(serving, 20, "the new gateway to serve /health")
    assert set(glob.glob("/tmp/zmqws-workers-*")) <= before  # nothing left behind (abstract ipc)


def test_workers_behind_a_bound_input_push_back_instead_of_dropping(gateway_factory) -> None:
    """Workers stopped while 30,000 messages are published: the supervisor queues what it may and
    then holds the producer back; after they resume, the client gets every message, no gap."""
    import subprocess

    import websocket
    from conftest import zmqws_cmd

    n, pad = 30_000, b"x" * 1000
    # 30 MB: more than libzmq's queues and every kernel socket buffer on the way can hold.
    gw: GatewayProc = gateway_factory("--workers", "2", "--rcvhwm", "1000",
                                      "--client-buffer", str(128 << 20))
    ws = websocket.create_connection(gw.ws_url + "?topic=t", timeout=30 * UNIT)
    workers = wait_until(lambda: len(w := _workers_of(gw.proc.pid)) == 2 and w, 20, "two workers")
    pub = subprocess.Popen(zmqws_cmd("publish", "--connect", gw.zmq_endpoint, "t"),
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ws.settimeout(30 * UNIT)
        pub.stdin.write(b"0\n")
        pub.stdin.flush()
        assert json.loads(ws.recv())["data"] == "0"  # the subscription made it up; now stop them
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        try:
            body = b"".join(b"%d %s\n" % (i, pad) for i in range(1, n))

            def feed() -> None:  # a pipe write blocks while publish is held back
                pub.stdin.write(body)
                pub.stdin.close()

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            with pytest.raises(subprocess.TimeoutExpired):
                pub.wait(3)  # held back: it cannot have handed everything over
        finally:
            for w in workers:
                os.kill(w, signal.SIGCONT)
        got = [json.loads(ws.recv()) for _ in range(1, n)]
        assert [m.get("data") for m in got] == [f"{i} {pad.decode()}" for i in range(1, n)], \
            [m for m in got if "data" not in m][:3]
        assert pub.wait(30 * UNIT) == 0, pub.stderr.read()
        writer.join(10 * UNIT)
    finally:
        if pub.poll() is None:
            pub.kill()
        ws.close()


def test_a_bad_certificate_with_workers_is_one_line_before_any_worker(tmp_path) -> None:
    import subprocess

    from conftest import free_port, zmqws_cmd

    bad = tmp_path / "not.pem"
    bad.write_text("not a certificate\n")
    r = subprocess.run(zmqws_cmd("gateway", "--bind", f"tcp://127.0.0.1:{free_port()}", "--listen",
                                 f"127.0.0.1:{free_port()}", "--workers", "2",
                                 "--certfile", str(bad), "--keyfile", str(bad)),
                       capture_output=True, text=True, timeout=60 * UNIT)
    assert r.returncode == 3 and r.stdout == ""  # no "live page at" line for a gateway that never ran
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load --certfile/--keyfile" in lines[0], r.stderr
