"""vLLM's KV cache events, translated into dyn's.

vLLM started with ``--kv-events-config '{"enable_kv_cache_events": true, "publisher":
"zmq", "endpoint": "tcp://*:5557"}'`` publishes every engine step's events on a ZMQ PUB
socket as a three-part message: the topic, an 8-byte big-endian sequence number, and a
msgpack ``KVEventBatch`` (``vllm/distributed/kv_events.py``)::

    KVEventBatch(ts, events, data_parallel_rank)
    BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, ...)
    BlockRemoved(block_hashes, medium, ...)
    AllBlocksCleared()

Releases up to 0.10 encode these structs as arrays with the event's tag (its class name)
first; later ones as maps with the tag under ``"type"``. Both are read here, by position
or by name, and fields added since are ignored. A block hash is an int, or 32 bytes when
vLLM runs with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``; bytes are folded to the int vLLM
itself would send (the low 64 bits, big-endian), so both settings give the same ids.

dyn's index walks blocks by their *tokens* hash from the root (``dyn.kv.hashing``), so
each stored block gets dyn's local hash of its tokens beside vLLM's block hash, which
stays the key that later removals name. vLLM cannot send a snapshot, so the translator
keeps a mirror of what it was told and answers a (re)subscribing router from that.
This module is a pure core: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from dyn.errors import DynError
from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes

__all__ = ["VllmEventError", "VllmKvTranslator", "block_hash_id"]

_U64 = (1 << 64) - 1
# Only the GPU tier is what a request reuses without a copy (and the only tier before
# vLLM added ``medium``); offloaded tiers would double-count a block.
_GPU_MEDIA = (None, "GPU")


class VllmEventError(DynError):
    """A message is not a vLLM KV event batch, or does not fit this worker's settings."""


