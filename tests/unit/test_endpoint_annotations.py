"""An endpoint annotation that cannot be evaluated is an error, never a silent ``Any``:
at ``dyn graph validate`` (at the component's ``uses`` line) and when it is served."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import PluginError, SpecError
from dyn.graph import load_graph_text
from dyn.launch.role_classes import role_class
from dyn.runtime.component import EmptyConfig
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

MODULE = "annotation_user_roles"

# A request type imported only for type checking, and a misspelt item type: both would
# leave the endpoint unvalidated if they were read as Any.
USER_ROLES = """\
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dyn.context import Context
from dyn.engines.base import EngineOutput
from dyn.runtime.component import Component, EmptyConfig, endpoint

if TYPE_CHECKING:
    from dyn.engines.base import EngineRequest


class TypeCheckingOnly(Component[EmptyConfig]):
    @endpoint
    async def generate(self, request: EngineRequest, ctx: Context) -> AsyncIterator[EngineOutput]:
        yield EngineOutput(token_ids=[])


class Misspelt(Component[EmptyConfig]):
    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[EngineOutptu]:
        yield EngineOutput(token_ids=[])
"""

REQUEST_PROBLEM = (
    f"role {MODULE}:TypeCheckingOnly, endpoint 'generate': cannot resolve the request "
    "annotation 'EngineRequest' (NameError: name 'EngineRequest' is not defined); import "
    "the types an endpoint's signature names at run time, not only under TYPE_CHECKING"
)
RETURN_PROBLEM = (
    f"role {MODULE}:Misspelt, endpoint 'generate': cannot resolve the return annotation "
    "'AsyncIterator[EngineOutptu]' (NameError: name 'EngineOutptu' is not defined)"
)


@pytest.fixture(autouse=True)
def user_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{MODULE}.py").write_text(USER_ROLES, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)


def test_the_role_class_names_the_annotation_it_cannot_resolve() -> None:
    with pytest.raises(PluginError) as request:
        role_class(f"{MODULE}:TypeCheckingOnly").endpoint_types()
    assert str(request.value) == REQUEST_PROBLEM
    with pytest.raises(PluginError) as item:
        role_class(f"{MODULE}:Misspelt").endpoint_types()
    assert str(item.value).startswith(RETURN_PROBLEM)


def test_graph_validate_reports_it_at_the_uses_line() -> None:
    text = textwrap.dedent(
        f"""\
        name: g
        components:
          front:
            uses: {MODULE}:TypeCheckingOnly
          back:
            uses: {MODULE}:Misspelt
        """
    )
    with pytest.raises(SpecError) as info:
        load_graph_text(text, "g.yaml", resolve_role=role_class)
    problems = info.value.problems
    assert problems[0] == f"g.yaml:4: components.front.uses: {REQUEST_PROBLEM}"
    assert problems[1].startswith(f"g.yaml:6: components.back.uses: {RETURN_PROBLEM}")
    assert len(problems) == 2


@pytest.mark.anyio
async def test_serving_it_fails_naming_the_annotation() -> None:
    cls = role_class(f"{MODULE}:TypeCheckingOnly")
    async with Runtime(
        namespace="t", transport=InprocTransport(), discovery=MemoryDiscovery()
    ) as runtime:
        component = cls(EmptyConfig(), component_info("t", "front"), {})
        with pytest.raises(PluginError, match="cannot resolve the request annotation"):
            await runtime.serve_component(component)
