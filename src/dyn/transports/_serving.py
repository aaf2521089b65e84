"""What every transport's server does with one call: run the handler, frame its output."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from dyn.context import Context
from dyn.errors import DeadlineExceeded, as_call_error, wire_code
from dyn.transports.base import Handler

__all__ = ["ReplyFrame", "error_to_wire", "run_handler"]

# ("data", chunk, "") | ("end", b"", "") | ("error", code, message)
ReplyFrame = tuple[str, bytes | str, str]


def error_to_wire(exc: BaseException) -> tuple[str, str]:
    """The (code, message) pair an exception crosses the wire as (the code names the
    request field at fault, if the error does: ``dyn.errors.wire_code``)."""
    error = as_call_error(exc)
    return wire_code(error), error.message


async def run_handler(
    handler: Handler,
    path: str,
    payload: bytes,
    ctx: Context,
    send: Callable[[ReplyFrame], Awaitable[None]],
) -> None:
    """Run one call to completion, sending data, then end or error, through ``send``.

    ``ctx`` comes from the call's headers (``Context.from_headers``); the transport keeps
    it so that a cancel from the caller can mark it before cancelling this task. A passed
    deadline stops the handler and sends ``deadline_exceeded``. Cancellation from outside
    (the caller went away) propagates without sending anything.
    """
    with anyio.CancelScope(deadline=ctx.deadline) as scope:
        items = handler(path, payload, ctx)
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
