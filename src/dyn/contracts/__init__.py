"""The messages roles exchange, and typed references to the endpoints that take them.

One module per contract: :mod:`~dyn.contracts.engine` (what every worker serves),
:mod:`~dyn.contracts.processor` (a processor's and the router role's endpoints),
:mod:`~dyn.contracts.disagg` (the prefill queue and a decode worker's extra endpoints),
:mod:`~dyn.contracts.demo` (the hello and multi-node roles). These modules import no
runtime and no transport, so anything may name a contract. Messages are frozen msgspec
Structs: in-process calls hand them over by reference.
"""

from __future__ import annotations

from dyn.contracts.base import Empty, EndpointRef, Text

__all__ = ["Empty", "EndpointRef", "Text"]
