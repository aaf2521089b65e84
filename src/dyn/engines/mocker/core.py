"""The mocker's pure core: continuous batching over a simulated KV cache.

No I/O, no clock: the caller passes ``now`` and advances its clock by each step's
``duration_s`` (real time in :class:`~dyn.engines.mocker.engine.MockerEngine`, virtual
time in the simulator). One :meth:`MockerCore.step` is one forward pass of the engine:

1. every decoding sequence gets one token of the step's budget; one whose next token
   starts a new block takes a slot, preempting the most recently admitted running
   sequence (LIFO, possibly itself) while none can be had;
2. sequences still prefilling continue, then waiting ones are admitted (FCFS, up to
   ``max_num_seqs`` running, while their blocks fit under the watermark) and prefill
   their uncached tokens, chunked across steps if the budget runs out;
3. each decoding sequence, and each whose prefill completed, emits one token; finished
   sequences release their blocks.

A sequence ends at ``max_tokens`` ("length") or, unless the request sets ``ignore_eos``,
at an end-of-sequence token ("stop"): the sampled token may be ``eos_token_id``, and at
each position the sampler's digest decides whether the output ends there, so that
lengths follow ``output_length`` (see ``lengths.py``); never before ``min_tokens``.

A preempted sequence goes back to the front of the queue and later recomputes its prompt
plus the tokens it generated (often mostly from the prefix cache); its output continues
where it stopped. Step cost is O(batch), plus O(tokens) for what is admitted or hashed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.mocker.blocks import BlockManager, EventData
from dyn.engines.mocker.config import MockerConfig
from dyn.engines.mocker.lengths import STOP_BITS, stop_thresholds
from dyn.engines.mocker.logprobs import simulated_logprobs
from dyn.engines.mocker.sampling import TokenSampler, sampling_seed
from dyn.engines.mocker.sequence import ScheduledSequence
from dyn.engines.mocker.timing import StepTiming
from dyn.errors import BadRequestError
from dyn.kv.events import KvCleared, KvEvent, WorkerLoad
from dyn.kv.hashing import local_block_hashes, sequence_hashes

__all__ = ["DecodeRun", "MockerCore", "StepResult"]


@dataclass(slots=True)
class StepResult:
    """What one step did. ``outputs`` holds one token per sequence that produced one."""

    duration_s: float
    outputs: list[tuple[str, EngineOutput]] = field(default_factory=list)
    events: list[KvEvent] = field(default_factory=list)
    prefill_tokens: int = 0  # uncached prompt tokens computed
    decoded: int = 0  # sequences that decoded (not counting first tokens)


@dataclass(slots=True)
class DecodeRun:
    """What :meth:`MockerCore.decode_steps` did: every sequence of the batch produced one
    token per step (``tokens``, by request id), some finished in the last step."""

    durations: list[float] = field(default_factory=list)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)  # request id -> finish reason
    events: list[KvEvent] = field(default_factory=list)


class MockerCore:
    """A simulated engine, advanced one step at a time by its caller.

    Event ids start at 1 and increase by one per event for the core's whole life
    (steps and :meth:`clear`). Counters: ``prompt_tokens_total`` and
    ``cached_prompt_tokens_total`` (counted when a request emits its first token) and
    ``preemptions_total``.
    """

    def __init__(self, config: MockerConfig) -> None:
        self.config = config
        self.now = 0.0  # the caller's clock at the last add or step
        self.prompt_tokens_total = 0
        self.cached_prompt_tokens_total = 0
        self.preemptions_total = 0
        self._blocks = BlockManager(config.num_gpu_blocks, config.admit_limit)
        self._timing = StepTiming(config)
        self._live: dict[str, ScheduledSequence] = {}
        self._waiting: deque[ScheduledSequence] = deque()
        self._running: dict[str, ScheduledSequence] = {}  # in admission order: LIFO preemption
        self._decode_context = 0  # sum of len(context) over decoding sequences
        self._next_event_id = 1
        lengths = config.output_length
        self._stop_at = stop_thresholds(lengths.median, lengths.sigma) if lengths else ()

    # -- requests ------------------------------------------------------------------------

    def add(self, request: EngineRequest, now: float) -> None:
        """Queue ``request``. Raises :class:`BadRequestError` if it can never run."""
        config = self.config
        if request.request_id in self._live:
            raise BadRequestError(f"request id {request.request_id!r} is already running")
        if request.max_tokens < 1:
            raise BadRequestError(f"max_tokens must be at least 1, got {request.max_tokens}")
        tokens = request.tokens
        needed = -(-(len(tokens) + request.max_tokens) // config.block_size)
        if needed > config.admit_limit:
            raise BadRequestError(
                f"request needs {needed} KV blocks ({len(tokens)} prompt tokens + "
                f"max_tokens {request.max_tokens}, {config.block_size} per block) but this "
                f"engine admits at most {config.admit_limit}; shorten the request or raise "
                f"num_gpu_blocks"
            )
        try:
            # Packing the prompt as u32 checks every id in one pass (min/max took two).
            seed = sampling_seed(config.seed, request.seed)
            sampler = TokenSampler(seed, config.vocab_size, tokens)
        except OverflowError:
            raise BadRequestError("token ids must be between 0 and 2**32 - 1") from None
        self.now = now
        sequence = ScheduledSequence(request, now, config.block_size, sampler)
        self._live[request.request_id] = sequence
        self._waiting.append(sequence)

    def cancel(self, request_id: str) -> bool:
        """Drop a request and free its blocks now; False if it is not running or queued."""
        sequence = self._live.pop(request_id, None)
        if sequence is None:
            return False
        if sequence.running:
            self._unschedule(sequence)
        else:
            self._waiting.remove(sequence)
        return True

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    # -- the step ------------------------------------------------------------------------

    def step(self, now: float) -> StepResult:
        """Run one forward pass starting at ``now``; see the module docstring."""
        self.now = now
        config = self.config
        decoders = [
            sequence
            for sequence in list(self._running.values())
            if sequence.running and sequence.decoding and self._reserve_next(sequence)
        ]
        budget = config.max_num_batched_tokens - len(decoders)
        decode_context = self._decode_context
        prefills: list[tuple[ScheduledSequence, int]] = []
        prefill_tokens = 0
        for sequence in self._running.values():
            if not sequence.decoding and budget > 0:
                chunk = min(len(sequence.context) - sequence.computed, budget)
                prefills.append((sequence, chunk))
                budget -= chunk
                prefill_tokens += chunk
        while self._waiting and len(self._running) < config.max_num_seqs:
            first = self._admit(self._waiting[0], budget, prefill_tokens)
            if first is None:
                break
            prefills.append((self._waiting.popleft(), first))
            budget -= first
            prefill_tokens += first

        result = StepResult(
            duration_s=self._timing.duration_s(prefill_tokens, len(decoders), decode_context),
            prefill_tokens=prefill_tokens,
            decoded=len(decoders),
        )
        for sequence in decoders:
            self._emit(sequence, result.outputs)
        for sequence, chunk in prefills:
            sequence.computed += chunk
            self._commit_computed(sequence)
            if sequence.computed == len(sequence.context):
                sequence.decoding = True
                self._decode_context += len(sequence.context)
                self._emit(sequence, result.outputs)
        result.events = self._number(self._blocks.take_events())
        return result

    def decode_steps(self, now: float, until: float) -> DecodeRun | None:
        """Further steps from ``now``, back to back, while the batch only decodes.

        Each step does exactly what :meth:`step` would; what this adds is knowing its
        duration before taking it, which holds while nothing waits, every running
        sequence decodes and none needs preempting, so a virtual-time caller can skip
        over an unchanged batch in one call without a result object per token. Steps
        start before ``until`` and end by it; the run stops after a step in which a
        request finished. ``None`` when the batch is not decode-only.
        """
        running = self._running
        if self._waiting or not running or not all(s.decoding for s in running.values()):
            return None
        batch = list(running.values())
        run = DecodeRun(tokens={s.request_id: [] for s in batch})
        outputs = [(s, run.tokens[s.request_id]) for s in batch]
        durations, finished = run.durations, run.finished
        block_size = self.config.block_size
        blocks, advance, decode_s = self._blocks, self._advance, self._timing.decode_only_s
        while now < until:
            # Sequences starting a new block each take a slot; if even eviction cannot
            # give them all one, step() would preempt and change the batch.
            starting = [s for s in batch if not len(s.context) % block_size]
            if starting and len(starting) > blocks.free + blocks.inactive:
                break
            duration = decode_s(self._decode_context)
            if now + duration > until:
                break
            for sequence in starting:  # in batch order, as step() reserves them
                blocks.allocate(1)
                sequence.n_private += 1
            for sequence, tokens in outputs:
                token, finish = advance(sequence)
                tokens.append(token)
                if finish is not None:
                    finished[sequence.request_id] = finish
            durations.append(duration)
            self.now = now
            now += duration
            if finished:
                break
        run.events = self._number(blocks.take_events())
        return run

    def _reserve_next(self, sequence: ScheduledSequence) -> bool:
        """Make room for the sequence's next token; False if it had to be preempted."""
        if len(sequence.context) % self.config.block_size:
            return True  # the last block still has room
        while not self._blocks.allocate(1):
            victim = next(reversed(self._running.values()))
            self._unschedule(victim)
            victim.reset()
            self._waiting.appendleft(victim)
            self.preemptions_total += 1
            if victim is sequence:
                return False
        sequence.n_private += 1
        return True

    def _admit(self, sequence: ScheduledSequence, budget: int, prefill_tokens: int) -> int | None:
        """Admit the head of the queue; returns its first chunk, or None if it must wait."""
        config = self.config
        hit = self._blocks.match(sequence.hashes) if config.enable_prefix_caching else 0
        cached = hit * config.block_size
        uncached = len(sequence.context) - cached
        if config.enable_chunked_prefill:
            if uncached > 0 and budget <= 0:
                return None
            chunk = min(uncached, budget)
        else:
            # A prompt larger than the whole budget would never fit: it runs alone.
            alone = prefill_tokens == 0 and uncached > config.max_num_batched_tokens
            if uncached > budget and not alone:
                return None
            chunk = uncached
        # Room for the context and the token the prefill ends with.
        needed = -(-(len(sequence.context) + 1) // config.block_size)
        cached_hashes = sequence.hashes[:hit]
        if not self._blocks.can_admit(cached_hashes, needed - hit):
            return None
        self._blocks.acquire(cached_hashes)
        if not self._blocks.allocate(needed - hit):
            raise AssertionError("admitted blocks must fit")  # can_admit checked this
        sequence.n_hashed, sequence.n_private = hit, needed - hit
        sequence.computed = sequence.cached_tokens = cached
        sequence.running = True
        self._running[sequence.request_id] = sequence
        return chunk

    def _emit(self, sequence: ScheduledSequence, outputs: list[tuple[str, EngineOutput]]) -> None:
        token, finish = self._advance(sequence)
        cached = sequence.cached_tokens if sequence.generated == 1 else 0
        logprob = sequence.logprob
        output = EngineOutput(
            tokens=[token],
            finish_reason=finish,
            cached_tokens=cached,
            logprobs=None if logprob is None else [logprob],
        )
        outputs.append((sequence.request_id, output))

    def _advance(self, sequence: ScheduledSequence) -> tuple[int, str | None]:
        """Generate the sequence's next token; its finish reason if that ended it (its
        blocks are then released)."""
        request, config = sequence.request, self.config
        digest = sequence.sampler.digest()
        token = digest % config.vocab_size
        stops = False
        if not request.ignore_eos:
            if sequence.generated < request.min_tokens:
                if token == config.eos_token_id:
                    # Like vLLM, end-of-sequence is suppressed until min_tokens.
                    token = (token + 1) % config.vocab_size
            elif token == config.eos_token_id:
                stops = True
            elif self._stop_at:
                # The output position, counting what an earlier attempt generated.
                n = request.prior_output_tokens + sequence.generated + 1
                stop_at = self._stop_at
                if digest >> (64 - STOP_BITS) < stop_at[min(n, len(stop_at) - 1)]:
                    token, stops = config.eos_token_id, True
        if request.logprobs is not None:
            sequence.logprob = simulated_logprobs(
                digest, token, request.logprobs, config.vocab_size
            )
        self._decode_context += 1
        if sequence.append(token):
            self._commit_computed(sequence)
        if sequence.generated == 1:
            self.prompt_tokens_total += len(request.tokens)
            self.cached_prompt_tokens_total += sequence.cached_tokens
        finish = "length" if sequence.generated >= request.max_tokens else None
        if finish is None and stops:
            finish = "stop"
        if finish is not None:
            del self._live[request.request_id]
            self._unschedule(sequence)
        return token, finish

    def _commit_computed(self, sequence: ScheduledSequence) -> None:
        """Hash and publish the sequence's blocks that are now full and computed."""
        if not self.config.enable_prefix_caching:
            return  # without prefix caching nothing is shared, so nothing is published
        full = min(sequence.computed // self.config.block_size, len(sequence.hashes))
        start = sequence.n_hashed
        if full <= start:
            return
        parent = sequence.hashes[start - 1] if start else None
        self._blocks.commit(sequence.hashes[start:full], sequence.local[start:full], parent)
        sequence.n_private -= full - start
        sequence.n_hashed = full

    def _unschedule(self, sequence: ScheduledSequence) -> None:
        """Take a running sequence out of the batch and release its blocks."""
        self._blocks.release(sequence.hashes[: sequence.n_hashed], sequence.n_private)
        if sequence.decoding:
            self._decode_context -= len(sequence.context)
        del self._running[sequence.request_id]
        sequence.running = False

    # -- disaggregated serving -----------------------------------------------------------

    def cached_prefix_tokens(self, tokens: list[int]) -> int:
        """Prompt tokens of ``tokens`` whose blocks are resident now (a prefix match)."""
        if not self.config.enable_prefix_caching:
            return 0
        hashes = sequence_hashes(local_block_hashes(tokens, self.config.block_size))
        return self._blocks.match(hashes) * self.config.block_size

    def import_blocks(self, tokens: list[int], now: float) -> tuple[int, list[KvEvent]]:
        """Make the full blocks of ``tokens`` resident, as if their KV arrived from another
        engine, and return how many are resident and the ``KvStored`` events.

        The blocks land in the inactive pool (cached, held by no request) so that the
        request added next finds them by prefix match, exactly as a local prefix hit.
        Stops short, importing a prefix only, if the cache has no room for them all.
        """
        self.now = now
        if not self.config.enable_prefix_caching:
            return 0, []
        block_size = self.config.block_size
        local = local_block_hashes(tokens, block_size)
        hashes = sequence_hashes(local)
        hit = self._blocks.match(hashes)
        room = self._blocks.free + self._blocks.inactive
        count = min(len(hashes) - hit, room)
        if count > 0 and self._blocks.allocate(count):
            end = hit + count
            parent = hashes[hit - 1] if hit else None
            self._blocks.commit(hashes[hit:end], local[hit:end], parent)
            self._blocks.release(hashes[hit:end], 0)
        else:
            count = 0
        return hit + count, self._number(self._blocks.take_events())

    # -- state for routers and benchmarks ------------------------------------------------

    def load(self) -> WorkerLoad:
        prompt = self.prompt_tokens_total
        return WorkerLoad(
            active_blocks=self._blocks.active,
            total_blocks=self.config.num_gpu_blocks,
            waiting=len(self._waiting),
            running=len(self._running),
            prefix_hit_rate=self.cached_prompt_tokens_total / prompt if prompt else 0.0,
        )

    @property
    def inactive_blocks(self) -> int:
        """Cached blocks no request holds: what :meth:`clear` would drop."""
        return self._blocks.inactive

    def snapshot(self) -> list[KvEvent]:
        """The whole cache as events: ``KvCleared``, then ``KvStored`` parents first.

        Consumes no ids: every event carries the id of the last event already emitted
        (0 before any), which the snapshot includes, so the next live event is that + 1.
        """
        last = self._next_event_id - 1
        events = [KvEvent(event_id=last, data=KvCleared())]
        events.extend(KvEvent(event_id=last, data=stored) for stored in self._blocks.stored())
        return events

    def clear(self) -> list[KvEvent]:
        """Drop every inactive cached block, e.g. between benchmark arms.

        Meant for an idle engine, where it empties the cache and emits ``KvCleared``. While
        requests run their blocks stay and the dropped ones are reported as ``KvRemoved``.
        """
        self._blocks.clear()
        return self._number(self._blocks.take_events())

    def check(self) -> None:
        """Assert the block accounting invariants (for tests; O(resident blocks))."""
        self._blocks.check()
        running = list(self._running.values())
        assert sum(s.n_private for s in running) == self._blocks.private
        held = Counter(h for s in running for h in s.hashes[: s.n_hashed])
        assert held == self._blocks.active_refs()
        assert all(s.blocks_held == 0 and not s.running for s in self._waiting)
        assert self._decode_context == sum(len(s.context) for s in running if s.decoding)
        assert set(self._live) == set(self._running) | {s.request_id for s in self._waiting}

    def _number(self, data: list[EventData]) -> list[KvEvent]:
        first = self._next_event_id
        self._next_event_id += len(data)
        return [KvEvent(event_id=first + i, data=item) for i, item in enumerate(data)]
