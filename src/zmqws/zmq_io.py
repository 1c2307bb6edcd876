"""ZeroMQ sockets: endpoint checks, bind/connect with clear errors, and the gateway's input.

The gateway's SUB socket is served by the event loop through its file descriptor (STYLE rule 3):
ZeroMQ's FD is edge-triggered, it fires again only after everything pending was read. So every
wake-up drains the socket with non-blocking receives until ``zmq.Again`` or a batch cap and hands
the whole batch on; when the cap stops it, it schedules itself again instead of sleeping. One
awaited future per message costs dozens of times more than this drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import zmq
import zmq.auth

from .exceptions import ConfigError, StartupError

__all__ = [
    "CurveKeys",
    "load_curve_keys",
    "make_curve_keys",
    "load_public_key",
    "apply_curve",
    "check_endpoint",
    "attach",
    "SubscriberInput",
    "PGM_HELP",
    "is_multicast",
    "multicast_rate",
    "apply_multicast",
    "MULTICAST_RATE",
    "MULTICAST_RATE_ENV",
    "DEFAULT_BATCH",
    "DEFAULT_BATCH_BYTES",
]

PGM_HELP = (
    "this pyzmq's libzmq was built without PGM (multicast) support; install pyzmq built against the "
    "system libzmq: apt-get install libzmq3-dev libpgm-dev && "
    "PYZMQ_NO_BUNDLE=1 pip install --no-binary pyzmq pyzmq (in a zmqws checkout, "
    "scripts/pgm-env.sh does both)"
)

# Multicast defaults, set on every socket that binds or connects a pgm:// or epgm:// endpoint
# (STYLE rule 12). ZeroMQ's own RATE default, 100 kbit/s, is too slow for logs: a burst of 10,000
# lines of ~150 bytes takes two minutes to leave and a receiver that falls behind loses most of it;
# 10 Mbit/s sends it in about a second and is still a small share of a LAN. Override it with
# --multicast-rate (which sets ZMQWS_MULTICAST_RATE for the process and the ones it starts).
MULTICAST_RATE = 10_000  # kbit/s
MULTICAST_RATE_ENV = "ZMQWS_MULTICAST_RATE"
# 10 s of history kept for PGM repairs (libzmq's default, written down): rate x interval = 12.5 MB
# of sender memory at the default rate; a receiver that falls further behind loses data (a gap).
MULTICAST_RECOVERY_IVL_MS = 10_000
# 4 MiB kernel buffers (the kernel caps them at net.core.wmem_max / rmem_max): a quarter of a
# second of the default rate, against the 208 KiB default that overflows on a burst.
MULTICAST_BUFFER = 4 << 20
log = logging.getLogger("zmqws.zmq_io")
_warned: set[str] = set()

_TCP = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.%\w]+\]|[\w.\-;%:]+?):(\*|\d{1,5})$")

# DESIGN.md principle 2: drain what is ready, but give the loop back at least every 1,000
# messages or 256 KiB so WebSocket reads, pings and new connections are never starved, and
# one batch adds at most 256 KiB above a client's buffer cap (principle 3).
DEFAULT_BATCH = 1000
DEFAULT_BATCH_BYTES = 256 << 10


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE settings of one socket (ZeroMQ's CurveZMQ: encryption and authentication).

    As a server (``server_key`` None): ``secret``/``public`` are this socket's key pair and
    ``authorized`` a folder of the public keys allowed in (None: any client that speaks CURVE).
    As a client: ``server_key`` is the server's public key.
    """

    public: bytes
    secret: bytes
    server_key: bytes | None = None
    authorized: str | None = None


def load_curve_keys(flag: str, keypair_file: str) -> tuple[bytes, bytes]:
    """A key pair from a ``.key_secret`` file made by ``zmqws keygen``.

    Raises:
        ConfigError: the file is missing, unreadable or holds no secret key.
    """
    try:
        public, secret = zmq.auth.load_certificate(keypair_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag}: cannot read a key pair from {keypair_file}: {exc}") from None
    if not secret:
        raise ConfigError(f"{flag}: {keypair_file} holds no secret key; give the .key_secret file")
    return public, secret


def load_public_key(flag: str, key_file: str) -> bytes:
    """A public key from a ``.key`` (or ``.key_secret``) file."""
    try:
        public, _ = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag}: cannot read a public key from {key_file}: {exc}") from None
    return public


def make_curve_keys(folder: str, name: str) -> tuple[str, str]:
    """Write ``NAME.key`` (public, to hand out) and ``NAME.key_secret`` (keep private)."""
    os.makedirs(folder, exist_ok=True)
    return zmq.auth.create_certificates(folder, name)


