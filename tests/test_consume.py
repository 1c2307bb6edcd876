"""Tests of ``zmqws consume``: the pure gap counter, and the real command on real sockets.

End-to-end tests run ``python -m zmqws consume`` as a subprocess bound to ``tcp://127.0.0.1:*``
and read the port it bound from its log; producers are real :class:`zmqws.Publisher` objects,
raw ZeroMQ sockets, or ``zmqws tail`` / ``zmqws publish`` subprocesses. Nothing waits by sleeping
a fixed time: every wait polls a condition until a deadline that ``ZMQWS_TEST_TIMEOUT_SCALE``
stretches on slow machines.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from conftest import loghub

from zmqws import Publisher
from zmqws.consume import GapCounter, Observation, SourceStats, Verdict, to_json_line
from zmqws.envelope import Message, encode_meta

# Every timeout is a multiple of this unit (STYLE rule 16).
SCALE = float(os.environ.get("ZMQWS_TEST_TIMEOUT_SCALE", "1"))
UNIT = 1.0 * SCALE  # seconds



def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``cond`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def file_lines(path: Path) -> list[bytes]:
    """The lines of a Loghub sample as a line reader sees them: CRLF or LF cut, last line kept."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


# -- GapCounter ------------------------------------------------------------------------------------


class TestGapCounter:
    def test_first_message_of_a_source_sets_the_baseline_whatever_its_number(self) -> None:
        g = GapCounter()
        assert g.observe("a", 42) == Observation(Verdict.FIRST, "a", 42)
        assert g.stats("a") == SourceStats("a", count=1, first=42, last=42)
        assert g.missing == 0

    def test_numbers_in_order_are_not_reported(self) -> None:
        g = GapCounter()
        verdicts = [g.observe("a", n).verdict for n in range(1, 1001)]
        assert verdicts[0] is Verdict.FIRST
        assert set(verdicts[1:]) == {Verdict.IN_ORDER}
        assert g.stats("a") == SourceStats("a", count=1000, first=1, last=1000)
        assert (g.missing, g.duplicates, g.restarts) == (0, 0, 0)

    def test_a_skip_is_a_gap_of_the_numbers_in_between(self) -> None:
        g = GapCounter()
        g.observe("a", 1)
        g.observe("a", 2)
        obs = g.observe("a", 7)
        assert obs.verdict is Verdict.GAP
        assert obs.missing == 4
        assert obs.missing_range == (3, 6)
        obs = g.observe("a", 9)
        assert (obs.missing, obs.missing_range) == (1, (8, 8))
        assert g.observe("a", 10).verdict is Verdict.IN_ORDER
        assert g.stats("a") == SourceStats("a", count=5, first=1, last=10, missing=5)
        assert g.missing == 5

    def test_a_number_seen_again_is_a_duplicate_and_does_not_move_the_last(self) -> None:
        g = GapCounter()
        for n in (1, 2, 3, 4, 5):
            g.observe("a", n)
        obs = g.observe("a", 3)
        assert obs == Observation(Verdict.DUPLICATE, "a", 3, last=5)
        assert obs.missing == 0 and obs.missing_range is None
        assert g.observe("a", 5).verdict is Verdict.DUPLICATE
        # The stale numbers did not move the baseline: 6 is in order, no fake gap.
        assert g.observe("a", 6).verdict is Verdict.IN_ORDER
        assert g.stats("a") == SourceStats("a", count=8, first=1, last=6, duplicates=2)

    def test_one_after_a_larger_number_is_a_restart_and_counting_goes_on_from_it(self) -> None:
        g = GapCounter()
        for n in range(1, 11):
            g.observe("a", n)
        assert g.observe("a", 1) == Observation(Verdict.RESTART, "a", 1, last=10)
        assert g.observe("a", 2).verdict is Verdict.IN_ORDER
        assert g.observe("a", 4).missing == 1
        assert g.stats("a") == SourceStats("a", count=13, first=1, last=4, missing=1, restarts=1)
        assert (g.missing, g.duplicates, g.restarts) == (1, 0, 1)

    def test_sources_are_counted_apart(self) -> None:
        g = GapCounter()
        # Three interleaved sources; "b" loses 5 and 6, "c" repeats 2, "a" is perfect.
        for n in range(1, 11):
            g.observe("a", n)
            if n not in (5, 6):
                g.observe("b", n)
            g.observe("c", n)
            if n == 2:
                g.observe("c", 2)
        assert len(g) == 3
        assert [s.source for s in g] == ["a", "b", "c"]
        assert g.stats("a") == SourceStats("a", count=10, first=1, last=10)
        assert g.stats("b") == SourceStats("b", count=8, first=1, last=10, missing=2)
        assert g.stats("c") == SourceStats("c", count=11, first=1, last=10, duplicates=1)
        assert (g.missing, g.duplicates, g.restarts) == (2, 1, 0)

    def test_many_sources(self) -> None:
        g = GapCounter()
        for n in range(1, 51):
            for s in range(1000):
                g.observe(f"host{s}:1", n if s % 2 else 2 * n)
        assert len(g) == 1000
        # Even sources skip every other number: 49 gaps of one each.
        assert g.stats("host0:1").missing == 49
        assert g.stats("host1:1").missing == 0
        assert g.missing == 500 * 49

    def test_unknown_source_is_a_key_error(self) -> None:
        with pytest.raises(KeyError):
            GapCounter().stats("nobody")


