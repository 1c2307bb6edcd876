"""hub: one batch in, one write per client out; slow clients dropped-with-gap or closed."""

from __future__ import annotations

import json
import logging

from test_envelope import parse_frame, refuse_constant

from zmqws.envelope import encode_meta
from zmqws.hub import HOLD_PARTS, Hub, HubStats, Outbox
from zmqws.sequence import GapCounter


class Client:
    """A subscriber that records every write and close, as a transport would see them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def outbox(self, hub: Hub, cap: int = 1 << 20, policy: str = "drop") -> Outbox:
        return Outbox(self.writes.append, lambda c, r: setattr(self, "closed", (c, r)), cap, policy,
                      hub.stats)

    def frames(self) -> list[tuple[int, bytes]]:
        out, buf = [], b"".join(self.writes)
        while buf:
            n, off = buf[1] & 0x7F, 2
            if n == 126:
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, off = int.from_bytes(buf[2:10], "big"), 10
            out.append(parse_frame(buf[: off + n]))
            buf = buf[off + n:]
        return out

    def data(self) -> list[bytes]:
        return [p for op, p in self.frames() if op == 2]

    def json(self) -> list[dict]:
        return [json.loads(p) for op, p in self.frames() if op == 1]


def join(hub: Hub, fmt: str = "raw", prefixes=(b"",), **kw) -> Client:
    c = Client()
    hub.join(c, c.outbox(hub, **kw), fmt, frozenset(prefixes))
    return c


def test_one_write_per_client_per_batch() -> None:
    hub = Hub()
    clients = [join(hub) for _ in range(3)]
    hub.dispatch([[b"t", b"m%d" % i] for i in range(100)])
    for c in clients:
        assert len(c.writes) == 1
        assert c.data() == [b"m%d" % i for i in range(100)]
    assert hub.stats.messages_in == 100 and hub.stats.deliveries == 300


def test_members_of_a_group_get_the_same_bytes_object() -> None:
    hub = Hub()
    a, b = join(hub), join(hub)
    hub.dispatch([[b"t", b"x"], [b"t", b"y"]])
    assert a.writes[0] is b.writes[0]


def test_routing_by_prefix_and_formats() -> None:
    hub = Hub()
    apache = join(hub, "json", [b"apache"])
    linux = join(hub, "raw", [b"linux"])
    everything = join(hub, "json", [b""])
    hub.dispatch([[b"apache", b"a1"], [b"linux", b"l1"], [b"other", b"o1"], [b"apache", b"a2"]])
    assert [m["data"] for m in apache.json()] == ["a1", "a2"]
    assert linux.data() == [b"l1"]
    assert [m["data"] for m in everything.json()] == ["a1", "l1", "o1", "a2"]
    assert [m["seq"] for m in everything.json()] == [1, 2, 3, 4]


def test_metadata_reaches_json_clients() -> None:
    hub = Hub()
    c = join(hub, "json")
    hub.dispatch([[b"t", b"d", encode_meta("h:/f", 5, 1.0)]])
    m = c.json()[0]
    assert (m["source"], m["source_seq"], m["ts"]) == ("h:/f", 5, 1.0)


def test_malformed_and_oversize_are_counted_not_fatal() -> None:
    hub = Hub(max_outbound=10)
    c = join(hub)
    hub.dispatch([[], [b"", b"x"], [b"t", b"x" * 11], [b"t", b"ok"]])
    assert c.data() == [b"ok"]
    assert hub.stats.malformed == 2 and hub.stats.oversize == 1
    assert c.json() == [{"op": "gap", "missed": 1, "reason": "oversize"}]  # told, not silent


def test_an_oversize_message_that_reveals_an_upstream_gap_reports_both() -> None:
    """received + told missed = published, also when the message after a loss is too large."""
    hub = Hub(max_outbound=10)
    c = join(hub)
    hub.dispatch([[b"t", b"a", encode_meta("p", 1, 0.0)],
                  [b"t", b"x" * 11, encode_meta("p", 5, 0.0)],  # 3 lost upstream, then too large
                  [b"t", b"b", encode_meta("p", 6, 0.0)]])
    assert c.data() == [b"a", b"b"]
    gaps = c.json()
    assert gaps == [{"op": "gap", "source": "p", "missed": 3},
                    {"op": "gap", "missed": 1, "reason": "oversize", "source": "p"}]
    assert len(c.data()) + sum(g["missed"] for g in gaps) == 6
    assert hub.stats.source_missing == 3 and hub.stats.oversize == 1


def test_unrouted_messages_are_counted() -> None:
    hub = Hub()
    join(hub, prefixes=[b"a"])
    hub.dispatch([[b"b", b"x"]])
    assert hub.stats.unrouted == 1


def test_resubscribe_and_leave() -> None:
    hub = Hub()
    c = join(hub, prefixes=[b"a"])
    hub.resubscribe(c, frozenset([b"b"]))
    hub.dispatch([[b"a", b"1"], [b"b", b"2"]])
    assert c.data() == [b"2"]
    hub.leave(c)
    hub.dispatch([[b"b", b"3"]])
    assert c.data() == [b"2"] and hub.clients == 0


def test_upstream_subscription_callbacks() -> None:
    subs: list[bytes] = []
    unsubs: list[bytes] = []
    hub = Hub(subs.append, unsubs.append)
    c = join(hub, prefixes=[b"a", b"b"])
    hub.leave(c)
    assert sorted(subs) == [b"a", b"b"] and sorted(unsubs) == [b"a", b"b"]


class TestSlowClient:
    def test_paused_client_queues_then_resumes_in_order(self) -> None:
        hub = Hub()
        slow, fast = join(hub), join(hub)
        hub._outboxes[slow].pause()
        hub.dispatch([[b"t", b"1"]])
        hub.dispatch([[b"t", b"2"]])
        assert slow.writes == [] and fast.data() == [b"1", b"2"]
        hub._outboxes[slow].resume()
        assert slow.data() == [b"1", b"2"] and slow.json() == []

    def test_drop_policy_drops_oldest_and_sends_gap(self) -> None:
        hub = Hub()
        slow = join(hub, cap=250)
        box = hub._outboxes[slow]
        box.pause()
        for i in range(10):
            hub.dispatch([[b"t", b"%03d" % i + b"x" * 96]])  # ~102 bytes per batch
        assert box.queued <= 250
        box.resume()
        gap = slow.json()
        assert gap == [{"op": "gap", "missed": 8}]
        assert [d[:3] for d in slow.data()] == [b"008", b"009"]
        assert hub.stats.dropped_slow == 8

    def test_close_policy_closes_with_1008(self) -> None:
        hub = Hub()
        slow = join(hub, cap=150, policy="close")
        other = join(hub)
        hub._outboxes[slow].pause()
        for i in range(3):
            hub.dispatch([[b"t", b"x" * 100]])
        assert slow.closed == (1008, "client too slow")
        assert len(other.data()) == 3
        assert hub.stats.closed_slow == 1

    def test_resume_stops_when_the_transport_fills_again(self) -> None:
        stats = HubStats()
        written: list[bytes] = []
        box: Outbox

        def write(b: bytes) -> None:
            written.append(b)
            box.pause()  # the transport calls pause_writing from inside write

        box = Outbox(write, lambda c, r: None, 1 << 20, "drop", stats)
        box.pause()
        box.deliver(b"a", 1)
        box.deliver(b"b", 1)
        box.resume()
        assert written == [b"a"] and box.queued == 1
        box.resume()
        assert written == [b"a", b"b"] and box.queue is None

    def test_idle_outbox_has_no_queue(self) -> None:
        box = Outbox(lambda b: None, lambda c, r: None, 100, "drop", HubStats())
        assert box.queue is None


class TestSourceGaps:
    def test_a_skipped_sequence_number_sends_a_gap_first(self) -> None:
        hub = Hub()
        c = join(hub, "json")
        hub.dispatch([[b"t", b"1", encode_meta("p:1", 1, 0.0)],
                      [b"t", b"2", encode_meta("p:1", 2, 0.0)],
                      [b"t", b"5", encode_meta("p:1", 5, 0.0)]])
        msgs = c.json()
        assert [m.get("data", m.get("op")) for m in msgs] == ["1", "2", "gap", "5"]
        assert msgs[2] == {"op": "gap", "source": "p:1", "missed": 2}
        assert hub.stats.source_missing == 2

    def test_raw_clients_get_the_gap_as_a_text_frame(self) -> None:
        hub = Hub()
        c = join(hub, "raw")
        hub.dispatch([[b"t", b"a", encode_meta("p", 1, 0.0)], [b"t", b"b", encode_meta("p", 3, 0.0)]])
        assert c.data() == [b"a", b"b"] and c.json() == [{"op": "gap", "source": "p", "missed": 1}]

    def test_sources_are_independent_and_duplicates_are_no_gap(self) -> None:
        hub = Hub()
        c = join(hub, "json")
        hub.dispatch([[b"t", b"x", encode_meta("a", 1, 0.0)], [b"t", b"x", encode_meta("b", 7, 0.0)],
                      [b"t", b"x", encode_meta("a", 2, 0.0)], [b"t", b"x", encode_meta("a", 2, 0.0)],
                      [b"t", b"x", encode_meta("b", 8, 0.0)]])
        assert all("op" not in m for m in c.json()) and hub.stats.source_missing == 0

    def test_foreign_messages_without_numbers_still_flow(self) -> None:
        hub = Hub()
        c = join(hub)
        hub.dispatch([[b"t", b"plain"], [b"t plain one-frame"]])
        assert c.data() == [b"plain", b"plain one-frame"]

    def test_the_number_of_tracked_sources_is_bounded(self) -> None:
        hub = Hub()
        hub.max_sources = 3
        join(hub)
        hub.dispatch([[b"t", b"x", encode_meta(f"s{i}", 1, 0.0)] for i in range(10)])
        assert len(hub.sources) == 3 and hub.stats.untracked_sources == 7

    def test_dropping_a_batch_with_a_gap_reports_both(self) -> None:
        """What a slow client receives plus what it is told it missed = what was published."""
        hub = Hub()
        slow = join(hub, "raw", cap=50)
        hub._outboxes[slow].pause()
        hub.dispatch([[b"t", b"a", encode_meta("p", 1, 0.0)]])
        hub.dispatch([[b"t", b"x" * 60, encode_meta("p", 5, 0.0)]])  # 3 lost upstream
        hub.dispatch([[b"t", b"b", encode_meta("p", 6, 0.0)]])
        hub._outboxes[slow].resume()
        data = slow.data()
        missed = sum(m["missed"] for m in slow.json())
        assert len(data) + missed == 6, (data, slow.json())
        assert hub.stats.deliveries == 3


class TestOneBadMessage:
    """A message that raises costs only itself: not the rest of its batch, not a client group."""

    def test_metadata_that_once_raised_is_delivered_without_the_bad_field(self) -> None:
        hub = Hub()
        c = join(hub, "json")
        hub.dispatch([[b"t", b"1"],
                      [b"t", b"2", b'{"zmqws":1,"ts":1' + b"0" * 400 + b"}"],  # OverflowError once
                      [b"t", b"3", b'{"zmqws":1,"src":"\\ud800","seq":1}'],  # UnicodeEncodeError once
                      [b"t", b"4", b'{"zmqws":1,"ts":NaN}'],  # forwarded as bare NaN once
                      [b"t", b"5"]])
        msgs = [json.loads(p, parse_constant=refuse_constant) for op, p in c.frames()]
        assert [m["data"] for m in msgs] == ["1", "2", "3", "4", "5"]
        assert "ts" not in msgs[1] and "ts" not in msgs[3] and msgs[2]["source"] == "\\ud800"
        assert hub.stats.malformed == 0

    def test_the_batch_and_the_groups_go_on_after_an_exception(self, caplog) -> None:
        class Unforeseen(GapCounter):
            """A stand-in for any bug a producer's message may hit inside dispatch."""

            def observe(self, source: str, seq: int):  # type: ignore[no-untyped-def]
                if source == "bad":
                    raise RuntimeError("unforeseen")
                return super().observe(source, seq)

        hub = Hub()
        hub.sources = Unforeseen()
        raw, js = join(hub, "raw"), join(hub, "json")
        bad = [b"t", b"bad", encode_meta("bad", 1, 0.0)]
        with caplog.at_level(logging.WARNING, logger="zmqws.hub"):
            hub.dispatch([[b"t", b"1"], bad, [b"t", b"2"]])
            hub.dispatch([[b"t", b"3"]])  # the groups that held parts when it raised still get data
            for _ in range(3):
                hub.dispatch([bad])
        assert raw.data() == [b"1", b"2", b"3"]
        assert [m["data"] for m in js.json()] == ["1", "2", "3"]
        assert hub.stats.malformed == 4 and hub.unreadable == 4
        # One line each on the 1st, 2nd and 4th time, at WARNING, without a traceback.
        records = [r for r in caplog.records if r.name == "zmqws.hub"]
        assert len(records) == 3
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)
        assert "RuntimeError: unforeseen" in records[0].getMessage()

    def test_a_failing_client_does_not_cost_the_others_their_batch(self, caplog) -> None:
        hub = Hub()
        before = join(hub, "raw")
        broken = Client()

        def write(b: bytes) -> None:
            raise OSError("a transport bug")

        hub.join(broken, Outbox(write, lambda c, r: None, 1 << 20, "drop", hub.stats), "raw",
                 frozenset([b""]))
        after, other = join(hub, "raw"), join(hub, "json", [b"t"])
        with caplog.at_level(logging.ERROR, logger="zmqws.hub"):
            hub.dispatch([[b"t", b"1"]])
            hub.dispatch([[b"t", b"2"]])
        assert before.data() == after.data() == [b"1", b"2"]
        assert [m["data"] for m in other.json()] == ["1", "2"]
        assert [r.levelno for r in caplog.records if r.name == "zmqws.hub"] == [logging.ERROR] * 2


