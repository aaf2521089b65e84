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
from dyn.contracts.demo import MULTINODE_GENERATE, MultinodeReply, MultinodeRequest
from dyn.errors import TransportError
from dyn.runtime.component import Component, depends, endpoint

__all__ = [
    "MultinodeProcessor",
    "MultinodeProcessorConfig",
    "MultinodeWorker",
    "MultinodeWorkerConfig",
]


def _request_id(request: MultinodeRequest) -> str:
    return request.request_id if request.request_id is not None else uuid.uuid4().hex


class MultinodeProcessorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    routing: Literal["round_robin", "random"] = "round_robin"
    min_workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Other workers tried when one fails before answering (0: report the failure).
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2


class MultinodeProcessor(Component[MultinodeProcessorConfig]):
    """Tags the prompt with its node and routes it to a worker."""

    worker = depends(calls=(MULTINODE_GENERATE,))
    example_request: ClassVar[dict[str, Any] | None] = {"prompt": "hello", "request_id": "r1"}

    async def start(self) -> None:
        router_cls = plugins.load("dyn.routers", self.config.routing)
        self.worker.set_router(router_cls(None))

    def ready(self) -> bool:
        return len(self.worker.instances()) >= self.config.min_workers

    @endpoint
    async def generate(
        self, request: MultinodeRequest, ctx: Context
    ) -> AsyncIterator[MultinodeReply]:
        prompt = f"{request.prompt}_ProcessedBy_{self.info.node}"
        forwarded = MultinodeRequest(prompt=prompt, request_id=_request_id(request))
        failed: list[str] = []
        while True:
            stream = self.worker.stream(MULTINODE_GENERATE, forwarded, exclude=failed)
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
    async def generate(
        self, request: MultinodeRequest, ctx: Context
    ) -> AsyncIterator[MultinodeReply]:
        text = f"{request.prompt}_GeneratedBy_{self.info.node}"
        yield MultinodeReply(request_id=_request_id(request), text=text)