# -- the JSON line -----------------------------------------------------------------------------------


class TestJsonLine:
    def test_utf8_data_is_text_and_metadata_is_kept(self) -> None:
        line = to_json_line(Message(b"t\xc3\xa9", "é ✓".encode(), "h:1", 7, 1.5))
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == {"topic": "té", "data": "é ✓", "source": "h:1", "seq": 7}

    def test_other_bytes_are_base64_with_a_flag_and_a_bad_topic_is_replaced(self) -> None:
        obj = json.loads(to_json_line(Message(b"t\xff", b"\x00\xff\xfe")))
        assert obj == {
            "topic": "t\ufffd",
            "data": base64.b64encode(b"\x00\xff\xfe").decode(),
            "encoding": "base64",
            "source": None,
            "seq": None,
        }


# -- the real command --------------------------------------------------------------------------------


class Consume:
    """A ``zmqws consume`` subprocess, bound to a free port on 127.0.0.1, writing to a file."""

    def __init__(self, tmp: Path, *args: str, name: str = "out.jsonl") -> None:
        self.output = tmp / name
        self.stderr_path = tmp / (name + ".stderr")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqws", "consume", "--bind", "tcp://127.0.0.1:*",
             "--output", str(self.output), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err, cwd=tmp,
        )
        self.endpoint = str(wait_for(self._bound, 10 * UNIT, "consume to bind"))

    def _bound(self) -> str | None:
        m = re.search(r"bound (tcp://\S+)", self.stderr)
        if m is None and self.proc.poll() is not None:
            raise AssertionError(f"consume exited {self.proc.returncode}: {self.stderr}")
        return m.group(1) if m else None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, object]]:
        """The complete JSON lines written so far."""
        if not self.output.exists():
            return []
        data = self.output.read_bytes()
        return [json.loads(ln) for ln in data.split(b"\n")[:-1]]

    def count(self) -> int:
        return self.output.read_bytes().count(b"\n") if self.output.exists() else 0

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"consume still running after {timeout:.0f} s: {self.stderr}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def summary(self) -> dict[str, int]:
        m = re.search(
            r"summary: (\d+) messages? from (\d+) sources?, (\d+) written; (\d+) missing, "
            r"(\d+) duplicate \(not written\), (\d+) restarts?; (\d+) malformed; "
            r"(\d+) without source",
            self.stderr,
        )
        assert m, self.stderr
        keys = ("messages", "sources", "written", "missing", "duplicates", "restarts", "malformed",
                "unstamped")
        return dict(zip(keys, map(int, m.groups())))


@pytest.fixture
def consume(tmp_path: Path) -> Iterator[Callable[..., Consume]]:
    started: list[Consume] = []

    def start(*args: str, name: str = "out.jsonl") -> Consume:
        c = Consume(tmp_path, *args, name=name)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def no_gap_reported(stderr: str) -> bool:
    return "gap from source" not in stderr and "duplicate" not in stderr.split("summary")[0]


