"""proxy: libzmq's XSUB/XPUB proxy, subscriptions upstream, counters, status, shutdown, errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from conftest import UNIT, free_port, http_get, wait_until, zmqws_cmd

from zmqws.config import ProxySettings
from zmqws.exceptions import ConfigError
from zmqws.proxy import Proxy

FRAMES = 3  # a zmqws Publisher's message: topic, data, metadata


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def per_message(stats: dict[str, Any], frames: int) -> int:
    """How many of ``stats``' counted units one message of ``frames`` frames is."""
    return frames if stats["counts"] == "frames" else 1


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"backend": ("tcp://127.0.0.1:2",)}, "--frontend"),
    ({"frontend": ("tcp://127.0.0.1:1",)}, "--backend"),
    ({"frontend": ("tcp://127.0.0.1:1",), "backend": ("tcp://127.0.0.1:1",)}, "both"),
    ({"frontend": ("tcp://127.0.0.1:x",), "backend": ("tcp://127.0.0.1:2",)}, "--frontend"),
    ({"frontend": ("tcp://127.0.0.1:1",), "backend_connect": ("udp://h:2",)}, "--backend-connect"),
    ({"frontend": ("tcp://127.0.0.1:1",), "backend": ("tcp://127.0.0.1:2",), "status": "nowhere"},
     "--status"),
    ({"frontend": ("tcp://127.0.0.1:1",), "backend": ("tcp://127.0.0.1:2",),
      "stats_interval": -1.0}, "--stats-interval"),
    ({"frontend": ("tcp://127.0.0.1:1",), "backend": ("tcp://127.0.0.1:2",), "hwm": -5}, "--hwm"),
])
def test_settings_name_the_flag_at_fault(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ProxySettings(**kwargs)


def test_settings_parse_the_status_address() -> None:
    s = ProxySettings(frontend=("tcp://*:5555",), backend_connect=("tcp://gw:5556",),
                      status="127.0.0.1:0")
    assert (s.status_host, s.status_port) == ("127.0.0.1", 0)
    with pytest.raises(AttributeError):
        s.hwm = 1  # type: ignore[misc]


# -- the proxy in process, with real sockets --------------------------------------------------


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def _recv_subscription(sock: zmq.Socket[Any], want: bytes) -> None:
    def seen() -> bool:
        return bool(sock.poll(100)) and sock.recv() == want
    wait_until(seen, 10, f"subscription {want!r} at the producer")


def test_subscriptions_go_upstream_and_unwanted_topics_stay_at_the_producer(ctx) -> None:
    """A producer only sends what a subscriber behind the proxy wants; counters show it."""
    settings = ProxySettings(frontend=("tcp://127.0.0.1:*",), backend=("tcp://127.0.0.1:*",))
    proxy = Proxy(settings)
    proxy.start()
    try:
        (front,), (back,) = proxy.frontend_endpoints, proxy.backend_endpoints
        producer = ctx.socket(zmq.XPUB)
        producer.connect(front)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVTIMEO, int(10_000 * UNIT))
        sub.connect(back)
        sub.subscribe(b"wanted.")
        _recv_subscription(producer, b"\x01wanted.")  # it went through the proxy, upstream
        for i in range(100):
            producer.send_multipart([b"wanted.a", b"%d" % i])
            producer.send_multipart([b"unwanted.b", b"x" * 1000])
        got = [sub.recv_multipart() for _ in range(100)]
        assert [int(m[1]) for m in got] == list(range(100))
        assert not sub.poll(200)
        s = wait_until(lambda: (st := proxy.stats()) and st["messages_out"] >= 100 and st, 10,
                       "the counters")
        unit = per_message(s, 2)
        # The 100 unwanted messages (100 kB) never reached the proxy: filtered at the producer.
        assert s["messages_in"] == s["messages_out"] == 100 * unit
        assert s["bytes_in"] == s["bytes_out"] == sum(len(b"wanted.a") + len(m[1]) for m in got)
        assert s["subscriptions"] == 1 and s["subscriptions_upstream"] == 1
        sub.unsubscribe(b"wanted.")
        _recv_subscription(producer, b"\x00wanted.")
        assert wait_until(lambda: proxy.stats()["subscriptions"] == 2, 10, "the unsubscription")
        producer.close(0)
        sub.close(0)
    finally:
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 3 * UNIT
    assert proxy.stats() is None  # closed: no answer, no hang


