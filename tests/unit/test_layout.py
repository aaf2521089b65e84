"""The process layout rule: which role instances share a process on C cores."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.graph import GraphSpec, load_graph
from dyn.launch.layout import (
    MAX_FRONT_PROCESSES,
    apply_layout,
    plan_layout,
    process_plans,
)
from dyn.launch.role_classes import role_class
from dyn.roles.frontend_config import FrontendConfig

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def graph(name: str, *sets: str) -> GraphSpec:
    return load_graph(GRAPHS / name, sets, resolve_role=role_class)


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_inproc_graph_runs_in_one_process_whatever_the_cores(cores: int) -> None:
    layout = plan_layout(graph("hello_world.yaml"), cores)
    assert layout.mode == "one-process"
    assert "inproc" in layout.describe()


def test_one_core_means_one_process() -> None:
    layout = plan_layout(graph("kv_routing.yaml"), 1)
    assert layout.mode == "one-process"
    assert apply_layout(graph("kv_routing.yaml"), layout).transport == "inproc"


@given(cores=st.integers(min_value=2, max_value=64), workers=st.integers(1, 70))
def test_auto_gives_the_front_half_the_cores_and_spreads_workers_over_the_rest(
    cores: int, workers: int
) -> None:
    spec = graph("kv_routing.yaml", f"worker.replicas={workers}")
    layout = plan_layout(spec, cores)
    assert layout.mode == "front"
    assert layout.front == ("processor", "frontend")  # start order: dependency first
    fronts = min(cores // 2, MAX_FRONT_PROCESSES)
    assert layout.front_processes == fronts
    applied = apply_layout(spec, layout)
    assert applied.component("frontend").replicas == fronts
    assert applied.component("processor").replicas == fronts
    assert applied.component("worker").replicas == workers
    config = applied.component("frontend").config
    assert isinstance(config, FrontendConfig)
    assert config.reuse_port is (fronts > 1)  # one front process has no port to share
    plans = process_plans(applied, layout)
    # Every role instance is hosted exactly once; workers start before the front.
    hosted = [role for plan in plans for role in plan.roles]
    expected = [(c.name, r) for c in applied.components for r in range(c.replicas)]
    assert sorted(hosted) == sorted(expected)
    engines = min(workers, cores)
    assert [p.component for p in plans] == ["worker"] * engines + ["frontend"] * fronts
    # Worker r lives in process r mod engines: replicas spread evenly.
    sizes = [len(p.roles) for p in plans[:engines]]
    assert max(sizes) - min(sizes) <= 1
    assert all(r % engines == plans.index(p) for p in plans[:engines] for _, r in p.roles)
    assert all(p.companions == (("processor", p.replica),) for p in plans[engines:])


def test_front_processes_can_be_pinned() -> None:
    layout = plan_layout(graph("kv_routing.yaml"), 2, front_processes=3)
    assert layout.front_processes == 3
    assert "3 front processes (processor + frontend) sharing the HTTP port" in layout.describe(
        apply_layout(graph("kv_routing.yaml"), layout)
    )


def test_disagg_front_leaves_the_queue_and_workers_alone() -> None:
    spec = graph("disagg.yaml")
    layout = plan_layout(spec, 4)
    assert layout.front == ("processor", "frontend")
    plans = process_plans(apply_layout(spec, layout), layout)
    singles = [p.component for p in plans if not p.companions]
    assert sorted(set(singles)) == ["prefill_queue", "prefill_worker", "worker"]


@pytest.mark.parametrize("requested", ["process-per-role", "one-process"])
def test_explicit_layouts_ignore_the_cores(requested: str) -> None:
    spec = graph("kv_routing.yaml")
    layout = plan_layout(spec, 16, requested=requested)
    assert layout.mode == requested
    plans = process_plans(apply_layout(spec, layout), layout) if requested != "one-process" else []
    assert all(len(p.roles) == 1 for p in plans)


def test_graph_with_nodes_is_never_grouped() -> None:
    layout = plan_layout(graph("multinode.yaml"), 8)
    assert layout.mode == "process-per-role"


def test_an_unknown_layout_is_a_graph_error(tmp_path: Path) -> None:
    from dyn.errors import SpecError

    text = (GRAPHS / "kv_routing.yaml").read_text().replace("layout: auto", "layout: autp")
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_graph(path, resolve_role=role_class)
    message = str(caught.value)
    assert "g.yaml:12: layout: unknown layout 'autp' (did you mean 'auto'?)" in message
    assert "one-process, process-per-role" in message