def test_ten_threads_sharing_one_publisher_deliver_everything_in_order(
    consume: Callable[..., Consume],
) -> None:
    c = consume("--count", "10000")
    n_threads, per_thread = 10, 1000
    with Publisher(c.endpoint, subscriber_timeout=10 * UNIT, linger=10 * UNIT) as pub:
        errors: list[BaseException] = []

        def produce(i: int) -> None:
            try:
                for j in range(per_thread):
                    pub.send(f"thread{i}", f"{i}:{j}:" + "x" * (j % 97))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * UNIT)
        assert not errors
        assert pub.sent == n_threads * per_thread
        assert c.wait(60 * UNIT) == 0
    lines = c.lines()
    assert len(lines) == n_threads * per_thread
    assert {ln["source"] for ln in lines} == {pub.source}
    seqs = [ln["seq"] for ln in lines]
    assert seqs == list(range(1, n_threads * per_thread + 1))
    for i in range(n_threads):
        mine = [ln["data"] for ln in lines if ln["topic"] == f"thread{i}"]
        assert mine == [f"{i}:{j}:" + "x" * (j % 97) for j in range(per_thread)]
    assert no_gap_reported(c.stderr)
    assert c.summary() == {
        "messages": 10000, "sources": 1, "written": 10000, "missing": 0, "duplicates": 0,
        "restarts": 0, "malformed": 0, "unstamped": 0,
    }
    assert f"{pub.source}: 10000 messages, seq 1..10000, 0 missing" in c.stderr


