"""The live page in a real browser: headless Chromium driven by Playwright, a real gateway
subprocess, real ZeroMQ publishers.

The page is loaded from the gateway itself (``http://127.0.0.1:PORT/``), so the strict
Content-Security-Policy it is served with applies: a violation would show up as a console error,
which every test fails on.

Synchronisation is by condition, never by sleeping: Playwright's auto-waiting ``expect`` and
``wait_for_function`` in the page, and, on the ZeroMQ side, an XPUB socket that reads the
subscriptions the gateway sends upstream, so a test publishes a topic only once the gateway is
known to want it.

Chromium is Debian's (``/usr/bin/chromium``, or ``$ZMQWS_CHROMIUM``); ``playwright install`` is
never needed. Without Chromium or Playwright the tests skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket  # websocket-client: the witness client in the filter test
import zmq
from conftest import SCALE, UNIT, GatewayProc, lines_of, loghub, wait_until

from zmqws.envelope import encode_meta

try:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (pip install playwright; no browser download "
                "needed, the tests use the system Chromium)", allow_module_level=True)

CHROMIUM = os.environ.get("ZMQWS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SCREENSHOT = "/tmp/zmqws-page.png"
MS = 1000 * UNIT  # Playwright counts in milliseconds

pytestmark = pytest.mark.timeout(120 * max(1.0, SCALE))


# -- page helpers -------------------------------------------------------------------------------

# Every rendered message row, as the user sees it.
ROWS_JS = """() => [...document.querySelectorAll('#messages .msg')].map(r => ({
    topic: r.querySelector('.topic')?.textContent ?? null,
    data: r.querySelector('.data')?.textContent ?? null,
    meta: r.querySelector('.meta')?.textContent ?? null,
    binary: r.classList.contains('binary'),
}))"""

# The message rows after the last "filter: ..." notice, i.e. after the last acknowledgement.
ROWS_AFTER_FILTER_JS = """() => {
    const rows = [...document.querySelectorAll('#messages .msg, #messages .notice')];
    let i = rows.length - 1;
    while (i >= 0 && !rows[i].matches('.notice.filter')) i--;
    return rows.slice(i + 1).filter(r => r.matches('.msg')).map(r => ({
        topic: r.querySelector('.topic').textContent,
        data: r.querySelector('.data').textContent,
    }));
}"""

HAS_DATA_JS = """(want) => {
    const have = new Set([...document.querySelectorAll('#messages .msg .data')]
                         .map(e => e.textContent));
    return want.every(w => have.has(w));
}"""


def rows(page: Page) -> list[dict[str, Any]]:
    return page.evaluate(ROWS_JS)


def wait_for_data(page: Page, *data: str, timeout: float = 10) -> None:
    """Wait until a message row shows each of ``data`` (exact text of its .data cell)."""
    page.wait_for_function(HAS_DATA_JS, arg=list(data), timeout=timeout * MS)


def subscriptions(page: Page) -> list[str]:
    return page.eval_on_selector_all("#subscriptions [data-topic]", "cs => cs.map(c => c.dataset.topic)")


def expect_subscriptions(page: Page, *topics: str, timeout: float = 10) -> None:
    """Wait until the chips show exactly ``topics`` (the gateway's acknowledged list)."""
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll('#subscriptions [data-topic]')]"
        ".map(c => c.dataset.topic)) === JSON.stringify(want)",
        arg=sorted(topics), timeout=timeout * MS,
    )


def expect_open(page: Page, timeout: float = 10) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=timeout * MS)
    expect(page.locator("#status")).to_have_text("open")


# -- ZeroMQ side --------------------------------------------------------------------------------

class Publisher:
    """A PUB that can see what its subscriber wants: an XPUB socket connected to the gateway.

    The gateway subscribes its SUB socket only to what clients ask for, and a subscription travels
    to the publisher asynchronously. XPUB hands those subscription messages to the application,
    so :meth:`send` waits until the topic is wanted before publishing it: nothing is lost to the
    slow-joiner race, and no probe messages are needed.
    """

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)  # a burst must not be dropped at the source
        self.sock.connect(endpoint)
        self.subs: set[bytes] = set()
        self.seq = 0

    def _read(self) -> None:
        while self.sock.poll(0):
            msg = self.sock.recv()
            if msg[:1] == b"\x01":
                self.subs.add(msg[1:])
            elif msg[:1] == b"\x00":
                self.subs.discard(msg[1:])

    def wants(self, topic: bytes) -> bool:
        self._read()
        return any(topic.startswith(p) for p in self.subs)

    def wait_wanted(self, topic: bytes, timeout: float = 10) -> None:
        wait_until(lambda: self.wants(topic), timeout, f"the gateway to subscribe to {topic!r}")

    def send(self, topic: str | bytes, data: str | bytes, *, meta: str | None = None) -> None:
        t = topic.encode() if isinstance(topic, str) else topic
        d = data.encode() if isinstance(data, str) else data
        self.wait_wanted(t)
        frames = [t, d]
        if meta is not None:
            self.seq += 1
            frames.append(encode_meta(meta, self.seq, time.time()))
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ZMQWS_CHROMIUM)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                  timeout=60 * MS)
        except Error as exc:
            pytest.skip(f"cannot launch {CHROMIUM}: {exc}")
        yield b
        b.close()


