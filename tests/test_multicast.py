"""Multicast (pgm:// and epgm://): the one-line error without PGM, the socket defaults, and
``zmqws tail`` → ``zmqws consume`` over a real multicast group between two network namespaces.

The end-to-end test needs what the pyzmq wheels lack, a libzmq with PGM: it builds one with
``scripts/pgm-env.sh`` (pyzmq compiled against Debian's libzmq, in a cached venv), and root to
make the namespaces. Where either is impossible it skips and says why.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import LOGHUB, REPO, UNIT, free_port, lines_of, loghub, wait_until, zmqws_cmd

from zmqws.exceptions import ConfigError
from zmqws.zmq_io import (
    MULTICAST_RATE,
    MULTICAST_RATE_ENV,
    apply_multicast,
    is_multicast,
    multicast_rate,
)

EPGM = "epgm://127.0.0.1;239.192.1.1:5555"

# -- without PGM ---------------------------------------------------------------------------------


@pytest.mark.skipif(zmq.has("pgm"), reason="this pyzmq's libzmq has PGM: no error to check")
@pytest.mark.parametrize("args", [
    ["consume", "--connect", EPGM],
    ["gateway", "--connect", EPGM],
    ["tail", "--connect", EPGM, "/dev/null"],
    ["publish", "--connect", EPGM, "topic", "data"],
    ["proxy", "--frontend", EPGM, "--backend", "tcp://127.0.0.1:5556"],
    ["consume", "--connect", "pgm://eth0;239.192.1.1:5555"],
])
def test_without_pgm_every_command_says_in_one_line_how_to_get_it(args: list[str]) -> None:
    r = subprocess.run(zmqws_cmd(*args), capture_output=True, text=True, timeout=30 * UNIT)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "without PGM" in lines[0] and "libpgm-dev" in lines[0]
    assert "PYZMQ_NO_BUNDLE=1 pip install --no-binary pyzmq pyzmq" in lines[0]
    assert "Traceback" not in r.stderr


# -- the defaults, in one place -------------------------------------------------------------------


def test_multicast_sockets_get_the_defaults_and_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert is_multicast("pgm://eth0;239.1.1.1:1") and is_multicast(EPGM)
    assert not is_multicast("tcp://127.0.0.1:1")
    monkeypatch.delenv(MULTICAST_RATE_ENV, raising=False)
    ctx: zmq.Context[Any] = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    try:
        pub.setsockopt(zmq.LINGER, 5000)  # a bounded linger (the Publisher's) is kept
        with caplog.at_level(logging.WARNING, logger="zmqws.zmq_io"):
            apply_multicast(sub, "epgm://10.9.9.9;239.192.9.9:5999")
            apply_multicast(pub, "epgm://10.9.9.9;239.192.9.9:5999")
        assert sub.getsockopt(zmq.RATE) == pub.getsockopt(zmq.RATE) == MULTICAST_RATE == 10_000
        assert sub.getsockopt(zmq.RECOVERY_IVL) == 10_000
        assert sub.getsockopt(zmq.RCVBUF) == pub.getsockopt(zmq.SNDBUF) == 4 << 20
        assert sub.getsockopt(zmq.LINGER) == 0  # libzmq's "for ever" becomes 0: never hangs
        assert pub.getsockopt(zmq.LINGER) == 5000
        assert sub.getsockopt(zmq.RCVHWM) == 0 and pub.getsockopt(zmq.RCVHWM) == 1000
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "trusted network" in warnings[0]  # once per endpoint
        monkeypatch.setenv(MULTICAST_RATE_ENV, "50000")
        assert multicast_rate() == 50_000
        apply_multicast(sub, "epgm://10.9.9.9;239.192.9.9:5999")
        assert sub.getsockopt(zmq.RATE) == 50_000
        for bad in ("0", "fast", "-5", "20000000"):
            monkeypatch.setenv(MULTICAST_RATE_ENV, bad)
            with pytest.raises(ConfigError, match="--multicast-rate"):
                multicast_rate()
    finally:
        sub.close(0)
        pub.close(0)
        ctx.term()


# -- over a real multicast group ------------------------------------------------------------------


def _pgm_python() -> str:
    """The PGM venv's python (built or found by scripts/pgm-env.sh), or skip saying why."""
    if not shutil.which("bash"):
        pytest.skip("multicast end to end: no bash to run scripts/pgm-env.sh")
    try:
        r = subprocess.run(["bash", str(REPO / "scripts" / "pgm-env.sh")], capture_output=True,
                           text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("multicast end to end: scripts/pgm-env.sh did not finish within 600 s")
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"multicast end to end: cannot build pyzmq with PGM ({why})")
    return str(Path(r.stdout.strip().splitlines()[-1]) / "bin" / "python")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """Two network namespaces joined by a veth pair, with a multicast route; removed after."""
    if os.geteuid() != 0:
        pytest.skip(f"multicast end to end: needs root to make network namespaces "
                    f"(running as uid {os.geteuid()})")
    if not shutil.which("ip"):
        pytest.skip("multicast end to end: no `ip` command (iproute2) to make network namespaces")
    tag = f"{os.getpid() % 100000}"
    net = os.getpid() % 250 + 1
    ns = {"a": f"zmqws-{tag}-a", "b": f"zmqws-{tag}-b", "veth_a": f"zwa{tag}",
          "veth_b": f"zwb{tag}", "ip_a": f"10.77.{net}.1", "ip_b": f"10.77.{net}.2",
          "group": f"239.192.{net}.1"}
    steps = [
        ("netns", "add", ns["a"]),
        ("netns", "add", ns["b"]),
        ("link", "add", ns["veth_a"], "netns", ns["a"], "type", "veth",
         "peer", "name", ns["veth_b"], "netns", ns["b"]),
    ]
    for side in "ab":
        n, dev = ns[side], ns[f"veth_{side}"]
        steps += [
            ("-n", n, "addr", "add", f"{ns[f'ip_{side}']}/24", "dev", dev),
            ("-n", n, "link", "set", "lo", "up"),
            ("-n", n, "link", "set", dev, "up"),
            ("-n", n, "route", "add", "224.0.0.0/4", "dev", dev),
        ]
    try:
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"multicast end to end: `ip {' '.join(step)}` failed: "
                            f"{r.stderr.strip()}")
        yield ns
    finally:
        for side in "ab":
            _ip("netns", "del", ns[side])  # takes its end of the veth pair with it


