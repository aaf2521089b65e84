"""The proxy's configuration: one frozen struct, validated once when the graph loads."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "KvEventsConfig",
    "OpenAIProxyConfig",
    "normalise_upstream",
]

# vLLM's default KV block size (``--block-size``); SGLang pages are 1 token, llama.cpp has
# no blocks: set ``block_size`` to what the upstream really uses.
DEFAULT_BLOCK_SIZE = 16

Url = Annotated[
    str,
    msgspec.Meta(pattern=r"^https?://\S+$", description="an http:// or https:// base URL"),
]
ZmqEndpoint = Annotated[
    str, msgspec.Meta(pattern=r"^(tcp|ipc|inproc)://\S+$", description="a ZMQ endpoint")
]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class KvEventsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where vLLM publishes its KV events (its ``--kv-events-config`` ``endpoint``, with
    the host that runs vLLM in place of ``*``) and the topic it publishes under."""

    endpoint: ZmqEndpoint
    topic: str = ""


class OpenAIProxyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One upstream OpenAI-compatible server per worker.

    ``upstream`` is its base URL without ``/v1``; a role with several replicas may give
    ``upstreams`` instead, replica *i* taking ``upstreams[i % len]`` (and likewise
    ``kv_events`` when it is a list). ``model`` is the upstream's model name (default: the
    first that its ``/v1/models`` lists). ``timeout_s`` bounds every wait for the upstream
    (the first token included), ``connect_timeout_s`` opening a connection.

    With ``token_ids`` the prompt goes upstream as token ids and the upstream's own output
    ids come back (vLLM's ``return_token_ids``): exact, but only for an upstream that
    accepts both and whose tokenizer is the graph's ``model.tokenizer``. Without it the
    prompt goes as the client's text and the output text is relayed as it is (see the
    engine's module).
    """

    upstream: Url | None = None
    upstreams: list[Url] = msgspec.field(default_factory=list)
    api_key: str | None = None
    model: str | None = None
    timeout_s: Seconds = 300.0
    connect_timeout_s: Seconds = 5.0
    token_ids: bool = False
    block_size: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_BLOCK_SIZE
    health_interval_s: Seconds = 2.0
    kv_events: KvEventsConfig | list[KvEventsConfig] | None = None

    def __post_init__(self) -> None:
        if (self.upstream is None) == (not self.upstreams):
            raise ValueError(
                "give the upstream server as 'upstream: URL' or, one per replica, "
                "'upstreams: [URL, ...]' (exactly one of the two)"
            )
        if isinstance(self.kv_events, list) and not self.kv_events:
            raise ValueError("kv_events is an empty list; omit it or give one endpoint")

    def upstream_for(self, replica: int) -> str:
        """The normalised base URL replica ``replica`` talks to."""
        if self.upstream is not None:
            return normalise_upstream(self.upstream)
        return normalise_upstream(self.upstreams[replica % len(self.upstreams)])

    def kv_events_for(self, replica: int) -> KvEventsConfig | None:
        if isinstance(self.kv_events, list):
            return self.kv_events[replica % len(self.kv_events)]
        return self.kv_events


def normalise_upstream(url: str) -> str:
    """``http://host:8000/v1/`` and ``http://host:8000`` both mean ``http://host:8000``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
