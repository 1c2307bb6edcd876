"""The ``zmqws`` command: flags → settings → the part that runs. Wiring only, no logic.

Exit codes: 0 success; 1 a failure at run time; 2 a usage or configuration error (bad flag, bad
value, malformed endpoint, a file named on the command line that does not exist); 3 a start-up
failure (a port or endpoint in use, an interface that cannot be bound). A user error prints one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, config
from .exceptions import ConfigError, StartupError
from .zmq_io import MULTICAST_RATE, MULTICAST_RATE_ENV, multicast_rate

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Print each flag's default, except where there is none to print (off, empty, a repeatable
    flag not given) or the help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, [], "", False):
            return text
        return super()._get_help_string(action)


def _fmt() -> type[argparse.HelpFormatter]:
    return _DefaultsFormatter


def _add_gateway(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = config.GatewaySettings.__dataclass_fields__
    p = sub.add_parser(
        "gateway",
        help="subscribe to ZeroMQ and serve WebSocket clients and the live page",
        description="Subscribe to ZeroMQ publishers and broadcast each message to the WebSocket "
        "clients subscribed to its topic. Serves the live page at /, the WebSocket endpoint at /ws "
        "and a JSON status at /health, all on --listen.",
        formatter_class=_fmt(),
    )
    p.add_argument("--bind", action="append", default=[], metavar="ENDPOINT",
                   help="bind the SUB socket here; producers connect to it (repeatable)")
    p.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help="connect the SUB socket to a publisher or proxy (repeatable)")
    p.add_argument("--listen", default=config.DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="HTTP and WebSocket address; 0.0.0.0:PORT exposes it to the network")
    p.add_argument("--publish-bind", action="append", default=[], metavar="ENDPOINT",
                   help="let clients publish: bind a PUB socket here (repeatable; off by default)")
    p.add_argument("--publish-connect", action="append", default=[], metavar="ENDPOINT",
                   help="let clients publish: connect a PUB socket here (repeatable; off by default)")
    p.add_argument("--client-buffer", type=int, default=d["client_buffer"].default, metavar="BYTES",
                   help="outgoing bytes queued per client before the slow-client policy acts")
    p.add_argument("--slow-client", choices=config.SLOW_CLIENT_POLICIES, default="drop",
                   help="drop: drop the oldest queued messages and send a gap message; "
                   "close: close the client with 1008")
    p.add_argument("--max-message", type=int, default=d["max_message"].default, metavar="BYTES",
                   help="largest message a client may send (larger: closed with 1009)")
    p.add_argument("--max-outbound", type=int, default=d["max_outbound"].default, metavar="BYTES",
                   help="largest ZeroMQ message forwarded to clients (larger: counted, not sent)")
    p.add_argument("--max-connections", type=int, default=d["max_connections"].default, metavar="N",
                   help="WebSocket connections at once (more: refused with 503)")
    p.add_argument("--max-subscriptions", type=int, default=d["max_subscriptions"].default, metavar="N",
                   help="topic prefixes per client")
    p.add_argument("--max-topic", type=int, default=d["max_topic"].default, metavar="BYTES",
                   help="longest topic prefix a client may subscribe to")
    p.add_argument("--handshake-timeout", type=float, default=d["handshake_timeout"].default,
                   metavar="SECONDS", help="time a client has to complete the HTTP request")
    p.add_argument("--ping-interval", type=float, default=d["ping_interval"].default,
                   metavar="SECONDS", help="seconds between pings to each client (0: no pings)")
    p.add_argument("--ping-timeout", type=float, default=d["ping_timeout"].default,
                   metavar="SECONDS", help="time a client has to answer a ping")
    p.add_argument("--close-timeout", type=float, default=d["close_timeout"].default,
                   metavar="SECONDS", help="time given to the closing handshake and to shutdown")
    p.add_argument("--rcvhwm", type=int, default=d["rcvhwm"].default, metavar="N",
                   help="messages the SUB socket queues before publishers feel backpressure")
    p.add_argument("--burst-hold", type=float, default=d["burst_hold"].default, metavar="SECONDS",
                   help="while more messages are ready than one batch, how long those for clients "
                   "that get few of them may wait to share a write (0: never wait)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept browsers from this exact origin, e.g. https://app.example.com "
                   "(repeatable; * accepts any). Without it: the gateway's own page and "
                   "non-browser clients only")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require a bearer token: one per line in FILE, each granting every topic")
    p.add_argument("--jwt-secret-file", default=None, metavar="FILE",
                   help="require a bearer token: HS256 JWTs signed with the secret in FILE, "
                   "granting the topic prefixes of their subscribe and publish claims")
    p.add_argument("--certfile", default=None, metavar="FILE",
                   help="serve https and wss with this certificate chain (PEM)")
    p.add_argument("--keyfile", default=None, metavar="FILE",
                   help="the private key of --certfile (PEM)")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE",
                   help="encrypt the ZeroMQ input with CURVE: the gateway's key pair "
                   "(NAME.key_secret from `zmqws keygen`); producers need its public key")
    p.add_argument("--curve-authorized", default=None, metavar="DIR",
                   help="with --curve-secret-key: accept only producers whose public key "
                   "(NAME.key) is in DIR (default: any producer that speaks CURVE)")
    p.add_argument("--workers", default="auto", metavar="N",
                   help="gateway processes sharing --listen (SO_REUSEPORT), each with its own "
                   "ZeroMQ subscription; auto: one per core, 1: a single process")
    p.add_argument("--echo", action="store_true",
                   help="also serve /echo, a WebSocket echo endpoint using the same connection "
                   "code as /ws (for conformance suites such as Autobahn)")
    _multicast_flag(p)
    p.set_defaults(run=_run_gateway)


def _run_gateway(a: argparse.Namespace) -> int:
    from .gateway import run

    s = config.GatewaySettings(
        bind=tuple(a.bind), connect=tuple(a.connect), listen=a.listen,
        publish_bind=tuple(a.publish_bind), publish_connect=tuple(a.publish_connect),
        client_buffer=a.client_buffer, slow_client=a.slow_client, max_message=a.max_message,
        max_outbound=a.max_outbound, max_connections=a.max_connections,
        max_subscriptions=a.max_subscriptions, max_topic=a.max_topic,
        handshake_timeout=a.handshake_timeout, ping_interval=a.ping_interval,
        ping_timeout=a.ping_timeout, close_timeout=a.close_timeout, rcvhwm=a.rcvhwm,
        burst_hold=a.burst_hold, echo=a.echo, allow_origin=tuple(a.allow_origin), token_file=a.token_file,
        jwt_secret_file=a.jwt_secret_file, certfile=a.certfile, keyfile=a.keyfile,
        curve_secret_key=a.curve_secret_key, curve_authorized=a.curve_authorized,
        workers=_workers(a.workers),
    )
    return run(s)


def _workers(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--workers: {value!r} is not a number or auto") from None


def _endpoint_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--curve-server-key", default=None, metavar="FILE",
                   help="encrypt with CURVE to a gateway started with --curve-secret-key: its "
                   "public key (NAME.key)")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE",
                   help="with --curve-server-key: this producer's key pair (NAME.key_secret)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help=f"connect to a {what} (repeatable)")
    g.add_argument("--bind", action="append", default=[], metavar="ENDPOINT",
                   help="bind here and let the other side connect (repeatable)")


def _add_tail(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tail",
        help="follow files and publish each line",
        description="Follow files like tail -F (appends, rotation, truncation) and publish each "
        "line, without its line terminator, as one message. Waits for a subscriber before sending "
        "and blocks rather than drop when the subscriber is slow (on pgm:// and epgm:// there is "
        "no subscriber to wait for: it sends at once). --state FILE: resume where it stopped, "
        "each line exactly once with zmqws consume (docs/delivery.md).",
        formatter_class=_fmt(),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files to follow")
    _endpoint_flags(p, "gateway, consumer or proxy")
    p.add_argument("--topic", default="{host}.{name}", metavar="TEMPLATE",
                   help="topic of each file's lines: {host}, {name} (file name), {stem} "
                   "(file name without extension), {path}")
    p.add_argument("--host", default="", metavar="NAME",
                   help="host name used in {host} and in the source stamp (default: this machine's)")
    p.add_argument("--from-start", action="store_true",
                   help="start at the beginning of each file instead of its end")
    p.add_argument("--once", action="store_true",
                   help="read each file from its start to its end (implies --from-start), publish every "
                   "line, wait until all was handed to the network, exit 0")
    p.add_argument("--poll-interval", type=float, default=0.2, metavar="SECONDS",
                   help="how often files are checked for growth, rotation and truncation")
    p.add_argument("--linger", type=float, default=30.0, metavar="SECONDS",
                   help="at exit, how long to wait for queued lines to be sent")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="save how far each file was handed over here, and resume from it after "
                   "a crash or restart (each line exactly once, with the aggregator)")
    _multicast_flag(p)
    p.set_defaults(run=_run_tail)


def _run_tail(a: argparse.Namespace) -> int:
    from .tail import run

    return run(config.TailSettings(
        paths=tuple(a.paths), bind=tuple(a.bind), connect=tuple(a.connect), topic=a.topic,
        host=a.host, from_start=a.from_start, once=a.once, poll_interval=a.poll_interval,
        linger=a.linger, state=a.state, curve_server_key=a.curve_server_key,
        curve_secret_key=a.curve_secret_key,
    ))


def _add_publish(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "publish",
        help="publish DATA, or each line of stdin, on a topic",
        description="Publish DATA as one message on TOPIC, or, without DATA, each line of standard "
        "input as one message.",
        formatter_class=_fmt(),
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("data", nargs="?", metavar="DATA")
    _endpoint_flags(p, "gateway, consumer or proxy")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for a subscriber that wants TOPIC (0: do not wait)")
    p.add_argument("--linger", type=float, default=30.0, metavar="SECONDS",
                   help="at exit, how long to wait for queued messages to be sent")
    _multicast_flag(p)
    p.set_defaults(run=_run_publish)


def _run_publish(a: argparse.Namespace) -> int:
    from .publisher import run_publish

    return run_publish(config.PublishSettings(
        topic=a.topic, data=a.data, bind=tuple(a.bind), connect=tuple(a.connect), wait=a.wait,
        linger=a.linger, curve_server_key=a.curve_server_key, curve_secret_key=a.curve_secret_key,
    ))


def _add_consume(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "consume",
        help="subscribe and write every message as a JSON line (the aggregator)",
        description="Subscribe and write one JSON line per message (topic, data, source, seq) to "
        "--output or stdout. Gaps in each source's sequence numbers are reported on stderr and in "
        "a summary at exit. SIGINT and SIGTERM flush everything and exit 0.",
        formatter_class=_fmt(),
    )
    p.add_argument("--bind", action="append", default=[], metavar="ENDPOINT",
                   help="bind the SUB socket here; producers connect to it (repeatable)")
    p.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help="connect the SUB socket to a publisher or proxy (repeatable)")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="subscribe to this topic prefix (repeatable; default: everything)")
    p.add_argument("--output", "-o", default=None, metavar="PATH",
                   help="append JSON lines to this file instead of stdout")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N messages (0: run until stopped)")
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                   help="exit after this long without a message (0: never)")
    _multicast_flag(p)
    p.set_defaults(run=_run_consume)


def _run_consume(a: argparse.Namespace) -> int:
    from .consume import run

    return run(config.ConsumeSettings(
        bind=tuple(a.bind), connect=tuple(a.connect), topics=tuple(a.topic), output=a.output,
        count=a.count, idle_exit=a.idle_exit,
    ))


def _add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a gateway and one producer per bundled sample log, replayed live",
        description="Start a gateway and one `zmqws tail` producer per bundled sample log (real "
        "Loghub logs), each as if on its own node, replaying the logs at a readable pace in a loop. "
        "Open the printed URL; Ctrl-C stops everything.",
        formatter_class=_fmt(),
    )
    p.add_argument("--listen", default=config.DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="where the gateway serves the page and WebSocket")
    p.add_argument("--rate", type=float, default=4.0, metavar="LINES_PER_S",
                   help="lines per second written to each replayed log")
    p.add_argument("--zmq-port", type=int, default=0, metavar="PORT",
                   help="TCP port the gateway's SUB socket binds on 127.0.0.1 (0: a free one)")
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop by itself after this long (0: run until Ctrl-C)")
    p.set_defaults(run=_run_demo)


def _run_demo(a: argparse.Namespace) -> int:
    from .demo import run

    return run(config.DemoSettings(listen=a.listen, rate=a.rate, zmq_port=a.zmq_port,
                                   duration=a.duration))


def _add_proxy(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = config.ProxySettings.__dataclass_fields__
    p = sub.add_parser(
        "proxy",
        help="forward from many producers to many gateways (XSUB/XPUB, libzmq's own proxy)",
        description="Forward every message from the producers on --frontend (XSUB) to the "
        "gateways and consumers on --backend (XPUB), in libzmq's own proxy, and their "
        "subscriptions back to the producers, so a producer sends only what someone wants. "
        "Counters (messages, bytes, subscriptions) on --status and in the log. SIGINT and "
        "SIGTERM stop it cleanly.",
        formatter_class=_fmt(),
    )
    p.add_argument("--frontend", action="append", default=[], metavar="ENDPOINT",
                   help="bind the XSUB socket here; producers connect to it (repeatable)")
    p.add_argument("--backend", action="append", default=[], metavar="ENDPOINT",
                   help="bind the XPUB socket here; gateways and consumers connect to it "
                   "(repeatable)")
    p.add_argument("--frontend-connect", action="append", default=[], metavar="ENDPOINT",
                   help="connect the XSUB socket to a producer that binds (repeatable)")
    p.add_argument("--backend-connect", action="append", default=[], metavar="ENDPOINT",
                   help="connect the XPUB socket to a gateway or consumer that binds (repeatable)")
    p.add_argument("--status", default=None, metavar="HOST:PORT",
                   help="serve the counters as JSON at http://HOST:PORT/status (off by default; "
                   "use 127.0.0.1 unless the network is trusted)")
    p.add_argument("--stats-interval", type=float, default=d["stats_interval"].default,
                   metavar="SECONDS", help="log the counters every SECONDS (0: only at exit)")
    p.add_argument("--hwm", type=int, default=d["hwm"].default, metavar="N",
                   help="messages queued per producer and per gateway (0: no limit)")
    p.add_argument("--no-drop", action="store_true",
                   help="when a gateway's queue is full, wait (push back on every producer) "
                   "instead of dropping for that gateway")
    _multicast_flag(p)
    p.set_defaults(run=_run_proxy)


def _run_proxy(a: argparse.Namespace) -> int:
    from .proxy import run

    return run(config.ProxySettings(
        frontend=tuple(a.frontend), backend=tuple(a.backend),
        frontend_connect=tuple(a.frontend_connect), backend_connect=tuple(a.backend_connect),
        status=a.status, stats_interval=a.stats_interval, hwm=a.hwm, no_drop=a.no_drop,
    ))


def _multicast_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--multicast-rate", type=int, default=None, metavar="KBIT_S",
                   help="send rate of pgm:// and epgm:// endpoints in kbit/s (default "
                   f"{MULTICAST_RATE}, or ${MULTICAST_RATE_ENV})")


def _add_keygen(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "keygen",
        help="make a CURVE key pair for the gateway or a producer",
        description="Write DIR/NAME.key (the public key: hand it out) and DIR/NAME.key_secret "
        "(the key pair: keep it private) for ZeroMQ CURVE encryption and authentication.",
        formatter_class=_fmt(),
    )
    p.add_argument("dir", metavar="DIR", help="folder to write the key files to")
    p.add_argument("name", metavar="NAME", help="name of the key files, e.g. gateway or web-1")
    p.set_defaults(run=_run_keygen)


def _run_keygen(a: argparse.Namespace) -> int:
    from .zmq_io import make_curve_keys

    try:
        public, secret = make_curve_keys(a.dir, a.name)
    except OSError as exc:
        raise StartupError(f"cannot write keys to {a.dir}: {exc.strerror}") from None
    print(f"public key: {public}\nkey pair (keep private): {secret}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The whole ``zmqws`` command line (used by ``main`` and by the docs' check)."""
    parser = _Parser(
        prog="zmqws",
        description="ZeroMQ ⇄ WebSocket gateway: carry live data from ZeroMQ publishers to browsers.",
    )
    parser.add_argument("--version", action="version", version=f"zmqws {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="logging verbosity")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_gateway(sub)
    _add_tail(sub)
    _add_publish(sub)
    _add_consume(sub)
    _add_demo(sub)
    _add_proxy(sub)
    _add_keygen(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zmqws`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command's own --help, not the top level's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        if getattr(args, "multicast_rate", None) is not None:
            # Read by zmq_io when a socket meets a pgm/epgm endpoint, here and in the
            # processes this one starts (gateway workers).
            os.environ[MULTICAST_RATE_ENV] = str(args.multicast_rate)
            multicast_rate()  # check it now: one line and exit 2 when it is out of range
        return int(args.run(args))
    except ConfigError as exc:
        print(f"zmqws {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"zmqws {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return EXIT_OK
