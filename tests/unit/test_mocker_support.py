"""Helpers shared by the mocker tests (no tests here): drive a core in virtual time."""

from __future__ import annotations

import msgspec

from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.mocker import MockerConfig, MockerCore, StepResult
from dyn.kv.events import KvEvent

FAST = {"timing": {"fixed": {"prefill_ms": 0, "decode_ms": 0}}}


def config(**fields: object) -> MockerConfig:
    """A config from raw values, validated as a graph file's would be."""
    return msgspec.convert(fields, MockerConfig)


def request(
    request_id: str,
    tokens: list[int],
    max_tokens: int,
    *,
    ignore_eos: bool = True,
    min_tokens: int = 0,
) -> EngineRequest:
    """A request that by default runs to ``max_tokens`` (end of sequence ignored)."""
    return EngineRequest(
        request_id=request_id,
        tokens=tokens,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        min_tokens=min_tokens,
    )


def drain(
    core: MockerCore, now: float = 0.0, max_steps: int = 100_000
) -> tuple[dict[str, list[EngineOutput]], list[StepResult], float]:
    """Step until idle, checking the block invariants after every step."""
    outputs: dict[str, list[EngineOutput]] = {}
    steps: list[StepResult] = []
    for _ in range(max_steps):
        if not core.has_work():
            break
        result = core.step(now)
        now += result.duration_s
        core.check()
        steps.append(result)
        for request_id, output in result.outputs:
            outputs.setdefault(request_id, []).append(output)
    else:
        raise AssertionError("the core did not finish")
    return outputs, steps, now


def tokens_of(outputs: list[EngineOutput]) -> list[int]:
    return [token for output in outputs for token in output.tokens]


def events_of(steps: list[StepResult]) -> list[KvEvent]:
    return [event for step in steps for event in step.events]
