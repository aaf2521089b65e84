"""How a role is declared in Python.

A component is a class deriving from :class:`Component`, parametrised by its config
struct. Its endpoints are async generator methods marked with :func:`endpoint`; each
takes the request and a :class:`~dyn.context.Context` and yields items. Its
dependencies are class attributes made with :func:`depends`; the runtime injects a
:class:`~dyn.runtime.client.Client` for each one, bound to the component the graph
wires to that slot. The types in an endpoint's signature are its contract::

    class Ask(msgspec.Struct, frozen=True):
        text: str

    ASK = EndpointRef("generate", Ask, str)  # name, request type, item type

    class Middle(Component[MiddleConfig]):
        backend = depends(calls=(ASK,))

        @endpoint
        async def generate(self, request: Ask, ctx: Context) -> AsyncIterator[str]:
            async with self.backend.stream(ASK, Ask(request.text + "-mid")) as items:
                async for item in items:  # mypy knows: str
                    yield f"Middle: {item}"

When the request is annotated with a msgspec Struct, the runtime decodes and validates
it once, before the handler runs, and answers a malformed one with ``BadRequestError``
naming the endpoint and the field (``generate: Object missing required field `text```).
A handler whose request is ``Any`` or a dict takes plain data, unchecked. In-process
calls hand requests and items over by reference, without encoding them: treat messages
as immutable (declare Structs ``frozen=True``). ``calls=`` lets ``dyn graph validate``
check that the component wired to the slot serves those endpoints with those types;
``may_call=`` names endpoints used only where the wired component serves them.
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    NamedTuple,
    TypeVar,
    get_args,
    get_origin,
    overload,
)

import msgspec

from dyn.contracts.base import EndpointRef
from dyn.errors import PluginError
from dyn.observability.logs import role_logger
from dyn.settings import Settings

if TYPE_CHECKING:
    from dyn.context import Context
    from dyn.graph.model import ModelSpec
    from dyn.graph.roles import ConfigProblem, Wiring
    from dyn.runtime.client import Client
    from dyn.runtime.runtime import Runtime

__all__ = [
    "Component",
    "ComponentInfo",
    "Dependency",
    "EmptyConfig",
    "EndpointFn",
    "EndpointTypes",
    "depends",
    "endpoint",
    "non_default_fields",
]


class EmptyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The config of a component that takes none."""


ConfigT = TypeVar("ConfigT", bound=msgspec.Struct)
SelfT = TypeVar("SelfT")
RequestT = TypeVar("RequestT")
ItemT = TypeVar("ItemT")
EndpointFn = Callable[[SelfT, RequestT, "Context"], AsyncIterator[ItemT]]
"""An endpoint method: ``(self, request, ctx)`` yielding items, generic in all three."""

_ENDPOINT_MARK = "__dyn_endpoint__"


def endpoint(
    fn: EndpointFn[SelfT, RequestT, ItemT],
) -> EndpointFn[SelfT, RequestT, ItemT]:
    """Mark an async generator method as an endpoint named after the method.

    The method keeps its signature, so its request and item types stay visible to mypy
    and to :meth:`Component.endpoint_types`.
    """
    setattr(fn, _ENDPOINT_MARK, True)
    return fn


class Dependency:
    """A dependency slot: a class attribute the runtime fills with a client."""

    def __init__(
        self,
        *,
        strategy: str | None = None,
        calls: Sequence[EndpointRef[Any, Any]] = (),
        may_call: Sequence[EndpointRef[Any, Any]] = (),
    ) -> None:
        self.slot = ""
        self.strategy = strategy
        self.calls = tuple(calls)
        self.may_call = tuple(may_call)

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = name

    @overload
    def __get__(self, obj: None, owner: type) -> Dependency: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Client: ...
    def __get__(self, obj: object | None, owner: type) -> Dependency | Client:
        if obj is None:
            return self
        clients: dict[str, Client] = obj.__dict__.get("_dyn_clients", {})
        try:
            return clients[self.slot]
        except KeyError:
            raise AttributeError(
                f"dependency {self.slot!r} of {type(obj).__name__} is not wired; "
                "the graph must list it under depends_on"
            ) from None


def depends(
    *,
    strategy: str | None = None,
    calls: Sequence[EndpointRef[Any, Any]] = (),
    may_call: Sequence[EndpointRef[Any, Any]] = (),
) -> Dependency:
    """Declare a dependency slot, optionally with a default routing strategy.

    ``calls`` names the endpoints the component calls through the slot, for
    ``dyn graph validate`` to check against the component the graph wires to it: each
    must be served, with the same types. ``may_call`` names endpoints it calls only on
    instances that serve them (a processor follows ``kv_events`` where a worker
    publishes them): a wired component need not serve them, but where it does, the types
    must match. On an instance the slot reads as its :class:`~dyn.runtime.client.Client`.
    """
    return Dependency(strategy=strategy, calls=calls, may_call=may_call)


