"""The frontend's config, kept apart from the server so validating a graph stays light,
and the checks of its routes against what the graph wires to the frontend."""

from __future__ import annotations

from typing import Annotated

import msgspec

from dyn.graph import did_you_mean
from dyn.graph.roles import ConfigProblem, Wiring

__all__ = ["FrontendConfig", "check_routes"]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="a TCP port, 1-65535")]


class FrontendConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the HTTP frontend listens and what its routes call.

    ``routes`` maps an HTTP path to ``component/endpoint``; a POST to that path sends the
    JSON body to the endpoint and streams each item back as one line of text, prefixed
    with ``prefix``; a GET sends ``{}``.
    """

    host: str = "127.0.0.1"
    port: Port = 8000
    # Share the port with this frontend's replicas in other processes (SO_REUSEPORT); the
    # auto process layout sets it (docs/process-layout.md).
    reuse_port: bool = False
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
    # Clients must send "Authorization: Bearer <api_key>" (also from API_KEY_ENV); the
    # admin routes need admin_token (also ADMIN_TOKEN_ENV) unless the host is loopback.
    api_key: str | None = None
    admin_token: str | None = None


def check_routes(config: FrontendConfig, wiring: Wiring) -> list[ConfigProblem]:
    """Every route names ``component/endpoint`` of a component the frontend depends on,
    and ``openai`` names one with a ``generate`` endpoint."""
    problems: list[ConfigProblem] = []
    if config.openai is not None:
        problems.extend(_check_openai(config.openai, wiring))
    targets = wiring.targets
    for route, target in config.routes.items():
        path = ("routes", route)
        if not route.startswith("/"):
            problems.append((path, f"route paths must start with '/' (got {route!r})"))
        component, sep, endpoint = target.partition("/")
        if not (sep and component and endpoint) or "/" in endpoint:
            problems.append((path, f"must be 'component/endpoint' (got {target!r})"))
            continue
        if component not in targets:
            hint = did_you_mean(component, targets)
            wired = ", ".join(targets) or "nothing"
            problems.append(
                (
                    path,
                    f"{component!r} is not in depends_on of {wiring.component!r}{hint}; "
                    f"add it there (it depends on: {wired})",
                )
            )
            continue
        callee = targets[component]
        if callee not in wiring.endpoints:
            continue  # already reported as an unknown component or an unresolvable role
        endpoints = wiring.endpoints[callee]
        if endpoint not in endpoints:
            hint = did_you_mean(endpoint, endpoints)
            listing = ", ".join(endpoints) or "none"
            problems.append(
                (
                    path,
                    f"component {callee!r} ({wiring.roles[callee]}) has no endpoint "
                    f"{endpoint!r}{hint}; its endpoints: {listing}",
                )
            )
    return problems


def _check_openai(target: str, wiring: Wiring) -> list[ConfigProblem]:
    path = ("openai",)
    targets = wiring.targets
    if target not in targets:
        wired = ", ".join(targets) or "nothing"
        hint = did_you_mean(target, targets)
        return [
            (
                path,
                f"{target!r} is not in depends_on of {wiring.component!r}{hint}; "
                f"name the processor it depends on (it depends on: {wired})",
            )
        ]
    callee = targets[target]
    if callee in wiring.endpoints and "generate" not in wiring.endpoints[callee]:
        return [
            (
                path,
                f"component {callee!r} ({wiring.roles[callee]}) has no 'generate' endpoint; "
                "the OpenAI routes need a processor",
            )
        ]
    return []
