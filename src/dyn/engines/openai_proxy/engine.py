"""The ``openai_proxy`` engine: each request forwarded to an upstream OpenAI server.

dyn's processor tokenizes the prompt (routing needs its tokens), while an upstream server
takes and returns text. Every request goes to the upstream's ``/v1/completions`` (the
processor has already rendered a chat into one prompt), streamed, with
``stream_options.include_usage``:

- The prompt is sent as the text the client gave (the processor passes it on); only a
  request without it (a resend after token ids) is decoded from its ids. With
  ``token_ids: true`` (vLLM) the ids themselves go, and the upstream's output ids come
  back for the processor to detokenize.
- Otherwise each text delta is relayed as it is (:attr:`EngineOutput.text`): one parse
  per upstream chunk, no tokenizer call per delta. The last output carries the
  upstream's ``usage``; an upstream that reports none gets dyn's count of the whole
  text, tokenized once at the end.
- The client's request fields that dyn does not consume
  (:attr:`EngineRequest.extra_fields`) are added to the body as the client wrote them;
  dyn's own fields win over them.
- The upstream reports ``cached_tokens`` in its final usage, after the last token. The
  output that carries the finish reason is held until that usage arrives (it follows at
  once) and carries it; a first output carries it only when already known.

Closing :meth:`OpenAIProxyEngine.generate` early closes the upstream response, hence its
connection, so the upstream sees the client go away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from dyn.engines.base import Engine, EngineOutput, EngineRequest, TokenUsage
from dyn.engines.openai_proxy._http import (
    Opener,
    UpstreamHttpError,
    UpstreamPool,
    UpstreamResponse,
)
from dyn.engines.openai_proxy._upstream import (
    UpstreamUsage,
    error_from_body,
    in_band_error,
    parse_chunk,
    sse_batches,
)
from dyn.engines.openai_proxy.config import OpenAIProxyConfig
from dyn.errors import TransportError
from dyn.tokenizer import Tokenizer, load_tokenizer

__all__ = ["OpenAIProxyEngine"]

# The request id header dyn's frontend, vLLM and most gateways log and echo.
_REQUEST_ID_HEADER = "x-request-id"
_FINISH_REASONS = ("length", "stop")
_INCLUDE_USAGE = {"include_usage": True}
_CONTENT_TYPE = "content-type: application/json\r\n"
_encode = msgspec.json.encode


class OpenAIProxyEngine(Engine):
    """Streams each :class:`EngineRequest` through one upstream server.

    ``model`` is the upstream model in use: the configured one, else what the last
    :meth:`probe` found. Counters: ``requests_inflight``, ``prompt_tokens_total``,
    ``cached_prompt_tokens_total`` (as the upstream reported them).
    """

    def __init__(
        self,
        config: OpenAIProxyConfig,
        tokenizer: Tokenizer | None = None,
        *,
        replica: int = 0,
        opener: Opener | None = None,
    ) -> None:
        """``opener`` opens a connection in place of a socket to the upstream's address
        (tests put a local server behind the upstream's URL)."""
        self.config = config
        self.upstream = config.upstream_for(replica)
        self.tokenizer = tokenizer or load_tokenizer(None)
        self.model: str | None = config.model
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._pool = UpstreamPool(
            self.upstream,
            headers=headers,
            timeout=config.timeout_s,
            connect_timeout=config.connect_timeout_s,
            opener=opener,
        )
        self.requests_inflight = 0
        self.prompt_tokens_total = 0
        self.cached_prompt_tokens_total = 0

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def probe(self) -> str:
        """Ask ``/v1/models``; return the model requests will name.

        Raises:
            TransportError: ``unavailable`` when the upstream does not answer, answers an
                error, or does not serve the configured model.
        """
        timeout = self.config.connect_timeout_s
        try:
            response = await self._pool.request("GET", "/v1/models", b"", "", wait_s=timeout)
            try:
                content = await response.read()
            finally:
                response.close()
        except UpstreamHttpError as exc:
            raise self._unreachable(exc) from exc
        if response.status != 200:
            raise error_from_body(response.status, content, self.upstream)
        try:
            ids = [str(card["id"]) for card in msgspec.json.decode(content)["data"]]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise TransportError(
                f"upstream {self.upstream}/v1/models is not an OpenAI model list"
            ) from exc
        wanted = self.config.model
        if wanted is not None and wanted not in ids:
            raise TransportError(
                f"upstream {self.upstream} does not serve model {wanted!r}; it serves "
                f"{', '.join(ids) or 'none'}"
            )
        if not ids:
            raise TransportError(f"upstream {self.upstream} serves no model")
        self.model = wanted or ids[0]
        return self.model

    def _unreachable(self, exc: UpstreamHttpError) -> TransportError:
        detail = str(exc) or type(exc).__name__
        return TransportError(f"upstream {self.upstream} is unreachable: {detail}")

    def _body(self, request: EngineRequest, model: str) -> bytes:
        prompt: str | list[int]
        if self.config.token_ids:
            prompt = request.tokens
        elif request.text is not None:
            prompt = request.text
        else:
            prompt = self.tokenizer.decode(request.tokens, skip_special_tokens=False)
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": _INCLUDE_USAGE,
        }
        # Extensions (vLLM, SGLang, dyn) that OpenAI itself refuses: sent only when set.
        if request.ignore_eos:
            body["ignore_eos"] = True
        if request.min_tokens:
            body["min_tokens"] = request.min_tokens
        if self.config.token_ids:
            body["return_token_ids"] = True
        encoded = _encode(body)
        extra = request.extra_fields
        if not extra or extra == b"{}":
            return encoded
        # Both are JSON objects: the client's fields go first, so that where a key
        # repeats, dyn's (parsed last by the upstream's JSON reader) is the one used.
        return extra[:-1] + b"," + encoded[1:]

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        model = self.model or await self.probe()
        body = self._body(request, model)
        request_id = request.request_id
        if "\n" in request_id or "\r" in request_id:  # a header value cannot hold them
            request_id = request_id.replace("\r", " ").replace("\n", " ")
        headers = f"{_REQUEST_ID_HEADER}: {request_id}\r\n{_CONTENT_TYPE}"
        self.requests_inflight += 1
        self.prompt_tokens_total += len(request.tokens)
        response: UpstreamResponse | None = None
        try:
            response = await self._pool.request("POST", "/v1/completions", body, headers)
            if response.status != 200:
                content = await response.read()
                raise error_from_body(response.status, content, self.upstream)
            async for output in self._outputs(response, request):
                yield output
        except UpstreamHttpError as exc:
            raise self._unreachable(exc) from exc
        finally:
            self.requests_inflight -= 1
            if response is not None:
                response.close()  # mid-answer: closes the connection, the upstream stops

    async def _outputs(
        self, response: UpstreamResponse, request: EngineRequest
    ) -> AsyncIterator[EngineOutput]:
        token_ids = self.config.token_ids
        first = True
        cached: int | None = None
        reported = False  # cached_tokens went out on the first output
        usage: UpstreamUsage | None = None
        finish: EngineOutput | None = None
        texts: list[str] = []  # for dyn's own count, should the upstream report no usage
        produced = 0  # output token ids (token_ids mode)
        async for batch in sse_batches(response.iter_body()):
            # Every output of one network read is ready at once: all but the last say
            # so (more_ready), and the frontend writes them to the client together. Each
            # goes as soon as the next is parsed (one held back to know whether another
            # follows), not once the whole read is: a read may hold hundreds of events,
            # and the first token should not wait for them.
            held: EngineOutput | None = None
            error: Any = None
            for data in batch:
                chunk = parse_chunk(data)
                if chunk.error is not None:
                    error = chunk.error
                    break
                if chunk.usage is not None:
                    usage = chunk.usage
                    if usage.cached_tokens is not None:
                        cached = usage.cached_tokens
                for choice in chunk.choices:
                    text = choice.text or ""
                    ids = choice.token_ids if token_ids else None
                    if ids is not None:
                        produced += len(ids)
                    else:
                        texts.append(text)
                    reason = choice.finish_reason
                    if reason is not None:
                        # Held back until the stream ends: the usage with cached_tokens
                        # follows.
                        reason = reason if reason in _FINISH_REASONS else "stop"
                        finish = _output(ids, text, finish_reason=reason)
                    elif text or ids:
                        out_cached = 0
                        if first:
                            reported = cached is not None
                            out_cached = cached or 0
                            first = False
                        if held is not None:
                            yield msgspec.structs.replace(held, more_ready=True)
                        held = _output(ids, text, cached_tokens=out_cached)
            if held is not None:
                yield held
            if error is not None:
                raise in_band_error(error, self.upstream)
        if finish is None:
            raise TransportError(
                f"upstream {self.upstream} ended the stream before the answer finished"
            )
        self.cached_prompt_tokens_total += cached or 0
        if usage is not None:
            counts = TokenUsage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=cached or 0,
            )
        else:
            answer = "".join(texts)
            completion = produced + (len(self.tokenizer.encode(answer)) if answer else 0)
            counts = TokenUsage(prompt_tokens=len(request.tokens), completion_tokens=completion)
        yield msgspec.structs.replace(
            finish, cached_tokens=0 if reported else (cached or 0), usage=counts
        )


def _output(
    ids: list[int] | None, text: str, *, finish_reason: str | None = None, cached_tokens: int = 0
) -> EngineOutput:
    """Token ids when the upstream returned them (``token_ids``), else the text as it is."""
    if ids is not None:
        return EngineOutput(tokens=ids, finish_reason=finish_reason, cached_tokens=cached_tokens)
    return EngineOutput(text=text, finish_reason=finish_reason, cached_tokens=cached_tokens)
