"""The routing-strategy interface: pick one instance for one request.

Strategies are pure: no I/O, no web-framework objects, one fixed synchronous signature
that subclasses never extend. State a strategy keeps (a counter, a cache index) is fed
through the ``on_*`` hooks: the client calls ``on_routed``, ``on_first_item`` and
``on_finished`` as a request moves along; the processor feeds every worker's KV events
and load to ``on_kv_event`` and ``on_load``, and membership changes to ``on_instances``.
``explain`` and ``describe`` let ``dyn route`` show why a worker was chosen; a
strategy given a :class:`~dyn.routing.decisions.DecisionLog` records each decision in it
(``on_routed``), for the dashboard's decision panel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dyn.discovery.base import Instance
from dyn.kv.events import KvEvent, WorkerLoad
from dyn.routing.decisions import DecisionLog

__all__ = ["RouteRequest", "RoutingStrategy", "WorkerScore"]


@dataclass(frozen=True)
class RouteRequest:
    """What a strategy may look at: the request id, its tokens, and an explicit target."""

    request_id: str
    tokens: Sequence[int] = ()
    instance_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerScore:
    """How a strategy weighs one candidate for one request (lower ``cost`` wins).

    Strategies that ignore the request's content leave the figures at zero.
    """

    instance_id: str
    overlap_blocks: int = 0
    prefill_blocks: float = 0.0
    decode_blocks: float = 0.0
    cost: float = 0.0
    chosen: bool = False
    notes: str = ""
    # A strategy's own figures, by name, for a strategy whose cost is made of other terms
    # (``dyn route --explain`` shows them as columns).
    terms: dict[str, float] = field(default_factory=dict)


class RoutingStrategy(ABC):
    """Chooses an instance among live candidates.

    Args:
        options: strategy settings from the graph (unknown keys are an error for
            strategies that take settings).
        seed: seed for any randomness, so runs can be repeated.
    """

    name: ClassVar[str]
    # Set by the owner (the processor) to keep the last decisions; None keeps none. A
    # class default, so a subclass that skips ``__init__`` still has it.
    decisions: DecisionLog | None = None

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
    def on_routed(self, instance: Instance, request: RouteRequest) -> None:
        """The request was sent to ``instance``. An override records the decision itself
        (:meth:`record_decision`), with its scores if it weighs the candidates."""
        self.record_decision(instance.instance_id, request)

    def record_decision(self, worker: str, request: RouteRequest) -> None:
        """Keep "``request`` went to ``worker``" in :attr:`decisions`, if there is one."""
        if self.decisions is not None:
            self.decisions.record(request.request_id, worker, self.name)

    def on_first_item(self, instance: Instance, request: RouteRequest) -> None:  # noqa: B027
        """The first item came back (for an LLM: prefill is done)."""

    def on_finished(self, instance: Instance, request: RouteRequest) -> None:  # noqa: B027
        """The request ended, by completion, error or cancellation."""

    def on_kv_event(self, instance_id: str, event: KvEvent) -> None:  # noqa: B027
        """``instance_id`` reported a change to its KV cache (events arrive in order)."""

    def on_load(self, instance_id: str, load: WorkerLoad) -> None:  # noqa: B027
        """``instance_id`` reported its current load."""

    def on_instances(self, instance_ids: Sequence[str]) -> None:  # noqa: B027
        """These are now the live instances: forget whatever is kept about the others."""

    def explain(self, candidates: Sequence[Instance], request: RouteRequest) -> list[WorkerScore]:
        """One score per candidate, in order, marking what ``select`` would choose.

        Computed without changing any state, so it may be called at any time. A strategy
        whose choice itself changes state (round-robin's counter, a random draw) marks no
        candidate, unless the request names its target.
        """
        return [
            WorkerScore(c.instance_id, chosen=c.instance_id == request.instance_id)
            for c in candidates
        ]

    def describe(self) -> dict[str, dict[str, float]]:
        """What the strategy keeps per instance (tracked load, cached blocks, last report),
        for display; empty for a stateless strategy."""
        return {}
