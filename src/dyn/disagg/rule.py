"""When to prefill remotely: Dynamo's conditional disaggregation rule (docs/disaggregation.md).

A prefill goes to a prefill worker only when it is long enough to be worth the transfer
*and* the prefill workers are keeping up; otherwise the decode worker prefills it itself,
which keeps short prompts fast and stops a backlog from growing without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_LOCAL_PREFILL_LENGTH", "DEFAULT_MAX_PREFILL_QUEUE_SIZE", "DisaggRule"]

# Dynamo's disaggregated example defaults (docs/disaggregation.md).
DEFAULT_MAX_LOCAL_PREFILL_LENGTH = 1000
DEFAULT_MAX_PREFILL_QUEUE_SIZE = 2


def uncached_tokens(prompt_len: int, prefix_hit_rate: float) -> int:
    """``prompt_len × (1 − prefix_hit_rate)``, rounded to whole tokens."""
    rate = min(1.0, max(0.0, prefix_hit_rate))
    return round(prompt_len * (1.0 - rate))


@dataclass(slots=True)
class DisaggRule:
    """The two thresholds; mutable because both may change while serving."""

    max_local_prefill_length: int = DEFAULT_MAX_LOCAL_PREFILL_LENGTH
    max_prefill_queue_size: int = DEFAULT_MAX_PREFILL_QUEUE_SIZE

    def prefill_remote(self, prompt_len: int, prefix_hit_rate: float, queue_depth: int) -> bool:
        """Whether this prompt's prefill should go to a prefill worker."""
        long_enough = uncached_tokens(prompt_len, prefix_hit_rate) > self.max_local_prefill_length
        return long_enough and queue_depth < self.max_prefill_queue_size

    def update(
        self,
        *,
        max_local_prefill_length: int | None = None,
        max_prefill_queue_size: int | None = None,
    ) -> None:
        """Change either threshold; ``None`` keeps it. Negative values are refused."""
        for name, value in (
            ("max_local_prefill_length", max_local_prefill_length),
            ("max_prefill_queue_size", max_prefill_queue_size),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if max_local_prefill_length is not None:
            self.max_local_prefill_length = max_local_prefill_length
        if max_prefill_queue_size is not None:
            self.max_prefill_queue_size = max_prefill_queue_size
