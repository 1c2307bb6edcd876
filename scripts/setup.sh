#!/usr/bin/env bash
# Make .venv (Python >= 3.11) and install zmqws into it. `scripts/setup.sh test` adds the test
# tools and Debian's Chromium for the browser tests. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || { echo "setup: no apt-get; install $* by hand" >&2; return 1; }
  [ -n "${APT_UPDATED:-}" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v "$PY" >/dev/null || apt_install python3
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: zmqws needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  # Debian ships venv and ensurepip in a separate package.
  "$PY" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = test ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium || echo "setup: Chromium not installed: the browser tests will be skipped" >&2
  fi
  # The fleet tests run the nginx and HAProxy configs of docs/deployment.md.
  if [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/sbin/haproxy ]; then
    apt_install nginx haproxy || echo "setup: nginx/HAProxy not installed: their fleet tests will be skipped" >&2
  fi
  # The multicast test needs pyzmq built against the system libzmq (PGM), in its own cached venv.
  scripts/pgm-env.sh >/dev/null || echo "setup: no PGM venv: the multicast end-to-end test will be skipped" >&2
else
  .venv/bin/python -m pip install -q -e .
fi
