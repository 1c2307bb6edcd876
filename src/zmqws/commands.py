"""Client → gateway commands, parsed once at the edge into frozen values.

Pure. :func:`parse_command` either returns one of :class:`Subscribe`, :class:`Unsubscribe`,
:class:`Publish`, :class:`Ping`, or raises :class:`~zmqws.exceptions.CommandError` with the code
of the ``error`` reply; an invalid command never exists as a value (STYLE rule 7).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .exceptions import CommandError

__all__ = ["Subscribe", "Unsubscribe", "Publish", "Ping", "Command", "parse_command", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may ask for (from the gateway settings)."""

    max_topic: int = 1024
    max_topics_per_command: int = 256


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    topic: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    id: object = None

    def reply(self) -> dict[str, object]:
        return {"op": "pong"} if self.id is None else {"op": "pong", "id": self.id}


Command = Subscribe | Unsubscribe | Publish | Ping


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800", which JSON allows
        raise CommandError(f"{what} is not valid Unicode", code="bad_command") from None


def _topic(value: object, limits: Limits, what: str) -> bytes:
    if not isinstance(value, str):
        raise CommandError(f"{what} must be a string", code="bad_command")
    raw = _utf8(value, what)
    if len(raw) > limits.max_topic:
        raise CommandError(
            f"{what} is {len(raw)} bytes long, the limit is {limits.max_topic}", code="topic_too_long"
        )
    return raw


def _topics(obj: dict[str, object], limits: Limits) -> tuple[bytes, ...]:
    topics = obj.get("topics")
    if not isinstance(topics, list):
        raise CommandError('"topics" must be a list of strings', code="bad_command")
    if len(topics) > limits.max_topics_per_command:
        raise CommandError(
            f"{len(topics)} topics in one command, the limit is {limits.max_topics_per_command}",
            code="too_many_subscriptions",
        )
    return tuple(dict.fromkeys(_topic(t, limits, "each topic") for t in topics))


def _ping_id(ident: object) -> object:
    """The ``id`` echoed in the pong: only what JSON can carry back (RFC 8259: no NaN or
    Infinity, which Python's json reads, and no lone surrogates, which UTF-8 cannot encode)."""
    if ident is None or isinstance(ident, int):
        return ident
    if isinstance(ident, str):
        _utf8(ident, '"id"')
        return ident
    if isinstance(ident, float) and math.isfinite(ident):
        return ident
    raise CommandError('"id" must be a string or a finite number', code="bad_command")


def parse_command(text: str, limits: Limits = Limits()) -> Command:
    """Parse one JSON text message from a client.

    Raises:
        CommandError: ``bad_json``, ``bad_command``, ``topic_too_long`` or
            ``too_many_subscriptions``.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise CommandError("not a JSON document", code="bad_json") from None
    if not isinstance(obj, dict):
        raise CommandError('a command is a JSON object with an "op"', code="bad_command")
    op = obj.get("op")
    if op == "subscribe":
        return Subscribe(_topics(obj, limits))
    if op == "unsubscribe":
        return Unsubscribe(_topics(obj, limits))
    if op == "publish":
        topic = _topic(obj.get("topic"), limits, '"topic"')
        if not topic:
            raise CommandError('"topic" must not be empty', code="bad_command")
        data = obj.get("data", "")
        if not isinstance(data, str):
            raise CommandError('"data" must be a string', code="bad_command")
        return Publish(topic, _utf8(data, '"data"'))
    if op == "ping":
        return Ping(_ping_id(obj.get("id")))
    raise CommandError(
        f"unknown op {op!r}; use subscribe, unsubscribe, publish or ping", code="bad_command"
    )
