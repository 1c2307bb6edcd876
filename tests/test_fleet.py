"""A fleet of real processes: producers → ``zmqws proxy`` → three gateways → WebSocket clients.

Each producer is a :class:`zmqws.Publisher` in a subprocess that stamps every message with a
source per topic and its sequence number, so each client can check that it got its topics'
messages exactly once, in order; the proxy's counters show what left the producers.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from conftest import UNIT, GatewayProc, free_port, http_get, wait_until
from test_proxy import ProxyProc

# A producer: waits until someone wants each of its topics, sends N messages on each (or, with
# N = 0, until a line comes on stdin), optionally a big message nobody wants after each round,
# then prints how many it sent per source and how many sends it made in all.
PRODUCER = r"""
import json, sys, threading, time
import zmqws

endpoint, name, topics, noise, n, pause = sys.argv[1:7]
topics, n, pause = topics.split(","), int(n), float(pause)
stop = threading.Event()
if n == 0:
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
pub = zmqws.Publisher(endpoint, source=name, subscriber_timeout=120)
for t in topics:
    if not pub.wait_for_subscriber(t, 120):
        sys.exit(f"nobody wanted {t}")
print("ready", flush=True)
sent, i = {}, 0
while (i < n) if n else not stop.is_set():
    i += 1
    for t in topics:
        sent[t] = pub.send(t, f"{name} {t} {i}", source=f"{name}/{t}")
    if noise:
        pub.send(noise, "x" * 4000, source=f"{name}/{noise}")
    if pause:
        time.sleep(pause)  # pacing the stream, not synchronising anything
print(json.dumps({"sent": sent, "sends": pub.sent}), flush=True)
pub.close()
"""


class Producer:
    def __init__(self, endpoint: str, name: str, topics: list[str], noise: str = "",
                 n: int = 0, pause: float = 0.0) -> None:
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, endpoint, name, ",".join(topics), noise, str(n),
             str(pause)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", (line, self.stderr())

    def finish(self) -> dict[str, Any]:
        """Stop a producer that runs until told (n = 0), or wait for one that sends n; its
        final counts."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out = self.proc.stdout.readline()
        assert self.proc.wait(60 * UNIT) == 0, self.stderr()
        return json.loads(out)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                if f is not None:
                    f.close()
            except BrokenPipeError:  # "stop" still buffered for a producer that had ended
                pass


