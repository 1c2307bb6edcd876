"""``zmqws tail``: follow files like ``tail -F`` and publish each line as one message.

One loop serves every file: each ``poll_interval`` it looks at each file once (an ``fstat`` of the
open descriptor, a ``pread`` of its first bytes and an ``os.stat`` of the path), reads what was
appended and publishes the complete lines. A file is followed *by name*, so the usual ways logs are
rotated all work:

* **rename and re-create** (logrotate's default): the path names another inode. The old descriptor
  is read to its end first, and kept until it has been quiet for one poll, because the writer may
  not have reopened its log yet; then the new file is opened at its start.
* **copytruncate**: the file is shorter than what was read, or its first bytes (up to :data:`HEAD`,
  4 KiB) are no longer those read, which also catches a file truncated and written again past the
  old offset between two polls. Reading starts again at offset 0.
* **a file that does not exist yet, or is deleted for a while**: the path is checked each poll and
  the file is read from its start when it appears.

By default each file is followed from its end, as ``tail -F`` does; when the file does not end with
a newline, the rest of its last line is skipped too (the line was there before tail, and its end
alone would be a fragment). ``--from-start`` reads what the files hold first; ``--once`` reads every
file from its start to its end, publishes the last line even without a newline, and exits.

Lines are bytes and are never decoded: a line is everything up to ``\\n``, without the ``\\n`` and
without a ``\\r`` just before it (CRLF files). A line whose newline has not been written yet is held
until it comes, so a line, or a UTF-8 character, split across two writes is published whole. Bytes
that are not UTF-8 are published as they are (consumers base64 them, docs/delivery.md).

Nothing is dropped while tail runs (DESIGN.md principle 4): :class:`~zmqws.publisher.Publisher` is
lossless here, it waits for a subscriber that wants the topic before each send and blocks when a
subscriber's queue is full. Each message is stamped with the source ``HOST:ABSOLUTE_PATH`` and that
source's sequence number, so a consumer can count gaps. The exception is multicast (``pgm://``,
``epgm://``): PGM sends no subscriptions back, so there is nobody to wait for; tail warns once and
sends each line at once, and PGM's own repair (within its recovery interval) is what is left.

``--state FILE`` saves, for each file, a place it reached: the file's identity and first bytes, the
offset of the end of a line handed over, and that line's sequence number, together. A restarted tail
(after a crash, ``kill -9`` included) goes on from there, with the same numbers for the same lines,
so what it sends again is recognised as duplicates by the aggregator (``zmqws consume``): each line
exactly once. The place saved trails what was handed to ZeroMQ by what ZeroMQ may still hold (its
queue is not the network), so a crash never skips a line; see :class:`_StateFile` and
docs/delivery.md for what is saved when, and the limits.

Limits, stated plainly:

* A held partial line is bounded by :data:`MAX_LINE`; past it, what is held is published as a line
  (cut at a UTF-8 character boundary when the bytes look like UTF-8) and a warning is logged.
* A file truncated and written again between two polls is noticed by its first bytes only: if the
  new content starts with the same bytes as the old (up to 4 KiB, or all that was read if less),
  and is already longer than what was read, it is taken for the old file grown, and its lines
  before the old offset are not read. Truncation while tail is reading the file (within one poll)
  may publish a fragment of the new content read from the old offset.
* After a rotation, bytes written to the old file once tail has moved on to the new one are not
  read.
* On stop, a partial line that never got its newline is not published (it is logged); with
  ``--state`` it is published by the next run once complete. Without ``--state``, lines appended
  while tail is not running are not published by the next run.
* With ``--state``, a crash before a file's first place is safe (its first ~200 lines ever sent)
  makes the next run send from line 1 again, which the aggregator takes for a restart: those lines
  are written twice (and reported). Later crashes only send duplicates, which it drops.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from .config import TailSettings
from .envelope import encode_meta
from .exceptions import ConfigError, StartupError
from .publisher import DEFAULT_SNDHWM, Publisher

__all__ = [
    "run",
    "Source",
    "sources",
    "format_topic",
    "State",
    "Event",
    "TRANSITIONS",
    "TransitionError",
    "transition",
    "LineSplitter",
    "FileFollower",
    "FileVersion",
    "Batch",
    "Checkpoint",
    "MAX_LINE",
    "HEAD",
]

log = logging.getLogger("zmqws.tail")

# 1 MiB: the gateway's default --max-outbound; a longer message would not reach a client anyway,
# and it bounds what one file can hold in memory while waiting for a newline (DESIGN.md principle 3).
MAX_LINE = 1 << 20
# 64 KiB per read(): a few hundred typical log lines per system call.
READ_CHUNK = 64 * 1024
# 1 MiB per file per poll: a file with a large backlog yields the loop to the other files (and to
# the stop flag) between batches, and bounds the lines held in memory at once.
READ_BUDGET = 1 << 20

# --state (see _StateFile). The first bytes of a file are its fingerprint: they tell a file
# truncated and written again from the one that was read, even once it is longer than before. One
# page: cheap to read again at every poll, long enough to hold the time stamps of the first lines.
HEAD = 4096
# 8 KiB per read() with --state: each read's lines end at a place that can be saved, so a place
# every 80 or so typical log lines, at a cost of one system call each.
STATE_READ_CHUNK = 8 * 1024
# Seconds between two saves while lines flow: a crash sends again at most this long's worth of
# lines (plus what ZeroMQ held), and two fsyncs five times a second cost nothing measurable.
SAVE_INTERVAL = 0.2
# SNDHWM with --state (ZeroMQ's default is 1,000, zmqws's 10,000): the place saved trails what was
# handed to ZeroMQ by this many messages plus one write batch (see _in_flight), so it bounds what a
# crash sends twice, and how early in a file's life a crash is recognised as one (docs/delivery.md).
# The kernel's socket buffers, megabytes on loopback, still smooth a consumer's pauses.
STATE_SNDHWM = 100
# Sequence numbers promised ahead at each save (at least; twice what the last interval used when
# more), so that a run that finds none of its saved places numbers on past every one used before.
RESERVE = 1000
# libzmq's out_batch_size (src/config.hpp): what its I/O thread takes from a queue for one write.
_ZMQ_OUT_BATCH = 8192


# -- what a file is published as -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One followed file and how its lines are published; built once at start-up.

    Attributes:
        path: the absolute path, followed by name across rotations.
        topic: the topic of every line of this file.
        name: the source stamped on every message, ``HOST:PATH``; its sequence numbers count from 1.
    """

    path: str
    topic: str
    name: str

    def __post_init__(self) -> None:
        if not os.path.isabs(self.path):
            raise ValueError(f"Source.path must be absolute, got {self.path!r}")
        if not self.topic:
            raise ValueError(f"Source.topic is empty for {self.path}: ZeroMQ topics must not be")


