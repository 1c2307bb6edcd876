"""sequence: the verdict on each (source, seq) pair."""

from __future__ import annotations

import pytest

from zmqws.sequence import GapCounter, Verdict


@pytest.mark.parametrize(("seqs", "verdicts", "missing"), [
    ([1, 2, 3], [Verdict.FIRST, Verdict.IN_ORDER, Verdict.IN_ORDER], 0),
    ([5, 6, 9], [Verdict.FIRST, Verdict.IN_ORDER, Verdict.GAP], 2),
    ([1, 2, 2, 1], [Verdict.FIRST, Verdict.IN_ORDER, Verdict.DUPLICATE, Verdict.RESTART], 0),
    ([3, 4, 2, 5], [Verdict.FIRST, Verdict.IN_ORDER, Verdict.DUPLICATE, Verdict.IN_ORDER], 0),
])
def test_verdicts(seqs: list[int], verdicts: list[Verdict], missing: int) -> None:
    g = GapCounter()
    assert [g.observe("s", n).verdict for n in seqs] == verdicts
    assert g.missing == missing and "s" in g and "other" not in g and len(g) == 1


def test_gap_range_and_stats() -> None:
    g = GapCounter()
    g.observe("a", 1)
    obs = g.observe("a", 4)
    assert (obs.missing, obs.missing_range) == (2, (2, 3))
    st = g.stats("a")
    assert (st.count, st.first, st.last, st.missing) == (2, 1, 4, 2)
    assert [s.source for s in g] == ["a"]
