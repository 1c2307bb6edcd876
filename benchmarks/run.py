#!/usr/bin/env python3
"""zmqws benchmarks: one command, one table of medians for this machine.

    python3 benchmarks/run.py            # full run: every scenario, 3 repetitions (~6 min on 2 vCPUs)
    python3 benchmarks/run.py --quick    # smoke check, about a minute
    python3 benchmarks/run.py --only s1,s4 --reps 5

Compiles the C load client (wsbench.c) into benchmarks/.cache/, finds a Python that has pyzmq,
websockets and uvloop (--python, this interpreter, the repository's .venv, else it makes
benchmarks/.cache/venv), then runs every scenario against every gateway, interleaved per repetition
(A B C, A B C, ...), the gateway pinned to CPU 0 and the load to CPU 1:

  S1 fan-out   N clients (1, 10, 100, 1000), 100-byte messages published in one burst, every message to
               every client; deliveries/s = N*M / (first publish -> last delivery). Every client counts
               and orders what it gets: a run with a message lost is not counted.
               Also in zmqws's default JSON format (zmqws only; --no-json leaves it out).
  S2 latency   publish -> receive p50/p99/p99.9 at 1,000 msg/s to 100 clients; also plain libzmq
               XSUB->XPUB with ZMTP clients (gw_zmqref.py), the floor.
  S3 memory    gateway RSS growth per idle WebSocket connection with 10,000 connections.
  S4 ingest    100 WebSocket clients publish {"op":"publish"} (16 in flight each); messages/s that arrive
               on a ZeroMQ SUB connected to the gateway's --publish-bind.
  T  topics    10,000 clients on 1 topic vs 10,000 clients spread over 1,000 topics (10 per topic, the
               publisher rotates topics): deliveries/s and their ratio (zmqws only: the references ignore
               topics).
  T' isolation every message to the 10 clients of one topic: alone, then among 10,000 clients over 1,000
               topics; deliveries/s per subscribed client with / without the others (no scan: close to 1).
  W  workers   S1 with 1,000 clients, zmqws --workers 1 vs 2, nothing pinned (reported, not checked).
  Z  sizes     S1 with 100 clients and 1,000- and 8,000-byte messages (zmqws and reference): how cost grows
               with message size.
  B  burst     2,000,000 messages in one burst to 10 reading clients and 1 that stops reading: peak RSS,
               whether it stops growing, and whether every drop is counted (--slow-client drop: received +
               reported missed = published, per client, and = /health dropped; close: closed with 1008).

The gateways: zmqws (this checkout, `python -m zmqws gateway` with PYTHONPATH=src), reference
(gw_reference.py: frame once, coalesce by hand), baseline (gw_baseline.py: websockets broadcast(), one
awaited recv per message). More with --gw NAME=COMMAND (a zmqws-compatible command line).

Output: progress on stderr; on stdout the table, the issue's "done when" checks, problems, and a last
line of JSON. Raw per-run JSON and gateway logs go to --out. Exit status: 0 every run clean, 1 some
run failed or lost messages (the table still prints), 2 set-up error.

Derived from the company perf kit's compare.py (see README.md).
"""
import argparse
import hashlib
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

KIT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(KIT)
CACHE = os.path.join(KIT, ".cache")
LIVE = {}  # pid -> Popen: every process started here, killed by pid on the way out
SCENARIOS = ("s1", "s2", "s3", "s4", "topics", "sizes", "burst", "workers")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


# ---------------------------------------------------------------------------------------------- set-up

def build_wsbench(cache):
    src = os.path.join(KIT, "wsbench.c")
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    exe = os.path.join(cache, f"wsbench-{digest}")
    if os.path.exists(exe):
        return exe
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise SetupError("no C compiler: apt-get install gcc zlib1g-dev")
    os.makedirs(cache, exist_ok=True)
    tmp = f"{exe}.{os.getpid()}.tmp"
    log(f"compiling wsbench.c -> {exe}")
    try:
        cp = subprocess.run([gcc, "-O2", "-pthread", "-o", tmp, src, "-lz"], capture_output=True, text=True,
                            timeout=180)
    except subprocess.TimeoutExpired:
        raise SetupError("gcc took more than 180 s")
    if cp.returncode != 0:
        hint = " (zlib headers missing: apt-get install zlib1g-dev)" if "zlib" in cp.stderr else ""
        raise SetupError(f"gcc failed{hint}:\n{cp.stderr[-2000:]}")
    os.replace(tmp, exe)
    return exe


def gw_env():
    """Environment of the zmqws gateway: this checkout's src/ first, so the working tree is measured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(REPO, "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_python(py):
    """Versions seen by interpreter py (pyzmq, websockets, uvloop, and zmqws from this checkout), or None."""
    code = ("import sys, zmq, websockets, uvloop, zmqws; assert sys.version_info >= (3, 11); "
            "print(sys.version.split()[0], zmq.__version__, zmq.zmq_version(), websockets.__version__, "
            "uvloop.__version__, zmqws.__file__)")
    try:
        cp = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60, env=gw_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    if cp.returncode != 0:
        return None
    v = cp.stdout.split()
    return {"python": v[0], "pyzmq": v[1], "libzmq": v[2], "websockets": v[3], "uvloop": v[4], "zmqws": v[5]}


def find_python(a):
    """An interpreter with pyzmq, websockets and uvloop: --python, this one, the repo's .venv, else a new venv."""
    tried = []
    for py in ([a.python] if a.python else []) + [sys.executable, os.path.join(REPO, ".venv", "bin", "python")]:
        if py and os.path.exists(py) and py not in tried:
            tried.append(py)
            v = check_python(py)
            if v:
                return py, v
            if a.python:
                raise SetupError(f"--python {py} cannot import zmq, websockets, uvloop and zmqws (from src/)")
    venv = os.path.join(a.cache, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        base = next((p for p in ("python3.13", "python3.12", "python3.11", "python3") if shutil.which(p)), None)
        if base is None:
            raise SetupError("no python3 found")
        log(f"no interpreter with pyzmq, websockets and uvloop among {tried}: creating {venv}")
        try:
            subprocess.run([base, "-m", "venv", venv], check=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise SetupError(f"{base} -m venv {venv} failed: {e} (Debian: apt-get install python3-venv)")
    if check_python(py) is None:
        log(f"pip install pyzmq websockets uvloop into {venv}")
        try:
            subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                            "pyzmq>=25", "websockets>=14", "uvloop>=0.19"], check=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise SetupError(f"pip install into {venv} failed: {e}")
    v = check_python(py)
    if v is None:
        raise SetupError(f"{py} still cannot import zmq, websockets, uvloop and zmqws (Python >= 3.11 needed)")
    return py, v


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def gateway_defaults(gw):
    """{"client-buffer": N, "rcvhwm": N} as `GATEWAY --help` states them (argparse's "(default: N)")."""
    import re
    try:
        cp = subprocess.run([*gw.argv, "--help"], capture_output=True, text=True, timeout=60, env=gw.env)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {"workers": "--workers" in cp.stdout}
    for flag in ("client-buffer", "rcvhwm"):
        m = re.search(r"\n\s+--%s \S+(.*?)(?=\n\s+-|\Z)" % flag, cp.stdout, re.S)  # the flag's help entry
        d = re.search(r"\(default:\s*(\d+)\)", m.group(1)) if m else None
        if d:
            found[flag] = int(d.group(1))
    return found


def git_describe():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes in src/" if dirty else "") if head else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ---------------------------------------------------------------------------------------------- processes

def free_ports(k):
    """k distinct free ports below the ephemeral range (no self-connect, no clash with client ports)."""
    ports = []
    while len(ports) < k:
        p = random.randint(20000, 32000)
        if p in ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            ports.append(p)
        except OSError:
            pass
        finally:
            s.close()
    return ports


def listening(port):
    hexp = ":%04X" % port
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(hexp) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def start(argv, out, err, env=None):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, env=env)
    LIVE[p.pid] = p
    return p