def test_every_subscriber_is_counted_and_each_gets_its_topics(ctx) -> None:
    """Two subscribers to one prefix: both counted (XPUB_VERBOSER), the producer keeps sending
    until the last one leaves, then stops."""
    proxy = Proxy(ProxySettings(frontend=("tcp://127.0.0.1:*",), backend=("tcp://127.0.0.1:*",)))
    proxy.start()
    try:
        producer = ctx.socket(zmq.XPUB)
        producer.setsockopt(zmq.XPUB_VERBOSER, 1)
        producer.connect(proxy.frontend_endpoints[0])
        subs = [ctx.socket(zmq.SUB) for _ in range(2)]
        for s in subs:
            s.setsockopt(zmq.RCVTIMEO, int(10_000 * UNIT))
            s.connect(proxy.backend_endpoints[0])
            s.subscribe(b"t")
            _recv_subscription(producer, b"\x01t")
        assert proxy.stats()["subscriptions"] == 2
        producer.send_multipart([b"t", b"1"])
        assert [s.recv_multipart() for s in subs] == [[b"t", b"1"]] * 2
        subs[0].close(0)  # gone: its subscription is withdrawn, the other one stays
        wait_until(lambda: proxy.stats()["subscriptions"] == 3, 10, "the first one leaving")
        assert not producer.poll(100)  # the producer was not told to stop: one still wants t
        producer.send_multipart([b"t", b"2"])
        assert subs[1].recv_multipart() == [b"t", b"2"]
        subs[1].unsubscribe(b"t")
        _recv_subscription(producer, b"\x00t")
        producer.close(0)
        subs[1].close(0)
    finally:
        proxy.close()


# -- the command ----------------------------------------------------------------------------


