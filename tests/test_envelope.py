"""envelope: ZeroMQ frames → Message → WebSocket frame bytes."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqws.envelope import (
    OP_BINARY,
    OP_TEXT,
    Message,
    control_frame,
    decode,
    encode_meta,
    json_frame,
    raw_frame,
    ws_frame,
)
from zmqws.exceptions import MalformedMessage


def parse_frame(b: bytes) -> tuple[int, bytes]:
    """A minimal RFC 6455 reader for server frames, written independently of the code under test."""
    assert b[0] & 0x80, "FIN must be set"
    assert not b[0] & 0x70, "no RSV bits"
    assert not b[1] & 0x80, "server frames are not masked"
    n, off = b[1] & 0x7F, 2
    if n == 126:
        (n,), off = struct.unpack("!H", b[2:4]), 4
    elif n == 127:
        (n,), off = struct.unpack("!Q", b[2:10]), 10
    assert len(b) == off + n
    return b[0] & 0x0F, b[off:]


class TestDecode:
    def test_multipart_topic_and_data(self) -> None:
        assert decode([b"apache", b"GET /"]) == Message(b"apache", b"GET /")

    def test_one_frame_splits_at_first_space(self) -> None:
        assert decode([b"linux kernel: a b"]) == Message(b"linux", b"kernel: a b")

    def test_one_frame_without_space_is_all_topic(self) -> None:
        assert decode([b"heartbeat"]) == Message(b"heartbeat", b"")

    def test_metadata_frame_is_read(self) -> None:
        meta = encode_meta("web01:/var/log/a.log", 42, 1700000000.5)
        msg = decode([b"t", b"d", meta])
        assert (msg.source, msg.source_seq, msg.ts) == ("web01:/var/log/a.log", 42, 1700000000.5)
        assert msg.extra == ()

    def test_foreign_extra_frames_are_kept(self) -> None:
        assert decode([b"t", b"d", b"x", b"y"]).extra == (b"x", b"y")

    def test_broken_metadata_is_ignored_not_fatal(self) -> None:
        msg = decode([b"t", b"d", b'{"zmqws":1, nonsense'])
        assert msg.source is None and msg.source_seq is None

    def test_metadata_with_wrong_types_is_ignored(self) -> None:
        msg = decode([b"t", b"d", b'{"zmqws":1,"src":5,"seq":"7","ts":true}'])
        assert (msg.source, msg.source_seq, msg.ts) == (None, None, None)

    @pytest.mark.parametrize("frames", [[], [b""], [b" data"], [b"", b"data"]])
    def test_malformed_messages_raise(self, frames: list[bytes]) -> None:
        with pytest.raises(MalformedMessage):
            decode(frames)

    @given(st.lists(st.binary(max_size=64), max_size=5))
    def test_decode_returns_a_message_or_raises_malformed(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except MalformedMessage:
            return
        assert msg.topic


class TestFrames:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
    def test_lengths_at_every_boundary(self, size: int) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert parse_frame(ws_frame(payload, OP_BINARY)) == (OP_BINARY, payload)

    def test_raw_is_the_data_alone_in_a_binary_frame(self) -> None:
        assert parse_frame(raw_frame(Message(b"t", b"\x00\xff"))) == (OP_BINARY, b"\x00\xff")

    def test_json_carries_topic_data_seq_and_stamp(self) -> None:
        msg = Message(b"apache", "héllo".encode(), "h:/a", 7, 12.5)
        op, body = parse_frame(json_frame(msg, 99))
        assert op == OP_TEXT
        assert json.loads(body) == {"topic": "apache", "data": "héllo", "seq": 99, "ts": 12.5,
                                    "source": "h:/a", "source_seq": 7}

    def test_invalid_utf8_data_goes_base64_never_in_a_text_frame(self) -> None:
        op, body = parse_frame(json_frame(Message(b"t", b"\xff\xfe\x00"), 1))
        body.decode("utf-8")  # the text frame itself is valid UTF-8
        obj = json.loads(body)
        assert obj["encoding"] == "base64"
        assert base64.b64decode(obj["data"]) == b"\xff\xfe\x00"

    def test_control_frame(self) -> None:
        assert json.loads(parse_frame(control_frame({"op": "gap", "missed": 3}))[1]) == {
            "op": "gap", "missed": 3}

    @given(st.binary(max_size=300), st.binary(min_size=1, max_size=20))
    def test_json_frame_always_valid_utf8_and_round_trips(self, data: bytes, topic: bytes) -> None:
        op, body = parse_frame(json_frame(Message(topic, data), 1))
        obj = json.loads(body.decode("utf-8"))
        got = base64.b64decode(obj["data"]) if obj.get("encoding") == "base64" else obj["data"].encode()
        assert got == data
