"""``dyn graph validate`` reports wiring whose endpoint types do not match, at its line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from dyn.errors import SpecError
from dyn.graph import load_graph, load_graph_text
from dyn.launch.role_classes import role_class

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"

# A processor's worker slot calls the engine contract; a hello backend serves another.
MISMATCH = """\
name: g
components:
  processor:
    uses: dyn.roles.processor:Processor
    depends_on:
      worker: back
  back:
    uses: dyn.roles.hello:Backend
"""


def test_a_slot_wired_to_a_role_with_other_types_is_reported_at_its_line() -> None:
    with pytest.raises(SpecError) as info:
        load_graph_text(textwrap.dedent(MISMATCH), "g.yaml", resolve_role=role_class)
    found = info.value.problems
    assert (
        "g.yaml:6: components.processor.depends_on.worker: dyn.roles.processor:Processor "
        "calls 'generate' through 'worker' with EngineRequest for EngineOutput items, but "
        "component 'back' (dyn.roles.hello:Backend) takes HelloRequest and yields Text"
    ) in found
    # kv_events and clear_kv are optional calls: a backend without them is not a problem.
    assert not any("kv_events" in p or "clear_kv" in p for p in found), found


@pytest.mark.parametrize("graph", sorted(p.name for p in GRAPHS.glob("*.yaml")))
def test_shipped_graphs_have_matching_contracts(graph: str) -> None:
    load_graph(GRAPHS / graph, resolve_role=role_class)


# Users' own workers: one serving only an untyped generate, one whose kv_events yields
# the wrong items. Annotations are strings here (postponed), as in most user modules.
USER_WORKERS = """\
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dyn.context import Context
from dyn.runtime.component import Component, EmptyConfig, endpoint


class GenerateOnly(Component[EmptyConfig]):
    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[Any]:
        yield request


class WrongKvEvents(GenerateOnly):
    @endpoint
    async def kv_events(self, request: Any, ctx: Context) -> AsyncIterator[str]:
        yield ""
"""

USER_GRAPH = """\
name: g
components:
  processor:
    uses: dyn.roles.processor:Processor
    config: {{strategy: round_robin}}
    depends_on:
      worker: back
  back:
    uses: contract_user_workers:{role}
"""


@pytest.fixture
def user_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "contract_user_workers.py").write_text(USER_WORKERS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "contract_user_workers", raising=False)


@pytest.mark.usefixtures("user_workers")
def test_a_worker_serving_only_generate_may_back_a_processor() -> None:
    graph = load_graph_text(
        USER_GRAPH.format(role="GenerateOnly"), "g.yaml", resolve_role=role_class
    )
    assert graph.component("back").uses == "contract_user_workers:GenerateOnly"


@pytest.mark.usefixtures("user_workers")
def test_an_optional_call_served_with_other_types_is_reported_at_its_line() -> None:
    with pytest.raises(SpecError) as info:
        load_graph_text(USER_GRAPH.format(role="WrongKvEvents"), "g.yaml", resolve_role=role_class)
    assert info.value.problems == [
        "g.yaml:7: components.processor.depends_on.worker: dyn.roles.processor:Processor "
        "calls 'kv_events' through 'worker' with Empty for WorkerUpdate items, but component "
        "'back' (contract_user_workers:WrongKvEvents) takes Any and yields str"
    ]