class ProxyProc:
    """A real ``zmqws proxy`` subprocess on free ports, its status on HTTP."""

    def __init__(self, *extra: str, status: bool = True) -> None:
        self.frontend, self.backend = tcp(), tcp()
        self.status_port = free_port()
        args = ["--frontend", self.frontend, "--backend", self.backend]
        if status:
            args += ["--status", f"127.0.0.1:{self.status_port}"]
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(zmqws_cmd("proxy", *args, *extra), stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()
        assert self.banner.startswith("zmqws proxy:"), self.stderr()

    def stats(self) -> dict[str, Any]:
        status, _, body = http_get(f"http://127.0.0.1:{self.status_port}/status")
        assert status == 200, body
        return json.loads(body)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(15 * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the proxy did not stop on {sig}: {self.stderr()}") from None
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.err.close()


@pytest.fixture
def proxy_proc() -> Iterator[ProxyProc]:
    p = ProxyProc("--stats-interval", "0.2")
    yield p
    p.close()


def test_command_forwards_counts_on_status_and_logs(proxy_proc: ProxyProc, ctx) -> None:
    assert proxy_proc.frontend in proxy_proc.banner and proxy_proc.backend in proxy_proc.banner
    assert f"127.0.0.1:{proxy_proc.status_port}/status" in proxy_proc.banner
    s = proxy_proc.stats()
    assert s["messages_in"] == s["subscriptions"] == 0 and s["libzmq"] == zmq.zmq_version()
    producer = ctx.socket(zmq.PUB)
    producer.setsockopt(zmq.SNDHWM, 0)  # a burst larger than the default 1,000 would be cut
    producer.connect(proxy_proc.frontend)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, int(10_000 * UNIT))  # a lost message fails, never hangs
    sub.connect(proxy_proc.backend)
    sub.subscribe(b"a")
    wait_until(lambda: proxy_proc.stats()["subscriptions_upstream"] == 1, 10, "the subscription")

    def delivered() -> bool:  # a PUB producer sends into the void until its connection is up
        producer.send_multipart([b"a", b"ping"])
        return bool(sub.poll(50))
    wait_until(delivered, 10, "a first message through the proxy")
    while sub.poll(200):
        sub.recv_multipart()
    before = proxy_proc.stats()
    for i in range(1000):
        producer.send_multipart([b"a", b"%04d" % i])
        producer.send_multipart([b"b", b"%04d" % i])  # nobody wants b
    assert [sub.recv_multipart()[1] for _ in range(1000)] == [b"%04d" % i for i in range(1000)]
    unit = per_message(before, 2)
    after = wait_until(lambda: (st := proxy_proc.stats())["messages_out"] -
                       before["messages_out"] == 1000 * unit and st, 10, "the counters")
    assert after["messages_in"] - before["messages_in"] == 1000 * unit
    assert after["bytes_in"] - before["bytes_in"] == 1000 * 5
    wait_until(lambda: "stats: in" in proxy_proc.stderr(), 10, "a periodic stats line")
    producer.close(0)
    sub.close(0)
    status, _, _ = http_get(f"http://127.0.0.1:{proxy_proc.status_port}/nothing")
    assert status == 404
    code, took = proxy_proc.stop(signal.SIGTERM)
    assert code == 0 and took < 5 * UNIT, proxy_proc.stderr()
    assert "stopping: in" in proxy_proc.stderr() and "Traceback" not in proxy_proc.stderr()


def test_a_silent_status_client_blocks_neither_others_nor_shutdown(proxy_proc: ProxyProc) -> None:
    idle = socket.create_connection(("127.0.0.1", proxy_proc.status_port))
    try:
        assert proxy_proc.stats()["messages_in"] == 0  # answered while the idle one waits
        code, took = proxy_proc.stop(signal.SIGTERM)
        assert code == 0 and took < 5 * UNIT, proxy_proc.stderr()
    finally:
        idle.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_command_stops_cleanly_with_connected_peers(sig: int, ctx) -> None:
    """Peers still connected and messages in flight: the signal still ends it, exit 0, fast."""
    p = ProxyProc(status=False)
    try:
        producer = ctx.socket(zmq.PUB)
        producer.connect(p.frontend)
        sub = ctx.socket(zmq.SUB)
        sub.connect(p.backend)
        sub.subscribe(b"")
        for _ in range(1000):
            producer.send_multipart([b"t", b"x" * 100])
        code, took = p.stop(sig)
        assert code == 0 and took < 5 * UNIT, p.stderr()
        producer.close(0)
        sub.close(0)
    finally:
        p.close()


def test_errors_are_one_line_with_their_exit_codes(ctx) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(zmqws_cmd("proxy", *args), capture_output=True, text=True,
                              timeout=30 * UNIT)

    taken = ctx.socket(zmq.PUB)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    busy = free_port()
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", busy))
    holder.listen()
    try:
        cases = [
            (("--frontend", "tcp://127.0.0.1:nope", "--backend", tcp()), 2, "malformed endpoint"),
            (("--frontend", tcp()), 2, "--backend"),
            (("--frontend", f"tcp://127.0.0.1:{port}", "--backend", tcp()), 3,
             "Address already in use"),
            (("--frontend", tcp(), "--backend", tcp(), "--status", f"127.0.0.1:{busy}"), 3,
             "address already in use"),
            (("--frontend", tcp(), "--backend", tcp(), "--multicast-rate", "0"), 2,
             "--multicast-rate"),
        ]
        for args, code, needle in cases:
            r = run(*args)
            assert r.returncode == code, (args, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("zmqws proxy"), \
                r.stderr
    finally:
        taken.close(0)
        holder.close()


@pytest.mark.parametrize("no_drop", [False, True])
def test_a_stalled_gateway_costs_drops_or_pushes_back_with_no_drop(no_drop: bool, ctx) -> None:
    """A subscriber that stops reading: by default the proxy drops for it and the producer goes
    on; with --no-drop nothing is lost and the producer is held back instead."""
    proxy = Proxy(ProxySettings(frontend=("tcp://127.0.0.1:*",), backend=("tcp://127.0.0.1:*",),
                                hwm=10, no_drop=no_drop))
    proxy.start()
    total, blob = 1500, b"x" * 10_000
    try:
        producer = ctx.socket(zmq.XPUB)
        producer.setsockopt(zmq.XPUB_NODROP, 1)
        producer.setsockopt(zmq.SNDHWM, 10)
        producer.connect(proxy.frontend_endpoints[0])
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.connect(proxy.backend_endpoints[0])
        sub.subscribe(b"t")
        _recv_subscription(producer, b"\x01t")
        sent, last_progress = 0, time.monotonic()
        while sent < total and time.monotonic() - last_progress < 2 * UNIT:
            try:
                producer.send_multipart([b"t", b"%d" % sent, blob], zmq.NOBLOCK)
                sent += 1
                last_progress = time.monotonic()
            except zmq.Again:
                producer.poll(10, zmq.POLLIN)
        if no_drop:  # the proxy is inside a blocked send: no counters, but no hang either
            assert proxy.stats() is None
        got = []
        while sub.poll(int(1000 * UNIT)):
            got.append(int(sub.recv_multipart()[1]))
        if no_drop:
            assert sent < total  # held back: the proxy stopped reading from it
            assert got == list(range(sent))  # and nothing was lost
            s = proxy.stats()  # free again: it answers
            assert s is not None and s["messages_out"] == sent * per_message(s, 3)
        else:
            assert sent == total  # never held back
            assert len(got) < total and got == sorted(got)  # the stalled one lost some
        producer.close(0)
        sub.close(0)
    finally:
        proxy.close()
