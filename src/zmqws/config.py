"""Settings of every part, validated once, with no side effects.

Each command gets one frozen settings object built from its flags (``cli.py``); every check lives
here (endpoint syntax, ranges, files that must exist) so that a bad value is reported as one line
that names the flag, the value and what is allowed, before anything starts. Nothing here binds,
connects, starts logging or touches the network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .exceptions import ConfigError
from .hub import HOLD_SECONDS
from .zmq_io import CurveKeys, check_endpoint, load_curve_keys, load_public_key

__all__ = [
    "GatewaySettings",
    "TailSettings",
    "PublishSettings",
    "ConsumeSettings",
    "DemoSettings",
    "ProxySettings",
    "parse_listen",
    "url_host",
    "producer_curve",
    "SLOW_CLIENT_POLICIES",
]

SLOW_CLIENT_POLICIES = ("drop", "close")

# Defaults, each with its reason (STYLE rule 12).
# 127.0.0.1: security by default; exposing the gateway is an explicit choice (DESIGN.md, Security).
DEFAULT_LISTEN = "127.0.0.1:8080"
# 1 MiB per client: about 10,000 typical log lines, several seconds of a busy stream, while 10,000
# stalled clients still cannot take more than 10 GiB (DESIGN.md principle 3).
DEFAULT_CLIENT_BUFFER = 1 << 20
# 1 MiB: websockets' own default max_size for inbound messages; commands are tiny.
DEFAULT_MAX_MESSAGE = 1 << 20
# 1 MiB outbound: a larger ZeroMQ message would take a whole client buffer by itself.
DEFAULT_MAX_OUTBOUND = 1 << 20
# 10,000 connections: what the default `ulimit -n` raised once serves; each idle one costs little.
DEFAULT_MAX_CONNECTIONS = 10_000
# 256 prefixes per client: far more than a page shows, small enough that a hostile client cannot
# make the topic index large.
DEFAULT_MAX_SUBSCRIPTIONS = 256
# 1,024 bytes per topic prefix: ZeroMQ topics are short; this bounds a hostile subscription.
DEFAULT_MAX_TOPIC = 1024
# 10 s for the opening handshake: websockets' open_timeout default, against slowloris.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# 20 s between pings, 20 s for the pong: websockets' defaults, below common proxy idle timeouts (60 s).
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
# 10 s for the closing handshake: websockets' close_timeout default is 10 s as well.
DEFAULT_CLOSE_TIMEOUT = 10.0
# 10,000 messages in the SUB socket's queue (libzmq's own default is 1,000): a short burst. The
# queue is bounded in messages, not bytes, so it holds RCVHWM x message size (10 MiB of 1 KiB
# lines); past it libzmq stops reading the TCP connection and publishers feel backpressure
# (XPUB_NODROP ones block, plain PUB ones drop at their SNDHWM and zmqws counts the gap).
DEFAULT_RCVHWM = 10_000
# How long a burst may hold messages for clients that get few of them, so that they share a write.
DEFAULT_BURST_HOLD = HOLD_SECONDS
# The proxy queues as many messages per peer as a gateway's SUB socket does (DEFAULT_RCVHWM), so
# the proxy is never the narrowest point between a producer and a gateway.
DEFAULT_PROXY_HWM = 10_000


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` → ``(host, port)``; IPv6 hosts in brackets. Port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{flag}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080)"
        )
    return host, int(port)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets (the inverse of parse_listen's)."""
    return f"[{host}]" if ":" in host else host


