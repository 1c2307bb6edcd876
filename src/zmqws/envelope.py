"""ZeroMQ frames ⇄ :class:`Message`, and Message → WebSocket frame bytes.

Pure: no asyncio, no zmq, no sockets. Everything here runs once per message, never once per client
(DESIGN.md principle 2), so the gateway's cost does not grow with the number of clients.

ZeroMQ envelopes read:

* multipart ``[topic, data, *extra]``, the usual one;
* one frame ``b"topic data"``: the topic is everything up to the first space (no space: all topic,
  empty data).

zmqws producers add a metadata frame after the data, a small JSON object that starts with
``{"zmqws":1`` and carries the source (``host:path`` or ``host:pid``), the per-source sequence
number and the time of publication. Foreign producers need not send it; other extra frames are kept.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass

from .exceptions import MalformedMessage

__all__ = [
    "Message",
    "META_MARK",
    "decode",
    "encode_meta",
    "ws_frame",
    "json_frame",
    "raw_frame",
    "control_frame",
    "OP_TEXT",
    "OP_BINARY",
]

META_MARK = b'{"zmqws":1'

OP_TEXT = 0x1
OP_BINARY = 0x2

# RFC 6455 §5.2: FIN bit set, no RSV bits (no extension), opcode; server frames are never masked.
_SHORT_HEADERS = {
    op: [bytes((0x80 | op, n)) for n in range(126)] for op in (OP_TEXT, OP_BINARY)
}
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_COMPACT = (",", ":")


@dataclass(frozen=True, slots=True)
class Message:
    """One message read from ZeroMQ.

    Attributes:
        topic: the topic frame (or the part of a one-frame message before the first space).
        data: the payload.
        source: who published it, from a zmqws metadata frame, else ``None``.
        source_seq: the per-source sequence number from a zmqws metadata frame, else ``None``.
        ts: publication time (seconds since the epoch) from a zmqws metadata frame, else ``None``.
        extra: further frames of a multipart message, kept as they came.
    """

    topic: bytes
    data: bytes
    source: str | None = None
    source_seq: int | None = None
    ts: float | None = None
    extra: tuple[bytes, ...] = ()


def encode_meta(source: str, seq: int, ts: float) -> bytes:
    """The metadata frame a zmqws producer appends after the data frame."""
    return b'{"zmqws":1,"src":%s,"seq":%d,"ts":%.6f}' % (
        json.dumps(source).encode(),
        seq,
        ts,
    )


def _decode_meta(frame: bytes) -> tuple[str | None, int | None, float | None]:
    """``(source, seq, ts)`` from a metadata frame; a field that is missing or unusable is None.

    The frame comes from a producer nobody controls, and what is read here goes into JSON text
    frames (RFC 8259, RFC 6455 §8.1), so: a ``ts`` that is no finite float (``NaN``,
    ``Infinity``, an integer past 1e308) is dropped; a ``src`` with lone surrogates (``"\\ud800"``
    is valid JSON, and it is what a zmqws producer sends for a path that is not UTF-8) keeps them
    as ``\\udcXX`` text, so that distinct sources stay distinct.
    """
    try:
        meta = json.loads(frame)
        source = meta.get("src")
        seq = meta.get("seq")
        ts = meta.get("ts")
    except (ValueError, AttributeError, RecursionError):
        return None, None, None
    if isinstance(source, str):
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            source = source.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        source = None
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        try:
            ts = float(ts)
        except OverflowError:
            ts = None
        else:
            ts = ts if math.isfinite(ts) else None
    else:
        ts = None
    return source, seq if isinstance(seq, int) and not isinstance(seq, bool) else None, ts


def decode(frames: list[bytes]) -> Message:
    """Read one ZeroMQ message.

    Args:
        frames: the frames of one message, as ``recv_multipart`` returns them.

    Returns:
        The message.

    Raises:
        MalformedMessage: no frame, or an empty topic.
    """
    n = len(frames)
    if n == 0:
        raise MalformedMessage("message with no frame")
    if n == 1:
        topic, _, data = frames[0].partition(b" ")
        if not topic:
            raise MalformedMessage("one-frame message with an empty topic")
        return Message(topic, data)
    topic = frames[0]
    if not topic:
        raise MalformedMessage("multipart message with an empty topic frame")
    if n == 2:
        return Message(topic, frames[1])
    extra = frames[2:]
    if extra[0].startswith(META_MARK):
        source, seq, ts = _decode_meta(extra[0])
        return Message(topic, frames[1], source, seq, ts, tuple(extra[1:]))
    return Message(topic, frames[1], extra=tuple(extra))


def ws_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One unfragmented, unmasked server → client frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[opcode][n] + payload
    if n < 65536:
        return _HEAD16.pack(0x80 | opcode, 126, n) + payload
    return _HEAD64.pack(0x80 | opcode, 127, n) + payload


def raw_frame(msg: Message) -> bytes:
    """The ``format=raw`` frame: the data alone, as a binary frame."""
    return ws_frame(msg.data, OP_BINARY)


def json_frame(msg: Message, seq: int) -> bytes:
    """The default format: one JSON text frame, ``{"topic", "data", "seq", ...}``.

    ``seq`` is the gateway's own message number. Data that is not valid UTF-8 is sent base64
    encoded with ``"encoding": "base64"``: a text frame must never carry invalid UTF-8 (RFC 6455
    §8.1). ``source`` and ``source_seq`` are present when a zmqws producer stamped the message.

    Raises:
        ValueError: a ``ts`` that is not finite, or a ``source`` with lone surrogates, which no
            JSON text frame can carry; :func:`decode` never builds such a message.
    """
    obj: dict[str, object] = {"topic": msg.topic.decode("utf-8", "replace")}
    try:
        obj["data"] = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        obj["data"] = base64.b64encode(msg.data).decode("ascii")
        obj["encoding"] = "base64"
    obj["seq"] = seq
    if msg.ts is not None:
        obj["ts"] = msg.ts
    if msg.source is not None:
        obj["source"] = msg.source
    if msg.source_seq is not None:
        obj["source_seq"] = msg.source_seq
    return _json_text(obj)


def _json_text(obj: dict[str, object]) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON (RFC 8259 §6); UnicodeEncodeError (lone
    # surrogates) is a ValueError too.
    return ws_frame(
        json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=_COMPACT).encode("utf-8"),
        OP_TEXT,
    )


def control_frame(obj: dict[str, object]) -> bytes:
    """A JSON text frame for a server message that is not data (``gap``, ``error``, acks).

    Raises:
        ValueError: a value JSON cannot carry (NaN, Infinity, a lone surrogate).
    """
    return _json_text(obj)