class Session:
    """One browser tab on the page, with everything the page complained about."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console.error: {msg.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def allow(self, pattern: str) -> None:
        """Expect console errors matching ``pattern`` (the browser's own, not the page's)."""
        self.allowed.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def open(self, gw: GatewayProc, query: str = "") -> Page:
        self.page.goto(f"{gw.url}/{query}", timeout=30 * MS)
        expect_open(self.page)
        return self.page


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10 * MS)
    s = Session(context.new_page())
    yield s
    context.close()
    # The page must never log an error or pop a dialog, whatever the test did.
    assert s.unexpected_errors() == [], "errors in the page"
    assert s.dialogs == [], "the page opened a dialog"


@pytest.fixture
def publisher_factory() -> Iterator[Callable[[GatewayProc], Publisher]]:
    made: list[Publisher] = []

    def make(gw: GatewayProc) -> Publisher:
        p = Publisher(gw.zmq_endpoint)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def pub(gateway: GatewayProc, publisher_factory: Callable[[GatewayProc], Publisher]) -> Publisher:
    return publisher_factory(gateway)


# -- tests --------------------------------------------------------------------------------------

def test_page_connects_and_shows_live_messages(gateway: GatewayProc, pub: Publisher,
                                               session: Session) -> None:
    page = session.open(gateway)
    assert subscriptions(page) == [""]  # no topic= in the URL: everything
    expect(page.locator("#subscriptions [data-topic='']")).to_have_text("all topics")

    pub.send("web01.access", "GET / HTTP/1.1 200")
    pub.send("web02.error", "upstream timed out", meta="web02:/var/log/nginx/error.log")
    pub.send("db.slow", "")
    wait_for_data(page, "GET / HTTP/1.1 200", "upstream timed out", "")

    got = {r["data"]: r for r in rows(page)}
    assert got["GET / HTTP/1.1 200"]["topic"] == "web01.access"
    assert got["GET / HTTP/1.1 200"]["meta"] is None  # a foreign producer: no source
    assert got["upstream timed out"]["topic"] == "web02.error"
    assert got["upstream timed out"]["meta"] == "web02:/var/log/nginx/error.log#1"
    assert got[""]["topic"] == "db.slow"
    # Newest at the bottom.
    assert [r["data"] for r in rows(page)][-3:] == ["GET / HTTP/1.1 200", "upstream timed out", ""]


def test_topic_filter_subscribe_and_unsubscribe(gateway: GatewayProc, pub: Publisher,
                                                session: Session) -> None:
    page = session.open(gateway)
    # A second client that wants everything: the gateway keeps receiving beta while the page
    # filters it out, so the page's filter is what is tested, not the publisher's.
    witness = websocket.create_connection(gateway.ws_url, timeout=10 * UNIT)
    try:
        page.fill("#topic-input", "alpha")
        page.press("#topic-input", "Enter")
        # Subscribed to alpha, then "" dropped: the chips show the gateway's final answer.
        expect_subscriptions(page, "alpha")
        expect(page.locator("#topic-input")).to_have_value("")
        assert page.url.endswith("/?topic=alpha")  # a reload keeps the filter

        sent = []
        for i in range(3):
            for topic in ("beta.x", "alpha.x"):
                pub.send(topic, f"{topic} {i}")
                sent.append(f"{topic} {i}")
        pub.send("alpha.end", "alpha end")
        wait_for_data(page, "alpha.x 0", "alpha.x 1", "alpha.x 2", "alpha end")
        # The gateway did forward beta (the witness got it, before alpha end)...
        seen = []
        while "alpha end" not in seen:
            m = json.loads(witness.recv())
            if "data" in m:
                seen.append(m["data"])
        assert [d for d in seen if d.startswith("beta")] == ["beta.x 0", "beta.x 1", "beta.x 2"]
        # ...but not to the page, after the filter was acknowledged.
        after = page.evaluate(ROWS_AFTER_FILTER_JS)
        assert [r["data"] for r in after] == ["alpha.x 0", "alpha.x 1", "alpha.x 2", "alpha end"]
        assert not any(r["data"].startswith("beta") for r in rows(page)[-4:])

        # A second prefix, with the button this time.
        page.fill("#topic-input", "gamma")
        page.click("#topic-add")
        expect_subscriptions(page, "alpha", "gamma")
        page.click("#subscriptions [data-topic='gamma'] button")
        expect_subscriptions(page, "alpha")

        # Removing the last prefix goes back to everything, never to an empty set.
        page.click("#subscriptions [data-topic='alpha'] button")
        expect_subscriptions(page, "")
        expect(page.locator("#subscriptions [data-topic=''] button")).to_have_count(0)
        assert not page.url.endswith("topic=alpha")
        pub.send("beta.x", "beta again")
        wait_for_data(page, "beta again")
    finally:
        witness.close()


def test_rate_table_and_screenshot(gateway: GatewayProc, pub: Publisher, session: Session) -> None:
    page = session.open(gateway)
    samples = {
        "web01.apache.error_log": lines_of(loghub("Apache_2k.log"))[:40],
        "lab.sshd": lines_of(loghub("OpenSSH_2k.log"))[:20],
        "linux.kernel": lines_of(loghub("Linux_2k.log"))[:10],
    }
    counts = {t: len(v) for t, v in samples.items()}
    # Each topic spread evenly over the burst, so that the log ends with a mix of them.
    order = sorted(((j + 1) / len(lines), topic, line)
                   for topic, lines in samples.items() for j, line in enumerate(lines))
    pub.send("binary.blob", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    for _, topic, line in order:
        pub.send(topic, line, meta=f"{topic.split('.')[0]}:/var/log/{topic.split('.', 1)[1]}")
    counts["binary.blob"] = 1

    # The table ticks once a second: each topic must show a non-zero rate in some tick (the
    # burst may straddle two), and finally its total.
    page.wait_for_function(
        """(want) => {
            const seen = window.__rateSeen = window.__rateSeen || {};
            const rows = new Map([...document.querySelectorAll('#rates tr[data-topic]')]
                .map(r => [r.dataset.topic, r]));
            for (const [topic, tr] of rows)
                if (parseFloat(tr.querySelector('.rate').textContent) > 0) seen[topic] = true;
            return Object.entries(want).every(([topic, n]) => seen[topic] && rows.has(topic)
                && rows.get(topic).querySelector('.count').textContent === String(n));
        }""",
        arg=counts, timeout=10 * MS,
    )
    table = page.eval_on_selector_all(
        "#rates tr[data-topic]",
        "trs => trs.map(t => [t.dataset.topic, parseFloat(t.querySelector('.rate').textContent)])",
    )
    rates = [r for _, r in table]
    assert rates == sorted(rates, reverse=True), f"not sorted by rate: {table}"
    assert len(table) <= 20
    expect(page.locator("#total")).to_have_attribute("data-count", str(sum(counts.values())))
    wait_for_data(page, samples["linux.kernel"][-1].decode())
    page.screenshot(path=SCREENSHOT)


def test_reconnect_after_gateway_restart(gateway_factory: Callable[..., GatewayProc],
                                         publisher_factory: Callable[[GatewayProc], Publisher],
                                         session: Session) -> None:
    gw = gateway_factory()
    page = session.open(gw, "?topic=alpha")
    expect_subscriptions(page, "alpha")
    pub = publisher_factory(gw)
    pub.send("alpha.1", "before restart")
    wait_for_data(page, "before restart")

    # The browser reports the refused connections itself; they are expected here.
    session.allow(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws.*' failed")
    gw.stop(signal.SIGKILL)
    expect(page.locator("#status")).not_to_have_attribute("data-state", "open", timeout=10 * MS)
    expect(page.locator("#status")).to_have_text(re.compile(r"reconnecting in \d+ s"))
    # Let at least one reconnection attempt fail, so the backoff path runs.
    page.wait_for_function("() => Number(document.querySelector('#status').dataset.attempt) >= 2",
                           timeout=10 * MS)

    gw2 = gateway_factory(port=gw.port, zmq_port=gw.zmq_port)
    # Backoff is 0.5 s doubling with jitter: a few seconds at most for a restart this quick.
    expect_open(page, timeout=40)
    # The subscriptions came back through ?topic= in the new socket's URL.
    gw2.wait_subscribed("alpha")
    assert gw2.health()["upstream"]["subscriptions"] == ["alpha"]
    expect_subscriptions(page, "alpha")
    pub2 = publisher_factory(gw2)
    pub2.send("alpha.2", "after restart")
    wait_for_data(page, "after restart")
    notices = page.eval_on_selector_all("#messages .notice", "ns => ns.map(n => n.textContent)")
    assert any("disconnected" in n for n in notices), notices
    assert sum("connected, filter: alpha" in n for n in notices) == 2, notices


def test_hostile_and_binary_data_render_as_text(gateway: GatewayProc, pub: Publisher,
                                                session: Session) -> None:
    page = session.open(gateway)
    hostile = "<img src=x onerror=alert(1)>"
    script = "<script>window.__pwned = 1</script><b>bold</b>"
    pub.send("evil<i>topic</i>", hostile)
    pub.send("evil.2", script)
    pub.send("bin.raw", b"\xff\xfe\x00\x01")
    pub.send("bin.latin1", "café au lait".encode("latin-1"))
    wait_for_data(page, hostile, script)
    page.wait_for_function("() => document.querySelectorAll('#messages .msg.binary').length === 1 "
                           "&& document.querySelectorAll('#messages .msg.decoded').length === 1")

    got = {r["topic"]: r for r in rows(page)}
    assert got["evil<i>topic</i>"]["data"] == hostile
    assert got["evil.2"]["data"] == script
    assert page.locator("#messages img, #messages script, #messages b, #messages i").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    assert got["bin.raw"]["binary"] is True
    assert got["bin.raw"]["data"] == "4 bytes: ff fe 00 01"
    assert got["bin.latin1"]["binary"] is False
    assert got["bin.latin1"]["data"] == "caf\ufffd au lait"  # best effort: one byte replaced
    assert session.dialogs == []


def test_error_reply_is_shown(gateway: GatewayProc, session: Session) -> None:
    page = session.open(gateway)
    expect(page.locator("#error")).to_be_hidden()
    page.fill("#topic-input", "x" * 2000)  # longer than the gateway's --max-topic (1024)
    page.click("#topic-add")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("topic_too_long")
    expect(page.locator("#messages .notice.error")).to_contain_text("topic_too_long")
    assert subscriptions(page) == [""]  # unchanged: the gateway refused
    page.click("#error-close")
    expect(page.locator("#error")).to_be_hidden()


def test_pause_clear_and_auto_scroll(gateway: GatewayProc, pub: Publisher,
                                     session: Session) -> None:
    page = session.open(gateway)
    log = page.locator("#messages")
    at_bottom = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 24"

    for i in range(200):
        pub.send("fill", f"line {i}")
    wait_for_data(page, "line 199")
    assert log.evaluate(at_bottom)  # followed the newest row
    expect(page.locator("#resume-scroll")).to_be_hidden()

    # Scrolled up (by the user: a mouse wheel): the view stays put, and a button offers to
    # follow again.
    log.hover()
    page.mouse.wheel(0, -100_000)
    expect(page.locator("#resume-scroll")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#messages').scrollTop === 0")
    pub.send("fill", "while scrolled up")
    wait_for_data(page, "while scrolled up")
    assert log.evaluate("el => el.scrollTop") == 0
    expect(page.locator("#resume-scroll")).to_contain_text("new")
    page.click("#resume-scroll")
    expect(page.locator("#resume-scroll")).to_be_hidden()
    assert log.evaluate(at_bottom)

    # Paused: messages wait, counted; resumed: they show.
    page.click("#pause")
    expect(page.locator("#paused-banner")).to_be_visible()
    pub.send("fill", "while paused")
    expect(page.locator("#paused-banner")).to_contain_text("1 new message")
    assert "while paused" not in [r["data"] for r in rows(page)]
    page.click("#pause")
    wait_for_data(page, "while paused")
    expect(page.locator("#paused-banner")).to_be_hidden()

    page.click("#clear")
    expect(page.locator("#messages .msg, #messages .notice")).to_have_count(0)
    pub.send("fill", "after clear")
    wait_for_data(page, "after clear")


def test_rows_are_bounded(gateway: GatewayProc, pub: Publisher, session: Session) -> None:
    page = session.open(gateway)
    n = 2600
    pub.wait_wanted(b"bulk")
    for i in range(n):
        pub.sock.send_multipart([b"bulk", b"row %d" % i])
    wait_for_data(page, f"row {n - 1}", timeout=30)
    count = page.locator("#messages .msg, #messages .notice").count()
    assert count == 2000, count
    assert rows(page)[-1]["data"] == f"row {n - 1}"
    expect(page.locator("#total")).to_have_attribute("data-count", str(n), timeout=10 * MS)
