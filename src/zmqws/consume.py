"""``zmqws consume``: the aggregator. Subscribe, write one JSON line per message, count the gaps.

Two parts, kept apart (STYLE rule 1):

* :class:`~zmqws.sequence.GapCounter` (shared with the gateway) is pure: given each message's
  ``(source, seq)`` it keeps the last sequence number of every source and says what the new one
  means (in order, a gap, a duplicate, a restart).
* :func:`run` is the I/O shell: one SUB socket and one wake-up socket for signals, served by one
  ``zmq.Poller`` (STYLE rule 13: the loop waits on events, it never sleeps and looks again).

Each message becomes one line of JSON::

    {"topic": "web01.access.log", "data": "GET / 200", "source": "web01:/var/log/x.log", "seq": 42}

``data`` that is not valid UTF-8 is written base64 encoded, with ``"encoding": "base64"``, as the
gateway does (docs/protocol.md); the topic is decoded with replacement characters, since a topic is
a name for people and a lossy one is still useful. ``source`` and ``seq`` are ``null`` for foreign
producers that send no zmqws metadata frame.

Duplicates are dropped: a message whose ``seq`` is not larger than the last one of its source
(and not 1, which is a restart) is counted, logged once per run of them, and not written. A
``zmqws tail --state`` restarted after a crash sends again the lines after its last saved place,
with the same numbers; dropping them here is what makes each line arrive once (docs/delivery.md).
A restart (1 again after a larger number, a producer started afresh) is written: its lines are new.
The summary at exit accounts for every message: for each source, the messages written plus the
numbers reported missing equal the numbers the source used since the first one seen here.

Why the writes are buffered and when they are flushed: one ``write`` system call per message
would cost more than everything else this loop does. So lines go through a buffered file, which is
flushed each time the SUB socket has nothing more ready (a reader of the file sees every line as soon
as the burst that carried it is over) and at exit, whatever ends the run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from types import FrameType
from typing import BinaryIO

import zmq

from .config import DEFAULT_RCVHWM, ConsumeSettings
from .envelope import Message, decode
from .exceptions import MalformedMessage, StartupError
from .sequence import GapCounter, Observation, SourceStats, Verdict
from .zmq_io import attach

__all__ = [
    "run",
    "GapCounter",
    "Verdict",
    "Observation",
    "SourceStats",
    "to_json_line",
]

log = logging.getLogger("zmqws.consume")

# DESIGN.md principle 2: drain what is ready, but look at the signal socket at least every 1,000
# messages, so that SIGTERM is obeyed promptly even under a flood.
_BATCH = 1000
# A run of duplicates is said in one warning when it ends: at the source's next new message, or
# after this long without one (a resend of a few hundred lines spans several bursts).
_DUPLICATES_QUIET_MS = 1000
# 64 KiB of output between flushes at most: about 500 log lines, far fewer system calls than one
# per line, and small enough that a burst is on disk within a few milliseconds.
_OUTPUT_BUFFER = 1 << 16


# -- output ----------------------------------------------------------------------------------------


def to_json_line(msg: Message) -> bytes:
    """One output line (with its ``\\n``) for ``msg``.

    Data that is not valid UTF-8 is base64 encoded and flagged with ``"encoding": "base64"``:
    JSON text cannot carry arbitrary bytes, and replacing them would lose data silently.
    """
    obj: dict[str, object] = {"topic": msg.topic.decode("utf-8", "replace")}
    try:
        obj["data"] = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        obj["data"] = base64.b64encode(msg.data).decode("ascii")
        obj["encoding"] = "base64"
    obj["source"] = msg.source
    obj["seq"] = msg.source_seq
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


def _say(obs: Observation) -> None:
    """Log an observation that is not business as usual (STYLE rule 14: WARNING = a gap)."""
    v = obs.verdict
    if v is Verdict.GAP:
        first, last = obs.missing_range or (0, 0)
        span = f"{first}" if first == last else f"{first}..{last}"
        log.warning(
            "gap from source %s: missing seq %s (%d message%s)",
            obs.source, span, obs.missing, "" if obs.missing == 1 else "s",
        )
    elif v is Verdict.RESTART:
        log.warning("source %s restarted: seq 1 after %d", obs.source, obs.last)


# -- the loop --------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised inside the loop to end it; the argument says why (for the log)."""


