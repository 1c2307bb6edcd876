"""Tests of ``zmqws tail`` (src/zmqws/tail.py).

Three layers, all with real parts:

* the pure pieces (transition table, line splitting, topics) fed bytes directly;
* :class:`FileFollower` on real files in ``tmp_path`` that are appended, rotated and truncated
  between calls to ``poll()``: deterministic, no ZeroMQ;
* ``zmqws tail`` as a real subprocess publishing into real pyzmq SUB sockets on 127.0.0.1, with the
  real Loghub logs (CRLF line endings, most without a final newline).

Nothing waits with a bare sleep: every wait polls a condition until a deadline. Deadlines are
multiples of ``UNIT``, scaled by the environment variable ``ZMQWS_TEST_TIMEOUT_SCALE`` on slow
machines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from zmqws.config import TailSettings
from zmqws.tail import (
    TRANSITIONS,
    Event,
    FileFollower,
    LineSplitter,
    Source,
    State,
    TransitionError,
    format_topic,
    run,
    sources,
    transition,
)

# One unit of patience, in seconds; every timeout below is a multiple of it.
UNIT = float(os.environ.get("ZMQWS_TEST_TIMEOUT_SCALE", "1")) * 1.0

LOGHUB = Path(os.environ.get("ZMQWS_LOGHUB", "/work/shared/data/loghub"))
LOGHUB_FILES = sorted(LOGHUB.glob("*_2k.log")) if LOGHUB.is_dir() else []
needs_loghub = pytest.mark.skipif(not LOGHUB_FILES, reason=f"no Loghub samples in {LOGHUB}")

# --poll-interval of the subprocesses: quick tests, still a real polling loop.
POLL = "0.05"

Ctx = zmq.Context  # type: ignore[type-arg]


# -- helpers ------------------------------------------------------------------------------------


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; fail naming ``what`` past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.01)


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a file as tail must publish them: no LF, no CR before it, last one included."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


@dataclass(frozen=True)
class Msg:
    topic: bytes
    data: bytes
    meta_frame: bytes

    @property
    def meta(self) -> dict[str, object]:
        meta = json.loads(self.meta_frame)
        assert isinstance(meta, dict)
        return meta

    @property
    def src(self) -> str:
        return str(self.meta["src"])

    @property
    def seq(self) -> int:
        seq = self.meta["seq"]
        assert isinstance(seq, int)
        return seq


class Subscriber:
    """A real pyzmq SUB socket, bound to a random port on 127.0.0.1 (or bound later)."""

    def __init__(self, ctx: Ctx, prefix: bytes = b"", rcvhwm: int | None = None):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.received: list[Msg] = []

    def bind_random(self) -> str:
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"

    def take(self, timeout_ms: int) -> bool:
        if not self.sock.poll(timeout_ms):
            return False
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            assert len(frames) == 3, f"expected [topic, data, meta], got {frames!r}"
            self.received.append(Msg(*frames))

    def until(self, cond: Callable[[list[Msg]], bool], timeout: float, what: str) -> list[Msg]:
        """Receive until ``cond(all received so far)``; fail naming ``what`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while not cond(self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"timed out after {timeout:.1f} s waiting for {what}; "
                    f"got {len(self.received)} message(s), last: {self.received[-3:]!r}"
                )
            self.take(max(1, min(100, int(left * 1000))))
        return self.received

    def count(self, n: int, timeout: float) -> list[Msg]:
        return self.until(lambda got: len(got) >= n, timeout, f"{n} messages")

    def data_of(self, src: str) -> list[bytes]:
        return [m.data for m in self.received if m.src == src]


class TailProcess:
    """``python -m zmqws tail ARGS`` as a real subprocess; its stderr is collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqws", "tail", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 10 * UNIT, count: int = 1) -> None:
        """Wait until ``text`` appeared in ``count`` stderr lines (the process's own sync points)."""
        def seen() -> bool:
            if self.proc.poll() is not None:
                self._reader.join(UNIT)
                if sum(text in line for line in self.lines) < count:
                    pytest.fail(
                        f"tail exited ({self.proc.returncode}) before logging {text!r}:\n{self.stderr}"
                    )
            return sum(text in line for line in self.lines) >= count

        wait_for(seen, timeout, f"{text!r} in tail's log:\n{self.stderr}")

    def wait(self, timeout: float = 10 * UNIT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tail still running after {timeout:.1f} s:\n{self.stderr}")
        self._reader.join(UNIT)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


StartTail = Callable[..., TailProcess]


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def tail() -> Iterator[StartTail]:
    started: list[TailProcess] = []

    def start(*args: str) -> TailProcess:
        p = TailProcess(*args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def source(path: Path, topic: str = "t") -> Source:
    return Source(str(path), topic, f"h:{path}")


def drain(f: FileFollower) -> list[bytes]:
    """Poll until the follower has nothing more to do right now; return the lines."""
    lines, more = f.poll()
    while more:
        got, more = f.poll()
        lines += got
    return lines


# -- the transition table -----------------------------------------------------------------------


class TestTransitions:
    def test_the_table_covers_every_state(self) -> None:
        assert set(TRANSITIONS) == set(State)

    @pytest.mark.parametrize(
        ("state", "event", "after"),
        [(s, e, n) for s, row in TRANSITIONS.items() for e, n in row.items()],
        ids=lambda v: v.name if isinstance(v, (State, Event)) else None,
    )
    def test_an_allowed_event_moves_to_the_state_in_the_table(
        self, state: State, event: Event, after: State
    ) -> None:
        assert transition(state, event) is after

    @pytest.mark.parametrize(
        ("state", "event"),
        [(s, e) for s in State for e in Event if e not in TRANSITIONS[s]],
        ids=lambda v: v.name,
    )
    def test_an_event_not_in_the_table_raises_an_error_naming_event_and_state(
        self, state: State, event: Event
    ) -> None:
        with pytest.raises(TransitionError) as info:
            transition(state, event)
        assert event.name in str(info.value) and state.name in str(info.value)
        assert (info.value.event, info.value.state) == (event, state)

    def test_a_follower_polled_after_close_raises_naming_its_state_and_path(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"")
        f = FileFollower(source(path))
        f.start(from_start=True)
        f.close()
        with pytest.raises(TransitionError, match=f"CLOSED for {path}"):
            f.poll()


# -- bytes to lines -----------------------------------------------------------------------------


class TestLineSplitter:
    def test_lf_and_crlf_terminators_are_removed_and_a_lone_cr_is_kept(self) -> None:
        s = LineSplitter()
        assert s.feed(b"a\nb\r\nc\rd\n\n\r\n") == [b"a", b"b", b"c\rd", b"", b""]
        assert s.held == 0

    def test_a_line_split_across_writes_is_held_until_its_newline(self) -> None:
        s = LineSplitter()
        assert s.feed(b"first\r\nsecond half") == [b"first"]
        assert s.held == len(b"second half")
        assert s.feed(b" done\r") == []
        assert s.feed(b"\nthird\n") == [b"second half done", b"third"]

    def test_a_utf8_character_split_across_writes_arrives_whole(self) -> None:
        encoded = "café ☃ 😀\n".encode()
        s = LineSplitter()
        lines = [line for i in range(len(encoded)) for line in s.feed(encoded[i : i + 1])]
        assert lines == ["café ☃ 😀".encode()]

    def test_bytes_that_are_not_utf8_pass_through_unchanged(self) -> None:
        assert LineSplitter().feed(b"\xff\xfe\x00latin-1 \xe9\n") == [b"\xff\xfe\x00latin-1 \xe9"]

    def test_flush_returns_the_unterminated_last_line_as_it_is(self) -> None:
        s = LineSplitter()
        assert s.feed(b"a\nlast\r") == [b"a"]
        assert s.flush() == [b"last\r"]
        assert s.flush() == []

    def test_discarding_drops_the_rest_of_a_line_up_to_its_newline(self) -> None:
        s = LineSplitter()
        s.discarding = True
        assert s.feed(b"rest of an old line") == []
        assert s.feed(b" more\r\nnew\r\n") == [b"new"]

    def test_a_held_line_longer_than_the_bound_is_published_in_pieces(self) -> None:
        s = LineSplitter(max_line=8)
        assert s.feed(b"0123456789") == [b"01234567"]
        assert s.held == 2
        assert s.feed(b"abcdefghijklmnopq\n") == [b"89abcdef", b"ghijklmn", b"opq"]
        assert s.cut == 1

    def test_a_long_complete_line_is_published_in_pieces_too(self) -> None:
        s = LineSplitter(max_line=4)
        assert s.feed(b"abcdefghij\nxy\n") == [b"abcd", b"efgh", b"ij", b"xy"]

    @pytest.mark.parametrize(
        "text", ["abcdefgé tail", "abcdef☃☃ tail", "abcde😀😀 tail", "é" * 20]
    )
    def test_pieces_are_cut_at_utf8_character_boundaries(self, text: str) -> None:
        s = LineSplitter(max_line=8)
        pieces = s.feed(text.encode())
        pieces += s.feed(b"\n")
        assert all(len(p) <= 8 for p in pieces)
        assert "".join(p.decode("utf-8") for p in pieces) == text

    def test_a_bound_too_small_for_one_character_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_line"):
            LineSplitter(max_line=3)


# -- topics and sources -------------------------------------------------------------------------


class TestTopics:
    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            ("{host}.{name}", "web01.access.log.1"),
            ("logs.{stem}", "logs.access.log"),
            ("{host}:{path}", "web01:/var/log/access.log.1"),
            ("fixed", "fixed"),
        ],
    )
    def test_the_template_is_filled_per_file(self, template: str, expected: str) -> None:
        assert format_topic(template, "web01", "/var/log/access.log.1") == expected

    def test_a_name_without_extension_is_its_own_stem(self) -> None:
        assert format_topic("{stem}", "h", "/var/log/messages") == "messages"

    def test_relative_paths_become_absolute_and_a_repeated_path_is_followed_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        got = sources(["a.log", str(tmp_path / "a.log"), "b.log"], "{host}.{name}", "n1")
        assert got == [
            Source(str(tmp_path / "a.log"), "n1.a.log", f"n1:{tmp_path / 'a.log'}"),
            Source(str(tmp_path / "b.log"), "n1.b.log", f"n1:{tmp_path / 'b.log'}"),
        ]

    def test_a_source_is_a_frozen_value_checked_when_built(self) -> None:
        with pytest.raises(ValueError, match="absolute"):
            Source("rel.log", "t", "h:rel.log")
        with pytest.raises(ValueError, match="topic"):
            Source("/a.log", "", "h:/a.log")
        s = Source("/a.log", "t", "h:/a.log")
        with pytest.raises(AttributeError):
            s.topic = "u"  # type: ignore[misc]


# -- one file, polled in-process ------------------------------------------------------------------


class TestFollower:
    def test_from_start_reads_what_is_there_then_what_is_appended(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"one\r\ntwo\r\n")
        f = FileFollower(source(path))
        assert f.start(from_start=True) is None
        assert f.state is State.FOLLOWING
        assert drain(f) == [b"one", b"two"]
        with path.open("ab") as w:
            w.write(b"three\npartial ")
            w.flush()
            assert drain(f) == [b"three"]
            w.write(b"line\n")
            w.flush()
            assert drain(f) == [b"partial line"]
        assert drain(f) == []

    def test_from_end_skips_existing_lines_and_the_rest_of_an_unterminated_last_line(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"old 1\r\nold 2 unterminated")
        f = FileFollower(source(path))
        f.start(from_start=False)
        assert drain(f) == []
        with path.open("ab") as w:
            w.write(b" still old\r\nnew 1\r\n")
        assert drain(f) == [b"new 1"]

    def test_from_end_of_a_file_ending_with_a_newline_publishes_the_next_line(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"old\r\n")
        f = FileFollower(source(path))
        f.start(from_start=False)
        with path.open("ab") as w:
            w.write(b"new\r\n")
        assert drain(f) == [b"new"]

    def test_once_style_reading_includes_the_unterminated_last_line(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"a\r\nb\r\nlast")
        f = FileFollower(source(path), read_budget=3)
        f.start(from_start=True)
        lines: list[bytes] = []
        more = True
        while more:
            got, more = f.read_available()
            lines += got
        assert lines + f.finish() == [b"a", b"b", b"last"]
        assert f.state is State.CLOSED

    def test_rename_and_recreate_drains_the_old_file_then_reads_the_new_one(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        old = path.open("ab")
        old.write(b"1\n")
        old.flush()
        f = FileFollower(source(path))
        f.start(from_start=True)
        assert drain(f) == [b"1"]

        path.rename(tmp_path / "a.log.1")
        assert drain(f) == []
        assert f.state is State.ROTATED
        # The writer has not reopened yet: what it writes to the old file is still read.
        old.write(b"2\nunterminated")
        old.flush()
        assert drain(f) == [b"2"]
        assert drain(f) == []
        assert f.state is State.ROTATED  # renamed away, no new file yet: the old one is kept
        old.close()

        path.write_bytes(b"3\n")
        # The old file's last line ends with the file, then the new file is read from its start.
        assert drain(f) == [b"unterminated", b"3"]
        assert f.state is State.FOLLOWING

    def test_copytruncate_restarts_at_offset_zero(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        with path.open("ab") as w:
            w.write(b"1\n2\nheld")
            w.flush()
            f = FileFollower(source(path))
            f.start(from_start=True)
            assert drain(f) == [b"1", b"2"]
            shutil.copy(path, tmp_path / "a.log.1")
            w.truncate(0)
            # The held partial line belonged to what was cut away: it ends there.
            assert drain(f) == [b"held"]
            assert (f.state, f.offset) == (State.FOLLOWING, 0)
            w.write(b"3\n")  # O_APPEND: the writer goes on at the new end
            w.flush()
            assert drain(f) == [b"3"]

    def test_a_deleted_file_is_waited_for_and_read_from_its_start_when_it_returns(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n")
        f = FileFollower(source(path))
        f.start(from_start=True)
        assert drain(f) == [b"1"]
        path.unlink()
        assert drain(f) == []
        assert f.state is State.ROTATED
        assert drain(f) == []
        assert f.state is State.WAITING
        path.write_bytes(b"2\n3\n")
        assert drain(f) == [b"2", b"3"]
        assert f.state is State.FOLLOWING

    def test_a_file_missing_at_start_is_waited_for_and_read_from_its_start(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "later.log"
        f = FileFollower(source(path))
        err = f.start(from_start=False)
        assert isinstance(err, FileNotFoundError)
        assert f.state is State.WAITING
        assert drain(f) == []
        path.write_bytes(b"first\r\n")
        assert drain(f) == [b"first"]

    def test_a_file_renamed_back_is_followed_on_without_rereading(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n")
        f = FileFollower(source(path))
        f.start(from_start=True)
        assert drain(f) == [b"1"]
        path.rename(tmp_path / "moved")
        assert drain(f) == []
        (tmp_path / "moved").rename(path)
        assert drain(f) == []
        assert f.state is State.FOLLOWING
        with path.open("ab") as w:
            w.write(b"2\n")
        assert drain(f) == [b"2"]

    def test_a_directory_is_not_followed(self, tmp_path: Path) -> None:
        f = FileFollower(source(tmp_path))
        err = f.start(from_start=True)
        assert err is not None and "not a regular file" in str(err)
        assert f.state is State.WAITING

    def test_a_line_past_the_bound_is_published_in_pieces_with_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"")
        f = FileFollower(source(path), max_line=8)
        f.start(from_start=True)
        with path.open("ab") as w:
            w.write(b"0123456789ab")
            w.flush()
            with caplog.at_level("WARNING", logger="zmqws.tail"):
                assert drain(f) == [b"01234567"]
            assert "longer than 8 bytes" in caplog.text
            w.write(b"\nshort\n")
            w.flush()
            assert drain(f) == [b"89ab", b"short"]

    def test_a_large_backlog_is_read_in_bounded_batches(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"".join(b"line %05d\n" % i for i in range(1000)))
        f = FileFollower(source(path), read_budget=1000)
        f.start(from_start=True)
        lines, more = f.poll()
        assert more and len(lines) < 1000
        assert lines + drain(f) == [b"line %05d" % i for i in range(1000)]


# -- run() in-process -----------------------------------------------------------------------------


def test_run_in_a_thread_follows_and_returns_0_when_stopped(ctx: Ctx, tmp_path: Path) -> None:
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    path = tmp_path / "app.log"
    path.write_bytes(b"before\n")
    settings = TailSettings(
        paths=(str(path),), connect=(endpoint,), host="n1", poll_interval=0.02, linger=5
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(settings, stop=stop)), daemon=True)
    thread.start()
    try:
        # Started from the end: "before" is not published. Append until one line gets through
        # (the first appends may land before tail has opened the file).
        def appended_and_received() -> bool:
            with path.open("ab") as w:
                w.write(b"ping\n")
            return sub.take(int(50 * UNIT)) and bool(sub.received)

        wait_for(appended_and_received, 10 * UNIT, "a line appended while tail runs")
        assert {m.data for m in sub.received} == {b"ping"}
        assert sub.received[0].topic == b"n1.app.log"
        assert sub.received[0].src == f"n1:{path}"
    finally:
        stop.set()
        thread.join(10 * UNIT)
    assert not thread.is_alive()
    assert result == [0]


# -- the command, end to end ----------------------------------------------------------------------


@needs_loghub
def test_once_from_start_publishes_every_line_of_a_loghub_file_exactly(
    ctx: Ctx, tail: StartTail
) -> None:
    path = LOGHUB / "Apache_2k.log"
    expected = file_lines(path.read_bytes())
    assert len(expected) == 2000 and not path.read_bytes().endswith(b"\n")
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()

    p = tail(str(path), "--once", "--from-start", "--connect", endpoint)
    got = sub.count(2000, 30 * UNIT)
    assert p.wait() == 0, p.stderr

    host = socket.gethostname()
    assert [m.data for m in got] == expected
    assert all(m.topic == f"{host}.Apache_2k.log".encode() for m in got)
    assert all(m.meta_frame.startswith(b'{"zmqws":1') for m in got)
    assert {m.src for m in got} == {f"{host}:{path}"}
    assert [m.seq for m in got] == list(range(1, 2001))
    assert not sub.take(0), "more than 2,000 messages"


@needs_loghub
def test_once_publishes_every_loghub_file_with_its_own_source_and_sequence(
    ctx: Ctx, tail: StartTail
) -> None:
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    expected = {f"n1:{p}": file_lines(p.read_bytes()) for p in LOGHUB_FILES}
    total = sum(len(v) for v in expected.values())

    p = tail(*map(str, LOGHUB_FILES), "--once", "--host", "n1", "--connect", endpoint)
    sub.count(total, 60 * UNIT)
    assert p.wait() == 0, p.stderr

    for src, lines in expected.items():
        assert len(lines) == 2000
        assert sub.data_of(src) == lines, src
        assert [m.seq for m in sub.received if m.src == src] == list(range(1, 2001))


@needs_loghub
def test_a_subscriber_that_binds_after_tail_started_still_gets_every_line(
    ctx: Ctx, tail: StartTail
) -> None:
    # Find a free port, then free it: tail connects to it before anybody listens there.
    probe = ctx.socket(zmq.SUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    endpoint = f"tcp://127.0.0.1:{port}"
    path = LOGHUB / "OpenSSH_2k.log"

    p = tail(str(path), "--once", "--connect", endpoint)
    p.wait_log("waiting for a subscriber")
    assert p.proc.poll() is None
    sub = Subscriber(ctx)
    sub.sock.bind(endpoint)
    sub.count(2000, 30 * UNIT)
    assert p.wait() == 0, p.stderr
    assert [m.data for m in sub.received] == file_lines(path.read_bytes())


@needs_loghub
def test_a_subscriber_that_connects_to_a_bound_tail_later_still_gets_every_line(
    ctx: Ctx, tail: StartTail
) -> None:
    probe = ctx.socket(zmq.SUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    endpoint = f"tcp://127.0.0.1:{port}"
    path = LOGHUB / "Zookeeper_2k.log"

    p = tail(str(path), "--once", "--bind", endpoint)
    p.wait_log("waiting for a subscriber")
    sub = Subscriber(ctx)
    sub.sock.connect(endpoint)
    sub.count(2000, 30 * UNIT)
    assert p.wait() == 0, p.stderr
    assert [m.data for m in sub.received] == file_lines(path.read_bytes())


@needs_loghub
def test_a_topic_nobody_wants_does_not_hold_back_the_other_files(
    ctx: Ctx, tail: StartTail
) -> None:
    apache, linux = LOGHUB / "Apache_2k.log", LOGHUB / "Linux_2k.log"
    sub = Subscriber(ctx, prefix=b"Linux_2k")
    endpoint = sub.bind_random()

    p = tail(str(apache), str(linux), "--once", "--topic", "{stem}", "--connect", endpoint)
    sub.count(2000, 30 * UNIT)
    assert [m.data for m in sub.received] == file_lines(linux.read_bytes())
    p.wait_log("waiting for a subscriber to topic 'Apache_2k'")
    assert p.proc.poll() is None, "tail must hold Apache's lines until somebody wants them"

    sub.sock.setsockopt(zmq.SUBSCRIBE, b"Apache_2k")
    sub.count(4000, 30 * UNIT)
    assert p.wait() == 0, p.stderr
    got = [m for m in sub.received if m.topic == b"Apache_2k"]
    assert [m.data for m in got] == file_lines(apache.read_bytes())
    assert [m.seq for m in got] == list(range(1, 2001))


def test_follow_publishes_appends_across_rotation_and_truncation_of_two_files(
    ctx: Ctx, tail: StartTail, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"")  # b.log does not exist yet: tail waits for it
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    src_a, src_b = f"n1:{a}", f"n1:{b}"
    want: dict[str, list[bytes]] = {src_a: [], src_b: []}

    def write(path: Path, data: bytes, *lines: bytes) -> None:
        with path.open("ab") as w:
            w.write(data)
        want[f"n1:{path}"].extend(lines)

    def arrived(what: str) -> None:
        sub.until(
            lambda got: all(
                [m.data for m in got if m.src == src] == lines for src, lines in want.items()
            ),
            10 * UNIT,
            what,
        )

    p = tail(str(a), str(b), "--host", "n1", "--connect", endpoint, "--poll-interval", POLL)
    p.wait_log(f"following {a} from its end")
    p.wait_log(f"cannot open {b}")

    # Appends, and a file that appears later (read from its start).
    write(a, b"a1\r\na2\n", b"a1", b"a2")
    write(b, b"b1\r\n", b"b1")
    arrived("the first lines of both files")

    # A line, with a UTF-8 character, split across two writes. B's lines prove that tail has read
    # A's first half: the loop reads every file in turn, and b3 is written after b2 arrived.
    write(a, "a3 caf".encode() + b"\xc3")
    write(b, b"b2\n", b"b2")
    arrived("b2")
    write(b, b"b3\n", b"b3")
    arrived("b3")
    write(a, b"\xa9 done\r\n", "a3 café done".encode())
    arrived("the split line")

    # Rotation by rename and re-create: what the writer still puts in the old file comes first.
    with a.open("ab") as old:
        a.rename(tmp_path / "a.log.1")
        old.write(b"a4 late in old file\n")
        want[src_a].append(b"a4 late in old file")
    write(b, b"b4\n", b"b4")
    write(a, b"a5 new file\n", b"a5 new file")
    arrived("the lines around A's rotation")
    p.wait_log(f"{a} was rotated")

    # copytruncate of B; the writer keeps its O_APPEND descriptor.
    with b.open("ab") as w:
        shutil.copy(b, tmp_path / "b.log.1")
        w.truncate(0)
        p.wait_log(f"{b} was truncated")
        w.write(b"b5 after truncation\n")
        want[src_b].append(b"b5 after truncation")
    write(a, b"a6\n", b"a6")
    arrived("the lines after B's truncation")

    # Nothing more, nothing twice: a last marker per file, then the whole record is compared.
    write(a, b"END\n", b"END")
    write(b, b"END\n", b"END")
    arrived("the END markers")
    for src, lines in want.items():
        got = [m for m in sub.received if m.src == src]
        assert [m.data for m in got] == lines
        assert [m.seq for m in got] == list(range(1, len(lines) + 1))
        assert {m.topic for m in got} == {f"n1.{os.path.basename(src)}".encode()}

    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 0, p.stderr
    assert "Traceback" not in p.stderr


@needs_loghub
def test_follow_from_the_end_publishes_only_what_is_appended(
    ctx: Ctx, tail: StartTail, tmp_path: Path
) -> None:
    path = tmp_path / "Apache_2k.log"
    shutil.copy(LOGHUB / "Apache_2k.log", path)  # CRLF, no newline after its last line
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()

    p = tail(str(path), "--host", "n1", "--connect", endpoint, "--poll-interval", POLL)
    p.wait_log(f"following {path} from its end")
    with path.open("ab") as w:
        # The first CRLF ends the existing last line, which was there before tail: not published.
        w.write(b"\r\nnew 1\r\nnew 2 \xff\xfe not UTF-8\r\n")
    sub.count(2, 10 * UNIT)
    with path.open("ab") as w:
        w.write(b"new 3\r\n")
    got = sub.count(3, 10 * UNIT)

    assert [m.data for m in got] == [b"new 1", b"new 2 \xff\xfe not UTF-8", b"new 3"]
    assert [m.seq for m in got] == [1, 2, 3]
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 0, p.stderr


@needs_loghub
@pytest.mark.parametrize(
    ("args", "topic"),
    [
        ((), "{host}.Linux_2k.log"),
        (("--host", "node7"), "node7.Linux_2k.log"),
        (("--topic", "logs.{stem}"), "logs.Linux_2k"),
        (("--topic", "{host}|{path}", "--host", "n2"), "n2|{path}"),
    ],
    ids=["default", "host", "stem", "path"],
)
def test_the_topic_template_names_each_file(
    ctx: Ctx, tail: StartTail, args: tuple[str, ...], topic: str
) -> None:
    path = LOGHUB / "Linux_2k.log"
    host = dict(zip(args[::2], args[1::2])).get("--host") or socket.gethostname()
    expected_topic = topic.format(host=host, path=path).encode()
    # Subscribed to this exact topic only: tail must wait for it and send under it.
    sub = Subscriber(ctx, prefix=expected_topic)
    endpoint = sub.bind_random()

    p = tail(str(path), "--once", "--connect", endpoint, *args)
    got = sub.count(2000, 30 * UNIT)
    assert p.wait() == 0, p.stderr
    assert {m.topic for m in got} == {expected_topic}
    assert {m.src for m in got} == {f"{host}:{path}"}


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (lambda d, ep: [str(d / "missing.log"), "--once", "--connect", ep], 2, "no such file"),
        (lambda d, ep: [str(d / "a.log"), "--connect", "tcp://127.0.0.1"], 2, "malformed endpoint"),
        (lambda d, ep: [str(d / "a.log"), "--connect", "bogus://x"], 2, "unknown transport"),
        (lambda d, ep: [str(d / "a.log"), "--connect", ep, "--no-such-flag"], 2, "unrecognized"),
        (lambda d, ep: [str(d / "a.log"), "--connect", ep, "--topic", "{nope}"], 2, "--topic"),
        (lambda d, ep: [str(d / "a.log"), "--connect", ep, "--topic", ""], 2, "--topic"),
        (lambda d, ep: [str(d / "a.log"), "--connect", ep, "--poll-interval", "0"], 2, "interval"),
        (lambda d, ep: [str(d / "a.log"), "--bind", ep, "--connect", ep], 2, "not allowed with"),
        (lambda d, ep: [str(d / "a.log"), "--bind", ep], 3, "cannot bind"),
    ],
    ids=["missing-file", "no-port", "bad-transport", "unknown-flag", "bad-template", "empty-topic",
         "bad-interval",
         "bind-and-connect", "address-in-use"],
)
def test_a_user_error_is_one_line_on_stderr_and_a_nonzero_exit(
    ctx: Ctx,
    tail: StartTail,
    tmp_path: Path,
    make_args: Callable[[Path, str], list[str]],
    code: int,
    message: str,
) -> None:
    (tmp_path / "a.log").write_bytes(b"x\n")
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()  # in use: binding it again fails
    p = tail(*make_args(tmp_path, endpoint))
    assert p.wait() == code, p.stderr
    assert len(p.lines) == 1, p.stderr
    assert message in p.lines[0]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_in_follow_mode_stops_tail_promptly_with_exit_0(
    ctx: Ctx, tail: StartTail, tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"hello\n")
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    # A long poll interval: tail publishes "hello" on its first poll, then waits 10 units.
    p = tail(str(path), "--from-start", "--connect", endpoint, "--poll-interval", str(10 * UNIT))
    sub.count(1, 10 * UNIT)

    started = time.monotonic()
    p.proc.send_signal(sig)
    assert p.wait(5 * UNIT) == 0, p.stderr
    # Woken by the signal, not by the end of the poll interval (nor a 30 s linger).
    assert time.monotonic() - started < 3 * UNIT
    assert f"{sig.name}: stopping" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_signal_while_waiting_for_a_subscriber_stops_tail_with_exit_0(
    ctx: Ctx, tail: StartTail, tmp_path: Path
) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"nobody wants this\n")
    sub = Subscriber(ctx, prefix=b"another-topic")
    endpoint = sub.bind_random()
    p = tail(str(path), "--once", "--connect", endpoint)
    p.wait_log("waiting for a subscriber")
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait(5 * UNIT) == 0, p.stderr
    assert not sub.take(0)


def test_a_slow_subscriber_gets_every_line_because_tail_blocks_instead_of_dropping(
    ctx: Ctx, tail: StartTail, tmp_path: Path
) -> None:
    n = 30_000
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"%06d %s\r\n" % (i, b"x" * 1000) for i in range(n)))
    # 30 MB: more than tail's queue (10,000 messages), the subscriber's (100) and the kernel's
    # socket buffers hold together, so tail must block while the subscriber does not read.
    sub = Subscriber(ctx, rcvhwm=100)
    endpoint = sub.bind_random()
    p = tail(str(path), "--once", "--connect", endpoint)
    sub.count(1, 10 * UNIT)
    # A slow consumer: not reading for a while is the behaviour under test, not a synchronisation.
    time.sleep(0.5 * UNIT)
    sub.count(n, 60 * UNIT)
    assert p.wait() == 0, p.stderr
    assert [m.seq for m in sub.received] == list(range(1, n + 1))
    assert [m.data[:6] for m in sub.received] == [b"%06d" % i for i in range(n)]
