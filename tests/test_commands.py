"""commands: client JSON → frozen command values, or a CommandError with its reply code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqws.commands import Limits, Ping, Publish, Subscribe, Unsubscribe, parse_command
from zmqws.exceptions import ClientError, CommandError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"op":"subscribe","topics":["a","b","a"]}', Subscribe((b"a", b"b"))),
        ('{"op":"unsubscribe","topics":[]}', Unsubscribe(())),
        ('{"op":"publish","topic":"t","data":"é"}', Publish(b"t", "é".encode())),
        ('{"op":"publish","topic":"t"}', Publish(b"t", b"")),
        ('{"op":"ping"}', Ping()),
        ('{"op":"ping","id":7}', Ping(7)),
        ('{"op":"ping","id":-0.5}', Ping(-0.5)),
        ('{"op":"ping","id":"\\u00e9"}', Ping("é")),
    ],
)
def test_valid_commands(text: str, expected: object) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ("[1,2]", "bad_command"),
        ('{"op":"dance"}', "bad_command"),
        ('{"topics":["a"]}', "bad_command"),
        ('{"op":"subscribe","topics":"a"}', "bad_command"),
        ('{"op":"subscribe","topics":[1]}', "bad_command"),
        ('{"op":"subscribe","topics":["\\ud800"]}', "bad_command"),
        ('{"op":"publish","topic":""}', "bad_command"),
        ('{"op":"publish","topic":"t","data":5}', "bad_command"),
        ('{"op":"ping","id":{}}', "bad_command"),
        # Python's json reads these, but the pong could not carry them back: NaN and Infinity
        # are not JSON (RFC 8259 §6), a lone surrogate is not UTF-8.
        ('{"op":"ping","id":NaN}', "bad_command"),
        ('{"op":"ping","id":Infinity}', "bad_command"),
        ('{"op":"ping","id":-Infinity}', "bad_command"),
        ('{"op":"ping","id":1e999}', "bad_command"),
        ('{"op":"ping","id":"\\ud800"}', "bad_command"),
        ('{"op":"subscribe","topics":["' + "x" * 2000 + '"]}', "topic_too_long"),
        (json.dumps({"op": "subscribe", "topics": [str(i) for i in range(300)]}), "too_many_subscriptions"),
        ("[" * 100_000, "bad_json"),
    ],
)
def test_invalid_commands_name_their_code(text: str, code: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert info.value.code == code
    assert info.value.close_code is None  # answered, the connection goes on


def test_ping_reply_echoes_id() -> None:
    assert Ping(3).reply() == {"op": "pong", "id": 3}
    assert Ping().reply() == {"op": "pong"}


def test_limits_are_configurable() -> None:
    with pytest.raises(CommandError):
        parse_command('{"op":"subscribe","topics":["abcd"]}', Limits(max_topic=3))


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_a_client_error(text: str) -> None:
    try:
        parse_command(text)
    except ClientError:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)))
def test_any_json_value_parses_or_raises_a_client_error(value: object) -> None:
    for obj in (value, {"op": "subscribe", "topics": value}, {"op": "publish", "topic": value, "data": value}):
        try:
            parse_command(json.dumps(obj))
        except ClientError:
            pass


def _refuse(token: str) -> object:
    raise ValueError(f"{token} is not JSON")


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                 st.sampled_from(["\ud800", "a\udfff"]), st.lists(st.integers(), max_size=2)))
def test_every_pong_is_strict_json_in_utf8(ident: object) -> None:
    text = json.dumps({"op": "ping", "id": ident})  # NaN, Infinity and \ud800 escapes included
    try:
        cmd = parse_command(text)
    except CommandError:
        return
    assert isinstance(cmd, Ping)
    reply = json.dumps(cmd.reply(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    want = {"op": "pong"} if ident is None else {"op": "pong", "id": ident}
    assert json.loads(reply, parse_constant=_refuse) == want
