"""utcp: full TCP semantics in user space over UDP datagrams, for trio.

The public API mirrors trio's TCP helpers name for name (``open_tcp_stream``,
``open_tcp_listeners``, ``serve_tcp``); ``Config`` holds every tunable. ``install()`` puts
unmodified trio code (``trio.open_tcp_stream``, ``trio.serve_tcp``...) on utcp.
"""

from __future__ import annotations

from ._api import (
    UtcpListener,
    connect_on,
    get_default_config,
    listen_on,
    open_tcp_listeners,
    open_tcp_stream,
    serve_tcp,
    set_default_config,
)
from ._config import Config
from ._congestion import available as available_congestion_controls
from ._endpoint import Endpoint, open_endpoint
from ._errors import ConnectionTimedOut, UtcpError, UtcpStateError
from ._socket import SocketFactory, UtcpSocket, install, installed, socket, uninstall
from ._state import State
from ._stream import Statistics, UtcpStream
from .messages import MessageError, MessageStream

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConnectionTimedOut",
    "Endpoint",
    "MessageError",
    "MessageStream",
    "SocketFactory",
    "State",
    "Statistics",
    "UtcpError",
    "UtcpListener",
    "UtcpSocket",
    "UtcpStateError",
    "UtcpStream",
    "__version__",
    "available_congestion_controls",
    "connect_on",
    "get_default_config",
    "install",
    "installed",
    "listen_on",
    "open_endpoint",
    "open_tcp_listeners",
    "open_tcp_stream",
    "serve_tcp",
    "set_default_config",
    "socket",
    "uninstall",
]
