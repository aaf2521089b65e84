"""``dyn bench --sim``: engine settings, the workload as token ids, one arm per strategy.

The workers' settings come from a graph's worker component (the one whose config is the
mocker's) and its processor's strategy, then from flags; vocabulary and end-of-sequence
id come from the model's tokenizer, as a worker sets them. Text workloads are encoded
with that tokenizer; a Mooncake trace is replayed at block level, each 512-token hash id
standing for 512 token ids made from the id alone, so equal ids give equal tokens and no
text is made at all.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import msgspec

from dyn import plugins
from dyn.bench.sim import SimRequest, Simulator
from dyn.bench.stats import DEFAULT_PERCENTILES, shares, summarize
from dyn.bench.workloads import MOONCAKE_BLOCK_TOKENS, TraceRecord, WorkItem, trace_records
from dyn.engines.mocker.config import FixedMs, FixedTiming, MockerConfig
from dyn.errors import DynError
from dyn.routing.kv.router import KvRouter
from dyn.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_WORKERS",
    "BlockTokens",
    "SimSetup",
    "parse_timing",
    "sim_setup",
    "simulate",
    "text_requests",
    "trace_requests",
]

DEFAULT_WORKERS = 4  # as graphs/kv_routing.yaml, when no graph says otherwise


@dataclass(frozen=True)
class SimSetup:
    """Everything about the simulated deployment that is not the workload."""

    mocker: MockerConfig = field(default_factory=MockerConfig)
    workers: int = DEFAULT_WORKERS
    strategy: str = "kv"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None  # the router's; None: the benchmark's --seed
    max_model_len: int | None = None
    tokenizer: str | None = None
    routers: int = 1  # processor replicas, fed in turn
    router_sync: bool = True  # replica sync between them (kv strategies only)
    sync_delay_s: float = 0.0  # how late a sync batch reaches the other routers


def parse_timing(text: str) -> Literal["polynomial"] | FixedTiming:
    """``polynomial`` or ``fixed:PREFILL_MS,DECODE_MS``."""
    if text == "polynomial":
        return "polynomial"
    kind, _, values = text.partition(":")
    parts = values.split(",")
    if kind == "fixed" and len(parts) == 2:
        try:
            prefill, decode = (float(part) for part in parts)
        except ValueError:
            pass
        else:
            if prefill >= 0 and decode >= 0:
                return FixedTiming(fixed=FixedMs(prefill_ms=prefill, decode_ms=decode))
    raise DynError(f"--timing takes polynomial or fixed:PREFILL_MS,DECODE_MS, got {text!r}")


def sim_setup(
    graph: str | Path | None,
    *,
    workers: int | None = None,
    mocker: Mapping[str, Any] | None = None,
) -> tuple[SimSetup, Tokenizer]:
    """The graph's worker and processor settings (defaults without a graph), with the
    ``mocker`` fields given as flags on top, and the model's tokenizer, whose vocabulary
    the workers sample from (as a worker does)."""
    from dyn.tokenizer import load_tokenizer

    base = _from_graph(graph) if graph is not None else SimSetup()
    tokenizer = load_tokenizer(base.tokenizer)
    # The engine's own fields only: a worker's config adds serving settings (max_queued).
    fields = {name: getattr(base.mocker, name) for name in MockerConfig.__struct_fields__}
    fields |= dict(mocker or {})
    fields.update(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    try:
        config = msgspec.convert(fields, MockerConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise DynError(f"invalid worker settings: {exc}") from exc
    count = workers if workers is not None else base.workers
    if count < 1:
        raise DynError(f"--workers must be at least 1, got {count}")
    return replace(base, mocker=config, workers=count), tokenizer


def _from_graph(path: str | Path) -> SimSetup:
    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class
    from dyn.roles.processor import ProcessorConfig

    spec = load_graph(path, resolve_role=role_class)
    worker = next((c for c in spec.components if isinstance(c.config, MockerConfig)), None)
    if worker is None or not isinstance(worker.config, MockerConfig):
        raise DynError(f"{path} has no worker component (uses: worker) to simulate")
    processor_spec = next(
        (c for c in spec.components if isinstance(c.config, ProcessorConfig)), None
    )
    processor = processor_spec.config if processor_spec is not None else None
    assert processor is None or isinstance(processor, ProcessorConfig)
    model = spec.model
    return SimSetup(
        mocker=worker.config,
        workers=worker.replicas,
        strategy=processor.strategy if processor else "kv",
        strategy_options=dict(processor.strategy_options) if processor else {},
        seed=processor.seed if processor else None,
        max_model_len=model.max_model_len if model else None,
        tokenizer=model.tokenizer if model else None,
        routers=processor_spec.replicas if processor_spec else 1,
        router_sync=processor.replica_sync if processor else True,
    )


# -- workloads as token ids -------------------------------------------------------------


class BlockTokens:
    """Token ids standing for trace hash ids: ``MOONCAKE_BLOCK_TOKENS`` per id, the bytes
    of SHAKE-128 of the workload seed and the id, so equal ids give equal blocks on any machine.

    Ids are below 256 on purpose: CPython keeps one object per small int, so turning a
    prompt of 15,000 ids into a list allocates nothing per token, which is most of the
    cost of sending it otherwise. 64 such ids still give a block 2**512 possible values.
    """

    CACHE_BLOCKS = 1 << 16  # 512 bytes each; ids mostly repeat nearby anyway

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[int, array[int]] = {}

    def block(self, hash_id: int) -> array[int]:
        block = self._cache.get(hash_id)
        if block is None:
            if len(self._cache) >= self.CACHE_BLOCKS:
                self._cache.clear()
            block = self._cache[hash_id] = _bytes(f"{self.seed}/{hash_id}", MOONCAKE_BLOCK_TOKENS)
        return block

    def prompt(self, record: TraceRecord) -> list[int]:
        """The record's blocks back to back, trimmed to its input length; a record
        longer than its blocks is padded with tokens of its own."""
        tokens = array("B")
        for hash_id in record.hash_ids:
            if len(tokens) >= record.input_len:
                break
            tokens += self.block(hash_id)
        if len(tokens) < record.input_len:
            tokens += _bytes(f"{self.seed}/pad/{record.line_no}", record.input_len - len(tokens))
        return tokens[: record.input_len].tolist()


def _bytes(key: str, count: int) -> array[int]:
    return array("B", hashlib.shake_128(key.encode()).digest(count))


def trace_requests(
    path: str | Path, seed: int, *, speedup: float = 1.0, limit: int | None = None
) -> list[SimRequest]:
    """A Mooncake trace as requests whose prompts are made when sent."""
    blocks = BlockTokens(seed)
    return [
        SimRequest(
            index=n,
            input_len=record.input_len,
            output_len=max(1, record.output_len),
            tokens=_prompt_of(blocks, record),
            arrival_s=record.arrival_s,
        )
        for n, record in enumerate(trace_records(path, speedup=speedup, limit=limit))
    ]


def _prompt_of(blocks: BlockTokens, record: TraceRecord) -> Callable[[], list[int]]:
    return lambda: blocks.prompt(record)


def text_requests(items: Sequence[WorkItem], tokenizer: Tokenizer) -> list[SimRequest]:
    """Workload items encoded as the processor encodes a completion prompt."""
    return [
        SimRequest(
            index=item.index,
            input_len=item.input_len,
            output_len=item.output_len,
            tokens=_constant(tokenizer.encode(item.prompt)),
            arrival_s=item.arrival_s,
            after=item.after,
        )
        for item in items
    ]


def _constant(tokens: list[int]) -> Callable[[], list[int]]:
    return lambda: tokens


# -- one arm ----------------------------------------------------------------------------


def simulate(
    requests: Sequence[SimRequest],
    setup: SimSetup,
    strategy: str,
    *,
    seed: int = 0,
    warmup: Sequence[SimRequest] = (),
    max_concurrency: int | None = None,
    ignore_eos: bool = True,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """One arm: fresh workers and a fresh ``strategy`` router, the warm-up, then the
    measured requests; the result has the live benchmark's keys plus ``sim``."""
    same = plugins.canonical(strategy) == plugins.canonical(setup.strategy)
    options = dict(setup.strategy_options) if same else {}
    router_seed = setup.seed if setup.seed is not None else seed
    router_cls = plugins.load("dyn.routers", strategy)
    # Replicas draw their ties apart, as processors without a configured seed do.
    routers = [router_cls(options or None, seed=router_seed + i) for i in range(setup.routers)]
    synced = setup.router_sync and setup.routers > 1
    for i, router in enumerate(routers):
        if synced and isinstance(router, KvRouter):
            # Bound late: the clock is the simulator's, made just below.
            router.enable_sync(f"router-{i}", clock=lambda: simulator.now)
    simulator = Simulator(
        setup.mocker,
        setup.workers,
        routers,
        max_concurrency=max_concurrency,
        ignore_eos=ignore_eos,
        max_model_len=setup.max_model_len,
        sync_delay_s=setup.sync_delay_s,
    )
    started = time.perf_counter()
    if warmup:
        simulator.run(warmup)
    run = simulator.run(requests)
    wall = time.perf_counter() - started
    decisions = Counter(worker for worker in run.workers if worker)
    return summarize(
        run.results,
        run.duration_s,
        percentiles,
        extra={
            "strategy": plugins.canonical(strategy),
            "worker_request_share": shares(decisions),
            "server_metrics_delta": {
                "dyn_router_decisions_total": float(sum(decisions.values())),
                "dyn_prompt_tokens_total": float(run.prompt_tokens),
                "dyn_cached_prompt_tokens_total": float(run.cached_prompt_tokens),
            },
            "sim": {
                "workers": setup.workers,
                "routers": setup.routers,
                "router_sync": synced and isinstance(routers[0], KvRouter),
                "sync_delay_s": setup.sync_delay_s,
                "wall_s": wall,
                "steps": run.steps,
                "preemptions": run.preemptions,
                "mocker": msgspec.to_builtins(setup.mocker),
            },
            "request_workers": run.workers,
        },
    )
