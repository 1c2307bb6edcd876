"""Conformance: Autobahn|Testsuite's fuzzing client against the gateway's echo endpoint.

``zmqws gateway --echo`` serves ``/echo`` through the same connection code as ``/ws`` (handshake,
limits, UTF-8 checks, fragments, close), minus the hub. ``wstest -m fuzzingclient`` runs every
case of the suite against it: groups 1 to 10 (framing, pings, reserved bits and opcodes,
fragmentation, UTF-8, close, large messages; the suite has no group 8 or 11) must each be OK,
NON-STRICT or INFORMATIONAL, and groups 12 and 13 (permessage-deflate) UNIMPLEMENTED, since the
gateway offers no compression. ``wstest`` exits 0 whatever the outcome, so its JSON report is
read. See docs/conformance.md for the results and what each NON-STRICT case means.

The suite runs on Python 2.7 only: scripts/autobahn.sh builds it once in ~/.cache/zmqws-autobahn
from pyenv's 2.7.18. The test is skipped, saying why, when there is no Python 2.7 or no network to
download the suite; any other build failure fails it. ``ZMQWS_AUTOBAHN_REPORTS=DIR`` keeps the
HTML and JSON reports in DIR.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, UNIT, GatewayProc

SCRIPT = REPO / "scripts" / "autobahn.sh"
EXIT_NO_PY27, EXIT_NETWORK = 3, 5  # scripts/autobahn.sh
AGENT = "zmqws"
# The suite's 9.x cases send messages of up to 16 MiB; the gateway's default limit is 1 MiB.
MAX_MESSAGE = 16 * 1024 * 1024
# autobahntestsuite 0.8.2 (pinned in scripts/autobahn.sh) has 517 cases in these groups.
GROUPS = {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"}
CASES = 517
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
COMPRESSION = {"12", "13"}

pytestmark = pytest.mark.timeout(1800)  # a first build downloads and compiles (about a minute)


def wstest() -> str:
    """Build the suite if needed; skip when this machine cannot have it."""
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                          timeout=1200 * UNIT)
    said = proc.stderr.strip()
    if proc.returncode == EXIT_NO_PY27:
        pytest.skip(f"Autobahn|Testsuite not run: no Python 2.7 on this machine ({said})")
    if proc.returncode == EXIT_NETWORK:
        pytest.skip(f"Autobahn|Testsuite not run: it could not be downloaded ({said})")
    assert proc.returncode == 0, f"building Autobahn|Testsuite failed:\n{said}"
    return proc.stdout.strip()


def verdicts(report: dict[str, dict[str, object]]) -> list[str]:
    """One line per case that does not pass."""
    bad = []
    for case, r in sorted(report.items()):
        group = case.split(".")[0]
        behavior, close = r["behavior"], r["behaviorClose"]
        if group in COMPRESSION:
            ok = behavior == "UNIMPLEMENTED"
        else:
            ok = behavior in PASSING and close in PASSING
        if not ok:
            bad.append(f"{case}: {behavior} (close: {close}, code {r.get('remoteCloseCode')})")
    return bad


def test_autobahn_fuzzingclient(tmp_path: Path) -> None:
    path = wstest()
    out = Path(os.environ.get("ZMQWS_AUTOBAHN_REPORTS") or tmp_path / "reports")
    gw = GatewayProc("--echo", "--max-message", str(MAX_MESSAGE))
    try:
        spec = tmp_path / "fuzzingclient.json"
        spec.write_text(json.dumps({
            "outdir": str(out),
            "servers": [{"agent": AGENT, "url": f"ws://127.0.0.1:{gw.port}/echo"}],
            "cases": ["*"],
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }))
        t0 = time.monotonic()
        run = subprocess.run([path, "-m", "fuzzingclient", "-s", str(spec)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=900 * UNIT,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        elapsed = time.monotonic() - t0
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert gw.proc.poll() is None, f"the gateway died: {gw.output()[1][-3000:]}"
        report = json.loads((out / "index.json").read_text())[AGENT]
    finally:
        code, _, err = gw.stop()
        gw.out.close()
        gw.err.close()
    assert code == 0, err[-3000:]
    # No traceback, nothing at error level, for anything the suite sent.
    assert not re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", err), err[-5000:]

    counts = collections.Counter(r["behavior"] for r in report.values())
    summary = f"{len(report)} cases in {elapsed:.0f} s: {dict(sorted(counts.items()))}"
    assert {case.split(".")[0] for case in report} == GROUPS, summary
    assert len(report) == CASES, summary
    bad = verdicts(report)
    assert not bad, f"{summary}\n" + "\n".join(bad)
