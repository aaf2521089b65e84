"""A third-party package that registers a role and a routing strategy, installed into a
throwaway virtual environment, and used by that environment's dyn: from a graph (by the
role's entry-point name, with the strategy on a dependency) and by `dyn route --strategy`.

The package is built offline by pip without build isolation, with the hatchling this
test environment has. The throwaway environment sees this one's packages (dyn among
them) through a ``.pth`` file, so nothing but the plugin is installed into it.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _dyn_graph import dyn_up, free_port

from dyn import plugins

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ROLE, STRATEGY = "shout", "lowest_id"

PLUGIN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "dyn-shout-plugin"
version = "0.1.0"

[project.entry-points."dyn.roles"]
shout = "dyn_shout.role:Shout"

[project.entry-points."dyn.routers"]
lowest_id = "dyn_shout.router:LowestId"

[tool.hatch.build.targets.wheel]
packages = ["dyn_shout"]
"""

PLUGIN_ROLE = '''\
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from dyn.context import Context
from dyn.contracts.base import Text
from dyn.contracts.demo import HELLO_GENERATE, HelloRequest
from dyn.runtime.component import Component, depends, endpoint


class Shout(Component):  # type: ignore[type-arg]
    """Relays to its backend and shouts every item back."""

    backend = depends(calls=(HELLO_GENERATE,))
    example_request: ClassVar[dict[str, Any] | None] = {"text": "hi"}

    @endpoint
    async def generate(self, request: HelloRequest, ctx: Context) -> AsyncIterator[Text]:
        async with self.backend.stream(HELLO_GENERATE, request) as items:
            async for item in items:
                yield Text(item.text.upper())
'''

PLUGIN_ROUTER = '''\
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from dyn.discovery.base import Instance
from dyn.routing.base import RouteRequest, RoutingStrategy


class LowestId(RoutingStrategy):
    """The live instance with the lowest id; each choice is noted in a file."""

    name: ClassVar[str] = "lowest_id"

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        chosen = min(candidates, key=lambda c: c.instance_id)
        with open(os.environ["SHOUT_ROUTED_LOG"], "a", encoding="utf-8") as log:
            log.write(chosen.instance_id + "\\n")
        return chosen
'''

GRAPH = """\
name: shout
namespace: shout
transport: tcp
components:
  frontend:
    uses: frontend
    depends_on: [shouter]
    config:
      port: 8000
      routes:
        /generate: shouter/generate
  shouter:
    uses: shout
    depends_on:
      backend: {component: backend, strategy: lowest-id}
  backend:
    uses: dyn.roles.hello:Backend
    replicas: 2
"""


@dataclass(frozen=True)
class PluginEnv:
    python: str
    env: dict[str, str]
    routed_log: Path


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginEnv]:
    base = tmp_path_factory.mktemp("plugin")
    package = base / "dyn-shout-plugin"
    (package / "dyn_shout").mkdir(parents=True)
    (package / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (package / "dyn_shout" / "__init__.py").write_text("")
    (package / "dyn_shout" / "role.py").write_text(PLUGIN_ROLE)
    (package / "dyn_shout" / "router.py").write_text(PLUGIN_ROUTER)

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's packages (dyn, its dependencies, hatchling), .pth files included.
    parents = "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages())
    (Path(purelib) / "_parent_env.pth").write_text(f"import site; {parents}\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-build-isolation", "--no-index", "--quiet", str(package)],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    routed_log = base / "routed.log"
    with pytest.MonkeyPatch.context() as patch:
        # Where the plugin's strategy notes its choices, for every dyn this test starts.
        patch.setenv("SHOUT_ROUTED_LOG", str(routed_log))
        yield PluginEnv(python, {**os.environ, "PYTHONUNBUFFERED": "1"}, routed_log)


def _dyn(plugin: PluginEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [plugin.python, "-m", "dyn", *args],
        capture_output=True,
        text=True,
        env=plugin.env,
        cwd=ROOT,
        timeout=60,
    )


def _routed(plugin: PluginEnv) -> list[str]:
    if not plugin.routed_log.exists():
        return []
    return plugin.routed_log.read_text().split()


def test_the_plugin_is_only_in_its_own_environment(plugin_env: PluginEnv) -> None:
    assert ROLE not in plugins.available("dyn.roles")
    names = _dyn(plugin_env, "graph", "validate", "--help")
    assert names.returncode == 0
    listed = subprocess.run(
        [plugin_env.python, "-c",
         "from dyn import plugins; print(plugins.available('dyn.roles'), "
         "plugins.available('dyn.routers'))"],
        capture_output=True, text=True, check=True, env=plugin_env.env,
    ).stdout  # fmt: skip
    assert f"'{ROLE}'" in listed
    assert f"'{STRATEGY}'" in listed


def test_a_graph_uses_the_plugin_role_and_strategy(plugin_env: PluginEnv, tmp_path: Path) -> None:
    graph = tmp_path / "shout.yaml"
    graph.write_text(GRAPH)
    validated = _dyn(plugin_env, "graph", "validate", str(graph))
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith(f"ok {graph}: graph 'shout', 3 components, 4 instances")
    # Without the plugin the same graph names an unknown role and strategy.
    plain = subprocess.run(
        [sys.executable, "-m", "dyn", "graph", "validate", str(graph)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert plain.returncode == 2
    assert "unknown role 'shout'; built-in roles: decode_worker" in plain.stderr
    assert "unknown strategy 'lowest-id'" in plain.stderr

    port = free_port()
    with dyn_up(graph, port, tmp_path / "up.log", python=plugin_env.python):
        for _ in range(3):
            answer = httpx.post(
                f"http://127.0.0.1:{port}/generate", json={"text": "hello"}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            assert answer.text == "BACKEND: HELLO-BACK\n"
    routed = _routed(plugin_env)
    # Every request went through the plugin's strategy, to the one lowest instance id.
    assert len(routed) == 3
    assert len(set(routed)) == 1


def test_dyn_route_switches_to_the_plugin_strategy(plugin_env: PluginEnv, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    graph = ROOT / "graphs" / "kv_routing.yaml"
    sets = ("worker.speedup_ratio=20",)
    with dyn_up(graph, port, tmp_path / "up.log", *sets, python=plugin_env.python):
        before = len(_routed(plugin_env))
        switched = _dyn(plugin_env, "route", "--url", base, "--strategy", "lowest-id")
        assert switched.returncode == 0, switched.stderr
        assert STRATEGY in switched.stdout
        shown = _dyn(plugin_env, "route", "--url", base, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["strategy"] == STRATEGY
        for _ in range(2):
            completion = httpx.post(
                f"{base}/v1/completions",
                json={"model": "dyn-mock", "prompt": "Hello there", "max_tokens": 4},
                timeout=30,
            )
            assert completion.status_code == 200, completion.text
        bad = _dyn(plugin_env, "route", "--url", base, "--strategy", "lowest-idd")
        assert bad.returncode == 1
        assert "unknown strategy 'lowest-idd'" in bad.stderr
        assert STRATEGY in bad.stderr
    routed = _routed(plugin_env)[before:]
    assert len(routed) == 2
    assert len(set(routed)) == 1
