"""Clients: call a component's endpoints, picking an instance through a strategy.

A call names its endpoint by an :class:`~dyn.contracts.EndpointRef`, which types the
payload and the items (``client.stream(ENGINE_GENERATE, req)`` yields ``EngineOutput``),
or by its name, which leaves both as plain data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

import anyio

from dyn.context import HEADER_DEADLINE, HEADER_REQUEST_ID, current_context, new_request_id
from dyn.contracts.base import EndpointRef
from dyn.discovery.base import Instance
from dyn.errors import DeadlineExceeded, NoInstancesError, ProtocolError, TransportError
from dyn.routing.base import RouteRequest, RoutingStrategy
from dyn.routing.simple import Direct
from dyn.runtime import codec
from dyn.runtime._typed import MalformedItem, item_reader
from dyn.transports.base import CallStream

if TYPE_CHECKING:
    from dyn.runtime.runtime import Runtime

__all__ = ["Client", "EjectionPolicy", "ResponseStream"]

ReqT = TypeVar("ReqT")
ItemT = TypeVar("ItemT")

# Defaults for ejecting failing instances; the shape (consecutive failures, exponential
# back-off with a cap) follows Envoy's outlier detection, the numbers are dyn's own.
DEFAULT_EJECT_AFTER = 3
DEFAULT_EJECT_BASE_S = 5.0
DEFAULT_EJECT_MAX_S = 60.0
# How long an instance that left discovery is still called when no registered instance
# is left. Discovery can drop everyone at once without anyone dying: an etcd that was
# paused revokes every lease that lapsed meanwhile, and the instances register again a
# moment later. A dead instance fails its call at once and is forgotten.
DEFAULT_DEPARTED_GRACE_S = 10.0


@dataclass(frozen=True)
class EjectionPolicy:
    """When a client stops routing to an instance whose calls keep failing.

    ``failures`` calls in a row that fail to reach the instance (a ``TransportError``:
    connection refused or broken, protocol fault, code ``unavailable``) eject it for
    ``base_s`` seconds; each further ejection without a success in between doubles that,
    up to ``max_s``. After its back-off the instance is routed to again on probation: one
    more failure ejects it at once, one success clears its record. ``failures=0`` turns
    ejection off.
    """

    failures: int = DEFAULT_EJECT_AFTER
    base_s: float = DEFAULT_EJECT_BASE_S
    max_s: float = DEFAULT_EJECT_MAX_S

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError(f"failures must be 0 (off) or more, not {self.failures}")
        if not 0 < self.base_s <= self.max_s:
            raise ValueError(
                f"need 0 < base_s <= max_s, not base_s={self.base_s}, max_s={self.max_s}"
            )


class _Health:
    """One instance's failure record."""

    __slots__ = ("ejections", "failures", "until")

    def __init__(self) -> None:
        self.failures = 0  # calls in a row that failed to reach it
        self.ejections = 0  # ejections since its last success; > 0 means on probation
        self.until = -math.inf  # ejected until this clock reading


