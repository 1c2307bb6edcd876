"""cli: every command's --help, one-line errors with their exit codes, docs in step with flags."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import UNIT, zmqws_cmd

from zmqws import __version__
from zmqws.cli import EXIT_USAGE, build_parser, main

COMMANDS = ("gateway", "tail", "publish", "consume", "demo")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zmqws_cmd(*args), capture_output=True, text=True, timeout=30 * UNIT)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_flag_with_its_default(command: str) -> None:
    r = run(command, "--help")
    assert r.returncode == 0 and "usage: zmqws " + command in r.stdout
    if command == "gateway":
        for default in ("127.0.0.1:8080", "1048576", "drop", "(default: 20.0)"):
            assert default in r.stdout


def test_version_and_no_command() -> None:
    assert run("--version").stdout.strip() == f"zmqws {__version__}"
    r = run()
    assert r.returncode == EXIT_USAGE and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["bogus"], "invalid choice"),
    (["gateway", "--bind", "tcp://127.0.0.1:1", "--client-buffer", "lots"], "invalid int value"),
    (["consume", "--bind", "udp://x:1"], "unknown transport"),
    (["tail", "--once", "--connect", "tcp://127.0.0.1:1", "/no/such/file.log"], "no such file"),
    (["publish", "--connect", "tcp://127.0.0.1:1", "--bind", "tcp://127.0.0.1:2", "t", "d"],
     "not allowed with argument"),
])
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    r = run(*args)
    assert r.returncode == EXIT_USAGE
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_main_returns_the_exit_code_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--listen", "127.0.0.1:1"]) == EXIT_USAGE
    assert "at least one --bind" in capsys.readouterr().err


def test_settings_page_documents_every_flag() -> None:
    """docs/settings.md names every flag of every command, with the default --help prints."""
    text = DOCS.read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "gateway" in a.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    row = re.search(rf"^\|[^\n]*`{re.escape(flag)}[ `][^\n]*$", text, re.M)
                    assert row, f"{name} {flag} is not in docs/settings.md"
                    if action.default not in (None, [], False):
                        assert str(action.default) in row.group(0), (name, flag, action.default)
