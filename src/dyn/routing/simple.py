"""Strategies that ignore the request's content: round-robin, random, direct."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.routing.base import RouteRequest, RoutingStrategy

__all__ = ["Direct", "Random", "RoundRobin"]


class RoundRobin(RoutingStrategy):
    """Each instance in turn, in the order discovery lists them."""

    name: ClassVar[str] = "round_robin"

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        super().__init__(options, seed=seed)
        self._next = 0

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is not None:
            return Direct.pick(candidates, request.instance_id)
        chosen = candidates[self._next % len(candidates)]
        self._next = (self._next + 1) % len(candidates)
        return chosen


class Random(RoutingStrategy):
    """A uniformly random instance (seeded when the graph gives a seed)."""

    name: ClassVar[str] = "random"

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        super().__init__(options, seed=seed)
        self._rng = random.Random(seed)

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is not None:
            return Direct.pick(candidates, request.instance_id)
        return self._rng.choice(candidates)


class Direct(RoutingStrategy):
    """The instance the request names; an error if it names none or one that is gone."""

    name: ClassVar[str] = "direct"

    @staticmethod
    def pick(candidates: Sequence[Instance], instance_id: str) -> Instance:
        for instance in candidates:
            if instance.instance_id == instance_id:
                return instance
        live = ", ".join(c.instance_id for c in candidates)
        raise RoutingError(f"instance {instance_id!r} is not live; live instances: {live}")

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is None:
            raise RoutingError("the direct strategy needs a target instance id")
        return self.pick(candidates, request.instance_id)
