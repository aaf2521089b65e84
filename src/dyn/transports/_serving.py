"""What every transport's server does with one call: run the handler, frame its output."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import anyio

from dyn.errors import CallError, DeadlineExceeded, DynError, RoutingError
from dyn.runtime.context import HEADER_DEADLINE
from dyn.transports.base import Handler

__all__ = ["Frame", "error_to_wire", "run_handler"]

# ("data", chunk, "") | ("end", b"", "") | ("error", code, message)
Frame = tuple[str, bytes | str, str]


def error_to_wire(exc: BaseException) -> tuple[str, str]:
    """The (code, message) pair an exception crosses the wire as."""
    if isinstance(exc, CallError):
        return exc.code, exc.message
    if isinstance(exc, RoutingError):
        return "unavailable", str(exc)
    if isinstance(exc, DynError):
        return "internal", str(exc)
    return "internal", f"{type(exc).__name__}: {exc}"


def deadline_of(headers: Mapping[str, str]) -> float:
    remaining = headers.get(HEADER_DEADLINE)
    if remaining is None:
        return math.inf
    try:
        return anyio.current_time() + max(0.0, float(remaining))
    except ValueError:
        return math.inf


async def run_handler(
    handler: Handler,
    path: str,
    payload: bytes,
    headers: Mapping[str, str],
    send: Callable[[Frame], Awaitable[None]],
) -> None:
    """Run one call to completion, sending data, then end or error, through ``send``.

    A passed deadline stops the handler and sends ``deadline_exceeded``. Cancellation from
    outside (the caller went away) propagates without sending anything.
    """
    with anyio.CancelScope(deadline=deadline_of(headers)) as scope:
        items = handler(path, payload, headers)
        try:
            async for chunk in items:
                await send(("data", chunk, ""))
        except Exception as exc:  # the handler's failure becomes the caller's typed error
            code, message = error_to_wire(exc)
            await send(("error", code, message))
            return
        finally:
            with anyio.CancelScope(shield=True):
                await items.aclose()  # type: ignore[attr-defined]
        await send(("end", b"", ""))
    if scope.cancelled_caught:
        error = DeadlineExceeded(f"deadline passed while serving {path}")
        await send(("error", error.code, error.message))
