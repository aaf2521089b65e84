"""Request bodies of the OpenAI routes: decoding, validation, and the chat template.

Bodies are decoded straight into msgspec structs (unknown fields are ignored, as OpenAI
clients send many we do not use); a type error becomes a 400 naming the field. The
checks that follow are the ones OpenAI's API makes too. Every field dyn does not consume
(:data:`CONSUMED_FIELDS`), unknown ones included, is kept as the client wrote it
(:func:`passthrough_fields`) for an engine that forwards requests to another server.

Chat messages become one prompt with this template, one line per message and a final
cue for the answer::

    system: You are terse.
    user: Hi!
    assistant:

It is deliberately simple: the simulated engine only needs realistic token counts and a
prefix that repeats across turns of a conversation (so prefix caching sees it).
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from dyn.openai.errors import ApiError
from dyn.openai.protocol import GenerateRequest, ModelInfo

__all__ = [
    "CHAT_ROLES",
    "CONSUMED_FIELDS",
    "DEFAULT_COMPLETION_MAX_TOKENS",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "ContentPart",
    "StreamOptions",
    "context_overflow",
    "decode_body",
    "passthrough_fields",
    "render_chat",
    "to_generate",
]

# OpenAI's documented default for /v1/completions. Chat has none: it runs to the end of
# the context, so the backend gets the whole context length as the cap.
DEFAULT_COMPLETION_MAX_TOKENS = 16

# The fields dyn acts on itself: the prompt (a chat is rendered into one), the model, the
# length limits (lowered when a request is resent), the stream's framing and the
# response's shape (``echo``: dyn writes the prompt, an upstream must not too). Anything
# else (sampling, logit_bias, response_format, vendor extensions) is passed through.
CONSUMED_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "min_tokens",
        "ignore_eos",
        "n",
        "stream",
        "stream_options",
        "echo",
    }
)
# The chat roles OpenAI's API accepts.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_CHAT_ROLES = frozenset(CHAT_ROLES)
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = False
    # Usage so far on every chunk (a vLLM extension benchmark clients use).
    continuous_usage_stats: bool | None = False


class _Sampling(msgspec.Struct, kw_only=True):
    # Optional scalars also accept null: some clients send explicit nulls for defaults.
    model: str
    max_tokens: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool | None = False
    min_tokens: int | None = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[str]
    logprobs: int | None = None  # how many alternatives per token (0 .. 5)
    # The answer starts with the prompt.
    echo: bool | None = False


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None  # alternatives per token (0 .. 20), with logprobs


_R = TypeVar("_R", CompletionRequest, ChatRequest)

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def decode_body(body: bytes, kind: type[_R]) -> _R:
    """Decode and type-check ``body``; an :class:`ApiError` (400) names the bad field."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        path = at.group(1) if at else ""
        missing = _MISSING.search(message)
        if missing:
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        if message.startswith("Expected `object`") and not path:
            raise ApiError(400, "request body must be a JSON object") from exc
        raise ApiError(400, f"invalid request: {message}", param=path or None) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc


def passthrough_fields(body: bytes) -> bytes:
    """The fields of ``body`` (already decoded once, so valid) that dyn does not consume,
    as one JSON object whose values are the client's bytes; ``b""`` when there are none.
    """
    kept = [
        b"%s:%s" % (_encode_key(key), value)
        for key, value in _top_level.decode(body).items()
        if key not in CONSUMED_FIELDS
    ]
    return b"{" + b",".join(kept) + b"}" if kept else b""


_encode_key = msgspec.json.encode


def render_chat(messages: list[ChatMessage]) -> str:
    """The prompt for ``messages`` (see the module docstring for the template)."""
    if not messages:
        raise ApiError(400, "messages must hold at least one message", param="messages")
    lines = []
    for i, message in enumerate(messages):
        if message.role not in _CHAT_ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role {message.role!r} is not a chat role; "
                f"use one of {', '.join(CHAT_ROLES)}",
                param=f"messages[{i}].role",
            )
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise ApiError(
                        400,
                        f"content part type {part.type!r} is not supported; send text parts",
                        param=f"messages[{i}].content",
                    )
                texts.append(part.text)
            content = "".join(texts)
        lines.append(f"{message.role}: {content or ''}\n")
    lines.append("assistant:")
    return "".join(lines)


