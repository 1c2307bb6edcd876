"""zmqws: a ZeroMQ ⇄ WebSocket gateway that carries live data from ZeroMQ publishers to browsers.

The public Python API is small: :class:`Publisher` (thread-safe, loses nothing at start-up) and
:class:`Message` (what the gateway reads from ZeroMQ). Everything else is reached through the
``zmqws`` command.
"""

from .envelope import Message
from .exceptions import ConfigError, StartupError, ZmqwsError
from .publisher import NoSubscriberError, Publisher

__all__ = [
    "Publisher",
    "NoSubscriberError",
    "Message",
    "ZmqwsError",
    "ConfigError",
    "StartupError",
    "__version__",
]

__version__ = "0.1.0"
