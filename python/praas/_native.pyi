"""Type stubs of ``praas._native``, the extension module over the Rust SDK (python/src/)."""

import os
from types import TracebackType
from typing import Iterator, List, Optional, Tuple, Type, Union

from typing_extensions import Buffer, Self

#: Whether this build connects to ``rdma://HOST:PORT`` addresses (cargo feature ``rdma``).
HAS_RDMA: bool

#: Every wire status: its C ABI name (``UNKNOWN_FUNCTION``) and code; ``praas.Status`` mirrors it.
STATUSES: List[Tuple[str, int]]

class Credentials:
    """An application's client credentials, for processes started with ``--client-auth``: the
    application, its client key (``praas app client-key APP``, ``ControlPlane.client_key``) and
    the name this client goes by in the process's log. The key never shows in ``repr``."""

    def __init__(self, app: str, key: str, name: str = "python") -> None: ...
    @staticmethod
    def parse(text: str, name: str = "python") -> "Credentials":
        """From ``APP:KEY`` (what ``praas invoke --credentials-file`` reads)."""
    @staticmethod
    def from_file(path: Union[str, "os.PathLike[str]"], name: str = "python") -> "Credentials":
        """From a file holding ``APP:KEY``."""
    @staticmethod
    def from_env(name: str = "python") -> Optional["Credentials"]:
        """From ``PRAAS_CLIENT_CREDENTIALS`` (``APP:KEY``); ``None`` when unset or empty."""
    @property
    def app(self) -> str: ...
    @property
    def name(self) -> str: ...

class Client:
    """A connection to one cloud process.

    ``address`` is ``HOST:PORT`` (TCP) or ``rdma://HOST:PORT`` (RDMA, where ``HAS_RDMA``).
    ``timeout``: seconds to wait for the connection and for each answer (``praas.TimeoutError``;
    the connection stays usable and a late answer is received later). ``credentials``: to
    authenticate with a process that serves authenticated clients only. ``invocation_timeout``:
    the deadline in seconds the process applies to each invocation (its default when ``None``;
    past it the answer is ``RemoteError`` with ``Status.TIMEOUT``). ``transport``: ``"auto"``
    (io_uring where the kernel allows it), ``"uring"`` or ``"mio"`` (plain blocking calls), TCP
    only. ``spin``: seconds a wait polls the socket before it blocks (TCP only). ``max_frame``:
    the largest frame sent or accepted, in bytes.

    Calls from several threads are served one at a time; every call that sends or waits
    releases the GIL while it does. Raises ``praas.ConnectionError`` or ``praas.TimeoutError``
    when the connection cannot be made, ``praas.RemoteError`` with ``Status.UNAUTHENTICATED``
    when the process refuses the credentials.
    """

    def __init__(
        self,
        address: str,
        timeout: float = 30.0,
        credentials: Optional[Credentials] = None,
        *,
        invocation_timeout: Optional[float] = None,
        transport: str = "auto",
        spin: float = 0.0,
        max_frame: Optional[int] = None,
    ) -> None: ...
    def invoke(self, function: str, data: Optional[Buffer] = None) -> bytes:
        """Invokes ``function`` with ``data`` (any bytes-like object; ``bytes`` is sent without a
        copy) and waits for its output. Raises ``RemoteError`` when the process answers with an
        error (``.status``, ``.message``)."""
    def submit(self, function: str, data: Optional[Buffer] = None) -> int:
        """Sends an invocation without waiting for its answer; returns its id (for ``wait``)."""
    def recv(self) -> Tuple[int, bytes]:
        """Waits for the next answer, whatever its id: ``(id, output)``. A failed invocation
        raises ``RemoteError`` whose ``.id`` says which."""
    def wait(self, id: int) -> bytes:
        """Waits for the answer to ``id``; answers to other ids are kept for later."""
    def completions(self, n: Optional[int] = None) -> "Completions":
        """An iterator over the next ``n`` completions ``(id, output)`` (as ``recv``), or,
        without ``n``, over completions until none is in flight."""
    def flush(self) -> None:
        """Sends what ``submit`` has batched (io_uring); every wait sends it too."""
    def close(self) -> None:
        """Closes the connection; later calls raise ``praas.ConnectionError``."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...
    @property
    def address(self) -> str:
        """The address connected to."""
    @property
    def transport(self) -> str:
        """``"uring"``, ``"mio"`` or ``"rdma"``."""
    @property
    def in_flight(self) -> int:
        """Invocations submitted and not yet received."""
    @property
    def closed(self) -> bool: ...
    @property
    def timeout(self) -> float:
        """Seconds a call waits for an answer (settable)."""
    @timeout.setter
    def timeout(self, seconds: float) -> None: ...

class Completions(Iterator[Tuple[int, bytes]]):
    """Completions of a client (``Client.completions``). A failed invocation raises
    ``RemoteError`` (and counts as one of ``n``); iteration can be resumed after any exception."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Tuple[int, bytes]: ...