def kill(p, grace=3.0):
    """SIGTERM the process group led by p.pid, SIGKILL it after `grace` s; every wait bounded.
    Returns True if SIGKILL was needed."""
    needed_kill = False
    if p.poll() is None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            needed_kill = sig == signal.SIGKILL
            try:
                p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # whatever the leader left behind in its group
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if p.poll() is None:
        log(f"warning: pid {p.pid} did not die after SIGKILL")
    else:
        LIVE.pop(p.pid, None)
    return needed_kill


def kill_all():
    for p in list(LIVE.values()):
        kill(p, grace=1.0)


def tail(path, n=6):
    """Last n non-blank lines the gateway wrote in this run (the log holds every run, each after a === line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    run = []
    for line in lines:
        if line.startswith("=== "):
            run = []
        elif line.strip():
            run.append(line.strip()[:200])
    return " | ".join(run[-n:]) or "(empty)"


def get_health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as e:
        return {"error": f"GET /health: {e}"}


# ---------------------------------------------------------------------------------------------- one run

class Gateway:
    def __init__(self, name, argv, env=None, caps=()):
        self.name, self.argv, self.env, self.caps = name, argv, env, set(caps)
        self.single = []  # ["--workers", "1"] where the gateway has that option (its default may be "auto")


class Runner:
    def __init__(self, a, wsbench, outdir):
        self.a = a
        self.wsbench = wsbench
        self.outdir = outdir
        self.runs = open(os.path.join(outdir, "runs.jsonl"), "a")
        self.start_failures = {}  # gateway -> consecutive start failures
        self.sigterm_noted = set()
        self.notes = []
        pin = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset")
        self.gw_pin = ["taskset", "-c", str(a.gw_cpu)] if pin else []
        self.client_pin = ["taskset", "-c", str(a.client_cpu)] if pin else []
        if not pin:
            self.notes.append("fewer than 2 CPUs or no taskset: gateway and load share CPUs, figures are lower bounds")

    def run(self, gw, mode, client_args, deadline, meta, gw_args=(), ports=None, health=False, pin=True):
        """Start the gateway, wait for it to listen, run wsbench, (GET /health), kill the gateway.
        pin=False: neither the gateway nor the load client is pinned (gateway --workers N)."""
        res = dict(meta, gw=gw.name)
        t = time.time()
        if self.start_failures.get(gw.name, 0) >= 2:
            res["error"] = "skipped: the gateway failed to start twice in a row"
        else:
            res.update(self._run(gw, mode, client_args, deadline, meta, gw_args, ports, health, pin))
        res["run_s"] = round(time.time() - t, 2)
        self.runs.write(json.dumps(res) + "\n")
        self.runs.flush()
        return res

    def _run(self, gw, mode, client_args, deadline, meta, gw_args, ports, health, pin):
        a = self.a
        pub, port = ports or free_ports(2)
        gw_args = [*map(str, gw_args)]
        if "--workers" not in gw_args:  # one process: CPU and RSS are read for the PID started here
            gw_args = [*gw.single, *gw_args]
        cmd = [*(self.gw_pin if pin else []), *gw.argv, "--connect", f"tcp://127.0.0.1:{pub}", "--listen", f"127.0.0.1:{port}",
               *gw_args]
        logpath = os.path.join(self.outdir, f"gw-{gw.name}.log")
        with open(logpath, "a") as logf:
            logf.write(f"=== {time.strftime('%H:%M:%S')} {json.dumps(meta)}: {shlex.join(cmd)}\n")
            logf.flush()
            try:
                g = start(cmd, logf, logf, gw.env)
            except OSError as e:
                self.start_failures[gw.name] = self.start_failures.get(gw.name, 0) + 1
                return {"error": f"cannot start {shlex.join(cmd)}: {e}"}
            try:
                t0 = time.time()
                while not listening(port):
                    failed = None
                    if g.poll() is not None:
                        failed = f"gateway exited rc={g.returncode} before listening on 127.0.0.1:{port}"
                    elif time.time() - t0 > a.start_timeout:
                        failed = f"gateway did not listen on 127.0.0.1:{port} within {a.start_timeout:g} s"
                    if failed:
                        self.start_failures[gw.name] = self.start_failures.get(gw.name, 0) + 1
                        return {"error": f"{failed}; log: {tail(logpath)}"}
                    time.sleep(0.05)
                self.start_failures[gw.name] = 0
                start_s = round(time.time() - t0, 3)
                time.sleep(0.2)
                ccmd = [*(self.client_pin if pin else []), self.wsbench, "--mode", mode, "--port", str(port), "--pub-port", str(pub),
                        "--gw-pid", str(g.pid), *map(str, client_args)]
                with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                    c = start(ccmd, out, err)
                    r = self._wait_client(c, g, deadline, out, err, logpath)
                if health and g.poll() is None:
                    r["health"] = get_health(port)
                r.update(start_s=start_s, client_cmd=shlex.join(ccmd))
                return r
            finally:
                if kill(g) and gw.name not in self.sigterm_noted:
                    self.sigterm_noted.add(gw.name)
                    self.notes.append(f"{gw.name}: did not exit within 3 s of SIGTERM; it was SIGKILLed")

    def _wait_client(self, c, g, deadline, out, err, logpath):
        t0 = time.time()
        gw_dead_at = None
        why = None
        while c.poll() is None:
            now = time.time()
            if g.poll() is not None and gw_dead_at is None:
                gw_dead_at = now
            if gw_dead_at is not None and now - gw_dead_at > 3:
                why = f"gateway exited rc={g.returncode} during the run; log: {tail(logpath)}"
                break
            if now - t0 > deadline:
                why = f"wsbench did not finish within {deadline:g} s"
                break
            time.sleep(0.05)
        if c.poll() is None:
            kill(c, grace=0.5)
        else:
            LIVE.pop(c.pid, None)
        out.seek(0)
        err.seek(0)
        r = {}
        for line in reversed(out.read().splitlines()):
            if line.startswith("{"):
                try:
                    r = json.loads(line)
                    break
                except ValueError:
                    pass
        noise = [l.strip() for l in err.read().splitlines() if l.strip()]
        if why:
            r["error"] = why
        elif not r:
            r["error"] = f"wsbench rc={c.returncode}, no JSON: {' | '.join(noise[-3:])[:400]}"
        elif r.get("error"):
            r["error"] = f"wsbench {r.get('status')}: {r['error']}"
        if "error" not in r and (gw_dead_at is not None or g.poll() is not None):
            r["error"] = f"gateway exited rc={g.returncode} during the run; log: {tail(logpath)}"
        if noise and "error" in r:
            r["client_stderr"] = " | ".join(noise[-3:])[:400]
        return r


# ---------------------------------------------------------------------------------------------- judging runs

def lost(r):
    """Messages not delivered, counted only once publishing began (else nothing was sent to lose)."""
    return (r.get("lost") or 0) if r.get("published") else 0


def base_problem(r):
    if r.get("error"):
        return [r["error"]]
    bits = []
    if r.get("status") != "ok":
        bits.append(f"status {r.get('status')}")
    if r.get("bad_frames"):
        bits.append(f"{r['bad_frames']} frames that are not the benchmark payload")
    if r.get("status") == "no_warmup":
        bits.append(f"{r.get('warm')}/{r.get('n')} clients got a message (is the data sent raw, as a binary "
                    f"frame, to clients that name no topic?)")
    if r.get("status") == "connect_timeout":
        bits.append(f"{r.get('open')}/{r.get('n')} handshakes completed")
    if r.get("pub_connected") == 0:
        bits.append("the gateway never connected its SUB to the publisher")
    h = r.get("health")
    if isinstance(h, dict) and h.get("error"):
        bits.append(h["error"])
    return bits


def problem(r):
    """One-line description of what went wrong in run r, or None if it was clean."""
    scen = r.get("scenario")
    bits = base_problem(r)
    if r.get("error"):
        return bits[0]
    if scen == "burst":
        return burst_problem(r, bits)
    if lost(r):
        bits.append(f"lost {r['lost']} of {r.get('expected')} " + ("publishes" if scen == "s4" else "deliveries"))
    if r.get("out_of_order"):
        bits.append(f"{r['out_of_order']} sequence gaps or reorders")
    if r.get("dead_conns"):
        bits.append(f"{r['dead_conns']} connections closed")
    if r.get("errors"):
        bits.append(f"{r['errors']} publishes answered with an error")
    h = r.get("health") or {}
    dropped = (h.get("dropped") or {}).get("slow_client") if isinstance(h.get("dropped"), dict) else None
    if dropped:
        bits.append(f"the gateway dropped {dropped} deliveries to slow clients (/health)")
    if scen == "s3" and r.get("kb_per_conn") is None and not bits:
        bits.append("no RSS figure")
    return "; ".join(bits) or None


def burst_bound_kb(r, a):
    """What the gateway may hold at most in a burst (see README): libzmq's queue of --rcvhwm messages
    (~400 B each: two zmq_msg_t plus the data), 2 x --client-buffer per client, 16 MiB of slack."""
    return (a.rcvhwm * 400 + r.get("n", 0) * 2 * a.client_buffer) / 1024 + 16 * 1024


def burst_verdict(r, a):
    """(bounded, accounted, text) for a burst run."""
    q = r.get("gw_rss_q_kb") or [0, 0, 0, 0]
    before, peak = r.get("gw_rss_before_kb") or 0, r.get("gw_rss_peak_kb") or 0
    growth = peak - before
    late = q[3] - q[1] if q[1] and q[3] else None  # growth between the 2nd and the last quarter of the burst
    # A plateau shows only when a quarter of the burst is well above what libzmq may queue (--rcvhwm).
    if r.get("policy") in ("drop", "close") and r.get("m", a.burst_m) < 8 * a.rcvhwm:
        flat = True
    else:
        flat = late is not None and late <= max(8 * 1024, 0.1 * growth)
    within = growth <= burst_bound_kb(r, a) if r.get("policy") in ("drop", "close") else flat
    h = r.get("health") or {}
    d = h.get("dropped") or {}
    policy = r.get("policy")
    if policy == "drop":
        accounted = (r.get("unaccounted") == 0 and r.get("status") == "ok"
                     and d.get("slow_client") == r.get("missed") and h.get("messages_in", 0) >= r.get("published", 0))
        how = (f"received + reported missed = expected on every client (unaccounted {r.get('unaccounted')}); "
               f"missed reported {r.get('missed')} vs /health dropped {d.get('slow_client')}")
    elif policy == "close":
        k = r.get("stalled", 0)
        accounted = (r.get("closed_1008") == k and r.get("dead_conns") == k and r.get("unaccounted") == 0
                     and h.get("closed_slow_clients") == k)
        how = (f"{r.get('closed_1008')}/{k} stalled clients closed with 1008, readers complete "
               f"(unaccounted {r.get('unaccounted')}), /health closed {h.get('closed_slow_clients')}, "
               f"dropped {d.get('slow_client')}")
    else:  # a reference gateway: no policy, nothing to account for
        accounted = r.get("status") == "ok" and not r.get("lost")
        how = "no slow-client policy: buffers everything"
    return flat and within, accounted, how


def burst_problem(r, bits):
    if r.get("policy") in ("drop", "close"):
        st = r.get("status")
        if r.get("policy") == "close" and st == "conn_closed":  # expected: the stalled clients were closed
            bits = [b for b in bits if not b.startswith("status ")]
        if r.get("policy") == "drop" and r.get("unaccounted"):
            bits.append(f"{r['unaccounted']} messages neither received nor reported missed")
        if not r.get("health"):
            bits.append("no /health")
    return "; ".join(bits) or None


# ---------------------------------------------------------------------------------------------- scenarios

def s1_like(R, a, gw, n, meta, sized, probes, topics=0, size=None, path=None, pub_topics=0, extra=(),
            gw_args=(), pin=True):
    """Burst fan-out with n clients (over `topics` topics, 0 = one topic and no topic in the path; with
    pub_topics P the messages go to the first P topics only). M is sized on the first repetition so a run
    lasts about --s1-secs, then kept."""
    per_msg = n / topics if topics else n  # deliveries per message (pub_topics: n / topics as well)
    key = (gw.name, meta["scenario"], meta["n"])
    health = "health" in gw.caps

    def go(m):
        args = ["--n", n, "--m", m, "--stall", 5, "--no-lat", "--max", 150, "--connect-timeout", 60,
                "--warm-timeout", 30, "--conc", 128, "--path", path or a.path, "--topic", a.topic, *extra]
        if topics:
            args += ["--topics", topics]
        if pub_topics:
            args += ["--pub-topics", pub_topics]
        if size:
            args += ["--size", size]
        extra_gw = list(gw_args)
        if "policy" in gw.caps and not a.no_burst_buffer:
            # A throughput run, not a test of the slow-client policy (B is): a client buffer that
            # holds the whole burst, so a load client delayed by other processes is not turned into
            # drops; the references have no cap at all. Memory stays bounded by the burst.
            per_client = m * ((size or 100) + 14)  # frame bytes of the whole burst (a bound with topics)
            extra_gw += ["--client-buffer", int(min(256 << 20, max(1 << 20, 1.25 * per_client)))]
        return R.run(gw, "ws", args, 180, dict(meta, m=m), gw_args=extra_gw, health=health, pin=pin)

    fixed = a.s1_m.get(n) if meta["scenario"] in ("s1", "s1j") else None
    if fixed:
        sized[key] = fixed
    if key in sized:
        return go(sized[key])
    # the first run aims at 200,000 deliveries (50,000 per client below 4 clients: slow gateways with one
    # client do ~25k/s), then M grows until a run lasts at least 0.4 x --s1-secs
    m = max(20, 2 * topics, math.ceil(min(a.s1_probe, 50_000 * per_msg) / per_msg))
    for attempt in range(4):
        r = go(m)
        el = r.get("elapsed_s") or 0
        if problem(r) or el >= 0.4 * a.s1_secs or m >= a.s1_max_m or attempt == 3:
            sized[key] = max(20, 2 * topics, int(m * a.s1_secs / el)) if el > 2.5 * a.s1_secs and not problem(r) else m
            return r
        probes.append(r)
        log(progress_line(r) + "  (sizing run, not counted)")
        m = min(a.s1_max_m, int(m * min(100.0, max(2.0, 1.1 * a.s1_secs / max(el, 1e-3)))))
        m = max(m, 2 * topics)


def run_cell(R, a, gw, scen, n, rep, sized, probes):
    meta = {"scenario": scen, "n": n, "rep": rep}
    health = "health" in gw.caps
    if scen == "s1":
        return s1_like(R, a, gw, n, meta, sized, probes)
    if scen == "s1j":  # S1 in the default JSON format (zmqws only: the references send raw data)
        return s1_like(R, a, gw, n, meta, sized, probes, path=a.json_path)
    if scen == "ti":  # topic isolation: every message to one topic's subscribers, among n clients over n/10 topics
        per = a.t_clients // a.t_topics
        clients, topics = (per, 1) if n == 1 else (a.t_clients, a.t_topics)
        return s1_like(R, a, gw, clients, dict(meta, n=n, clients=clients, topics=topics, subscribed=per), sized,
                       probes, topics=topics, pub_topics=1)
    if scen == "w":  # n = --workers; nothing pinned: the workers and the load share both CPUs
        args = ["--workers", n]
        return s1_like(R, a, gw, a.w_clients, dict(meta, workers=n), sized, probes, extra=["--pub-conns", n],
                       gw_args=args, pin=False)
    if scen == "s2":
        mode = "zmtp" if gw.name == "libzmq-ref" else "ws"
        args = ["--n", n, "--m", a.s2_m, "--rate", a.s2_rate, "--stall", 5, "--max", a.s2_m / a.s2_rate + 60,
                "--connect-timeout", 30, "--warm-timeout", 20, "--path", a.path, "--topic", a.topic]
        return R.run(gw, mode, args, a.s2_m / a.s2_rate + 90, meta, health=health)
    if scen == "s3":
        args = ["--n", n, "--m", 1, "--idle", a.s3_idle, "--warm-ms", 250, "--conc", 128, "--connect-timeout", 120,
                "--warm-timeout", 30, "--max", 200, "--path", a.path, "--topic", a.topic]
        return R.run(gw, "ws", args, 220, meta)
    if scen == "s4":
        pub, port, pport = free_ports(3)
        args = ["--n", n, "--window", a.s4_window, "--secs", a.s4_secs, "--sub-port", pport, "--stall", 5,
                "--max", a.s4_secs + 60, "--connect-timeout", 30, "--warm-timeout", 20, "--path", a.path,
                "--topic", a.topic]
        return R.run(gw, "ingest", args, a.s4_secs + 90, meta, gw_args=["--publish-bind", f"tcp://127.0.0.1:{pport}"],
                     ports=(pub, port), health=health)
    if scen == "t":  # n is the number of topics; meta n reads "clients/topics"
        return s1_like(R, a, gw, a.t_clients, dict(meta, n=f"{a.t_clients}/{n}", topics=n), sized, probes, topics=n)
    if scen == "z":  # n is the payload size in bytes
        return s1_like(R, a, gw, a.z_clients, dict(meta, n=f"{a.z_clients}x{n}B", size=n), sized, probes, size=n)
    if scen == "burst":
        policy = n
        gw_args = ["--slow-client", policy] if "policy" in gw.caps else []
        if "policy" in gw.caps and a.client_buffer_given:
            gw_args += ["--client-buffer", a.client_buffer]
        if "policy" in gw.caps and a.rcvhwm_given:
            gw_args += ["--rcvhwm", a.rcvhwm]
        nb = a.burst_readers + a.burst_stalled
        args = ["--n", nb, "--stalled", a.burst_stalled, "--m", a.burst_m, "--stall", 10, "--no-lat", "--max", 240,
                "--connect-timeout", 30, "--warm-timeout", 20, "--path", a.path, "--topic", a.topic]
        r = R.run(gw, "ws", args, 260, dict(meta, n=nb, policy=policy if "policy" in gw.caps else "none"),
                  gw_args=gw_args, health=health)
        r["policy"] = policy if "policy" in gw.caps else "none"
        return r
    raise ValueError(scen)


def progress_line(r):
    p = problem(r)
    head = f"[{r.get('scenario')} n={r.get('n')} rep={r.get('rep')}] {r['gw']:<11}"
    scen = r.get("scenario")
    if scen in ("s1", "s1j", "t", "ti", "z", "w") and "deliveries_per_s" in r:
        body = (f"m={r.get('m')} {fmt_rate(r['deliveries_per_s'])} deliveries/s in {r.get('elapsed_s')} s, "
                f"gw CPU {r.get('gw_cpu_pct')} %, client CPU {r.get('client_cpu_pct')} %")
    elif scen == "s2" and "lat_us" in r:
        l = r["lat_us"]
        body = (f"p50 {fmt_ms(l['p50'])} p99 {fmt_ms(l['p99'])} p99.9 {fmt_ms(l['p999'])} ms, "
                f"gw CPU {r.get('gw_cpu_pct')} %")
    elif scen == "s3" and r.get("kb_per_conn") is not None:
        body = f"{r['kb_per_conn']} KB/conn, connect {r.get('connect_s')} s"
    elif scen == "s4" and "msgs_per_s" in r:
        body = (f"{fmt_rate(r['msgs_per_s'])} msgs/s into ZeroMQ ({r.get('sub_received')} arrived of "
                f"{r.get('acked')} acked), gw CPU {r.get('gw_cpu_pct')} %, client CPU {r.get('client_cpu_pct')} %")
    elif scen == "burst" and r.get("gw_rss_peak_kb"):
        d = (r.get("health") or {}).get("dropped") or {}
        body = (f"policy {r.get('policy')}: peak RSS {r['gw_rss_peak_kb'] / 1024:.0f} MB (before "
                f"{(r.get('gw_rss_before_kb') or 0) / 1024:.0f}), by quarter {[round(x / 1024) for x in r.get('gw_rss_q_kb', [])]} MB, "
                f"missed {r.get('missed')}, /health dropped {d.get('slow_client')}, closed 1008: {r.get('closed_1008')}")
    else:
        body = ""
    return f"{head} {body}  [{r.get('run_s')} s run]" + (f"  PROBLEM: {p}" if p else "")


# ---------------------------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def tidy(x):
    if isinstance(x, dict):
        return {k: tidy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [tidy(v) for v in x]
    if isinstance(x, float):
        return round(x) if abs(x) >= 100 else float(f"{x:.4g}")
    return x


def fmt_rate(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def fmt_ratio(x):
    return "–" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.3g}")


def fmt_ms(us):
    return "–" if us is None else (f"{us / 1000:.2f}" if us < 10000 else f"{us / 1000:.0f}")


def fmt_mb(kb):
    return "–" if kb is None else f"{kb / 1024:.0f}"


def report(a, gws, zref, cells, results, probes, R, versions, t_begin, outdir):
    names = [g.name for g in gws]
    main = names[0]
    problems = [f"{g} {scen.upper()} {n} rep {r['rep']}: {problem(r)}"
                for (g, scen, n), rs in results.items() for r in rs if problem(r)]

    def clean(g, scen, n):
        return [r for r in results.get((g, scen, n), []) if not problem(r)]

    metrics = {
        "s1": lambda r: r.get("deliveries_per_s"),
        "s1j": lambda r: r.get("deliveries_per_s"),
        "t": lambda r: r.get("deliveries_per_s"),
        "ti": lambda r: r.get("deliveries_per_s"),
        "w": lambda r: r.get("deliveries_per_s"),
        "z": lambda r: r.get("deliveries_per_s"),
        "s2": lambda r: (r.get("lat_us") or {}).get("p99"),
        "s3": lambda r: r.get("kb_per_conn"),
        "s4": lambda r: r.get("msgs_per_s"),
        "burst": lambda r: (r.get("gw_rss_peak_kb") or 0) - (r.get("gw_rss_before_kb") or 0),
    }

    def ratio(g, ref, scen, n, metric=None):
        """median over reps of metric(g) / metric(ref) in the same rep (clean runs only)"""
        metric = metric or metrics[scen]
        refs = {r["rep"]: metric(r) for r in clean(ref, scen, n)}
        return med([metric(r) / refs[r["rep"]] for r in clean(g, scen, n)
                    if refs.get(r["rep"]) and metric(r) is not None])

    def medof(g, scen, n, f):
        return med([f(r) for r in clean(g, scen, n)])

    ref_name = "reference" if "reference" in names else None
    base_name = "baseline" if "baseline" in names else None
    cols = names + ([zref.name] if zref and any(s == "s2" for s, _ in cells) else [])
    head = ["scenario", "metric", *cols]
    if ref_name and ref_name != main:
        head.append(f"{main} ÷ {ref_name}")
    if base_name and base_name != main:
        head.append(f"{main} ÷ {base_name}")
    head.append("load side / notes")
    rows, summary, checks = [], {}, []

    def load_note(scen, n, extra=""):
        worst = None
        for g in cols:
            c = medof(g, scen, n, lambda r: r.get("client_cpu_pct"))
            if c is not None and (worst is None or c > worst[1]):
                worst = (g, c)
        gws_sat = [g for g in cols if (medof(g, scen, n, lambda r: r.get("gw_cpu_pct")) or 0) >= 95]
        bits = []
        if worst:
            if worst[1] > 85:
                bits.append(f"**load side saturated** (client CPU {worst[1]:.0f} % with {worst[0]}): a lower bound")
            else:
                bits.append(f"load ok (client CPU ≤ {worst[1]:.0f} %)")
        if scen == "s2" and gws_sat:
            bits.append(f"gateway CPU ≥ 95 %: {', '.join(gws_sat)} (latency grows with the run)")
        if extra:
            bits.append(extra)
        return "; ".join(bits)

    def row(label, metric_label, scen, n, f, fmt, note="", ratios=True, ratio_metric=None):
        vals = []
        for g in cols:
            if (g, scen, n) not in results:
                vals.append("n/a")
            else:
                v = medof(g, scen, n, f)
                vals.append(fmt(v) if v is not None else "–")
        line = [label, metric_label, *vals]
        if ref_name and ref_name != main:
            line.append(fmt_ratio(ratio(main, ref_name, scen, n, ratio_metric)) if ratios and (ref_name, scen, n) in results else "")
        if base_name and base_name != main:
            line.append(fmt_ratio(ratio(main, base_name, scen, n, ratio_metric)) if ratios and (base_name, scen, n) in results else "")
        line.append(note)
        rows.append(line)

    for scen, n in cells:
        if scen == "s1":
            row(f"S1 fan-out, {n:,} client{'s' if n > 1 else ''}", "deliveries/s ↑", "s1", n,
                lambda r: r.get("deliveries_per_s"), fmt_rate, load_note("s1", n))
            for g in names:
                if (g, "s1", n) in results:
                    summary.setdefault(g, {}).setdefault("s1", {})[str(n)] = {
                        "deliveries_per_s": medof(g, "s1", n, lambda r: r.get("deliveries_per_s")),
                        "ratio_reference": ratio(g, ref_name, "s1", n) if ref_name else None,
                        "ratio_baseline": ratio(g, base_name, "s1", n) if base_name else None,
                        "lost": sum(lost(r) for r in results[(g, "s1", n)]),
                        "clean_runs": len(clean(g, "s1", n)), "runs": len(results[(g, "s1", n)]),
                        "gw_cpu_pct": medof(g, "s1", n, lambda r: r.get("gw_cpu_pct")),
                        "client_cpu_pct": medof(g, "s1", n, lambda r: r.get("client_cpu_pct"))}
        elif scen == "s1j":
            raw = medof(main, "s1", n, lambda r: r.get("deliveries_per_s")) if (main, "s1", n) in results else None
            js = medof(main, "s1j", n, lambda r: r.get("deliveries_per_s"))
            row(f"S1 fan-out, {n:,} client{'s' if n > 1 else ''}, JSON format", "deliveries/s ↑", "s1j", n,
                lambda r: r.get("deliveries_per_s"), fmt_rate,
                load_note("s1j", n, f"{main} JSON ÷ raw {fmt_ratio(js / raw)}" if raw and js else ""), ratios=False)
            summary.setdefault(main, {}).setdefault("s1_json", {})[str(n)] = {
                "deliveries_per_s": js, "lost": sum(lost(r) for r in results[(main, "s1j", n)]),
                "clean_runs": len(clean(main, "s1j", n)), "runs": len(results[(main, "s1j", n)]),
                "gw_cpu_pct": medof(main, "s1j", n, lambda r: r.get("gw_cpu_pct")),
                "client_cpu_pct": medof(main, "s1j", n, lambda r: r.get("client_cpu_pct"))}
        elif scen == "ti":
            per = a.t_clients // a.t_topics
            one = {r["rep"]: r.get("deliveries_per_s") for r in clean(main, "ti", 1)}
            q = med([r["deliveries_per_s"] / one[r["rep"]] for r in clean(main, "ti", n) if one.get(r["rep"])]) \
                if n != 1 else None
            label = (f"T' {per} clients on 1 topic, every message to them" if n == 1 else
                     f"T' {a.t_clients:,} clients over {a.t_topics:,} topics, every message to the {per} of one topic")
            pc = medof(main, "ti", n, lambda r: r.get("deliveries_per_s"))
            row(label, "deliveries/s ↑", "ti", n, lambda r: r.get("deliveries_per_s"), fmt_rate,
                load_note("ti", n, f"per subscribed client {fmt_rate((pc or 0) / per)} msgs/s"
                          + (f", ÷ {per} clients alone **{fmt_ratio(q)}**" if q is not None else "")), ratios=False)
            summary.setdefault(main, {}).setdefault("topic_isolation", {})[str(n)] = {
                "clients": per if n == 1 else a.t_clients, "subscribed": per, "deliveries_per_s": pc,
                "ratio_to_alone": q, "clean_runs": len(clean(main, "ti", n)), "runs": len(results[(main, "ti", n)])}
        elif scen == "w":
            w1 = {r["rep"]: r.get("deliveries_per_s") for r in clean(main, "w", 1)}
            q = med([r["deliveries_per_s"] / w1[r["rep"]] for r in clean(main, "w", n) if w1.get(r["rep"])]) \
                if n != 1 else None
            row(f"S1 {a.w_clients:,} clients, --workers {n} (nothing pinned)", "deliveries/s ↑", "w", n,
                lambda r: r.get("deliveries_per_s"), fmt_rate,
                (f"÷ --workers 1: {fmt_ratio(q)}; " if q is not None else "")
                + f"client CPU {medof(main, 'w', n, lambda r: r.get('client_cpu_pct')) or 0:.0f} % of one core; "
                  "load and workers share the 2 CPUs", ratios=False)
            summary.setdefault(main, {}).setdefault("workers", {})[str(n)] = {
                "clients": a.w_clients, "deliveries_per_s": medof(main, "w", n, lambda r: r.get("deliveries_per_s")),
                "ratio_to_1": q, "lost": sum(lost(r) for r in results[(main, "w", n)]),
                "clean_runs": len(clean(main, "w", n)), "runs": len(results[(main, "w", n)])}
        elif scen == "s2":
            zr = None
            if zref and (zref.name, "s2", n) in results:
                zr = ratio(main, zref.name, "s2", n)
            label = f"S2 latency, {n} clients at {a.s2_rate:g} msg/s"
            row(label, "p50 ms ↓", "s2", n, lambda r: r["lat_us"]["p50"], fmt_ms, "",
                ratio_metric=lambda r: r["lat_us"]["p50"])
            row("", "p99 ms ↓", "s2", n, lambda r: r["lat_us"]["p99"], fmt_ms,
                load_note("s2", n, f"{main} p99 ÷ libzmq p99: **{fmt_ratio(zr)}**" if zr is not None else ""))
            row("", "p99.9 ms ↓", "s2", n, lambda r: r["lat_us"]["p999"], fmt_ms, "",
                ratio_metric=lambda r: r["lat_us"]["p999"])
            for g in cols:
                if (g, "s2", n) in results:
                    summary.setdefault(g, {})["s2"] = {
                        **{f"{k}_ms": (lambda v: None if v is None else v / 1000)(medof(g, "s2", n, lambda r, k=k: r["lat_us"][k]))
                           for k in ("p50", "p99", "p999")},
                        "ratio_p99_libzmq": ratio(g, zref.name, "s2", n) if zref and (zref.name, "s2", n) in results else None,
                        "gw_cpu_pct": medof(g, "s2", n, lambda r: r.get("gw_cpu_pct")),
                        "clean_runs": len(clean(g, "s2", n)), "runs": len(results[(g, "s2", n)])}
        elif scen == "s3":
            row(f"S3 idle memory, {n:,} connections", "KB/conn ↓", "s3", n, lambda r: r.get("kb_per_conn"),
                lambda v: f"{v:.1f}",
                "connect+handshake s: " + ", ".join(
                    f"{g} {medof(g, 's3', n, lambda r: r.get('connect_s')) or 0:.1f}" for g in names if (g, "s3", n) in results))
            for g in names:
                if (g, "s3", n) in results:
                    summary.setdefault(g, {})["s3"] = {"kb_per_conn": medof(g, "s3", n, lambda r: r.get("kb_per_conn")),
                                                       "clean_runs": len(clean(g, "s3", n))}
        elif scen == "s4":
            row(f"S4 ingest, {n} clients × {a.s4_window} in flight", "msgs/s into ZeroMQ ↑", "s4", n,
                lambda r: r.get("msgs_per_s"), fmt_rate, load_note("s4", n))
            for g in names:
                if (g, "s4", n) in results:
                    summary.setdefault(g, {})["s4"] = {
                        "msgs_per_s": medof(g, "s4", n, lambda r: r.get("msgs_per_s")),
                        "ratio_reference": ratio(g, ref_name, "s4", n) if ref_name else None,
                        "ratio_baseline": ratio(g, base_name, "s4", n) if base_name else None,
                        "lost": sum(lost(r) for r in results[(g, "s4", n)]),
                        "p99_ms": (lambda v: None if v is None else v / 1000)(medof(g, "s4", n, lambda r: r["lat_us"]["p99"]))}
        elif scen == "t":
            def to_one(g):  # median over reps of deliveries/s with n topics / with 1 topic, same rep
                if n == 1 or (g, "t", 1) not in results:
                    return None
                one = {r["rep"]: r.get("deliveries_per_s") for r in clean(g, "t", 1)}
                return med([r["deliveries_per_s"] / one[r["rep"]] for r in clean(g, "t", n) if one.get(r["rep"])])

            tgws = [g for g in names if (g, "t", n) in results]
            bits = []
            for g in tgws:
                tr = to_one(g)
                pc = fmt_rate((medof(g, "t", n, lambda r: r.get("deliveries_per_s")) or 0) / a.t_clients)
                who = f"{g}: " if len(tgws) > 1 else ""
                bits.append(f"{who}per client {pc} msgs/s" + (f", ÷ 1 topic **{fmt_ratio(tr)}**" if tr is not None else ""))
            label = f"T {a.t_clients:,} clients, {n:,} topic{'s' if n > 1 else ''}"
            row(label, "deliveries/s ↑", "t", n, lambda r: r.get("deliveries_per_s"), fmt_rate,
                load_note("t", n, "; ".join(bits)), ratios=False)
            for g in names:
                if (g, "t", n) in results:
                    summary.setdefault(g, {}).setdefault("topics", {})[str(n)] = {
                        "clients": a.t_clients, "deliveries_per_s": medof(g, "t", n, lambda r: r.get("deliveries_per_s")),
                        "ratio_to_one_topic": to_one(g),
                        "gw_cpu_pct": medof(g, "t", n, lambda r: r.get("gw_cpu_pct")),
                        "client_cpu_pct": medof(g, "t", n, lambda r: r.get("client_cpu_pct")),
                        "clean_runs": len(clean(g, "t", n)), "runs": len(results[(g, "t", n)])}
        elif scen == "z":
            v = medof(main, "z", n, lambda r: r.get("deliveries_per_s"))
            row(f"Z message size {n:,} B, {a.z_clients} clients", "deliveries/s ↑", "z", n,
                lambda r: r.get("deliveries_per_s"), fmt_rate,
                load_note("z", n, f"{main}: {v * n / 1e6:,.0f} MB/s of payload" if v else ""))
            for g in names:
                if (g, "z", n) in results:
                    summary.setdefault(g, {}).setdefault("sizes", {})[str(n)] = {
                        "clients": a.z_clients, "deliveries_per_s": medof(g, "z", n, lambda r: r.get("deliveries_per_s")),
                        "ratio_reference": ratio(g, ref_name, "z", n) if ref_name and (ref_name, "z", n) in results else None,
                        "gw_cpu_pct": medof(g, "z", n, lambda r: r.get("gw_cpu_pct")),
                        "client_cpu_pct": medof(g, "z", n, lambda r: r.get("client_cpu_pct"))}
        elif scen == "burst":
            rs = results.get((main, "burst", n), [])
            verdicts = [burst_verdict(r, a) for r in rs if not problem(r)]
            others = []
            for g in names[1:]:
                for r in results.get((g, "burst", n), []):
                    if not problem(r):
                        b, _, _ = burst_verdict(r, a)
                        others.append(f"{g}: {'bounded' if b else 'grows'} "
                                      f"({'→'.join(fmt_mb(x) for x in r.get('gw_rss_q_kb', []))} MB by quarter)")
            note = ""
            if rs and verdicts:
                r0 = next(r for r in rs if not problem(r))
                b, acc, how = verdicts[0]
                shape = ("burst too short for a plateau" if a.burst_m < 8 * a.rcvhwm else "flat") if b else "GROWS"
                note = (f"{main}: RSS by quarter of the burst {'→'.join(fmt_mb(x) for x in r0.get('gw_rss_q_kb', []))} MB "
                        f"({shape}; bound {fmt_mb(burst_bound_kb(r0, a))} MB); "
                        f"drops {'accounted' if acc else 'NOT accounted'}: {how}")
            if others:
                note += ("; " if note else "") + "; ".join(others)
            row(f"B burst {a.burst_m / 1e6:g}M msgs, {a.burst_readers} readers + {a.burst_stalled} stalled, "
                f"--slow-client {n}", "peak RSS growth MB ↓", "burst", n,
                lambda r: (r.get("gw_rss_peak_kb") or 0) - (r.get("gw_rss_before_kb") or 0), fmt_mb, note, ratios=False)
            for g in names:
                if (g, "burst", n) in results:
                    summary.setdefault(g, {}).setdefault("burst", {})[n] = [
                        {"peak_rss_kb": r.get("gw_rss_peak_kb"), "rss_before_kb": r.get("gw_rss_before_kb"),
                         "rss_by_quarter_kb": r.get("gw_rss_q_kb"), "missed": r.get("missed"),
                         "unaccounted": r.get("unaccounted"), "closed_1008": r.get("closed_1008"),
                         "health_dropped": ((r.get("health") or {}).get("dropped") or {}).get("slow_client"),
                         "bounded": burst_verdict(r, a)[0], "accounted": burst_verdict(r, a)[1],
                         "problem": problem(r)} for r in results[(g, "burst", n)]]

    # -- the "done when" checks, on the first gateway
    def check(name, bound, value, ok):
        checks.append((name, bound, value, "info" if ok == "info" else "PASS" if ok is True
                       else ("**FAIL**" if ok is False else "not measured")))

    s1 = summary.get(main, {}).get("s1", {})
    for n in ("100", "1000"):
        c = s1.get(n)
        if c is None:
            continue
        rr, rb = c.get("ratio_reference"), c.get("ratio_baseline")
        check(f"S1 {int(n):,} clients: ÷ reference", "≥ 0.7", fmt_ratio(rr), None if rr is None else rr >= 0.7)
        check(f"S1 {int(n):,} clients: ÷ baseline", "≥ 50", fmt_ratio(rb), None if rb is None else rb >= 50)
        check(f"S1 {int(n):,} clients: messages lost (all runs)", "0", str(c["lost"]),
              c["lost"] == 0 and c["clean_runs"] == c["runs"])
    s2 = summary.get(main, {}).get("s2")
    if s2:
        z = s2.get("ratio_p99_libzmq")
        check("S2 p99 ÷ libzmq PUB→SUB p99", "≤ 1.5", fmt_ratio(z), None if z is None else z <= 1.5)
    s3 = summary.get(main, {}).get("s3")
    if s3:
        v = s3.get("kb_per_conn")
        check(f"S3 RSS per idle connection ({a.s3_n:,})", "≤ 4 KB", "–" if v is None else f"{v:.1f} KB",
              None if v is None else v <= 4)
    tt = summary.get(main, {}).get("topics", {})
    for k, v in tt.items():
        if k != "1" and v.get("ratio_to_one_topic") is not None:
            q = v["ratio_to_one_topic"]
            check(f"T (info) all {int(k):,} topics active ÷ 1 topic, deliveries/s of {a.t_clients:,} clients",
                  "not a target (see docs/performance.md)", fmt_ratio(q), "info")
    ti = summary.get(main, {}).get("topic_isolation", {})
    for k, v in ti.items():
        if k != "1":
            q = v.get("ratio_to_alone")
            check(f"T' {a.t_clients:,} clients over {a.t_topics:,} topics: deliveries/s per subscribed client "
                  f"÷ {a.t_clients // a.t_topics} clients on 1 topic alone", "≥ 0.5 (within 2×)", fmt_ratio(q),
                  None if q is None else q >= 0.5)
    for n, c in summary.get(main, {}).get("s1_json", {}).items():
        check(f"S1 {int(n):,} client{'s' if int(n) > 1 else ''}, JSON: messages lost (all runs)", "0", str(c["lost"]),
              c["lost"] == 0 and c["clean_runs"] == c["runs"])
    for pol, runs in summary.get(main, {}).get("burst", {}).items():
        ok_runs = [x for x in runs if not x["problem"]]
        b = all(x["bounded"] for x in ok_runs) if ok_runs else None
        acc = all(x["accounted"] for x in ok_runs) if ok_runs else None
        peak = max((x["peak_rss_kb"] or 0) - (x["rss_before_kb"] or 0) for x in runs) if runs else None
        check(f"B burst, --slow-client {pol}: memory bounded", "flat, ≤ bound", f"+{fmt_mb(peak)} MB peak",
              b if ok_runs else False)
        check(f"B burst, --slow-client {pol}: every drop counted", "accounted", "yes" if acc else "no",
              acc if ok_runs else False)

    def table(h, rs):
        return ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)] + ["| " + " | ".join(r) + " |" for r in rs]

    wall = time.time() - t_begin
    out = [f"## zmqws benchmarks: {a.reps} rep{'s' if a.reps > 1 else ''}, medians "
           f"({os.cpu_count()} CPUs, {cpu_model()}; gateway on CPU {a.gw_cpu}, load on CPU {a.client_cpu})", ""]
    out += table(head, rows)
    out += ["", "↑ higher is better, ↓ lower is better. Ratios are medians of per-repetition ratios "
                "(same repetition, same machine state). '–': no clean run; 'n/a': not run for that gateway.", ""]
    detail_head, detail = ["gateway"], []
    for scen, n in cells:
        detail_head.append({"s1": f"S1 {n}", "s1j": f"S1 {n} JSON", "ti": f"T' {n}", "w": f"W {n}", "s2": "S2", "s3": "S3", "s4": "S4", "t": f"T {n}", "z": f"Z {n} B",
                            "burst": f"B {n}"}[scen])
    for g in cols:
        line = [g]
        for scen, n in cells:
            if (g, scen, n) not in results:
                line.append("")
                continue
            gc = medof(g, scen, n, lambda r: r.get("gw_cpu_pct"))
            if scen == "w" and n > 1:
                gc = None  # the CPU read is the supervisor's only, not its workers'
            cc = medof(g, scen, n, lambda r: r.get("client_cpu_pct"))
            if scen == "s3":
                line.append("–")
            else:
                line.append(f"{'–' if gc is None else f'{gc:.0f}'} / {'–' if cc is None else f'{cc:.0f}'}"
                            + (" ⚠" if (cc or 0) > 85 else ""))
        detail.append(line)
    out += ["CPU % during the measured phase, gateway / load side (medians; ⚠ load side above 85 %: the "
            "figure is a lower bound for the gateway):", ""]
    out += table(detail_head, detail)
    out += [""]
    if checks:
        out += ["### Done-when checks (issue 3), on " + main, ""]
        out += table(["check", "bound", "measured", "result"], [list(c) for c in checks])
        out += [""]
    if problems or R.notes:
        if problems:
            out += ["Problems (these runs are left out of the medians):"] + [f"- {p}" for p in problems]
        if R.notes:
            out += ["Notes:"] + [f"- {x}" for x in R.notes]
        out += [""]
    out += [f"zmqws {git_describe() or ''}; python {versions['python']}, pyzmq {versions['pyzmq']} (libzmq "
            f"{versions['libzmq']}), websockets {versions['websockets']}, uvloop {versions['uvloop']}; kernel "
            f"{platform.release()}; wall time {wall:.0f} s ({len(probes)} sizing runs); raw runs: "
            f"{os.path.join(outdir, 'runs.jsonl')}"]
    print("\n".join(out))
    print(json.dumps({
        "kit": "zmqws-benchmarks", "ok": not problems, "reps": a.reps, "wall_s": round(wall, 1),
        "cells": [f"{s}:{n}" for s, n in cells], "results": tidy(summary),
        "checks": [{"check": c[0], "bound": c[1], "measured": c[2], "result": c[3]} for c in checks],
        "problems": problems, "notes": R.notes, "sizing_runs": len(probes), "out": outdir,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(), "python": versions,
                    "gw_cpu": a.gw_cpu, "client_cpu": a.client_cpu, "zmqws": git_describe()}},
        separators=(",", ":")), flush=True)
    return 0 if not problems else 1


# ---------------------------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See benchmarks/README.md for what each figure means.")
    ap.add_argument("--quick", action="store_true", help="smoke check, about a minute: 1 rep, small sizes")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--only", metavar="LIST", help=f"scenarios to run, of {','.join(SCENARIOS)} (default: all)")
    ap.add_argument("--gw", action="append", default=[], metavar="NAME=COMMAND",
                    help="another zmqws-compatible gateway to measure (repeatable), e.g. "
                         "old='/path/venv/bin/python -m zmqws gateway'")
    ap.add_argument("--no-reference", action="store_true", help="leave out gw_reference.py")
    ap.add_argument("--no-baseline", action="store_true", help="leave out gw_baseline.py")
    ap.add_argument("--python", metavar="PY", help="interpreter for the gateways (needs pyzmq websockets uvloop)")
    ap.add_argument("--cache", default=CACHE, help="compiled wsbench and, if needed, a venv (default %(default)s)")
    ap.add_argument("--out", help="folder for runs.jsonl and gateway logs (default: a new one under /tmp)")
    ap.add_argument("--s1", metavar="N,N,...", help="S1 client counts (default 1,10,100,1000; --quick: 100)")
    ap.add_argument("--s1-secs", type=float, help="target length of one S1/T run (default 1.5; --quick: 0.5)")
    ap.add_argument("--s1-m", metavar="N:M,...", default="", help="fix S1's message count per client count")
    ap.add_argument("--s1-max-m", type=int, default=2_000_000)
    ap.add_argument("--s2-rate", type=float, default=1000)
    ap.add_argument("--s2-n", type=int, default=100)
    ap.add_argument("--s2-m", type=int, help="messages per S2 run (default 3000; --quick: 1000)")
    ap.add_argument("--no-zmq-ref", action="store_true", help="leave the libzmq floor out of S2")
    ap.add_argument("--s3-n", type=int, help="S3 connections (default 10000; --quick: 2000)")
    ap.add_argument("--s3-idle", type=float, help="S3 idle seconds before RSS is read (default 2; --quick: 1)")
    ap.add_argument("--s4-n", type=int, default=100)
    ap.add_argument("--s4-window", type=int, default=16)
    ap.add_argument("--s4-secs", type=float, help="S4 publishing time (default 1.5; --quick: 0.5)")
    ap.add_argument("--t-clients", type=int, help="T clients (default 10000; --quick: 1000)")
    ap.add_argument("--t-topics", type=int, help="T topics (default 1000; --quick: 100)")
    ap.add_argument("--no-burst-buffer", action="store_true",
                    help="run zmqws with its default --client-buffer in S1/T/Z/W too (default: one that holds the burst)")
    ap.add_argument("--no-json", action="store_true", help="leave out S1 in zmqws's JSON format")
    ap.add_argument("--json-path", default="/ws?format=json", help="request path of the JSON S1 runs (default %(default)s)")
    ap.add_argument("--w-clients", type=int, help="clients of the --workers runs (default 1000; --quick: 100)")
    ap.add_argument("--workers", metavar="N,N", default="1,2", help="--workers values compared (default %(default)s)")
    ap.add_argument("--z-sizes", metavar="B,B,...", help="Z payload sizes (default 1000,8000; --quick: 1000)")
    ap.add_argument("--z-clients", type=int, default=100, help="Z clients (default 100)")
    ap.add_argument("--burst-m", type=int, help="B messages (default 2000000; --quick: 300000)")
    ap.add_argument("--burst-readers", type=int, default=10)
    ap.add_argument("--burst-stalled", type=int, default=1)
    ap.add_argument("--burst-every-rep", action="store_true", help="run B in every repetition (default: the first)")
    ap.add_argument("--client-buffer", type=int, help="zmqws --client-buffer in B (default: the gateway's)")
    ap.add_argument("--rcvhwm", type=int, help="zmqws --rcvhwm in B (default: the gateway's)")
    ap.add_argument("--gw-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--start-timeout", type=float, default=20.0)
    ap.add_argument("--path", default="/ws?format=raw", help="WebSocket request path (default %(default)s)")
    ap.add_argument("--topic", default="bench", help="topic of every message (default %(default)s)")
    a = ap.parse_args()
    q = a.quick
    a.reps = a.reps or (1 if q else 3)
    a.s1 = [int(x) for x in (a.s1 or ("100" if q else "1,10,100,1000")).split(",")]
    a.s1_secs = a.s1_secs or (0.5 if q else 1.5)
    a.s1_probe = 200_000
    a.s1_m = {int(k): int(v) for k, _, v in (p.partition(":") for p in a.s1_m.split(",") if p)}
    a.s2_m = a.s2_m or (1000 if q else 3000)
    a.s3_n = a.s3_n or (2000 if q else 10000)
    a.s3_idle = a.s3_idle if a.s3_idle is not None else (1.0 if q else 2.0)
    a.s4_secs = a.s4_secs or (0.5 if q else 1.5)
    a.t_clients = a.t_clients or (1000 if q else 10000)
    a.t_topics = a.t_topics or (100 if q else 1000)
    a.w_clients = a.w_clients or (100 if q else 1000)
    a.workers = [int(x) for x in a.workers.split(",")]
    if a.t_clients % a.t_topics:
        ap.error("--t-clients must be a multiple of --t-topics")
    a.burst_m = a.burst_m or (300_000 if q else 2_000_000)
    a.z_sizes = [int(x) for x in (a.z_sizes or ("1000" if q else "1000,8000")).split(",")]
    if any(not 20 <= z <= 16000 for z in a.z_sizes):
        ap.error("--z-sizes: each size must be 20..16000 bytes")
    a.client_buffer_given, a.rcvhwm_given = a.client_buffer is not None, a.rcvhwm is not None
    a.only = [s.strip() for s in a.only.split(",")] if a.only else list(SCENARIOS)
    bad = [s for s in a.only if s not in SCENARIOS]
    if bad:
        ap.error(f"--only: unknown scenario {bad[0]!r}; use {', '.join(SCENARIOS)}")
    if a.reps < 1 or any(n < 1 for n in a.s1):
        ap.error("--reps and --s1 client counts must be >= 1")
    return a


def main():
    a = parse_args()
    t_begin = time.time()

    def shutdown(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, shutdown)
    try:
        rc = run_all(a, t_begin)
    except SetupError as e:
        log(f"run.py: {e}")
        rc = 2
    finally:
        kill_all()
    sys.exit(rc)


def run_all(a, t_begin):
    cpus = os.sched_getaffinity(0)
    if len(cpus) >= 2 and (a.gw_cpu not in cpus or a.client_cpu not in cpus or a.gw_cpu == a.client_cpu):
        raise SetupError(f"--gw-cpu/--client-cpu must be two distinct usable CPUs, have {sorted(cpus)}")
    wsbench = build_wsbench(a.cache)
    py, versions = find_python(a)
    zmqws_caps = ("health", "publish", "topics", "policy")
    gws = [Gateway("zmqws", [py, "-m", "zmqws", "gateway"], gw_env(), zmqws_caps)]
    for spec in a.gw:
        name, eq, cmd = spec.partition("=")
        if not eq or not name.strip() or not cmd.strip():
            raise SetupError(f"--gw {spec!r}: want NAME=COMMAND")
        if name in ("zmqws", "reference", "baseline", "libzmq-ref") or any(g.name == name for g in gws):
            raise SetupError(f"--gw {spec!r}: name {name!r} taken")
        argv = shlex.split(cmd)
        if not shutil.which(argv[0]):
            raise SetupError(f"--gw {name}: command not found: {argv[0]!r}")
        gws.append(Gateway(name.strip(), argv, None, zmqws_caps))
    if not a.no_reference:
        gws.append(Gateway("reference", [py, os.path.join(KIT, "gw_reference.py")], None, ("publish",)))
    if not a.no_baseline:
        gws.append(Gateway("baseline", [py, os.path.join(KIT, "gw_baseline.py")], None, ("publish",)))
    zref = None if a.no_zmq_ref else Gateway("libzmq-ref", [py, os.path.join(KIT, "gw_zmqref.py")])
    defaults = d = gateway_defaults(gws[0])
    for g in gws:
        if "topics" in g.caps and (d if g is gws[0] else gateway_defaults(g)).get("workers"):
            g.single = ["--workers", "1"]
    if "burst" in a.only:  # the burst's memory bound is computed from the buffer sizes the gateway runs with
        if a.client_buffer is None:
            a.client_buffer = d.get("client-buffer", 1 << 20)
        if a.rcvhwm is None:
            a.rcvhwm = d.get("rcvhwm", 100_000)
        log(f"burst: --client-buffer {a.client_buffer}, --rcvhwm {a.rcvhwm}"
            f"{'' if 'rcvhwm' in d else ' (could not read the gateway defaults from --help: assumed)'}")

    need = max(a.s3_n if "s3" in a.only else 0, a.t_clients if "topics" in a.only else 0, max(a.s1), a.s2_n,
               a.w_clients) + 2048
    limit = raise_nofile(need)
    if limit < need - 1024:
        log(f"warning: RLIMIT_NOFILE is {limit}; runs with {need - 2048} clients will likely fail "
            f"(raise the hard limit: ulimit -Hn, or run as root)")
    outdir = a.out or tempfile.mkdtemp(prefix=time.strftime("zmqws-bench-%Y%m%d-%H%M%S-"))
    os.makedirs(outdir, exist_ok=True)
    log(f"wsbench: {wsbench}\ngateways run on {py} {json.dumps(versions)}\nraw results and gateway logs: {outdir}")
    R = Runner(a, wsbench, outdir)

    cells = []  # (scenario, n) in the order they run inside one repetition
    if "s1" in a.only:
        cells += [("s1", n) for n in a.s1]
        if not a.no_json:
            cells += [("s1j", n) for n in a.s1]
    if "s2" in a.only:
        cells.append(("s2", a.s2_n))
    if "s3" in a.only:
        cells.append(("s3", a.s3_n))
    if "s4" in a.only:
        cells.append(("s4", a.s4_n))
    if "topics" in a.only:
        cells += [("ti", 1), ("ti", a.t_topics), ("t", 1), ("t", a.t_topics)]
    if "sizes" in a.only:
        cells += [("z", size) for size in a.z_sizes]
    if "burst" in a.only:
        cells += [("burst", "drop"), ("burst", "close")]
    if "workers" in a.only:
        if defaults.get("workers"):
            cells += [("w", k) for k in a.workers]
        else:
            R.notes.append(f"{gws[0].name} has no --workers option: the workers rows were left out")

    def eligible(scen, n):
        if scen in ("s1", "s3"):
            return gws
        if scen in ("s1j", "ti", "w"):
            return gws[:1]
        if scen == "s2":
            return gws + ([zref] if zref else [])
        if scen == "s4":
            return [g for g in gws if "publish" in g.caps]
        if scen == "t":
            return [g for g in gws if "topics" in g.caps]
        if scen == "z":
            return [g for g in gws if "topics" in g.caps or g.name == "reference"]
        if scen == "burst":  # the reference shows what an unbounded gateway does; the baseline is too slow
            return [g for g in gws if "policy" in g.caps or (n == "drop" and g.name == "reference")]
        return []

    results, sized, probes = {}, {}, []
    for rep in range(1, a.reps + 1):
        for scen, n in cells:
            if scen == "burst" and rep > 1 and not a.burst_every_rep:
                continue
            for gw in eligible(scen, n):
                r = run_cell(R, a, gw, scen, n, rep, sized, probes)
                results.setdefault((gw.name, scen, n), []).append(r)
                log(progress_line(r))
    return report(a, gws, zref, cells, results, probes, R, versions, t_begin, outdir)


if __name__ == "__main__":
    main()