def _positive(flag: str, value: float, *, zero_ok: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{flag}: {value!r} is not allowed, it must be a finite number")
    if value < 0 or (value == 0 and not zero_ok):
        allowed = "zero or more" if zero_ok else "more than zero"
        raise ConfigError(f"{flag}: {value!r} is not allowed, it must be {allowed}")


def _read(flag: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _endpoints(flag: str, values: tuple[str, ...]) -> None:
    for v in values:
        try:
            check_endpoint(v)
        except ConfigError as exc:
            raise ConfigError(f"{flag}: {exc}") from None


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything ``zmqws gateway`` needs. See ``docs/settings.md`` for each field."""

    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    listen: str = DEFAULT_LISTEN
    publish_bind: tuple[str, ...] = ()
    publish_connect: tuple[str, ...] = ()
    client_buffer: int = DEFAULT_CLIENT_BUFFER
    slow_client: str = "drop"
    max_message: int = DEFAULT_MAX_MESSAGE
    max_outbound: int = DEFAULT_MAX_OUTBOUND
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_topic: int = DEFAULT_MAX_TOPIC
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    ping_interval: float = DEFAULT_PING_INTERVAL
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    rcvhwm: int = DEFAULT_RCVHWM
    burst_hold: float = DEFAULT_BURST_HOLD
    echo: bool = False
    allow_origin: tuple[str, ...] = ()
    token_file: str | None = None
    jwt_secret_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    curve_secret_key: str | None = None
    curve_authorized: str | None = None
    workers: int = 1
    # Set by the supervisor of --workers for its workers (not flags): the --bind endpoints it
    # holds for them and the inner endpoint they connect to, so /health shows the real ones.
    supervisor_bind: tuple[str, ...] = ()
    supervisor_link: str = ""
    host: str = field(init=False, default="")
    port: int = field(init=False, default=0)
    tokens: tuple[str, ...] = field(init=False, default=())
    jwt_secret: str | None = field(init=False, default=None)
    curve: CurveKeys | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.bind and not self.connect:
            raise ConfigError(
                "gateway needs at least one --bind ENDPOINT or --connect ENDPOINT for its ZeroMQ input"
            )
        _endpoints("--bind", self.bind)
        _endpoints("--connect", self.connect)
        _endpoints("--publish-bind", self.publish_bind)
        _endpoints("--publish-connect", self.publish_connect)
        host, port = parse_listen(self.listen)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        if self.slow_client not in SLOW_CLIENT_POLICIES:
            raise ConfigError(
                f"--slow-client: {self.slow_client!r} is not one of {', '.join(SLOW_CLIENT_POLICIES)}"
            )
        if self.client_buffer < 4096:
            raise ConfigError(f"--client-buffer: {self.client_buffer} is too small, use at least 4096 bytes")
        for flag, value in (
            ("--max-message", self.max_message),
            ("--max-outbound", self.max_outbound),
            ("--max-connections", self.max_connections),
            ("--max-subscriptions", self.max_subscriptions),
            ("--max-topic", self.max_topic),
            ("--handshake-timeout", self.handshake_timeout),
            ("--close-timeout", self.close_timeout),
            ("--ping-timeout", self.ping_timeout),
        ):
            _positive(flag, value)
        _positive("--ping-interval", self.ping_interval, zero_ok=True)
        _positive("--rcvhwm", self.rcvhwm, zero_ok=True)
        _positive("--burst-hold", self.burst_hold, zero_ok=True)
        if self.burst_hold > 1:
            raise ConfigError(f"--burst-hold: {self.burst_hold} s is more than 1 second of added latency")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"--workers: {self.workers} is not from 1 to 256")
        for origin in self.allow_origin:
            if origin != "*" and (origin == "null" or "://" not in origin or origin.endswith("/")):
                raise ConfigError(
                    f"--allow-origin: {origin!r} is not an origin; use SCHEME://HOST[:PORT] "
                    "exactly as browsers send it (e.g. https://example.com), or *"
                )
        if self.token_file:
            tokens = tuple(t for t in _read("--token-file", self.token_file).split() if t)
            if not tokens:
                raise ConfigError(f"--token-file: {self.token_file} holds no token")
            object.__setattr__(self, "tokens", tokens)
        if self.jwt_secret_file:
            secret = _read("--jwt-secret-file", self.jwt_secret_file).strip()
            if len(secret) < 32:
                raise ConfigError(
                    f"--jwt-secret-file: the secret in {self.jwt_secret_file} is {len(secret)} "
                    "characters; use at least 32 (e.g. `openssl rand -hex 32`)"
                )
            object.__setattr__(self, "jwt_secret", secret)
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--certfile and --keyfile go together: give both for TLS")
        for flag, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{flag}: no such file: {path}")
        if self.curve_authorized and not self.curve_secret_key:
            raise ConfigError("--curve-authorized needs --curve-secret-key (the gateway's key pair)")
        if self.curve_secret_key:
            public, secret = load_curve_keys("--curve-secret-key", self.curve_secret_key)
            if self.curve_authorized and not os.path.isdir(self.curve_authorized):
                raise ConfigError(f"--curve-authorized: no such directory: {self.curve_authorized}")
            object.__setattr__(self, "curve", CurveKeys(public, secret,
                                                        authorized=self.curve_authorized))

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    @property
    def publishing(self) -> bool:
        """True when clients may publish into ZeroMQ."""
        return bool(self.publish_bind or self.publish_connect)


def producer_curve(server_key: str | None, secret_key: str | None) -> CurveKeys | None:
    """CURVE client keys of a producer (``--curve-server-key`` with ``--curve-secret-key``)."""
    if not server_key and not secret_key:
        return None
    if not (server_key and secret_key):
        raise ConfigError("--curve-server-key and --curve-secret-key go together")
    public, secret = load_curve_keys("--curve-secret-key", secret_key)
    return CurveKeys(public, secret, server_key=load_public_key("--curve-server-key", server_key))


@dataclass(frozen=True, slots=True)
class TailSettings:
    """Everything ``zmqws tail`` needs."""

    paths: tuple[str, ...]
    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    topic: str = "{host}.{name}"
    host: str = ""
    from_start: bool = False
    once: bool = False
    poll_interval: float = 0.2
    linger: float = 30.0
    state: str | None = None
    curve_server_key: str | None = None
    curve_secret_key: str | None = None
    curve: CurveKeys | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "curve", producer_curve(self.curve_server_key,
                                                         self.curve_secret_key))
        if not self.paths:
            raise ConfigError("tail needs at least one PATH to follow")
        if bool(self.bind) == bool(self.connect):
            raise ConfigError("tail needs exactly one of --bind ENDPOINT or --connect ENDPOINT")
        _endpoints("--bind", self.bind)
        _endpoints("--connect", self.connect)
        if not self.topic:
            raise ConfigError("--topic: the template must not be empty (default: {host}.{name})")
        try:
            self.topic.format(host="h", name="n", path="p", stem="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"--topic: {self.topic!r} is not a valid template ({exc}); "
                "use {host}, {name}, {stem} and {path}"
            ) from None
        _positive("--poll-interval", self.poll_interval)
        _positive("--linger", self.linger, zero_ok=True)
        if self.once:
            missing = [p for p in self.paths if not os.path.isfile(p)]
            if missing:
                what = "not a regular file" if os.path.exists(missing[0]) else "no such file"
                raise ConfigError(f"{what}: {missing[0]}")


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """Everything ``zmqws publish`` needs."""

    topic: str
    data: str | None = None
    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    wait: float = 10.0
    linger: float = 30.0
    curve_server_key: str | None = None
    curve_secret_key: str | None = None
    curve: CurveKeys | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "curve", producer_curve(self.curve_server_key,
                                                         self.curve_secret_key))
        if bool(self.bind) == bool(self.connect):
            raise ConfigError("publish needs exactly one of --bind ENDPOINT or --connect ENDPOINT")
        _endpoints("--bind", self.bind)
        _endpoints("--connect", self.connect)
        if not self.topic:
            raise ConfigError("publish: TOPIC must not be empty")
        _positive("--wait", self.wait, zero_ok=True)
        _positive("--linger", self.linger, zero_ok=True)


@dataclass(frozen=True, slots=True)
class ConsumeSettings:
    """Everything ``zmqws consume`` needs."""

    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    output: str | None = None
    count: int = 0
    idle_exit: float = 0.0

    def __post_init__(self) -> None:
        if not self.bind and not self.connect:
            raise ConfigError("consume needs at least one --bind ENDPOINT or --connect ENDPOINT")
        _endpoints("--bind", self.bind)
        _endpoints("--connect", self.connect)
        _positive("--count", self.count, zero_ok=True)
        _positive("--idle-exit", self.idle_exit, zero_ok=True)
        if self.output:
            parent = os.path.dirname(os.path.abspath(self.output))
            if not os.path.isdir(parent):
                raise ConfigError(f"--output: no such directory: {parent}")


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Everything ``zmqws demo`` needs."""

    listen: str = DEFAULT_LISTEN
    rate: float = 4.0
    zmq_port: int = 0
    duration: float = 0.0

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        _positive("--rate", self.rate)
        _positive("--duration", self.duration, zero_ok=True)
        if not 0 <= self.zmq_port <= 65535:
            raise ConfigError(f"--zmq-port: {self.zmq_port} is not a port number (0 picks a free one)")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything ``zmqws proxy`` needs: an XSUB frontend, an XPUB backend, counters."""

    frontend: tuple[str, ...] = ()
    backend: tuple[str, ...] = ()
    frontend_connect: tuple[str, ...] = ()
    backend_connect: tuple[str, ...] = ()
    status: str | None = None
    stats_interval: float = 0.0
    hwm: int = DEFAULT_PROXY_HWM
    no_drop: bool = False
    status_host: str = field(init=False, default="")
    status_port: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.frontend and not self.frontend_connect:
            raise ConfigError(
                "proxy needs a --frontend ENDPOINT (or --frontend-connect) for producers"
            )
        if not self.backend and not self.backend_connect:
            raise ConfigError(
                "proxy needs a --backend ENDPOINT (or --backend-connect) for gateways and consumers"
            )
        _endpoints("--frontend", self.frontend)
        _endpoints("--backend", self.backend)
        _endpoints("--frontend-connect", self.frontend_connect)
        _endpoints("--backend-connect", self.backend_connect)
        same = {e for e in set(self.frontend) & set(self.backend) if not e.endswith(":*")}
        if same:
            raise ConfigError(
                f"--frontend and --backend: {sorted(same)[0]!r} is given to both; "
                "they must be different endpoints"
            )
        if self.status is not None:
            host, port = parse_listen(self.status, "--status")
            object.__setattr__(self, "status_host", host)
            object.__setattr__(self, "status_port", port)
        _positive("--stats-interval", self.stats_interval, zero_ok=True)
        _positive("--hwm", self.hwm, zero_ok=True)