def test_three_tail_producers_started_at_once_deliver_every_line_in_file_order(
    consume: Callable[..., Consume], tmp_path: Path,
) -> None:
    files = [loghub(n) for n in ("Apache_2k.log", "Linux_2k.log", "OpenSSH_2k.log")]
    expected = {f.name: file_lines(f) for f in files}
    assert all(len(v) == 2000 for v in expected.values())
    c = consume("--count", "6000")
    errs = [open(tmp_path / f"tail{i}.stderr", "wb") for i in range(3)]
    tails = [
        subprocess.Popen(
            [sys.executable, "-m", "zmqws", "tail", "--once", "--from-start",
             "--connect", c.endpoint, "--host", "node", str(f)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
        )
        for f, err in zip(files, errs)
    ]
    try:
        for t, err in zip(tails, errs):
            rc = t.wait(60 * UNIT)
            assert rc == 0, Path(err.name).read_text()
        assert c.wait(30 * UNIT) == 0
    finally:
        for t in tails:
            if t.poll() is None:
                t.kill()
                t.wait()
        for err in errs:
            err.close()
    lines = c.lines()
    assert len(lines) == 6000
    by_file: dict[str, list[dict[str, object]]] = {}
    for ln in lines:
        src = str(ln["source"])
        by_file.setdefault(os.path.basename(src.partition(":")[2]), []).append(ln)
    assert set(by_file) == set(expected)
    for name, got in by_file.items():
        assert [ln["data"] for ln in got] == [b.decode() for b in expected[name]], name
        assert [ln["seq"] for ln in got] == list(range(1, 2001)), name
        assert {ln.get("encoding") for ln in got} == {None}
    assert no_gap_reported(c.stderr)
    s = c.summary()
    assert (s["messages"], s["sources"], s["missing"], s["duplicates"]) == (6000, 3, 0, 0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_flushes_every_line_received_prints_the_summary_and_exits_0(
    consume: Callable[..., Consume], sig: signal.Signals,
) -> None:
    c = consume()
    stop = threading.Event()
    sent: list[int] = []

    def produce(pub: Publisher) -> None:
        n = 0
        try:
            while not stop.is_set():
                n = pub.send("stream", f"line {n + 1}")
                sent.append(n)
        except RuntimeError:  # with the consumer gone a send blocks until the publisher closes
            assert stop.is_set()

    with Publisher(c.endpoint, subscriber_timeout=10 * UNIT, linger=0) as pub:
        t = threading.Thread(target=produce, args=(pub,))
        t.start()
        try:
            # Signal in the middle of a stream, once lines are flowing.
            wait_for(lambda: c.count() >= 2000, 30 * UNIT, "lines to flow")
            c.proc.send_signal(sig)
            assert c.wait(30 * UNIT) == 0
        finally:
            stop.set()
    t.join(30 * UNIT)  # the publisher is closed: a blocked send has returned
    assert not t.is_alive()
    lines = c.lines()
    n = len(lines)
    assert c.output.read_bytes().endswith(b"\n")  # no half-written line
    # Every message counted as received is in the file, in order, nothing skipped.
    assert c.summary()["messages"] == n
    assert [ln["seq"] for ln in lines] == list(range(1, n + 1))
    assert [ln["data"] for ln in lines] == [f"line {i}" for i in range(1, n + 1)]
    assert f"stopping: {sig.name} received" in c.stderr
    assert "Traceback" not in c.stderr


def test_gaps_duplicates_and_restarts_are_reported_on_stderr_and_in_the_summary(
    consume: Callable[..., Consume],
) -> None:
    # --count counts the lines written: the duplicate (5) is not one of them.
    c = consume("--count", "9")
    with Publisher(c.endpoint, source="gappy", subscriber_timeout=10 * UNIT, linger=10 * UNIT) as pub:
        for n in (1, 2, 3, 7, 8, 10, 5, 11, 1, 2):
            pub.send("t", f"n{n}", seq=n)
    assert c.wait(30 * UNIT) == 0
    assert [ln["seq"] for ln in c.lines()] == [1, 2, 3, 7, 8, 10, 11, 1, 2]
    err = c.stderr
    assert re.search(r"WARNING zmqws.consume: gap from source gappy: missing seq 4..6 \(3 messages\)", err)
    assert re.search(r"WARNING zmqws.consume: gap from source gappy: missing seq 9 \(1 message\)", err)
    assert ("duplicate from source gappy: seq 5 (1 message) already written, not written again "
            "(the source is at seq 10)") in err
    assert "source gappy restarted: seq 1 after 11" in err
    assert "stopping: 9 messages written (--count)" in err
    s = c.summary()
    assert (s["messages"], s["written"], s["missing"], s["duplicates"], s["restarts"]) == (10, 9, 4, 1, 1)
    assert "gappy: 10 messages, seq 1..2, 4 missing, 1 duplicate, 1 restart" in err


def test_duplicates_are_counted_and_not_written_and_a_run_of_them_is_one_warning(
    consume: Callable[..., Consume],
) -> None:
    # What a `zmqws tail --state` restarted after a crash sends: the lines after its last saved
    # place again, with the same numbers, then new ones.
    c = consume("--count", "8")
    with Publisher(c.endpoint, source="resumed", subscriber_timeout=10 * UNIT,
                   linger=10 * UNIT) as pub:
        for n in (*range(1, 7), *range(3, 9)):
            pub.send("t", f"line {n}", seq=n)
    assert c.wait(30 * UNIT) == 0
    assert [(ln["seq"], ln["data"]) for ln in c.lines()] == [(n, f"line {n}") for n in range(1, 9)]
    err = c.stderr
    assert len(re.findall(r"WARNING zmqws.consume: duplicate", err)) == 1, err
    assert ("duplicates from source resumed: seq 3..6 (4 messages) already written, not written "
            "again (the source is at seq 6)") in err
    s = c.summary()
    assert (s["messages"], s["written"], s["missing"], s["duplicates"], s["restarts"]) == (12, 8, 0, 4, 0)


def test_a_flood_past_every_high_water_mark_is_delivered_or_reported_missing_exactly(
    consume: Callable[..., Consume],
) -> None:
    """A plain publisher (XPUB without NODROP: it drops at its SNDHWM, as PUB does) floods a
    consumer that stops reading: written + reported missing = sent, to the message."""
    c = consume()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    payload = b"x" * 1000
    sent = 0

    def send() -> int:
        nonlocal sent
        sent += 1
        pub.send_multipart([b"flood", b"%08d " % sent + payload, encode_meta("flood", sent, time.time())])
        return sent

    def last_seq() -> int:
        with open(c.output, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().rsplit(b"\n", 2)
        return int(json.loads(tail[-2])["seq"]) if len(tail) >= 2 else 0

    try:
        pub.setsockopt(zmq.SNDHWM, 10)
        pub.connect(c.endpoint)
        # XPUB shows the subscription arriving: the first message is not lost to a slow joiner.
        assert pub.poll(int(10_000 * UNIT)) and pub.recv() == b"\x01"
        send()
        wait_for(lambda: c.count() == 1, 10 * UNIT, "the first message")
        # The consumer stops reading; 40 MB go past its queue (RCVHWM), the kernel's buffers and
        # the publisher's SNDHWM, where they are dropped.
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(40_000):
                send()
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        # Then one message at a time until one is seen: everything sent before it was either
        # written or dropped by then (ZeroMQ keeps the order), so the count is final.
        deadline = time.monotonic() + 60 * UNIT
        while True:
            n = send()
            try:
                wait_for(lambda: c.count() and last_seq() == n, 0.2 * UNIT, "the last message")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        c.proc.send_signal(signal.SIGTERM)
        assert c.wait(30 * UNIT) == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    s = c.summary()
    assert s["written"] + s["missing"] == sent
    assert s["missing"] > 0, "nothing was dropped: the flood did not go past the high-water marks"
    assert (s["duplicates"], s["restarts"], s["sources"]) == (0, 0, 1)
    seqs = [int(ln.split(b'"seq": ')[1].split(b"}")[0]) for ln in c.output.read_bytes().splitlines()]
    assert len(seqs) == s["written"] and seqs == sorted(set(seqs)) and seqs[-1] == sent
    reported = sum(int(m) for m in re.findall(r"gap from source flood: missing seq \S+ \((\d+) messages?\)", c.stderr))
    assert reported == s["missing"] == sent - len(seqs)


def test_non_utf8_data_is_base64_and_foreign_messages_have_null_metadata(
    consume: Callable[..., Consume],
) -> None:
    c = consume("--count", "5", "--topic", "t", "--topic", "bin")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    try:
        pub.connect(c.endpoint)
        # XPUB shows the subscriptions arriving: no message goes out before the consumer is there.
        subs = {pub.recv() for _ in range(2) if pub.poll(int(10_000 * UNIT))}
        assert subs == {b"\x01t", b"\x01bin"}
        blob = bytes(range(256))
        for frames in (
            [b"bin", blob, encode_meta("raw", 1, time.time())],
            [b"bin", b"caf\xe9", encode_meta("raw", 2, time.time())],
            [b"t\xff", b"no metadata"],
            [b"t one frame"],
            [b"ignored", b"another prefix"],
            [b"t", "é".encode(), encode_meta("raw", 3, time.time()), b"extra"],
        ):
            pub.send_multipart(frames)
        assert c.wait(30 * UNIT) == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    assert c.lines() == [
        {"topic": "bin", "data": base64.b64encode(bytes(range(256))).decode(), "encoding": "base64",
         "source": "raw", "seq": 1},
        {"topic": "bin", "data": base64.b64encode(b"caf\xe9").decode(), "encoding": "base64",
         "source": "raw", "seq": 2},
        {"topic": "t\ufffd", "data": "no metadata", "source": None, "seq": None},
        {"topic": "t", "data": "one frame", "source": None, "seq": None},
        {"topic": "t", "data": "é", "source": "raw", "seq": 3},
    ]
    s = c.summary()
    # "ignored" matched neither --topic prefix: ZeroMQ filtered it before consume saw it.
    assert (s["messages"], s["unstamped"], s["missing"], s["malformed"]) == (5, 2, 0, 0)


def test_malformed_messages_are_counted_not_fatal(consume: Callable[..., Consume]) -> None:
    c = consume("--count", "2")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    try:
        pub.connect(c.endpoint)
        assert pub.poll(int(10_000 * UNIT)) and pub.recv() == b"\x01"
        for frames in ([b"", b"empty topic frame"], [b" empty topic"], [b"ok", b"1"], [b""], [b"ok 2"]):
            pub.send_multipart(frames)
        assert c.wait(30 * UNIT) == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    assert [ln["data"] for ln in c.lines()] == ["1", "2"]
    assert c.summary()["malformed"] == 3


def test_idle_exit_ends_a_quiet_run_with_0(consume: Callable[..., Consume]) -> None:
    start = time.monotonic()
    c = consume("--idle-exit", str(0.5 * UNIT))
    assert c.wait(30 * UNIT) == 0
    assert time.monotonic() - start >= 0.5 * UNIT
    assert "no message for" in c.stderr
    assert c.summary()["messages"] == 0


def test_publish_data_and_stdin_lines_into_consume(consume: Callable[..., Consume], tmp_path: Path) -> None:
    log = loghub("Linux_2k.log")  # CRLF, no final line terminator
    c = consume("--count", "2002")

    def publish(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [sys.executable, "-m", "zmqws", "publish", "--connect", c.endpoint,
             "--wait", str(10 * UNIT), *args],
            capture_output=True, timeout=60 * UNIT, cwd=tmp_path, **kw,
        )

    r = publish("alerts", "disk full on /var")
    assert r.returncode == 0, r.stderr
    with open(log, "rb") as f:
        r = publish("linux.log", stdin=f)
    assert r.returncode == 0, r.stderr
    r = publish("bin", stdin=None, input=b"caf\xe9\r\n")
    assert r.returncode == 0, r.stderr
    assert c.wait(30 * UNIT) == 0
    lines = c.lines()
    assert lines[0]["topic"] == "alerts" and lines[0]["data"] == "disk full on /var"
    assert [ln["data"] for ln in lines[1:2001]] == [b.decode() for b in file_lines(log)]
    assert lines[2001] == {"topic": "bin", "data": base64.b64encode(b"caf\xe9").decode(),
                           "encoding": "base64", "source": lines[2001]["source"], "seq": 1}
    assert [ln["seq"] for ln in lines[1:2001]] == list(range(1, 2001))
    assert len({ln["source"] for ln in lines}) == 3
    assert c.summary()["missing"] == 0


def test_without_output_lines_go_to_stdout(tmp_path: Path) -> None:
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zmqws", "consume", "--bind", "tcp://127.0.0.1:*", "--count", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        )
        try:
            m = wait_for(lambda: re.search(r"bound (tcp://\S+)", err_path.read_text()), 10 * UNIT, "bind")
            assert isinstance(m, re.Match)
            with Publisher(m.group(1), source="s", subscriber_timeout=10 * UNIT, linger=10 * UNIT) as pub:
                pub.send("a", "one")
                pub.send("b", "two")
            out, _ = proc.communicate(timeout=30 * UNIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    assert [json.loads(ln) for ln in out.splitlines()] == [
        {"topic": "a", "data": "one", "source": "s", "seq": 1},
        {"topic": "b", "data": "two", "source": "s", "seq": 2},
    ]


def test_an_endpoint_in_use_is_a_startup_failure_in_one_line(tmp_path: Path) -> None:
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PULL)
    try:
        port = holder.bind_to_random_port("tcp://127.0.0.1")
        r = subprocess.run(
            [sys.executable, "-m", "zmqws", "consume", "--bind", f"tcp://127.0.0.1:{port}",
             "--output", str(tmp_path / "out.jsonl")],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30 * UNIT,
        )
    finally:
        holder.close(linger=0)
        ctx.term()
    assert r.returncode == 3
    assert r.stderr.decode().splitlines() == [
        f"zmqws consume: error: cannot bind tcp://127.0.0.1:{port}: Address already in use"
    ]


def test_a_partial_last_line_left_by_an_earlier_run_is_ended_first(
    consume: Callable[..., Consume], tmp_path: Path,
) -> None:
    """A run that died mid-line (a full disk) must not glue the next run's first line to it."""
    (tmp_path / "out.jsonl").write_bytes(b'{"topic":"t","data":"whole"}\n{"topic":"t","da')
    c = consume("--count", "1")
    with Publisher(c.endpoint, subscriber_timeout=10 * UNIT, linger=10 * UNIT) as pub:
        pub.send("t", "after")
    assert c.wait(30 * UNIT) == 0
    lines = c.output.read_bytes().split(b"\n")
    assert lines[1] == b'{"topic":"t","da' and json.loads(lines[2])["data"] == "after"


def test_a_fifo_whose_reader_leaves_ends_consume_quietly_with_0(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "zmqws", "consume", "--bind", "tcp://127.0.0.1:*",
                             "--output", str(fifo)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reader = open(fifo, "rb")  # consume opens the FIFO for writing once a reader exists
        err = b""
        while b"bound tcp://" not in err:
            err += proc.stderr.readline()
        endpoint = re.search(rb"bound (tcp://\S+)", err).group(1).decode()
        with Publisher(endpoint, subscriber_timeout=10 * UNIT, linger=0) as pub:
            pub.send("t", "one")
            assert json.loads(reader.readline())["data"] == "one"
            reader.close()  # the reader goes away

            def more() -> None:  # until consume notices (a send may block once it is gone)
                try:
                    for _ in range(20_000):
                        pub.send("t", "x" * 100)
                except RuntimeError:  # the publisher closed under a blocked send
                    pass

            threading.Thread(target=more, daemon=True).start()
            assert proc.wait(30 * UNIT) == 0
        rest = proc.stderr.read().decode()
        assert "output closed by its reader" in rest and "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
