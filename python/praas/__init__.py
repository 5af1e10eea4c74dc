"""praas: the Python client of praas, Process-as-a-Service for HPC.

- :class:`Client` invokes functions of one cloud process over a persistent connection (TCP, or
  RDMA with ``rdma://HOST:PORT``): ``invoke``, pipelined ``submit``/``recv``/``wait`` and
  ``completions``; it is the Rust SDK underneath, and the GIL is released while it sends and waits.
- :class:`ControlPlane` drives the control plane's HTTP API: applications, processes, swaps and
  invocations.
- Errors are :class:`PraasError`\\ s: :class:`RemoteError` (the process answered with an error
  :class:`Status`), :class:`TimeoutError`, :class:`ConnectionError`, :class:`ProtocolError`,
  :class:`TooLargeError`, and :class:`ApiError` (an HTTP refusal, with its ``status``).
"""

from ._errors import (
    ApiError,
    ConnectionError,
    PraasError,
    ProtocolError,
    RemoteError,
    Status,
    TimeoutError,
    TooLargeError,
)
from ._native import HAS_RDMA, Client, Completions, Credentials
from ._control import AppInfo, ControlPlane, ProcessInfo, Resources, discover_token, runtime_dir

try:
    from importlib.metadata import version as _version

    __version__ = _version("praas")
except Exception:  # not installed as a distribution (a build tree)
    __version__ = "0.0.0"

__all__ = [
    "ApiError",
    "AppInfo",
    "Client",
    "Completions",
    "ConnectionError",
    "ControlPlane",
    "Credentials",
    "HAS_RDMA",
    "PraasError",
    "ProcessInfo",
    "ProtocolError",
    "RemoteError",
    "Resources",
    "Status",
    "TimeoutError",
    "TooLargeError",
    "discover_token",
    "runtime_dir",
]