class _Signals:
    """SIGINT and SIGTERM turned into a readable socket, so one poller waits on them and ZeroMQ.

    ``signal.set_wakeup_fd`` makes the C-level handler write the signal number to a socket; the
    Python handler itself only notes that a stop was asked. A second signal while the first is
    being obeyed (output stuck on a full pipe, say) ends the process at once (STYLE rule 13).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.received: list[int] = []
        self._old_handlers: dict[int, object] = {}
        self._old_fd: int | None = None
        # Signal handlers can only be set from the main thread; elsewhere (run() called from a
        # thread, in an application) the caller owns the process's signals.
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self._old_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
            for sig in self.SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            sys.stderr.write(f"zmqws consume: second {signal.Signals(signum).name}, exiting now\n")
            sys.stderr.flush()
            os._exit(1)
        self.received.append(signum)

    def name(self) -> str:
        """The signal that asked to stop, e.g. ``"SIGTERM"``."""
        try:
            data = self.reader.recv(64)
        except (BlockingIOError, InterruptedError):
            data = b""
        signum = self.received[0] if self.received else (data[0] if data else 0)
        try:
            return signal.Signals(signum).name
        except ValueError:
            return f"signal {signum}"

    def close(self) -> None:
        if self.active:
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)  # type: ignore[arg-type]
            signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
        self.reader.close()
        self._writer.close()


class _Consumer:
    """State of one ``zmqws consume`` run: counters, output and the loop that feeds them."""

    def __init__(self, settings: ConsumeSettings, out: BinaryIO) -> None:
        self.settings = settings
        self.out = out
        self.gaps = GapCounter()
        self.messages = 0
        self.written = 0
        # Runs of duplicates not logged yet, per source: [first seq, last seq, count, source at].
        # Logged as one line when the run ends (see _DUPLICATES_QUIET_MS), so a producer that
        # resends 1,000 lines after a restart makes one warning, not a thousand.
        self._dups: dict[str, list[int]] = {}
        self.malformed = 0
        self.unstamped = 0

    def handle(self, frames: list[bytes]) -> None:
        """Decode one message, write its line and count its sequence number."""
        try:
            msg = decode(frames)
        except MalformedMessage as exc:
            self.malformed += 1
            log.debug("malformed message skipped: %s", exc)
            return
        self.messages += 1
        source, seq = msg.source, msg.source_seq
        if source is None or seq is None:
            self.unstamped += 1
        else:
            obs = self.gaps.observe(source, seq)
            verdict = obs.verdict
            if verdict is Verdict.DUPLICATE:
                self._duplicate(source, seq, obs.last or 0)
                return
            if self._dups and source in self._dups:
                self._say_duplicates(source)
            if verdict is not Verdict.IN_ORDER and verdict is not Verdict.FIRST:
                _say(obs)
        self.out.write(to_json_line(msg))
        self.written += 1
        if self.settings.count and self.written >= self.settings.count:
            raise _Stop(f"{self.written} messages written (--count)")

    def _duplicate(self, source: str, seq: int, last: int) -> None:
        run = self._dups.get(source)
        if run is not None and seq == run[1] + 1:
            run[1] = seq
            run[2] += 1
            return
        if run is not None:
            self._say_duplicates(source)
        self._dups[source] = [seq, seq, 1, last]

    def _say_duplicates(self, source: str | None = None) -> None:
        """Log the runs of duplicates not logged yet (of ``source``, or of every source)."""
        for name in [source] if source is not None else list(self._dups):
            first, last, count, at = self._dups.pop(name)  # type: ignore[arg-type]
            span = f"{first}" if first == last else f"{first}..{last}"
            log.warning(
                "duplicate%s from source %s: seq %s (%d message%s) already written, not written "
                "again (the source is at seq %d)",
                "" if count == 1 else "s", name, span, count, "" if count == 1 else "s", at,
            )

    def loop(self, sock: zmq.Socket, signals: _Signals) -> str:  # type: ignore[type-arg]
        """Serve the socket until a signal, ``--count`` or ``--idle-exit``; return why it ended."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        wake_fd = signals.reader.fileno()
        # zmq.Poller reports plain sockets by file descriptor, so register and look up the fd.
        poller.register(wake_fd, zmq.POLLIN)
        idle = self.settings.idle_exit
        last_activity = time.monotonic()
        recv = sock.recv_multipart
        noblock = zmq.NOBLOCK
        while True:
            timeout = None
            if idle:
                left = last_activity + idle - time.monotonic()
                if left <= 0:
                    return f"no message for {idle:g} s (--idle-exit)"
                timeout = max(1, int(left * 1000))
            if self._dups:
                timeout = min(timeout or _DUPLICATES_QUIET_MS, _DUPLICATES_QUIET_MS)
            ready = dict(poller.poll(timeout))
            if wake_fd in ready or signals.received:
                return f"{signals.name()} received"
            if sock not in ready:
                if not ready and self._dups:
                    self._say_duplicates()
                continue
            last_activity = time.monotonic()
            try:
                for _ in range(_BATCH):
                    self.handle(recv(noblock))
            except zmq.Again:
                # Nothing more ready: the burst is over, let readers of the output see it.
                self.out.flush()
            except _Stop as stop:
                return str(stop)

    def summary(self) -> list[str]:
        """The lines printed on stderr at exit: the totals, then one line per source."""
        if self._dups:
            self._say_duplicates()
        g = self.gaps
        lines = [
            f"zmqws consume: summary: {_n(self.messages, 'message')} from {_n(len(g), 'source')}, "
            f"{self.written} written; {g.missing} missing, {g.duplicates} duplicate (not written), "
            f"{_n(g.restarts, 'restart')}; {self.malformed} malformed; "
            f"{self.unstamped} without source"
        ]
        for st in g:
            lines.append(
                f"zmqws consume:   {st.source}: {_n(st.count, 'message')}, "
                f"seq {st.first}..{st.last}, {st.missing} missing, {st.duplicates} duplicate, "
                f"{_n(st.restarts, 'restart')}"
            )
        return lines


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _open_output(path: str | None) -> BinaryIO:
    if path is None:
        return sys.stdout.buffer
    try:
        out = open(path, "ab", buffering=_OUTPUT_BUFFER)
        # A run that died mid-line (a full disk) left a partial last line: end it, so that the
        # first line of this run is a line of its own (the partial one stays unreadable JSON).
        if stat.S_ISREG(os.fstat(out.fileno()).st_mode) and out.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    out.write(b"\n")
        return out
    except OSError as exc:
        raise StartupError(f"--output: cannot open {path}: {exc.strerror}") from None


