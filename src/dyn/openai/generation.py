"""One generation behind an OpenAI route: the backend's stream, its timings, how it ended.

The streamed answer is written straight to the ASGI ``send``: one body message per
chunk while tokens arrive, and the last chunk, the usage chunk and ``[DONE]`` together
with the end of the body, so a stream's closing costs one socket write rather than
four. The bytes the client reads are the same either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio
from starlette.types import Send

from dyn.context import Context
from dyn.errors import CallError, DynError, RemoteError
from dyn.openai.errors import client_error
from dyn.openai.logprobs import LogprobsRender
from dyn.openai.metrics import RouteMetrics
from dyn.openai.protocol import GenerateOutput, GenerateRequest, OpenAIBackend, TokenUsage
from dyn.openai.sse import (
    DONE,
    ChunkFormatter,
    Kind,
    Usage,
    UsageChunkFormatter,
    error_event,
    full_response,
    usage,
)

__all__ = ["Generation", "internal_error"]

_log = logging.getLogger("dyn.openai")
# What a stream that ends without saying why means: it ran out of tokens.
_RAN_OUT = GenerateOutput(text="", token_count=0, finish_reason="length")


class Generation:
    """One generation: the backend's stream, its timings, and how it ended."""

    def __init__(self, kind: Kind, request_id: str, metrics: RouteMetrics | None, t0: float):
        self.kind = kind
        self.response_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.metrics = metrics
        self.started = t0
        self.stream = False
        self.include_usage = False
        # Usage so far on every chunk (stream_options.continuous_usage_stats).
        self.continuous_usage = False
        self.first = GenerateOutput(text="", token_count=0)
        self._opened: AbstractAsyncContextManager[AsyncIterator[GenerateOutput]] | None = None
        self._items: AsyncIterator[GenerateOutput] | None = None
        self._finished = False
        # Gives back the admission slot; set once the request was admitted.
        self.release: Callable[[], None] | None = None
        self._first_at = self._last_at = t0
        self._tokens = 0
        # Usually on the first output; an upstream proxy learns it only at the end.
        self._cached: int | None = None
        # An upstream server's own counts, on the last output: reported as they are.
        self._usage: TokenUsage | None = None
        # Made when the first logprobs arrive (the request asked for them).
        self._logprobs: LogprobsRender | None = None
        self._logprobs_sent = 0
        # Where the generated text starts in the answer (after the prompt, with ``echo``):
        # completions' ``text_offset`` counts from the answer's start.
        self.text_start = 0

    async def start(
        self, backend: OpenAIBackend, generate: GenerateRequest, request_id: str, deadline: float
    ) -> None:
        # Calls made while this context is current carry its deadline downstream, where
        # the processor's and the worker's handlers are stopped once it passes.
        token = Context(request_id=request_id, deadline=deadline).bind()
        try:
            opening = backend.generate(generate)
            self._items = await opening.__aenter__()
            self._opened = opening  # entered: close() leaves it
        finally:
            Context.unbind(token)
        first = await anext(self._items, None)
        self._first_at = self._last_at = time.perf_counter()
        # A backend that ends without output has generated nothing: an empty answer.
        self.first = first or GenerateOutput(text="", token_count=0, finish_reason="stop")

    async def outputs(self) -> AsyncIterator[GenerateOutput]:
        """The first output, then the rest; ends at the one carrying a finish reason."""
        output = self.first
        while True:
            self._count(output)
            yield output
            if self._items is None:
                return
            if output.finish_reason is not None:
                # Pull once more so the backend's handlers end by themselves (and count
                # the request as completed) rather than being closed mid-stream: over
                # the in-process transport they run only while pulled.
                await anext(self._items, None)
                return
            nxt = await anext(self._items, None)
            self._last_at = time.perf_counter()
            output = _RAN_OUT if nxt is None else nxt

    def _count(self, output: GenerateOutput) -> None:
        self._tokens += output.token_count
        if output.logprobs is not None:
            if self._logprobs is None:
                self._logprobs = LogprobsRender(self.kind, self.text_start)
            self._logprobs.add(output.logprobs)
        if output.cached_tokens is not None:
            self._cached = output.cached_tokens
        if output.usage is not None:
            self._usage = output.usage
            self._tokens = output.usage.completion_tokens
            self._cached = output.usage.cached_tokens

    def usage(self) -> Usage:
        if self._usage is not None:
            counts = self._usage
            return usage(counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)
        prompt = self.first.prompt_tokens or 0
        return usage(prompt, self._tokens, self._cached or 0)

    async def collect(self, model: str, created: int) -> bytes:
        parts: list[str] = []
        finish: str | None = None
        async for output in self.outputs():
            parts.append(output.text)
            finish = output.finish_reason
        text = "".join(parts)
        logprobs = self._logprobs.whole() if self._logprobs is not None else None
        return full_response(
            self.kind, self.response_id, created, model, text, finish, self.usage(), logprobs
        )

    def _unsent_logprobs(self) -> bytes | None:
        """The logprobs not yet sent, for the chunk about to go; None if not asked."""
        render = self._logprobs
        if render is None:
            return None
        start, self._logprobs_sent = self._logprobs_sent, render.count
        return render.chunk(start)

    async def write_events(self, send: Send, model: str, created: int) -> None:
        """Send the stream's events after its ``http.response.start``, ending the body.

        The same walk as :meth:`outputs`, written out: this runs once per token, and an
        async generator in between costs a resumption per token.
        """
        fmt = (
            UsageChunkFormatter(self.kind, self.response_id, created, model, self.usage)
            if self.continuous_usage
            else ChunkFormatter(self.kind, self.response_id, created, model, self.include_usage)
        )
        status = 200
        # Written with the end of the body: the chunk that carries the finish reason
        # and whatever follows it.
        tail = b""
        items = self._items
        # Chunks of outputs whose next one is here already (more_ready): one write.
        held = b""
        try:
            output = self.first
            first = True
            while True:
                self._count(output)
                if output.finish_reason is not None:
                    logprobs = self._unsent_logprobs()
                    tail = held + fmt.chunk(output.text, output.finish_reason, logprobs)
                    held = b""
                    if items is not None:
                        await anext(items, None)  # the backend ends by itself (see outputs)
                    break
                # Empty middle outputs (a character split across tokens) carry nothing.
                if output.text or first:
                    held += fmt.chunk(output.text, None, self._unsent_logprobs())
                # The first chunk goes at once (time to first token); later ones wait
                # while their next output is here already, and go with it.
                if held and (first or not output.more_ready):
                    body, held = held, b""
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                first = False
                if items is None:
                    break
                nxt = await anext(items, None)
                self._last_at = time.perf_counter()
                output = _RAN_OUT if nxt is None else nxt
            tail, held = held + tail, b""
            if self.include_usage:
                tail += fmt.usage(self.usage())
        except Exception as exc:
            error = _client_error(exc, "stream")
            status = error.http_status
            tail += held + error_event(status, error.message, error.code)
        await send({"type": "http.response.body", "body": tail + DONE, "more_body": False})
        self.finish(status)

    async def close(self) -> None:
        """Leave the backend's stream (once; a no-op if it was never entered)."""
        opened, self._opened = self._opened, None
        if opened is None:
            return
        with anyio.CancelScope(shield=True):
            await opened.__aexit__(None, None, None)

    def finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        if self.release is not None:
            self.release()
        m = self.metrics
        if m is None:
            return
        m.finished(status, time.perf_counter() - self.started)
        if self._items is None or status != 200:
            return
        later = self._tokens - self.first.token_count
        m.tokens(
            ttft=self._first_at - self.started,
            itl=(self._last_at - self._first_at) / later if later > 0 else None,
            prompt=(self._usage.prompt_tokens if self._usage else self.first.prompt_tokens) or 0,
            output=self._tokens,
            cached=self._cached or 0,
        )


def internal_error(exc: Exception, route: str) -> CallError:
    """The error a client is answered with for ``exc`` raised while serving ``route``."""
    return _client_error(exc, route)


def _client_error(exc: Exception, route: str) -> CallError:
    if isinstance(exc, DynError):
        return client_error(exc)
    # A bug: the log gets the traceback, the client one line.
    _log.error("%s failed", route, exc_info=exc)
    return RemoteError("internal error; the frontend's log has the details")
