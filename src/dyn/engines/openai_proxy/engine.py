"""The ``openai_proxy`` engine: each request forwarded to an upstream OpenAI server.

dyn's processor tokenizes and its workers take token ids, while an upstream server takes
and returns text. Every request goes to the upstream's ``/v1/completions`` (the
processor has already rendered a chat into one prompt), streamed, with
``stream_options.include_usage``:

- The prompt is sent as text, the ids decoded with the graph's tokenizer: dyn's own
  frontend and OpenAI's API do not all accept token-id prompts. With ``token_ids: true``
  (vLLM) the ids themselves go, and the upstream's output ids come back.
- Each text delta is re-encoded with the same tokenizer, so the processor's detokenizer
  gives back exactly the upstream's text (the built-in tokenizer round-trips any text; a
  Hugging Face one nearly always does). Token counts are then dyn's count of that text,
  which may differ from the upstream's ``usage.completion_tokens``.
- The upstream reports ``cached_tokens`` in its final usage, after the last token. The
  output that carries the finish reason is held until that usage arrives (it follows at
  once) and carries it; a first output carries it only when already known.

Closing :meth:`OpenAIProxyEngine.generate` early closes the upstream response, hence its
connection, so the upstream sees the client go away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from dyn.engines.base import Engine, EngineOutput, EngineRequest
from dyn.engines.openai_proxy._upstream import (
    cached_tokens_of,
    error_from_body,
    in_band_error,
    sse_data,
)
from dyn.engines.openai_proxy.config import OpenAIProxyConfig
from dyn.errors import TransportError
from dyn.tokenizer import Tokenizer, load_tokenizer

__all__ = ["OpenAIProxyEngine"]

# The request id header dyn's frontend, vLLM and most gateways log and echo.
_REQUEST_ID_HEADER = "x-request-id"
# Idle keep-alive connections kept per upstream; a busy worker holds one per request.
_KEEPALIVE = 256
_FINISH_REASONS = ("length", "stop")


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.upstream = config.upstream_for(replica)
        self.tokenizer = tokenizer or load_tokenizer(None)
        self.model: str | None = config.model
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.upstream,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE),
            transport=transport,
        )
        self.requests_inflight = 0
        self.prompt_tokens_total = 0
        self.cached_prompt_tokens_total = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def probe(self) -> str:
        """Ask ``/v1/models``; return the model requests will name.

        Raises:
            TransportError: ``unavailable`` when the upstream does not answer, answers an
                error, or does not serve the configured model.
        """
        timeout = self.config.connect_timeout_s
        try:
            response = await self._client.get("/v1/models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            raise error_from_body(response.status_code, response.content, self.upstream)
        try:
            ids = [str(card["id"]) for card in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
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

    def _unreachable(self, exc: httpx.HTTPError) -> TransportError:
        detail = str(exc) or type(exc).__name__
        return TransportError(f"upstream {self.upstream} is unreachable: {detail}")

    def _body(self, request: EngineRequest, model: str) -> dict[str, Any]:
        prompt: str | list[int] = (
            list(request.tokens)
            if self.config.token_ids
            else self.tokenizer.decode(request.tokens, skip_special_tokens=False)
        )
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # Extensions (vLLM, SGLang, dyn) that OpenAI itself refuses: sent only when set.
        if request.ignore_eos:
            body["ignore_eos"] = True
        if request.min_tokens:
            body["min_tokens"] = request.min_tokens
        if self.config.token_ids:
            body["return_token_ids"] = True
        return body

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        model = self.model or await self.probe()
        body = self._body(request, model)
        headers = {_REQUEST_ID_HEADER: request.request_id}
        self.requests_inflight += 1
        self.prompt_tokens_total += len(request.tokens)
        try:
            async with self._client.stream(
                "POST", "/v1/completions", json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise error_from_body(response.status_code, response.content, self.upstream)
                async for output in self._outputs(response):
                    yield output
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        finally:
            self.requests_inflight -= 1

    async def _outputs(self, response: httpx.Response) -> AsyncIterator[EngineOutput]:
        encode = self.tokenizer.encode
        first = True
        cached: int | None = None
        reported = False  # cached_tokens went out on the first output
        finish: EngineOutput | None = None
        async for chunk in sse_data(response.aiter_lines()):
            if "error" in chunk:
                raise in_band_error(chunk["error"], self.upstream)
            usage_cached = cached_tokens_of(chunk.get("usage"))
            if usage_cached is not None:
                cached = usage_cached
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                ids = choice.get("token_ids") if self.config.token_ids else None
                text = choice.get("text") or ""
                tokens = list(ids) if isinstance(ids, list) else (encode(text) if text else [])
                reason = choice.get("finish_reason")
                if reason is not None:
                    # Held back until the stream ends: the usage with cached_tokens follows.
                    reason = reason if reason in _FINISH_REASONS else "stop"
                    finish = EngineOutput(tokens=tokens, finish_reason=reason)
                elif tokens:
                    if first:
                        reported = cached is not None
                    yield EngineOutput(tokens=tokens, cached_tokens=(cached or 0) if first else 0)
                    first = False
        if finish is None:
            raise TransportError(
                f"upstream {self.upstream} ended the stream before the answer finished"
            )
        self.cached_prompt_tokens_total += cached or 0
        yield EngineOutput(
            tokens=finish.tokens,
            finish_reason=finish.finish_reason,
            cached_tokens=0 if reported else (cached or 0),
        )
