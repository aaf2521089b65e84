"""The runtime of one process: serves its components' endpoints and makes clients.

One runtime per process owns one transport server, one discovery handle and a task group
in which every background task lives. Endpoints are addressed by their discovery key,
``namespace/component/endpoint/instance_id``, so many instances share one server.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from dyn import plugins
from dyn.context import HEADER_DEADLINE, Context
from dyn.discovery.base import Discovery, Instance
from dyn.errors import DynError, NotFoundError, RemoteError, TransportError
from dyn.routing.base import RoutingStrategy
from dyn.runtime import codec
from dyn.runtime._typed import RequestReader, plain
from dyn.runtime.client import Client
from dyn.runtime.component import Component, ComponentInfo
from dyn.transports.base import Transport

__all__ = ["Runtime", "new_instance_id"]

_log = logging.getLogger("dyn.runtime")

EndpointMethod = Callable[[Any, Context], AsyncIterator[Any]]


def readdress(address: str, host: str) -> str:
    """``address`` (``scheme://HOST:PORT``) with ``host`` in place of its host."""
    scheme, sep, rest = address.rpartition("://")
    port = rest.rpartition(":")[2]
    bracketed = f"[{host}]" if ":" in host else host
    return f"{scheme}{sep}{bracketed}:{port}"


def new_instance_id() -> str:
    return secrets.token_hex(8)


class Runtime:
    """Serve components and call others. Use as an async context manager."""

    def __init__(
        self,
        *,
        namespace: str,
        transport: Transport,
        discovery: Discovery,
        node: str = "local",
        host: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        local_calls: bool = False,
        advertise: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.transport = transport
        self.discovery = discovery
        self.node = node
        self.host = host
        # The address others reach this process at when it listens on every interface
        # (a pod binds 0.0.0.0 and advertises its pod IP): discovery publishes this host.
        self.advertise = advertise
        self.registry = registry if registry is not None else CollectorRegistry()
        self.address = ""
        # Facts about this process that every instance it registers publishes (e.g.
        # where its metrics are served); a component's own metadata wins over them.
        self.metadata: dict[str, Any] = {}
        # With local_calls, calls to this runtime's own instances skip the transport: a
        # second, in-process server hands them the caller's objects (see Client). For a
        # process that hosts several roles (the auto layout's frontend + processor).
        self.local_calls = local_calls
        self.local_transport: Transport | None = None
        self.local_address: str | None = None
        self._routes: dict[str, EndpointMethod] = {}
        # How each route's payloads become its handler's request (absent: plain data).
        self._readers: dict[str, RequestReader] = {}
        # An object-carrying transport (in-process) gets objects and must get objects back.
        self._objects = transport.carries_objects
        # Paths of withdrawn endpoints: a late call to one is told to go elsewhere.
        self._withdrawn: set[str] = set()
        self._registered: dict[int, list[Instance]] = {}
        self._clients: list[Client] = []
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        try:
            self.address = await self._tasks.start(self._serve)
            if self.advertise:
                self.address = readdress(self.address, self.advertise)
            if self.local_calls and not self.transport.carries_objects:
                from dyn.transports.inproc import InprocTransport

                self.local_transport = InprocTransport()
                self.local_address = await self._tasks.start(self._serve_local)
        except BaseException:
            # __aexit__ never runs for a failed __aenter__: leave the task group here,
            # or the caller's next scope exit finds this group's scope still current.
            self._tasks.cancel_scope.cancel()
            try:
                await self._tasks.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.transport.aclose()
            raise
        return self

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        await self.transport.serve(self._dispatch, host=self.host, task_status=task_status)

    async def _serve_local(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        assert self.local_transport is not None
        await self.local_transport.serve(
            self._dispatch_objects, host=self.host, task_status=task_status
        )

    def is_local(self, instance: Instance) -> bool:
        """Whether calls to ``instance`` take the in-process path (it is served here)."""
        return self.local_address is not None and instance.address == self.address

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        with anyio.CancelScope(shield=True):
            for instances in list(self._registered.values()):
                for instance in instances:
                    await self.discovery.deregister(instance)
            self._registered.clear()
        self._tasks.cancel_scope.cancel()
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await self.transport.aclose()

    @property
    def tasks(self) -> TaskGroup:
        """The task group for background work that lives as long as the runtime."""
        if self._tasks is None:
            raise RuntimeError("the runtime is not running; use 'async with Runtime(...)'")
        return self._tasks

    # -- calling -------------------------------------------------------------------------

    def client(
        self, component: str, strategy: str | RoutingStrategy = "round_robin", **options: Any
    ) -> Client:
        """A client for ``component`` that routes with ``strategy`` (a name or an object)."""
        if isinstance(strategy, str):
            router_cls = plugins.load("dyn.routers", strategy)
            router: RoutingStrategy = router_cls(options or None)
        else:
            router = strategy
        client = Client(self, component, router)
        self._clients.append(client)
        self.tasks.start_soon(client.watch)
        return client

    # -- serving -------------------------------------------------------------------------

    async def serve_component(
        self,
        component: Component[Any],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Instance]:
        """Route calls to ``component``'s endpoints and register them in discovery."""
        info = component.info
        # `dyn status` shows uptimes from this; one clock reading for all endpoints.
        metadata = {"started_at": time.time(), **self.metadata, **(metadata or {})}
        instances = []
        types = type(component).endpoint_types()
        for name, method_name in type(component).endpoints().items():
            instance = Instance(
                namespace=info.namespace,
                component=info.component,
                endpoint=name,
                instance_id=info.instance_id,
                address=self.address,
                transport=self.transport.name,
                # The node the graph placed the role on: one process may host roles
                # of several nodes (the in-process launcher runs them all).
                node=info.node if info.node != "local" else self.node,
                host=self.advertise or self.host,
                pid=os.getpid(),
                replica=info.replica,
                metadata=dict(metadata),
            )
            self._routes[instance.key] = getattr(component, method_name)
            self._readers[instance.key] = RequestReader(name, types[name].request)
            self._withdrawn.discard(instance.key)
            instances.append(instance)
        # Not in discovery: `dyn status` asks every instance this, by its address.
        self._routes[health_path(info.namespace, info.component, info.instance_id)] = (
            _health_handler(component, draining=False)
        )
        # Callers that leave the choice of instance to the transport reach it too.
        await self.transport.expose(info.namespace, info.component, info.instance_id)
        for instance in instances:
            await self.discovery.register(instance)
        self._registered[id(component)] = instances
        return instances

    async def withdraw_component(self, component: Component[Any]) -> None:
        """Deregister ``component``'s endpoints; calls already running go on."""
        info = component.info
        path = health_path(info.namespace, info.component, info.instance_id)
        if path in self._routes:
            self._routes[path] = _health_handler(component, draining=True)
        if id(component) in self._registered:
            await self.transport.withdraw(info.namespace, info.component, info.instance_id)
        for instance in self._registered.pop(id(component), []):
            await self.discovery.deregister(instance)
            self._routes.pop(instance.key, None)
            self._readers.pop(instance.key, None)
            self._withdrawn.add(instance.key)

    async def probe_health(self, instance: Instance, timeout_s: float) -> dict[str, Any]:
        """Ask an instance how it is: ``{"state": healthy|draining|unhealthy}``, with a
        ``reason`` when unhealthy (not ready, unreachable, or no answer in time)."""
        path = health_path(instance.namespace, instance.component, instance.instance_id)
        with anyio.move_on_after(timeout_s):
            try:
                headers = {HEADER_DEADLINE: f"{timeout_s}"}
                # An object-carrying transport takes the request as it is.
                payload: Any = {} if self._objects else codec.encode({})
                async with self.transport.call(instance.address, path, payload, headers) as call:
                    async for data in call:
                        answer: dict[str, Any] = (
                            plain(data) if self._objects else codec.decode(data)
                        )
                        return answer
            except DynError as exc:
                return {"state": "unhealthy", "reason": str(exc)}
            return {"state": "unhealthy", "reason": "no answer"}
        return {"state": "unhealthy", "reason": f"no answer within {timeout_s:g} s"}

    def _dispatch(self, path: str, payload: Any, ctx: Context) -> AsyncIterator[Any]:
        if self._objects:
            return self._handle_objects(path, payload, ctx)
        return self._handle_bytes(path, payload, ctx)

    def _dispatch_objects(self, path: str, payload: Any, ctx: Context) -> AsyncIterator[Any]:
        return self._handle_objects(path, payload, ctx)

    def _route(self, path: str) -> EndpointMethod:
        method = self._routes.get(path)
        if method is None:
            if path in self._withdrawn:
                # A caller whose discovery is behind: a TransportError lets it pick another.
                raise TransportError(f"{path!r} is shutting down")
            raise NotFoundError(f"no endpoint {path!r} here")
        return method

    async def _handle_bytes(self, path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
        """A call over a byte transport, which runs each call in a task of its own (see
        ``Handler``): the handler's context is bound once, for the whole call."""
        token = ctx.bind()
        try:
            method = self._route(path)
            # Decoded and checked once, here; a bad request never reaches the handler.
            request = self._readers.get(path, _PLAIN_REQUESTS).from_bytes(payload)
            items = method(request, ctx)
            encode = codec.encode
            try:
                async for item in items:
                    yield encode(item)
            except DynError:
                raise
            except Exception as exc:
                raise _handler_failed(path, exc) from exc
            finally:
                await items.aclose()  # type: ignore[attr-defined]
        finally:
            ctx.unbind(token)

    async def _handle_objects(self, path: str, payload: Any, ctx: Context) -> AsyncIterator[Any]:
        """A call over an object-carrying transport, which may run it in the caller's task."""
        method = self._route(path)
        # Converted and checked once, here; a bad request never reaches the handler.
        request = self._readers.get(path, _PLAIN_REQUESTS).from_object(payload)
        items = method(request, ctx)
        step = items.__anext__
        try:
            while True:
                # The handler's code sees its own context. The transport may run this
                # generator in the caller's task, so the binding is undone before every
                # item goes back and the caller's own context is current again.
                token = ctx.bind()
                try:
                    item = await step()
                except StopAsyncIteration:
                    return
                finally:
                    ctx.unbind(token)
                yield item
        except DynError:
            raise
        except Exception as exc:
            raise _handler_failed(path, exc) from exc
        finally:
            token = ctx.bind()
            try:
                await items.aclose()  # type: ignore[attr-defined]
            finally:
                ctx.unbind(token)


def _handler_failed(path: str, exc: Exception) -> RemoteError:
    """A bug in the handler: the caller gets its type and message, the log its traceback."""
    _log.exception("handler %s failed", path)
    return RemoteError(f"{type(exc).__name__}: {exc}")


# Paths without a declared request type (health probes, untyped user endpoints).
_PLAIN_REQUESTS = RequestReader("plain", None)


def health_path(namespace: str, component: str, instance_id: str) -> str:
    return f"{namespace}/{component}/_health/{instance_id}"


def _health_handler(
    component: Component[Any], *, draining: bool
) -> Callable[[Any, Context], AsyncIterator[dict[str, Any]]]:
    async def health(request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        if draining:
            yield {"state": "draining"}
        elif component.ready():
            yield {"state": "healthy"}
        else:  # registered once ready, so it was ready and is no longer
            yield {"state": "unhealthy", "reason": "not ready"}

    return health


def component_info(
    namespace: str, component: str, replica: int = 0, node: str = "local"
) -> ComponentInfo:
    return ComponentInfo(
        namespace=namespace,
        component=component,
        instance_id=new_instance_id(),
        replica=replica,
        node=node,
    )
