"""The frontend's config, kept apart from the server so validating a graph stays light."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FrontendConfig"]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="a TCP port, 1-65535")]


class FrontendConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the HTTP frontend listens and what its routes call.

    ``routes`` maps an HTTP path to ``component/endpoint``; a POST to that path sends the
    JSON body to the endpoint and streams each item back as one line of text, prefixed
    with ``prefix``.
    """

    host: str = "127.0.0.1"
    port: Port = 8000
    routes: dict[str, str] = msgspec.field(default_factory=dict)
    # The component (in depends_on) behind the OpenAI routes and the /admin/route routes:
    # a processor. Unset, the frontend serves only `routes`.
    openai: str | None = None
    prefix: str = ""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    # Generations served at once (unset: no bound) and waiting for a slot; past both the
    # answer is 429 with Retry-After. A queued request waits at most queue_timeout_s.
    max_inflight: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_queued: Annotated[int, msgspec.Meta(ge=0)] = 0
    queue_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # A request's deadline when its x-request-timeout header gives none (unset: none).
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Clients must send "Authorization: Bearer <api_key>" (also from DYN_API_KEY); the
    # admin routes need admin_token (also DYN_ADMIN_TOKEN) unless the host is loopback.
    api_key: str | None = None
    admin_token: str | None = None
