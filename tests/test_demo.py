"""demo: the main job on the bundled logs; Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import websocket
from conftest import UNIT, free_port, wait_until, zmqws_cmd

from zmqws.demo import NODES, Replayer, sample_lines


def children_of(pid: int) -> set[int]:
    """Live child processes of ``pid``, read from /proc (Linux)."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def test_sample_lines_are_complete_crlf_lines() -> None:
    lines = sample_lines("Apache_2k.log")
    assert len(lines) == 2000 and all(ln.endswith(b"\r\n") for ln in lines)


def test_replayer_appends_then_rotates(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.touch()
    stop = threading.Event()
    r = Replayer([b"a\r\n", b"b\r\n"], path, rate=2000.0, stop=stop)
    r.start()
    wait_until(lambda: r.written >= 5, 10, "two rotations")
    stop.set()
    r.join(5 * UNIT)
    assert (tmp_path / "x.log.1").read_bytes() == b"a\r\nb\r\n"


def test_demo_serves_every_node_and_stops_cleanly_on_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(zmqws_cmd("demo", "--listen", f"127.0.0.1:{port}", "--rate", "50"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline() + proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first
        kids = wait_until(lambda: len(k := children_of(proc.pid)) == 1 + len(NODES) and k, 20,
                          "the gateway and one producer per node")
        ws = wait_until(lambda: _try_connect(port), 20, "the gateway")
        wanted = {f"{n.host}.{Path(n.filename).stem}" for n in NODES}
        seen: set[str] = set()
        while seen != wanted:
            m = json.loads(ws.recv())
            assert m["topic"] in wanted and m["data"] and m["source"].startswith(m["topic"].split(".")[0])
            seen.add(m["topic"])
        ws.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30 * UNIT) == 0
        assert "stopped" in proc.stdout.read()
        wait_until(lambda: not any(os.path.exists(f"/proc/{k}") and _alive(k) for k in kids), 10,
                   "every child to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _try_connect(port: int) -> websocket.WebSocket | None:
    try:
        return websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=20 * UNIT)
    except OSError:
        return None


def test_demo_refuses_a_port_in_use_before_starting_anything() -> None:
    """No URL of someone else's server, no processes started: one line and exit 3."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(zmqws_cmd("demo", "--listen", f"127.0.0.1:{port}"),
                           capture_output=True, text=True, timeout=60 * UNIT)
    assert r.returncode == 3
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "address already in use" in lines[0], r.stderr


def test_demo_refuses_a_zmq_port_in_use_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(zmqws_cmd("demo", "--listen", f"127.0.0.1:{free_port()}",
                                     "--zmq-port", str(port)),
                           capture_output=True, text=True, timeout=60 * UNIT)
    assert r.returncode == 3 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--zmq-port" in lines[0] and "in use" in lines[0], r.stderr
