"""Plain HTTP on the gateway's port: the live page, its assets, and ``/health``.

The WebSocket library parses the request; this module only decides the response. Static files are
read once at start-up from the package (``static/``), so serving them does no disk I/O and no path
from a client ever reaches the file system.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["StaticFiles", "respond", "json_response", "text_response"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

# The page loads nothing from elsewhere: a strict policy costs nothing and stops injected scripts.
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


def _headers(content_type: str, length: int, extra: dict[str, str] | None = None) -> Headers:
    h = Headers()
    h["Date"] = email.utils.formatdate(usegmt=True)
    h["Content-Type"] = content_type
    h["Content-Length"] = str(length)
    h["Cache-Control"] = "no-cache"
    h["X-Content-Type-Options"] = "nosniff"
    h["Connection"] = "close"
    for k, v in (extra or {}).items():
        h[k] = v
    return h


def text_response(status: int, reason: str, text: str, extra: dict[str, str] | None = None) -> Response:
    body = text.encode("utf-8")
    return Response(status, reason, _headers("text/plain; charset=utf-8", len(body), extra), body)


def json_response(obj: object) -> Response:
    body = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")
    return Response(200, "OK", _headers("application/json", len(body)), body)


class StaticFiles:
    """The live page's files, loaded once from the package's ``static`` folder."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        root = resources.files("zmqws") / "static"
        for entry in root.iterdir():
            name = entry.name
            ext = name[name.rfind("."):]
            if entry.is_file() and ext in _TYPES:
                self.files[name] = (_TYPES[ext], entry.read_bytes())

    def response(self, name: str) -> Response | None:
        found = self.files.get(name)
        if found is None:
            return None
        ctype, body = found
        extra = {"Content-Security-Policy": _CSP} if ctype.startswith("text/html") else None
        return Response(200, "OK", _headers(ctype, len(body), extra), body)


def respond(path: str, static: StaticFiles, health: Callable[[], object]) -> Response:
    """The response to a plain (non-WebSocket) GET of ``path`` (without its query string)."""
    if path == "/" or path == "/index.html":
        found = static.response("index.html")
    elif path.startswith("/static/"):
        found = static.response(path[len("/static/"):])
    elif path == "/health":
        found = json_response(health())
    else:
        found = None
    return found or text_response(404, "Not Found", f"no such page: {path}\n")