def block_hash_id(value: Any) -> int:
    """A vLLM block hash as an int, whichever form it came in."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big") & _U64
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise VllmEventError(f"a block hash must be an int or bytes, got {type(value).__name__}")


def _hashes(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise VllmEventError("block_hashes must be a list")
    return [block_hash_id(h) for h in value]


def _field(event: Any, index: int, name: str, default: Any = None) -> Any:
    if isinstance(event, dict):
        return event.get(name, default)
    return event[index] if index < len(event) else default


class VllmKvTranslator:
    """Feeds on vLLM batches; returns dyn events and keeps the mirror for snapshots.

    ``block_size`` is the one the worker declares to routers: events of another size
    cannot be matched against the routers' hashes and are refused.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        # vLLM block hash -> (parent block hash, dyn tokens hash), parents before children.
        self._blocks: dict[int, tuple[int | None, int]] = {}
        self._next_id = 1
        self._last_seq: int | None = None

    @property
    def cached_blocks(self) -> int:
        return len(self._blocks)

    @property
    def last_seq(self) -> int | None:
        """The sequence number of the last batch fed, if any carried one."""
        return self._last_seq

    def feed(self, payload: bytes, seq: int | None = None) -> list[KvEvent]:
        """Translate one batch. A gap in ``seq`` (lost messages, or vLLM restarted) first
        clears everything: the index then under- rather than over-estimates the cache.

        Raises:
            VllmEventError: the payload is not a batch; nothing is changed.
        """
        events = self._decode(payload)
        out: list[KvEvent] = []
        if seq is not None:
            if self._last_seq is not None and seq != self._last_seq + 1:
                out.extend(self._clear())
            self._last_seq = seq
        for event in events:
            out.extend(self._translate(event))
        return out

    def snapshot(self) -> list[KvEvent]:
        """The mirror as events: ``KvCleared``, then every chain of stored blocks, each
        block after its parent (a parent evicted and stored again sits after its
        children in the mirror, so insertion order is not enough).

        Consumes no ids: each carries the id of the last event already emitted.
        """
        last = self._next_id - 1
        blocks = self._blocks
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        for block_hash, (parent, _) in blocks.items():
            if parent is not None and parent in blocks:
                children.setdefault(parent, []).append(block_hash)
            else:
                roots.append(block_hash)
        snapshot = [KvEvent(event_id=last, data=KvCleared())]
        stack = [(root, blocks[root][0]) for root in reversed(roots)]
        while stack:
            block_hash, parent = stack.pop()
            chain: list[StoredBlock] = []
            while True:
                chain.append(StoredBlock(block_hash, blocks[block_hash][1]))
                kids = children.get(block_hash)
                if not kids:
                    break
                stack.extend((kid, block_hash) for kid in reversed(kids[1:]))
                block_hash = kids[0]
            snapshot.append(KvEvent(event_id=last, data=KvStored(chain, parent)))
        return snapshot

    def reset(self) -> list[KvEvent]:
        """Forget everything (the subscription was re-made): one ``KvCleared``."""
        self._last_seq = None
        return self._clear()

    # -- internals -----------------------------------------------------------------------

    def _decode(self, payload: bytes) -> Sequence[Any]:
        try:
            batch = msgspec.msgpack.decode(payload)
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: bad UTF-8 in a str
            raise VllmEventError(f"not msgpack: {exc}") from exc
        events = batch.get("events") if isinstance(batch, dict) else None
        if isinstance(batch, list) and len(batch) >= 2:
            events = batch[1]
        if not isinstance(events, list):
            raise VllmEventError("not a vLLM KVEventBatch (expected [ts, events, ...])")
        for event in events:
            if not (isinstance(event, list) and event) and not isinstance(event, dict):
                raise VllmEventError(f"not a vLLM KV event: {event!r:.80}")
        return events

    def _emit(self, data: KvStored | KvRemoved | KvCleared) -> KvEvent:
        event = KvEvent(event_id=self._next_id, data=data)
        self._next_id += 1
        return event

    def _clear(self) -> list[KvEvent]:
        self._blocks.clear()
        return [self._emit(KvCleared())]

    def _translate(self, event: Any) -> list[KvEvent]:
        tag = event.get("type") if isinstance(event, dict) else event[0]
        if tag == "AllBlocksCleared":
            return self._clear()
        if tag == "BlockRemoved":
            if _field(event, 2, "medium") not in _GPU_MEDIA or _field(event, 3, "group_idx"):
                return []
            hashes = _hashes(_field(event, 1, "block_hashes", []))
            known = [h for h in hashes if self._blocks.pop(h, None) is not None]
            return [self._emit(KvRemoved(known))] if known else []
        if tag == "BlockStored":
            return self._stored(event)
        return []  # an event kind added after this was written: not about the index

    def _stored(self, event: Any) -> list[KvEvent]:
        if _field(event, 6, "medium") not in _GPU_MEDIA or _field(event, 9, "group_idx"):
            return []
        if _field(event, 5, "lora_id") is not None:
            # A LoRA block's hash covers the adapter too; the processor hashes tokens only.
            return []
        size = _field(event, 4, "block_size")
        if size != self.block_size:
            raise VllmEventError(
                f"vLLM stores blocks of {size} tokens but this worker declares block_size "
                f"{self.block_size}; set the worker's block_size to {size}"
            )
        hashes = _hashes(_field(event, 1, "block_hashes", []))
        raw_parent = _field(event, 2, "parent_block_hash")
        parent = None if raw_parent is None else block_hash_id(raw_parent)
        token_ids = _field(event, 3, "token_ids", [])
        if not isinstance(token_ids, list) or not all(isinstance(t, int) for t in token_ids):
            raise VllmEventError("BlockStored.token_ids must be a list of ints")
        # Token ids must fit dyn's u32 block hashing; a negative id is not a token.
        if any(t < 0 or t > 0xFFFFFFFF for t in token_ids):
            raise VllmEventError("BlockStored.token_ids holds an id outside 0..2**32-1")
        locals_ = local_block_hashes(token_ids, self.block_size)
        blocks: list[StoredBlock] = []
        previous = parent
        for block_hash, tokens_hash in zip(hashes, locals_, strict=False):
            blocks.append(StoredBlock(block_hash, tokens_hash))
            self._blocks[block_hash] = (previous, tokens_hash)
            previous = block_hash
        if not blocks:
            return []
        return [self._emit(KvStored(blocks, parent))]
