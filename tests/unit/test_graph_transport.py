"""`transport:` is a name or `{backend: NAME, options: {...}}`: both load, the mapping's
problems come as ``FILE:LINE: FIELD.PATH: message`` like every other key's, and a dumped
graph loads back equal."""

from __future__ import annotations

import textwrap

import pytest

from dyn.errors import SpecError
from dyn.graph import dump_graph_yaml, load_graph_text
from dyn.launch.role_classes import role_class

BODY = """\
components:
  back:
    uses: dyn.roles.hello:Backend
"""


def load(transport: str) -> object:
    text = f"name: g\n{textwrap.dedent(transport)}{BODY}"
    return load_graph_text(text, "g.yaml", resolve_role=role_class)


def problems(transport: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(transport)
    return info.value.problems


def test_a_plain_name_still_loads_without_options() -> None:
    graph = load("transport: tcp\n")
    assert graph.transport == "tcp"  # type: ignore[attr-defined]
    assert dict(graph.transport_options) == {}  # type: ignore[attr-defined]


def test_a_mapping_gives_backend_and_options_and_round_trips() -> None:
    graph = load(
        """\
        transport:
          backend: nats
          options: {servers: [nats://10.0.0.5:4222], credentials: /etc/dyn/user.creds}
        """
    )
    assert graph.transport == "nats"  # type: ignore[attr-defined]
    options = dict(graph.transport_options)  # type: ignore[attr-defined]
    assert options == {"servers": ["nats://10.0.0.5:4222"], "credentials": "/etc/dyn/user.creds"}
    again = load_graph_text(dump_graph_yaml(graph), "g.yaml", resolve_role=role_class)  # type: ignore[arg-type]
    assert again == graph


def test_mapping_problems_name_file_line_and_field() -> None:
    assert problems("transport: {options: {}}\n") == [
        "g.yaml:2: transport.backend: missing; name a transport, e.g. backend: nats"
    ]
    found = problems(
        """\
        transport:
          backend: nats
          options:
            servers: 4222
            start: "yes"
            sever: x
        """
    )
    assert found == [
        "g.yaml:5: transport.options.servers: must be a string or a list of strings (got an integer 4222)",
        "g.yaml:6: transport.options.start: must be true or false (got a string 'yes')",
        "g.yaml:7: transport.options.sever: unknown key 'sever' (did you mean 'servers'?); valid keys: servers, start, token, credentials, tls_ca, tls_cert, tls_key, stream_credit",
    ]
    assert problems("transport: {backend: natz}\n")[0].startswith(
        "g.yaml:2: transport.backend: unknown transport 'natz'"
    )
    assert problems("transport: {backend: tcp, extra: 1}\n") == [
        "g.yaml:2: transport.extra: unknown key 'extra'; valid keys: backend, options"
    ]
