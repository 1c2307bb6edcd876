"""Errors that say who is at fault.

::

    ZmqwsError
     ├── ConfigError          the operator gave a bad flag, value or endpoint
     ├── StartupError         a resource could not be had (port in use, file missing)
     ├── ClientError          a WebSocket peer sent something bad; carries the reply code
     │    └── CommandError    a JSON command that cannot be obeyed: answered, connection kept
     └── MalformedMessage     a ZeroMQ message zmqws cannot read: counted, never fatal

Anything else raised inside zmqws is a bug of ours: it is logged at ERROR with its traceback.
"""

from __future__ import annotations

__all__ = [
    "ZmqwsError",
    "ConfigError",
    "StartupError",
    "ClientError",
    "CommandError",
    "MalformedMessage",
]


class ZmqwsError(Exception):
    """Base class of every error zmqws raises on purpose."""


class ConfigError(ZmqwsError):
    """The operator made a mistake: the message names the flag, the value and what is allowed."""


class StartupError(ZmqwsError):
    """Something the configuration asks for cannot be had right now (a port in use, a file missing)."""


class ClientError(ZmqwsError):
    """A WebSocket peer sent something bad.

    Attributes:
        code: short machine-readable error code sent back in an ``error`` message.
        close_code: the WebSocket close code to close with, or ``None`` to keep the connection.
    """

    code = "client_error"
    close_code: int | None = 1008

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CommandError(ClientError):
    """A command that is answered with an ``error`` message; the connection goes on."""

    code = "bad_command"
    close_code = None


class MalformedMessage(ZmqwsError):
    """A ZeroMQ message that does not fit any envelope zmqws reads (empty, empty topic, ...)."""
