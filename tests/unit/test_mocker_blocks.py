"""Block accounting invariants under random traffic, and the KV event stream's fidelity."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from test_mocker_support import FAST, config, request

from dyn.engines.mocker import MockerCore
from dyn.errors import BadRequestError
from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored

# Prompts drawn from a few shared stems so that prefixes, and blocks, get reused.
STEMS = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [20, 21, 22, 23]]

prompts = st.builds(
    lambda stem, tail: STEMS[stem] + tail,
    st.integers(0, len(STEMS) - 1),
    st.lists(st.integers(0, 40), max_size=10),
)
# (what, prompt, n): add a request of n tokens, step n times, cancel request n, clear.
operations = st.lists(
    st.tuples(st.sampled_from(["add", "step", "cancel", "clear"]), prompts, st.integers(1, 12)),
    max_size=60,
)


class Mirror:
    """What a router would rebuild from the events; checks each one is well formed."""

    def __init__(self) -> None:
        self.resident: set[int] = set()
        self.last_id = 0

    def apply(self, events: list[KvEvent]) -> None:
        for event in events:
            assert event.event_id == self.last_id + 1
            self.last_id = event.event_id
            data = event.data
            if isinstance(data, KvStored):
                assert data.parent_hash is None or data.parent_hash in self.resident
                for block in data.blocks:
                    assert block.block_hash not in self.resident
                    self.resident.add(block.block_hash)
            elif isinstance(data, KvRemoved):
                assert set(data.block_hashes) <= self.resident
                self.resident -= set(data.block_hashes)
            else:
                assert isinstance(data, KvCleared)
                self.resident.clear()


def snapshot_hashes(core: MockerCore) -> set[int]:
    return {
        block.block_hash
        for event in core.snapshot()
        if isinstance(event.data, KvStored)
        for block in event.data.blocks
    }


@given(
    ops=operations,
    block_size=st.integers(1, 4),
    num_gpu_blocks=st.integers(8, 40),
    max_num_seqs=st.integers(1, 4),
    caching=st.booleans(),
    chunked=st.booleans(),
)
def test_blocks_never_leak_or_double_free(
    ops: list[tuple[str, list[int], int]],
    block_size: int,
    num_gpu_blocks: int,
    max_num_seqs: int,
    caching: bool,
    chunked: bool,
) -> None:
    core = MockerCore(
        config(
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max(max_num_seqs, 6),
            enable_prefix_caching=caching,
            enable_chunked_prefill=chunked,
            **FAST,
        )
    )
    mirror = Mirror()
    wanted: dict[str, int] = {}
    produced: dict[str, int] = {}

    def step() -> None:
        result = core.step(0.0)
        mirror.apply(result.events)
        for request_id, output in result.outputs:
            produced[request_id] = produced.get(request_id, 0) + len(output.tokens)

    for added, (what, prompt, n) in enumerate(ops):
        if what == "add":
            request_id = f"r{added}"  # never an id reused after a cancel: outputs count by id
            try:
                core.add(request(request_id, prompt, n), 0.0)
            except BadRequestError:
                continue  # larger than the whole cache
            wanted[request_id] = n
        elif what == "step":
            for _ in range(n % 4 + 1):
                step()
        elif what == "cancel" and core.cancel(f"r{n}"):
            del wanted[f"r{n}"]
        elif what == "clear":
            mirror.apply(core.clear())
        core.check()
        assert mirror.resident == snapshot_hashes(core)
    while core.has_work():
        step()
        core.check()
    assert core.load().active_blocks == 0
    assert mirror.resident == snapshot_hashes(core)
    assert {r: produced[r] for r in wanted} == wanted  # every survivor ran to max_tokens