# -- holding groups over while a burst lasts ----------------------------------------------------


def test_a_burst_holds_small_groups_until_the_input_drains() -> None:
    """With more ready, a group with few messages waits; the drained batch writes all, in order."""
    hub = Hub()
    busy, rare = join(hub, prefixes=[b"busy"]), join(hub, prefixes=[b"rare"])
    busy_msgs = [[b"busy", b"b%d" % i] for i in range(HOLD_PARTS)]
    hub.dispatch(busy_msgs + [[b"rare", b"r0"]], more=True)
    assert len(busy.writes) == 1 and busy.data() == [b"b%d" % i for i in range(HOLD_PARTS)]
    assert rare.writes == []  # held over: one message would have cost a write of its own
    hub.dispatch([[b"rare", b"r1"]], more=True)
    assert rare.writes == []
    hub.dispatch([], more=False)  # the input drained: everything held goes out in one write
    assert len(rare.writes) == 1 and rare.data() == [b"r0", b"r1"]
    assert hub.stats.deliveries == HOLD_PARTS + 2


def test_holding_lasts_at_most_hold_seconds() -> None:
    now = [100.0]
    hub = Hub(hold_seconds=0.05, clock=lambda: now[0])
    rare = join(hub, prefixes=[b"rare"])
    n = HOLD_PARTS - 2
    for i in range(n):  # batches within the hold time, too few messages for a write: all held
        hub.dispatch([[b"rare", b"%d" % i]], more=True)
        now[0] += 0.04 / n
    assert rare.writes == []
    now[0] = 100.051  # still more ready, but held long enough
    hub.dispatch([[b"rare", b"last"]], more=True)
    assert len(rare.writes) == 1 and rare.data() == [b"%d" % i for i in range(n)] + [b"last"]
    hub.dispatch([[b"rare", b"again"]], more=True)  # a new hold starts
    assert len(rare.writes) == 1
    hub.flush()
    assert rare.data()[-1] == b"again"


