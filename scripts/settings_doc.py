#!/usr/bin/env python3
"""Write docs/settings.md from the command line parser, so the docs and --help never disagree.

    .venv/bin/python scripts/settings_doc.py          # rewrite docs/settings.md
    .venv/bin/python scripts/settings_doc.py --check  # exit 1 if it is out of date (tests do this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zmqws.cli import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

HEAD = """# Settings

Every flag of every command, with its default (the same `--help` prints; this page is generated
from the parser by `scripts/settings_doc.py`). Values are checked once at start-up
(`src/zmqws/config.py`): a bad value prints one line naming the flag, the value and what is
allowed, and exits 2. The reason for each default is written beside it in `config.py`.

Global flags: `zmqws --log-level debug|info|warning|error` (default `info`; ERROR = a bug of
ours, WARNING = a client dropped or a gap, INFO = start, stop and connections), `zmqws --version`.
"""


def render() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [HEAD]
    for name, p in sub.choices.items():
        out.append(f"## `zmqws {name}`\n\n{p.description}\n")
        pos = [a for a in p._actions if not a.option_strings]
        if pos:
            out.append("Arguments: " + ", ".join(f"`{a.metavar or a.dest}`" for a in pos) + ".\n")
        rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
        for a in p._actions:
            if not a.option_strings or "--help" in a.option_strings:
                continue
            meta = f" {a.metavar}" if a.metavar else (" {" + ",".join(a.choices) + "}"
                                                       if a.choices else "")
            flags = ", ".join(f"`{f}{meta}`" for f in a.option_strings)
            d = a.default
            default = "off" if a.nargs == 0 else ("—" if d in (None, []) else str(d))
            meaning = (a.help or "").replace("|", "\\|")
            rows.append(f"| {flags} | `{default}` | {meaning} |")
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != text:
            print(f"{DOC} is out of date: run scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
