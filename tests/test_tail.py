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

import base64
import json
import os
import re
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
from conftest import LOGHUB as SHARED_LOGHUB
from conftest import SAMPLES
from conftest import loghub

from zmqws.config import TailSettings
from zmqws.tail import (
    HEAD,
    TRANSITIONS,
    Batch,
    Checkpoint,
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

# ../shared's Loghub files when this checkout sits beside it, else the four bundled with zmqws.
LOGHUB = Path(os.environ.get("ZMQWS_LOGHUB", str(SHARED_LOGHUB)))
if not LOGHUB.is_dir():
    LOGHUB = SAMPLES
LOGHUB_FILES = sorted(LOGHUB.glob("*_2k.log"))
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

    def test_a_crlf_line_of_exactly_the_bound_is_whole_however_the_writes_split_it(self) -> None:
        data = b"ABCDEFGH\r\nnext\r\n"
        for split in range(1, len(data)):
            s = LineSplitter(max_line=8)
            assert s.feed(data[:split]) + s.feed(data[split:]) == [b"ABCDEFGH", b"next"], split
            assert s.cut == 0

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


# -- where lines come from, and resuming there (--state) ------------------------------------------


def drain_batches(f: FileFollower) -> list[Batch]:
    """:func:`drain`, keeping the batches (each names its content and where its lines end)."""
    batches, more = f.poll_batches()
    while more:
        got, more = f.poll_batches()
        batches += got
    return batches


def place_after(batches: list[Batch], seq: int) -> Checkpoint:
    """The place ``--state`` would save after the last of ``batches``, reached with line ``seq``."""
    return batches[-1].version.checkpoint(batches[-1].end, seq)


class TestRewrittenFiles:
    def test_a_file_truncated_and_written_past_the_old_offset_between_two_polls_is_read_again(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "a.log"
        with path.open("ab") as w:
            w.write(b"Jun 14 15:16:01 old 1\nJun 14 15:16:02 old 2\nheld")
            w.flush()
            f = FileFollower(source(path))
            f.start(from_start=True)
            assert drain(f) == [b"Jun 14 15:16:01 old 1", b"Jun 14 15:16:02 old 2"]
            # copytruncate, and the writer already wrote more than was read before tail looks.
            w.truncate(0)
            w.write(b"Jun 15 04:06:18 new 1, longer than all before\nJun 15 04:06:19 new 2\n")
            w.flush()
            assert path.stat().st_size > f.offset
            with caplog.at_level("INFO", logger="zmqws.tail"):
                lines = drain(f)
        # The held partial line ends with the content that went away; then the new one, whole.
        assert lines == [b"held", b"Jun 15 04:06:18 new 1, longer than all before",
                         b"Jun 15 04:06:19 new 2"]
        assert "truncated and written again (its first bytes changed)" in caplog.text
        assert (f.state, f.offset) == (State.FOLLOWING, path.stat().st_size)

    def test_the_limit_a_rewrite_that_keeps_the_first_4_kib_is_taken_for_growth(
        self, tmp_path: Path
    ) -> None:
        header = b"".join(b"# the same header line, number %03d\n" % i for i in range(150))
        assert len(header) > HEAD
        path = tmp_path / "a.log"
        path.write_bytes(header + b"old\n")
        f = FileFollower(source(path))
        f.start(from_start=True)
        assert drain(f)[-1] == b"old"
        path.write_bytes(header + b"NEW\nnext\n")  # same inode, same first 4 KiB, longer
        # Documented in tail.py: the line at the old offset's place ("NEW") is not read.
        assert drain(f) == [b"next"]

    def test_each_batch_names_its_content_and_ends_at_a_line_boundary(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n22\n333")
        f = FileFollower(source(path), read_chunk=3)
        f.start(from_start=True)
        batches = drain_batches(f)
        assert [(b.lines, b.end) for b in batches] == [([b"1"], 2), ([b"22"], 5)]
        old = batches[0].version
        assert all(b.version is old for b in batches)
        assert (old.start, old.head) == (0, b"1\n22\n333")
        path.write_bytes(b"4\n")  # truncated: the held "333" ends with the old content
        batches = drain_batches(f)
        assert [(b.lines, b.end, b.version is old) for b in batches] == [
            ([b"333"], 8, True), ([b"4"], 2, False),
        ]

    def test_following_from_the_end_a_content_starts_after_the_line_it_skips(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"before\npartial")
        f = FileFollower(source(path))
        f.start(from_start=False)
        with path.open("ab") as w:
            w.write(b" end\nnew\n")
        batches = drain_batches(f)
        assert [b.lines for b in batches] == [[b"new"]]
        assert batches[0].version.start == len(b"before\npartial end\n")


class TestResume:
    def read(self, path: Path) -> tuple[FileFollower, list[Batch]]:
        f = FileFollower(source(path))
        f.start(from_start=True)
        batches = drain_batches(f)
        f.close()
        return f, batches

    def test_reading_goes_on_from_the_saved_place_whatever_from_start_says(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n2\n")
        _, batches = self.read(path)
        cp = place_after(batches, 2)
        assert (cp.offset, cp.seq, cp.head_len) == (4, 2, 4)
        with path.open("ab") as w:
            w.write(b"3\n")
        g = FileFollower(source(path))
        assert g.start(from_start=False, resume=[cp]) is None
        assert g.version is not None and g.version.resume == cp
        assert drain(g) == [b"3"]

    def test_a_file_rewritten_while_tail_was_stopped_is_read_from_its_start(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"Jun 14 old 1\nJun 14 old 2\n")
        _, batches = self.read(path)
        cp = place_after(batches, 2)
        path.write_bytes(b"Jun 15 new 1, longer than the old content\n")  # same inode
        g = FileFollower(source(path))
        g.start(from_start=False, resume=[cp])
        assert g.version is not None and (g.version.resume, g.version.lost_before) == (None, True)
        assert drain(g) == [b"Jun 15 new 1, longer than the old content"]

    def test_a_file_renamed_while_tail_was_stopped_is_read_on_where_it_is_then_the_new_one(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n2\n")
        _, batches = self.read(path)
        cp = place_after(batches, 2)
        with path.open("ab") as w:
            w.write(b"3\n")  # written before the rotation, never read
        path.rename(tmp_path / "a.log.1")
        path.write_bytes(b"4\n")
        g = FileFollower(source(path))
        g.start(from_start=True, resume=[cp])
        assert drain(g) == [b"3"]
        assert g.state is State.ROTATED
        assert drain(g) == [b"4"]
        assert g.version is not None and (g.version.resume, g.version.lost_before) == (None, False)

    def test_later_places_are_recognised_when_their_file_is_opened(self, tmp_path: Path) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n2\n")
        _, old = self.read(path)
        path.rename(tmp_path / "a.log.1")
        path.write_bytes(b"x\ny\n")
        _, new = self.read(path)
        # Saved by a run that was at line 1 of the old file, and had started the new one after
        # line 2: the new file's lines are numbered 3, 4 whatever the old file holds by now.
        first = old[0].version.checkpoint(2, 1)
        boundary = new[0].version.checkpoint(0, 2)
        with (tmp_path / "a.log.1").open("ab") as w:
            w.write(b"late\n")
        g = FileFollower(source(path))
        g.start(from_start=True, resume=[first, boundary])
        assert g.expect == [boundary]
        assert drain_batches(g)[0].lines == [b"2", b"late"]
        batches = drain_batches(g)
        assert [b.lines for b in batches] == [[b"x", b"y"]]
        assert batches[0].version.resume == boundary and g.expect == []

    def test_when_the_first_place_is_gone_the_next_one_is_where_reading_starts(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n2\n")
        _, old = self.read(path)
        path.unlink()  # rotated and deleted while tail was stopped
        path.write_bytes(b"x\ny\n")
        _, new = self.read(path)
        saved = [place_after(old, 1), new[0].version.checkpoint(0, 2)]
        g = FileFollower(source(path))
        g.start(from_start=True, resume=saved)
        assert g.version is not None and g.version.resume == saved[1]
        assert not g.version.lost_before
        assert drain(g) == [b"x", b"y"]

    def test_when_no_place_is_held_by_a_file_any_more_the_file_is_read_from_its_start(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.log"
        path.write_bytes(b"1\n2\n")
        _, old = self.read(path)
        path.unlink()
        path.write_bytes(b"new\n")
        g = FileFollower(source(path))
        g.start(from_start=False, resume=[place_after(old, 2)])
        assert g.version is not None and g.version.lost_before
        assert drain(g) == [b"new"]


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


# -- exactly once with --state: tail, killed and restarted, into the aggregator -------------------


class Aggregator:
    """``zmqws consume`` as a real subprocess, bound to a free port, writing JSON lines to a file."""

    def __init__(self, tmp: Path) -> None:
        self.output = tmp / "consume.jsonl"
        self.stderr_path = tmp / "consume.stderr"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqws", "consume", "--bind", "tcp://127.0.0.1:*",
             "--output", str(self.output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
        )
        found: list[str] = []

        def bound() -> bool:
            m = re.search(r"bound (tcp://\S+)", self.stderr)
            if m is None and self.proc.poll() is not None:
                pytest.fail(f"consume exited ({self.proc.returncode}): {self.stderr}")
            found.extend([m.group(1)] if m else [])
            return m is not None

        wait_for(bound, 10 * UNIT, "consume to bind")
        self.endpoint = found[0]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def records(self) -> list[dict[str, object]]:
        """The complete JSON lines written so far."""
        data = self.output.read_bytes() if self.output.exists() else b""
        return [json.loads(line) for line in data.split(b"\n")[:-1]]

    def count(self) -> int:
        return self.output.read_bytes().count(b"\n") if self.output.exists() else 0

    def lines_of(self, src: str) -> list[bytes]:
        """The data written for ``src``, as bytes (base64 decoded where flagged)."""
        return [_data(r) for r in self.records() if r["source"] == src]

    def stop(self) -> dict[str, int]:
        """SIGTERM it; return its summary's totals."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30 * UNIT) == 0, self.stderr
        except subprocess.TimeoutExpired:
            pytest.fail(f"consume did not stop: {self.stderr}")
        m = re.search(
            r"summary: (\d+) messages? from \d+ sources?, (\d+) written; (\d+) missing, "
            r"(\d+) duplicate \(not written\), (\d+) restarts?", self.stderr,
        )
        assert m, self.stderr
        return dict(zip(("messages", "written", "missing", "duplicates", "restarts"),
                        map(int, m.groups())))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def _data(record: dict[str, object]) -> bytes:
    data = str(record["data"])
    return base64.b64decode(data) if record.get("encoding") == "base64" else data.encode()


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Callable[[], Aggregator]]:
    made: list[Aggregator] = []

    def make() -> Aggregator:
        a = Aggregator(tmp_path)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def saved_seq(state: Path, path: Path) -> int:
    """The line number of the place ``--state`` would resume ``path`` from (0: none yet)."""
    try:
        entry = json.loads(state.read_bytes())["files"].get(str(path))
    except FileNotFoundError:
        return 0
    checkpoints = entry["checkpoints"] if entry else []
    return int(checkpoints[0]["seq"]) if checkpoints else 0


def log_pieces(data: bytes) -> list[bytes]:
    """A log's bytes cut after each newline (the last piece may have none): a writer's writes."""
    pieces = [p + b"\n" for p in data.split(b"\n")]
    pieces[-1] = pieces[-1][:-1]
    return [p for p in pieces if p]


def test_kill_9_mid_file_then_a_restart_delivers_each_of_the_2000_lines_once_in_order(
    tail: StartTail, aggregator: Callable[[], Aggregator], tmp_path: Path
) -> None:
    sample = loghub("Linux_2k.log")  # CRLF, no newline after its last line
    expected = file_lines(sample.read_bytes())
    pieces = log_pieces(sample.read_bytes())
    assert len(expected) == len(pieces) == 2000
    path, state = tmp_path / "Linux_2k.log", tmp_path / "tail.state"
    path.write_bytes(b"")
    agg = aggregator()
    src = f"n1:{path}"
    args = (str(path), "--host", "n1", "--connect", agg.endpoint, "--state", str(state))

    # The log is written as it would be by its program, 100 lines at a time, while tail follows.
    p = tail(*args, "--from-start", "--poll-interval", POLL)
    for n in range(100, 1501, 100):
        with path.open("ab") as w:
            w.write(b"".join(pieces[n - 100 : n]))
        wait_for(lambda: agg.count() >= n, 10 * UNIT, f"{n} lines at the aggregator")
    # Mid-file, once tail has saved a place: kill -9, no chance to save anything more.
    wait_for(lambda: saved_seq(state, path) > 0, 10 * UNIT, "a place saved in --state")
    p.proc.send_signal(signal.SIGKILL)
    p.wait()
    # The program goes on writing while tail is down; then tail reads to the end and exits.
    with path.open("ab") as w:
        w.write(b"".join(pieces[1500:]))
    restarted = tail(*args, "--once")
    assert restarted.wait(30 * UNIT) == 0, restarted.stderr
    resumed_at = int(re.findall(r"going on after line (\d+)", restarted.stderr)[0])
    assert 0 < resumed_at <= 1500

    wait_for(lambda: agg.count() >= 2000, 30 * UNIT, "2,000 lines at the aggregator")
    summary = agg.stop()
    records = agg.records()
    assert [_data(r) for r in records] == expected
    assert [r["seq"] for r in records] == list(range(1, 2001))
    assert {r["source"] for r in records} == {src}
    # What the restart sent again (after the saved place) was dropped as duplicates: counted,
    # said once, and neither a gap nor a restart.
    assert summary == {"messages": 2000 + summary["duplicates"], "written": 2000, "missing": 0,
                       "duplicates": 1500 - resumed_at, "restarts": 0}
    assert summary["duplicates"] > 0
    assert f"duplicates from source {src}: seq {resumed_at + 1}..1500 " in agg.stderr
    assert agg.stderr.count("WARNING zmqws.consume: duplicate") == 1  # one run, one warning
    assert "gap from source" not in agg.stderr and "restarted" not in agg.stderr


def test_kill_9_while_the_aggregator_is_stalled_loses_nothing_that_zeromq_held(
    tail: StartTail, aggregator: Callable[[], Aggregator], tmp_path: Path
) -> None:
    # 20,000 real log lines (the Linux sample ten times, each line with its copy's number).
    sample = file_lines(loghub("Linux_2k.log").read_bytes())
    lines = [line + b" [copy %d]" % copy for copy in range(10) for line in sample]
    path, state = tmp_path / "big.log", tmp_path / "tail.state"
    path.write_bytes(b"\n".join(lines) + b"\n")
    agg = aggregator()
    args = (str(path), "--host", "n1", "--connect", agg.endpoint, "--state", str(state), "--once")

    p = tail(*args)
    wait_for(lambda: agg.count() >= 1000, 30 * UNIT, "lines flowing")
    # The aggregator stops reading: what tail hands over piles up in ZeroMQ's queue and the
    # kernel's socket buffers, and its saved place moves past what the aggregator has.
    os.kill(agg.proc.pid, signal.SIGSTOP)
    try:
        seen = agg.count()
        wait_for(lambda: saved_seq(state, path) > seen, 30 * UNIT, "a place past the aggregator")
        p.proc.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        os.kill(agg.proc.pid, signal.SIGCONT)
    restarted = tail(*args)
    assert restarted.wait(60 * UNIT) == 0, restarted.stderr
    wait_for(lambda: agg.count() >= len(lines), 60 * UNIT, "every line at the aggregator")
    summary = agg.stop()
    records = agg.records()
    assert [r["seq"] for r in records] == list(range(1, len(lines) + 1))
    assert [_data(r) for r in records] == lines
    assert (summary["written"], summary["missing"], summary["restarts"]) == (len(lines), 0, 0)


def test_with_state_rotation_truncation_and_split_characters_deliver_every_line_once_in_order(
    tail: StartTail, aggregator: Callable[[], Aggregator], tmp_path: Path
) -> None:
    a, b, state = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "tail.state"
    a.write_bytes(b"")
    b.write_bytes(b"")
    agg = aggregator()
    src_a, src_b = f"n1:{a}", f"n1:{b}"
    want: dict[str, list[bytes]] = {src_a: [], src_b: []}
    apache = file_lines(loghub("Apache_2k.log").read_bytes())
    ssh = file_lines(loghub("OpenSSH_2k.log").read_bytes())

    def write(path: Path, data: bytes, *lines: bytes) -> None:
        with path.open("ab") as w:
            w.write(data)
        want[f"n1:{path}"].extend(lines)

    def write_lines(path: Path, lines: list[bytes]) -> None:
        write(path, b"".join(line + b"\r\n" for line in lines), *lines)

    def arrived(what: str) -> None:
        wait_for(lambda: all(agg.lines_of(s) == lines for s, lines in want.items()), 10 * UNIT,
                 f"{what}; got {[(s, agg.lines_of(s)[-2:]) for s in want]}")

    args = (str(a), str(b), "--host", "n1", "--connect", agg.endpoint, "--state", str(state),
            "--from-start", "--poll-interval", POLL)
    p = tail(*args)
    p.wait_log(f"following {b} from its start")

    # Real lines, more than the place saved trails behind what was handed over.
    write_lines(a, apache[:300])
    write_lines(b, ssh[:300])
    arrived("the first 300 lines of each file")

    # A UTF-8 character split across two writes, and a line that is not UTF-8. B's lines prove
    # that tail has read A's first half: the loop reads every file in turn.
    write(a, "a café".encode()[:-1])
    write(b, b"b \xff\xfe not UTF-8\n", b"b \xff\xfe not UTF-8")
    arrived("b's line that is not UTF-8")
    write(b, b"b sync\n", b"b sync")
    arrived("b sync")
    write(a, b"\xa9 done\r\n", "a café done".encode())
    arrived("the split character")

    # Rotation by rename: what the writer still puts in the old file comes first.
    with a.open("ab") as old:
        a.rename(tmp_path / "a.log.1")
        old.write(b"a late line in the old file\n")
        want[src_a].append(b"a late line in the old file")
    write_lines(a, apache[300:310])
    arrived("the lines around a's rotation")
    p.wait_log(f"{a} was rotated")

    # copytruncate, and the file written again past the old offset before tail looks (tail is
    # stopped meanwhile): not shorter than what was read, noticed by its first bytes.
    read_before = b.stat().st_size
    os.kill(p.proc.pid, signal.SIGSTOP)
    try:
        with b.open("ab") as w:
            shutil.copy(b, tmp_path / "b.log.1")
            w.truncate(0)
        write_lines(b, ssh[300:700])
        assert b.stat().st_size > read_before
    finally:
        os.kill(p.proc.pid, signal.SIGCONT)
    p.wait_log(f"{b} was truncated and written again")
    arrived("b's lines after it was written again")

    # copytruncate: the file is shorter than what was read.
    with b.open("ab") as w:
        shutil.copy(b, tmp_path / "b.log.2")
        w.truncate(0)
        p.wait_log(f"{b} was truncated (")
        w.write(b"b after truncation\n")
        want[src_b].append(b"b after truncation")
    arrived("b's first line after its truncation")
    wait_for(lambda: saved_seq(state, a) > 0 and saved_seq(state, b) > 0, 10 * UNIT,
             "places saved for both files")

    # kill -9. While tail is down: both logs go on, and a is rotated again.
    p.proc.send_signal(signal.SIGKILL)
    p.wait()
    write_lines(a, apache[310:320])
    write_lines(b, ssh[700:710])
    a.rename(tmp_path / "a.log.2")
    write_lines(a, apache[320:330])

    restarted = tail(*args)
    restarted.wait_log("going on after line", count=2)
    write_lines(a, apache[330:340])
    write_lines(b, ssh[710:720])
    arrived("every line after the restart")
    restarted.proc.send_signal(signal.SIGTERM)
    assert restarted.wait() == 0, restarted.stderr

    summary = agg.stop()
    for src, lines in want.items():
        records = [r for r in agg.records() if r["source"] == src]
        assert [_data(r) for r in records] == lines, src
        assert [r["seq"] for r in records] == list(range(1, len(lines) + 1)), src
    assert [r["encoding"] for r in agg.records() if "encoding" in r] == ["base64"]
    assert (summary["written"], summary["missing"], summary["restarts"]) == (
        sum(map(len, want.values())), 0, 0)
    assert "Traceback" not in p.stderr + restarted.stderr


def test_a_line_that_is_not_utf8_reaches_the_aggregator_byte_for_byte(
    tail: StartTail, aggregator: Callable[[], Aggregator], tmp_path: Path
) -> None:
    lines = [b"plain ASCII", "UTF-8: café ✓".encode(), b"Latin-1: caf\xe9", b"\xff\xfe\x00 binary",
             "a split \xe2\x9c".encode("latin-1") + b" cut character"]
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    agg = aggregator()
    p = tail(str(path), "--once", "--host", "n1", "--connect", agg.endpoint)
    assert p.wait(30 * UNIT) == 0, p.stderr
    wait_for(lambda: agg.count() >= len(lines), 10 * UNIT, "every line")
    agg.stop()
    records = agg.records()
    assert [_data(r) for r in records] == lines
    assert [r.get("encoding") for r in records] == [None, None, "base64", "base64", "base64"]


def test_a_clean_stop_saves_the_last_place_and_the_next_run_sends_only_what_is_new(
    ctx: Ctx, tmp_path: Path
) -> None:
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    path, state = tmp_path / "app.log", tmp_path / "tail.state"
    path.write_bytes(b"1\n2\n3\n")
    settings = TailSettings(paths=(str(path),), connect=(endpoint,), host="n1", from_start=True,
                            poll_interval=0.02, linger=5, state=str(state))
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        sub.count(3, 10 * UNIT)
    finally:
        stop.set()
        thread.join(10 * UNIT)
    assert not thread.is_alive()
    assert saved_seq(state, path) == 3  # the very last place: the close sent everything

    with path.open("ab") as w:
        w.write(b"4\n")
    # In a thread: a SUB socket sends its subscription to a new peer only when its own thread
    # uses it, so this one must keep receiving while tail runs.
    codes: list[int] = []
    again = TailSettings(paths=(str(path),), connect=(endpoint,), host="n1", once=True, linger=5,
                         state=str(state))
    thread = threading.Thread(target=lambda: codes.append(run(again)), daemon=True)
    thread.start()
    got = sub.count(4, 10 * UNIT)
    thread.join(10 * UNIT)
    assert codes == [0]
    assert [(m.data, m.seq) for m in got] == [(b"1", 1), (b"2", 2), (b"3", 3), (b"4", 4)]
    assert not sub.take(int(100 * UNIT))
    assert saved_seq(state, path) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "is not a zmqws tail state file"),
     (b'{"zmqws_tail_state": 1, "files": {"/x": {"checkpoints": [{"dev": 1}]}}}',
      "is not a zmqws tail state file (a checkpoint lacks"),
     (None, "is in use by another zmqws tail")],
    ids=["not-json", "bad-checkpoint", "locked"],
)
def test_a_state_file_that_cannot_be_used_is_one_line_and_exit_3(
    ctx: Ctx, tail: StartTail, tmp_path: Path, content: bytes | None, message: str
) -> None:
    import fcntl

    path, state = tmp_path / "a.log", tmp_path / "tail.state"
    path.write_bytes(b"x\n")
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    with open(str(state) + ".lock", "w") as lock:
        if content is None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another tail holds it
        else:
            state.write_bytes(content)
        p = tail(str(path), "--once", "--connect", endpoint, "--state", str(state))
        assert p.wait() == 3, p.stderr
    assert len(p.lines) == 1 and message in p.lines[0], p.stderr
    assert not sub.take(0)


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda state: state.mkdir(), "--state: cannot read {state}: Is a directory"),
     (lambda state: Path(f"{state}.tmp").mkdir(), "--state: cannot write {state}: Is a directory"),
     (None, "--state: cannot create {state}.lock: No such file or directory")],
    ids=["state-is-a-directory", "unwritable", "no-such-folder"],
)
def test_a_state_file_that_cannot_be_read_or_written_is_one_line_and_exit_3(
    ctx: Ctx, tail: StartTail, tmp_path: Path, make: Callable[[Path], None] | None, message: str
) -> None:
    # Root may write anywhere, so "cannot write" is made with a directory where the temporary
    # file must go.
    path = tmp_path / "a.log"
    path.write_bytes(b"x\n")
    state = tmp_path / "tail.state" if make is not None else tmp_path / "missing" / "tail.state"
    if make is not None:
        make(state)
    sub = Subscriber(ctx)
    p = tail(str(path), "--once", "--connect", sub.bind_random(), "--state", str(state))
    assert p.wait() == 3, p.stderr
    assert p.lines == [f"zmqws tail: error: {message.format(state=state)}"], p.stderr
    assert not sub.take(0)


class _CountingWrites:
    """Wraps :meth:`_StateFile._write`: counts the writes, and checks each leaves a whole file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from zmqws import tail as tail_module

        self.writes = 0
        self.replaced = 0  # writes that put another file (inode) at the path
        inode = [0]
        original = tail_module._StateFile._write

        def write(state: object, text: str) -> None:
            original(state, text)
            self.writes += 1
            path = Path(state.path)  # type: ignore[attr-defined]
            self.replaced += path.stat().st_ino != inode[0]
            inode[0] = path.stat().st_ino
            assert path.read_text() == text and not Path(f"{path}.tmp").exists()

        monkeypatch.setattr(tail_module._StateFile, "_write", write)


def test_the_state_is_replaced_whole_and_saved_a_bounded_number_of_times(
    ctx: Ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zmqws.tail import SAVE_INTERVAL

    counting = _CountingWrites(monkeypatch)
    sub = Subscriber(ctx, rcvhwm=0)
    endpoint = sub.bind_random()
    n = 100_000
    path, state = tmp_path / "fast.log", tmp_path / "tail.state"
    path.write_bytes(b"".join(b"line %06d of a fast log\n" % i for i in range(n)))
    settings = TailSettings(paths=(str(path),), connect=(endpoint,), host="n1", once=True,
                            linger=5, state=str(state))
    # A reader that looks at the state file all along never sees a partial one.
    stop = threading.Event()
    torn: list[bytes] = []

    def read_all_along() -> None:
        while not stop.is_set():
            try:
                data = state.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(data)
            except ValueError:
                torn.append(data)

    reader = threading.Thread(target=read_all_along, daemon=True)
    reader.start()
    codes: list[int] = []
    started = time.monotonic()
    runner = threading.Thread(target=lambda: codes.append(run(settings)), daemon=True)
    runner.start()
    try:
        sub.count(n, 60 * UNIT)
        runner.join(30 * UNIT)
    finally:
        stop.set()
        reader.join(10 * UNIT)
    elapsed = time.monotonic() - started
    assert codes == [0] and not torn
    assert [m.seq for m in sub.received] == list(range(1, n + 1))
    assert saved_seq(state, path) == n
    # Every SAVE_INTERVAL while lines flow, plus a few: at start, the first safe place, numbers
    # promised ahead (doubling, so a handful), and at exit. Never once per line or per batch.
    assert counting.writes <= elapsed / SAVE_INTERVAL + 20, (counting.writes, elapsed)
    assert counting.replaced == counting.writes  # a new file renamed in each time


def test_an_idle_tail_does_not_rewrite_its_state(
    ctx: Ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingWrites(monkeypatch)
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    path, state = tmp_path / "quiet.log", tmp_path / "tail.state"
    path.write_bytes(b"1\n2\n")
    settings = TailSettings(paths=(str(path),), connect=(endpoint,), host="n1", from_start=True,
                            poll_interval=0.02, linger=5, state=str(state))
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        sub.count(2, 10 * UNIT)
        wait_for(lambda: counting.writes > 0, 10 * UNIT, "a first save")
        time.sleep(0.5)  # let whatever follows the two lines be saved; then nothing changes
        before = counting.writes
        time.sleep(1.0)  # five save intervals and fifty polls with nothing new
        assert counting.writes == before
    finally:
        stop.set()
        thread.join(10 * UNIT)


def test_a_state_that_cannot_be_written_any_more_is_said_once_and_the_lines_go_on(
    ctx: Ctx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sub = Subscriber(ctx)
    endpoint = sub.bind_random()
    path, state = tmp_path / "app.log", tmp_path / "tail.state"
    path.write_bytes(b"")
    settings = TailSettings(paths=(str(path),), connect=(endpoint,), host="n1", from_start=True,
                            poll_interval=0.02, linger=5, state=str(state))
    blocker = Path(f"{state}.tmp")
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings,), kwargs={"stop": stop}, daemon=True)
    with caplog.at_level("INFO", logger="zmqws.tail"):
        thread.start()
        try:
            # Saved once the file is open; nothing more is saved until lines come.
            wait_for(lambda: state.exists() and str(path) in state.read_text(), 10 * UNIT,
                     "the file's entry in the state")
            blocker.mkdir()  # the next saves cannot write their temporary file
            with path.open("ab") as w:
                for i in range(1, 301):
                    w.write(b"line %d\n" % i)
                    w.flush()
                    if i % 100 == 0:
                        sub.count(i, 10 * UNIT)
            wait_for(lambda: "--state: cannot write" in caplog.text, 10 * UNIT, "the warning")
            blocker.rmdir()
            wait_for(lambda: "written again" in caplog.text, 10 * UNIT, "the state written again")
        finally:
            stop.set()
            thread.join(10 * UNIT)
    assert [m.data for m in sub.received] == [b"line %d" % i for i in range(1, 301)]
    assert caplog.text.count("--state: cannot write") == 1
    assert saved_seq(state, path) == 300


def test_with_a_multicast_endpoint_tail_warns_once_and_sends_without_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGM sends no subscriptions back: tail cannot wait for a receiver there. Stood in for by a
    Publisher that says it is multicast over TCP (this pyzmq may lack PGM; the real multicast
    test is elsewhere): with nobody listening, --once still sends every line and exits."""
    from zmqws import tail as tail_module
    from zmqws.publisher import Publisher

    class Multicast(Publisher):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.multicast = True

    monkeypatch.setattr(tail_module, "Publisher", Multicast)
    path = tmp_path / "a.log"
    path.write_bytes(b"1\n2\n3\n")
    settings = TailSettings(paths=(str(path),), bind=("tcp://127.0.0.1:*",), host="n1",
                            once=True, linger=0.1)
    started = time.monotonic()
    with caplog.at_level("INFO", logger="zmqws.tail"):
        assert run(settings) == 0
    assert time.monotonic() - started < 5 * UNIT
    assert caplog.text.count("multicast endpoint: PGM carries no subscriptions back") == 1
    assert "waiting for a subscriber" not in caplog.text
    assert "closing: 3 message(s) published" in caplog.text
