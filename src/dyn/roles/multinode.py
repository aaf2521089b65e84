"""The classic multi-node example's roles (docs/example-graphs.md): a processor on one
node routes to workers on others.

A request carries ``prompt`` and ``request_id``. The processor waits at
start-up until ``min_workers`` workers are registered, appends ``_ProcessedBy_<node>``,
and routes with ``routing`` (``round_robin`` or ``random``); a worker answers
``prompt + "_GeneratedBy_" + <node>``. ``<node>`` is the node's name in the graph, so the
answer shows which machines a request crossed even when they share a hostname.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from dyn import plugins
from dyn.context import Context
from dyn.errors import BadRequestError, TransportError
from dyn.runtime.component import Component, depends, endpoint

__all__ = [
    "MultinodeProcessor",
    "MultinodeProcessorConfig",
    "MultinodeWorker",
    "MultinodeWorkerConfig",
]


def _prompt_of(request: Any) -> tuple[str, str]:
    if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
        raise BadRequestError("request must be an object with a string field 'prompt'")
    request_id = request.get("request_id")
    if request_id is None:
        request_id = uuid.uuid4().hex
    if not isinstance(request_id, str):
        raise BadRequestError("'request_id' must be a string when given")
    return request["prompt"], request_id


class MultinodeProcessorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    routing: Literal["round_robin", "random"] = "round_robin"
    min_workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Other workers tried when one fails before answering (0: report the failure).
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2


class MultinodeProcessor(Component[MultinodeProcessorConfig]):
    """Tags the prompt with its node and routes it to a worker."""

    worker = depends()
    example_request: ClassVar[dict[str, Any] | None] = {"prompt": "hello", "request_id": "r1"}

    async def start(self) -> None:
        router_cls = plugins.load("dyn.routers", self.config.routing)
        self.worker.set_router(router_cls(None))

    def ready(self) -> bool:
        return len(self.worker.instances()) >= self.config.min_workers

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, str]]:
        prompt, request_id = _prompt_of(request)
        forwarded = {"prompt": f"{prompt}_ProcessedBy_{self.info.node}", "request_id": request_id}
        failed: list[str] = []
        while True:
            stream = self.worker.stream("generate", forwarded, exclude=failed)
            started = False
            try:
                async with stream as items:
                    async for item in items:
                        started = True
                        yield item
                return
            except TransportError:
                # A worker that died before answering (its registration not yet gone)
                # loses nothing: try another one, each at most once.
                if started or stream.instance is None or len(failed) >= self.config.retries:
                    raise
                failed.append(stream.instance.instance_id)


class MultinodeWorkerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class MultinodeWorker(Component[MultinodeWorkerConfig]):
    """Answers with the prompt and the name of the node it runs on."""

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, str]]:
        prompt, request_id = _prompt_of(request)
        yield {"request_id": request_id, "text": f"{prompt}_GeneratedBy_{self.info.node}"}
