#!/usr/bin/env bash
# Build (once) the Python 2.7 virtualenv that holds Autobahn|Testsuite's `wstest`, and print its
# path on stdout. With arguments, run `wstest ARGS...` from it instead.
#
#   scripts/autobahn.sh                                  # → /root/.cache/zmqws-autobahn/venv/bin/wstest
#   scripts/autobahn.sh -m fuzzingclient -s spec.json    # build if needed, then run wstest
#
# The suite runs on Python 2.7 only. It is taken from pyenv (2.7.18), or from $ZMQWS_PYTHON27.
# The virtualenv lives in ${ZMQWS_AUTOBAHN_DIR:-${XDG_CACHE_HOME:-~/.cache}/zmqws-autobahn}; the
# build log is build.log there. Running it again reuses a complete build (a stamp records the
# pinned versions) and rebuilds only when the pins change or a build was interrupted.
#
# Exit codes: 0 ready (or wstest's own code with arguments); 3 no Python 2.7 on this machine;
# 5 the packages could not be downloaded (no network to the package index); 4 the build failed
# otherwise (no C compiler, ...: see build.log). Progress and errors go to stderr, so
# `wstest=$(scripts/autobahn.sh)` captures the path alone.
set -euo pipefail

EXIT_NO_PY27=3
EXIT_BUILD=4
EXIT_NETWORK=5
PY27_VERSION=2.7.18
DIR=${ZMQWS_AUTOBAHN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zmqws-autobahn}
VENV=$DIR/venv
LOG=$DIR/build.log

# virtualenv < 20.22 can still create Python 2 environments; 20.15.1 is the newest of those that
# runs on Python 2.7 itself (what pip on 2.7 picks for 'virtualenv<20.22').
VIRTUALENV_PIN='virtualenv==20.15.1'
# autobahntestsuite 0.8.2 and the last releases of its dependencies that still run on Python 2.7
# (resolved from PyPI on 2026-12-03, then frozen: newer six/Twisted/cryptography drop 2.7).
PINS='
autobahntestsuite==0.8.2
autobahn==0.10.9
Twisted==20.3.0
zope.interface==5.5.2
six==1.17.0
txaio==2.1.0
wsaccel==0.6.6
ujson==2.0.3
PyHamcrest==1.10.1
incremental==22.10.0
attrs==21.4.0
idna==2.10
typing==3.10.0.0
hyperlink==21.0.0
constantly==15.1.0
Automat==22.10.0
enum34==1.1.10
Werkzeug==1.0.1
Tubes==0.2.1
klein==20.6.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
ipaddress==1.0.23
pycparser==2.21
cffi==1.15.1
cryptography==3.3.2
service-identity==21.1.0
MarkupSafe==1.1.1
pyOpenSSL==21.0.0
linecache2==1.0.0
traceback2==1.4.0
argparse==1.4.0
unittest2==1.1.0
Jinja2==2.11.3
'
STAMP_TEXT="$PY27_VERSION $VIRTUALENV_PIN $(echo $PINS)"

say() { echo "autobahn: $*" >&2; }

find_python27() {
  local cand root
  if [ -n "${ZMQWS_PYTHON27:-}" ]; then
    echo "$ZMQWS_PYTHON27"; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    cand=$(pyenv prefix "$PY27_VERSION" 2>/dev/null || true)
    if [ -n "$cand" ] && [ -x "$cand/bin/python" ]; then echo "$cand/bin/python"; return; fi
    root=$(pyenv root 2>/dev/null || true)
    if [ -n "$root" ] && [ -x "$root/versions/$PY27_VERSION/bin/python" ]; then
      echo "$root/versions/$PY27_VERSION/bin/python"; return
    fi
  fi
  # pyenv installed but not on PATH (a non-interactive shell, CI).
  cand=${PYENV_ROOT:-$HOME/.pyenv}/versions/$PY27_VERSION/bin/python
  if [ -x "$cand" ]; then echo "$cand"; return; fi
  cand=$(command -v python2.7 2>/dev/null || true)
  if [ -n "$cand" ]; then echo "$cand"; return; fi
}

ready() {
  [ -x "$VENV/bin/wstest" ] && [ -f "$VENV/.zmqws-stamp" ] &&
    [ "$(cat "$VENV/.zmqws-stamp")" = "$STAMP_TEXT" ]
}

build() {
  local py27=$1
  rm -rf "$VENV" "$DIR/virtualenv"
  {
    echo "== $(date -u +%FT%TZ) building with $py27"
    # virtualenv itself, for Python 2.7, in a private directory (not in the interpreter's
    # site-packages: pyenv's installation stays untouched).
    "$py27" -m pip install --disable-pip-version-check --no-warn-script-location \
      --target "$DIR/virtualenv" "$VIRTUALENV_PIN" &&
    PYTHONPATH="$DIR/virtualenv" "$py27" -m virtualenv --no-periodic-update -p "$py27" "$VENV" &&
    # shellcheck disable=SC2086  # one pin a word
    "$VENV/bin/python" -m pip install --disable-pip-version-check $PINS &&
    PYTHONWARNINGS=ignore "$VENV/bin/wstest" --autobahnversion
  } >>"$LOG" 2>&1
}

py27=$(find_python27)
if [ -z "$py27" ] || ! "$py27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
  say "no Python 2.7 (looked for pyenv's $PY27_VERSION, \$ZMQWS_PYTHON27, python2.7);" \
      "Autobahn|Testsuite needs it: 'pyenv install $PY27_VERSION'"
  exit $EXIT_NO_PY27
fi

mkdir -p "$DIR"
# One builder at a time (two test runs at once); the second waits, then finds the build ready.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/lock"
  flock 9
fi
if ! ready; then
  say "building wstest with $py27 in $VENV (a minute; log: $LOG)"
  : >"$LOG"
  if ! build "$py27"; then
    say "the build failed; the end of $LOG:"
    tail -n 15 "$LOG" >&2
    rm -f "$VENV/.zmqws-stamp"
    # What pip says when it cannot reach the index (or finds nothing there, the usual offline
    # symptom): a missing network, not a broken build.
    if grep -qE 'No matching distribution found|NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable|Name or service not known|Read timed out|ProxyError' "$LOG"; then
      say "could not download the packages: no network to the package index?"
      exit $EXIT_NETWORK
    fi
    exit $EXIT_BUILD
  fi
  echo "$STAMP_TEXT" >"$VENV/.zmqws-stamp"
  say "ready: $VENV/bin/wstest"
fi

if [ $# -eq 0 ]; then
  echo "$VENV/bin/wstest"
else
  # Python 2 deprecation warnings from cryptography on every start are noise.
  PYTHONWARNINGS=ignore exec "$VENV/bin/wstest" "$@"
fi
