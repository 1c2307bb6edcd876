"""zmq_io: endpoint checks, clear bind/connect errors, the drained SUB input."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from conftest import UNIT

from zmqws.exceptions import ConfigError, StartupError
from zmqws.zmq_io import SubscriberInput, attach, check_endpoint


@pytest.mark.parametrize("ep", ["tcp://127.0.0.1:5555", "tcp://*:5555", "tcp://localhost:1",
                                "tcp://[::1]:5555", "tcp://eth0:5555", "ipc:///tmp/x.sock",
                                "inproc://name", "tcp://127.0.0.1:*"])
def test_valid_endpoints(ep: str) -> None:
    assert check_endpoint(ep) == ep


@pytest.mark.parametrize("ep", ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:0",
                                "tcp://127.0.0.1:70000", "http://x:1", "tcp://", "tcp://:5555"])
def test_malformed_endpoints_say_what_is_expected(ep: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_endpoint(ep)
    assert repr(ep) in str(info.value)


@pytest.mark.skipif(zmq.has("pgm"), reason="this libzmq has PGM")
def test_multicast_without_pgm_says_how_to_get_it() -> None:
    with pytest.raises(ConfigError) as info:
        check_endpoint("epgm://127.0.0.1;239.192.1.1:5555")
    assert "PYZMQ_NO_BUNDLE=1" in str(info.value)


def test_malformed_multicast_endpoint() -> None:
    with pytest.raises(ConfigError):
        check_endpoint("epgm://239.192.1.1")


def test_address_in_use_is_a_startup_error() -> None:
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(StartupError) as info:
            attach(b, [f"tcp://127.0.0.1:{port}"], bind=True)
        assert "Address already in use" in str(info.value)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_input_drains_in_batches_and_follows_subscriptions() -> None:
    """A burst is handed over in capped batches, in order, only for subscribed prefixes."""

    async def run() -> list[list[list[bytes]]]:
        ctx = zmq.Context()
        batches: list[list[list[bytes]]] = []
        done = asyncio.Event()
        total = 2500

        def on_batch(batch: list[list[bytes]], more: bool) -> None:
            calls.append((len(batch), more))
            batches.append(batch)
            if sum(len(b) for b in batches) >= total and not more:
                done.set()

        calls: list[tuple[int, bool]] = []

        inp = SubscriberInput(ctx, bind=["tcp://127.0.0.1:*"], on_batch=on_batch, batch=1000)
        endpoint = inp.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        inp.start(asyncio.get_running_loop())
        inp.subscribe(b"yes")
        pub = ctx.socket(zmq.XPUB)
        # The burst below is sent while the loop is blocked: with the default high-water mark
        # (1,000) a busy machine's I/O threads fall behind and the XPUB drops the rest.
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.connect(endpoint)
        # The bound SUB sends its subscriptions when the loop serves it: wait off the loop.
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, pub.poll, 10_000 * UNIT)
        assert pub.recv() == b"\x01yes"
        for i in range(total):
            pub.send_multipart([b"no", b"x"])
            pub.send_multipart([b"yes", b"%d" % i])
        await asyncio.wait_for(done.wait(), 10 * UNIT)
        inp.close()
        inp.subscribe(b"after-close")  # harmless
        pub.close(0)
        ctx.term()
        # "more" says a batch was cut at its cap; an empty batch only ever follows such a one.
        for i, (n, more) in enumerate(calls):
            assert more == (n == 1000)
            assert n or calls[i - 1][1]
        return batches

    batches = asyncio.run(run())
    flat = [m for b in batches for m in b]
    assert [m[1] for m in flat] == [b"%d" % i for i in range(2500)]
    assert max(len(b) for b in batches) <= 1000


def test_ipv6_endpoints_bind_and_connect() -> None:
    """libzmq is IPv4-only unless told: a bracketed address must work, not fail with ENODEV."""
    import socket

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        attach(pull, ["tcp://[::1]:*"], bind=True)
        endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        attach(push, [endpoint], bind=False)
        push.send(b"over IPv6")
        assert pull.poll(10_000 * UNIT) and pull.recv() == b"over IPv6"
    finally:
        pull.close(0)
        push.close(0)
        ctx.term()