def run(settings: ConsumeSettings) -> int:
    """Run ``zmqws consume`` until a signal, ``--count`` or ``--idle-exit``.

    Args:
        settings: the validated settings.

    Returns:
        The exit code: 0 when it stopped as asked (SIGINT and SIGTERM included), 1 when the output
        could not be written.

    Raises:
        StartupError: the output cannot be opened, or an endpoint cannot be bound or connected.
        ConfigError: a malformed endpoint.
    """
    out = _open_output(settings.output)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    signals: _Signals | None = None
    consumer = _Consumer(settings, out)
    code = 0
    started = False
    try:
        # Signals first: once the endpoints are logged as ready, SIGTERM is already handled.
        signals = _Signals()
        sock.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        # Subscribe before attaching, so every peer gets the subscriptions as soon as it is there.
        for prefix in settings.topics or ("",):
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("utf-8"))
        for ep in settings.bind:
            attach(sock, [ep], bind=True)
            log.info("bound %s", sock.getsockopt_string(zmq.LAST_ENDPOINT))
        for ep in settings.connect:
            attach(sock, [ep], bind=False)
            log.info("connecting to %s", ep)
        log.info(
            "consuming %s into %s",
            ", ".join(repr(t) for t in settings.topics) if settings.topics else "every topic",
            settings.output or "stdout",
        )
        started = True
        try:
            reason = consumer.loop(sock, signals)
            log.info("stopping: %s", reason)
        except BrokenPipeError:
            # The reader of stdout went away (`zmqws consume | head`): nothing left to write to.
            log.info("stopping: output closed by its reader")
            _discard_stdout(out)
        except OSError as exc:
            log.error("cannot write %s: %s", settings.output or "stdout", exc.strerror or exc)
            code = 1
    finally:
        sock.close(linger=0)
        ctx.term()
        try:
            out.flush()
        except BrokenPipeError:
            _discard_stdout(out)
        except OSError as exc:
            log.error("cannot write %s: %s", settings.output or "stdout", exc.strerror or exc)
            code = 1
        if out is not sys.stdout.buffer:
            try:
                out.close()
            except BrokenPipeError:  # a FIFO whose reader went away: as with stdout, not an error
                pass
            except OSError:
                code = 1
        # Only now: a second signal while the flush above was stuck still ends the process.
        if signals is not None:
            signals.close()
    if started:
        for line in consumer.summary():
            print(line, file=sys.stderr)
        sys.stderr.flush()
    return code


def _discard_stdout(out: BinaryIO) -> None:
    """After a broken pipe on stdout: send what is still buffered to /dev/null, so neither the
    final flush nor the interpreter's exit fails on it."""
    if out is sys.stdout.buffer:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
