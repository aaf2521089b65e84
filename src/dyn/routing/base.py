"""The routing-strategy interface: pick one instance for one request.

Strategies are pure: no I/O, no web-framework objects, one fixed synchronous signature
that subclasses never extend. State a strategy keeps (a counter, a cache index) is fed
through the ``on_*`` hooks, which the client calls as a request moves along.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dyn.discovery.base import Instance

__all__ = ["RouteRequest", "Router"]


@dataclass(frozen=True)
class RouteRequest:
    """What a strategy may look at: the request id, its tokens, and an explicit target."""

    request_id: str
    tokens: Sequence[int] = ()
    instance_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Router(ABC):
    """Chooses an instance among live candidates.

    Args:
        options: strategy settings from the graph (unknown keys are an error for
            strategies that take settings).
        seed: seed for any randomness, so runs can be repeated.
    """

    name: ClassVar[str]

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        self.options = dict(options or {})
        self.seed = seed

    @abstractmethod
    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        """Return one of ``candidates`` (never empty) for ``request``.

        Raises:
            RoutingError: the strategy cannot choose (e.g. a direct target that is gone).
        """

    # The hooks are optional: a stateless strategy leaves them empty.
    def on_routed(self, instance: Instance, request: RouteRequest) -> None:  # noqa: B027
        """The request was sent to ``instance``."""

    def on_first_item(self, instance: Instance, request: RouteRequest) -> None:  # noqa: B027
        """The first item came back (for an LLM: prefill is done)."""

    def on_finished(self, instance: Instance, request: RouteRequest) -> None:  # noqa: B027
        """The request ended, by completion, error or cancellation."""
