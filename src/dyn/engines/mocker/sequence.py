"""One request's state inside the mocker: its context, blocks and progress."""

from __future__ import annotations

from dataclasses import dataclass, field

from dyn.engines.base import EngineRequest, TokenLogprob
from dyn.engines.mocker.sampling import TokenSampler
from dyn.kv.hashing import local_block_hashes, sequence_hashes

__all__ = ["ScheduledSequence", "chain_hash"]


def chain_hash(parent: int | None, local: int) -> int:
    """The sequence hash of a block with local hash ``local`` following ``parent``."""
    if parent is None:
        return local
    # sequence_hashes([p, l]) is [p, xxh3(p || l)]: the chaining step, defined in one place.
    return sequence_hashes([parent, local])[1]


@dataclass(eq=False, slots=True)
class ScheduledSequence:
    """A request as the scheduler sees it.

    ``context`` is the prompt plus every token generated so far. Its first ``n_hashed``
    full blocks are held as hashed blocks; ``n_private`` more slots are held unhashed.
    ``computed`` counts the context tokens whose KV is in the cache; a sequence decodes
    once ``computed == len(context)`` (``decoding``), which after a preemption means once
    it has recomputed its prompt and the tokens generated so far.
    """

    request: EngineRequest
    arrived: float
    block_size: int
    sampler: TokenSampler
    context: list[int] = field(init=False)
    local: list[int] = field(init=False)  # local hash of each full block of context
    hashes: list[int] = field(init=False)  # sequence hash of each full block of context
    n_hashed: int = 0
    n_private: int = 0
    computed: int = 0
    generated: int = 0
    cached_tokens: int = 0  # at the latest admission; reported with the first token
    decoding: bool = False
    running: bool = False
    logprob: TokenLogprob | None = None  # of the latest token, when the request asks

    def __post_init__(self) -> None:
        self.context = list(self.request.tokens)
        self.local = local_block_hashes(self.context, self.block_size)
        self.hashes = sequence_hashes(self.local)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def blocks_held(self) -> int:
        return self.n_hashed + self.n_private

    def append(self, token: int) -> bool:
        """Add a generated token; True if it filled a block (now hashed in ``hashes``)."""
        self.context.append(token)
        self.sampler.push(token)
        self.generated += 1
        self.computed += 1
        if len(self.context) % self.block_size:
            return False
        local = local_block_hashes(self.context[-self.block_size :], self.block_size)[0]
        self.local.append(local)
        self.hashes.append(chain_hash(self.hashes[-1] if self.hashes else None, local))
        return True

    def reset(self) -> None:
        """Forget what the cache held (preempted): recompute the context on readmission."""
        self.n_hashed = self.n_private = self.computed = 0
        self.decoding = self.running = False
