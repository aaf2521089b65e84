"""Discovery entries for routing tests: no server behind them."""

from __future__ import annotations

from dyn.discovery.base import Instance


def fake_instances(
    n: int,
    *,
    prefix: str = "i",
    component: str = "w",
    block_size: int | None = None,
    metadata: dict[str, object] | None = None,
) -> list[Instance]:
    """``n`` instances with ids ``{prefix}0``…, carrying ``block_size`` if given, and
    ``metadata``."""
    metadata = dict(metadata or {})
    if block_size is not None:
        metadata["block_size"] = block_size
    return [
        Instance(
            namespace="ns",
            component=component,
            endpoint="generate",
            instance_id=f"{prefix}{k}",
            address=f"inproc://{k}",
            transport="inproc",
            metadata=dict(metadata),
        )
        for k in range(n)
    ]
