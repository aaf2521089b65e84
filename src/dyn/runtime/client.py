"""Clients: call a component's endpoints, picking an instance through a strategy."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from dyn.discovery.base import Instance
from dyn.errors import DeadlineExceeded, NoInstancesError
from dyn.routing.base import Router, RouteRequest
from dyn.routing.simple import Direct
from dyn.runtime import codec
from dyn.runtime.context import HEADER_DEADLINE, HEADER_REQUEST_ID, current_context, new_request_id
from dyn.transports.base import CallStream

if TYPE_CHECKING:
    from dyn.runtime.runtime import Runtime

__all__ = ["Client", "ResponseStream"]


class Client:
    """Calls to one component, kept up to date with its live instances by discovery."""

    def __init__(self, runtime: Runtime, component: str, router: Router) -> None:
        self.runtime = runtime
        self.component = component
        self.router = router
        self.prefix = f"{runtime.namespace}/{component}/"
        self._by_endpoint: dict[str, list[Instance]] = {}
        self._changed = anyio.Event()

    def set_router(self, router: Router) -> None:
        """Route later calls with ``router`` (calls in flight keep the one they started with)."""
        self.router = router
        router.on_instances(sorted({i.instance_id for g in self._by_endpoint.values() for i in g}))

    def _update(self, instances: list[Instance]) -> None:
        by_endpoint: dict[str, list[Instance]] = {}
        for instance in instances:
            by_endpoint.setdefault(instance.endpoint, []).append(instance)
        self._by_endpoint = by_endpoint
        self.router.on_instances(sorted({i.instance_id for i in instances}))
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

    def instances_any(self) -> bool:
        """Whether any endpoint of the component has a live instance."""
        return self._count(None) > 0

    def _count(self, endpoint: str | None) -> int:
        if endpoint is not None:
            return len(self._by_endpoint.get(endpoint, ()))
        return len({i.instance_id for group in self._by_endpoint.values() for i in group})

    def stream(
        self,
        endpoint: str,
        payload: Any,
        *,
        route: RouteRequest | None = None,
        headers: Mapping[str, str] | None = None,
        exclude: Collection[str] = (),
    ) -> ResponseStream:
        """Call ``endpoint`` and iterate the decoded items it yields.

        Use as ``async with client.stream(...) as items: async for item in items``; leaving
        the block early cancels the handler on the far side. Inside a handler the call
        inherits the current request's id and deadline. Instances named in ``exclude`` are
        not chosen unless no other instance is live (a retry avoiding one that failed).
        """
        return ResponseStream(self, endpoint, payload, route, headers, exclude)


class ResponseStream:
    """One call's decoded items. Closing it early cancels the remote handler."""

    def __init__(
        self,
        client: Client,
        endpoint: str,
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
        self._endpoint = endpoint
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
            instance = client.router.select(candidates, self._route)
            client.router.on_routed(instance, self._route)
        self.instance = instance
        path = instance.key
        if not math.isinf(self.deadline):
            self.headers[HEADER_DEADLINE] = f"{max(0.0, self.deadline - anyio.current_time()):.6f}"
        self._call = client.runtime.transport.call(
            instance.address, path, codec.encode(self._payload), self.headers
        )
        return self._call

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            call = self._call or self._start()
            if self.deadline == math.inf:
                data = await call.__anext__()
            else:
                data = await self._next_frame(call)
        except BaseException:  # end, error or cancellation: the call is over either way
            self._finish()
            raise
        if self._items == 0 and self.instance is not None:
            if self._tracked:
                self._client.router.on_first_item(self.instance, self._route)
        self._items += 1
        return codec.decode(data)

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
        if self.instance is not None:
            if self._tracked:
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
