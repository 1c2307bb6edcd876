#!/usr/bin/env bash
# Set up, then run the main job on the bundled real logs: a gateway, four producers, the live page.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/zmqws demo "$@"
