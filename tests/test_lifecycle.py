"""Lifecycle under churn: descriptors return to baseline; at the descriptor limit the gateway
refuses new connections without spinning and keeps serving the open ones."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import websocket
import zmq
from conftest import UNIT, GatewayProc, free_port, wait_until, zmqws_cmd

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def masked_close(code: int, reason: bytes) -> bytes:
    payload = struct.pack("!H", code) + reason
    mask = b"\x01\x02\x03\x04"
    return bytes([0x88, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def test_descriptors_return_to_baseline_after_churn(gateway: GatewayProc) -> None:
    pid = gateway.proc.pid
    gateway.health()
    baseline = wait_until(lambda: fds(pid), 5, "a baseline")
    for i in range(1500):
        s = socket.create_connection(("127.0.0.1", gateway.port))
        s.sendall(HANDSHAKE)
        assert s.recv(200).startswith(b"HTTP/1.1 101")
        kind = i % 3
        if kind == 0:  # clean close
            s.sendall(masked_close(1000, b""))
            s.recv(100)
        elif kind == 1:  # reset
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # kind 2: plain TCP close without a close frame
    wait_until(lambda: fds(pid) <= baseline, 30, f"descriptors back to {baseline}")
    assert gateway.health()["connections"] == 1  # the /health request itself


def test_invalid_utf8_in_close_reason_closes_1007(gateway: GatewayProc) -> None:
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(HANDSHAKE)
    assert s.recv(200).startswith(b"HTTP/1.1 101")
    s.sendall(masked_close(1000, b"\xff\xfe"))
    s.settimeout(10 * UNIT)
    frame = s.recv(100)
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1007
    s.close()


def test_at_the_descriptor_limit_new_connections_are_refused_without_spinning() -> None:
    zmq_port, port = free_port(), free_port()
    proc = subprocess.Popen(["prlimit", "--nofile=64:64", *zmqws_cmd(
        "gateway", "--bind", f"tcp://127.0.0.1:{zmq_port}", "--listen", f"127.0.0.1:{port}",
        "--workers", "1")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    held: list[socket.socket] = []
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        wait_until(lambda: _connectable(port), 15, "the gateway")
        reader = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?topic=t", timeout=10 * UNIT)
        # The producer is connected before the descriptors run out (libzmq needs one to accept it).
        pub.connect(f"tcp://127.0.0.1:{zmq_port}")
        assert pub.poll(10_000 * UNIT) and pub.recv() == b"\x01t"
        for _ in range(100):  # far past the limit of 64 descriptors
            s = socket.socket()
            s.settimeout(2 * UNIT)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        for i in range(50):
            pub.send_multipart([b"t", b"%d" % i])
        got = [json.loads(reader.recv())["data"] for _ in range(50)]
        assert got == [str(i) for i in range(50)]  # the open connection keeps getting data
        elapsed = max(time.monotonic() - t0, 1.0)
        time.sleep(1.0)  # measuring CPU use over an idle second: time is the subject here
        busy = (cpu_seconds(proc.pid) - cpu0) / (elapsed + 1.0)
        assert busy < 0.5, f"gateway used {busy:.0%} CPU at the descriptor limit"
        assert proc.poll() is None
    finally:
        pub.close(0)
        ctx.term()
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(15)


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _stalled_subscriber(gw: GatewayProc, topic: bytes) -> socket.socket:
    """A raw WebSocket client on ``topic`` with a 4 KiB receive buffer that will never read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    s.sendall(HANDSHAKE.replace(b"GET /ws ", b"GET /ws?format=raw&topic=" + topic + b" "))
    s.settimeout(10 * UNIT)
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    return s


def _flood_until_stuck(gw: GatewayProc, topic: bytes) -> None:
    """Publish until the gateway has paused the client (its socket and buffers are full)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(gw.zmq_endpoint)
    try:
        def stuck() -> bool:
            for _ in range(200):
                pub.send_multipart([topic, b"x" * 1000])
            return gw.health()["dropped"]["slow_client"] > 0
        wait_until(stuck, 30, "the stalled client to lose messages")
    finally:
        pub.close(0)
        ctx.term()


def test_a_peer_that_stopped_reading_is_aborted_after_the_close_timeout(gateway_factory) -> None:
    """The keepalive fails a client that reads nothing; its close frame cannot be delivered, so
    the connection must not wait for its buffer to drain: aborted after --close-timeout."""
    gw = gateway_factory("--ping-interval", "0.5", "--ping-timeout", "1", "--close-timeout", "1")
    s = _stalled_subscriber(gw, b"busy")
    try:
        gw.wait_subscribed("busy")
        _flood_until_stuck(gw, b"busy")
        wait_until(lambda: gw.health()["connections"] == 1, 15, "the stalled connection to be aborted")
    finally:
        s.close()

