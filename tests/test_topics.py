"""topics: prefix index, groups, routing each client once, upstream reference counts."""

from __future__ import annotations

from zmqws.topics import ROUTE_CACHE_SIZE, TopicIndex


def members(groups: tuple) -> set:
    return {c for g in groups for c in g.members}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.index = TopicIndex(lambda p: self.events.append(("sub", p)),
                                lambda p: self.events.append(("unsub", p)))


def test_prefix_match_like_zeromq() -> None:
    idx = TopicIndex()
    idx.join("a", "json", [b"apache"])
    idx.join("b", "json", [b"linux"])
    idx.join("all", "json", [b""])
    assert members(idx.route(b"apache.access")) == {"a", "all"}
    assert members(idx.route(b"linux")) == {"b", "all"}
    assert members(idx.route(b"lin")) == {"all"}


def test_empty_set_matches_nothing() -> None:
    idx = TopicIndex()
    idx.join("a", "json", [])
    assert idx.route(b"x") == ()


def test_a_client_is_routed_once_however_many_prefixes_match() -> None:
    idx = TopicIndex()
    idx.join("a", "json", [b"", b"a", b"ap", b"apache"])
    groups = idx.route(b"apache")
    assert len(groups) == 1 and members(groups) == {"a"}


def test_clients_with_same_format_and_prefixes_share_a_group() -> None:
    idx = TopicIndex()
    for c in range(100):
        idx.join(c, "raw", [b"x"])
    idx.join("j", "json", [b"x"])
    assert idx.groups == 2
    assert sorted(len(g.members) for g in idx.route(b"x")) == [1, 100]


def test_upstream_subscriptions_are_reference_counted() -> None:
    r = Recorder()
    r.index.join("a", "json", [b"x"])
    r.index.join("b", "raw", [b"x", b"y"])
    assert r.events == [("sub", b"x"), ("sub", b"y")]
    r.index.leave("a")
    assert r.events[-1] == ("sub", b"y")  # b still wants x
    r.index.leave("b")
    assert sorted(r.events[2:]) == [("unsub", b"x"), ("unsub", b"y")]
    assert r.index.prefixes() == set()


def test_moving_a_client_between_groups_keeps_counts_right() -> None:
    r = Recorder()
    r.index.join("a", "json", [b"x"])
    r.index.join("a", "json", [b"y"])
    assert r.events == [("sub", b"x"), ("sub", b"y"), ("unsub", b"x")]
    assert members(r.index.route(b"x")) == set()
    assert members(r.index.route(b"y")) == {"a"}
    assert r.index.clients == 1 and r.index.groups == 1


def test_rejoining_the_same_group_is_a_no_op() -> None:
    r = Recorder()
    g1 = r.index.join("a", "json", [b"x"])
    g2 = r.index.join("a", "json", [b"x"])
    assert g1 is g2 and r.events == [("sub", b"x")]


def test_leaving_unknown_client_is_harmless() -> None:
    TopicIndex().leave("nobody")


def test_route_cache_is_invalidated_on_change_and_bounded() -> None:
    idx = TopicIndex()
    idx.join("a", "json", [b"t"])
    assert members(idx.route(b"t1")) == {"a"}
    idx.join("b", "json", [b"t1"])
    assert members(idx.route(b"t1")) == {"a", "b"}
    for i in range(ROUTE_CACHE_SIZE + 10):
        idx.route(b"t%d" % i)
    assert len(idx._routes) <= ROUTE_CACHE_SIZE


def test_many_topics_route_without_scanning_clients() -> None:
    """10,000 clients on 1,000 topics: a route holds exactly the 10 subscribers of its topic."""
    idx = TopicIndex()
    for c in range(10_000):
        idx.join(c, "raw", [b"topic.%04d" % (c % 1000)])
    groups = idx.route(b"topic.0042")
    assert members(groups) == {c for c in range(10_000) if c % 1000 == 42}
    assert idx.groups == 1000