def to_generate(
    req: CompletionRequest | ChatRequest,
    request_id: str,
    model: ModelInfo,
    extra_fields: bytes = b"",
) -> tuple[GenerateRequest, str | None]:
    """Check what types alone cannot and build the backend's request.

    Also returns the field that set ``max_tokens`` (``None`` when it is a default), the
    one to blame if the prompt turns out to leave too little room in the context.
    """
    if req.model != model.id:
        raise ApiError(
            404,
            f"model {req.model!r} is not served here; available: {model.id}",
            param="model",
            code="model_not_found",
        )
    if isinstance(req, ChatRequest):
        prompt = render_chat(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
        given = req.max_completion_tokens is not None or req.max_tokens is not None
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    else:
        prompt = _one_prompt(req.prompt)
        max_tokens = req.max_tokens
        given = max_tokens is not None
        param = "max_tokens"
    if given and (max_tokens is None or max_tokens < 1):
        raise ApiError(400, f"{param} must be at least 1; got {max_tokens}", param=param)
    if max_tokens is not None and max_tokens > model.max_model_len:
        message = context_overflow(max_tokens, None, model.max_model_len, param)
        raise ApiError(400, message, param=param)
    if max_tokens is None:
        chat = isinstance(req, ChatRequest)
        max_tokens = model.max_model_len if chat else DEFAULT_COMPLETION_MAX_TOKENS
    if req.n not in (None, 1):
        raise ApiError(400, f"only n=1 is supported; got n={req.n}", param="n")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:
        message = f"temperature must be in [0, 2]; got {temperature}"
        raise ApiError(400, message, param="temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise ApiError(400, f"top_p must be in (0, 1]; got {top_p}", param="top_p")
    min_tokens = req.min_tokens or 0
    if not 0 <= min_tokens <= max_tokens:
        message = f"min_tokens must be between 0 and max_tokens ({max_tokens}); got {min_tokens}"
        raise ApiError(400, message, param="min_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    logprobs = _logprobs(req)
    generate = GenerateRequest(
        request_id=request_id,
        prompt=prompt,
        max_tokens=max_tokens,
        max_tokens_param=param if given else None,
        ignore_eos=bool(req.ignore_eos),
        min_tokens=min_tokens,
        stop=[s for s in stop if s],
        seed=req.seed,
        temperature=temperature,
        top_p=top_p,
        extra_fields=extra_fields,
        logprobs=logprobs,
    )
    return generate, param if given else None


# OpenAI's limits: 20 alternatives per token for chat, 5 for the legacy completions.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


def _logprobs(req: CompletionRequest | ChatRequest) -> int | None:
    """How many alternatives to report per token; None when logprobs were not asked."""
    if isinstance(req, CompletionRequest):
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_COMPLETION_LOGPROBS:
            message = (
                f"logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}; got {req.logprobs}"
            )
            raise ApiError(400, message, param="logprobs")
        return req.logprobs
    top = req.top_logprobs
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        message = f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {top}"
        raise ApiError(400, message, param="top_logprobs")
    if not req.logprobs:
        if top:
            message = "top_logprobs needs logprobs set to true"
            raise ApiError(400, message, param="top_logprobs")
        return None
    return top or 0


def _one_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        message = f"only one prompt per request is supported; got a list of {len(prompt)}"
        raise ApiError(400, message, param="prompt")
    return prompt[0]


def context_overflow(
    max_tokens: int, prompt_tokens: int | None, max_model_len: int, param: str = "max_tokens"
) -> str:
    """The message for a request that does not fit the context, quoting the client's
    ``param`` (``max_tokens`` or ``max_completion_tokens``) as it was sent.

    It starts as OpenAI's and vLLM's do ("maximum context length is N tokens"): client
    libraries look for that phrase to tell a context overflow from other 400s."""
    prompt = f"{prompt_tokens} prompt tokens + " if prompt_tokens is not None else ""
    return (
        f"this model's maximum context length is {max_model_len} tokens, but {prompt}{param} "
        f"{max_tokens} asks for more; lower {param} or shorten the prompt"
    )
