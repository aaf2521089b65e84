"""The mocker's configuration: one frozen struct, validated once.

Defaults are those of Dynamo's mocker as shipped in ai-dynamo 1.6.1 (docs/mocker-timing.md),
which in turn follow vLLM's engine arguments, so results compare with both.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["FixedMs", "FixedTiming", "MockerConfig", "OutputLength"]

Positive = Annotated[int, msgspec.Meta(gt=0)]
Millis = Annotated[float, msgspec.Meta(ge=0, description="milliseconds, >= 0")]


class FixedMs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Constant step costs: ``prefill_ms`` for a step that prefills anything, plus
    ``decode_ms`` for a step that decodes anything (0/0 runs as fast as the host can)."""

    prefill_ms: Millis
    decode_ms: Millis


class FixedTiming(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``timing: {fixed: {prefill_ms: 0, decode_ms: 0}}`` in YAML."""

    fixed: FixedMs


class OutputLength(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """When a sequence ends by itself: its output length (end-of-sequence token
    included) is log-normal with this ``median`` (tokens) and ``sigma`` (the standard
    deviation of its logarithm). The defaults fit the output lengths of real chat
    traffic (docs/mocker-timing.md, "Output lengths")."""

    median: Annotated[float, msgspec.Meta(ge=1)] = 350.0
    sigma: Annotated[float, msgspec.Meta(gt=0, le=4)] = 0.6


class MockerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A simulated engine's cache, scheduler and timing model.

    ``timing`` is ``"polynomial"`` (Dynamo's fitted model, see ``timing.py``) or a
    :class:`FixedTiming`. Step durations are divided by ``speedup_ratio``.
    ``output_length`` is how long outputs run when a request does not set
    ``ignore_eos`` (:class:`OutputLength`); ``null`` ends a sequence only when the
    sampled token happens to be ``eos_token_id``.
    """

    block_size: Positive = 64
    num_gpu_blocks: Positive = 16384
    max_num_seqs: Positive = 256
    max_num_batched_tokens: Positive = 8192
    # Fraction of the cache kept free when admitting new requests, so running ones can
    # still grow without an immediate preemption (vLLM's default).
    watermark: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.01
    speedup_ratio: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    seed: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] = 0  # an xxh3 seed
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    vocab_size: Annotated[int, msgspec.Meta(ge=2)] = 32000
    eos_token_id: Annotated[int, msgspec.Meta(ge=0)] = 2
    timing: Literal["polynomial"] | FixedTiming = "polynomial"
    output_length: OutputLength | None = msgspec.field(default_factory=OutputLength)

    def __post_init__(self) -> None:
        if self.eos_token_id >= self.vocab_size:
            raise ValueError(
                f"eos_token_id {self.eos_token_id} is outside the vocabulary "
                f"(vocab_size {self.vocab_size}); pick an id below vocab_size"
            )
        # Every running sequence decodes one token per step, so the step's token budget
        # must hold a full batch of decodes (vLLM refuses the same configuration).
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}); raise it or lower max_num_seqs"
            )

    @property
    def admit_limit(self) -> int:
        """Blocks that may be in use after admitting a request: ``(1 − watermark) × N``."""
        return int((1.0 - self.watermark) * self.num_gpu_blocks)