class Client:
    """Calls to one component, kept up to date with its live instances by discovery."""

    def __init__(
        self,
        runtime: Runtime,
        component: str,
        router: RoutingStrategy,
        *,
        ejection: EjectionPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        departed_grace_s: float = DEFAULT_DEPARTED_GRACE_S,
    ) -> None:
        self.runtime = runtime
        self.component = component
        self.router = router
        self.prefix = f"{runtime.namespace}/{component}/"
        self.ejection = ejection or EjectionPolicy()
        self._clock = clock
        self._health: dict[str, _Health] = {}
        self._by_endpoint: dict[str, list[Instance]] = {}
        self._changed = anyio.Event()
        self.departed_grace_s = departed_grace_s
        # Instances that left discovery: key -> (instance, when it left).
        self._departed: dict[str, tuple[Instance, float]] = {}

    def set_router(self, router: RoutingStrategy) -> None:
        """Route later calls with ``router`` (calls in flight keep the one they started with)."""
        self.router = router
        router.on_instances(sorted({i.instance_id for g in self._by_endpoint.values() for i in g}))

    def _update(self, instances: list[Instance]) -> None:
        now = self._clock()
        live_keys = {i.key for i in instances}
        for group in self._by_endpoint.values():
            for previous in group:
                if previous.key not in live_keys:
                    self._departed[previous.key] = (previous, now)
        self._departed = {
            key: (instance, left)
            for key, (instance, left) in self._departed.items()
            if key not in live_keys and now - left < self.departed_grace_s
        }
        by_endpoint: dict[str, list[Instance]] = {}
        for instance in instances:
            by_endpoint.setdefault(instance.endpoint, []).append(instance)
        self._by_endpoint = by_endpoint
        live = {i.instance_id for i in instances}
        # An instance that left discovery and comes back (a restart) starts afresh.
        for gone in self._health.keys() - live:
            del self._health[gone]
        self.router.on_instances(sorted(live))
        self._changed.set()
        self._changed = anyio.Event()

    async def watch(self) -> None:
        """Follow discovery for this component until cancelled (run by the runtime)."""
        async for instances in self.runtime.discovery.watch(self.prefix):
            self._update(instances)

    async def changed(self) -> None:
        """Wait until the set of live instances changes."""
        await self._changed.wait()

    def instances(self, endpoint: str = "generate") -> list[Instance]:
        """The live instances serving ``endpoint``, in discovery order."""
        return list(self._by_endpoint.get(endpoint, ()))

    async def wait_for_instances(self, endpoint: str | None = "generate", count: int = 1) -> None:
        """Wait until at least ``count`` instances serve ``endpoint`` (``None``: any)."""
        while self._count(endpoint) < count:
            await self._changed.wait()

    def recently_departed(self, endpoint: str) -> list[Instance]:
        """Instances of ``endpoint`` that left discovery within the grace period."""
        now = self._clock()
        return [
            instance
            for instance, left in self._departed.values()
            if instance.endpoint == endpoint and now - left < self.departed_grace_s
        ]

    def instances_any(self) -> bool:
        """Whether any endpoint of the component has a live instance."""
        return self._count(None) > 0

    def _count(self, endpoint: str | None) -> int:
        if endpoint is not None:
            return len(self._by_endpoint.get(endpoint, ()))
        return len({i.instance_id for group in self._by_endpoint.values() for i in group})

    # -- health ---------------------------------------------------------------------------

    def ejected(self) -> dict[str, float]:
        """Instances ejected from routing now, each with the seconds left of its back-off."""
        now = self._clock()
        return {iid: h.until - now for iid, h in self._health.items() if h.until > now}

    def _routable(self, candidates: list[Instance]) -> list[Instance]:
        # Ejected instances are left out unless that leaves nothing: a call to a failing
        # instance is better than no call at all, and it may have recovered.
        if not self._health:
            return candidates
        now = self._clock()
        healthy = [i for i in candidates if self._health.get(i.instance_id, _OK).until <= now]
        return healthy or candidates

    def _record_success(self, instance_id: str) -> None:
        self._health.pop(instance_id, None)

    def _record_failure(self, instance_id: str) -> None:
        # A departed instance that fails is gone for good: no more calls as a last resort.
        for key in [k for k, (i, _) in self._departed.items() if i.instance_id == instance_id]:
            del self._departed[key]
        policy = self.ejection
        if policy.failures == 0:
            return
        health = self._health.setdefault(instance_id, _Health())
        health.failures += 1
        now = self._clock()
        if health.until > now:
            return  # already ejected: calls that started before it do not extend it
        if health.ejections == 0 and health.failures < policy.failures:
            return
        backoff = min(policy.max_s, policy.base_s * 2.0**health.ejections)
        health.ejections += 1
        health.failures = 0
        health.until = now + backoff

    @overload
    def stream(
        self,
        endpoint: EndpointRef[ReqT, ItemT],
        payload: ReqT,
        *,
        route: RouteRequest | None = None,
        headers: Mapping[str, str] | None = None,
        exclude: Collection[str] = (),
    ) -> ResponseStream[ItemT]: ...
    @overload
    def stream(
        self,
        endpoint: str,
        payload: Any,
        *,
        route: RouteRequest | None = None,
        headers: Mapping[str, str] | None = None,
        exclude: Collection[str] = (),
    ) -> ResponseStream[Any]: ...
    def stream(
        self,
        endpoint: EndpointRef[Any, Any] | str,
        payload: Any,
        *,
        route: RouteRequest | None = None,
        headers: Mapping[str, str] | None = None,
        exclude: Collection[str] = (),
    ) -> ResponseStream[Any]:
        """Call ``endpoint`` and iterate the decoded items it yields.

        With an :class:`EndpointRef` the items are checked and decoded into its item
        type (a malformed one raises ``ProtocolError``); with a name they are plain data.

        Use as ``async with client.stream(...) as items: async for item in items``; leaving
        the block early cancels the handler on the far side. Inside a handler the call
        inherits the current request's id and deadline. Instances named in ``exclude`` are
        not chosen unless no other instance is live (a retry avoiding one that failed).
        """
        return ResponseStream(self, endpoint, payload, route, headers, exclude)


_OK = _Health()