def format_topic(template: str, host: str, path: str) -> str:
    """Fill ``--topic``'s template for one file.

    Args:
        template: may use ``{host}``, ``{name}`` (the file's base name), ``{stem}`` (the base name
            without its last extension) and ``{path}`` (the absolute path).
        host: the host name.
        path: the file's path; made absolute here.

    Returns:
        The topic.
    """
    abspath = os.path.abspath(path)
    name = os.path.basename(abspath)
    stem = os.path.splitext(name)[0]
    return template.format(host=host, name=name, stem=stem, path=abspath)


def sources(paths: Sequence[str], template: str, host: str) -> list[Source]:
    """One :class:`Source` per distinct absolute path, in the order given.

    A path named twice is followed once: two followers of one file would publish every line twice
    under one source name, and their sequence numbers would interleave.

    Raises:
        ConfigError: the template gives an empty topic for a file.
    """
    seen: dict[str, Source] = {}
    for p in paths:
        abspath = os.path.abspath(p)
        if abspath in seen:
            continue
        topic = format_topic(template, host, abspath)
        if not topic:
            raise ConfigError(
                f"--topic: {template!r} gives an empty topic for {abspath}; a topic must not be "
                "empty (use {host}, {name}, {stem} and {path})"
            )
        seen[abspath] = Source(abspath, topic, f"{host}:{abspath}")
    return list(seen.values())


# -- the follower's lifecycle (STYLE rule 6) ------------------------------------------------------


class State(enum.Enum):
    """Where a :class:`FileFollower` is in its file's life."""

    WAITING = "waiting"  # no file open; the path is checked each poll until a regular file is there
    FOLLOWING = "following"  # the file at the path is open; appended bytes are read each poll
    ROTATED = "rotated"  # the path names another file or nothing; the old descriptor is drained
    TRUNCATED = "truncated"  # the open file shrank, or was rewritten; about to rewind to 0
    CLOSED = "closed"  # done: stopped, or read to its end with --once


class Event(enum.Enum):
    """What a :class:`FileFollower` saw, moving it from one :class:`State` to another."""

    OPENED = "opened"  # a regular file at the path was opened
    MOVED = "moved"  # the path no longer names the open file (renamed, deleted or replaced)
    RETURNED = "returned"  # the path names the open file again (renamed back)
    RELEASED = "released"  # the old file was read to its end and closed
    SHRANK = "shrank"  # the open file is shorter than the offset read (copytruncate)
    REPLACED = "replaced"  # its first bytes changed: truncated and written again past the offset
    REWOUND = "rewound"  # reading starts again at offset 0
    CLOSE = "close"  # tail stops, or --once read the file to its end


TRANSITIONS: Mapping[State, Mapping[Event, State]] = {
    State.WAITING: {Event.OPENED: State.FOLLOWING, Event.CLOSE: State.CLOSED},
    State.FOLLOWING: {
        Event.MOVED: State.ROTATED,
        Event.SHRANK: State.TRUNCATED,
        Event.REPLACED: State.TRUNCATED,
        Event.CLOSE: State.CLOSED,
    },
    State.ROTATED: {
        Event.RETURNED: State.FOLLOWING,
        Event.RELEASED: State.WAITING,
        Event.CLOSE: State.CLOSED,
    },
    State.TRUNCATED: {Event.REWOUND: State.FOLLOWING},
    State.CLOSED: {},
}
"""Every allowed transition: ``TRANSITIONS[state][event]`` is the next state.

Waiting for a subscriber is not a file state: the publisher is shared by every file, so that wait
belongs to the loop (it logs it), not to one follower.
"""


class TransitionError(RuntimeError):
    """An event happened in a state that does not allow it: a bug in :mod:`zmqws.tail`."""

    def __init__(self, event: Event, state: State, path: str = "") -> None:
        where = f" for {path}" if path else ""
        super().__init__(
            f"tail: event {event.name} is not allowed in state {state.name}{where} "
            f"(allowed: {', '.join(e.name for e in TRANSITIONS[state]) or 'none'})"
        )
        self.event = event
        self.state = state