class NsProc:
    """A zmqws command run by the PGM venv's python inside a network namespace."""

    def __init__(self, ns: str, python: str, *args: str) -> None:
        self.err = tempfile.TemporaryFile("w+")
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this checkout's zmqws
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, python, "-m", "zmqws", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.err, env=env)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30 * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"did not stop on SIGTERM: {self.stderr()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole lines written so far (a line being written is left for the next look)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


@pytest.mark.timeout(900)  # the first run builds pyzmq (apt-get and a compile: about 25 s here)
@pytest.mark.parametrize("scheme", ["epgm", "pgm"])
def test_tail_to_consume_over_multicast_between_two_namespaces(
        scheme: str, namespaces, tmp_path: Path) -> None:
    """10,000 real log lines, published by ``zmqws tail`` in one namespace to a multicast group,
    all received by ``zmqws consume`` in the other: by content, in order, by sequence number.
    epgm: PGM in UDP datagrams; pgm: PGM in raw IP (root, or CAP_NET_RAW)."""
    ns = namespaces
    files = ["Apache_2k.log", "Linux_2k.log", "OpenSSH_2k.log", "Zookeeper_2k.log"]
    lines = [line for name in files for line in lines_of(loghub(name))]
    # A fifth file: HDFS from ../shared when there, else Apache's lines again (the bundled four).
    hdfs = LOGHUB / "HDFS_2k.log"
    lines += lines_of(hdfs) if hdfs.exists() else lines[:2000]
    assert len(lines) == 10_000
    python = _pgm_python()
    port = free_port()
    send_ep = f"{scheme}://{ns['ip_a']};{ns['group']}:{port}"
    recv_ep = f"{scheme}://{ns['ip_b']};{ns['group']}:{port}"
    main, probe, out = tmp_path / "main.log", tmp_path / "probe.log", tmp_path / "out.jsonl"
    main.write_bytes(b"")
    probe.write_bytes(b"")
    consume = NsProc(ns["b"], python, "consume", "--connect", recv_ep, "--output", str(out))
    tail = None
    try:
        wait_until(lambda: "consuming" in consume.stderr() or consume.proc.poll() is not None,
                   30, "consume to start")
        assert consume.proc.poll() is None, consume.stderr()
        tail = NsProc(ns["a"], python, "tail", "--connect", send_ep, "--from-start",
                      "--topic", "{stem}", "--poll-interval", "0.05", "--linger", "5",
                      str(main), str(probe))
        # PGM cannot tell tail that someone listens: probe lines until one gets through, so the
        # receiver has surely joined before the 10,000 lines go.
        probes = 0

        def probed() -> bool:
            nonlocal probes
            assert tail is not None and tail.proc.poll() is None, tail and tail.stderr()
            if any(m["topic"] == "probe" for m in _read_jsonl(out)):
                return True
            probes += 1
            with probe.open("ab") as f:
                f.write(b"probe %d\n" % probes)
            return False
        wait_until(probed, 30, "a probe line across the multicast group", interval=0.2)
        with main.open("ab") as f:
            f.write(b"\n".join(lines) + b"\n")
        wait_until(lambda: sum(m["topic"] == "main" for m in _read_jsonl(out)) >= 10_000
                   or consume.proc.poll() is not None, 60, "10,000 lines at the consumer")
        assert tail.stop() == 0, tail.stderr()
        assert consume.stop() == 0, consume.stderr()
        got = [m for m in _read_jsonl(out) if m["topic"] == "main"]
        data = [base64.b64decode(m["data"]) if m.get("encoding") == "base64" else
                m["data"].encode() for m in got]
        assert data == lines  # every line, byte for byte, in order, once
        assert [m["seq"] for m in got] == list(range(1, 10_001))
        assert len({m["source"] for m in got}) == 1
        assert "trusted network" in tail.stderr() and "trusted network" in consume.stderr()
    finally:
        if tail is not None:
            tail.kill()
        consume.kill()