def test_burst_hold_zero_never_holds() -> None:
    hub = Hub(hold_seconds=0)
    rare = join(hub, prefixes=[b"rare"])
    hub.dispatch([[b"rare", b"x"]], more=True)
    assert rare.data() == [b"x"]


def test_without_more_nothing_is_held() -> None:
    hub = Hub()
    rare = join(hub, prefixes=[b"rare"])
    hub.dispatch([[b"rare", b"x"]])
    assert rare.data() == [b"x"]


def test_changing_topics_or_joining_writes_what_was_held_first() -> None:
    """A client leaving its group, or a new member arriving, must not lose or gain held messages."""
    hub = Hub()
    mover = join(hub, prefixes=[b"a"])
    hub.dispatch([[b"a", b"1"]], more=True)
    assert mover.writes == []
    hub.resubscribe(mover, frozenset([b"b"]))
    assert mover.data() == [b"1"]  # routed while it wanted "a": delivered, not lost
    hub.dispatch([[b"b", b"2"]], more=True)
    late = join(hub, prefixes=[b"b"])
    assert mover.data() == [b"1", b"2"] and late.writes == []  # published before it joined
    hub.dispatch([[b"b", b"3"]])
    assert mover.data() == [b"1", b"2", b"3"] and late.data() == [b"3"]


def test_held_parts_keep_gap_accounting_and_the_drop_policy() -> None:
    """Held frames carry their gap counts; a paused client still drops with an exact total."""
    hub = Hub()
    c = Client()
    outbox = c.outbox(hub, cap=50)
    hub.join(c, outbox, "raw", frozenset([b""]))
    hub.dispatch([[b"t", b"a", encode_meta("p", 1, 0.0)]], more=True)
    hub.dispatch([[b"t", b"b", encode_meta("p", 4, 0.0)]], more=True)  # 2 lost upstream
    outbox.pause()
    hub.dispatch([[b"t", b"x" * 60]])  # everything held, then too big for the cap: dropped
    outbox.resume()
    got = c.json()
    assert got == [{"op": "gap", "missed": 3 + 2}]  # a, b, x dropped + 2 reported upstream
    assert hub.stats.dropped_slow == 3 and hub.stats.source_missing == 2