def apply_curve(sock: zmq.Socket, keys: CurveKeys | None) -> None:  # type: ignore[type-arg]
    """Configure CURVE on ``sock`` before it binds or connects."""
    if keys is None:
        return
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    if keys.server_key is None:
        sock.curve_server = True
    else:
        sock.curve_serverkey = keys.server_key


def check_endpoint(endpoint: str) -> str:
    """Validate a ZeroMQ endpoint's syntax; return it unchanged.

    Raises:
        ConfigError: the endpoint is malformed, or names a transport this libzmq lacks.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise ConfigError(
            f"malformed endpoint {endpoint!r}: expected TRANSPORT://ADDRESS, "
            "e.g. tcp://127.0.0.1:5555 or ipc:///tmp/zmqws.sock"
        )
    if scheme == "tcp":
        m = _TCP.match(endpoint)
        if not m or (m.group(2) != "*" and not 0 < int(m.group(2)) < 65536):
            raise ConfigError(
                f"malformed endpoint {endpoint!r}: tcp endpoints are tcp://HOST:PORT with a port "
                "from 1 to 65535 (or * when binding)"
            )
    elif scheme in ("pgm", "epgm"):
        if ";" not in rest or ":" not in rest.rpartition(";")[2]:
            raise ConfigError(
                f"malformed endpoint {endpoint!r}: multicast endpoints are "
                f"{scheme}://INTERFACE;GROUP:PORT, e.g. {scheme}://eth0;239.192.1.1:5555"
            )
        if not zmq.has("pgm"):
            raise ConfigError(f"cannot use {endpoint!r}: {PGM_HELP}")
    elif scheme not in ("ipc", "inproc"):
        raise ConfigError(
            f"malformed endpoint {endpoint!r}: unknown transport {scheme!r} "
            "(use tcp, ipc, inproc, pgm or epgm)"
        )
    return endpoint


def is_multicast(endpoint: str) -> bool:
    """True for ``pgm://`` and ``epgm://`` endpoints."""
    return endpoint.partition("://")[0] in ("pgm", "epgm")


def multicast_rate() -> int:
    """The PGM send rate in kbit/s: ``ZMQWS_MULTICAST_RATE`` if set, else :data:`MULTICAST_RATE`.

    Raises:
        ConfigError: the variable is not a whole number from 1 to 10,000,000.
    """
    value = os.environ.get(MULTICAST_RATE_ENV, "").strip()
    if not value:
        return MULTICAST_RATE
    if not value.isdigit() or not 1 <= int(value) <= 10_000_000:
        raise ConfigError(
            f"--multicast-rate ({MULTICAST_RATE_ENV}): {value!r} is not a rate in kbit/s "
            "from 1 to 10000000"
        )
    return int(value)


def apply_multicast(sock: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
    """Set zmqws's multicast defaults on ``sock`` before it binds or connects ``endpoint``.

    Rate, recovery interval and kernel buffers as above. A socket left at libzmq's LINGER
    default (-1, for ever) gets 0 so that closing it never hangs on a rate-limited sender;
    one given a bounded linger (the Publisher's ``linger``) keeps it. A receiving socket gets
    no RCVHWM (0): PGM cannot slow its sender down, so a bounded queue only loses data, and
    libzmq 4.3's PGM receiver aborts the process when its queue is full (seen with 4.3.4:
    "Resource temporarily unavailable (src/pgm_receiver.cpp:131)"). What it holds is bounded
    by the sender's rate instead.

    Logs one WARNING per endpoint: multicast has no authentication or encryption.
    """
    sock.setsockopt(zmq.RATE, multicast_rate())
    sock.setsockopt(zmq.RECOVERY_IVL, MULTICAST_RECOVERY_IVL_MS)
    sock.setsockopt(zmq.SNDBUF, MULTICAST_BUFFER)
    sock.setsockopt(zmq.RCVBUF, MULTICAST_BUFFER)
    if sock.getsockopt(zmq.LINGER) < 0:
        sock.setsockopt(zmq.LINGER, 0)
    if sock.type in (zmq.SUB, zmq.XSUB):
        sock.setsockopt(zmq.RCVHWM, 0)
    if endpoint not in _warned:
        _warned.add(endpoint)
        log.warning(
            "%s: multicast reaches every host that joins the group, with no authentication or "
            "encryption (CURVE does not apply to PGM): use it only on a trusted network",
            endpoint,
        )


def attach(sock: zmq.Socket, endpoints: Iterable[str], *, bind: bool) -> None:  # type: ignore[type-arg]
    """Bind or connect ``sock`` to every endpoint, turning libzmq errors into one clear line.

    Multicast endpoints get :func:`apply_multicast`'s defaults first.

    Raises:
        ConfigError: an endpoint is malformed.
        StartupError: libzmq refused it (address in use, no such interface, ...).
    """
    for ep in endpoints:
        check_endpoint(ep)
        if is_multicast(ep):
            apply_multicast(sock, ep)
        elif ep.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)  # libzmq is IPv4-only unless told (IPv4 still works)
        try:
            sock.bind(ep) if bind else sock.connect(ep)
        except zmq.ZMQError as exc:
            verb = "bind" if bind else "connect"
            reason = zmq.strerror(exc.errno) if exc.errno else str(exc)
            if is_multicast(ep) and exc.errno == zmq.EINVAL:
                reason += (" (INTERFACE must be an address of this host or an interface name, "
                           "GROUP a multicast address such as 239.192.1.1)")
            elif ep.startswith("pgm://") and exc.errno == zmq.EPERM:
                reason += " (pgm:// needs raw sockets, root or CAP_NET_RAW; epgm:// does not)"
            raise StartupError(f"cannot {verb} {ep}: {reason}") from None


