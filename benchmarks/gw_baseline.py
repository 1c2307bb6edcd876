#!/usr/bin/env python3
"""Baseline gateway for the zmqws benchmarks: the idiomatic library way.

    python gw_baseline.py --connect tcp://127.0.0.1:PUBPORT --listen 127.0.0.1:WSPORT

* websockets' new asyncio API (websockets.asyncio.server.serve) on the default asyncio loop,
  compression=None (permessage-deflate off, so the comparison with the reference is fair),
  backlog=1024 (so 10,000 clients connecting 128 at a time are not slowed by SYN retries).
* zmq.asyncio SUB socket (RCVHWM=0, subscribed to everything) connected to --connect; one awaited
  recv_multipart() per message; the LAST frame is the data (a single-frame message is sent whole).
* websockets.broadcast(CLIENTS, data): every client gets every message as one binary frame.  The request
  path (e.g. /ws?format=raw) is ignored.  Client messages are read and dropped.
* --publish-bind ENDPOINT (added in zmqws's benchmarks/, for S4): a zmq.asyncio PUB socket bound there; for
  each client message {"op":"publish","topic":T,"data":D}: json.loads, await send_multipart([T, D]),
  await ws.send({"op":"published","topic":T}).  Other messages are ignored.

Needs pyzmq and websockets (>= 13, for the new asyncio API).  SIGTERM / SIGINT exit at once.
"""
import argparse
import asyncio
import json
import os
import signal
import sys

import zmq
import zmq.asyncio
from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

CLIENTS = set()
PUB = None  # --publish-bind


def parse_listen(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {s!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def handler(ws):
    CLIENTS.add(ws)
    try:
        async for message in ws:  # client -> gateway: publish commands with --publish-bind, else ignored
            if PUB is None:
                continue
            try:
                cmd = json.loads(message)
                if cmd.get("op") != "publish":
                    continue
                topic, data = cmd["topic"], cmd["data"]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            await PUB.send_multipart([topic.encode(), data.encode()])
            await ws.send(json.dumps({"op": "published", "topic": topic}))
    except ConnectionClosed:  # abrupt close (the load client resets its sockets): not an error here
        pass
    finally:
        CLIENTS.discard(ws)


async def main(args):
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, os._exit, 0)

    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(args.connect)
    if args.publish_bind:
        global PUB
        PUB = ctx.socket(zmq.PUB)
        PUB.setsockopt(zmq.LINGER, 0)
        PUB.bind(args.publish_bind)

    async with serve(handler, args.listen[0], args.listen[1], compression=None, backlog=1024):
        print(f"gw_baseline: SUB connected to {args.connect}, WebSocket on {args.listen[0]}:{args.listen[1]}",
              file=sys.stderr, flush=True)
        while True:
            parts = await sub.recv_multipart()
            broadcast(CLIENTS, parts[-1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connect", required=True, help="ZeroMQ endpoint of the publisher, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--listen", required=True, type=parse_listen, help="HOST:PORT for the WebSocket server")
    ap.add_argument("--publish-bind", metavar="ENDPOINT", help="PUB socket for what clients publish")
    asyncio.run(main(ap.parse_args()))