class EndpointTypes(NamedTuple):
    """An endpoint's request and item types as its signature declares them; ``None``
    where it declares none or ``Any``."""

    request: Any
    item: Any


_ITERATORS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.AsyncIterable,
)


def _declared_types(role: type, name: str, fn: Callable[..., Any]) -> EndpointTypes:
    """Evaluate a handler's request and return annotations one by one, so that a name
    imported only for type checking elsewhere in the signature (``ctx: Context``) does
    not matter. One that cannot be evaluated is an error: ignoring it would silently
    turn off the request's validation and the graph's check of the endpoint."""
    params = list(inspect.signature(fn).parameters.values())
    annotations = getattr(fn, "__annotations__", {})

    def resolve(param: str | None, what: str) -> Any:
        hint = annotations.get(param) if param else None
        if isinstance(hint, str):
            try:
                # The text is the role's own source annotation, evaluated in its module as
                # typing.get_type_hints would; nothing here comes from a peer.
                hint = eval(hint, getattr(fn, "__globals__", {}))
            except Exception as exc:
                raise PluginError(
                    f"role {role.__module__}:{role.__qualname__}, endpoint {name!r}: cannot "
                    f"resolve the {what} annotation {hint!r} ({type(exc).__name__}: {exc}); "
                    "import the types an endpoint's signature names at run time, not only "
                    "under TYPE_CHECKING"
                ) from exc
        return None if hint is Any else hint

    request = resolve(params[1].name if len(params) > 1 else None, "request")
    returned = resolve("return", "return")
    item = None
    if get_origin(returned) in _ITERATORS:
        args = get_args(returned)
        item = None if not args or args[0] is Any else args[0]
    return EndpointTypes(request, item)


class ComponentInfo(msgspec.Struct, frozen=True):
    """Where an instance of a component lives, as the runtime sees it."""

    namespace: str
    component: str
    instance_id: str
    replica: int = 0
    node: str = "local"


