"""``zmqws tail``: follow files like ``tail -F`` and publish each line as one message.

One loop serves every file: each ``poll_interval`` it looks at each file once (an ``fstat`` of the
open descriptor and an ``os.stat`` of the path), reads what was appended and publishes the complete
lines. A file is followed *by name*, so the usual ways logs are rotated all work:

* **rename and re-create** (logrotate's default): the path names another inode. The old descriptor
  is read to its end first, and kept until it has been quiet for one poll, because the writer may
  not have reopened its log yet; then the new file is opened at its start.
* **copytruncate**: the file is shorter than what was read. Reading starts again at offset 0.
* **a file that does not exist yet, or is deleted for a while**: the path is checked each poll and
  the file is read from its start when it appears.

By default each file is followed from its end, as ``tail -F`` does; when the file does not end with
a newline, the rest of its last line is skipped too (the line was there before tail, and its end
alone would be a fragment). ``--from-start`` reads what the files hold first; ``--once`` reads every
file from its start to its end, publishes the last line even without a newline, and exits.

Lines are bytes and are never decoded: a line is everything up to ``\\n``, without the ``\\n`` and
without a ``\\r`` just before it (CRLF files). A line whose newline has not been written yet is held
until it comes, so a line, or a UTF-8 character, split across two writes is published whole.

Nothing is dropped while tail runs (DESIGN.md principle 4): :class:`~zmqws.publisher.Publisher` is
lossless here, it waits for a subscriber that wants the topic before each send and blocks when a
subscriber's queue is full. Each message is stamped with the source ``HOST:ABSOLUTE_PATH`` and that
source's sequence number, so a consumer can count gaps.

Limits, stated plainly:

* A held partial line is bounded by :data:`MAX_LINE`; past it, what is held is published as a line
  (cut at a UTF-8 character boundary when the bytes look like UTF-8) and a warning is logged.
* A truncation is noticed only if the file is shorter than what was read when tail looks again: a
  file truncated and then refilled beyond the old offset within one poll interval is not noticed
  (``tail -F`` has the same limit).
* After a rotation, bytes written to the old file once tail has moved on to the new one are not
  read.
* On stop, a partial line that never got its newline is not published (it is logged); nothing saves
  the offset yet, so lines appended while tail is not running are not published by the next run.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import signal
import socket
import stat
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from .config import TailSettings
from .exceptions import ConfigError, StartupError
from .publisher import Publisher

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
    "MAX_LINE",
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
    TRUNCATED = "truncated"  # the open file shrank below the offset read; about to rewind to 0
    CLOSED = "closed"  # done: stopped, or read to its end with --once


class Event(enum.Enum):
    """What a :class:`FileFollower` saw, moving it from one :class:`State` to another."""

    OPENED = "opened"  # a regular file at the path was opened
    MOVED = "moved"  # the path no longer names the open file (renamed, deleted or replaced)
    RETURNED = "returned"  # the path names the open file again (renamed back)
    RELEASED = "released"  # the old file was read to its end and closed
    SHRANK = "shrank"  # the open file is shorter than the offset read (copytruncate)
    REWOUND = "rewound"  # reading starts again at offset 0
    CLOSE = "close"  # tail stops, or --once read the file to its end


TRANSITIONS: Mapping[State, Mapping[Event, State]] = {
    State.WAITING: {Event.OPENED: State.FOLLOWING, Event.CLOSE: State.CLOSED},
    State.FOLLOWING: {
        Event.MOVED: State.ROTATED,
        Event.SHRANK: State.TRUNCATED,
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
        if len(self._held) > self.max_line:
            self.cut += not self._cutting
            self._cutting = True
            while len(self._held) > self.max_line:
                n = _utf8_cut(self._held, self.max_line)
                out.append(bytes(self._held[:n]))
                del self._held[:n]
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


# -- one file ------------------------------------------------------------------------------------


def _stat(path: str) -> os.stat_result | None:
    """``os.stat(path)``, or None when the path cannot be looked at (missing, no permission)."""
    try:
        return os.stat(path)
    except OSError:
        return None


class FileFollower:
    """Follows one path by name, as ``tail -F`` does; returns its complete lines.

    The follower does the file I/O and nothing else: :meth:`poll` returns lines, the caller
    publishes them. See :data:`TRANSITIONS` for its lifecycle.

    Args:
        source: the file and how it is published.
        max_line: see :class:`LineSplitter`.
        read_budget: at most this many bytes are read per :meth:`poll` or :meth:`read_available`.
    """

    def __init__(
        self, source: Source, *, max_line: int = MAX_LINE, read_budget: int = READ_BUDGET
    ) -> None:
        self.source = source
        self.state = State.WAITING
        self.offset = 0
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._lines = LineSplitter(max_line)
        self._budget = read_budget
        self._cut_logged = 0
        self._open_error = ""

    @property
    def path(self) -> str:
        return self.source.path

    def _go(self, event: Event) -> None:
        try:
            self.state = transition(self.state, event)
        except TransitionError:
            raise TransitionError(event, self.state, self.path) from None

    # -- opening and closing --

    def _open(self, *, at_end: bool) -> OSError | None:
        """Open the path; return None on success, else the error that kept it from being opened."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            offset = st.st_size if at_end else 0
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
                # Mid-line: the start of this line was in the file before us, so its end is not ours.
                self._lines.discarding = os.pread(fd, 1, offset - 1) != b"\n"
        except OSError as exc:
            os.close(fd)
            return exc
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self.offset = offset
        self._go(Event.OPENED)
        return None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start(self, *, from_start: bool) -> OSError | None:
        """Open the file at its start or its end; if it cannot be opened, it is waited for.

        Args:
            from_start: read what the file holds already. Else start at its end; when the file
                does not end with a newline, the rest of its last line is skipped too (that line
                was there before us, and publishing its end alone would publish a fragment).

        Returns:
            None, or the error that kept the file from being opened (the follower is then
            ``WAITING`` for it).
        """
        err = self._open(at_end=not from_start)
        self._open_error = "" if err is None else (err.strerror or "")
        return err

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
        lines = self._lines.flush()
        self._close_fd()
        self._go(Event.CLOSE)
        return lines

    # -- reading --

    def read_available(self) -> tuple[list[bytes], bool]:
        """Read what the open file has, up to the read budget.

        Returns:
            The complete lines read, and True if the budget ran out before the end of the file.
        """
        lines, _, more = self._read()
        return lines, more

    def _read(self) -> tuple[list[bytes], int, bool]:
        fd = self._fd
        assert fd is not None, f"tail: read in state {self.state.name} with no file open"
        lines: list[bytes] = []
        got = 0
        while got < self._budget:
            chunk = os.read(fd, min(READ_CHUNK, self._budget - got))
            if not chunk:
                break
            got += len(chunk)
            lines += self._lines.feed(chunk)
        self.offset += got
        if self._lines.cut != self._cut_logged:
            self._cut_logged = self._lines.cut
            log.warning(
                "%s: a line longer than %d bytes was published in pieces",
                self.path, self._lines.max_line,
            )
        return lines, got, got >= self._budget

    def poll(self) -> tuple[list[bytes], bool]:
        """Look at the file once: open it, read what was appended, notice rotation or truncation.

        Returns:
            The complete lines read, and True if the caller should poll again without waiting
            (more to read, or a new file to open).
        """
        if self.state is State.WAITING:
            err = self._open(at_end=False)
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
            return self._poll_following()
        if self.state is State.ROTATED:
            return self._poll_rotated()
        # poll() after close(), or inside a transient state: a bug of ours.
        raise TransitionError(Event.OPENED, self.state, self.path)

    def _poll_following(self) -> tuple[list[bytes], bool]:
        assert self._fd is not None
        lines: list[bytes] = []
        size = os.fstat(self._fd).st_size
        if size < self.offset:
            self._go(Event.SHRANK)
            # The line held belonged to the content that was cut away: it ends here.
            lines += self._lines.flush()
            log.info(
                "%s was truncated (%d bytes, %d were read): reading it again from its start",
                self.path, size, self.offset,
            )
            os.lseek(self._fd, 0, os.SEEK_SET)
            self.offset = 0
            self._go(Event.REWOUND)
        read, _, more = self._read()
        lines += read
        if more:
            return lines, True
        st = _stat(self.path)
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            self._go(Event.MOVED)
            log.info(
                "%s was rotated (%s): reading the old file to its end",
                self.path, "gone" if st is None else "a new file is there",
            )
        return lines, False

    def _poll_rotated(self) -> tuple[list[bytes], bool]:
        assert self._fd is not None
        lines, got, more = self._read()
        if more or got:
            # The writer still appends to the old file (it has not reopened its log yet).
            return lines, more
        st = _stat(self.path)
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            self._go(Event.RETURNED)
            log.info("%s is back at its path: following it on", self.path)
            return lines, False
        deleted = os.fstat(self._fd).st_nlink == 0
        if st is None and not deleted:
            return lines, False  # renamed away and no new file yet: keep reading the old one
        # The old file is read to its end and quiet: its last line ends with it.
        lines += self._lines.flush()
        self._close_fd()
        self._go(Event.RELEASED)
        if st is None:
            log.info("%s was deleted: waiting for a new file at its path", self.path)
            return lines, False
        return lines, True  # open the new file without waiting for the next poll


