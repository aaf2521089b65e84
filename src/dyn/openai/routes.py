"""The OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/models`` and ``/v1/models/{id}``.

A generation route validates the body, calls the backend and waits for its first output
before answering, so that a failure to start (no workers, queue full, prompt too long)
still gets its own status code; after that the status is 200 and a failure is reported
inside the stream. The prompt-length check needs the prompt's token count, which only
the backend knows (it tokenizes): the first output reports it, and a request that does
not fit is answered 400 before any text is sent. A ``max_tokens`` beyond the context is
refused before calling the backend at all.

The generation routes are plain ASGI apps (:class:`GenerationRoute`): they read the few
headers they need straight from the scope and stream to ``send`` without a response
object, so a frontend can also call them without starlette's routing in front.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import anyio
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dyn.context import HEADER_REQUEST_ID, new_request_id
from dyn.openai.admission import Admission
from dyn.openai.errors import RETRY_AFTER_S, ApiError, error_body
from dyn.openai.generation import Generation, internal_error
from dyn.openai.metrics import OpenAIMetrics
from dyn.openai.models import (
    ChatRequest,
    CompletionRequest,
    context_overflow,
    decode_body,
    passthrough_fields,
    to_generate,
)
from dyn.openai.protocol import GenerateOutput, GenerateRequest, ModelInfo, OpenAIBackend
from dyn.openai.sse import Kind

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GenerationRoute", "build_openai_routes"]

DEFAULT_MAX_BODY_BYTES = 1 << 20
_JSON = "application/json"
_log = logging.getLogger("dyn.openai")
# A client's own deadline for one request, in seconds; past it the answer is 504.
HEADER_TIMEOUT = "x-request-timeout"
# The raw names, as ASGI servers give them (lower case).
_RAW_REQUEST_ID = HEADER_REQUEST_ID.encode()
_RAW_TIMEOUT = HEADER_TIMEOUT.encode()
_RAW_LENGTH = b"content-length"
# What starlette would write for a streamed response with these headers, in its order.
_SSE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


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
    """The four routes, ready to mount on a Starlette app beside ``/health``.

    ``clock`` gives the responses' ``created`` timestamps (tests pin it). ``admission``
    bounds the generations in flight; ``request_timeout_s`` is the deadline of a request
    that names none in its ``x-request-timeout`` header. The two generation routes'
    endpoints are :class:`GenerationRoute` apps.
    """
    api = _OpenAI(backend, model, metrics, max_body_bytes, clock)
    api.admission = admission or Admission()
    api.request_timeout_s = request_timeout_s
    return [
        Route("/v1/completions", GenerationRoute(api, "completion"), methods=["POST"]),
        Route("/v1/chat/completions", GenerationRoute(api, "chat"), methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        # Model ids may hold slashes (``org/name``), as Hugging Face's do.
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
    ]


class GenerationRoute:
    """The ASGI app of one generation route (a POST); errors are answered, not raised."""

    def __init__(self, api: _OpenAI, kind: Kind) -> None:
        self._api = api
        self._kind: Kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._api.serve(self._kind, scope, receive, send)


class _Headers:
    """The request headers the generation routes read, found in one pass."""

    __slots__ = ("length", "request_id", "timeout")

    def __init__(self, scope: Scope) -> None:
        self.request_id: str | None = None
        self.timeout: str | None = None
        self.length: str | None = None
        # The first of a repeated header counts, as starlette's Headers.get has it.
        for name, value in scope["headers"]:
            if name == _RAW_REQUEST_ID:
                if self.request_id is None:
                    self.request_id = value.decode("latin-1")
            elif name == _RAW_TIMEOUT:
                if self.timeout is None:
                    self.timeout = value.decode("latin-1")
            elif name == _RAW_LENGTH and self.length is None:
                self.length = value.decode("latin-1")


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
        self._model_body = msgspec.json.encode(card)

    async def models(self, request: Request) -> Response:
        return Response(self._models_body, media_type=_JSON)

    async def model(self, request: Request) -> Response:
        """One model's card (the ``openai`` package's ``models.retrieve``)."""
        asked = request.path_params["model_id"]
        if asked == self._model.id:
            return Response(self._model_body, media_type=_JSON)
        message = f"model {asked!r} is not served here; available: {self._model.id}"
        body = error_body(404, message, param="model", code="model_not_found")
        return Response(msgspec.json.encode(body), 404, media_type=_JSON)

    async def serve(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one generation request (``kind`` names its route)."""
        started = time.perf_counter()
        route: str = scope["path"]
        metrics = self._metrics.route(route, self._model.id) if self._metrics else None
        if metrics is not None:
            metrics.inflight.inc()
        given = _Headers(scope)
        request_id = given.request_id or new_request_id()
        call = Generation(kind, request_id, metrics, started)
        watch: _ClientWatch | None = None
        try:
            await self.admission.enter()
            call.release = self.admission.leave
            deadline = self._deadline(given.timeout)
            body = await self._read_body(given.length, receive)
            req: ChatRequest | CompletionRequest = (
                decode_body(body, ChatRequest)
                if kind == "chat"
                else decode_body(body, CompletionRequest)
            )
            extra = passthrough_fields(body)
            generate, blame = to_generate(req, request_id, self._model, extra)
            call.stream = bool(req.stream)
            options = req.stream_options
            if options is not None:
                call.include_usage = bool(options.include_usage)
                call.continuous_usage = bool(options.continuous_usage_stats)
            # Until the first output nothing is sent, so nothing else would notice a
            # client that leaves while its request waits (a worker's queue, a remote
            # prefill): the calls made for it would run on for nobody.
            watch = _ClientWatch(receive)
            await call.start(self._backend, generate, request_id, deadline)
            self._check_fits(call.first, generate, blame, kind)
            if isinstance(req, CompletionRequest) and req.echo:
                # The answer starts with the prompt, as OpenAI's and vLLM's do: in a
                # stream, the first chunk does.
                text = generate.prompt + call.first.text
                call.first = msgspec.structs.replace(call.first, text=text)
                call.text_start = len(generate.prompt)
        except Exception as exc:
            if watch is not None:
                watch.stop()
            await call.close()
            status, body = self._error(exc, route, kind)
            headers = {HEADER_REQUEST_ID: request_id}
            if status in (429, 503):
                headers["Retry-After"] = RETRY_AFTER_S
            call.finish(status)
            await Response(body, status, headers, _JSON)(scope, receive, send)
            return
        except asyncio.CancelledError:
            if watch is None or not watch.went_away():
                await call.close()
                call.finish(499)
                raise
            await call.close()
            call.finish(499)
            await Response(status_code=499)(scope, receive, send)  # nobody reads it
            return
        except BaseException:
            if watch is not None:
                watch.stop()
            await call.close()
            call.finish(499)
            raise
        created = int(self._clock())
        if call.stream:
            await self._stream(call, watch, request_id, created, send)
            return
        watch.stop()
        headers = {HEADER_REQUEST_ID: request_id}
        try:
            body = await call.collect(self._model.id, created)
        except Exception as exc:
            status, body = self._error(exc, route, kind)
            call.finish(status)
            await Response(body, status, headers, _JSON)(scope, receive, send)
            return
        finally:
            await call.close()
        call.finish(200)
        await Response(body, 200, headers, _JSON)(scope, receive, send)

    async def _stream(
        self, call: Generation, watch: _ClientWatch, request_id: str, created: int, send: Send
    ) -> None:
        """Stream the events; a client that goes away cancels it (the watch does)."""
        try:
            headers = [(_RAW_REQUEST_ID, request_id.encode("latin-1")), *_SSE_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await call.write_events(send, self._model.id, created)
        except asyncio.CancelledError:
            if not watch.went_away():
                raise
        finally:
            watch.stop()
            await call.close()
            call.finish(499)  # no-op unless the stream stopped early

    def _deadline(self, given: str | None) -> float:
        """The request's deadline on anyio's clock: its header's timeout, else the default."""
        timeout = self.request_timeout_s
        if given is not None:
            try:
                timeout = float(given)
            except ValueError:
                timeout = math.nan
            if not timeout > 0 or math.isinf(timeout):
                raise ApiError(400, f"{HEADER_TIMEOUT} must be a positive number of seconds")
        return math.inf if timeout is None else anyio.current_time() + timeout

    async def _read_body(self, declared: str | None, receive: Receive) -> bytes:
        limit = self._limit
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes", code="too_large")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()  # as starlette's Request.stream() would
            if message["type"] != "http.request":
                continue
            chunk: bytes = message.get("body", b"")
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is larger than {limit} bytes", code="too_large")
            if not message.get("more_body", False):
                return body

    def _check_fits(
        self, first: GenerateOutput, generate: GenerateRequest, blame: str | None, kind: Kind
    ) -> None:
        prompt, room = first.prompt_tokens, self._model.max_model_len
        if prompt is None:
            return
        if blame is None and prompt >= room:  # chat without a cap: no room for one token
            message = (
                f"this model's maximum context length is {room} tokens; the prompt alone "
                f"has {prompt}"
            )
            raise ApiError(400, message, param="messages" if kind == "chat" else "prompt")
        if blame is not None and prompt + generate.max_tokens > room:
            message = context_overflow(generate.max_tokens, prompt, room, blame)
            raise ApiError(400, message, param=blame)

    def _error(self, exc: Exception, route: str, kind: Kind) -> tuple[int, bytes]:
        param = None
        if isinstance(exc, ApiError):
            status, message, param, code = exc.status, exc.message, exc.param, exc.code
        else:
            error = internal_error(exc, route)
            status, message, code = error.http_status, error.message, error.code
            # The backend's request has a ``prompt``; a chat's client sent ``messages``.
            chat = kind == "chat"
            param = "messages" if error.param == "prompt" and chat else error.param
        if status >= 500 and not isinstance(exc, ApiError):
            _log.warning("%s answered %d: %s", route, status, message)
        return status, msgspec.json.encode(error_body(status, message, param=param, code=code))


class _ClientWatch:
    """One task per request that notices the client going away and then cancels the
    request's task, while armed (from the call to the backend until the stream ends).

    A plain asyncio task: starlette's StreamingResponse watches from an anyio task
    group, which costs about as much per request as everything else here together.
    """

    __slots__ = ("_armed", "_gone", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._armed = True
        self._gone = False
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # Only while armed: then the cancellation lands in the request's own handling.
        if self._armed:
            self._gone = True
            self._task.cancel()

    def went_away(self) -> bool:
        """Whether a cancellation is this watch's (then it is taken back: the request's
        task goes on to clean up)."""
        self.stop()
        if self._gone:
            self._gone = False
            self._task.uncancel()
            return True
        return False

    def stop(self) -> None:
        self._armed = False
        self._watcher.cancel()