class SubscriberInput:
    """The gateway's SUB socket, drained in batches from the event loop.

    Args:
        ctx: the ZeroMQ context.
        bind: endpoints to bind (producers connect here).
        connect: endpoints to connect to (publishers or a proxy).
        on_batch: called with each list of messages, each a sequence of frames (a tuple for the
            usual one- and two-frame messages), and whether more were ready (the batch was cut at
            ``batch`` messages). After a batch with more ready it is called again, with an empty
            list if nothing came, so that what the receiver held over is written.
        rcvhwm: messages ZeroMQ may queue before the publisher side feels backpressure.
        batch: at most this many messages per hand-over.
        batch_bytes: at most about this many bytes per hand-over.
    """

    def __init__(
        self,
        ctx: zmq.Context,  # type: ignore[type-arg]
        *,
        bind: Iterable[str] = (),
        connect: Iterable[str] = (),
        on_batch: Callable[[list[Sequence[bytes]], bool], None],
        rcvhwm: int = 100_000,
        batch: int = DEFAULT_BATCH,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        curve: CurveKeys | None = None,
    ) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        apply_curve(self.sock, curve)
        self.bind = tuple(bind)
        self.connect = tuple(connect)
        try:
            attach(self.sock, self.bind, bind=True)
            attach(self.sock, self.connect, bind=False)
        except BaseException:
            self.sock.close(linger=0)
            raise
        self.on_batch = on_batch
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._closed = False
        self._more = False  # the last batch was cut at its count cap

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving the socket from ``loop``."""
        self._loop = loop
        loop.add_reader(self.sock.getsockopt(zmq.FD), self._wake)
        self._wake()

    def subscribe(self, prefix: bytes) -> None:
        if not self._closed:
            self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
            self._kick()

    def unsubscribe(self, prefix: bytes) -> None:
        if not self._closed:  # clients leaving during shutdown, after the socket closed
            self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
            self._kick()

    def _kick(self) -> None:
        # Any call on a ZeroMQ socket may consume the FD's edge: look again on the next turn.
        if self._loop is not None and not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        # recv(copy=False) frames carry .more; asking the socket for RCVMORE costs about 0.7 µs
        # per call, as much as the rest of the work on a small message. The usual envelope,
        # [topic, data], becomes a tuple without a loop: this drain is most of the gateway's
        # cost per message when few clients share it (benchmarks/, S1 at 1 to 100 clients).
        recv = self.sock.recv
        noblock = zmq.NOBLOCK
        cap, cap_bytes = self.batch, self.batch_bytes
        batch: list[Sequence[bytes]] = []
        append = batch.append
        n = size = 0
        try:
            while n < cap and size < cap_bytes:
                f = recv(noblock, copy=False)
                if f.more:  # ZeroMQ delivers a multipart message whole: the next frames are there
                    topic = f.bytes
                    f = recv(noblock, copy=False)
                    data = f.bytes
                    if f.more:
                        frames = [topic, data]
                        while f.more:
                            f = recv(noblock, copy=False)
                            frames.append(f.bytes)
                        append(frames)
                    else:
                        append((topic, data))
                else:
                    data = f.bytes
                    append((data,))
                n += 1
                size += len(data)
        except zmq.Again:
            pass
        if batch or self._more:
            more = self._more = n >= cap
            self.received += n
            self.on_batch(batch, more)
            if batch:
                # More may be ready: let the loop serve other sockets, then come back. Drained:
                # the edge-triggered FD will fire for what comes next.
                self._kick()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except (zmq.ZMQError, ValueError, OSError):
                pass
        self.sock.close(linger=0)
