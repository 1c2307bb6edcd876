"""http: the live page and /health, served by a real gateway."""

from __future__ import annotations

import json

from conftest import GatewayProc, http_get


def test_page_and_assets_are_served_with_a_strict_policy(gateway: GatewayProc) -> None:
    status, headers, body = http_get(gateway.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script" in body
    for external in (b'src="http', b'href="http', b"src='http", b"href='http", b"@import"):
        assert external not in body  # nothing loaded from the internet
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("app.js", "style.css"):
        status, headers, _ = http_get(f"{gateway.url}/static/{asset}")
        assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"


def test_health_reports_clients_counters_and_upstream(gateway: GatewayProc) -> None:
    status, headers, body = http_get(gateway.url + "/health")
    h = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert h["status"] == "ok" and h["clients"] == 0 and h["messages_in"] == 0
    assert h["upstream"]["bind"] == [gateway.zmq_endpoint]
    assert set(h["dropped"]) == {"slow_client", "oversize", "publish_full"}


def test_unknown_paths_and_traversal_get_404(gateway: GatewayProc) -> None:
    for path in ("/nope", "/static/../gateway.py", "/static/", "/static/%2e%2e/cli.py"):
        status, _, _ = http_get(gateway.url + path)
        assert status == 404, path
