"""envelope: ZeroMQ frames → Message → WebSocket frame bytes."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqws.envelope import (
    META_MARK,
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


def refuse_constant(token: str) -> object:
    raise ValueError(f"{token} is not JSON (RFC 8259 §6)")


# Every JSON value, with what Python's json reads beyond RFC 8259: NaN, ±Infinity, lone surrogates.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400)
    | st.floats() | st.text(max_size=10) | st.sampled_from(["\ud800", "a\udcff"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)


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

    @pytest.mark.parametrize("ts", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1" + b"0" * 400])
    def test_a_ts_that_is_no_finite_float_is_dropped_and_the_rest_kept(self, ts: bytes) -> None:
        msg = decode([b"t", b"d", b'{"zmqws":1,"src":"h:1","seq":3,"ts":' + ts + b"}"])
        assert (msg.source, msg.source_seq, msg.ts) == ("h:1", 3, None)
        json.loads(parse_frame(json_frame(msg, 1))[1], parse_constant=refuse_constant)

    def test_a_source_with_lone_surrogates_keeps_them_as_escapes(self) -> None:
        # What json.dumps makes of a file name that is not UTF-8, read with surrogateescape.
        a = decode([b"t", b"d", encode_meta("h:/var/log/\udcff.log", 1, 1.0)])
        b = decode([b"t", b"d", encode_meta("h:/var/log/\udcfe.log", 1, 1.0)])
        lone = decode([b"t", b"d", b'{"zmqws":1,"src":"\\ud800","seq":1}'])
        assert a.source == "h:/var/log/\\udcff.log" and lone.source == "\\ud800"
        assert a.source != b.source  # still two sources, each with its own sequence
        obj = json.loads(parse_frame(json_frame(a, 1))[1].decode("utf-8"))
        assert obj["source"] == "h:/var/log/\\udcff.log"

    def test_metadata_nested_too_deep_is_ignored_not_fatal(self) -> None:
        meta = b'{"zmqws":1,"seq":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        msg = decode([b"t", b"d", meta])
        assert (msg.source, msg.source_seq, msg.ts) == (None, None, None)

    @given(st.dictionaries(st.sampled_from(["src", "seq", "ts", "x"]), json_values, max_size=4))
    def test_any_metadata_gives_a_message_that_frames_as_strict_json(self, meta: dict) -> None:
        frame = META_MARK + (b"," + json.dumps(meta).encode()[1:] if meta else b"}")
        body = parse_frame(json_frame(decode([b"t", b"d", frame]), 1))[1]
        obj = json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
        assert obj["topic"] == "t" and obj["data"] == "d"

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

    @pytest.mark.parametrize("msg", [Message(b"t", b"d", ts=float("nan")),
                                     Message(b"t", b"d", ts=float("inf")),
                                     Message(b"t", b"d", source="\ud800")])
    def test_json_frame_refuses_what_json_cannot_carry(self, msg: Message) -> None:
        with pytest.raises(ValueError):  # never a text frame with NaN or invalid UTF-8 in it
            json_frame(msg, 1)

    def test_control_frame(self) -> None:
        assert json.loads(parse_frame(control_frame({"op": "gap", "missed": 3}))[1]) == {
            "op": "gap", "missed": 3}

    @given(st.binary(max_size=300), st.binary(min_size=1, max_size=20))
    def test_json_frame_always_valid_utf8_and_round_trips(self, data: bytes, topic: bytes) -> None:
        op, body = parse_frame(json_frame(Message(topic, data), 1))
        obj = json.loads(body.decode("utf-8"))
        got = base64.b64decode(obj["data"]) if obj.get("encoding") == "base64" else obj["data"].encode()
        assert got == data