class Client(threading.Thread):
    """A WebSocket client (websocket-client) keeping every data message, until closed."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, timeout=60 * UNIT, **options)
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            while True:
                m = json.loads(self.ws.recv())
                if "op" not in m:
                    with self.lock:
                        self.messages.append(m)
        except (websocket.WebSocketException, OSError, json.JSONDecodeError):
            pass
        finally:
            self.closed.set()

    def seqs(self, source: str) -> list[int]:
        with self.lock:
            return [m["source_seq"] for m in self.messages if m["source"] == source]

    def sources(self) -> set[str]:
        with self.lock:
            return {m["source"] for m in self.messages}

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass
        self.join(10 * UNIT)


@pytest.fixture
def fleet() -> Iterator[dict[str, Any]]:
    """A proxy; gateways, producers and clients made by the test are ended here, each one even
    when ending another fails (ExitStack runs every callback, last made first)."""
    with contextlib.ExitStack() as cleanup:
        proxy = ProxyProc()
        cleanup.callback(proxy.close)
        backend_port = int(proxy.backend.rsplit(":", 1)[1])

        def gateway(**kw: Any) -> GatewayProc:
            g = GatewayProc(zmq_bind=False, zmq_port=backend_port, **kw)
            cleanup.callback(_end, g)
            return g

        def producer(*args: Any, **kw: Any) -> Producer:
            p = Producer(proxy.frontend, *args, **kw)
            cleanup.callback(p.kill)
            return p

        def client(url: str, **options: Any) -> Client:
            c = Client(url, **options)
            cleanup.callback(c.close)
            return c

        yield {"proxy": proxy, "gateway": gateway, "producer": producer, "client": client}


def _end(g: GatewayProc) -> None:
    if g.proc.poll() is None:
        g.proc.kill()
        g.proc.wait()
    g.out.close()
    g.err.close()


def _wait_all(client: Client, source: str, last: int, what: str) -> None:
    wait_until(lambda: (s := client.seqs(source)) and s[-1] >= last or client.closed.is_set(),
               60, what)


def test_three_producers_proxy_three_gateways_each_client_gets_its_topics_once(fleet) -> None:
    n = 400
    gw = [fleet["gateway"]() for _ in range(3)]
    web, db, both = (fleet["client"](gw[0].ws_url + "?topic=web."),
                     fleet["client"](gw[1].ws_url + "?topic=db."),
                     fleet["client"](gw[2].ws_url + "?topic=auth.&topic=web."))
    gw[0].wait_subscribed("web.")
    gw[1].wait_subscribed("db.")
    gw[2].wait_subscribed("auth.", "web.")
    proxy = fleet["proxy"]
    # Every gateway's subscription reached the proxy (XPUB_VERBOSER counts the second web.).
    wait_until(lambda: proxy.stats()["subscriptions"] >= 4, 20, "4 subscriptions at the proxy")
    producers = [fleet["producer"]("web-1", ["web.access"], n=n),
                 fleet["producer"]("db-1", ["db.query"], n=n),
                 fleet["producer"]("auth-1", ["auth.login"], noise="noise.debug", n=n)]
    for p in producers:
        p.ready()
    finals = [p.finish() for p in producers]
    assert finals[2]["sends"] == 2 * n  # the producer did call send for every noise message

    expect = {web: ["web-1/web.access"], db: ["db-1/db.query"],
              both: ["auth-1/auth.login", "web-1/web.access"]}
    for client, sources in expect.items():
        for source in sources:
            _wait_all(client, source, n, f"{source} at a client")
            assert client.seqs(source) == list(range(1, n + 1))  # each once, in order
        assert client.sources() == set(sources)  # and nothing else
        assert all(m["data"] == f"{m['source'].split('/')[0]} {m['topic']} {m['source_seq']}"
                   for m in client.messages)
    stats = proxy.stats()
    unit = 3 if stats["counts"] == "frames" else 1  # topic, data, metadata
    # Exactly the 3 x n wanted messages reached the proxy: the 400 noise messages (1.6 MB)
    # never left their producer, and web went out once although two gateways want it.
    assert stats["messages_in"] == stats["messages_out"] == 3 * n * unit, stats
    assert stats["bytes_in"] < n * 4000
    assert stats["subscriptions"] == 4 and stats["subscriptions_upstream"] >= 3
    for g in gw:
        h = g.health()
        assert h["sources"]["missing"] == 0 and h["dropped"]["slow_client"] == 0
    assert gw[0].health()["messages_in"] == n and gw[2].health()["messages_in"] == 2 * n


def test_a_restarted_gateway_resubscribes_and_the_others_lose_nothing(fleet) -> None:
    gw = [fleet["gateway"]() for _ in range(3)]
    web = fleet["client"](gw[0].ws_url + "?topic=web.")
    db = fleet["client"](gw[1].ws_url + "?topic=db.")
    both = fleet["client"](gw[2].ws_url + "?topic=auth.&topic=web.")
    gw[0].wait_subscribed("web.")
    gw[1].wait_subscribed("db.")
    gw[2].wait_subscribed("auth.", "web.")
    proxy = fleet["proxy"]
    wait_until(lambda: proxy.stats()["subscriptions"] >= 4, 20, "4 subscriptions at the proxy")
    # Streams that run until told to stop, about 100 messages a second per topic.
    producers = [fleet["producer"]("web-1", ["web.access"], pause=0.01),
                 fleet["producer"]("db-1", ["db.query"], pause=0.01),
                 fleet["producer"]("auth-1", ["auth.login"], pause=0.01)]
    for p in producers:
        p.ready()
    wait_until(lambda: db.count() >= 50, 30, "the db stream at the first gateway")

    # The db gateway dies (SIGKILL: no goodbye) and a new one starts on the same port.
    port = gw[1].port
    gw[1].proc.kill()
    gw[1].proc.wait()
    assert db.closed.wait(20 * UNIT)
    before = db.seqs("db-1/db.query")
    assert before == list(range(1, len(before) + 1))  # what it had got was whole
    new = fleet["gateway"](port=port)
    db2 = fleet["client"](new.ws_url + "?topic=db.")
    new.wait_subscribed("db.")
    wait_until(lambda: db2.count() >= 50, 30, "the db stream at the restarted gateway")
    finals = [p.finish() for p in producers]
    last = {f"{name}/{t}": seq for name, f in zip(("web-1", "db-1", "auth-1"), finals)
            for t, seq in f["sent"].items()}

    # The restarted gateway's new client gets the stream from where it joined, whole.
    _wait_all(db2, "db-1/db.query", last["db-1/db.query"], "the end of db at the new client")
    after = db2.seqs("db-1/db.query")
    assert after == list(range(after[0], last["db-1/db.query"] + 1)), after[:5]
    assert after[0] > before[-1]  # joined in the middle, after the old one died
    # The other gateways' clients lost nothing: every message, once, in order.
    for client, sources in ((web, ["web-1/web.access"]),
                            (both, ["auth-1/auth.login", "web-1/web.access"])):
        for source in sources:
            _wait_all(client, source, last[source], f"{source} at a client")
            assert client.seqs(source) == list(range(1, last[source] + 1))
    for g in (gw[0], gw[2], new):
        assert g.health()["sources"]["missing"] == 0


# -- behind a load balancer, with the configs of docs/deployment.md --------------------------------

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def _config_block(lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", DEPLOYMENT.read_text(), re.S)
    assert found, f"docs/deployment.md has no {lang} block"
    return found.group(1)


def _nginx(conf: Path, port: int, gw: list[GatewayProc]) -> list[str]:
    block = (_config_block("nginx").replace("127.0.0.1:8081", f"127.0.0.1:{gw[0].port}")
             .replace("127.0.0.1:8082", f"127.0.0.1:{gw[1].port}")
             .replace("listen 80;", f"listen 127.0.0.1:{port};"))
    assert str(gw[0].port) in block and str(port) in block
    tmp = conf.parent
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        "events {}\nhttp {\n"
        f"  access_log off;\n  client_body_temp_path {tmp}/body;\n"
        f"  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fcgi;\n"
        f"  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n{block}}}\n")
    return [shutil.which("nginx") or "nginx", "-p", str(tmp), "-c", str(conf)]


def _haproxy(conf: Path, port: int, gw: list[GatewayProc]) -> list[str]:
    text = (_config_block("haproxy").replace("127.0.0.1:8081", f"127.0.0.1:{gw[0].port}")
            .replace("127.0.0.1:8082", f"127.0.0.1:{gw[1].port}")
            .replace("bind :80", f"bind 127.0.0.1:{port}"))
    assert str(gw[1].port) in text and str(port) in text
    conf.write_text(text)
    return [shutil.which("haproxy") or "haproxy", "-db", "-f", str(conf)]


@pytest.mark.parametrize("balancer", ["nginx", "haproxy"])
def test_a_fleet_behind_the_documented_load_balancer_config(balancer: str, fleet,
                                                            tmp_path: Path) -> None:
    if not shutil.which(balancer) and not Path(f"/usr/sbin/{balancer}").exists():
        pytest.skip(f"{balancer} is not installed (apt-get install {balancer})")
    gw = [fleet["gateway"]() for _ in range(2)]
    port = free_port()
    make = _nginx if balancer == "nginx" else _haproxy
    args = make(tmp_path / f"{balancer}.conf", port, gw)
    args[0] = shutil.which(balancer) or f"/usr/sbin/{balancer}"
    log = (tmp_path / "lb.log").open("w+")
    lb = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            assert lb.poll() is None, (log.seek(0), log.read())
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        wait_until(listening, 20, f"{balancer} to listen")
        base = f"127.0.0.1:{port}"
        # Plain HTTP through it: the page and /health.
        status, _, body = http_get(f"http://{base}/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert http_get(f"http://{base}/")[0] == 200
        # Browsers' way: an Origin that matches the Host they asked for.
        clients = [fleet["client"](f"ws://{base}/ws?topic=lb.", origin=f"http://{base}")
                   for _ in range(4)]
        for g in gw:  # spread over both gateways, 2 and 2 (least connections)
            wait_until(lambda g=g: g.health()["clients"] == 2, 20, "two clients on each gateway")
            g.wait_subscribed("lb.")
        wait_until(lambda: fleet["proxy"].stats()["subscriptions"] >= 2, 20, "both subscribed")
        producer = fleet["producer"]("lb-1", ["lb.events"], n=300)
        producer.ready()
        assert producer.finish()["sent"] == {"lb.events": 300}
        for c in clients:
            _wait_all(c, "lb-1/lb.events", 300, "every message through the load balancer")
            assert c.seqs("lb-1/lb.events") == list(range(1, 301))
        assert sum(g.health()["deliveries"] for g in gw) == 4 * 300
        # A foreign page is still refused through the balancer: the Host header came through.
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://{base}/ws", origin="http://evil.example",
                                        timeout=10 * UNIT)
        assert refused.value.status_code == 403
    finally:
        lb.terminate()
        try:
            lb.wait(10 * UNIT)
        except subprocess.TimeoutExpired:
            lb.kill()
            lb.wait()
        log.close()
