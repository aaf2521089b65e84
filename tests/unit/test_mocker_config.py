"""The mocker's config: defaults from Dynamo, the timing union, clear validation errors."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest
import yaml

import dyn.engines.mocker as mocker
from dyn.engines.mocker import FixedMs, FixedTiming, MockerConfig


def test_defaults_match_dynamo() -> None:
    config = MockerConfig()
    assert (config.block_size, config.num_gpu_blocks, config.max_num_seqs) == (64, 16384, 256)
    assert config.max_num_batched_tokens == 8192
    assert config.watermark == 0.01
    assert config.speedup_ratio == 1.0
    assert config.enable_prefix_caching
    assert config.enable_chunked_prefill
    assert config.timing == "polynomial"
    assert config.admit_limit == int(0.99 * 16384)


def test_fixed_timing_from_yaml() -> None:
    raw = yaml.safe_load("block_size: 16\ntiming: {fixed: {prefill_ms: 0, decode_ms: 0}}\n")
    config = msgspec.convert(raw, MockerConfig)
    assert config.timing == FixedTiming(fixed=FixedMs(prefill_ms=0.0, decode_ms=0.0))
    assert msgspec.convert({"timing": "polynomial"}, MockerConfig).timing == "polynomial"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"block_size": 0}, "Expected `int` >= 1 - at `$.block_size`"),
        ({"watermark": 1.0}, "Expected `float` < 1.0 - at `$.watermark`"),
        ({"speedup_ratio": 0}, "Expected `float` > 0.0 - at `$.speedup_ratio`"),
        ({"timing": "linear"}, "Invalid enum value 'linear' - at `$.timing`"),
        (
            {"timing": {"fixed": {"prefill_ms": -1, "decode_ms": 0}}},
            "Expected `float` >= 0.0 - at `$.timing.fixed.prefill_ms`",
        ),
        ({"blocksize": 16}, "Object contains unknown field `blocksize`"),
        ({"eos_token_id": 40000}, "eos_token_id 40000 is outside the vocabulary"),
        ({"max_num_batched_tokens": 100}, "must be at least max_num_seqs (256)"),
    ],
)
def test_bad_values_are_explained(raw: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(raw, MockerConfig)
    assert message in str(info.value)


def test_pure_core_imports_no_async_runtime() -> None:
    package = Path(mocker.__file__).parent
    for module in ("config", "blocks", "sequence", "sampling", "timing", "core"):
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"anyio", "asyncio", "time", "trio"}, module


def test_worker_config_is_the_mockers_plus_max_queued() -> None:
    from dyn.roles.worker import WorkerConfig

    assert WorkerConfig().max_queued is None  # no bound unless configured
    config = msgspec.convert({"max_queued": 0, "max_num_seqs": 4}, WorkerConfig)
    assert isinstance(config, MockerConfig)
    assert config.max_queued == 0
    with pytest.raises(msgspec.ValidationError, match="max_queued"):
        msgspec.convert({"max_queued": -1}, WorkerConfig)
