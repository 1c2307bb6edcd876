"""Tests of :class:`zmqws.Publisher` and ``zmqws publish``, against real ZeroMQ sockets.

Subscribers are plain pyzmq SUB sockets on 127.0.0.1; the command runs as a real subprocess.
Nothing waits by sleeping a fixed time: every wait polls a condition until a deadline that
``ZMQWS_TEST_TIMEOUT_SCALE`` stretches on slow machines. (The one deliberate pause, in the
backpressure tests, checks that something does *not* happen.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from zmqws import NoSubscriberError, Publisher, ZmqwsError
from zmqws.envelope import decode

SCALE = float(os.environ.get("ZMQWS_TEST_TIMEOUT_SCALE", "1"))
UNIT = 1.0 * SCALE  # seconds; every timeout is a multiple of it (STYLE rule 16)

LOGHUB = Path("/work/shared/data/loghub")


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.01) -> object:
    """Poll ``cond`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoint_of(pub: Publisher) -> str:
    """The endpoint a Publisher bound to ``tcp://127.0.0.1:*`` actually got."""
    return pub._sock.getsockopt_string(zmq.LAST_ENDPOINT)  # test-only peek


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def sub_socket(ctx: zmq.Context, endpoint: str, *prefixes: bytes, rcvhwm: int = 1000) -> zmq.Socket:  # type: ignore[type-arg]
    sock: zmq.Socket = ctx.socket(zmq.SUB)  # type: ignore[type-arg]
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    for p in prefixes or (b"",):
        sock.setsockopt(zmq.SUBSCRIBE, p)
    sock.connect(endpoint)
    return sock


def recv(sock: zmq.Socket, timeout: float) -> list[bytes]:  # type: ignore[type-arg]
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no message within {timeout:.1f} s")
    return sock.recv_multipart()


# -- the Python API ----------------------------------------------------------------------------------


class TestLifecycle:
    def test_a_context_manager_closes_the_publisher(self, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        with Publisher("tcp://127.0.0.1:*", bind=True, linger=0) as pub:
            sub = sub_socket(ctx, endpoint_of(pub))
            assert pub.send("t", "hello") == 1
            msg = decode(recv(sub, 10 * UNIT))
            assert (msg.topic, msg.data, msg.source, msg.source_seq) == (b"t", b"hello", pub.source, 1)
        with pytest.raises(RuntimeError, match="closed"):
            pub.send("t", "after close")
        pub.close()  # closing twice is harmless

    def test_the_first_message_is_not_lost_to_a_slow_joiner(self, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        # A plain PUB would send this into the void: the subscriber has not joined yet.
        with Publisher("tcp://127.0.0.1:*", bind=True, subscriber_timeout=10 * UNIT, linger=0) as pub:
            ep = endpoint_of(pub)
            done = threading.Event()

            def send_first() -> None:
                pub.send("t", "first")
                done.set()

            threading.Thread(target=send_first).start()
            sub = sub_socket(ctx, ep)
            assert recv(sub, 10 * UNIT)[:2] == [b"t", b"first"]
            assert done.wait(10 * UNIT)

    def test_sequence_numbers_count_per_source_and_may_be_given(self, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        with Publisher("tcp://127.0.0.1:*", bind=True, source="me", linger=0) as pub:
            sub = sub_socket(ctx, endpoint_of(pub))
            assert [pub.send("t", "a"), pub.send("t", "b"), pub.send("t", "c", source="other")] == [1, 2, 1]
            assert pub.send("t", "d", seq=41) == 41
            assert pub.next_seq() == 42 and pub.next_seq("other") == 2
            got = [decode(recv(sub, 10 * UNIT)) for _ in range(4)]
            assert [(m.source, m.source_seq, m.data) for m in got] == [
                ("me", 1, b"a"), ("me", 2, b"b"), ("other", 1, b"c"), ("me", 41, b"d"),
            ]

    def test_a_malformed_endpoint_is_a_config_error(self) -> None:
        with pytest.raises(ZmqwsError, match="malformed endpoint"):
            Publisher("tcp://127.0.0.1")


class TestNoSubscriber:
    def test_send_raises_no_subscriber_error_after_the_timeout(self) -> None:
        with Publisher("tcp://127.0.0.1:*", bind=True, subscriber_timeout=0.3 * UNIT, linger=0) as pub:
            start = time.monotonic()
            with pytest.raises(NoSubscriberError, match="no subscriber wanted topic b'news'") as info:
                pub.send("news", "nobody listens")
            assert time.monotonic() - start >= 0.3 * UNIT
            assert isinstance(info.value, TimeoutError)
            # Nothing was sent, so no number was used up.
            assert pub.next_seq() == 1 and pub.sent == 0

    def test_a_subscriber_to_another_topic_does_not_count_when_lossless(
        self, ctx: zmq.Context,  # type: ignore[type-arg]
    ) -> None:
        with Publisher(
            "tcp://127.0.0.1:*", bind=True, subscriber_timeout=0.3 * UNIT, lossless=True, linger=0
        ) as pub:
            sub = sub_socket(ctx, endpoint_of(pub), b"sports")
            assert pub.wait_for_subscriber("sports.tennis", 10 * UNIT)
            assert pub.subscriptions() == {b"sports"}
            with pytest.raises(NoSubscriberError):
                pub.send("news", "x")
            pub.send("sports.tennis", "6-4")
            assert recv(sub, 10 * UNIT)[:2] == [b"sports.tennis", b"6-4"]
            assert pub.sent == 1

    def test_with_a_zero_timeout_send_does_not_wait_at_all(self) -> None:
        with Publisher("tcp://127.0.0.1:*", bind=True, subscriber_timeout=0, linger=0) as pub:
            start = time.monotonic()
            for _ in range(100):
                with pytest.raises(NoSubscriberError):
                    pub.send("t", "x")
            assert time.monotonic() - start < 2 * UNIT


    def test_close_releases_a_send_blocked_waiting_for_a_subscriber(self) -> None:
        pub = Publisher("tcp://127.0.0.1:*", bind=True, subscriber_timeout=None, linger=0)
        errors: list[BaseException] = []

        def blocked_send() -> None:
            try:
                pub.send("t", "x")
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                errors.append(exc)

        t = threading.Thread(target=blocked_send)
        t.start()
        def send_holds_lock() -> bool:
            if pub._lock.acquire(blocking=False):
                pub._lock.release()
                return False
            return True

        wait_for(send_holds_lock, 10 * UNIT, "the send to hold the lock")
        pub.close()
        t.join(10 * UNIT)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_ten_threads_share_one_publisher(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    n_threads, per_thread = 10, 1000
    with Publisher("tcp://127.0.0.1:*", bind=True, subscriber_timeout=10 * UNIT, linger=0) as pub:
        sub = sub_socket(ctx, endpoint_of(pub), rcvhwm=0)
        assert pub.wait_for_subscriber("", 10 * UNIT)
        threads = [
            threading.Thread(target=lambda i=i: [pub.send(f"t{i}", f"{i}:{j}") for j in range(per_thread)])
            for i in range(n_threads)
        ]
        for t in threads:
            t.start()
        got = [decode(recv(sub, 30 * UNIT)) for _ in range(n_threads * per_thread)]
        for t in threads:
            t.join(30 * UNIT)
    assert [m.source_seq for m in got] == list(range(1, n_threads * per_thread + 1))
    for i in range(n_threads):
        assert [m.data for m in got if m.topic == f"t{i}".encode()] == [
            f"{i}:{j}".encode() for j in range(per_thread)
        ]


class TestBackpressure:
    """XPUB_NODROP: a full subscriber queue makes send wait; nothing is dropped."""

    N = 300
    PAYLOAD = 64 * 1024  # 300 × 64 KiB ≈ 19 MiB: more than socket buffers can hide

    def _start_sending(self, pub: Publisher) -> tuple[threading.Thread, list[BaseException]]:
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(self.N):
                    pub.send("bulk", i.to_bytes(4, "big") * (self.PAYLOAD // 4))
            except BaseException as exc:  # pragma: no cover - reported by the test
                errors.append(exc)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        return t, errors

    def test_a_stalled_subscriber_blocks_the_sender_cheaply_and_then_gets_everything(
        self, ctx: zmq.Context,  # type: ignore[type-arg]
    ) -> None:
        with Publisher("tcp://127.0.0.1:*", bind=True, sndhwm=4, linger=0) as pub:
            sub = sub_socket(ctx, endpoint_of(pub), rcvhwm=4)
            sub.setsockopt(zmq.RCVBUF, 64 * 1024)
            assert pub.wait_for_subscriber("bulk", 10 * UNIT)
            t, errors = self._start_sending(pub)
            # The subscriber reads nothing: the sender must stall well short of the end...
            wait_for(lambda: pub.sent > 0, 10 * UNIT, "the first sends")
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(0.5 * UNIT)  # a negative check: nothing may progress meanwhile
            stalled_at = pub.sent
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            assert t.is_alive() and stalled_at < self.N
            # ...and wait without spinning a core (libzmq's XPUB always reports POLLOUT).
            assert cpu < 0.5 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s while blocked"
            # Now the slow reader reads: every message comes, in order, intact.
            for i in range(self.N):
                frames = recv(sub, 30 * UNIT)
                assert frames[1] == i.to_bytes(4, "big") * (self.PAYLOAD // 4)
                if i % 50 == 0:
                    time.sleep(0.01)  # a slow reader, not a synchronisation
            t.join(30 * UNIT)
            assert not errors and pub.sent == self.N

    def test_a_subscriber_that_leaves_frees_a_blocked_sender(self, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        with Publisher("tcp://127.0.0.1:*", bind=True, sndhwm=4, linger=0) as pub:
            sub = sub_socket(ctx, endpoint_of(pub), rcvhwm=4)
            assert pub.wait_for_subscriber("bulk", 10 * UNIT)
            t, errors = self._start_sending(pub)
            wait_for(lambda: pub.sent > 0, 10 * UNIT, "the first sends")
            sub.close(linger=0)
            # Nobody wants the rest now: the sends go nowhere instead of blocking for ever.
            t.join(30 * UNIT)
            assert not t.is_alive() and not errors and pub.sent == self.N


# -- zmqws publish -------------------------------------------------------------------------------------


def zmqws(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "zmqws", *args], capture_output=True, timeout=60 * UNIT, **kw
    )


class Collector:
    """A SUB socket bound in the test, read by a thread that polls it from the start.

    A bound SUB sends its subscriptions to a newly connected publisher only once its own socket
    is used (libzmq issue #2267), so it must be polled, not left alone until the test reads it.
    """

    def __init__(self, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.messages: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                self.messages.append(self.sock.recv_multipart())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)


@pytest.fixture
def collector(ctx: zmq.Context) -> Iterator[Collector]:  # type: ignore[type-arg]
    c = Collector(ctx)
    yield c
    c.close()


def test_publish_data_once(collector: Collector) -> None:
    r = zmqws("publish", "--connect", collector.endpoint, "--wait", str(10 * UNIT), "alerts", "disk full")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: collector.messages, 10 * UNIT, "the message")
    msg = decode(collector.messages[0])
    assert (msg.topic, msg.data, msg.source_seq) == (b"alerts", b"disk full", 1)


def test_publish_each_stdin_line_of_a_real_log(collector: Collector) -> None:
    log = LOGHUB / "HealthApp_2k.log"  # CRLF, no line terminator after the last line
    with open(log, "rb") as f:
        r = zmqws("publish", "--connect", collector.endpoint, "health", stdin=f)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(collector.messages) >= 2000, 30 * UNIT, "2,000 messages")
    expected = [ln.removesuffix(b"\r") for ln in log.read_bytes().split(b"\n")]
    assert [decode(m).data for m in collector.messages] == expected
    assert [decode(m).source_seq for m in collector.messages] == list(range(1, 2001))


def test_publish_cuts_lf_and_crlf_and_keeps_empty_and_unterminated_lines(collector: Collector) -> None:
    r = zmqws("publish", "--connect", collector.endpoint, "t", stdin=None,
              input=b"crlf\r\nlf\n\nnot utf-8 \xff\r\nlast")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(collector.messages) >= 5, 10 * UNIT, "5 messages")
    assert [m[1] for m in collector.messages] == [b"crlf", b"lf", b"", b"not utf-8 \xff", b"last"]


def test_publish_can_bind_and_wait_for_a_subscriber_to_connect(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    ep = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqws", "publish", "--bind", ep, "--wait", str(30 * UNIT), "t", "hi"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        sub = sub_socket(ctx, ep)  # ZeroMQ retries the connection until publish has bound
        assert recv(sub, 30 * UNIT)[:2] == [b"t", b"hi"]
        assert proc.wait(30 * UNIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_publish_with_no_subscriber_within_wait_fails_with_one_line() -> None:
    start = time.monotonic()
    r = zmqws("publish", "--bind", "tcp://127.0.0.1:*", "--wait", str(0.5 * UNIT), "lonely", "x")
    assert time.monotonic() - start >= 0.5 * UNIT
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [
        f"zmqws publish: error: no subscriber wanted lonely within {0.5 * UNIT:g} s"
    ]


def test_publish_with_only_a_subscriber_to_another_topic_fails_too(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    ep = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqws", "publish", "--bind", ep, "--wait", str(1 * UNIT), "news", "x"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    sub = sub_socket(ctx, ep, b"sports")
    try:
        _, err = proc.communicate(timeout=30 * UNIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert err.decode().splitlines() == [
        f"zmqws publish: error: no subscriber wanted news within {1 * UNIT:g} s"
    ]
    assert not sub.poll(0)


def test_publish_with_wait_0_does_not_wait_and_says_what_it_dropped() -> None:
    r = zmqws("publish", "--bind", "tcp://127.0.0.1:*", "--wait", "0", "t", stdin=None, input=b"a\nb\n")
    assert r.returncode == 0
    err = r.stderr.decode()
    assert "WARNING zmqws.publish: 2 of 2 messages dropped: no subscriber wanted t (--wait 0)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--connect", "tcp://127.0.0.1"], "--connect: malformed endpoint 'tcp://127.0.0.1'"),
        (["--connect", "localhost:5555"], "--connect: malformed endpoint 'localhost:5555'"),
        (["--bind", "tcp://127.0.0.1:99999"], "--bind: malformed endpoint"),
        (["--connect", "tcp://127.0.0.1:1", "--wait", "-1"], "--wait: -1.0 is not allowed"),
    ],
)
def test_publish_config_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    r = zmqws("publish", *args, "t", "d")
    assert r.returncode == 2
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zmqws publish: error: ") and message in lines[0]


def test_publish_on_a_port_in_use_is_a_startup_failure(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    holder = ctx.socket(zmq.PULL)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    r = zmqws("publish", "--bind", f"tcp://127.0.0.1:{port}", "t", "d")
    assert r.returncode == 3
    assert r.stderr.decode().splitlines() == [
        f"zmqws publish: error: cannot bind tcp://127.0.0.1:{port}: Address already in use"
    ]
    holder.close(linger=0)


def test_publish_metadata_frame_is_json(collector: Collector) -> None:
    r = zmqws("publish", "--connect", collector.endpoint, "t", "d")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: collector.messages, 10 * UNIT, "the message")
    meta = json.loads(collector.messages[0][2])
    assert meta["zmqws"] == 1 and meta["seq"] == 1 and isinstance(meta["ts"], float)
    assert meta["src"].rpartition(":")[2].isdigit()  # HOST:PID


def test_publish_stops_at_once_on_ctrl_c_when_its_subscriber_went_away(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    """Connecting side, subscriber gone: libzmq keeps its queue for a reconnect, so the send
    blocks for ever. Ctrl-C must end it now (not after --linger 30), saying what was not sent."""
    import signal

    ep = f"tcp://127.0.0.1:{free_port()}"
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.bind(ep)
    sub.subscribe(b"t")
    proc = subprocess.Popen([sys.executable, "-m", "zmqws", "publish", "--connect", ep, "t"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        assert sub.poll(30_000 * UNIT) and sub.recv_multipart()[1] == b"first"
        sub.close(0)  # the subscriber goes away; its queue stays with the publisher
        def feed() -> None:  # more than every queue and buffer on the way holds
            try:
                for _ in range(200_000):
                    proc.stdin.write(b"z" * 1000 + b"\n")
            except (BrokenPipeError, ValueError):  # publish has exited
                pass

        threading.Thread(target=feed, daemon=True).start()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(2)  # blocked in a send
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10 * UNIT) == 130
        assert time.monotonic() - started < 5 * UNIT  # not the 30 s linger
        err = proc.stderr.read().decode()
        assert "interrupted:" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
