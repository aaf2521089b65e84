"""The conditional disaggregation rule and the KV transfer-time model."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.disagg.rule import DisaggRule, uncached_tokens
from dyn.disagg.transfer import KvTransferModel


def test_defaults_are_dynamos() -> None:
    rule = DisaggRule()
    assert (rule.max_local_prefill_length, rule.max_prefill_queue_size) == (1000, 2)


@pytest.mark.parametrize(
    ("prompt_len", "hit_rate", "depth", "remote"),
    [
        (1001, 0.0, 0, True),
        (1000, 0.0, 0, False),  # strictly longer than the threshold
        (4000, 0.75, 0, False),  # 1000 uncached: the cache makes it short
        (4000, 0.5, 0, True),
        (4000, 0.0, 1, True),
        (4000, 0.0, 2, False),  # the queue is not shorter than 2
    ],
)
def test_remote_only_when_long_and_the_queue_keeps_up(
    prompt_len: int, hit_rate: float, depth: int, remote: bool
) -> None:
    assert DisaggRule().prefill_remote(prompt_len, hit_rate, depth) is remote


def test_thresholds_change_at_run_time() -> None:
    rule = DisaggRule()
    rule.update(max_local_prefill_length=100)
    assert rule.prefill_remote(500, 0.0, 0)
    rule.update(max_prefill_queue_size=0)
    assert not rule.prefill_remote(500, 0.0, 0)
    assert rule.max_local_prefill_length == 100  # None leaves a threshold alone
    with pytest.raises(ValueError, match="max_prefill_queue_size must be >= 0"):
        rule.update(max_prefill_queue_size=-1)


@given(st.integers(0, 100_000), st.floats(0, 1), st.integers(0, 10))
def test_never_remote_for_an_uncached_prefix_at_most_the_threshold(
    prompt_len: int, hit_rate: float, depth: int
) -> None:
    rule = DisaggRule()
    if uncached_tokens(prompt_len, hit_rate) <= rule.max_local_prefill_length:
        assert not rule.prefill_remote(prompt_len, hit_rate, depth)


def test_transfer_time_grows_with_blocks() -> None:
    model = KvTransferModel(bandwidth_gbps=8, latency_ms=2, bytes_per_block=1_000_000)
    assert model.seconds(0) == pytest.approx(0.002)
    # 10 blocks × 8 Mbit at 8 Gb/s = 10 ms, plus the latency.
    assert model.seconds(10) == pytest.approx(0.012)
    assert model.seconds(10, speedup_ratio=4) == pytest.approx(0.003)


def test_transfer_model_from_yaml_is_validated() -> None:
    model = msgspec.convert({"bandwidth_gbps": 100}, KvTransferModel)
    assert model.latency_ms == 1.0
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"bandwidth_gbps": 0}, KvTransferModel)
