"""The OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``.

A generation route validates the body, calls the backend and waits for its first output
before answering, so that a failure to start (no workers, queue full, prompt too long)
still gets its own status code; after that the status is 200 and a failure is reported
inside the stream. The prompt-length check needs the prompt's token count, which only
the backend knows (it tokenizes): the first output reports it, and a request that does
not fit is answered 400 before any text is sent. A ``max_tokens`` beyond the context is
refused before calling the backend at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dyn.context import HEADER_REQUEST_ID, Context, new_request_id
from dyn.errors import CallError, DynError, RemoteError
from dyn.openai.admission import Admission
from dyn.openai.errors import RETRY_AFTER_S, ApiError, client_error, error_body
from dyn.openai.metrics import OpenAIMetrics, RouteMetrics
from dyn.openai.models import (
    ChatRequest,
    CompletionRequest,
    context_overflow,
    decode_body,
    passthrough_fields,
    to_generate,
)
from dyn.openai.protocol import (
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    OpenAIBackend,
    TokenUsage,
)
from dyn.openai.sse import DONE, ChunkFormatter, Kind, error_event, full_response, usage

__all__ = ["DEFAULT_MAX_BODY_BYTES", "build_openai_routes"]

DEFAULT_MAX_BODY_BYTES = 1 << 20
_JSON = "application/json"
_SSE = "text/event-stream"
# A client's own deadline for one request, in seconds; past it the answer is 504.
HEADER_TIMEOUT = "x-request-timeout"
_log = logging.getLogger("dyn.openai")


def build_openai_routes(
    backend: OpenAIBackend,
    model: ModelInfo,
    metrics: OpenAIMetrics | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    clock: Callable[[], float] = time.time,
    admission: Admission | None = None,
    request_timeout_s: float | None = None,
) -> list[Route]:
    """The three routes, ready to mount on a Starlette app beside ``/health``.

    ``clock`` gives the responses' ``created`` timestamps (tests pin it). ``admission``
    bounds the generations in flight; ``request_timeout_s`` is the deadline of a request
    that names none in its ``x-request-timeout`` header.
    """
    api = _OpenAI(backend, model, metrics, max_body_bytes, clock)
    api.admission = admission or Admission()
    api.request_timeout_s = request_timeout_s
    return [
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
    ]


class _OpenAI:
    def __init__(
        self,
        backend: OpenAIBackend,
        model: ModelInfo,
        metrics: OpenAIMetrics | None,
        max_body_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._backend = backend
        self._model = model
        self._metrics = metrics
        self._limit = max_body_bytes
        self.admission = Admission()
        self.request_timeout_s: float | None = None
        card = {
            "id": model.id,
            "object": "model",
            "created": model.created,
            "owned_by": model.owned_by,
            "root": model.id,
            "max_model_len": model.max_model_len,
        }
        self._models_body = msgspec.json.encode({"object": "list", "data": [card]})

    async def models(self, request: Request) -> Response:
        return Response(self._models_body, media_type=_JSON)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, kind: Kind) -> Response:
        started = time.perf_counter()
        # What request.url.path gives for a path that matched a route, without building
        # the whole URL (host, scheme, query) for every request.
        route = request.scope["path"]
        metrics = self._metrics.route(route, self._model.id) if self._metrics else None
        if metrics is not None:
            metrics.inflight.inc()
        request_id = request.headers.get(HEADER_REQUEST_ID) or new_request_id()
        headers = {HEADER_REQUEST_ID: request_id}
        call = _Call(kind, request_id, metrics, started)
        try:
            await self.admission.enter()
            call.release = self.admission.leave
            deadline = self._deadline(request)
            body = await self._read_body(request)
            req: ChatRequest | CompletionRequest = (
                decode_body(body, ChatRequest)
                if kind == "chat"
                else decode_body(body, CompletionRequest)
            )
            extra = passthrough_fields(body)
            generate, blame = to_generate(req, request_id, self._model, extra)
            call.stream = bool(req.stream)
            call.include_usage = bool(req.stream_options and req.stream_options.include_usage)
            starting = call.start(self._backend, generate, request_id, deadline)
            if await _unless_client_leaves(request.receive, starting):
                await call.close()
                call.finish(499)
                return Response(status_code=499)  # nobody reads it: the client is gone
            self._check_fits(call.first, generate, blame, kind)
        except Exception as exc:
            await call.close()
            status, body = self._error(exc, route)
            if status in (429, 503):
                headers["Retry-After"] = RETRY_AFTER_S
            call.finish(status)
            return Response(body, status, headers, _JSON)
        except BaseException:
            await call.close()
            call.finish(499)
            raise
        formatter_args = (self._model.id, int(self._clock()))
        if call.stream:
            return _SseResponse(call, call.events(*formatter_args), headers)
        try:
            body = await call.collect(*formatter_args)
        except Exception as exc:
            status, body = self._error(exc, route)
            call.finish(status)
            return Response(body, status, headers, _JSON)
        finally:
            await call.close()
        call.finish(200)
        return Response(body, 200, headers, _JSON)

    def _deadline(self, request: Request) -> float:
        """The request's deadline on anyio's clock: its header's timeout, else the default."""
        timeout = self.request_timeout_s
        given = request.headers.get(HEADER_TIMEOUT)
        if given is not None:
            try:
                timeout = float(given)
            except ValueError:
                timeout = math.nan
            if not timeout > 0 or math.isinf(timeout):
                raise ApiError(400, f"{HEADER_TIMEOUT} must be a positive number of seconds")
        return math.inf if timeout is None else anyio.current_time() + timeout

    async def _read_body(self, request: Request) -> bytes:
        limit = self._limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes", code="too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is larger than {limit} bytes", code="too_large")
        return body

    def _check_fits(
        self, first: GenerateOutput, generate: GenerateRequest, blame: str | None, kind: Kind
    ) -> None:
        prompt, room = first.prompt_tokens, self._model.max_model_len
        if prompt is None:
            return
        if blame is None and prompt >= room:  # chat without a cap: no room for one token
            message = f"the prompt is {prompt} tokens; this model's context is {room} tokens"
            raise ApiError(400, message, param="messages" if kind == "chat" else "prompt")
        if blame is not None and prompt + generate.max_tokens > room:
            raise ApiError(400, context_overflow(generate.max_tokens, prompt, room), param=blame)

    def _error(self, exc: Exception, route: str) -> tuple[int, bytes]:
        param = None
        if isinstance(exc, ApiError):
            status, message, param, code = exc.status, exc.message, exc.param, exc.code
        else:
            error = _client_error(exc, route)
            status, message, code = error.http_status, error.message, error.code
        if status >= 500 and not isinstance(exc, ApiError):
            _log.warning("%s answered %d: %s", route, status, message)
        return status, msgspec.json.encode(error_body(status, message, param=param, code=code))