def transition(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``.

    Raises:
        TransitionError: ``event`` is not allowed in ``state``.
    """
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise TransitionError(event, state) from None


# -- bytes to lines (pure) ----------------------------------------------------------------------


def _utf8_cut(buf: bytes | bytearray, limit: int) -> int:
    """The largest cut ≤ ``limit`` that does not split a UTF-8 sequence (``limit`` if none fits)."""
    for back in range(1, 4):
        i = limit - back
        if i <= 0:
            break
        b = buf[i]
        if b & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        if b >= 0xC0:  # a lead byte: is its sequence complete before the limit?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return i if back < need else limit
        break  # ASCII: the cut is clean
    return limit


class LineSplitter:
    """Splits appended bytes into lines and holds the unterminated rest until its newline comes.

    A line ends at ``\\n``; the ``\\n`` and a ``\\r`` just before it are removed. No decoding: the
    bytes of a line are the bytes of the file.

    Args:
        max_line: the longest line published whole. A held partial line that grows past it is
            published in pieces of at most ``max_line`` bytes (cut before an incomplete UTF-8
            character when the bytes look like UTF-8), and so is a longer complete line; ``cut``
            counts those lines.

    Attributes:
        discarding: drop bytes up to and including the next newline (the rest of a line that was
            already in the file when following began from its end).
        cut: how many lines were published in pieces.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError(f"max_line must be at least 4 bytes (a UTF-8 character), not {max_line}")
        self.max_line = max_line
        self.discarding = False
        self.cut = 0
        self._cutting = False  # the held line was already cut once (count it once)
        self._held = bytearray()

    @property
    def held(self) -> int:
        """Bytes of the partial line held, waiting for its newline."""
        return len(self._held)

    def feed(self, data: bytes) -> list[bytes]:
        """Take appended bytes; return the lines they complete, in order."""
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            self.discarding = False
            data = data[nl + 1 :]
        parts = data.split(b"\n")
        rest = parts.pop()
        out: list[bytes] = []
        for i, line in enumerate(parts):
            already_cut = False
            if i == 0:
                if self._held:
                    line = bytes(self._held) + line
                    self._held.clear()
                already_cut, self._cutting = self._cutting, False
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                self.cut += not already_cut
                out.extend(self._pieces(line))
            else:
                out.append(line)
        self._held += rest
        # A trailing \r may be the first half of a CRLF: it does not count toward the bound, or a
        # line of exactly max_line bytes split between its \r and \n would be cut (and an empty
        # line published for the \r).
        held = self._held
        if len(held) - held.endswith(b"\r") > self.max_line:
            self.cut += not self._cutting
            self._cutting = True
            while len(held) - held.endswith(b"\r") > self.max_line:
                n = _utf8_cut(held, self.max_line)
                out.append(bytes(held[:n]))
                del held[:n]
        return out

    def _pieces(self, line: bytes) -> Iterator[bytes]:
        while len(line) > self.max_line:
            n = _utf8_cut(line, self.max_line)
            yield line[:n]
            line = line[n:]
        yield line

    def flush(self) -> list[bytes]:
        """End the current line: return the held partial line, if any, as a line (as is)."""
        self.discarding = self._cutting = False
        if not self._held:
            return []
        line = bytes(self._held)
        self._held.clear()
        return [line]

    def clear(self) -> int:
        """Forget the held partial line; return how many bytes it had."""
        n = len(self._held)
        self._held.clear()
        self.discarding = self._cutting = False
        return n


# -- where lines come from: versions of a file, and saved places (--state) -----------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A place in one content of a file, saved by ``--state``: the next line there is ``seq + 1``.

    Attributes:
        dev: the file's device when the place was saved (kept for people: a device number may
            change across a reboot, so a file is recognised by its inode and first bytes).
        ino: the file's inode.
        offset: a byte offset in it, at the end of what was read into lines (a line boundary, or
            the end of a piece of a line longer than :data:`MAX_LINE`).
        seq: the source's sequence number of the last line before ``offset`` (0: none yet).
        head_len: how many of the file's first bytes were read when the place was taken.
        head_sha256: their SHA-256: a file whose first bytes differ holds another content, even
            under the same inode (copytruncate, then written again).
    """

    dev: int
    ino: int
    offset: int
    seq: int
    head_len: int
    head_sha256: str

    def to_json(self) -> dict[str, int | str]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "seq": self.seq,
                "head_len": self.head_len, "head_sha256": self.head_sha256}

    @classmethod
    def from_json(cls, obj: object) -> Checkpoint:
        """Read one checkpoint of a state file.

        Raises:
            ValueError: ``obj`` is not one.
        """
        if not isinstance(obj, dict):
            raise ValueError(f"a checkpoint must be an object, not {obj!r}")
        try:
            ints = [obj[k] for k in ("dev", "ino", "offset", "seq", "head_len")]
            digest = obj["head_sha256"]
        except KeyError as exc:
            raise ValueError(f"a checkpoint lacks {exc}") from None
        if not all(type(v) is int and v >= 0 for v in ints) or not isinstance(digest, str):
            raise ValueError(f"a checkpoint has a field of the wrong type: {obj!r}")
        return cls(*ints[:4], ints[4], digest)

    def found_in(self, fd: int, st: os.stat_result) -> bool:
        """Whether the open file ``fd`` (``st``: its ``fstat``) still holds this place."""
        if st.st_ino != self.ino or st.st_size < self.offset:
            return False
        head = os.pread(fd, self.head_len, 0)
        return len(head) == self.head_len and _digest(head) == self.head_sha256


class FileVersion:
    """One content of a followed path: an open file, where its lines start, and its first bytes.

    A follower starts a new version each time it opens a file, and each time the open file turns
    out to be truncated or rewritten. Every :class:`Batch` of lines names its version, so a place
    saved by ``--state`` always names the content its offset belongs to.

    Attributes:
        dev: the file's device.
        ino: the file's inode.
        start: the offset where the first line read from this content starts.
        head: its first ``min(HEAD, bytes read)`` bytes, as read (they grow with the first reads).
        resume: the saved place this content was recognised as (``--state``), else None.
        lost_before: ``--state`` had saved places ahead that no file holds any more, so this
            content comes after lines that cannot be read again (their numbers are unknown).
    """

    __slots__ = ("dev", "ino", "start", "head", "resume", "lost_before")

    def __init__(
        self, dev: int, ino: int, start: int, head: bytes, resume: Checkpoint | None = None
    ) -> None:
        self.dev = dev
        self.ino = ino
        self.start = start
        self.head = head
        self.resume = resume
        self.lost_before = False

    def checkpoint(self, offset: int, seq: int) -> Checkpoint:
        """The place ``offset`` in this content, reached with line ``seq``."""
        return Checkpoint(self.dev, self.ino, offset, seq, len(self.head), _digest(self.head))


class Batch:
    """Lines read in one go from one :class:`FileVersion`; ``end`` is the offset after the last.

    A batch holds the lines of at most one read chunk (``read_chunk`` bytes), so the end of each
    batch is a place that ``--state`` can save.
    """

    __slots__ = ("version", "lines", "end")

    def __init__(self, version: FileVersion, lines: list[bytes], end: int) -> None:
        self.version = version
        self.lines = lines
        self.end = end


def _lines_of(batches: list[Batch]) -> list[bytes]:
    if len(batches) == 1:
        return batches[0].lines
    return [line for b in batches for line in b.lines]


# -- one file ------------------------------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _stat(path: str) -> os.stat_result | None:
    """``os.stat(path)``, or None when the path cannot be looked at (missing, no permission)."""
    try:
        return os.stat(path)
    except OSError:
        return None


class FileFollower:
    """Follows one path by name, as ``tail -F`` does; returns its complete lines.

    The follower does the file I/O and nothing else: :meth:`poll` returns lines (and
    :meth:`poll_batches` the same lines with where they were read), the caller publishes them.
    See :data:`TRANSITIONS` for its lifecycle.

    Args:
        source: the file and how it is published.
        max_line: see :class:`LineSplitter`.
        read_budget: at most this many bytes are read per :meth:`poll` or :meth:`read_available`.
        read_chunk: bytes per ``read()``; each chunk's lines make one :class:`Batch`.

    Attributes:
        offset: how far the open file was read.
        version: the content being read (None before a file was opened).
        expect: places saved by ``--state`` still ahead: a file opened later that holds one of them
            is read from it (and its lines numbered from it), not from its start.
    """

    def __init__(
        self,
        source: Source,
        *,
        max_line: int = MAX_LINE,
        read_budget: int = READ_BUDGET,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        self.source = source
        self.state = State.WAITING
        self.offset = 0
        self.version: FileVersion | None = None
        self.expect: list[Checkpoint] = []
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._lines = LineSplitter(max_line)
        self._budget = read_budget
        self._chunk = read_chunk
        self._cut_logged = 0
        self._open_error = ""
        self._out: list[Batch] = []
        self._elsewhere = False  # reading a file renamed away from the path (--state)
        self._lost = False  # places in expect were given up: the next version comes after a loss

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def discarding(self) -> bool:
        """Skipping the rest of a line that was in the file before tail (started at its end)."""
        return self._lines.discarding

    def _go(self, event: Event) -> None:
        try:
            self.state = transition(self.state, event)
        except TransitionError:
            raise TransitionError(event, self.state, self.path) from None

    # -- opening and closing --

    def _open(self, *, at_end: bool) -> OSError | None:
        """Open the path; return None on success, else the error that kept it from being opened."""
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as exc:
            return exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            self._begin(fd, st, st.st_size if at_end else 0, self._recognise(fd, st))
        except OSError as exc:
            os.close(fd)
            return exc
        self._go(Event.OPENED)
        return None

    def _recognise(self, fd: int, st: os.stat_result) -> Checkpoint | None:
        """The first place still ahead (``expect``) that the open file holds, if any."""
        for i, cp in enumerate(self.expect):
            if cp.found_in(fd, st):
                del self.expect[: i + 1]
                log.info("%s: the file saved in --state at line %d: reading on from offset %d",
                         self.path, cp.seq, cp.offset)
                return cp
        return None

    def _begin(
        self, fd: int, st: os.stat_result, offset: int, resume: Checkpoint | None = None
    ) -> None:
        """Start a new version: the file open as ``fd``, read from ``offset`` (or ``resume``)."""
        discarding = False
        if resume is not None:
            offset = resume.offset
        elif offset:
            # Mid-line: the start of this line was in the file before us, so its end is not ours.
            discarding = os.pread(fd, 1, offset - 1) != b"\n"
        head = os.pread(fd, min(HEAD, offset), 0) if offset else b""
        os.lseek(fd, offset, os.SEEK_SET)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self.offset = offset
        self._lines.discarding = discarding
        self.version = FileVersion(st.st_dev, st.st_ino, offset, head, resume)
        if resume is None and self._lost:
            self.version.lost_before = True
        self._lost = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start(self, *, from_start: bool, resume: Sequence[Checkpoint] = ()) -> OSError | None:
        """Open the file at its start, its end, or a saved place; if it cannot be opened, wait.

        Args:
            from_start: read what the file holds already. Else start at its end; when the file
                does not end with a newline, the rest of its last line is skipped too (that line
                was there before us, and publishing its end alone would publish a fragment).
            resume: places saved by ``--state``, oldest first. The first one still held by a file
                (the one at the path, or one renamed in the same directory) is where reading
                starts; the later ones go to :attr:`expect`. When none is held any more, the file
                at the path is new since they were saved and is read from its start.

        Returns:
            None, or the error that kept the file from being opened (the follower is then
            ``WAITING`` for it).
        """
        if resume:
            self.expect = list(resume)
            err = self._open_next()
        else:
            err = self._open(at_end=not from_start)
        self._open_error = "" if err is None else (err.strerror or "")
        return err

    def _open_next(self) -> OSError | None:
        """Open the next file to read: the first place still ahead (:attr:`expect`) that a file
        holds, the one at the path or one renamed beside it; else the file at the path, from its
        start (the places ahead are then given up: their files are gone)."""
        for i, cp in enumerate(self.expect):
            found = self._find(cp)
            if found is None:
                continue
            fd, st, where = found
            del self.expect[: i + 1]
            self._begin(fd, st, cp.offset, cp)
            self._go(Event.OPENED)
            self._elsewhere = where != self.path
            log.info("%s: going on after line %d, at offset %d%s (--state)", self.path, cp.seq,
                     cp.offset, f" of {where}, renamed since" if self._elsewhere else "")
            return None
        if self.expect:
            self.expect.clear()
            self._lost = True
        return self._open(at_end=False)

    def _find(self, cp: Checkpoint) -> tuple[int, os.stat_result, str] | None:
        """Open the file that still holds ``cp``: the one at the path, or a rotated one beside it."""
        st = _stat(self.path)
        candidates = [self.path]
        if st is None or st.st_ino != cp.ino:
            try:
                with os.scandir(os.path.dirname(self.path)) as entries:
                    candidates = [e.path for e in entries if e.inode() == cp.ino]
            except OSError:
                candidates = []
        for path in candidates:
            try:
                fd = os.open(path, _OPEN_FLAGS)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and cp.found_in(fd, st):
                    return fd, st, path
            except OSError:
                pass
            os.close(fd)
        return None

    def close(self) -> None:
        """Stop following. A partial line without its newline is dropped (and logged)."""
        if self.state is State.CLOSED:
            return
        dropped = self._lines.clear()
        if dropped:
            log.info("%s: stopped with a partial line of %d bytes unpublished", self.path, dropped)
        self._close_fd()
        self._go(Event.CLOSE)

    def finish(self) -> list[bytes]:
        """End of input (``--once``): return the unterminated last line, if any, and close."""
        return _lines_of(self.finish_batches())

    def finish_batches(self) -> list[Batch]:
        """:meth:`finish`, as batches."""
        self._emit(self._lines.flush())
        self._close_fd()
        self._go(Event.CLOSE)
        return self._take()

    def move_on(self) -> bool:
        """``--once``, at the end of a file resumed in after it was renamed away (``--state``):
        go on with the file now at the path. False when there is none to go on with."""
        if not self._elsewhere or self.state is not State.FOLLOWING:
            return False
        self._elsewhere = False
        self._go(Event.MOVED)
        self._emit(self._lines.flush())  # the old file's last line ends with it
        self._close_fd()
        self._go(Event.RELEASED)
        return self._open_next() is None

    # -- reading --

    def _emit(self, lines: list[bytes]) -> None:
        if lines:
            assert self.version is not None
            self._out.append(Batch(self.version, lines, self.offset - self._lines.held))

    def _take(self) -> list[Batch]:
        out, self._out = self._out, []
        return out

    def read_available(self) -> tuple[list[bytes], bool]:
        """Read what the open file has, up to the read budget.

        Returns:
            The complete lines read, and True if the budget ran out before the end of the file.
        """
        batches, more = self.read_batches()
        return _lines_of(batches), more

    def read_batches(self) -> tuple[list[Batch], bool]:
        """:meth:`read_available`, as batches."""
        _, more = self._read()
        return self._take(), more

    def _read(self) -> tuple[int, bool]:
        fd = self._fd
        version = self.version
        assert fd is not None and version is not None, (
            f"tail: read in state {self.state.name} with no file open"
        )
        splitter = self._lines
        out = self._out
        budget = self._budget
        got = 0
        while got < budget:
            chunk = os.read(fd, min(self._chunk, budget - got))
            if not chunk:
                break
            at = self.offset
            if at < HEAD:
                version.head += chunk[: HEAD - at]
            got += len(chunk)
            self.offset = at + len(chunk)
            discarding = splitter.discarding
            lines = splitter.feed(chunk)
            if discarding and not splitter.discarding:
                version.start = at + chunk.index(b"\n") + 1
            if lines:
                out.append(Batch(version, lines, self.offset - splitter.held))
        if splitter.cut != self._cut_logged:
            self._cut_logged = splitter.cut
            log.warning(
                "%s: a line longer than %d bytes was published in pieces",
                self.path, splitter.max_line,
            )
        return got, got >= budget

    def poll(self) -> tuple[list[bytes], bool]:
        """Look at the file once: open it, read what was appended, notice rotation or truncation.

        Returns:
            The complete lines read, and True if the caller should poll again without waiting
            (more to read, or a new file to open).
        """
        batches, more = self.poll_batches()
        return _lines_of(batches), more

    def poll_batches(self) -> tuple[list[Batch], bool]:
        """:meth:`poll`, as batches."""
        if self.state is State.WAITING:
            err = self._open_next()
            if err is not None:
                # Say it once per cause; a missing file is the ordinary case after a deletion.
                why = err.strerror or ""
                if why != self._open_error and not isinstance(err, FileNotFoundError):
                    log.warning("cannot open %s (%s); still waiting for it", self.path, why)
                self._open_error = why
                return [], False
            self._open_error = ""
            log.info("%s: a file is there now, following it from its start", self.path)
        if self.state is State.FOLLOWING:
            more = self._poll_following()
        elif self.state is State.ROTATED:
            more = self._poll_rotated()
        else:
            # poll() after close(), or inside a transient state: a bug of ours.
            raise TransitionError(Event.OPENED, self.state, self.path)
        return self._take(), more

    def _poll_following(self) -> bool:
        fd = self._fd
        assert fd is not None and self.version is not None
        size = os.fstat(fd).st_size
        head = self.version.head
        if size < self.offset:
            self._rewind(Event.SHRANK, f"truncated ({size} bytes, {self.offset} were read)")
        elif head and os.pread(fd, len(head), 0) != head:
            self._rewind(Event.REPLACED, "truncated and written again (its first bytes changed)")
        _, more = self._read()
        if more:
            return True
        st = _stat(self.path)
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            self._go(Event.MOVED)
            log.info(
                "%s was rotated (%s): reading the old file to its end",
                self.path, "gone" if st is None else "a new file is there",
            )
        return False

    def _rewind(self, event: Event, why: str) -> None:
        fd = self._fd
        assert fd is not None
        self._go(event)
        # The line held belonged to the content that was cut away: it ends here.
        self._emit(self._lines.flush())
        log.info("%s was %s: reading it again from its start", self.path, why)
        st = os.fstat(fd)
        self._begin(fd, st, 0, self._recognise(fd, st))
        self._go(Event.REWOUND)

    def _poll_rotated(self) -> bool:
        assert self._fd is not None
        got, more = self._read()
        if more or got:
            # The writer still appends to the old file (it has not reopened its log yet).
            return more
        st = _stat(self.path)
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            self._go(Event.RETURNED)
            log.info("%s is back at its path: following it on", self.path)
            return False
        deleted = os.fstat(self._fd).st_nlink == 0
        if st is None and not deleted:
            return False  # renamed away and no new file yet: keep reading the old one
        # The old file is read to its end and quiet: its last line ends with it.
        self._emit(self._lines.flush())
        self._close_fd()
        self._elsewhere = False
        self._go(Event.RELEASED)
        if st is None:
            log.info("%s was deleted: waiting for a new file at its path", self.path)
            return False
        return True  # open the new file without waiting for the next poll


# -- the loop ------------------------------------------------------------------------------------


class _Interrupted(BaseException):
    """Raised by the signal handler to leave a send that blocks on a full queue (backpressure)."""


class _Stopper:
    """SIGINT/SIGTERM set :attr:`event`; inside :meth:`interruptible` they also raise.

    The loop checks the event between polls and between lines, and waits on it between polls. A
    send blocks for as long as a subscriber's queue is full (lossless: backpressure, never a drop),
    so a signal during one raises :class:`_Interrupted` to leave it. Nowhere else does the handler
    raise: in particular not while the publisher closes, where a signal only ends the linger early
    (libzmq's ``zmq_ctx_term`` returns on EINTR); :attr:`signals` counts them, so the close can
    tell that it was cut short.
    """

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.signals = 0
        self._interruptible = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if not self.event.is_set():
            log.info("%s: stopping", signal.Signals(signum).name)
        self.event.set()
        if self._interruptible:
            self._interruptible = False
            raise _Interrupted

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM (main thread only), restoring the previous handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            self._interruptible = False
            for s, h in previous.items():
                if h is not None:  # None: set outside Python, cannot be restored from here
                    signal.signal(s, h)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


class _Feed:
    """One file's way out: its lines read but not yet published, and whether they wait for a subscriber.

    Waiting for a subscriber is per file, not a :class:`State`: a file can be rotated and unwanted at
    once, and the wait ends when a subscriber comes, whatever the file does. While its lines wait,
    the file is not read further (the file itself is the buffer, so nothing is lost and memory stays
    bounded by one read budget), and the other files go on: a topic nobody wants does not hold back
    the files whose topics are wanted.

    The feed numbers the lines it hands over (``seq``), and with ``--state`` it keeps what
    :class:`_StateFile` saves: the place reached by each batch handed over (``marks``), the last
    place known to be out of this process (``safe``), the contents started after it
    (``boundaries``), and the numbers promised not to be used before the next save (``reserved``).
    """

    __slots__ = ("follower", "queue", "waiting", "done", "seq", "index", "version", "marks",
                 "safe", "boundaries", "reserved", "saved_seq")

    def __init__(self, follower: FileFollower) -> None:
        self.follower = follower
        self.queue: deque[Batch] = deque()
        self.waiting = False
        self.done = False  # --once: read to its end and closed
        self.seq = 0  # the number of the last line handed over
        self.index = 0  # lines of queue[0] already handed over
        self.version: FileVersion | None = None  # where the last line handed over came from
        self.marks: deque[tuple[int, FileVersion, int]] = deque()  # (seq, version, end)
        self.safe: Checkpoint | None = None
        self.boundaries: list[Checkpoint] = []
        self.reserved = sys.maxsize  # no --state: no promise to keep
        self.saved_seq = 0

    def resume(self, reserved: int) -> None:
        """Take over what ``--state`` saved for this file, once the follower started from it."""
        self.reserved = self.saved_seq = reserved
        version = self.follower.version
        if version is not None and version.resume is not None:
            self.seq = self.saved_seq = version.resume.seq
            self.safe = version.resume
            self.boundaries = list(self.follower.expect)

    def fill(self, once: bool) -> bool:
        """Read the next lines into the queue; True if there is more to read right away."""
        f = self.follower
        if once:
            batches, more = f.read_batches()
            if not more:
                if f.move_on():
                    more = True
                else:
                    batches += f.finish_batches()
                    self.done = True
        else:
            batches, more = f.poll_batches()
        self.queue.extend(batches)
        return more

    def begin(self, state: _StateFile) -> None:
        """At start-up (``--state``): note where a file opened afresh begins, before any line of
        it goes out, so that a crash before its first line resumes there (the lines written
        while tail was down are not skipped). Not when it begins mid-line: the place comes with
        the line's end."""
        f = self.follower
        if f.version is not None and f.version.resume is None and not f.discarding:
            self.enter(f.version, state, save=False)

    def enter(self, version: FileVersion, state: _StateFile | None, *, save: bool = True) -> None:
        """The next line comes from ``version``, a content no line was handed over from yet."""
        self.version = version
        if version.resume is not None:
            # A saved place: numbering goes on from it (the same number for the same line).
            self.seq = version.resume.seq
            if version.resume in self.boundaries:
                del self.boundaries[: self.boundaries.index(version.resume)]
            return
        if state is None:
            return
        if version.lost_before:
            # The contents saved ahead are gone, and with them the numbers their lines had: go
            # on past every number the last run may have used, so no new line is taken for a
            # duplicate. The aggregator reports the jump as a gap (an upper bound of the loss).
            log.warning(
                "%s: the file(s) saved in --state after line %d are gone (rotated away and "
                "deleted, or truncated, while tail was stopped): their lines that no subscriber "
                "got are lost; numbering goes on after %d", self.follower.path, self.seq,
                self.reserved,
            )
            self.seq = max(self.seq, self.reserved)
            self.boundaries = []
        # Saved before the first line of it goes out: after a crash, the next run numbers this
        # content's lines from here, whatever became of the content before it.
        self.boundaries = [b for b in self.boundaries if b.seq < self.seq]
        self.boundaries.append(version.checkpoint(version.start, self.seq))
        if save:
            state.save()

    def settle(self, lag: int) -> None:
        """The places followed by at least ``lag`` more lines of this file are out of the process.

        Counted in this file's own lines, not in every message sent: a later message of another
        topic may go to other subscribers' queues, and pushes nothing out of this file's."""
        marks = self.marks
        last = None
        while marks and marks[0][0] <= self.seq - lag:
            last = marks.popleft()
        if last is not None:
            seq, version, end = last
            self.safe = version.checkpoint(end, seq)
            self.boundaries = [b for b in self.boundaries if b.seq >= seq]

    def entry(self) -> tuple[dict[str, object], int]:
        """What the state file holds for this file, and the numbers it reserves."""
        reserved = max(self.reserved, self.seq + max(RESERVE, 2 * (self.seq - self.saved_seq)))
        chain = ([self.safe] if self.safe is not None else []) + self.boundaries
        return {
            "source": self.follower.source.name,
            "reserved": reserved,
            "checkpoints": [cp.to_json() for cp in chain],
        }, reserved

    def wanted(self, publisher: Publisher) -> bool:
        """Whether some subscriber wants this file's topic now (logs when that changes)."""
        topic = self.follower.source.topic
        if publisher.wait_for_subscriber(topic, 0):
            if self.waiting:
                self.waiting = False
                log.info("a subscriber wants topic %r: publishing %s", topic, self.follower.path)
            return True
        if not self.waiting:
            self.waiting = True
            log.info("waiting for a subscriber to topic %r (%s)", topic, self.follower.path)
        return False


class _StateFile:
    """``--state FILE``: where each file was handed over, saved atomically, read back at start.

    The file is JSON, one entry per followed path::

        {"zmqws_tail_state": 1, "files": {"/var/log/app.log": {
            "source": "web01:/var/log/app.log", "reserved": 3000,
            "checkpoints": [{"dev": 2049, "ino": 1311, "offset": 18342, "seq": 120,
                             "head_len": 4096, "head_sha256": "9f86d0..."}]}}}

    The first checkpoint is the place to resume from; any further ones are contents (a new file
    after a rotation, or the same file after a truncation) started after it, each saved *before*
    its first line was handed over, so a restart numbers their lines as the crashed run did.
    ``reserved``: numbers up to it may have been used; a run never hands over a larger one
    before it saved a larger ``reserved``. A restart that finds none of the checkpoints in any
    file numbers on after it, so a new line is never taken for a duplicate.

    What "handed over" means, and why the saved place trails it: :meth:`Publisher.send` returned,
    so ZeroMQ holds the line in its queue for each subscriber, which is not the network. A
    ``kill -9`` takes that queue with it. So the place saved is the last one after which
    :attr:`lag` more lines *of the same file* were handed over: ZeroMQ holds at most ``SNDHWM``
    messages per subscriber (the send blocks past it, XPUB_NODROP) plus one 8 KiB write batch of
    its I/O thread, and the later lines of a file go to the same subscribers' queues as its
    earlier ones (same topic), so those lines had left the process, for the kernel, which sends
    what it holds even after the process died. Lines after the saved place are sent again by the next run, with
    the same numbers: duplicates, which the aggregator drops. At a clean exit the publisher's
    close waits until everything went out (within ``--linger``), and then the place saved is the
    very last.

    Saves: every :data:`SAVE_INTERVAL` seconds while lines flow, at once when a new content
    starts, when a file's first place becomes safe, before a number past ``reserved``, and at
    exit. Each save writes a temporary file, ``fsync``\\ s it, renames it over the state file and
    ``fsync``\\ s the directory: after a crash the file is the old one or the new one, never a mix.
    A lock file (``FILE.lock``) keeps a second tail from using the same state.
    """

    VERSION = 1

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.entries: dict[str, dict[str, object]] = {}
        self.feeds: list[_Feed] = []
        self.lag = 0
        self._lock_fd: int | None = None
        self._written = ""
        self._last = 0.0
        self._error = ""

    # -- start and stop --

    def open(self) -> None:
        """Lock the state, read it, and check that it can be written.

        Raises:
            StartupError: it is locked by another tail, unreadable, not a state file, or its
                directory cannot be written.
        """
        try:
            fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StartupError(f"--state: cannot create {self.path}.lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StartupError(f"--state: {self.path} is in use by another zmqws tail") from None
        self._lock_fd = fd
        self.entries = self._load()
        try:
            self._write(self._text())
        except OSError as exc:
            raise StartupError(f"--state: cannot write {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StartupError(f"--state: cannot read {self.path}: {exc.strerror}") from None
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or obj.get("zmqws_tail_state") != self.VERSION:
                raise ValueError(f'no "zmqws_tail_state": {self.VERSION}')
            files = obj["files"]
            if not isinstance(files, dict):
                raise ValueError('"files" is not an object')
            for path, entry in files.items():
                self._parse(entry)
        except (ValueError, KeyError, TypeError) as exc:
            raise StartupError(
                f"--state: {self.path} is not a zmqws tail state file ({exc}); move it away to "
                "start afresh"
            ) from None
        return files

    @staticmethod
    def _parse(entry: object) -> tuple[list[Checkpoint], int]:
        if not isinstance(entry, dict):
            raise ValueError(f"an entry must be an object, not {entry!r}")
        reserved = entry.get("reserved", 0)
        if type(reserved) is not int or reserved < 0:
            raise ValueError(f"reserved must be a number, not {reserved!r}")
        checkpoints = entry.get("checkpoints", [])
        if not isinstance(checkpoints, list):
            raise ValueError("checkpoints must be a list")
        return [Checkpoint.from_json(c) for c in checkpoints], reserved

    def saved(self, path: str) -> tuple[list[Checkpoint], int]:
        """The checkpoints saved for ``path`` (oldest first) and its reserved numbers."""
        entry = self.entries.get(path)
        return ([], 0) if entry is None else self._parse(entry)

    # -- saving --

    def attach(self, feeds: list[_Feed], lag: int) -> None:
        """Take the files, once they are open, and save where each begins."""
        self.feeds = feeds
        self.lag = lag
        for feed in feeds:
            feed.begin(self)
        self.save()

    def handed_over(self, feed: _Feed, batch: Batch) -> None:
        """A batch of ``feed`` was handed over: note its place, and save if it is time."""
        feed.marks.append((feed.seq, batch.version, batch.end))
        if time.monotonic() - self._last >= SAVE_INTERVAL or (
            (feed.safe is None or feed.safe.seq == 0) and feed.marks[0][0] <= feed.seq - self.lag
        ):
            self.save()

    def tick(self) -> None:
        """Save if it is time (the loop calls it between polls)."""
        if time.monotonic() - self._last >= SAVE_INTERVAL:
            self.save()

    def save(self, *, flushed: bool = False) -> None:
        """Save every file's place now; ``flushed``: everything handed over went out."""
        reserved = []
        for feed in self.feeds:
            feed.settle(0 if flushed else self.lag)
            entry, r = feed.entry()
            self.entries[feed.follower.path] = entry
            reserved.append(r)
        self._last = time.monotonic()
        text = self._text()
        if text != self._written:
            try:
                self._write(text)
            except OSError as exc:
                # Lines go on: losing the state must not stop the logs. Say it (once per cause).
                why = f"{exc.strerror or exc}"
                if why != self._error:
                    log.warning("--state: cannot write %s (%s): after a crash, lines may be sent "
                                "twice or skipped until it can", self.path, why)
                self._error = why
            else:
                if self._error:
                    log.info("--state: %s written again", self.path)
                self._error = ""
        for feed, r in zip(self.feeds, reserved):
            feed.reserved = r
            feed.saved_seq = feed.seq

    def _text(self) -> str:
        return json.dumps({"zmqws_tail_state": self.VERSION, "files": self.entries},
                          indent=1, sort_keys=True) + "\n"

    def _write(self, text: str) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = memoryview(text.encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        folder = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        self._written = text


def _in_flight(sources: Sequence[Source], sndhwm: int) -> int:
    """How many messages ZeroMQ may still hold in this process once a send returned: the queue of
    one subscriber, plus what its I/O thread took for its next write (libzmq's ``out_batch_size``,
    8 KiB, of the smallest message these sources can send: empty data)."""
    now = time.time()
    smallest = min(len(s.topic.encode()) + len(encode_meta(s.name, 1, now)) for s in sources)
    return sndhwm + _ZMQ_OUT_BATCH // (smallest + 6) + 1


def _pump(
    feeds: Sequence[_Feed],
    publisher: Publisher,
    stopper: _Stopper,
    poll_interval: float,
    once: bool,
    state: _StateFile | None = None,
) -> None:
    """The loop: read each file in turn, publish its lines if its topic is wanted, wait, repeat.

    Returns when stopped, or with ``once`` when every file was read to its end and published.
    """
    stop = stopper.event
    send = publisher.send
    while not stop.is_set():
        busy = False
        pending = False
        for feed in feeds:
            if not feed.queue and not feed.done:
                busy = feed.fill(once) or busy
            if not feed.queue:
                pending = pending or not feed.done
                continue
            pending = True
            if not feed.wanted(publisher):
                continue
            topic, name = feed.follower.source.topic, feed.follower.source.name
            # A send blocks while a subscriber's queue is full (backpressure): only a signal ends it.
            with stopper.interruptible():
                while feed.queue:
                    batch = feed.queue[0]
                    if batch.version is not feed.version:
                        feed.enter(batch.version, state)
                    lines = batch.lines
                    i = feed.index
                    try:
                        while i < len(lines):
                            if stop.is_set():
                                return
                            seq = feed.seq + 1
                            if seq > feed.reserved and state is not None:
                                state.save()  # numbers past the promise: promise more first
                            send(topic, lines[i], source=name, seq=seq)
                            feed.seq = seq
                            i += 1
                    finally:
                        feed.index = i
                    feed.queue.popleft()
                    feed.index = 0
                    if state is not None:
                        state.handed_over(feed, batch)
            busy = busy or not feed.done
        if state is not None:
            state.tick()
        if once and not pending:
            return
        if busy:
            continue
        waiting = next((feed for feed in feeds if feed.waiting), None)
        if waiting is None:
            stop.wait(poll_interval)
        else:
            # Wake as soon as a subscriber comes for the first file that waits (the usual case is
            # one topic), else after poll_interval as usual; a signal ends the wait at once.
            with stopper.interruptible():
                publisher.wait_for_subscriber(waiting.follower.source.topic, poll_interval)


def run(settings: TailSettings, *, stop: threading.Event | None = None) -> int:
    """Run ``zmqws tail``: publish the lines of ``settings.paths`` until stopped (``--once``: read).

    ``--once`` reads every file from its start (``--from-start`` is implied), publishes every line
    including an unterminated last one, then closes the publisher, which waits up to
    ``settings.linger`` seconds for everything to be handed to the network. Otherwise files are
    followed (from their end unless ``settings.from_start``) until SIGINT or SIGTERM, or ``stop``.
    With ``settings.state``, a file the state knows is read from where it was left instead (see
    :class:`_StateFile`), and the state is saved as lines go out and at exit.

    Args:
        settings: validated settings.
        stop: set it to stop, for callers that run tail in a thread. Without it, SIGINT and
            SIGTERM stop tail (handlers are installed only in the main thread, and removed on
            return). A signal that comes while the publisher closes ends its linger: the second
            signal forces the exit.

    Returns:
        0, also when stopped by a signal.

    Raises:
        ConfigError: a malformed endpoint, or a topic template that gives an empty topic.
        StartupError: an endpoint cannot be bound or connected, (``--once``) a file cannot be
            read, or (``--state``) the state file cannot be used.
    """
    host = settings.host or socket.gethostname()
    srcs = sources(settings.paths, settings.topic, host)
    state = _StateFile(settings.state) if settings.state else None
    chunk = STATE_READ_CHUNK if state is not None else READ_CHUNK
    followers = [FileFollower(s, read_chunk=chunk) for s in srcs]
    feeds = [_Feed(f) for f in followers]
    from_start = settings.from_start or settings.once
    stopper = _Stopper(stop if stop is not None else threading.Event())
    with _closing(followers, state), (stopper.installed() if stop is None else _nothing()):
        # Files first: their start offsets are taken now, and --once fails before binding anything.
        if state is not None:
            state.open()
        errors = []
        for feed in feeds:
            saved, reserved = state.saved(feed.follower.path) if state is not None else ([], 0)
            errors.append(feed.follower.start(from_start=from_start, resume=saved))
            if state is not None:
                feed.resume(reserved)
        for f, err in zip(followers, errors):
            if err is not None and settings.once:
                raise StartupError(f"cannot read {f.path}: {err.strerror}")
        bind = bool(settings.bind)
        endpoints = settings.bind or settings.connect
        sndhwm = STATE_SNDHWM if state is not None else DEFAULT_SNDHWM
        publisher = Publisher(
            endpoints,
            bind=bind,
            lossless=True,
            subscriber_timeout=None,
            sndhwm=sndhwm,
            linger=settings.linger,
            source=f"{host}:{os.getpid()}",
            curve=settings.curve,
        )
        if state is not None:
            state.attach(feeds, _in_flight(srcs, sndhwm))
        log.info(
            "tail%s: %d file(s), publishing %s %s%s",
            " --once" if settings.once else "", len(followers),
            "bound to" if bind else "connected to", ", ".join(endpoints),
            f", state in {state.path}" if state is not None else "",
        )
        if publisher.multicast:
            log.warning(
                "multicast endpoint: PGM carries no subscriptions back, so tail cannot wait for a "
                "receiver and sends each line at once; a receiver that joins later misses what "
                "came before, one that falls behind by more than the recovery interval loses "
                "lines (counted as gaps by zmqws consume and the gateway); docs/delivery.md"
            )
        where = "start" if from_start else "end"
        for f, err in zip(followers, errors):
            if err is None:
                if f.version is None or f.version.resume is None:
                    log.info("following %s from its %s as topic %r", f.path, where, f.source.topic)
            else:
                log.warning("cannot open %s (%s); waiting for it", f.path, err.strerror)
        try:
            _pump(feeds, publisher, stopper, settings.poll_interval, settings.once, state)
        except _Interrupted:
            pass
        finally:
            stopper.event.set()
            log.info("closing: %d message(s) published, sending what is queued", publisher.sent)
            signals = stopper.signals
            started = time.monotonic()
            publisher.close()
            # Within --linger and not cut short by a signal: everything queued went out.
            flushed = time.monotonic() - started < settings.linger and stopper.signals == signals
            if state is not None:
                state.save(flushed=flushed)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _closing(followers: Sequence[FileFollower], state: _StateFile | None) -> Iterator[None]:
    try:
        yield
    finally:
        for f in followers:
            f.close()
        if state is not None:
            state.close()
