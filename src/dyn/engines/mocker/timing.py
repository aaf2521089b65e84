"""How long one scheduler step takes, in seconds of the engine's clock.

The polynomial model is Dynamo's mocker fit (ai-dynamo 1.6.1, docs/mocker-timing.md), in ms:

- prefill: ``a·T² + b·T + c`` with T the step's uncached prompt tokens (0 ms when T = 0);
- decode: ``max(1, −25.74·u² + 54.01·u + 5.74)`` with u the batch's KV load, the sum of
  the decoding sequences' context lengths over the cache's token capacity, capped at 1.

A step that both prefills and decodes costs the sum of the two. A real engine runs them
in one fused forward pass, which costs less than the sum, but the fit was made on
separate prefill and decode batches, so adding them is the conservative choice and keeps
each term comparable with Dynamo's numbers.
"""

from __future__ import annotations

from dyn.engines.mocker.config import FixedTiming, MockerConfig

__all__ = ["StepTiming", "decode_ms", "decode_ms_at_load", "prefill_ms"]

# ai-dynamo 1.6.1 mocker, prefill time (ms) vs uncached tokens in the batch.
PREFILL_QUADRATIC = 4.209989e-07
PREFILL_LINEAR = 1.518344e-02
PREFILL_CONSTANT = 16.50142
# ai-dynamo 1.6.1 mocker, decode step time (ms) vs KV load u in [0, 1].
DECODE_QUADRATIC = -25.74
DECODE_LINEAR = 54.01
DECODE_CONSTANT = 5.74
DECODE_FLOOR_MS = 1.0


def prefill_ms(tokens: int) -> float:
    """Prefill time of a step that computes ``tokens`` uncached prompt tokens."""
    if tokens <= 0:
        return 0.0
    return PREFILL_QUADRATIC * tokens * tokens + PREFILL_LINEAR * tokens + PREFILL_CONSTANT


def decode_ms(context_tokens: int, capacity_tokens: int) -> float:
    """Decode time of a step whose decoding sequences hold ``context_tokens`` in all."""
    return decode_ms_at_load(context_tokens / capacity_tokens)


def decode_ms_at_load(load: float) -> float:
    """Decode time of a step at KV load ``load`` (capped at 1)."""
    load = min(1.0, load)
    return max(
        DECODE_FLOOR_MS, DECODE_QUADRATIC * load * load + DECODE_LINEAR * load + DECODE_CONSTANT
    )


class StepTiming:
    """Turns what a step did into its duration, already divided by ``speedup_ratio``."""

    def __init__(self, config: MockerConfig) -> None:
        self._capacity_tokens = config.num_gpu_blocks * config.block_size
        self._scale = 1.0 / (1000.0 * config.speedup_ratio)  # ms -> s, sped up
        self._fixed = config.timing.fixed if isinstance(config.timing, FixedTiming) else None

    def duration_s(self, prefill_tokens: int, decoding: int, context_tokens: int) -> float:
        """``prefill_tokens`` uncached tokens computed; ``decoding`` sequences that decoded,
        holding ``context_tokens`` tokens between them."""
        if self._fixed is not None:
            ms = (self._fixed.prefill_ms if prefill_tokens > 0 else 0.0) + (
                self._fixed.decode_ms if decoding > 0 else 0.0
            )
        else:
            ms = prefill_ms(prefill_tokens)
            if decoding > 0:
                ms += decode_ms(context_tokens, self._capacity_tokens)
        return ms * self._scale

    def decode_only_s(self, context_tokens: int) -> float:
        """What :meth:`duration_s` gives for a step that only decodes (faster: the
        simulator asks once per step)."""
        if self._fixed is not None:
            return self._fixed.decode_ms * self._scale
        return decode_ms(context_tokens, self._capacity_tokens) * self._scale