class Component(Generic[ConfigT]):
    """Base class of every role. Subclasses set their config type as the type argument.

    A role also declares what it is, so that the graph, the CLI and the launchers ask it
    instead of knowing roles by name. The class attributes and class methods below are
    that declaration (the graph sees them as :class:`~dyn.graph.roles.RoleClass`); each
    default describes a role that serves no HTTP of its own.
    """

    config_type: ClassVar[type[msgspec.Struct]] = EmptyConfig
    # Takes whatever dependencies the graph wires to it (and calls them by slot or
    # component name) instead of declaring slots with depends().
    open_dependencies: ClassVar[bool] = False
    # Listens for HTTP itself: launchers stop it first (so no new request enters while
    # the rest drains) and report its ``url`` attribute as the graph's URL.
    serves_http: ClassVar[bool] = False
    # Serves the admin routes that `dyn status` and `dyn route` call.
    admin_routes: ClassVar[bool] = False
    # Its config depends on which replica it is (a proxy worker's upstreams[i]): a
    # cluster must give each replica a stable index (dyn export k8s: a StatefulSet).
    uses_replica_index: ClassVar[bool] = False
    # The config field `dyn up --port` sets, if the role takes one; its replicas would
    # share that port, so `dyn scale` refuses to add any.
    port_field: ClassVar[str | None] = None
    # The auto process layout may run one replica in each of several processes that
    # share the HTTP port (docs/process-layout.md): true of roles that keep no state
    # another replica needs, or that share it (a frontend, a processor's synced router).
    scales_with_cores: ClassVar[bool] = False
    # A request body to show users (`dyn up` prints a curl line with it).
    example_request: ClassVar[dict[str, Any] | None] = None
    config: ConfigT
    info: ComponentInfo
    # Set by the launcher before start(): the runtime serving this instance.
    runtime: Runtime
    # A logger whose lines carry the role's name and replica.
    log: logging.LoggerAdapter[logging.Logger]
    # The graph's served model, if it names one; set by the launcher before start().
    model: ModelSpec | None = None
    # What the launch passes besides the graph (keys, log format); set by the launcher.
    run_settings: Settings = Settings()
    # Filled by endpoint_types(), per class.
    _dyn_endpoint_types: ClassVar[dict[str, EndpointTypes]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Component:
                (arg,) = get_args(base)
                if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                    cls.config_type = arg

    def __init__(self, config: ConfigT, info: ComponentInfo, clients: dict[str, Client]) -> None:
        self.config = config
        self.info = info
        self.log = role_logger(info.component, info.replica)
        self._dyn_clients = dict(clients)

    @property
    def clients(self) -> Mapping[str, Client]:
        """The clients the launcher wired to this instance, by slot or component name
        (what a role with ``open_dependencies`` calls)."""
        return MappingProxyType(self._dyn_clients)

    @classmethod
    def endpoints(cls) -> dict[str, str]:
        """Endpoint name → method name, in definition order."""
        found: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if getattr(value, _ENDPOINT_MARK, False):
                    found[name] = name
        return found

    @classmethod
    def endpoint_types(cls) -> dict[str, EndpointTypes]:
        """Endpoint name → the request and item types its signature declares.

        Raises :class:`~dyn.errors.PluginError` naming the role, the endpoint and the
        annotation when a request or return annotation cannot be evaluated."""
        cached: dict[str, EndpointTypes] | None = cls.__dict__.get("_dyn_endpoint_types")
        if cached is None:
            cached = {
                name: _declared_types(cls, name, getattr(cls, method))
                for name, method in cls.endpoints().items()
            }
            cls._dyn_endpoint_types = cached
        return cached

    @classmethod
    def dependency_slots(cls) -> dict[str, Dependency]:
        """Slot name → declaration, for every :func:`depends` attribute."""
        slots: dict[str, Dependency] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Dependency):
                    slots[value.slot] = value
        return slots

    @classmethod
    def route_targets(cls, config: Any) -> dict[str, str]:
        """HTTP path -> ``component/endpoint`` for the routes this config serves (for a
        role that serves HTTP; `dyn up` shows an example request for each target)."""
        return {}

    @classmethod
    def admin_token_required(cls, config: Any) -> bool:
        """Whether this config serves admin routes that only a token may call (e.g. it
        listens beyond loopback) and sets no token of its own: `dyn up` then makes one."""
        return False

    @classmethod
    def check_wiring(cls, config: Any, wiring: Wiring) -> list[ConfigProblem]:
        """Problems of ``config`` given what the component is wired to, each as (path
        below ``config``, message). Called once every component of a graph was read."""
        return []

    @classmethod
    def request_token_limit(cls, config: Any) -> tuple[int, str] | None:
        """The most tokens (prompt plus output) one request can hold on an instance with
        ``config``, and how ``config`` makes that number (for messages); ``None`` when dyn
        knows of no limit (an upstream server, say, keeps its own). A graph's
        ``model.max_model_len`` may not exceed it."""
        return None

    @classmethod
    def config_summary(cls, config: Any) -> list[str]:
        """The lines `dyn graph show` prints for ``config``: the fields not at their
        defaults, ``name = value``."""
        return [f"{key} = {value!r}" for key, value in non_default_fields(config).items()]

    @classmethod
    def replicas_in_step(cls, config: Any) -> bool:
        """Whether replicas with ``config`` keep what they need of each other in step, so
        that the auto layout may run one per front process (asked only of roles that
        scale with cores)."""
        return True

    @classmethod
    def replicated_config(cls, config: Any) -> Any:
        """``config`` for one of several replicas the auto layout runs side by side, one
        per process (only asked of roles that scale with cores): e.g. a frontend's
        replicas share its port."""
        return config

    def metadata(self) -> dict[str, Any]:
        """Facts published with this instance's discovery entries (e.g. a block size)."""
        return {}

    async def start(self) -> None:
        """Called once the dependencies are wired, before the endpoints are registered."""

    async def run(self) -> None:
        """A long-running task for the component's lifetime (the frontend serves HTTP here).

        Returning early is fine; cancellation ends it at shutdown.
        """

    def ready(self) -> bool:
        """Whether the component is ready to take traffic (the launcher waits for it)."""
        return True

    async def drain(self) -> None:
        """Stop taking new work and wait for the work in flight. Called before shutdown."""

    async def stop(self) -> None:
        """Release resources. Called after the endpoints are deregistered."""


def non_default_fields(config: msgspec.Struct) -> dict[str, Any]:
    """The config fields whose values differ from their defaults, by their YAML names."""
    changed: dict[str, Any] = {}
    for field in msgspec.structs.fields(config):
        value = getattr(config, field.name)
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = msgspec.NODEFAULT  # required: always worth showing
        if value != default:
            changed[field.encode_name] = value
    return changed
