"""config: every bad value is refused once, with the flag, the value and what is allowed."""

from __future__ import annotations

import pytest

from zmqws.config import (
    ConsumeSettings,
    DemoSettings,
    GatewaySettings,
    PublishSettings,
    TailSettings,
    parse_listen,
)
from zmqws.exceptions import ConfigError


def test_gateway_defaults_are_safe() -> None:
    s = GatewaySettings(bind=("tcp://127.0.0.1:5555",))
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.slow_client == "drop" and not s.publishing
    assert s.ping_interval <= 30  # below common proxy idle timeouts


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "--bind ENDPOINT or --connect ENDPOINT"),
        ({"bind": ("nope",)}, "--bind"),
        ({"connect": ("tcp://x",)}, "--connect"),
        ({"bind": ("tcp://*:1",), "listen": "8080"}, "--listen"),
        ({"bind": ("tcp://*:1",), "listen": "h:99999"}, "--listen"),
        ({"bind": ("tcp://*:1",), "slow_client": "ignore"}, "--slow-client"),
        ({"bind": ("tcp://*:1",), "client_buffer": 10}, "--client-buffer"),
        ({"bind": ("tcp://*:1",), "max_message": 0}, "--max-message"),
        ({"bind": ("tcp://*:1",), "handshake_timeout": -1}, "--handshake-timeout"),
        ({"bind": ("tcp://*:1",), "ping_interval": -1}, "--ping-interval"),
        ({"bind": ("tcp://*:1",), "ping_interval": float("nan")}, "finite"),
        ({"bind": ("tcp://*:1",), "close_timeout": float("inf")}, "--close-timeout"),
        ({"bind": ("tcp://*:1",), "burst_hold": -0.1}, "--burst-hold"),
        ({"bind": ("tcp://*:1",), "burst_hold": 5}, "more than 1 second"),
        ({"bind": ("tcp://*:1",), "publish_bind": ("x",)}, "--publish-bind"),
    ],
)
def test_gateway_rejects(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        GatewaySettings(**kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("127.0.0.1:80", ("127.0.0.1", 80)),
                                                 ("[::1]:8080", ("::1", 8080)),
                                                 ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


def test_tail_needs_exactly_one_direction(tmp_path) -> None:
    f = tmp_path / "a.log"
    f.write_text("x\n")
    with pytest.raises(ConfigError, match="exactly one"):
        TailSettings(paths=(str(f),))
    with pytest.raises(ConfigError, match="exactly one"):
        TailSettings(paths=(str(f),), bind=("tcp://*:1",), connect=("tcp://h:1",))


def test_tail_template_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--topic"):
        TailSettings(paths=("a",), connect=("tcp://h:1",), topic="{nope}")
    with pytest.raises(ConfigError, match="no such file"):
        TailSettings(paths=(str(tmp_path / "missing"),), connect=("tcp://h:1",), once=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        TailSettings(paths=(str(tmp_path),), connect=("tcp://h:1",), once=True)
    # following a file that does not exist yet is allowed: it is waited for
    TailSettings(paths=(str(tmp_path / "later"),), connect=("tcp://h:1",))


def test_publish_consume_demo(tmp_path) -> None:
    with pytest.raises(ConfigError):
        PublishSettings(topic="", connect=("tcp://h:1",))
    with pytest.raises(ConfigError, match="--output"):
        ConsumeSettings(bind=("tcp://*:1",), output=str(tmp_path / "no" / "such" / "x.jsonl"))
    with pytest.raises(ConfigError, match="--rate"):
        DemoSettings(rate=0)
    with pytest.raises(ConfigError, match="--zmq-port"):
        DemoSettings(zmq_port=70000)


def test_settings_are_frozen() -> None:
    s = GatewaySettings(bind=("tcp://*:1",))
    with pytest.raises(AttributeError):
        s.listen = "x"  # type: ignore[misc]