class _Call:
    """One generation: the backend's stream, its timings, and how it ended."""

    def __init__(self, kind: Kind, request_id: str, metrics: RouteMetrics | None, t0: float):
        self.kind = kind
        self.response_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.metrics = metrics
        self.started = t0
        self.stream = False
        self.include_usage = False
        self.first = GenerateOutput(text="", token_count=0)
        self._stack = AsyncExitStack()
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

    async def start(
        self, backend: OpenAIBackend, generate: GenerateRequest, request_id: str, deadline: float
    ) -> None:
        # Calls made while this context is current carry its deadline downstream, where
        # the processor's and the worker's handlers are stopped once it passes.
        token = Context(request_id=request_id, deadline=deadline).bind()
        try:
            self._items = await self._stack.enter_async_context(backend.generate(generate))
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
            self._tokens += output.token_count
            if output.cached_tokens is not None:
                self._cached = output.cached_tokens
            if output.usage is not None:
                self._usage = output.usage
                self._tokens = output.usage.completion_tokens
                self._cached = output.usage.cached_tokens
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
            if nxt is None:  # ended without saying why: it ran out of tokens
                nxt = GenerateOutput(text="", token_count=0, finish_reason="length")
            output = nxt

    def usage(self) -> Any:
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
        return full_response(
            self.kind, self.response_id, created, model, text, finish, self.usage()
        )

    async def events(self, model: str, created: int) -> AsyncIterator[bytes]:
        fmt = ChunkFormatter(self.kind, self.response_id, created, model, self.include_usage)
        status = 200
        held: list[bytes] = []  # chunks of outputs whose next one is ready: one write
        try:
            first = True
            async for output in self.outputs():
                # Empty middle outputs (a character split across tokens) carry nothing.
                if output.text or first or output.finish_reason is not None:
                    held.append(fmt.chunk(output.text, output.finish_reason))
                if held and not output.more_ready:
                    yield held[0] if len(held) == 1 else b"".join(held)
                    held.clear()
                first = False
            if self.include_usage:
                yield b"".join(held) + fmt.usage(self.usage())
                held.clear()
        except Exception as exc:
            status, message, code = _stream_error(exc)
            yield b"".join(held) + error_event(status, message, code)
            held.clear()
        yield b"".join(held) + DONE
        self.finish(status)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

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
        m.ttft.observe(self._first_at - self.started)
        later = self._tokens - self.first.token_count
        if later > 0:
            m.itl.observe((self._last_at - self._first_at) / later)
        prompt = self._usage.prompt_tokens if self._usage else self.first.prompt_tokens
        m.input_tokens.observe(prompt or 0)
        m.output_tokens.observe(self._tokens)
        m.cached_tokens.inc(self._cached or 0)


