#!/usr/bin/env bash
# Make a separate virtualenv whose pyzmq is built against the system libzmq, which has PGM
# (multicast: pgm:// and epgm:// endpoints); the pyzmq wheels from PyPI bundle a libzmq without it.
#
#   scripts/pgm-env.sh            # builds the venv (or finds it ready), prints its path
#   "$(scripts/pgm-env.sh)/bin/zmqws" consume --connect 'epgm://10.0.0.5;239.192.1.1:5555'
#
# Where: $ZMQWS_PGM_VENV, default ${XDG_CACHE_HOME:-~/.cache}/zmqws/pgm-venv (cache it in CI:
# a ready venv is found again in well under a second; building one takes about 25 s).
# Steps (the recipe docs/deployment.md gives for doing it by hand):
#   apt-get install libzmq3-dev libpgm-dev pkg-config           (as root, or through sudo; plus
#                                                                gcc and python3-dev if missing)
#   PYZMQ_NO_BUNDLE=1 pip install --no-binary pyzmq pyzmq        (compiles pyzmq against it)
#   pip install -e .                                             (zmqws from this checkout; the
#                                                                pyzmq above satisfies its need)
# Safe to run again. The last line on stdout is the venv's path; everything else goes to stderr.
# Exit 1, with the reason on the last line of stderr, when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ZMQWS_PGM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/zmqws/pgm-venv}
PY=${PYTHON:-python3}
LOG=$(mktemp -t zmqws-pgm-env.XXXXXX)
trap 'rm -f "$LOG"' EXIT
say() { echo "pgm-env: $*" >&2; }
fail() { tail -n 20 "$LOG" >&2; say "$*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
  echo "need root (or sudo) to run: $*" >>"$LOG"; return 1; fi; }
has_pgm() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
  'import sys, zmq, zmqws; sys.exit(not zmq.has("pgm"))' 2>/dev/null; }

if has_pgm; then
  echo "$VENV"
  exit 0
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || fail "needs Python 3.11 or newer as \$PYTHON (have: $("$PY" -V 2>&1))"
PY_H=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h
missing=()
[ -e /usr/include/zmq.h ] || missing+=(libzmq3-dev)
[ -d /usr/include/pgm-5.3 ] || missing+=(libpgm-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
[ -e "$PY_H" ] || missing+=(python3-dev)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || fail "no apt-get: install ${missing[*]} (libzmq with PGM) by hand"
  say "installing ${missing[*]}"
  as_root apt-get update -qq >>"$LOG" 2>&1 || fail "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$LOG" 2>&1 \
    || fail "apt-get install ${missing[*]} failed"
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >>"$LOG" 2>&1 || fail "cannot make a venv at $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >>"$LOG" 2>&1 || fail "cannot upgrade pip in $VENV"
say "building pyzmq against the system libzmq in $VENV"
# --no-cache-dir: a wheel cached from an earlier build with the bundled libzmq would come back.
PYZMQ_NO_BUNDLE=1 "$VENV/bin/python" -m pip install -q --force-reinstall --no-cache-dir \
  --no-binary pyzmq pyzmq >>"$LOG" 2>&1 || fail "building pyzmq against the system libzmq failed"
"$VENV/bin/python" -m pip install -q -e . >>"$LOG" 2>&1 || fail "installing zmqws into $VENV failed"
if ! has_pgm; then
  fail "pyzmq in $VENV was built, but its libzmq has no PGM: $("$VENV/bin/python" -c \
    'import zmq; print("libzmq", zmq.zmq_version(), "from", zmq.__file__)' 2>&1)"
fi
say "ready: $("$VENV/bin/python" -c 'import zmq; print("pyzmq", zmq.__version__, "libzmq", zmq.zmq_version(), "pgm", zmq.has("pgm"))')"
echo "$VENV"
