"""Typed endpoints: built-in roles declare Structs, and a malformed request is refused
at dispatch with the same error over every transport."""

from __future__ import annotations

from typing import Any, cast

import anyio
import msgspec
import pytest
from _builtin_roles import builtin_roles, signature_types

from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import BadRequestError
from dyn.runtime.component import Component
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.base import Transport
from dyn.transports.grpc import GrpcTransport
from dyn.transports.inproc import InprocTransport
from dyn.transports.tcp import TcpTransport

ENDPOINTS = [
    (role, name, method) for role in builtin_roles() for name, method in role.endpoints().items()
]


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def test_the_walk_finds_the_roles() -> None:
    names = {role.__qualname__ for role, _, _ in ENDPOINTS}
    assert {"Worker", "Processor", "Router", "PrefillQueueRole", "DecodeWorker"} <= names
    assert len(ENDPOINTS) >= 29


@pytest.mark.parametrize(
    ("role", "name", "method"), ENDPOINTS, ids=[f"{r.__qualname__}.{n}" for r, n, _ in ENDPOINTS]
)
def test_builtin_endpoints_declare_structs(
    role: type[Component[Any]], name: str, method: str
) -> None:
    request, item = signature_types(role, method)
    assert _is_struct(request), f"{role.__qualname__}.{name} takes {request!r}"
    assert _is_struct(item), f"{role.__qualname__}.{name} yields {item!r}"
    # What the runtime reads agrees with typing.get_type_hints.
    assert role.endpoint_types()[name] == (request, item)


def _malformed(request_type: type[msgspec.Struct]) -> tuple[dict[str, Any] | list[int], str]:
    """A body wrong in its first field (or not an object at all), and the error."""
    fields = request_type.__struct_fields__
    body: dict[str, Any] | list[int] = {fields[0]: [["x"]]} if fields else [1]
    try:
        msgspec.convert(body, request_type)
    except msgspec.ValidationError as exc:
        return body, str(exc)
    raise AssertionError(f"{body!r} is a valid {request_type.__name__}")


TRANSPORTS: dict[str, type[Transport]] = {
    "inproc": InprocTransport,
    "tcp": TcpTransport,
    "grpc": GrpcTransport,
}


@pytest.mark.anyio
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_malformed_request_is_refused_naming_the_field(transport: str) -> None:
    discovery = MemoryDiscovery()
    make: type[Transport] = TRANSPORTS[transport]
    seen: dict[str, str] = {}
    with anyio.fail_after(30):
        async with (
            Runtime(namespace="t", transport=make(), discovery=discovery) as server,
            Runtime(namespace="t", transport=make(), discovery=discovery) as caller,
        ):
            for index, (role, name, method) in enumerate(ENDPOINTS):
                component = f"c{index}"
                # Never started: the request must be refused before the handler runs.
                instance = role(cast(Any, None), component_info("t", component), {})
                await server.serve_component(instance)
                client = caller.client(component)
                await client.wait_for_instances(name)
                request_type, _ = signature_types(role, method)
                body, error = _malformed(request_type)
                if fields := request_type.__struct_fields__:
                    assert f"$.{fields[0]}" in error  # the message names the field
                with pytest.raises(BadRequestError) as caught:
                    async with client.stream(name, body) as items:
                        _ = [item async for item in items]
                assert caught.value.message == f"{name}: {error}"
                seen[f"{role.__qualname__}.{name}"] = caught.value.message
    assert len(seen) == len(ENDPOINTS)