# -- the loop ------------------------------------------------------------------------------------


class _Interrupted(BaseException):
    """Raised by the signal handler to leave a send that blocks on a full queue (backpressure)."""


class _Stopper:
    """SIGINT/SIGTERM set :attr:`event`; inside :meth:`interruptible` they also raise.

    The loop checks the event between polls and between lines, and waits on it between polls. A
    send blocks for as long as a subscriber's queue is full (lossless: backpressure, never a drop),
    so a signal during one raises :class:`_Interrupted` to leave it. Nowhere else does the handler
    raise: in particular not while the publisher closes, where a signal only ends the linger early
    (libzmq's ``zmq_ctx_term`` returns on EINTR).
    """

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._interruptible = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
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
    """

    __slots__ = ("follower", "queue", "waiting", "done")

    def __init__(self, follower: FileFollower) -> None:
        self.follower = follower
        self.queue: deque[bytes] = deque()
        self.waiting = False
        self.done = False  # --once: read to its end and closed

    def fill(self, once: bool) -> bool:
        """Read the next lines into the queue; True if there is more to read right away."""
        f = self.follower
        if once:
            lines, more = f.read_available()
            if not more:
                lines += f.finish()
                self.done = True
        else:
            lines, more = f.poll()
        self.queue.extend(lines)
        return more

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


def _pump(
    feeds: Sequence[_Feed],
    publisher: Publisher,
    stopper: _Stopper,
    poll_interval: float,
    once: bool,
) -> None:
    """The loop: read each file in turn, publish its lines if its topic is wanted, wait, repeat.

    Returns when stopped, or with ``once`` when every file was read to its end and published.
    """
    stop = stopper.event
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
            source = feed.follower.source
            # A send blocks while a subscriber's queue is full (backpressure): only a signal ends it.
            with stopper.interruptible():
                while feed.queue:
                    if stop.is_set():
                        return
                    publisher.send(source.topic, feed.queue[0], source=source.name)
                    feed.queue.popleft()
            busy = busy or not feed.done
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
        StartupError: an endpoint cannot be bound or connected, or (``--once``) a file cannot be
            read.
    """
    host = settings.host or socket.gethostname()
    followers = [FileFollower(s) for s in sources(settings.paths, settings.topic, host)]
    from_start = settings.from_start or settings.once
    stopper = _Stopper(stop if stop is not None else threading.Event())
    with _closing(followers), (stopper.installed() if stop is None else _nothing()):
        # Files first: their start offsets are taken now, and --once fails before binding anything.
        errors = [f.start(from_start=from_start) for f in followers]
        for f, err in zip(followers, errors):
            if err is not None and settings.once:
                raise StartupError(f"cannot read {f.path}: {err.strerror}")
        bind = bool(settings.bind)
        endpoints = settings.bind or settings.connect
        publisher = Publisher(
            endpoints,
            bind=bind,
            lossless=True,
            subscriber_timeout=None,
            linger=settings.linger,
            source=f"{host}:{os.getpid()}",
        )
        log.info(
            "tail%s: %d file(s), publishing %s %s",
            " --once" if settings.once else "", len(followers),
            "bound to" if bind else "connected to", ", ".join(endpoints),
        )
        where = "start" if from_start else "end"
        for f, err in zip(followers, errors):
            if err is None:
                log.info("following %s from its %s as topic %r", f.path, where, f.source.topic)
            else:
                log.warning("cannot open %s (%s); waiting for it", f.path, err.strerror)
        try:
            feeds = [_Feed(f) for f in followers]
            _pump(feeds, publisher, stopper, settings.poll_interval, settings.once)
        except _Interrupted:
            pass
        finally:
            stopper.event.set()
            log.info("closing: %d message(s) published, sending what is queued", publisher.sent)
            publisher.close()
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _closing(followers: Sequence[FileFollower]) -> Iterator[None]:
    try:
        yield
    finally:
        for f in followers:
            f.close()
