"""Fan-out: batches of ZeroMQ messages in, one buffer of bytes per client out.

Pure: no asyncio, no zmq, no sockets (STYLE rule 1). The hub never touches a transport; it hands
bytes to each client's :class:`Outbox`, whose ``write`` callable the I/O layer provides.

Per batch (DESIGN.md principle 2):

1. each message is decoded once and routed once by the topic index, to *groups* of clients that
   asked for the same format and prefixes;
2. each message is framed once per format that some group wants (``raw``: a binary frame of the
   data; ``json``: a text frame of a JSON object);
3. each touched group's frames are joined once, and the joined bytes are handed to every member:
   one write per client per batch, whatever the number of messages.

When ZeroMQ has more ready than one batch (a burst), groups that got only a few messages are held
over to the next batch, for at most :data:`HOLD_SECONDS`: with many active topics each client gets
only a few messages of each batch, and without holding every delivery would be its own ``write()``
system call (about 8 µs here, against tens of nanoseconds when many messages share a write). Once
the input is drained, or the time is up, everything held is written; a client that changes its
topics gets what its old group held first. Holding never happens at light load, so it costs no
latency there.

Pre-framed bytes are the same for every client only because no WebSocket extension is negotiated
(the gateway offers no permessage-deflate): a compressed connection would need its own framing
per client, which costs a measured 45 % of throughput (STYLE rule 5).

Loss upstream (DESIGN.md principle 4): messages from zmqws producers carry their source and a
sequence number; a number that skips ahead means messages were lost before the gateway (a
publisher's queue overflowed), so the clients that get the message get a ``gap`` message naming
the source and how many were missed, just before it, and ``/health`` counts them.

Slow clients (DESIGN.md principle 3): while a client's transport is above its high-water mark the
I/O layer pauses its Outbox; batches then wait in the Outbox, bounded in bytes. Past the bound,
the ``drop`` policy drops the oldest batches and later tells the client how many messages it
missed with a ``gap`` message; the ``close`` policy closes it with 1008. Either way the other
clients never wait for it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

from .envelope import Message, control_frame, decode, json_frame, ws_frame
from .exceptions import MalformedMessage
from .sequence import GapCounter, Verdict
from .topics import Group, TopicIndex

__all__ = ["Hub", "Outbox", "HubStats", "FORMATS", "HOLD_PARTS", "HOLD_SECONDS"]

FORMATS = ("json", "raw")

log = logging.getLogger("zmqws.hub")

CLOSE_POLICY_VIOLATION = 1008
# Sources whose sequence numbers are tracked: each costs one small record; past this many, new
# sources are counted as untracked, so producers that invent names cannot grow memory.
MAX_SOURCES = 100_000
# Holding groups over while a burst lasts: a group with fewer frames than HOLD_PARTS waits for the
# next batch, for at most HOLD_SECONDS after the first batch held (measured, benchmarks/ T: 10,000
# clients on 1,000 active topics deliver about 5 times more with 16 batches held, 20 times more with
# 64; a time bound says what it costs in latency, whatever the batch rate).
HOLD_PARTS = 64
HOLD_SECONDS = 0.05
# RFC 6455 §5.2 headers of unmasked binary frames with a 7-bit length, for the inlined fast path.
_SHORT_BINARY = [ws_frame(b"\x00" * n)[:2] for n in range(126)]


@dataclass(slots=True)
class HubStats:
    """Counters exposed by ``/health``."""

    messages_in: int = 0
    deliveries: int = 0
    malformed: int = 0
    oversize: int = 0
    unrouted: int = 0
    dropped_slow: int = 0
    closed_slow: int = 0
    source_missing: int = 0
    untracked_sources: int = 0


class Outbox:
    """One client's bounded output: written straight through, or queued while paused.

    Args:
        write: sends bytes to the client (the I/O layer's ``transport.write``).
        close: closes the client with a WebSocket close code and reason.
        cap: bytes queued while paused before the policy acts.
        policy: ``"drop"`` (drop the oldest, send a ``gap``) or ``"close"`` (close with 1008).
        stats: the hub's counters, to count drops.
    """

    __slots__ = ("write", "close", "cap", "policy", "stats", "paused", "queue", "queued", "missed")

    def __init__(
        self,
        write: Callable[[bytes], object],
        close: Callable[[int, str], object],
        cap: int,
        policy: str,
        stats: HubStats,
    ) -> None:
        self.write = write
        self.close = close
        self.cap = cap
        self.policy = policy
        self.stats = stats
        self.paused = False
        self.queue: deque[tuple[bytes, int, int]] | None = None  # made on first pause: idle clients stay small
        self.queued = 0
        self.missed = 0

    def deliver(self, data: bytes, count: int, missed: int = 0) -> None:
        """Hand ``count`` messages, framed and joined in ``data``, to the client.

        ``missed`` is what ``gap`` frames inside ``data`` report lost upstream: if ``data`` is
        dropped, the client is told about those too, so what it receives plus what it is told
        it missed always adds up to what was published.
        """
        if not self.paused:
            self.write(data)
            return
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        queue.append((data, count, missed))
        self.queued += len(data)
        if self.queued <= self.cap:
            return
        if self.policy == "close":
            self.stats.closed_slow += 1
            self.stats.dropped_slow += sum(n for _, n, _ in queue)
            queue.clear()
            self.queued = 0
            self.close(CLOSE_POLICY_VIOLATION, "client too slow")
            return
        while self.queued > self.cap and queue:
            old, n, upstream = queue.popleft()
            self.queued -= len(old)
            self.missed += n + upstream
            self.stats.dropped_slow += n

    def pause(self) -> None:
        """The client's transport is full: queue from now on."""
        self.paused = True

    def resume(self) -> None:
        """The transport drained: say what was missed, then send what waited, oldest first.

        A write may pause the outbox again (the transport calls back synchronously); what is
        still queued then waits for the next resume.
        """
        self.paused = False
        if self.missed:
            missed, self.missed = self.missed, 0
            self.write(control_frame({"op": "gap", "missed": missed}))
        queue = self.queue
        while queue and not self.paused:
            data, _, _ = queue.popleft()
            self.queued -= len(data)
            self.write(data)
        if not queue:
            self.queue = None

    def discard(self) -> None:
        """Forget everything queued (the client is going away)."""
        self.queue = None
        self.queued = 0


class Hub:
    """Routes batches of raw ZeroMQ messages to clients' outboxes.

    Args:
        on_subscribe: called with a prefix when the upstream socket must subscribe to it.
        on_unsubscribe: called with a prefix when no client wants it any more.
        max_outbound: data larger than this is counted (``oversize``), not forwarded.
        hold_seconds: how long a burst may hold small groups over (0: never).
        clock: monotonic seconds (injected so that tests control time).
    """

    def __init__(
        self,
        on_subscribe: Callable[[bytes], None] = lambda p: None,
        on_unsubscribe: Callable[[bytes], None] = lambda p: None,
        *,
        max_outbound: int = 1 << 20,
        hold_seconds: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = TopicIndex(on_subscribe, on_unsubscribe)
        self.stats = HubStats()
        self.max_outbound = max_outbound
        self.sources = GapCounter()
        self.max_sources = MAX_SOURCES
        self.seq = 0
        self.unreadable = 0  # messages that raised in dispatch (counted as malformed too)
        self._outboxes: dict[object, Outbox] = {}
        self.hold_seconds = hold_seconds
        self._clock = clock
        self._held: list[Group] = []  # groups whose parts wait for the next batch
        self._held_since = 0.0  # clock() when the first of them was held

    # -- clients ------------------------------------------------------------------------------

    def join(self, client: object, outbox: Outbox, fmt: str, prefixes: frozenset[bytes]) -> None:
        """Start delivering to ``client`` the messages that match ``prefixes`` (empty: all)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.flush()  # what is held belongs to the members it was routed for
        self._outboxes[client] = outbox
        self.index.join(client, fmt, prefixes)

    def resubscribe(self, client: object, prefixes: frozenset[bytes]) -> None:
        """Change what ``client`` receives; its format stays."""
        group = self.index.group_of(client)
        if group is not None:
            self.flush()  # the client's old group may hold messages for it
            self.index.join(client, group.fmt, prefixes)

    def leave(self, client: object) -> None:
        """Stop delivering to ``client``; harmless if it never joined."""
        self._outboxes.pop(client, None)
        self.index.leave(client)

    @property
    def clients(self) -> int:
        return len(self._outboxes)

    def _track(self, source: str, source_seq: int) -> tuple[bytes | None, int]:
        """Follow a source's numbers; on a gap, the ``gap`` frame its subscribers get first,
        and how many messages it reports missing."""
        sources = self.sources
        if source not in sources and len(sources) >= self.max_sources:
            self.stats.untracked_sources += 1
            return None, 0
        obs = sources.observe(source, source_seq)
        if obs.verdict is not Verdict.GAP:
            return None, 0
        self.stats.source_missing += obs.missing
        return control_frame({"op": "gap", "source": source, "missed": obs.missing}), obs.missing

    def _unreadable(self, exc: Exception) -> None:
        """Log a message that raised in :meth:`dispatch`: a WARNING without traceback (it comes
        from a producer, not from a bug in a client's hands), on the 1st, 2nd, 4th, 8th, ...
        occurrence, so that a producer sending nothing else cannot flood the log."""
        self.unreadable = n = self.unreadable + 1
        if n & (n - 1) == 0:
            log.warning("a ZeroMQ message could not be forwarded (%s: %.200s); counted as "
                        "malformed, %d so far", type(exc).__name__, exc, n)

    # -- fan-out ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything held over from earlier batches."""
        if self._held:
            held, self._held = self._held, []
            self._write(held)

    def dispatch(self, batch: list[list[bytes]], more: bool = False) -> None:
        """Route one batch of ZeroMQ messages (lists of frames) to the subscribed clients.

        ``more``: the input has more ready right now (the batch was cut at its count cap), so
        groups that got few messages may be held over to the next batch (see the module's doc).
        """
        stats = self.stats
        route = self.index.route
        max_out = self.max_outbound
        seq = self.seq
        touched = []
        last_topic: bytes | None = None
        last_groups: tuple[Group, ...] = ()
        short = _SHORT_BINARY
        for frames in batch:
            # One message that breaks something below must cost only itself: neither the rest
            # of the batch nor the groups that already hold parts of it (they would never be
            # touched, so never written to, again).
            try:
                # The usual envelope, [topic, data], skips building a Message: the raw format
                # needs only the data, and JSON builds it below only when some client wants JSON.
                msg = None
                if len(frames) == 2 and frames[0]:
                    topic, data = frames
                else:
                    try:
                        msg = decode(frames)
                    except MalformedMessage:
                        stats.malformed += 1
                        continue
                    topic, data = msg.topic, msg.data
                gap = None
                if msg is not None and msg.source_seq is not None and msg.source is not None:
                    gap, missed = self._track(msg.source, msg.source_seq)
                seq += 1
                if topic != last_topic:  # runs of one topic are the common case under load
                    last_topic, last_groups = topic, route(topic)
                groups = last_groups
                if not groups:
                    stats.unrouted += 1
                    continue
                raw = js = notice = None
                if len(data) > max_out:
                    # Not forwarded, but not a silent loss either: its clients get a gap in its
                    # place (after the one its sequence number revealed, if any).
                    stats.oversize += 1
                    info: dict[str, object] = {"op": "gap", "missed": 1, "reason": "oversize"}
                    if msg is not None and msg.source is not None:
                        info["source"] = msg.source
                    notice = control_frame(info)
                for g in groups:
                    if notice is not None:
                        part = notice
                    elif g.fmt == "raw":
                        if raw is None:
                            n = len(data)
                            raw = short[n] + data if n < 126 else ws_frame(data)
                        part = raw
                    else:
                        if js is None:
                            js = json_frame(msg or Message(topic, data), seq)
                        part = js
                    if not g.parts:
                        touched.append(g)
                    if gap is not None:
                        g.parts.append(gap)
                        g.missed += missed
                        g.gaps += 1
                    g.parts.append(part)
                    if notice is not None:
                        g.missed += 1
                        g.gaps += 1
            except Exception as exc:  # a producer found an input we did not foresee
                stats.malformed += 1
                self._unreadable(exc)
        stats.messages_in += seq - self.seq
        self.seq = seq
        held = self._held
        if more and self.hold_seconds > 0 and (
                not held or self._clock() - self._held_since < self.hold_seconds):
            keep: list[Group] = []
            write: list[Group] = []
            for g in chain(held, touched):
                (write if len(g.parts) >= HOLD_PARTS else keep).append(g)
            if keep and not held:
                self._held_since = self._clock()
            self._held = keep
            touched = write
        elif held:
            self._held = []
            touched = held + touched
        self._write(touched)

    def _write(self, touched: list[Group]) -> None:
        """Join each group's frames once and hand them to every member's outbox."""
        stats = self.stats
        outboxes = self._outboxes
        deliveries = 0
        for g in touched:
            parts = g.parts
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            n = len(parts) - g.gaps  # messages, not counting gap frames
            missed, g.missed, g.gaps = g.missed, 0, 0
            parts.clear()
            # A delivery may close a client (policy) and so change the members: iterate a copy.
            for client in tuple(g.members):
                outbox = outboxes.get(client)
                if outbox is not None:
                    try:
                        outbox.deliver(data, n, missed)
                    except Exception:  # our bug; the other clients must still get the batch
                        log.exception("delivery to a client failed")
            deliveries += n * len(g.members)
        stats.deliveries += deliveries
