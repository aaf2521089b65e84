"""The request context: id, deadline and cancellation, carried across every hop.

A handler receives its context as an argument; code deeper in the call stack reaches it
through :func:`current_context`. A client call made while handling a request inherits
the request id and the remaining deadline, so one deadline bounds the whole pipeline.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

__all__ = [
    "HEADER_DEADLINE",
    "HEADER_REQUEST_ID",
    "Context",
    "current_context",
    "new_request_id",
]

HEADER_REQUEST_ID = "x-request-id"
# Deadlines cross the wire as the time remaining, in seconds, so peers need no shared clock.
HEADER_DEADLINE = "dyn-timeout"

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "dyn_context", default=None
)


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` gives, without its system call.

    The module-level generator is seeded from the OS at start and reseeded in a forked
    child, so ids differ across processes; an id only names a request, it guards nothing.
    """
    return f"{random.getrandbits(128):032x}"


@dataclass
class Context:
    """What a handler knows about the request it serves.

    ``deadline`` is on anyio's clock (``anyio.current_time()``), or ``inf`` for none.
    ``cancelled`` turns true when the caller went away or the deadline passed. The
    handler is then stopped: with a cancellation at the ``await`` it is waiting on, or,
    if it is parked at a ``yield``, by having its generator closed there.
    """

    request_id: str = field(default_factory=new_request_id)
    deadline: float = math.inf
    headers: Mapping[str, str] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def cancelled(self) -> bool:
        return self._stopped or anyio.current_time() >= self.deadline

    def cancel(self) -> None:
        """Mark the request as abandoned; the transport then cancels the handler."""
        self._stopped = True

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Context:
        """Rebuild a context on the serving side from the wire headers."""
        deadline = math.inf
        remaining = headers.get(HEADER_DEADLINE)
        if remaining is not None:
            try:
                deadline = anyio.current_time() + max(0.0, float(remaining))
            except ValueError:
                deadline = math.inf
        request_id = headers.get(HEADER_REQUEST_ID) or new_request_id()
        return cls(request_id=request_id, deadline=deadline, headers=dict(headers))

    def remaining(self) -> float:
        """Seconds left until the deadline (``inf`` if none, never negative)."""
        if math.isinf(self.deadline):
            return math.inf
        return max(0.0, self.deadline - anyio.current_time())

    def to_headers(self) -> dict[str, str]:
        """The headers a downstream call made on behalf of this request carries."""
        headers = {HEADER_REQUEST_ID: self.request_id}
        if not math.isinf(self.deadline):
            headers[HEADER_DEADLINE] = f"{self.remaining():.6f}"
        return headers

    def bind(self) -> contextvars.Token[Context | None]:
        """Make this the current context; pass the token to ``unbind`` afterwards."""
        return _current.set(self)

    @staticmethod
    def unbind(token: contextvars.Token[Context | None]) -> None:
        _current.reset(token)


def current_context() -> Context | None:
    """The context of the request being handled by this task, if any."""
    return _current.get()
