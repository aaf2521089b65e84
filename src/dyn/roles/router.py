"""The standalone ``router`` role: "which worker is best for these tokens?".

As in Dynamo's disaggregated example (docs/example-graphs.md), a graph may give routing
a role of its own: it follows every worker's KV events exactly as a processor does and
answers ``best_worker`` with the worker a request should go to and the share of its
prompt that worker already holds, without sending anything. It inherits the processor's
admin endpoints (``route_info``, ``set_strategy``, ``explain``), so ``dyn route`` works
against it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from dyn.context import Context
from dyn.contracts.processor import BestWorker, BestWorkerRequest
from dyn.errors import BadRequestError
from dyn.roles.processor import Processor
from dyn.routing.base import RouteRequest
from dyn.runtime.component import endpoint

__all__ = ["Router"]


class Router(Processor):
    """Answers ``best_worker`` for ``{"tokens": [...]}`` or ``{"text": ...}``."""

    @endpoint
    async def best_worker(
        self, request: BestWorkerRequest, ctx: Context
    ) -> AsyncIterator[BestWorker]:
        tokens = request.tokens
        if tokens is None and request.text is not None:
            tokens = self.tokenizer.encode(request.text)
        if tokens is None:
            raise BadRequestError("best_worker needs {'tokens': [int, ...]} or {'text': str}")
        candidates = self.worker.instances("generate")
        if not candidates:
            yield BestWorker(worker_id=None, estimated_prefix_hit_rate=0.0)
            return
        scores = self.worker.router.explain(candidates, RouteRequest(ctx.request_id, tokens))
        best = next((s for s in scores if s.chosen), min(scores, key=lambda s: s.cost))
        block_size = int(candidates[0].metadata.get("block_size", 1) or 1)
        cached = min(len(tokens), best.overlap_blocks * block_size)
        yield BestWorker(
            worker_id=best.instance_id,
            estimated_prefix_hit_rate=cached / len(tokens) if tokens else 0.0,
            overlap_blocks=best.overlap_blocks,
            strategy=self.strategy,
        )