def _stream_error(exc: Exception) -> tuple[int, str, str]:
    error = _client_error(exc, "stream")
    return error.http_status, error.message, error.code


def _client_error(exc: Exception, route: str) -> CallError:
    if isinstance(exc, DynError):
        return client_error(exc)
    # A bug: the log gets the traceback, the client one line.
    _log.error("%s failed", route, exc_info=exc)
    return RemoteError("internal error; the frontend's log has the details")


async def _unless_client_leaves(receive: Receive, work: Awaitable[None]) -> bool:
    """Await ``work``, cancelled if the client disconnects first; whether it went away.

    Until the first output nothing is sent, so nothing else would notice a client that
    leaves while its request waits (a worker's queue, a remote prefill): the calls made
    for it would run on for nobody. A plain asyncio task, as in :class:`_SseResponse`.
    """
    task = asyncio.current_task()
    assert task is not None
    waiting = True
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        # Only while waiting: then the cancellation lands inside the try below.
        if waiting:
            gone = True
            task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        waiting = False
        watcher.cancel()
        if gone:
            task.uncancel()  # our own cancellation: the client went away
    return gone


class _SseResponse(Response):
    """Streams ``events`` and closes the backend however the response ends.

    Starlette's StreamingResponse watches for the client going away from an anyio task
    group, which costs about as much per request as everything else here together; one
    plain asyncio task that cancels the sender does the same job.
    """

    media_type = _SSE

    def __init__(self, call: _Call, events: AsyncIterator[bytes], headers: dict[str, str]):
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "Cache-Control": "no-cache"})
        self._call = call
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        streaming = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            # Only while streaming: then the cancellation lands inside the try below.
            if streaming:
                gone = True
                sender.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            streaming = False
        except asyncio.CancelledError:
            if not gone:
                raise
            sender.uncancel()  # our own cancellation: the client went away
        finally:
            streaming = False
            watcher.cancel()
            await self._call.close()
            self._call.finish(499)  # no-op unless the stream stopped early
