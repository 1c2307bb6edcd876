"""Per-source sequence numbers: what a new number means, given the last one seen.

Pure: no I/O, no logging, no clock. zmqws producers stamp every message with its source and a
sequence number counting from 1 (docs/protocol.md); the gateway and the aggregator both feed them
to a :class:`GapCounter`, which says whether a message follows in order, skips some (a gap: the
numbers in between were lost), repeats one (a duplicate, e.g. re-sent after a producer restart
with ``--state``), or starts over at 1 (a producer restarted without state).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["GapCounter", "Verdict", "Observation", "SourceStats"]


class Verdict(enum.Enum):
    """What a sequence number means, given the last one seen from the same source."""

    FIRST = "first"
    """The first message seen from this source: its number is the baseline, whatever it is (a
    consumer that starts after its producers cannot know what came before)."""
    IN_ORDER = "in order"
    """Exactly the number after the last one."""
    GAP = "gap"
    """Larger than the next one expected: the numbers in between were lost on the way."""
    DUPLICATE = "duplicate"
    """Not larger than the last one (and not 1): a message seen before, or one that came late.
    The last number is kept, so a stale message never makes a fake gap later."""
    RESTART = "restart"
    """1 again after a larger number: the producer started over (sequence numbers count each
    source's messages from 1, docs/protocol.md). Counting continues from 1."""


@dataclass(frozen=True, slots=True)
class Observation:
    """The verdict on one ``(source, seq)`` pair.

    Attributes:
        verdict: what the number means.
        source: the source it came from.
        seq: the number.
        last: the source's last number before this one (``None`` for :attr:`Verdict.FIRST`).
    """

    verdict: Verdict
    source: str
    seq: int
    last: int | None = None

    @property
    def missing(self) -> int:
        """How many numbers were skipped (non-zero only for a gap)."""
        if self.verdict is Verdict.GAP and self.last is not None:
            return self.seq - self.last - 1
        return 0

    @property
    def missing_range(self) -> tuple[int, int] | None:
        """The first and last skipped numbers of a gap, else ``None``."""
        if self.verdict is Verdict.GAP and self.last is not None:
            return self.last + 1, self.seq - 1
        return None


@dataclass(frozen=True, slots=True)
class SourceStats:
    """What was seen of one source, for the summary.

    Attributes:
        source: the source's name.
        count: messages received (duplicates included).
        first: the first number seen.
        last: the number the source has reached (not moved back by duplicates).
        missing: numbers skipped in gaps.
        duplicates: messages whose number was not larger than the last one.
        restarts: times the source started over at 1.
    """

    source: str
    count: int
    first: int
    last: int
    missing: int = 0
    duplicates: int = 0
    restarts: int = 0


@dataclass(slots=True)
class _SourceState:
    # Mutable on purpose: updated once per message; SourceStats is the frozen view handed out.
    count: int
    first: int
    last: int
    missing: int = 0
    duplicates: int = 0
    restarts: int = 0


class GapCounter:
    """Counts lost, repeated and restarted sequence numbers, per source.

    Pure and single-threaded: no I/O, no logging, no clock. :meth:`observe` returns an
    :class:`Observation`; the caller decides what to say about it.

    Memory is one small record per source, whatever the number of messages: only the last
    number is kept, not the set of numbers seen, so a duplicate is recognised by its number being
    too small, not by having been seen.
    """

    def __init__(self) -> None:
        self._sources: dict[str, _SourceState] = {}

    def observe(self, source: str, seq: int) -> Observation:
        """Record one message of ``source`` numbered ``seq`` and say what it means."""
        st = self._sources.get(source)
        if st is None:
            self._sources[source] = _SourceState(count=1, first=seq, last=seq)
            return Observation(Verdict.FIRST, source, seq)
        last = st.last
        st.count += 1
        if seq == last + 1:
            st.last = seq
            return Observation(Verdict.IN_ORDER, source, seq, last)
        if seq > last:
            st.missing += seq - last - 1
            st.last = seq
            return Observation(Verdict.GAP, source, seq, last)
        if seq == 1:
            st.restarts += 1
            st.last = seq
            return Observation(Verdict.RESTART, source, seq, last)
        st.duplicates += 1
        return Observation(Verdict.DUPLICATE, source, seq, last)

    @property
    def missing(self) -> int:
        """Numbers skipped, all sources together."""
        return sum(st.missing for st in self._sources.values())

    @property
    def duplicates(self) -> int:
        """Duplicate or late messages, all sources together."""
        return sum(st.duplicates for st in self._sources.values())

    @property
    def restarts(self) -> int:
        """Restarts, all sources together."""
        return sum(st.restarts for st in self._sources.values())

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, source: object) -> bool:
        return source in self._sources

    def __iter__(self) -> Iterator[SourceStats]:
        """Every source's statistics, sorted by source name."""
        for name in sorted(self._sources):
            st = self._sources[name]
            yield SourceStats(
                name, st.count, st.first, st.last, st.missing, st.duplicates, st.restarts
            )

    def stats(self, source: str) -> SourceStats:
        """One source's statistics.

        Raises:
            KeyError: nothing was seen from ``source``.
        """
        st = self._sources[source]
        return SourceStats(
            source, st.count, st.first, st.last, st.missing, st.duplicates, st.restarts
        )
