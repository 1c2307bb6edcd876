#!/usr/bin/env python3
"""Reference gateway for the zmqws benchmarks: "frame once and coalesce by hand".

    python gw_reference.py --connect tcp://127.0.0.1:PUBPORT --listen 127.0.0.1:WSPORT

* ZeroMQ side: one SUB socket (RCVHWM=0, subscribed to everything) connected to --connect.  Its ZMQ_FD is
  registered with the event loop; on each wake-up the socket is drained with recv(NOBLOCK), at most 1000
  messages per round.  A multipart message's LAST frame is the data (the topic frame is dropped); a
  single-frame message is sent whole.
* Each message is framed once (unmasked binary WebSocket frame), the frames of one round are joined, and
  the joined bytes are written once to every client: one write per client per batch.
* WebSocket side: uvloop + a raw asyncio.Protocol with a hand-written RFC 6455 handshake.  The request path
  (e.g. /ws?format=raw) is ignored; every client gets every message, data only, as a binary frame.
  Client data frames are read and dropped; ping is answered with pong, close with close.
* No backpressure, no high-water mark, no slow-client eviction: nothing is ever dropped, memory is unbounded.
  This is a measuring stick, not a product.
* --publish-bind ENDPOINT (added in zmqws's benchmarks/, for S4): a PUB socket bound there; a client text
  frame {"op":"publish","topic":T,"data":D} is sent as [T, D] and answered {"op":"published","topic":T},
  the replies to one read joined into one write.  Other text frames are ignored.

Needs pyzmq and uvloop.  SIGTERM / SIGINT exit at once.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import struct
import sys

import uvloop
import zmq

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BATCH_MAX = 1000  # messages drained per event-loop round
H1 = [bytes([0x82, n]) for n in range(126)]  # FIN + binary, 7-bit length
CLIENTS = set()  # transports whose handshake is done
PUB = None  # --publish-bind: the PUB socket client publishes go to


def parse_listen(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {s!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def ws_frame(payload, opcode=0x2):
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(p, m):
    n = len(p)
    if not n:
        return b""
    k = (m * (n // 4 + 1))[:n]
    return (int.from_bytes(p, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


class WSProto(asyncio.Protocol):
    __slots__ = ("tr", "buf", "open")

    def connection_made(self, tr):
        self.tr = tr
        self.buf = b""
        self.open = False

    def connection_lost(self, exc):
        CLIENTS.discard(self.tr)

    def data_received(self, data):
        self.buf += data
        if not self.open:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 16384:
                    self.tr.close()
                return
            lines = self.buf[:i].decode("latin-1").split("\r\n")
            self.buf = self.buf[i + 4:]
            key = None
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "sec-websocket-key":
                    key = v.strip()
            if not lines[0].startswith("GET ") or not key:
                self.tr.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.tr.close()
                return
            acc = base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest())
            self.tr.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            self.open = True
            CLIENTS.add(self.tr)
        if self.buf:
            self.parse_frames()

    def parse_frames(self):  # client -> gateway: control frames, and publish commands with --publish-bind
        b = self.buf
        replies = []
        while len(b) >= 2:
            b0, b1 = b[0], b[1]
            ln = b1 & 0x7F
            off = 2
            if ln == 126:
                if len(b) < 4:
                    break
                ln = int.from_bytes(b[2:4], "big")
                off = 4
            elif ln == 127:
                if len(b) < 10:
                    break
                ln = int.from_bytes(b[2:10], "big")
                off = 10
            if ln > 1 << 20:  # nothing legitimate sends us that much
                self.tr.close()
                b = b""
                break
            mask = None
            if b1 & 0x80:
                if len(b) < off + 4:
                    break
                mask = b[off:off + 4]
                off += 4
            if len(b) < off + ln:
                break
            payload = b[off:off + ln]
            b = b[off + ln:]
            op = b0 & 0x0F
            if op == 9:  # ping -> pong
                self.tr.write(ws_frame(unmask(payload, mask) if mask else payload, 0xA))
            elif op == 1 and PUB is not None:  # a command: only publish is understood
                try:
                    cmd = json.loads(unmask(payload, mask) if mask else payload)
                    topic = cmd["topic"]
                    if cmd.get("op") == "publish":
                        PUB.send_multipart([topic.encode(), cmd["data"].encode()], zmq.NOBLOCK)
                        replies.append(ws_frame(
                            json.dumps({"op": "published", "topic": topic}, separators=(",", ":")).encode(), 0x1))
                except (ValueError, KeyError, TypeError, AttributeError, zmq.ZMQError):
                    pass
            elif op == 8:  # close -> echo the status code, then close
                CLIENTS.discard(self.tr)
                body = unmask(payload, mask) if mask else payload
                self.tr.write(b"\x88\x02" + body[:2] if len(body) >= 2 else b"\x88\x00")
                self.tr.close()
                b = b""
                break
            # other data frames (0, 1, 2) and pongs are dropped
        if replies:
            self.tr.write(b"".join(replies))
        self.buf = b


async def main(args):
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, os._exit, 0)

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)  # unlimited: nothing is dropped inside the gateway
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(args.connect)
    if args.publish_bind:
        global PUB
        PUB = ctx.socket(zmq.PUB)
        PUB.setsockopt(zmq.LINGER, 0)
        PUB.bind(args.publish_bind)

    recv = sub.recv
    NOBLOCK = zmq.NOBLOCK

    def on_readable():
        parts = []
        n = 0
        try:
            while n < BATCH_MAX:
                # copy=False frames carry .more; getsockopt(RCVMORE) costs ~1 us per call in pyzmq 27
                f = recv(NOBLOCK, copy=False)
                while f.more:
                    f = recv(NOBLOCK, copy=False)
                m = f.bytes
                ln = len(m)
                if ln < 126:
                    parts.append(H1[ln])
                    parts.append(m)
                else:
                    parts.append(ws_frame(m))
                n += 1
        except zmq.Again:
            pass
        if n:
            data = b"".join(parts)
            for t in CLIENTS:
                t.write(data)
        if n == BATCH_MAX:  # more may be queued: let the loop breathe, then keep draining
            loop.call_soon(on_readable)

    loop.add_reader(sub.getsockopt(zmq.FD), on_readable)
    loop.call_soon(on_readable)
    server = await loop.create_server(WSProto, args.listen[0], args.listen[1], backlog=1024, reuse_address=True)
    print(f"gw_reference: SUB connected to {args.connect}, WebSocket on {args.listen[0]}:{args.listen[1]}",
          file=sys.stderr, flush=True)
    async with server:
        await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connect", required=True, help="ZeroMQ endpoint of the publisher, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--listen", required=True, type=parse_listen, help="HOST:PORT for the WebSocket server")
    ap.add_argument("--publish-bind", metavar="ENDPOINT", help="PUB socket for what clients publish")
    uvloop.run(main(ap.parse_args()))
