"""The topic index: which clients want a message, and what the SUB socket must subscribe to.

Pure: no asyncio, no zmq. Clients are grouped by what they asked for, ``(format, prefixes)``: all
clients of a group receive exactly the same bytes, so the hub builds each group's batch once and
hands it to every member (DESIGN.md principle 2). Routing a topic finds its groups, never scans
clients, and is cached per topic, so the cost per message does not grow with the number of clients,
however many topics they spread over.

A group's ``prefixes`` is a frozenset of byte prefixes, with ZeroMQ's meaning: ``b""`` matches
every topic, and the empty set matches nothing (a client that unsubscribed from everything). Each
group appears once in a route however many of its prefixes match, so a message reaches a client
at most once.

Upstream subscriptions are reference counted by group: the first group that wants a prefix calls
``on_first(prefix)`` (the gateway subscribes its SUB socket), the last one to leave calls
``on_last(prefix)``. The SUB socket therefore receives nothing that no client wants.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

__all__ = ["Group", "TopicIndex", "ROUTE_CACHE_SIZE"]

# Distinct topics remembered by the route cache before it starts again; a route is a small tuple,
# so this bounds the cache to a few MiB even with hostile topic churn (DESIGN.md principle 3).
ROUTE_CACHE_SIZE = 65_536


class Group:
    """Clients that asked for the same format and the same prefixes.

    Attributes:
        fmt: the output format all members use (``"json"`` or ``"raw"``).
        prefixes: the topic prefixes (empty: everything).
        members: the clients, in the order they joined.
        parts: frames gathered for the batch being dispatched (the hub's scratch space).
        gaps: how many of ``parts`` are ``gap`` frames, and ``missed`` how many messages lost
            upstream they report (scratch too).
    """

    __slots__ = ("fmt", "prefixes", "members", "parts", "gaps", "missed")

    def __init__(self, fmt: str, prefixes: frozenset[bytes]) -> None:
        self.fmt = fmt
        self.prefixes = prefixes
        self.members: dict[Hashable, None] = {}
        self.parts: list[bytes] = []
        self.gaps = 0
        self.missed = 0

    @property
    def key(self) -> tuple[str, frozenset[bytes]]:
        return self.fmt, self.prefixes

    def __repr__(self) -> str:
        return f"Group({self.fmt!r}, {sorted(self.prefixes)!r}, {len(self.members)} members)"


class TopicIndex:
    """Prefix index from topic to groups of clients, with upstream reference counts.

    Args:
        on_first: called with a prefix when some client wants it for the first time.
        on_last: called with a prefix when no client wants it any more.
    """

    def __init__(
        self,
        on_first: Callable[[bytes], None] = lambda p: None,
        on_last: Callable[[bytes], None] = lambda p: None,
    ) -> None:
        self._on_first = on_first
        self._on_last = on_last
        self._groups: dict[tuple[str, frozenset[bytes]], Group] = {}
        self._client_group: dict[Hashable, Group] = {}
        self._by_prefix: dict[bytes, dict[Group, None]] = {}
        self._lengths: dict[int, int] = {}  # prefix length → how many indexed prefixes have it
        self._routes: dict[bytes, tuple[Group, ...]] = {}

    # -- membership ---------------------------------------------------------------------------

    def join(self, client: Hashable, fmt: str, prefixes: Iterable[bytes]) -> Group:
        """Put ``client`` in the group for ``(fmt, prefixes)`` (leaving its old group, if any)."""
        key = (fmt, frozenset(prefixes))
        old = self._client_group.get(client)
        if old is not None and old.key == key:
            return old
        group = self._groups.get(key)
        if group is None:
            group = Group(*key)
            self._groups[key] = group
            self._add_group(group)
        group.members[client] = None
        self._client_group[client] = group
        if old is not None:
            self._remove_member(old, client)
        return group

    def leave(self, client: Hashable) -> None:
        """Forget ``client``; nothing happens if it is not in the index."""
        group = self._client_group.pop(client, None)
        if group is not None:
            self._remove_member(group, client)

    def group_of(self, client: Hashable) -> Group | None:
        return self._client_group.get(client)

    def _remove_member(self, group: Group, client: Hashable) -> None:
        del group.members[client]
        if not group.members:
            del self._groups[group.key]
            self._remove_group(group)

    def _add_group(self, group: Group) -> None:
        for prefix in group.prefixes:
            holders = self._by_prefix.get(prefix)
            if holders is None:
                holders = self._by_prefix[prefix] = {}
                self._lengths[len(prefix)] = self._lengths.get(len(prefix), 0) + 1
                self._on_first(prefix)
            holders[group] = None
        self._routes.clear()

    def _remove_group(self, group: Group) -> None:
        for prefix in group.prefixes:
            holders = self._by_prefix[prefix]
            del holders[group]
            if not holders:
                del self._by_prefix[prefix]
                n = self._lengths[len(prefix)] - 1
                if n:
                    self._lengths[len(prefix)] = n
                else:
                    del self._lengths[len(prefix)]
                self._on_last(prefix)
        self._routes.clear()

    # -- routing ------------------------------------------------------------------------------

    def route(self, topic: bytes) -> tuple[Group, ...]:
        """The groups that want ``topic``, each once."""
        groups = self._routes.get(topic)
        if groups is None:
            groups = self._compute_route(topic)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[topic] = groups
        return groups

    def _compute_route(self, topic: bytes) -> tuple[Group, ...]:
        found: dict[Group, None] = {}
        by_prefix = self._by_prefix
        n = len(topic)
        # Only the prefix lengths somebody subscribed to are looked up: O(distinct lengths).
        for length in self._lengths:
            if length <= n:
                holders = by_prefix.get(topic[:length])
                if holders:
                    found.update(holders)
        return tuple(found)

    # -- introspection ------------------------------------------------------------------------

    def prefixes(self) -> set[bytes]:
        """The prefixes the upstream socket is subscribed to."""
        return set(self._by_prefix)

    @property
    def clients(self) -> int:
        return len(self._client_group)

    @property
    def groups(self) -> int:
        return len(self._groups)
