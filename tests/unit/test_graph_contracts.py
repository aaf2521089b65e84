"""``dyn graph validate`` reports wiring whose endpoint types do not match, at its line."""

from __future__ import annotations

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
    assert any(
        p.startswith("g.yaml:6: ")
        and "calls 'kv_events' through 'worker'" in p
        and "has no endpoint 'kv_events'" in p
        for p in found
    ), found


@pytest.mark.parametrize("graph", sorted(p.name for p in GRAPHS.glob("*.yaml")))
def test_shipped_graphs_have_matching_contracts(graph: str) -> None:
    load_graph(GRAPHS / graph, resolve_role=role_class)
