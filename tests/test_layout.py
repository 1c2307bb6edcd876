"""The architecture as rules: a pure core, one test module per module, exports as documented."""

from __future__ import annotations

import ast
from pathlib import Path

import zmqws

SRC = Path(zmqws.__file__).parent
TESTS = Path(__file__).parent
PURE = ("envelope", "topics", "hub", "commands")
IO = {"asyncio", "zmq", "socket", "selectors", "uvloop", "websockets"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_does_no_io() -> None:
    for name in PURE:
        assert not imports(SRC / f"{name}.py") & IO, f"{name}.py imports I/O"


def test_every_module_has_a_test_module() -> None:
    exempt = {"__init__", "__main__", "exceptions"}
    missing = [p.stem for p in SRC.glob("*.py")
               if p.stem not in exempt and not (TESTS / f"test_{p.stem}.py").exists()]
    assert not missing, f"modules without tests: {missing}"


def test_every_module_declares_all() -> None:
    for p in SRC.glob("*.py"):
        if p.stem not in ("__main__",):
            assert "__all__" in p.read_text(), p.name


def test_public_api() -> None:
    assert set(zmqws.__all__) == {"Publisher", "NoSubscriberError", "Message", "ZmqwsError",
                                  "ConfigError", "StartupError", "__version__"}
    for name in zmqws.__all__:
        assert hasattr(zmqws, name)
