"""A batch of observations adds exactly what observing each value would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from dyn.observability.batched import ObservationBatch
from dyn.observability.metrics import LATENCY_BUCKETS


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def test_a_flushed_batch_equals_one_observe_per_value() -> None:
    values = [0.0, 0.0004, 0.0005, 0.0006, 0.003, 0.003, 0.2, 1.0, 45.0, 500.0, 1e-9]
    one, batched = CollectorRegistry(), CollectorRegistry()
    for registry in (one, batched):
        Histogram("lat", "x", ["worker"], buckets=LATENCY_BUCKETS, registry=registry)
    reference: Histogram = one._names_to_collectors["lat"]  # type: ignore[assignment]
    for value in values:
        reference.labels("w").observe(value)
    batch = ObservationBatch(batched._names_to_collectors["lat"].labels("w"))  # type: ignore[attr-defined]
    batch.values.extend(values)
    batch.flush()
    batch.flush()  # flushing again adds nothing
    assert _samples(batched) == _samples(one)
    assert batch.values == []


def test_a_histogram_without_the_expected_internals_is_observed_value_by_value() -> None:
    observed: list[float] = []

    class Plain:
        def observe(self, value: float) -> None:
            observed.append(value)

    batch = ObservationBatch(Plain())  # type: ignore[arg-type]
    batch.values.extend([0.1, 0.2])
    batch.flush()
    assert observed == [0.1, 0.2]
