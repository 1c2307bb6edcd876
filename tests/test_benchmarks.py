"""Smoke test of the benchmark tooling (benchmarks/run.py and its C load client).

One short S1 run, 10 clients, zmqws only: the harness builds wsbench, starts the gateway, and
every client must get every message. The figures themselves are not checked here (see
docs/performance.md); only that the command works and counts nothing lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and (shutil.which("gcc") or shutil.which("cc"))),
    reason="the benchmarks need Linux and a C compiler",
)


@pytest.mark.timeout(120)
def test_quick_s1_run_loses_nothing(tmp_path) -> None:
    cp = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "s1", "--s1", "10", "--no-json",
         "--no-reference", "--no-baseline", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110,
    )
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr[-2000:]
    summary = json.loads(cp.stdout.strip().splitlines()[-1])
    s1 = summary["results"]["zmqws"]["s1"]["10"]
    assert s1["lost"] == 0 and s1["clean_runs"] == s1["runs"] == 1, s1
    assert s1["deliveries_per_s"] > 0