class ResponseStream(Generic[ItemT]):
    """One call's decoded items. Closing it early cancels the remote handler."""

    def __init__(
        self,
        client: Client,
        endpoint: EndpointRef[Any, ItemT] | str,
        payload: Any,
        route: RouteRequest | None,
        headers: Mapping[str, str] | None,
        exclude: Collection[str] = (),
    ) -> None:
        ctx = current_context()
        call_headers: dict[str, str] = {}
        if ctx is not None:
            call_headers.update(ctx.to_headers())
        if headers:
            call_headers.update(headers)
        if HEADER_REQUEST_ID not in call_headers:  # not setdefault: a uuid4 costs a syscall
            call_headers[HEADER_REQUEST_ID] = new_request_id()
        self.headers = call_headers
        self.deadline = ctx.deadline if ctx is not None else math.inf
        if HEADER_DEADLINE in call_headers and math.isinf(self.deadline):
            self.deadline = anyio.current_time() + float(call_headers[HEADER_DEADLINE])
        self._client = client
        if isinstance(endpoint, str):
            self._endpoint = endpoint
            item_type: Any = None
        else:
            self._endpoint = endpoint.name
            item_type = endpoint.item
        self._reader = item_reader(item_type)
        # An object-carrying transport (in-process) takes the payload as it is.
        self._objects = client.runtime.transport.carries_objects
        self._payload = payload
        self._route = route or RouteRequest(request_id=call_headers[HEADER_REQUEST_ID])
        self._exclude = exclude
        self.instance: Instance | None = None
        self._tracked = True  # whether the strategy saw this call (on_routed)
        self._call: CallStream | None = None
        self._items = 0
        self._closed = False

    def _start(self) -> CallStream:
        client = self._client
        candidates = client.instances(self._endpoint)
        if not candidates and self._route.instance_id is None:
            # Nobody registered: call one that left discovery moments ago, if any (see
            # DEFAULT_DEPARTED_GRACE_S); it is no routing decision the strategy tracks.
            departed = client.recently_departed(self._endpoint)
            if departed:
                self.instance = instance = departed[-1]
                self._tracked = False
                return self._call_instance(instance)
        if not candidates:
            raise NoInstancesError(
                f"no live instance of {client.component}/{self._endpoint}; "
                "is the component running?"
            )
        if self._exclude:
            candidates = [i for i in candidates if i.instance_id not in self._exclude] or candidates
        if self._route.instance_id is not None:
            # A call to a named instance (a subscription, an admin call) is no routing
            # decision: the strategy neither chooses it nor counts it as load.
            instance = Direct.pick(candidates, self._route.instance_id)
            self._tracked = False
        else:
            runtime = client.runtime
            if runtime.local_address is not None:
                # A process that hosts the callee too (the auto layout's front process):
                # the in-process path is the cheapest, and each front process serving its
                # share of the HTTP connections is the balance the layout wants.
                candidates = [i for i in candidates if runtime.is_local(i)] or candidates
            instance = client.router.select(client._routable(candidates), self._route)
            client.router.on_routed(instance, self._route)
        self.instance = instance
        return self._call_instance(instance)

    def _call_instance(self, instance: Instance) -> CallStream:
        client = self._client
        path = instance.key
        if not math.isinf(self.deadline):
            self.headers[HEADER_DEADLINE] = f"{max(0.0, self.deadline - anyio.current_time()):.6f}"
        runtime = client.runtime
        if runtime.is_local(instance):
            assert runtime.local_transport is not None
            assert runtime.local_address is not None
            self._objects = True
            self._call = runtime.local_transport.call(
                runtime.local_address, path, self._payload, self.headers
            )
            return self._call
        payload = self._payload if self._objects else codec.encode(self._payload)
        self._call = runtime.transport.call(instance.address, path, payload, self.headers)
        return self._call

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ItemT:
        if self._closed:
            raise StopAsyncIteration
        try:
            call = self._call or self._start()
            if self.deadline == math.inf:
                data = await call.__anext__()
            else:
                data = await self._next_frame(call)
        except StopAsyncIteration:
            self._healthy()
            self._finish()
            raise
        except TransportError:
            if self.instance is not None:
                self._client._record_failure(self.instance.instance_id)
            self._finish()
            raise
        except BaseException:  # error or cancellation: the call is over either way
            self._finish()
            raise
        if self._items == 0 and self.instance is not None:
            self._healthy()
            if self._tracked:
                self._client.router.on_first_item(self.instance, self._route)
        self._items += 1
        reader = self._reader
        try:
            item: ItemT = reader.from_object(data) if self._objects else reader.from_bytes(data)
        except MalformedItem as exc:
            self._finish()
            raise ProtocolError(f"{self._client.component}/{self._endpoint} {exc}") from exc
        return item

    def has_ready(self) -> bool:
        """Whether the next item is here already: a hint to batch what is written on
        (see :meth:`~dyn.transports.base.CallStream.has_ready`)."""
        return self._call is not None and not self._closed and self._call.has_ready()

    def _healthy(self) -> None:
        # Any answer from the instance (an item, or the end) shows it is reachable.
        if self.instance is not None and self._items == 0:
            self._client._record_success(self.instance.instance_id)

    async def _next_frame(self, call: CallStream) -> bytes:
        with anyio.move_on_after(self.deadline - anyio.current_time()):
            return await call.__anext__()
        raise DeadlineExceeded(
            f"deadline passed waiting for {self._client.component}/{self._endpoint}"
        )

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.close_nowait()
        if self.instance is not None and self._tracked:
            self._client.router.on_finished(self.instance, self._route)

    async def aclose(self) -> None:
        self._finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish()
