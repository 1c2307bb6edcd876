"""Who may connect, and what they may subscribe and publish to.

Pure (no sockets): the connection hands in the request's ``Origin``, ``Host``, credential and
topics, and gets a decision back.

* **Origin** (cross-site WebSocket hijacking): a browser sends the page's origin with every
  handshake. Allowed: no ``Origin`` (not a browser), the gateway's own origin (its page), and the
  exact origins given with ``--allow-origin`` (``*`` allows any). Anything else, ``null``
  included, gets 403. Same-origin by default is what keeps a foreign page from opening the socket
  with the user's cookies.
* **Authentication**, when ``--token-file`` or ``--jwt-secret-file`` is set: a bearer credential
  in the ``Authorization`` header or, since browsers cannot set headers on a WebSocket, in the
  ``access_token`` query parameter. A static token grants everything. A JWT (HS256, checked by
  PyJWT, ``exp`` enforced when present, at the handshake) grants the topic prefixes in its
  ``subscribe`` and ``publish`` claims (lists of strings; a missing claim grants nothing of that
  kind). Missing or invalid credential: 401. Until its handshake passed, a connection has no
  grant at all.
* **Grants** are checked on every command: a client may subscribe to a prefix only inside its
  grant, so it can never receive a topic outside it, and publish only to topics inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from .exceptions import ClientError

__all__ = ["Grant", "FULL", "NOTHING", "AccessDenied", "Authenticator", "bearer", "origin_allowed"]


class AccessDenied(ClientError):
    """The handshake is refused with an HTTP status (401 or 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, code="unauthorized" if status == 401 else "forbidden")
        self.status = status


@dataclass(frozen=True, slots=True)
class Grant:
    """Topic prefixes a client may subscribe and publish to; ``None`` means any."""

    subscribe: tuple[bytes, ...] | None = None
    publish: tuple[bytes, ...] | None = None

    def may_subscribe(self, prefix: bytes) -> bool:
        """A prefix is allowed only if every topic it matches is inside the grant."""
        return self.subscribe is None or any(prefix.startswith(p) for p in self.subscribe)

    def may_publish(self, topic: bytes) -> bool:
        return self.publish is None or any(topic.startswith(p) for p in self.publish)

    def default_prefixes(self) -> frozenset[bytes]:
        """What a client that named no topic gets: everything it may see."""
        return frozenset((b"",)) if self.subscribe is None else frozenset(self.subscribe)


FULL = Grant()
NOTHING = Grant((), ())  # a connection's grant until its handshake has been checked


def _prefixes(claim: object, name: str) -> tuple[bytes, ...]:
    if claim is None:
        return ()
    if not isinstance(claim, list) or not all(isinstance(p, str) for p in claim):
        raise AccessDenied(401, f"the token's {name!r} claim must be a list of topic prefixes")
    return tuple(p.encode("utf-8") for p in claim)


class Authenticator:
    """Checks bearer credentials against static tokens and/or an HS256 JWT secret.

    Args:
        tokens: static tokens, each granting everything.
        jwt_secret: the HS256 secret of JWTs that carry ``subscribe``/``publish`` claims.
    """

    def __init__(self, tokens: Iterable[str] = (), jwt_secret: str | None = None) -> None:
        self.tokens = frozenset(tokens)
        self.jwt_secret = jwt_secret

    @property
    def required(self) -> bool:
        return bool(self.tokens) or self.jwt_secret is not None

    def authenticate(self, credential: str | None) -> Grant:
        """The grant of ``credential``.

        Raises:
            AccessDenied: 401 when authentication is required and the credential is missing
                or invalid.
        """
        if not self.required:
            return FULL
        if not credential:
            raise AccessDenied(401, "authentication required: send a bearer token")
        if credential in self.tokens:
            return FULL
        if self.jwt_secret is not None:
            try:
                claims = jwt.decode(credential, self.jwt_secret, algorithms=["HS256"])
            except jwt.InvalidTokenError as exc:
                raise AccessDenied(401, f"invalid token: {exc}") from None
            return Grant(_prefixes(claims.get("subscribe"), "subscribe"),
                         _prefixes(claims.get("publish"), "publish"))
        raise AccessDenied(401, "invalid token")


def bearer(authorization: str | None, query_token: str | None) -> str | None:
    """The credential from ``Authorization: Bearer X`` or the ``access_token`` parameter."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a handshake with this ``Origin`` may proceed (see the module docstring)."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    if origin == "null" or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
