"""The exceptions of the praas client, and the wire statuses a process answers with.

Every exception of the package is a :class:`PraasError`. The data-plane client raises

- :class:`RemoteError` when the process answered with an error status (``.status``, ``.message``,
  and ``.id`` of the invocation when it was one of several in flight);
- :class:`TimeoutError` when no answer came within the client's timeout (the connection stays
  usable; a late answer is still received later); it is also the builtin ``TimeoutError``;
- :class:`ConnectionError` when the connection failed, was closed by the process, or was closed
  here; it is also the builtin ``ConnectionError``;
- :class:`ProtocolError` when the process sent bytes that are not the protocol;
- :class:`TooLargeError` for a request larger than the frame limit (nothing was sent); it is also
  a ``ValueError``.

The control plane's client raises :class:`ApiError` with the HTTP ``.status`` of a refusal, and
:class:`ConnectionError` when the control plane cannot be reached.
"""

from __future__ import annotations

import builtins
import enum
from typing import Optional


class Status(enum.IntEnum):
    """A status of the wire protocol, with the C ABI's names (``PRAAS_ERR_UNKNOWN_FUNCTION`` is
    ``Status.UNKNOWN_FUNCTION``) and codes."""

    OK = 0
    #: The function reported a failure.
    FUNCTION = 1
    #: No function of that name in the process.
    UNKNOWN_FUNCTION = 2
    #: The function panicked (or crashed in a way the runtime caught); the process keeps serving.
    PANICKED = 3
    #: The invocation did not finish before its deadline (the process's, not the client's).
    TIMEOUT = 4
    #: The frame exceeded the process's maximum.
    TOO_LARGE = 5
    #: The bytes did not follow the protocol.
    MALFORMED = 6
    #: Out of workers or buffers, or swapping out; retrying later may succeed.
    OVERLOADED = 7
    #: A named thing does not exist.
    NOT_FOUND = 8
    #: A valid request this process does not support.
    UNSUPPORTED = 9
    #: An invalid argument.
    INVALID_ARGUMENT = 10
    #: A bug in the runtime.
    INTERNAL = 11
    #: The destination cannot receive now: swapped out, not running, or unreachable.
    UNAVAILABLE = 12
    #: The connection did not prove that it belongs to the application (client key).
    UNAUTHENTICATED = 13

    @property
    def code(self) -> int:
        """The wire code."""
        return int(self)

    @property
    def retryable(self) -> bool:
        """Whether the same request may be retried unchanged."""
        return self is Status.OVERLOADED


class PraasError(Exception):
    """Base class of every exception of the praas client."""


class RemoteError(PraasError):
    """The process answered with an error status.

    Attributes: ``status`` (a :class:`Status`: ``.name`` and ``.code``), ``message`` (the
    process's explanation), ``id`` (the invocation's id for ``recv``/``wait``/``completions``,
    else ``None``).
    """

    status: Status
    message: str
    id: Optional[int]

    def __init__(self, status: "int | Status", message: str, id: Optional[int] = None) -> None:
        try:
            self.status = Status(status)
        except ValueError:  # a code newer than this package: a function's own failure code
            self.status = Status.FUNCTION
        self.message = message
        self.id = id
        super().__init__(status, message, id)

    def __str__(self) -> str:
        where = f" (invocation {self.id})" if self.id is not None else ""
        return f"{self.status.name}: {self.message}{where}"

    def __reduce__(self):  # pickles with its attributes
        return (type(self), (int(self.status), self.message, self.id))


class TimeoutError(PraasError, builtins.TimeoutError):  # noqa: A001 - the package's own
    """No answer within the client's timeout (or the connection could not open in time)."""


class ConnectionError(PraasError, builtins.ConnectionError):  # noqa: A001 - the package's own
    """The connection failed, was closed by the peer, or the client was closed."""


class ProtocolError(PraasError):
    """The process sent bytes that are not the praas protocol."""


class TooLargeError(PraasError, ValueError):
    """The request is larger than the frame limit; nothing was sent."""


class ApiError(PraasError):
    """The control plane refused a request: ``status`` is the HTTP status (400, 401, 404, 409,
    413, 500, 503, 504, ...), ``message`` its explanation."""

    status: int
    message: str

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(status, message)

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"

    def __reduce__(self):
        return (type(self), (self.status, self.message))
